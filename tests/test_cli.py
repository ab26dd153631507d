"""The command line does what the Python API does, with the same words."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from openpyxl import load_workbook

from bulkmail_kernel import FilterSpec, contacts_frame, save_segment
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def test_demo_import_segment_export_round_trip(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--contacts", "200", "--today", "2026-11-23", "--db", sqlite_url]) == 0
    assert "contacts" in capsys.readouterr().out
    # A dirty file is refused whole (exit 1) with its report, then imported with --on-error skip.
    report = tmp_path / "report.csv"
    args = ["import", str(SAMPLES / "clients_cp1250.csv"), "--db", sqlite_url]
    assert main([*args, "--report", str(report)]) == 1
    assert "rejected" in report.read_text(encoding="utf-8-sig")
    assert main([*args, "--on-error", "skip"]) == 0
    frame = contacts_frame(url=sqlite_url)
    assert {"K100", "K101"} <= set(frame["external_id"].dropna())
    save_segment("opted-in", FilterSpec(mailing_allowed=True), frame, url=sqlite_url)
    out = tmp_path / "x.xlsx"
    cols = "first_name,last_name,language"
    assert main(["export", "opted-in", str(out), "--columns", cols, "--db", sqlite_url]) == 0
    header = next(load_workbook(out).active.iter_rows(values_only=True))
    assert list(header) == ["first_name", "last_name", "language"]
    # Asking for addresses without the flag is refused with the reason.
    capsys.readouterr()
    args = ["export", "opted-in", str(out), "--columns", "address", "--db", sqlite_url]
    assert main(args) == 2
    assert "include_contact_data" in capsys.readouterr().err.replace("-", "_")
    dbmod.close_all()


def test_sendpulse_account_with_a_wrong_secret_is_refused(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fakes.sendpulse_fake import running_sendpulse

    monkeypatch.setenv("SP_SECRET", "not-the-secret")
    with running_sendpulse() as fake:
        code = main([
            "sendpulse-account", "sp", "--client-id", "sp-client-id", "--secret-env",
            "SP_SECRET", "--from-email", "news@shop.sk", "--base-url", fake.base_url,
            "--db", sqlite_url,
        ])  # fmt: skip
    assert code == 2
    assert "Client authentication failed" in capsys.readouterr().err
    from bulkmail_kernel.db import SenderAccount, open_database

    with open_database(sqlite_url).session() as s:
        assert s.scalars(sa.select(SenderAccount)).all() == []

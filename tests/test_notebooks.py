"""Every notebook runs top to bottom against a fresh demo database, and its results are checked."""

from __future__ import annotations

import email
import email.policy
import json
import re
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from openpyxl import load_workbook

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.demo.generate import generate_demo
from bulkmail_kernel.servers.sink import Sink, free_port, start_sink

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TODAY = date(2026, 11, 23)

pytestmark = pytest.mark.slow


def run_notebook(name: str, cwd: Path, **params: Any) -> nbformat.NotebookNode:
    """Execute ``notebooks/name`` in ``cwd`` with ``params`` injected after the tagged cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} must have exactly one cell tagged 'parameters'"
    source = "# Injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source))
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        extra_arguments=[f"--IPKernelApp.exec_lines=import sys; sys.path.insert(0, {str(ROOT)!r})"],
    )
    client.execute()
    (cwd / f"executed_{name}").write_text(nbformat.writes(nb), encoding="utf-8")
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    """Return everything the notebook printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("name") == "stdout":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    """Start the local SMTP sink that the demo sender account will point at."""
    port = free_port()
    monkeypatch.setenv("BULKMAIL_SINK_PORT", str(port))
    running = start_sink(tmp_path / "sink", port)
    yield running
    running.stop()


@pytest.fixture
def demo_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: Sink) -> Iterator[str]:
    """Return the URL of a fresh demo database that the notebook's kernel will use."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    generate_demo(600, url=url, today=TODAY, progress=False, samples_dir=None)
    dbmod.close_all()
    # The kernel is a child process: it sees these through its environment.
    monkeypatch.setenv("BULKMAIL_DB_URL", url)
    monkeypatch.setenv("BULKMAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    yield url
    dbmod.close_all()


def test_notebook_kernel_uses_this_python() -> None:
    """The kernel must be this environment's interpreter, or it would import another bulkmail."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.argv[0]).name.startswith("python")
    assert spec.argv[0] in (sys.executable, "python", "python3")


def test_02_segments(demo_db: str, tmp_path: Path) -> None:
    nb = run_notebook("02_segments.ipynb", tmp_path, TODAY=TODAY.isoformat())
    text = outputs_text(nb)
    assert "recipients, one per contact" in text
    # The saved group is in the database, with the members the notebook printed.
    from bulkmail_kernel import list_segments

    segs = list_segments(url=demo_db)
    assert list(segs["name"]) == ["Opted-in personal e-mail, last 2 years"]
    members = int(segs["members"].iloc[0])
    assert f"has {members:,} members" in text
    # The export exists with exactly the chosen columns, and one row per member.
    # A bare file name lands in the data folder's exports/, not beside the notebook.
    assert not (tmp_path / "segment.xlsx").exists()
    wb = load_workbook(tmp_path / "data" / "exports" / "segment.xlsx")
    rows = list(wb.active.iter_rows(values_only=True))
    assert list(rows[0]) == [
        "first_name",
        "last_name",
        "language",
        "registered_at",
        "customer_type",
        "city",
    ]
    assert len(rows) - 1 == members
    assert not any("@" in str(v) for row in rows for v in row if v is not None)


def test_01_contacts(demo_db: str, tmp_path: Path) -> None:
    from bulkmail_kernel import contacts_frame

    before = contacts_frame(url=demo_db)["contact_id"].nunique()
    sample = ROOT / "data" / "samples" / "customers_utf8.csv"
    nb = run_notebook("01_contacts.ipynb", tmp_path, SOURCE=str(sample))
    text = outputs_text(nb)
    assert "committed: False" in text  # the dirty file is refused whole at first
    # The report lands in the data folder's exports/, not beside the notebook.
    written = tmp_path / "data" / "exports" / "import-report-customers_utf8.csv"
    report = written.read_text(encoding="utf-8-sig")
    assert not (tmp_path / "exports").exists()
    assert "rejected" in report
    after = contacts_frame(url=demo_db)
    # The good rows of the sample (C001 ...) are now contacts, imported exactly once.
    assert after["contact_id"].nunique() > before
    ids = set(after["external_id"].dropna())
    assert {"C001", "C002", "C006"} <= ids
    assert not {"C003", "C004", "C005"} & ids  # rejected rows stay out
    assert "re-import: 0 new, 0 updated" in text
    dbmod.close_all()


def test_03_compose_preview(demo_db: str, tmp_path: Path, sink: Sink) -> None:
    nb = run_notebook("03_compose_preview.ipynb", tmp_path)
    text = outputs_text(nb)
    assert "0 of" in text  # check_template found no failing recipient
    widget_views = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in out.get("data", {})
    ]
    assert widget_views, "the preview widget was not displayed"
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    htmls = json.dumps(state)
    assert "srcdoc" in htmls, "the preview's iframe is not in the saved widget state"

    # The test copy went to the test address only, marked, and nothing was queued.
    assert len(sink.messages) == 1
    msg = sink.messages[0]
    assert list(msg.rcpt_tos) == ["test@example.com"]
    assert "[TEST]" in email.message_from_bytes(msg.data, policy=email.policy.default)["Subject"]
    from bulkmail_kernel import queue

    assert queue("Pozvánka na školenie Excel", url=demo_db).empty
    dbmod.close_all()


def test_04_send(demo_db: str, tmp_path: Path, sink: Sink) -> None:
    nb = run_notebook(
        "04_send.ipynb", tmp_path, RECIPIENTS=12, RATE_PER_HOUR=360_000, WAIT_FOR_SENDING=True
    )
    from bulkmail_kernel import campaign_report, list_campaigns, queue

    text = outputs_text(nb)
    # No worker runs here: the background send was a thread of the notebook's kernel.
    assert "by this kernel's thread" in text
    assert "finished, 11/12 sent" in text
    report = campaign_report("Pozvánka na školenie Excel", url=demo_db)["messages"]
    assert report["sent"] == 11
    assert report["removed"] == 1
    assert report["unknown"] == 0
    removed = queue("Pozvánka na školenie Excel", status="removed", url=demo_db)["recipient"]
    sent_to = sorted(r for m in sink.messages for r in m.rcpt_tos)
    assert len(sent_to) == 11
    assert len(set(sent_to)) == 11, "a recipient got the campaign twice"
    assert removed.iloc[0] not in sent_to
    campaigns = list_campaigns(url=demo_db).set_index("name")
    later = campaigns.loc["Pozvánka na školenie Excel (pripomienka)"]
    # Scheduled a minute ahead, in local time, for the worker (none runs under this test).
    assert later["status"] == "scheduled"
    assert later["queued"] == 12
    assert str(campaigns["scheduled_at"].dt.tz) == "Europe/Bratislava"
    assert "messages wait for the worker" in text
    assert "Europe/Bratislava (your local time)" in text
    views = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in out.get("data", {})
    ]
    assert len(views) == 3, "the campaign preview and the two outbox monitors were not displayed"
    # What the preview showed (the logo) is what went out: every message carries it.
    for m in sink.messages:
        parsed = email.message_from_bytes(m.data, policy=email.policy.default)
        images = [p for p in parsed.walk() if p.get_content_type() == "image/png"]
        assert images, f"a message to {m.rcpt_tos} went out without the logo"
        html = next(p for p in parsed.walk() if p.get_content_type() == "text/html")
        assert f"cid:{images[0]['Content-ID'].strip('<>')}" in html.get_content()
    dbmod.close_all()


def test_05_report_runs_on_its_own(demo_db: str, tmp_path: Path, sink: Sink) -> None:
    nb = run_notebook("05_report.ipynb", tmp_path)
    from bulkmail_kernel import list_suppressions

    assert len(sink.messages) == 15  # it sent its own small campaign first
    images = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, "the timeline plot is missing"
    unsubscribed = list_suppressions(reason="unsubscribe", url=demo_db)
    assert len(unsubscribed) >= 1
    assert "reporting on 'Report demo'" in outputs_text(nb)
    # Said in words, not Python's True.
    assert re.search(r"\S+@\S+ is unsubscribed\n", outputs_text(nb))
    assert "\nTrue\n" not in outputs_text(nb)
    dbmod.close_all()


def test_06_sms_through_the_eurosms_fake(
    demo_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa
    from fakes.eurosms_fake import running_eurosms

    from bulkmail_kernel import FilterSpec, contacts_frame, filter_recipients
    from bulkmail_kernel.db import Event, open_database

    frame = contacts_frame(url=demo_db)
    chosen = filter_recipients(
        frame, FilterSpec(channel="sms", mailing_allowed=True, language=["sk"])
    ).head(6)
    numbers = [int(a.lstrip("+")) for a in chosen["address"]]
    dbmod.close_all()
    monkeypatch.setenv("EUROSMS_KEY", "integration-key")  # the fake's key, via the environment
    with running_eurosms() as fake:
        fake.delivery.update(dict.fromkeys(numbers, "DELIVRD"))
        nb = run_notebook(
            "06_sms.ipynb",
            tmp_path,
            RECIPIENTS=6,
            EUROSMS_INTEGRATION_ID="1-AB12CD",
            EUROSMS_BASE_URL=fake.base_url,
        )
        # Every SMS reached the provider once, signed (the fake checks), fitted to GSM-7.
        assert sorted(s.rcpt for s in fake.sent) == sorted(numbers)
        assert all(s.flgs in (0, 2) for s in fake.sent)
    text = outputs_text(nb)
    assert "units -> 2 SMS" in text  # the 161-character line of the segment table
    with open_database(demo_db).session() as s:
        delivered = s.scalar(
            sa.select(sa.func.count()).select_from(Event).where(Event.kind == "delivered")
        )
    assert delivered == 6
    dbmod.close_all()


def test_06_sms_dry_run_without_credentials(demo_db: str, tmp_path: Path) -> None:
    run_notebook("06_sms.ipynb", tmp_path, RECIPIENTS=4)
    written = list((tmp_path / "sms-dry-run").glob("*"))
    assert len(written) == 4


def test_07_sendpulse_through_the_fake(
    demo_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    from fakes.sendpulse_fake import SendPulseFake, running_sendpulse

    monkeypatch.setenv("SENDPULSE_SECRET", "sp-client-secret")
    fake = SendPulseFake(senders=[{"email": "news@example.com", "name": "Demo Firm s.r.o."}])
    with running_sendpulse(fake) as fake:
        nb = run_notebook(
            "07_sendpulse.ipynb",
            tmp_path,
            RECIPIENTS=7,
            SENDPULSE_CLIENT_ID="sp-client-id",
            SENDPULSE_BASE_URL=fake.base_url,
        )
    assert not fake.schema_errors
    (book,) = fake.books.values()
    assert len(book["emails"]) == 7
    (campaign,) = fake.campaigns.values()
    assert campaign["type"] == "draft"  # DRAFT=True: finished in SendPulse's cabinet
    assert "{{name}}" in campaign["html"].replace(" ", "")
    assert base64.b64decode(campaign["body"]).decode("utf-8") == campaign["html"]
    text = outputs_text(nb)
    assert "0 problems for SendPulse over 7 recipients" in text

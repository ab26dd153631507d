"""Export read back cell by cell: xlsx text as typed, csv neutralised, contact data guarded."""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_segments import make_frame, tiny_frame

from bulkmail_kernel.exceptions import BulkmailError
from bulkmail_kernel.segments.export import (
    ExportError,
    export_recipients,
    export_target,
    is_contact_column,
    neutralise,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    f = tiny_frame(
        [
            {
                "contact_point_id": 1,
                "contact_id": 1,
                "first_name": "Ľubica",
                "last_name": "Šťastná",
                "registered_at": datetime(2025, 1, 15, 10, 30, tzinfo=UTC),
            },
            {
                "contact_point_id": 2,
                "contact_id": 2,
                "first_name": '=HYPERLINK("http://x")',
                "last_name": "+1+2",
                "registered_at": datetime(2025, 6, 29, 22, 15, tzinfo=UTC),
            },
            {
                "contact_point_id": 3,
                "contact_id": 3,
                "first_name": "@SUM(A1)",
                "last_name": "-3",
                "treatment_result": "=cmd|' /C calc'!A0",
                "visits": 7,
            },
            {
                "contact_point_id": 4,
                "contact_id": 4,
                "first_name": "\tTab",
                "last_name": "\rCR",
                "external_id": "C0000004",
                "channel": "phone",
                "address": "+421903123456",
            },
        ]
    )
    f["spend"] = [10.5, np.nan, 3.0, 0.0]
    f["last_visit"] = pd.to_datetime(["2025-01-05", None, "2024-12-31", "2025-02-28"])
    return f


COLUMNS = [
    "last_name",
    "first_name",
    "registered_at",
    "visits",
    "spend",
    "last_visit",
    "treatment_result",
    "mailing_allowed",
    "external_id",
]


def test_xlsx_cells_read_back(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = export_recipients(frame, tmp_path / "out" / "r.xlsx", COLUMNS, progress=False)
    assert path == tmp_path / "out" / "r.xlsx"
    wb = openpyxl.load_workbook(path)
    ws = wb.active
    assert ws.freeze_panes == "A2"
    header = [c.value for c in ws[1]]
    assert header == COLUMNS
    assert all(c.font.bold for c in ws[1])
    rows = [[c.value for c in row] for row in ws.iter_rows(min_row=2)]
    assert len(rows) == 4
    # UTF-8 intact; times shown in Bratislava (UTC+1 in January, UTC+2 in summer).
    assert rows[0][:3] == ["Šťastná", "Ľubica", datetime(2025, 1, 15, 11, 30)]
    assert rows[1][2] == datetime(2025, 6, 30, 0, 15)
    # Every risky text is a string cell exactly as typed: inert, no apostrophe, no formula.
    assert rows[1][:2] == ["+1+2", '=HYPERLINK("http://x")']
    assert rows[2][:2] == ["-3", "@SUM(A1)"]
    assert rows[2][6] == "=cmd|' /C calc'!A0"
    # XML keeps a CR only escaped as _x000D_, which Excel decodes and openpyxl does not.
    assert rows[3][:2] == ["_x000D_CR", "\tTab"]
    for row in ws.iter_rows(min_row=2):
        for cell in row:
            assert cell.data_type != "f"
    for letter in "ABGI":
        assert all(c.data_type == "s" for c in ws[letter] if c.value is not None)
    # Numbers are numbers, missing is empty, booleans are booleans.
    assert [r[3] for r in rows] == [1, 1, 7, 1]
    assert [r[4] for r in rows] == [10.5, None, 3, 0]
    assert [r[7] for r in rows] == [True, True, True, True]
    assert [r[8] for r in rows] == [None, None, None, "C0000004"]
    # Date columns are real dates with a date format.
    assert [r[5] for r in rows] == [
        datetime(2025, 1, 5),
        None,
        datetime(2024, 12, 31),
        datetime(2025, 2, 28),
    ]
    assert ws["C2"].is_date
    assert ws["C2"].number_format == "yyyy-mm-dd hh:mm"
    assert ws["F2"].is_date
    assert ws["F2"].number_format == "yyyy-mm-dd"
    # Widths fit the header at least and are capped.
    for letter, name in zip("ABCDEFGHI", COLUMNS, strict=True):
        width = ws.column_dimensions[letter].width
        assert len(name) <= width <= 51


def test_csv_reads_back_in_excel_encoding(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = export_recipients(frame, tmp_path / "r.csv", COLUMNS, progress=False)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to see UTF-8
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == COLUMNS
    assert rows[1][:3] == ["Šťastná", "Ľubica", "2025-01-15 11:30:00"]
    assert rows[2][:2] == ["'+1+2", '\'=HYPERLINK("http://x")']
    assert rows[3][:2] == ["'-3", "'@SUM(A1)"]
    assert rows[3][6] == "'=cmd|' /C calc'!A0"
    assert rows[4][:2] == ["'\rCR", "'\tTab"]
    assert [r[5] for r in rows[1:]] == ["2025-01-05", "", "2024-12-31", "2025-02-28"]
    assert [r[4] for r in rows[1:]] == ["10.5", "", "3.0", "0.0"]


def test_contact_columns_need_permission(frame: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"\['address'\] identify people.*include_contact_data"):
        export_recipients(frame, tmp_path / "r.xlsx", ["first_name", "address"])
    assert not (tmp_path / "r.xlsx").exists()
    extra = frame.assign(work_email="x@y.sk")
    with pytest.raises(BulkmailError, match="work_email"):
        export_recipients(extra, tmp_path / "r.csv", ["work_email"])
    path = export_recipients(
        frame,
        tmp_path / "r.xlsx",
        ["first_name", "address"],
        include_contact_data=True,
        progress=False,
    )
    ws = openpyxl.load_workbook(path).active
    # A phone number starts with "+": it is a string cell, shown exactly as stored.
    assert [c.value for c in ws["B"]] == [
        "address",
        "p1@sk.example.net",
        "p2@sk.example.net",
        "p3@sk.example.net",
        "+421903123456",
    ]
    assert all(c.data_type == "s" for c in ws["B"])


def test_default_columns_leave_contact_data_out(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = export_recipients(frame, tmp_path / "r.csv", progress=False)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == [c for c in frame.columns if c != "address"]
    path = export_recipients(frame, tmp_path / "all.csv", include_contact_data=True, progress=False)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        assert next(csv.reader(fh)) == list(frame.columns)


@pytest.mark.parametrize(
    ("columns", "name", "match"),
    [
        (["first_name", "nickname"], "r.xlsx", r"\['nickname'\] are not in the frame"),
        (["first_name", "first_name"], "r.xlsx", "twice"),
        ([], "r.xlsx", "at least one"),
        ("first_name", "r.xlsx", "list of column names"),
        (["first_name"], "r.ods", ".xlsx or .csv"),
    ],
)
def test_bad_requests_are_explained(frame, tmp_path: Path, columns, name: str, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        export_recipients(frame, tmp_path / name, columns, progress=False)


def test_contact_column_names() -> None:
    assert is_contact_column("address")
    assert is_contact_column("Phone")
    assert is_contact_column("work_email")
    assert not is_contact_column("first_name")
    assert neutralise("=1") == "'=1"
    assert neutralise("a=1") == "a=1"


def test_large_export_keeps_every_row(tmp_path: Path) -> None:
    frame = make_frame(25_000, seed=9)
    columns = ["contact_point_id", "first_name", "registered_at", "city", "spend", "address"]
    path = export_recipients(
        frame, tmp_path / "big.xlsx", columns, include_contact_data=True, progress=True
    )
    wb = openpyxl.load_workbook(path, read_only=True)
    rows = list(wb.active.iter_rows(values_only=True))
    wb.close()  # read-only mode keeps the zip open until told
    assert len(rows) == 25_001
    last = frame.iloc[-1]
    assert rows[-1][0] == last["contact_point_id"]
    assert rows[-1][1] == last["first_name"]
    assert rows[-1][3] == last["city"]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(
        st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t), min_size=1, max_size=5
    )
)
def test_any_text_comes_back_as_written(tmp_path: Path, texts: list[str]) -> None:
    frame = tiny_frame([{"contact_point_id": i, "contact_id": i} for i in range(len(texts))])
    frame["first_name"] = pd.array(texts, dtype="str")
    path = export_recipients(frame, tmp_path / "h.xlsx", ["first_name"], progress=False)
    ws = openpyxl.load_workbook(path).active
    got = [_decode_ooxml(c.value) for c in ws["A"]][1:]
    assert got == texts
    for cell in ws["A"]:
        assert cell.data_type == "s"


RISKY = [
    "=1+1",
    "+421944676733",
    "-3",
    "@SUM(A1)",
    "\tTab",
    "\rCR",
    '=HYPERLINK("http://evil.example/", "click")',
    "=cmd|' /C calc'!A0",
    "0903 123 456",
    "00421944676733",
    "1e5",
    "TRUE",
    "http://example.com",
    "'quoted",
    "_x0041_",
]


@pytest.mark.parametrize("dtype", ["str", "object", "category"])
def test_xlsx_shows_every_text_as_typed(tmp_path: Path, dtype: str) -> None:
    frame = tiny_frame([{"contact_point_id": i, "contact_id": i} for i in range(len(RISKY))])
    frame["note"] = pd.Series(RISKY, index=frame.index).astype(dtype)
    frame["phone"] = pd.Series(RISKY, index=frame.index).astype(dtype)
    frame = frame.rename(columns={"note": "=header"})
    path = export_recipients(
        frame, tmp_path / "t.xlsx", ["=header", "phone"], include_contact_data=True, progress=False
    )
    ws = openpyxl.load_workbook(path).active
    assert [c.value for c in ws[1]] == ["=header", "phone"]
    for letter in "AB":
        cells = list(ws[letter])
        assert [_decode_ooxml(c.value) for c in cells[1:]] == RISKY
        # A string cell: nothing evaluated, no formula, no number made of "1e5" or a phone.
        assert [c.data_type for c in cells] == ["s"] * len(cells)
    # The same cells in .csv keep the apostrophe: CSV has no types, Excel would run them.
    path = export_recipients(
        frame, tmp_path / "t.csv", ["=header", "phone"], include_contact_data=True, progress=False
    )
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["'=header", "phone"]
    assert [r[1] for r in rows[1:]] == [neutralise(t) for t in RISKY]
    assert rows[2][1] == "'+421944676733"


def _decode_ooxml(text: str) -> str:
    # XML 1.0 cannot hold most control characters: xlsxwriter writes them as _xHHHH_,
    # which Excel decodes on reading and openpyxl leaves as is.
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), text)


def test_exports_go_to_the_data_folder_by_default(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("BULKMAIL_DATA_DIR", str(data))
    monkeypatch.setenv("BULKMAIL_TZ", "Europe/Bratislava")
    elsewhere = tmp_path / "notebooks"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # No path: a dated file in data/exports/, the folder created on the way.
    assert not (data / "exports").exists()
    path = export_recipients(frame, columns=["first_name"], progress=False)
    assert path.parent == data / "exports"
    assert re.fullmatch(r"recipients-\d{8}-\d{6}\.xlsx", path.name)
    assert openpyxl.load_workbook(path).active["A2"].value == "Ľubica"
    # A bare file name goes there too; nothing lands in the working folder.
    path = export_recipients(frame, "segment.csv", ["first_name"], progress=False)
    assert path == data / "exports" / "segment.csv"
    assert path.exists()
    assert list(elsewhere.iterdir()) == []
    # A path with a folder wins, relative to the working folder or absolute.
    path = export_recipients(frame, Path("mine") / "r.xlsx", ["first_name"], progress=False)
    assert path == Path("mine") / "r.xlsx"
    assert (elsewhere / "mine" / "r.xlsx").exists()
    path = export_recipients(frame, tmp_path / "abs.csv", ["first_name"], progress=False)
    assert path == tmp_path / "abs.csv"
    assert path.exists()


def test_default_export_name_is_local_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BULKMAIL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BULKMAIL_TZ", "Europe/Bratislava")
    # 23:30 UTC on 30 June is already 1 July, 01:30:05 in Bratislava.
    target = export_target(None, now=datetime(2025, 6, 30, 23, 30, 5, tzinfo=UTC))
    assert target == tmp_path / "exports" / "recipients-20250701-013005.xlsx"


def test_data_folder_exports_are_ignored_by_git() -> None:
    root = Path(__file__).resolve().parents[1]
    ignored = (root / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "data/exports/" in ignored

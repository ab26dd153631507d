"""Reading bad source files: a runaway CSV quote, formulas without values, files in disguise."""

from __future__ import annotations

import csv
import gzip
import io
import subprocess
import sys
import tempfile
import textwrap
import zipfile
import zlib
from pathlib import Path

import openpyxl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.contacts.report import ImportResult
from bulkmail_kernel.contacts.sources import read_csv
from bulkmail_kernel.exceptions import ContactImportError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(textwrap.dedent(text).lstrip("\n").encode("utf-8"))
    return path


def rejected(result: ImportResult) -> list[tuple[int, str]]:
    report = result.report
    lines = report[report["action"] == "rejected"]
    return list(zip(lines["row"].tolist(), lines["reason"].tolist(), strict=True))


# --------------------------------------------------------------------------- CSV quotes


def test_unclosed_quote_names_its_row_and_loses_no_row(
    tmp_path: Path, database: dbmod.Database
) -> None:
    # Five data rows; row 2 holds a real two-line address, so row 3 starts on line 4.
    path = write(tmp_path, "people.csv", """
        first_name,email,city
        Ján,jan@sk.example.net,"Hlavná 1
        Bratislava"
        "Eva,eva@sk.example.net,Košice
        Olga,olga@sk.example.net,Žilina
        Peter,peter@sk.example.net,Nitra
        Ivan,ivan@sk.example.net,Trnava
    """)  # fmt: skip
    result = import_contacts(path, db=database, progress=False)
    # Before: 4 rows reported, Olga, Peter and Ivan gone into Eva's name, no line said so.
    assert (result.rows, result.rejected, result.committed) == (5, 1, False)
    assert rejected(result) == [
        (3, "row 3 (line 4): a quote opens in column 'first_name' and never closes; the next 3 "
            "lines (lines 5–7) were read into it and are read again as rows — close the quote "
            "or remove it"),
    ]  # fmt: skip
    result = import_contacts(path, db=database, progress=False, on_error="skip")
    assert (result.rows, result.inserted, result.rejected) == (5, 4, 1)
    people = contacts_frame(database)
    assert sorted(people["first_name"]) == ["Ivan", "Ján", "Olga", "Peter"]
    assert sorted(people["city"]) == ["Hlavná 1 Bratislava", "Nitra", "Trnava", "Žilina"]


def test_a_quote_closed_rows_later_is_reported_where_it_opened(
    tmp_path: Path, database: dbmod.Database
) -> None:
    # The quote opened in row 3 closes at the start of row 4's quoted city.
    path = write(tmp_path, "people.csv", """
        first_name,email,city
        Ján,jan@sk.example.net,Bratislava
        "Eva,eva@sk.example.net,Košice
        Olga,olga@sk.example.net,"Žilina"
        Peter,peter@sk.example.net,Nitra
        Ivan,ivan@sk.example.net,Trnava
    """)  # fmt: skip
    result = import_contacts(path, db=database, progress=False, on_error="skip")
    assert rejected(result) == [
        (3, "row 3 (line 3): a quote opens in column 'first_name' and does not close on its line; "
            "the next line (line 4) was read into it and is read again as a row — close the "
            "quote or remove it"),
    ]  # fmt: skip
    assert (result.rows, result.inserted) == (5, 4)
    assert "Žilina" in set(contacts_frame(database)["city"])


def test_quoted_line_breaks_are_cells_not_runaway_quotes(
    tmp_path: Path, database: dbmod.Database
) -> None:
    path = write(tmp_path, "notes.csv", """
        first_name,email,note
        Ján,jan@sk.example.net,"first line
        second line"
        Eva,eva@sk.example.net,"a ""quoted"" word
        on two lines, with a comma"
    """)  # fmt: skip
    result = import_contacts(path, db=database, progress=False)
    assert (result.rows, result.inserted, result.rejected) == (2, 2, 0)
    # The cell's last line plus the rest of the row splits as a row does: still one cell.
    first = write(tmp_path, "first.csv", """
        note,email
        "first line
        second line",jan@sk.example.net
    """)  # fmt: skip
    assert read_csv(first).broken == []
    notes = sorted(contacts_frame(database)["note"])
    # One cell each (the importer turns a line break in a value into a space).
    assert notes == ['a "quoted" word on two lines, with a comma', "first line second line"]


_CELL = st.text(st.sampled_from('ab ,;"\n\t@'), max_size=12).filter(
    # A cell holding both a line break and the delimiter can put a middle line that splits
    # as a row into a valid file: the one false alarm _runaway documents (reported, not lost).
    lambda cell: not ("\n" in cell and "," in cell)
)


@given(st.integers(1, 4).flatmap(lambda w: st.lists(st.lists(_CELL, min_size=w, max_size=w),
                                                    min_size=1, max_size=6)))  # fmt: skip
def test_valid_csv_reads_back_cell_for_cell(rows: list[list[str]]) -> None:
    """Whatever a CSV writer quotes (quotes, delimiters, line breaks) is read back as written."""
    header = [f"c{i}" for i in range(len(rows[0]))]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        path.write_text(out.getvalue(), encoding="utf-8")
        table = read_csv(path, delimiter=",")
    assert table.broken == []
    expected = [
        (n, dict(zip(header, row, strict=True)))
        for n, row in enumerate(rows, start=2)
        if any(c.strip() for c in row)  # blank rows are skipped, as before
    ]
    assert [(r.row, r.cells) for r in table.rows] == expected


# --------------------------------------------------------------------------- Excel formulas


def _workbook_with_formulas(path: Path) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["first_name", "email", "phone"])
    ws.append(["Ján", "jan@sk.example.net", "0903 123 456"])
    ws.append(["Eva", '=LOWER("EVA@SK.EXAMPLE.NET")', '=IF(1=1,"","x")'])
    ws.append(['=PROPER("olga")', "olga@sk.example.net", None])
    wb.save(path)
    return path


def _with_saved_values(path: Path, values: dict[str, tuple[str | None, str]]) -> Path:
    """Write into each formula cell the result a spreadsheet program would save with it."""
    out = path.with_name("saved.xlsx")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                text = data.decode()
                for ref, (kind, value) in values.items():
                    start = text.index(f'<c r="{ref}"')
                    end = text.index("</c>", start)
                    cell = (
                        text[start:end]
                        .replace("<v></v>", f"<v>{value}</v>")
                        .replace("<v />", f"<v>{value}</v>")
                    )
                    if kind is not None:
                        cell = cell.replace(f'<c r="{ref}"', f'<c r="{ref}" t="{kind}"', 1)
                    text = text[:start] + cell + text[end:]
                data = text.encode()
            dst.writestr(item, data)
    return out


def test_formulas_without_a_saved_value_are_reported(
    tmp_path: Path, database: dbmod.Database
) -> None:
    path = _workbook_with_formulas(tmp_path / "generated.xlsx")
    result = import_contacts(path, db=database, progress=False, on_error="skip")
    advice = (
        "with no saved value (the file was written by a program that does not calculate "
        "formulas): open the file in Excel or LibreOffice and save it, or paste the values "
        "over the formulas"
    )
    # Before: Eva imported with no e-mail problem named, Olga imported without a name.
    assert rejected(result) == [
        (3, "row 3: column 'email' holds the formula =LOWER(\"EVA@SK.EXAMPLE.NET\"); column "
            f"'phone' holds the formula =IF(1=1,\"\",\"x\") {advice}"),
        (4, f"row 4: column 'first_name' holds the formula =PROPER(\"olga\") {advice}"),
    ]  # fmt: skip
    assert (result.rows, result.inserted) == (3, 1)


def test_formulas_with_saved_values_are_read_as_their_values(
    tmp_path: Path, database: dbmod.Database
) -> None:
    # What Excel or LibreOffice write: the result beside each formula, an empty text as t="str".
    path = _with_saved_values(
        _workbook_with_formulas(tmp_path / "generated.xlsx"),
        {"B3": ("str", "eva@sk.example.net"), "C3": ("str", ""), "A4": ("str", "Olga")},
    )
    result = import_contacts(path, db=database, progress=False)
    assert (result.rows, result.inserted, result.rejected) == (3, 3, 0)
    assert sorted(set(contacts_frame(database)["first_name"])) == ["Eva", "Ján", "Olga"]


def test_a_workbook_saved_by_libreoffice_has_its_values(database: dbmod.Database) -> None:
    # tests/data/formulas_saved_by_libreoffice.xlsx is _workbook_with_formulas' file converted
    # once by LibreOffice 7.4 (`libreoffice --headless --convert-to xlsx`): a real program's
    # saved values beside each formula, read as values.
    path = Path(__file__).parent / "data" / "formulas_saved_by_libreoffice.xlsx"
    result = import_contacts(path, db=database, progress=False)
    assert (result.rows, result.inserted, result.rejected) == (3, 3, 0)
    frame = contacts_frame(database)
    assert sorted(set(frame["first_name"])) == ["Eva", "Ján", "Olga"]
    assert "eva@sk.example.net" in set(frame["address"])


# --------------------------------------------------------------------------- files in disguise


def _zip(path: Path, parts: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return path.read_bytes()


def _disguised(tmp_path: Path, kind: str) -> bytes:
    """Return the bytes of a real file of ``kind``, as written by the usual tools."""
    scratch = tmp_path / f"scratch.{kind}"
    if kind == "gzip":
        return gzip.compress(b"email\njan@sk.example.net\n")
    if kind == "zip":
        return _zip(scratch, {"export/contacts.csv": b"email\n", "readme.txt": b"hi"})
    if kind == "ods":
        mimetype = b"application/vnd.oasis.opendocument.spreadsheet"
        return _zip(scratch, {"mimetype": mimetype, "content.xml": b"<office:document/>"})
    if kind == "docx":
        return _zip(scratch, {"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>"})
    if kind == "png":
        return b"\x89PNG\r\n\x1a\n" + zlib.compress(bytes(range(256)) * 8)
    if kind == "pdf":
        return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
    if kind == "xls":
        # An OLE2 compound file: what Excel 97-2003 writes (its first sector, zero-filled).
        return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    if kind == "html":
        return b"<html><body><table><tr><td>email</td></tr></table></body></html>"
    if kind == "binary":
        return zlib.compress(bytes(range(256)) * 64)[2:]  # deflate data: bytes of every kind
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("pdf", "contacts.csv is a PDF document, not a CSV file: a PDF holds no table "
                "bulkmail can read: export the list as CSV or Excel from the program that "
                "made the PDF"),
        ("gzip", "contacts.csv is a gzip-compressed file, not a CSV file: decompress it "
                 "(gunzip) and import the file inside"),
        ("zip", "contacts.csv is a zip archive (export/contacts.csv, readme.txt), not a CSV "
                "file: extract it and import the contacts file inside"),
        ("ods", "contacts.csv is an OpenDocument spreadsheet (ods), not a CSV file: open it in "
                "Excel or LibreOffice and save it as .xlsx or as CSV UTF-8"),
        ("xls", "contacts.csv is an old-format Microsoft Office file (an Excel 97-2003 .xls "
                "workbook, or a Word .doc), not a CSV file: open it in Excel or LibreOffice "
                "and save it as .xlsx or as CSV UTF-8"),
        ("docx", "contacts.csv is a Word document (docx), not a CSV file: copy the table into "
                 "Excel and save it as .xlsx or as CSV UTF-8"),
        ("png", "contacts.csv is a PNG image, not a CSV file: an image holds no contacts: "
                "export the list as CSV or Excel"),
        ("html", "contacts.csv is an HTML page (some programs label such an export 'Excel'), "
                 "not a CSV file: open it in Excel or LibreOffice and save it as .xlsx or as "
                 "CSV UTF-8"),
        ("binary", "contacts.csv is a binary file, not a CSV file: it is not text; export the "
                   "contacts as CSV UTF-8 or as .xlsx from the program that made it"),
    ],
)  # fmt: skip
def test_a_file_renamed_csv_is_named_for_what_it_is(
    tmp_path: Path, sqlite_url: str, kind: str, message: str
) -> None:
    path = tmp_path / "contacts.csv"
    path.write_bytes(_disguised(tmp_path, kind))
    # Before: "the file is neither UTF-8 nor cp1250 nor cp1251" (or a list of garbage rows).
    with pytest.raises(ContactImportError) as caught:
        import_contacts(path, url=sqlite_url, progress=False)
    assert str(caught.value) == message


def test_a_workbook_renamed_csv_is_read_as_a_workbook_and_says_so(
    tmp_path: Path, database: dbmod.Database
) -> None:
    path = tmp_path / "contacts.csv"
    _workbook_with_formulas(tmp_path / "book.xlsx").rename(path)
    result = import_contacts(path, db=database, progress=False, on_error="skip")
    note = (
        "contacts.csv is an Excel workbook (xlsx), not a CSV file: it was read as a workbook "
        "(sheet 1); rename it to .xlsx to avoid this note"
    )
    assert result.notes == (note,)
    assert f"note: {note}" in repr(result)
    assert (result.rows, result.inserted, result.rejected) == (3, 1, 2)


def test_a_csv_renamed_xlsx_says_so(tmp_path: Path, sqlite_url: str) -> None:
    path = write(tmp_path, "contacts.xlsx", "email\njan@sk.example.net\n")
    with pytest.raises(ContactImportError) as caught:
        import_contacts(path, url=sqlite_url, progress=False)
    assert str(caught.value) == (
        "contacts.xlsx is a text file (perhaps CSV), not an .xlsx workbook: rename it to .csv"
    )


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_unicode_text_is_read(
    tmp_path: Path, database: dbmod.Database, encoding: str
) -> None:
    # Excel's "Unicode text": UTF-16 LE with a BOM, tab-separated; some tools drop the BOM.
    path = tmp_path / "unicode.txt"
    path.write_bytes("first_name\temail\nJán\tjan@sk.example.net\nЁлка\telka@sk.example.net\n"
                     .encode(encoding))  # fmt: skip
    result = import_contacts(path, db=database, progress=False)
    assert (result.inserted, result.delimiter) == (2, "\t")
    assert result.encoding == encoding
    assert sorted(contacts_frame(database)["first_name"]) == ["Ján", "Ёлка"]


def test_the_command_says_what_the_file_is_in_one_line(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "contacts.csv"
    path.write_bytes(_disguised(tmp_path, "pdf"))
    done = subprocess.run(
        [sys.executable, "-m", "bulkmail_kernel.cli", "import", str(path), "--db", sqlite_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "bulkmail import: contacts.csv is a PDF document, not a CSV file: a PDF holds no table "
        "bulkmail can read: export the list as CSV or Excel from the program that made the PDF"
    ]


def test_text_in_no_known_encoding_names_the_byte(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "odd.csv"
    path.write_bytes(b"email;name\njan@sk.example.net;J\x98n\n")
    with pytest.raises(ContactImportError) as caught:
        import_contacts(path, url=sqlite_url, progress=False)
    assert str(caught.value) == (
        "odd.csv: the file is not text in UTF-8, UTF-16, cp1250 or cp1251 (bytes such as 0x98 "
        "fit none of them): save it as CSV UTF-8, or pass encoding=... if you know it"
    )


def test_other_names_are_judged_by_their_bytes_too(
    tmp_path: Path, database: dbmod.Database
) -> None:
    old = tmp_path / "contacts.xls"
    old.write_bytes(_disguised(tmp_path, "xls"))
    with pytest.raises(ContactImportError) as caught:
        import_contacts(old, db=database, progress=False)
    assert str(caught.value) == (
        "contacts.xls is an old-format Microsoft Office file (an Excel 97-2003 .xls workbook, "
        "or a Word .doc), which bulkmail does not read: open it in Excel or LibreOffice and "
        "save it as .xlsx or as CSV UTF-8"
    )
    bare = tmp_path / "contacts"
    _workbook_with_formulas(tmp_path / "book.xlsx").rename(bare)
    result = import_contacts(bare, db=database, progress=False, on_error="skip")
    assert result.notes == (
        "contacts is an Excel workbook (xlsx): it was read as a workbook (sheet 1); rename it "
        "to .xlsx to avoid this note",
    )
    assert result.inserted == 1

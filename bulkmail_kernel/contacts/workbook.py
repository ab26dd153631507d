"""Reading an Excel .xlsx workbook: the values Excel saved, formulas never run.

A formula cell is read as the value Excel (or LibreOffice) cached when it last saved
the file; a formula with no cached value, as a generator writes it, is reported by
row, column and formula rather than read as empty.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import defusedxml.ElementTree as SafeET

from bulkmail_kernel.contacts.table import SourceRow, SourceTable
from bulkmail_kernel.exceptions import ContactImportError


def read_xlsx(path: Path, *, sheet: str | int | None = None) -> SourceTable:
    """Read the first (or the named) sheet of an .xlsx workbook; formulas are never run.

    A formula cell is read as the value Excel cached when it last saved the file
    (``data_only=True``); openpyxl does not evaluate anything.
    """
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        # From bytes: openpyxl refuses a path whose extension is not .xlsx, and a workbook
        # saved as contacts.csv is read as the workbook it is (see sources.read_source).
        wb = openpyxl.load_workbook(io.BytesIO(path.read_bytes()), read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise ContactImportError(
            f"{path.name}: not a readable .xlsx workbook: {exc}", source=str(path)
        ) from exc
    try:
        if sheet is None:
            ws = wb.worksheets[0]
        elif isinstance(sheet, int):
            ws = wb.worksheets[sheet]
        else:
            ws = wb[sheet]
    except (IndexError, KeyError) as exc:
        wb.close()
        raise ContactImportError(
            f"{path.name}: no sheet {sheet!r}; the sheets are {wb.sheetnames}",
            source=str(path),
        ) from exc
    try:
        it = ws.iter_rows(values_only=True)
        header_cells = next(it, None)
        if header_cells is None:
            raise ContactImportError(f"{path.name}: the sheet is empty", source=str(path))
        header = [("" if h is None else str(h).strip()) for h in header_cells]
        while header and not header[-1]:
            header.pop()
        rows: list[SourceRow] = []
        unknown = _formulas_without_value(path, getattr(ws, "_worksheet_path", None))
        broken: list[tuple[int, str]] = []
        for number, values in enumerate(it, start=2):
            cells = list(values[: len(header)]) + [None] * (len(header) - len(values))
            lost = [(header[col], f) for col, f in unknown.get(number, {}).items()
                    if col < len(header) and header[col]]  # fmt: skip
            if lost:
                # The value is unknown, not empty: importing the row without it (an empty
                # e-mail, a missing name) would change the contact silently.
                broken.append((number, _formula_reason(number, lost)))
                continue
            if all(v is None or (isinstance(v, str) and not v.strip()) for v in cells):
                continue
            rows.append(SourceRow(number, dict(zip(header, cells, strict=True))))
    finally:
        wb.close()
    return SourceTable(path.name, "xlsx", header, rows, broken)


_CELL_REF = re.compile(r"([A-Z]+)(\d+)")


def _formulas_without_value(path: Path, part: str | None) -> dict[int, dict[int, str]]:
    """Return {row: {column index: formula}} of the sheet's formulas with no saved value.

    Excel and LibreOffice save each formula's last result next to it, and that is what
    bulkmail reads (formulas are never run). A file written by openpyxl or another
    generator has the formula alone, which openpyxl reads as empty, as it reads a
    formula whose result is an empty text. The sheet's XML tells them apart: a saved
    empty text is ``<c t="str"><f>..</f><v></v></c>``; no result is no ``<v>`` or an
    empty one without ``t="str"``.
    """
    if part is None:  # openpyxl keeps the part name privately; without it, nothing to check
        return {}
    found: dict[int, dict[int, str]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            if not _has_formulas(archive, part):
                return {}  # the usual list: a byte scan, not a second parse of the sheet
            with archive.open(part) as xml:
                for _, el in SafeET.iterparse(xml):
                    if _local(el.tag) != "c":
                        continue
                    children = {_local(child.tag): child for child in el}
                    formula = children.get("f")
                    value = children.get("v")
                    if formula is not None and (
                        value is None or (not value.text and el.get("t") != "str")
                    ):
                        ref = _CELL_REF.fullmatch(el.get("r") or "")
                        if ref is not None:
                            column = _column_index(ref.group(1))
                            text = f"={formula.text}" if formula.text else "a shared formula"
                            found.setdefault(int(ref.group(2)), {})[column] = text
                    el.clear()
    except (KeyError, OSError, zipfile.BadZipFile, SafeET.ParseError):
        return {}  # openpyxl read the sheet: what it could not, it reported itself
    return found


_FORMULA_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?f[\s>/]")


def _has_formulas(archive: zipfile.ZipFile, part: str) -> bool:
    """Say whether the sheet's XML holds a formula element, reading it in chunks."""
    tail = b""
    with archive.open(part) as xml:
        while chunk := xml.read(1 << 20):
            if _FORMULA_TAG.search(tail + chunk):
                return True
            tail = chunk[-64:]  # a tag cut between two chunks is found in the next
    return False


def _column_index(letters: str) -> int:
    index = 0
    for ch in letters:
        index = index * 26 + ord(ch) - ord("A") + 1
    return index - 1


def _formula_reason(row: int, lost: list[tuple[str, str]]) -> str:
    cells = "; ".join(f"column {name!r} holds the formula {f}" for name, f in lost)
    return (
        f"row {row}: {cells} with no saved value (the file was written by a program that "
        "does not calculate formulas): open the file in Excel or LibreOffice and save it, "
        "or paste the values over the formulas"
    )


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]

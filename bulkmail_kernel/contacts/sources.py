"""Reading contact sources: CSV, Excel, XML, another SQL database, a DataFrame.

Each reader turns its source into a :class:`SourceTable`: a header and the data
rows, each with the row number a person sees (spreadsheet row with the header as
row 1, XML ``<contact>`` element number, SQL result row). Validation and
de-duplication happen in :mod:`bulkmail_kernel.contacts.importer`; this module only reads,
and raises :class:`ContactImportError` when a source cannot be read at all.
"""

from __future__ import annotations

import csv
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET
import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.exceptions import ContactImportError

#: Encodings tried for CSV files, in the order ties are broken.
CSV_ENCODINGS = ("utf-8", "utf-8-sig", "cp1250", "cp1251")
#: Delimiters considered when sniffing a CSV header.
CSV_DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True)
class XmlPoint:
    """One ``<email>`` or ``<phone>`` element of an XML contact."""

    channel: str
    value: str
    kind: str | None = None
    type: str | None = None
    allowed: str | None = None


@dataclass(frozen=True)
class SourceRow:
    """One data row of a source: its visible number and its cells by column name."""

    row: int
    cells: dict[str, Any]
    #: XML only: the contact's ``<email>``/``<phone>`` elements, in document order.
    points: tuple[XmlPoint, ...] = ()


@dataclass(frozen=True)
class SourceTable:
    """A source read into memory, before any validation."""

    name: str
    kind: str
    columns: list[str]
    rows: list[SourceRow]
    #: Rows that could not even be split into cells: (row number, reason).
    broken: list[tuple[int, str]] = field(default_factory=list)
    encoding: str | None = None
    delimiter: str | None = None


# --------------------------------------------------------------------------- CSV


_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_WORD = re.compile(r"\w+")


def implausible_words(text: str) -> int:
    """Count words that look like text decoded with the wrong code page.

    Slovak or Czech cp1250 read as cp1251 gives words that mix Latin and Cyrillic
    ("Jбn"); Russian cp1251 read as cp1250 gives words made mostly of accented
    Latin letters ("Čâŕí"). Real words do neither.
    """
    bad = 0
    for word in _WORD.findall(text):
        has_cyr = bool(_CYRILLIC.search(word))
        latin = _LATIN.findall(word)
        if has_cyr and latin:
            bad += 1
        elif latin and len(latin) >= 2:
            accented = sum(1 for ch in latin if ord(ch) > 127)
            if accented * 2 > len(latin):
                bad += 1
    return bad


def detect_encoding(data: bytes) -> str:
    """Return the encoding of CSV bytes among utf-8, utf-8-sig, cp1250 and cp1251."""
    if data.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return "utf-8"
    scores: list[tuple[int, int, str]] = []
    for order, enc in enumerate(("cp1250", "cp1251")):
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        scores.append((implausible_words(text), order, enc))
    if not scores:
        raise ContactImportError(
            "the file is neither UTF-8 nor cp1250 nor cp1251; save it as UTF-8 "
            "or pass encoding=...",
        )
    return min(scores)[2]


def sniff_delimiter(header_line: str) -> str:
    """Return the most frequent of , ; TAB | in the header line (comma on a tie)."""
    counts = {d: header_line.count(d) for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_csv(
    path: Path, *, encoding: str | None = None, delimiter: str | None = None
) -> SourceTable:
    """Read a CSV file, detecting its encoding and delimiter unless given."""
    data = path.read_bytes()
    enc = encoding or detect_encoding(data)
    try:
        text = data.decode(enc)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ContactImportError(
            f"{path.name}: cannot decode as {enc}: {exc}; pass the right encoding=...",
            source=str(path),
        ) from exc
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise ContactImportError(f"{path.name}: the file is empty", source=str(path))
    delim = delimiter or sniff_delimiter(text.split("\n", 1)[0])
    records, broken = _csv_records(path, text, delim)
    header = [h.strip() for h in records[0][1]]
    rows: list[SourceRow] = []
    # The row number is the record number, as a spreadsheet shows it (header = row 1),
    # so a quoted line break inside a cell does not shift the numbers that follow.
    for number, fields in records[1:]:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) > len(header) and not any(f.strip() for f in fields[len(header) :]):
            fields = fields[: len(header)]  # trailing empty cells some exporters add
        if len(fields) != len(header):
            broken.append(
                (number, f"row {number} has {len(fields)} fields, the header has {len(header)}")
            )
            continue
        rows.append(SourceRow(number, dict(zip(header, fields, strict=True))))
    broken.sort()
    return SourceTable(path.name, "csv", header, rows, broken, encoding=enc, delimiter=delim)


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")


def _csv_records(
    path: Path, text: str, delim: str
) -> tuple[list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """Split CSV text into (row number, fields) records; a runaway quote is a broken row.

    A quote that opens a cell and does not close on its line makes the csv module read
    the following lines into that cell: good rows vanish with no trace (issue 14: a
    5-row file imported as 4). When the lines so swallowed look like rows of their own,
    the row where the quote opened is reported broken, naming its line and column, and
    reading starts again on the next line. Rejecting that one row rather than stopping
    the import loses nothing silently: the report names it, the default on_error="raise"
    then commits nothing, and the swallowed rows are checked like any other, so
    on_error="skip" imports them and the user fixes one row, not the whole file.
    """
    lines = [m.group(0) for m in _LINE.finditer(text) if m.group(0)]
    records: list[tuple[int, list[str]]] = []
    broken: list[tuple[int, str]] = []
    width = 0
    start = 0  # index of the next line to read
    while start < len(lines):
        reader = csv.reader(iter(lines[start:]), delimiter=delim)
        done = 0  # lines of this reader consumed by the records before
        restart = None
        try:
            for fields in reader:
                first, last = start + done, start + reader.line_num - 1  # 0-based line indexes
                done = reader.line_num
                number = len(records) + len(broken) + 1
                if not records:
                    width = len(fields)
                    if last > first:
                        raise ContactImportError(
                            f"{path.name}: a quote in the header (line 1) does not close on its "
                            f"line, so lines 2–{last + 1} were read into it: close the quote or "
                            "remove it",
                            source=str(path),
                        )
                    records.append((number, fields))
                    continue
                why = None
                if last > first:
                    at_end = last == len(lines) - 1
                    why = _runaway(lines[first : last + 1], fields, width, delim, at_end=at_end)
                if why is not None:
                    broken.append(
                        (number, _runaway_reason(records[0][1], number, why, first, last))
                    )
                    restart = first + 1
                    break
                records.append((number, fields))
        except csv.Error as exc:
            line = start + reader.line_num
            raise ContactImportError(
                f"{path.name}: line {line} is not readable CSV: {exc}", source=str(path)
            ) from exc
        if restart is None:
            break
        start = restart
    return records, broken


def _runaway_reason(
    header: list[str], row: int, why: tuple[int, str], first: int, last: int
) -> str:
    """Say which row, line and column a runaway quote opened in, and what to do."""
    column, closes = why
    name = header[column].strip() if column < len(header) else ""
    where = f"column {name!r}" if name else f"column {column + 1}"
    n = last - first
    what = (
        f"the next line (line {first + 2}) was read into it and is read again as a row"
        if n == 1
        else f"the next {n} lines (lines {first + 2}–{last + 1}) were read into it and are "
        "read again as rows"
    )
    return (
        f"row {row} (line {first + 1}): a quote opens in {where} and {closes}; {what} "
        "— close the quote or remove it"
    )


def _runaway(
    lines: list[str], fields: list[str], width: int, delim: str, *, at_end: bool
) -> tuple[int, str] | None:
    """Say where a quote of a record spanning ``lines`` ran away: (column, how), or None.

    A quoted cell may hold a line break (an address on two lines): that record spans
    lines too. It counts as runaway only when the quote never closes, when the record
    does not have the header's number of fields, or when a line read into the cell
    splits on its own into the header's number of fields, as a row does.
    """
    column = next((i for i, f in enumerate(fields) if "\n" in f or "\r" in f), 0)
    if at_end and "".join(lines).count('"') % 2:
        return column, "never closes"
    looks_like_rows = any(
        len(next(csv.reader([line], delimiter=delim), [])) == width for line in lines[1:]
    )
    if len(fields) != width or (width > 1 and looks_like_rows):
        return column, "does not close on its line"
    return None


# --------------------------------------------------------------------------- Excel


def read_xlsx(path: Path, *, sheet: str | int | None = None) -> SourceTable:
    """Read the first (or the named) sheet of an .xlsx workbook; formulas are never run.

    A formula cell is read as the value Excel cached when it last saved the file
    (``data_only=True``); openpyxl does not evaluate anything.
    """
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
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
        with zipfile.ZipFile(path) as archive, archive.open(part) as xml:
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


# --------------------------------------------------------------------------- XML

#: Child elements of <contact> that map to built-in fields (see docs/contacts-xml.md).
XML_FIELDS = {
    "first-name": "first_name",
    "last-name": "last_name",
    "patronymic": "patronymic",
    "gender": "gender",
    "language": "language",
    "registered": "registered_at",
}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_xml(path: Path) -> SourceTable:
    """Read a recipients XML file (docs/contacts-xml.md); DTD entities are refused."""
    try:
        tree = SafeET.parse(path)
    except defusedxml.DefusedXmlException as exc:
        # Entity declarations can expand to gigabytes ("billion laughs") or read
        # local files (external entities); a contact list never needs them.
        raise ContactImportError(
            f"{path.name}: the XML declares entities ({type(exc).__name__}: {exc}), which "
            "bulkmail refuses because they can expand to gigabytes ('billion laughs') or "
            "read local files; remove the <!DOCTYPE ...> block",
            source=str(path),
        ) from exc
    except SafeET.ParseError as exc:
        raise ContactImportError(
            f"{path.name}: not well-formed XML: {exc}", source=str(path)
        ) from exc
    root = tree.getroot()
    if _local(root.tag) != "contacts":
        raise ContactImportError(
            f"{path.name}: the root element is <{_local(root.tag)}>, expected <contacts> "
            "(see docs/contacts-xml.md)",
            source=str(path),
        )
    columns: list[str] = ["id"]
    rows: list[SourceRow] = []
    for number, el in enumerate((e for e in root if _local(e.tag) == "contact"), start=1):
        cells: dict[str, Any] = {}
        if el.get("id") is not None:
            cells["id"] = el.get("id")
        points: list[XmlPoint] = []
        for child in el:
            tag = _local(child.tag)
            text = (child.text or "").strip()
            if tag in ("email", "phone"):
                points.append(
                    XmlPoint(
                        channel=tag,
                        value=text,
                        kind=child.get("kind"),
                        type=child.get("type"),
                        allowed=child.get("mailing-allowed"),
                    )
                )
                continue
            name = f"attribute[{child.get('name', '')}]" if tag == "attribute" else tag
            cells[name] = child.text or ""
            if name not in columns:
                columns.append(name)
        rows.append(SourceRow(number, cells, tuple(points)))
    return SourceTable(path.name, "xml", columns, rows)


# --------------------------------------------------------------------------- SQL, DataFrame


def read_sql(url: str, *, table: str | None = None, query: str | None = None) -> SourceTable:
    """Read a table or the result of a query from another database at ``url``."""
    if (table is None) == (query is None):
        raise ContactImportError(
            f"{_hide_password(url)}: give exactly one of table=... or query=...", source=url
        )
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ModuleNotFoundError) as exc:
        raise ContactImportError(f"{url!r} is not a usable database URL: {exc}") from exc
    try:
        with engine.connect() as conn:
            if table is not None:
                # Reflect the table so its name is quoted by SQLAlchemy, never pasted in.
                tbl = sa.Table(table, sa.MetaData(), autoload_with=conn)
                result = conn.execute(sa.select(tbl))
            else:
                result = conn.execute(sa.text(query or ""))
            columns = [str(c) for c in result.keys()]  # noqa: SIM118 (a Result, not a dict)
            rows = [
                SourceRow(n, dict(zip(columns, r, strict=True)))
                for n, r in enumerate(result, start=1)
            ]
    except sa.exc.NoSuchTableError as exc:
        raise ContactImportError(f"{_hide_password(url)}: no table {table!r}", source=url) from exc
    except sa.exc.SQLAlchemyError as exc:
        raise ContactImportError(
            f"{_hide_password(url)}: cannot read contacts: {exc}", source=url
        ) from exc
    finally:
        engine.dispose()
    name = f"{_hide_password(url)} {table or 'query'}"
    return SourceTable(name, "sql", columns, rows)


def read_frame(df: pd.DataFrame, name: str = "DataFrame") -> SourceTable:
    """Wrap a DataFrame as a source; row numbers count from 1."""
    columns = [str(c) for c in df.columns]
    rows = []
    for n, values in enumerate(df.itertuples(index=False, name=None), start=1):
        cells = {c: (None if _is_missing(v) else v) for c, v in zip(columns, values, strict=True)}
        rows.append(SourceRow(n, cells))
    return SourceTable(name, "frame", columns, rows)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # NaN


def _hide_password(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def read_source(
    source: str | Path | pd.DataFrame,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    sheet: str | int | None = None,
    table: str | None = None,
    query: str | None = None,
) -> SourceTable:
    """Read any supported source by its type: .csv/.txt, .xlsx, .xml, a SQL URL, a DataFrame."""
    if isinstance(source, pd.DataFrame):
        return read_frame(source)
    if isinstance(source, str) and "://" in source:
        return read_sql(source, table=table, query=query)
    path = Path(source)
    if not path.exists():
        raise ContactImportError(f"{path}: no such file", source=str(path))
    if path.is_dir():
        raise ContactImportError(f"{path}: is a directory, give a file", source=str(path))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt", ".tsv"):
        return read_csv(path, encoding=encoding, delimiter=delimiter)
    if suffix in (".xlsx", ".xlsm"):
        return read_xlsx(path, sheet=sheet)
    if suffix == ".xml":
        return read_xml(path)
    raise ContactImportError(
        f"{path.name}: unsupported file type {suffix or '(none)'}; bulkmail reads .csv, .xlsx "
        "and .xml files, a SQL URL with table= or query=, or a pandas DataFrame "
        "(save .xls or .ods files as .xlsx first)",
        source=str(path),
    )


def snake_case(name: str) -> str:
    """Return ``name`` as a snake_case identifier (diacritics dropped, Cyrillic kept)."""
    out = re.sub(r"[^\w]+", "_", fold(name), flags=re.UNICODE).strip("_")
    return re.sub(r"_+", "_", out)


def fold(text: str) -> str:
    """Return ``text`` case-folded without Latin diacritics ("Příjmení" -> "prijmeni").

    Cyrillic keeps its marks: "й" and "ё" are letters of their own, not accented ones.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(ch) and not (out and _CYRILLIC.match(out[-1])):
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out)).casefold()


def excel_serial_to_date(value: float) -> datetime:
    """Convert an Excel serial day number (1900 system) to a naive datetime."""
    return datetime(1899, 12, 30) + pd.Timedelta(days=float(value)).to_pytimedelta()

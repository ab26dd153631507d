"""Reading contact sources: CSV, Excel, XML, another SQL database, a DataFrame.

Each reader turns its source into a :class:`SourceTable`: a header and the data
rows, each with the row number a person sees (spreadsheet row with the header as
row 1, XML ``<contact>`` element number, SQL result row). Validation and
de-duplication happen in :mod:`bulkmail_kernel.contacts.importer`; this module only reads,
and raises :class:`ContactImportError` when a source cannot be read at all. What a file
is comes from its first bytes (:mod:`bulkmail_kernel.contacts.sniff`), not its name.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET
import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.contacts.sniff import HEAD_BYTES, sniff, utf16_without_bom
from bulkmail_kernel.contacts.table import SourceRow, SourceTable, XmlPoint
from bulkmail_kernel.contacts.workbook import read_xlsx
from bulkmail_kernel.exceptions import ContactImportError

#: Encodings tried for CSV files without a BOM, in the order ties are broken.
CSV_ENCODINGS = ("utf-8", "utf-8-sig", "cp1250", "cp1251")
#: Delimiters considered when sniffing a CSV header.
CSV_DELIMITERS = (",", ";", "\t", "|")


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
    """Return the encoding of CSV bytes: UTF-8 or UTF-16/32 (by BOM), else cp1250 or cp1251."""
    if data.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):  # before UTF-16's BOM
        return "utf-32"
    # Excel's "Unicode text" (tab-separated) is UTF-16 LE with a BOM; the codecs drop the BOM.
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if (utf16 := utf16_without_bom(data[:HEAD_BYTES])) is not None:
        return utf16
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
            "the file is not text in UTF-8, UTF-16, cp1250 or cp1251 (bytes such as "
            f"0x{_undefined_byte(data):02x} fit none of them): save it as CSV UTF-8, or pass "
            "encoding=... if you know it",
        )
    return min(scores)[2]


def _undefined_byte(data: bytes) -> int:
    """Return the first byte that neither cp1250 nor cp1251 decodes (0x98 for both)."""
    for byte in data:
        if byte >= 0x80:
            try:
                bytes([byte]).decode("cp1250")
                bytes([byte]).decode("cp1251")
            except UnicodeDecodeError:
                return byte
    return 0


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
    try:
        enc = encoding or detect_encoding(data)
    except ContactImportError as exc:
        raise ContactImportError(f"{path.name}: {exc.message}", source=str(path)) from None
    try:
        text = data.decode(enc)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ContactImportError(
            f"{path.name}: cannot decode as {enc}: {exc}; pass the right encoding=...",
            source=str(path),
        ) from exc
    text = text.removeprefix("\ufeff")
    del data  # a large file is held once, not twice
    if not text.strip():
        raise ContactImportError(f"{path.name}: the file is empty", source=str(path))
    delim = delimiter or sniff_delimiter(text.split("\n", 1)[0])
    records, broken = _csv_records(path, text, delim)
    del text
    header = [h.strip() for h in records[0][1]]
    rows: list[SourceRow] = []
    # The row number is the record number, as a spreadsheet shows it (header = row 1),
    # so a quoted line break inside a cell does not shift the numbers that follow.
    # Records are taken from the list as rows are made, so the two are not both held.
    records.reverse()
    records.pop()  # the header
    while records:
        number, fields = records.pop()
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

    A quoted cell may hold a line break (an address on two lines), so a record spanning
    lines is no fault by itself. It is one when the quote never closes; when a quote
    "closes" before other text, as the opening quote of a later row's cell does
    (``"Eva,...`` then ``Olga,...,"Žilina"``: invalid CSV, which Python's csv module
    reads on unless strict); or when a line read into the cell has no quote at all and
    splits on its own into the header's number of fields, as a row does. A valid cell
    whose middle line holds exactly that many fields is the one false alarm left: it is
    reported, never dropped.
    """
    column = next((i for i, f in enumerate(fields) if "\n" in f or "\r" in f), 0)
    if at_end and "".join(lines).count('"') % 2:
        return column, "never closes"
    try:
        list(csv.reader(lines, delimiter=delim, strict=True))
    except csv.Error:
        return column, "does not close on its line"
    for line in lines[1:]:
        cells = next(csv.reader([line], delimiter=delim), [])
        if width > 1 and '"' not in line and len(cells) == width:
            return column, "does not close on its line"
    return None


# --------------------------------------------------------------------------- Excel
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
    if suffix == ".xml":
        return read_xml(path)
    what = sniff(path)
    if suffix in (".xlsx", ".xlsm"):
        if what is None or what.kind != "xlsx":
            # Text (often a CSV saved under the wrong name) or another format altogether.
            description = "a text file (perhaps CSV)" if what is None else what.description
            advice = "rename it to .csv" if what is None else what.advice
            raise ContactImportError(
                f"{path.name} is {description}, not an .xlsx workbook: {advice}",
                source=str(path),
            )
        return read_xlsx(path, sheet=sheet)
    as_csv = suffix in (".csv", ".txt", ".tsv")
    named = ", not a CSV file" if as_csv else ""
    if what is not None and what.kind == "xlsx":
        # The bytes leave no doubt (a zip holding xl/workbook.xml) and the user wants the
        # contacts in it: refusing would only make them rename the file. The result says
        # so (ImportResult.notes), so it is not done silently.
        note = (
            f"{path.name} is an Excel workbook (xlsx){named}: it was read as a workbook "
            f"(sheet {1 if sheet is None else repr(sheet)}); rename it to .xlsx to avoid "
            "this note"
        )
        book = read_xlsx(path, sheet=sheet)
        return dataclasses.replace(book, notes=(*book.notes, note))
    if what is not None:
        raise ContactImportError(
            f"{path.name} is {what.description}{named or ', which bulkmail does not read'}: "
            f"{what.advice}",
            source=str(path),
        )
    if as_csv:
        return read_csv(path, encoding=encoding, delimiter=delimiter)
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

"""Export a recipient frame to .xlsx or .csv that Excel opens safely.

In .xlsx every text is written as a string cell, never a formula: a string cell is
inert in Excel and LibreOffice whatever it starts with, so ``=1+1`` stays the text
``=1+1`` and a phone number ``+421944676733`` stays exactly that. A .csv has no cell
types: Excel decides what each field is on opening, so there a text that Excel would
run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return:
OWASP "CSV injection") gets an apostrophe in front. Contact data (addresses,
e-mails, phones) leaves the workbench only when the caller says so and the
database role or local setting allows it (``segments.audit``); each such export is
written to the export log (``export_log()``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bulkmail_kernel import config
from bulkmail_kernel.contacts.values import neutralise
from bulkmail_kernel.db import Database, resolve_database
from bulkmail_kernel.db.exportlog import IMPORT_REPORT, export_user, record_export
from bulkmail_kernel.db.roles import hidden_contact_columns
from bulkmail_kernel.exceptions import ExportError
from bulkmail_kernel.segments.audit import check_contact_export

__all__ = ["export_recipients", "export_target", "is_contact_column", "neutralise"]

log = logging.getLogger("bulkmail")

#: Columns that identify a person directly; exported only with include_contact_data=True.
CONTACT_COLUMNS = ("address", "email", "phone")
_CONTACT_WORDS = ("email", "e_mail", "phone", "address")
_FORMULA_RE = r"^[=+\-@\t\r]"
_EXCEL_EPOCH = np.datetime64("1899-12-30T00:00:00", "us")
_US_PER_DAY = 86_400 * 1_000_000
_MAX_WIDTH = 50
_PROGRESS_EVERY = 10_000


def is_contact_column(name: str) -> bool:
    """Return True if column ``name`` holds e-mail addresses, phone numbers or postal addresses."""
    lowered = str(name).lower()
    return lowered in CONTACT_COLUMNS or any(word in lowered for word in _CONTACT_WORDS)


#: Columns of a printed frame that hold contact data besides ``is_contact_column``'s.
PRINTED_CONTACT_COLUMNS = ("first_name", "last_name", "patronymic", "recipient", "normalized")


def frame_csv(
    frame: pd.DataFrame,
    *,
    kind: str = "csv",
    db: Database | None = None,
    url: str | None = None,
) -> str:
    """Return ``frame`` as CSV text (what ``--csv`` prints); with contact data it is an export.

    A script keeps what a command prints, so a frame with contact columns (addresses,
    phones, names, recipients) is checked like ``export_recipients`` — refused, and the
    refusal logged, when the role or the setting forbids it — and logged with path
    ``stdout``. ``kind="import report"`` is logged, never refused: the report only gives
    back what the importing user supplied. A frame the database masked (the analyst
    role's) holds no contact data: neither checked nor logged.
    """
    text = frame.to_csv(index=False)
    contact = [
        str(c)
        for c in frame.columns
        if is_contact_column(c)
        or c in PRINTED_CONTACT_COLUMNS
        or (kind == IMPORT_REPORT and c == "value")
    ]
    if not contact or frame.empty or frame.attrs.get("hidden_columns"):
        return text
    database = resolve_database(db, url)
    if hidden_contact_columns(database):  # this role reads masked values only
        return text
    segment = frame.attrs.get("segment")
    if kind == IMPORT_REPORT:
        who = export_user(database)
    else:
        who = check_contact_export(database, contact, kind=kind, segment=segment, path="stdout")
    record_export(database, who=who, kind=kind, columns=contact, rows=len(frame),
                  path="stdout", segment=segment)  # fmt: skip
    return text


def _text_cells(col: pd.Series, *, neutralised: bool) -> list[Any]:
    """Return the column as text cells (neutralised for .csv if asked), None for missing values."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        # Convert each category once, then gather by code (-1, missing, hits the None slot).
        convert = neutralise if neutralised else str
        cats = [convert(str(c)) for c in col.dtype.categories] + [None]
        return np.asarray(cats, dtype=object)[col.array.codes].tolist()
    text = col.astype("str")
    if neutralised:
        risky = text.str.contains(_FORMULA_RE, regex=True, na=False)
        text = text.where(~risky, "'" + text)
    return text.astype(object).where(col.notna(), None).tolist()


def choose_columns(
    frame: pd.DataFrame, columns: Sequence[str] | None, *, include_contact_data: bool
) -> list[str]:
    """Return the columns to export, checking names and the contact-data permission."""
    if columns is None:
        chosen = [c for c in frame.columns if include_contact_data or not is_contact_column(c)]
        left_out = [c for c in frame.columns if c not in chosen]
        if left_out:
            log.info("export leaves out contact columns %s (include_contact_data=False)", left_out)
        return [str(c) for c in chosen]
    if isinstance(columns, str):
        raise ExportError(f"columns: give a list of column names, not the text {columns!r}")
    chosen = list(columns)
    if not chosen:
        raise ExportError("columns: choose at least one column to export")
    unknown = [c for c in chosen if c not in frame.columns]
    if unknown:
        raise ExportError(
            f"columns {unknown} are not in the frame; "
            f"available: {', '.join(map(str, frame.columns))}",
            columns=unknown,
        )
    duplicated = sorted({c for c in chosen if chosen.count(c) > 1})
    if duplicated:
        raise ExportError(f"columns {duplicated} are chosen twice; list each column once")
    identifying = [c for c in chosen if is_contact_column(c)]
    if identifying and not include_contact_data:
        raise ExportError(
            f"columns {identifying} identify people (e-mail addresses, phone numbers): "
            "pass include_contact_data=True to export them, or leave them out",
            columns=identifying,
        )
    return chosen


def export_target(path: str | Path | None, *, now: datetime | None = None) -> Path:
    """Return where an export goes: ``path`` if it names a folder, else ``data/exports/``.

    None means ``recipients-<local date and time>.xlsx`` there; a bare file name
    (``"segment.xlsx"``) goes there too, so exports never land in the notebook's folder.
    A path with a folder, relative or absolute, is taken as it is.
    """
    if path is None:
        stamp = config.as_local(now or datetime.now(UTC))
        return config.exports_dir() / f"recipients-{stamp:%Y%m%d-%H%M%S}.xlsx"
    target = Path(path).expanduser()
    if target.is_absolute() or target.parent != Path("."):
        return target
    return config.exports_dir() / target


def export_recipients(
    frame: pd.DataFrame,
    path: str | Path | None = None,
    columns: Sequence[str] | None = None,
    *,
    include_contact_data: bool = False,
    progress: bool = True,
    segment: str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> Path:
    """Write the chosen ``columns`` of ``frame`` to ``path`` (.xlsx or .csv) and return the path.

    Args:
        frame: recipients (e.g. from ``filter_recipients``).
        path: target file; the suffix picks the format. None or a bare file name means
            the data folder's ``exports/`` (``data/exports/``, ignored by git), see
            :func:`export_target`; a path with a folder is used as given.
        columns: column names in the order wanted (default: every column, without
            contact columns unless ``include_contact_data``).
        include_contact_data: allow columns with addresses, e-mails or phones;
            the database must allow it too (the exporter role on PostgreSQL, the
            ``allow_contact_export`` setting on SQLite), and the export is logged.
        progress: show a progress bar.
        segment: the segment's name, for the export log (default: ``frame.attrs``).
        db: the database that permits and logs a contact-data export (default:
            ``open_database(url)``); untouched when no contact column is written.
        url: the database URL when ``db`` is not given.

    Raises:
        ExportError: unknown or identifying columns, or an unsupported suffix.
        ContactAccessError: contact columns asked for and the role or setting refuses them.

    """
    target = export_target(path)
    suffix = target.suffix.lower()
    if suffix not in (".xlsx", ".csv"):
        raise ExportError(f"{target}: export to .xlsx or .csv, not {suffix or 'no suffix'!r}")
    chosen = choose_columns(frame, columns, include_contact_data=include_contact_data)
    contact = [c for c in chosen if is_contact_column(c)]
    database = resolve_database(db, url) if contact else None
    who = ""
    segment = segment if segment is not None else frame.attrs.get("segment")
    if database is not None:
        who = check_contact_export(database, contact, kind="segment", segment=segment, path=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = frame[chosen]
    try:
        if suffix == ".xlsx":
            _write_xlsx(data, target, progress=progress)
        else:
            _write_csv(data, target, progress=progress)
    except OSError as exc:
        raise ExportError(f"{target}: cannot write the export: {exc}") from exc
    if database is not None:
        record_export(database, who=who, kind="segment", columns=contact, rows=len(data),
                      path=target, segment=segment)  # fmt: skip
    log.info("exported %d recipients to %s", len(data), target)
    return target


def _local_naive(col: pd.Series) -> pd.Series:
    """Return datetimes as the analyst's wall-clock time: Excel cells have no time zone."""
    if getattr(col.dtype, "tz", None) is not None:
        col = col.dt.tz_convert(config.local_timezone()).dt.tz_localize(None)
    return col


def _excel_serials(col: pd.Series) -> tuple[np.ndarray, np.ndarray, bool]:
    """Return Excel date serial numbers, a missing-value mask and whether any time of day is set."""
    values = _local_naive(col).to_numpy(dtype="datetime64[us]")
    missing = np.isnat(values)
    micros = (values - _EXCEL_EPOCH).astype(np.int64)
    serials = micros / _US_PER_DAY
    has_time = bool(np.any((micros[~missing] % _US_PER_DAY) != 0))
    return serials, missing, has_time


def _width(name: str, sample: pd.Series) -> float:
    lengths = sample.dropna().astype("str").str.len()
    longest = int(lengths.max()) if len(lengths) else 0
    return float(min(_MAX_WIDTH, max(len(name), longest) + 2))


def _write_xlsx(data: pd.DataFrame, target: Path, *, progress: bool) -> None:
    import xlsxwriter

    workbook = xlsxwriter.Workbook(
        str(target),
        {
            # Rows go straight to disk: memory stays flat for a million rows.
            "constant_memory": True,
            # Never let a cell become a formula or a link, whatever the text says.
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
        },
    )
    try:
        sheet = workbook.add_worksheet("recipients")
        bold = workbook.add_format({"bold": True})
        date_fmt = workbook.add_format({"num_format": "yyyy-mm-dd"})
        datetime_fmt = workbook.add_format({"num_format": "yyyy-mm-dd hh:mm"})
        sample = data.head(1000)

        # Each column becomes a Python list and a writer, so the row loop does no type checks.
        writers: list[Callable[[int, int, Any], Any]] = []
        cells: list[list[Any]] = []
        for j, name in enumerate(data.columns):
            col = data[name]
            width = _width(str(name), sample[name])
            if pd.api.types.is_datetime64_any_dtype(col.dtype):
                serials, missing, has_time = _excel_serials(col)
                fmt = datetime_fmt if has_time else date_fmt
                values = serials.astype(object)
                values[missing] = None
                width = max(len(str(name)) + 2, 17.0 if has_time else 11.0)

                def write_stamp(r: int, c: int, v: Any, _f: Any = fmt) -> Any:
                    # The default binds this column's format now, not the loop's last one.
                    return sheet.write_number(r, c, v, _f)

                writers.append(write_stamp)
                cells.append(values.tolist())
            elif pd.api.types.is_bool_dtype(col.dtype):
                writers.append(sheet.write_boolean)
                cells.append(col.astype(object).where(col.notna(), None).tolist())
            elif pd.api.types.is_numeric_dtype(col.dtype):
                values = col.to_numpy(dtype=float, na_value=np.nan)
                obj = values.astype(object)
                obj[~np.isfinite(values)] = None
                writers.append(sheet.write_number)
                cells.append(obj.tolist())
            else:
                # write_string makes a string cell: inert, shown exactly as typed, no apostrophe.
                writers.append(sheet.write_string)
                cells.append(_text_cells(col, neutralised=False))
            sheet.set_column(j, j, width)
        sheet.freeze_panes(1, 0)
        for j, name in enumerate(data.columns):
            sheet.write_string(0, j, str(name), bold)

        n = len(data)
        columns = list(zip(range(len(writers)), writers, cells, strict=True))
        with tqdm(total=n, unit="row", desc=target.name, disable=not progress) as bar:
            for i in range(n):
                row = i + 1
                for j, write, column_cells in columns:
                    value = column_cells[i]
                    if value is not None:
                        write(row, j, value)
                if row % _PROGRESS_EVERY == 0:
                    bar.update(_PROGRESS_EVERY)
            bar.update(n - bar.n)
    finally:
        workbook.close()


def _write_csv(data: pd.DataFrame, target: Path, *, progress: bool) -> None:
    out = pd.DataFrame(index=data.index)
    for name in data.columns:
        col = data[name]
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            local = _local_naive(col)
            has_time = bool((local.dropna() != local.dropna().dt.normalize()).any())
            out[name] = local.dt.strftime("%Y-%m-%d %H:%M:%S" if has_time else "%Y-%m-%d")
        elif pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            out[name] = col
        else:
            # A .csv has no types: Excel would run "=..." on opening, hence the apostrophe.
            text = _text_cells(col, neutralised=True)
            out[name] = pd.Series(text, index=data.index, dtype=object)
    header = [neutralise(str(c)) for c in data.columns]
    # utf-8-sig: the BOM is what makes Excel read the file as UTF-8 (diacritics, Cyrillic).
    with (
        target.open("w", encoding="utf-8-sig", newline="") as fh,
        tqdm(total=len(out), unit="row", desc=target.name, disable=not progress) as bar,
    ):
        writer = csv.writer(fh)
        writer.writerow(header)
        for start in range(0, len(out), 50_000):
            chunk = out.iloc[start : start + 50_000]
            chunk.to_csv(fh, header=False, index=False, lineterminator="\r\n")
            bar.update(len(chunk))

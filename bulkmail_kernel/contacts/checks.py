"""Row checks of an import: each source row read into a candidate contact, or rejected.

``_validate_row`` applies every rule of :mod:`bulkmail_kernel.contacts.values` to one
row (through the caching ``CellReader`` of :mod:`bulkmail_kernel.contacts.cells`, which
answers the same) and reports each rejected or cleaned cell with its row and column;
``validate_rows`` runs it over a source in chunks. Merging the candidates is
:mod:`bulkmail_kernel.contacts.grouping`, storing them :mod:`bulkmail_kernel.contacts.store`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from bulkmail_kernel.contacts.cells import CellReader
from bulkmail_kernel.contacts.columns import _Plan
from bulkmail_kernel.contacts.report import _Report
from bulkmail_kernel.contacts.sources import SourceRow, snake_case
from bulkmail_kernel.contacts.values import (
    _GENDER,
    _KIND,
    _LANGUAGE,
    _PLAIN_NUMBER,
    _attribute_value,
    _cell_text,
)

#: (value field, channel, kind or its field, type field, allowed field) per point column.
_POINT_SPECS = (
    ("email", "email", "email_kind", "email_type", "email_allowed"),
    ("phone", "phone", "phone_kind", "phone_type", "phone_allowed"),
    ("work_email", "email", "work", "work_email_type", "work_email_allowed"),
    ("work_phone", "phone", "work", "work_phone_type", "work_phone_allowed"),
)
_NAME_FIELDS = ("first_name", "last_name", "patronymic")
_FORMULA_START = "=+-@"
_CLEANED = "removed control characters (line breaks and tabs became a space)"


@dataclass(slots=True)
class _Point:
    channel: str
    normalized: str
    value: str
    kind: str
    type: str
    allowed: bool | None
    column: str
    #: The source row the point was read from (a merged group holds points of several).
    row: int = 0


@dataclass(slots=True)
class _Candidate:
    row: int
    external_id: str | None
    fields: dict[str, Any]
    attributes: dict[str, Any]
    points: list[_Point]
    rows: tuple[int, ...] = ()
    contact_id: int | None = None

    def absorb(self, other: _Candidate) -> None:
        """Take the other row's values where this one has none, and its new points."""
        for key, value in other.fields.items():
            self.fields.setdefault(key, value)
        for key, value in other.attributes.items():
            self.attributes.setdefault(key, value)
        if self.external_id is None:
            self.external_id = other.external_id
        have = {(p.channel, p.normalized): p for p in self.points}
        for p in other.points:
            mine = have.get((p.channel, p.normalized))
            if mine is None:
                self.points.append(p)
                have[(p.channel, p.normalized)] = p
            elif mine.allowed is None:
                mine.allowed = p.allowed
        self.rows = (*self.rows, other.row)


def _label(channel: str) -> str:
    return "e-mail" if channel == "email" else "phone"


_PointColumns = tuple[str, str, str | None, str | None, str | None, str]


def _point_columns(plan: _Plan) -> list[_PointColumns]:
    """Return (value, channel, kind, type, allowed) columns of the plan's point fields.

    The kind column is "" for the work fields (always "work"); absent columns are None.
    """
    out: list[_PointColumns] = []
    for value_field, channel, kind_field, type_field, allowed_field in _POINT_SPECS:
        if (column := plan.fields.get(value_field)) is None:
            continue
        kind = "" if kind_field == "work" else plan.fields.get(kind_field)
        out.append((column, channel, kind, plan.fields.get(type_field),
                    plan.fields.get(allowed_field), value_field))  # fmt: skip
    return out


def _validate_row(
    row: SourceRow,
    plan: _Plan,
    read: CellReader,
    infer_numbers: bool,
    report: _Report,
    point_columns: list[_PointColumns] | None = None,
) -> _Candidate | None:
    """Return the row as a candidate contact, or None (with the reasons in the report)."""
    cells = row.cells
    n = row.row
    plan_fields = plan.fields

    def cell(field_name: str) -> tuple[str, Any] | None:
        column = plan_fields.get(field_name)
        return None if column is None else (column, cells.get(column))

    def reject(column: str, value: Any, reason: str) -> None:
        report.add(n, "rejected", column, value, reason)

    def clean(column: str, value: Any) -> str:
        text = value if type(value) is str else _cell_text(value)
        cleaned, needed = read.clean(text)
        if needed:
            report.add(n, "cleaned", column, text, _CLEANED)
        return cleaned

    fields: dict[str, Any] = {}
    for name in _NAME_FIELDS:
        got = cell(name)
        if got is None:
            continue
        column, raw = got
        text = clean(column, raw)
        if text and text[0] in _FORMULA_START:
            reject(
                column,
                raw,
                f"starts with {text[0]!r} like a spreadsheet formula; remove "
                "the leading character if it really belongs to the name",
            )
        elif len(text) > 200:
            reject(column, raw, "longer than 200 characters")
        elif text:
            fields[name] = text
    external_id = None
    if (got := cell("external_id")) is not None:
        column, raw = got
        external_id = clean(column, raw) or None
        if external_id is not None and len(external_id) > 100:
            reject(column, raw, "external id longer than 100 characters")
    parsers = (
        ("gender", lambda v: read.word(_GENDER, v, "gender", "use m or f, or leave it empty")),
        ("language", lambda v: read.word(_LANGUAGE, v, "language", "use sk, cs, ru or en")),
        ("registered_at", read.date),
    )
    for name, parse in parsers:
        if (got := cell(name)) is None:
            continue
        column, raw = got
        try:
            value = parse(raw)
        except ValueError as exc:
            reject(column, raw, str(exc))
            continue
        if value is not None:
            fields[name] = value

    shared_allowed: bool | None = None
    if (got := cell("mailing_allowed")) is not None:
        try:
            shared_allowed = read.yes_no(got[1])
        except ValueError as exc:
            reject(got[0], got[1], str(exc))

    specs: list[tuple[str, str, Any, Any, Any, Any, str]] = []
    for column, channel, kind_col, type_col, allowed_col, value_field in (
        _point_columns(plan) if point_columns is None else point_columns
    ):
        kind_cell = ("", "work") if kind_col == "" else _pair(kind_col, cells)
        specs.append((column, channel, cells.get(column), kind_cell, _pair(type_col, cells),
                      _pair(allowed_col, cells), value_field))  # fmt: skip
    for p in row.points:  # XML <email>/<phone> elements
        specs.append((p.channel, p.channel, p.value, ("kind", p.kind), ("type", p.type),
                      ("mailing-allowed", p.allowed), p.channel))  # fmt: skip

    points: list[_Point] = []
    for column, channel, raw, kind_cell, type_cell, allowed_cell, _ in specs:
        text = _cell_text(raw).strip()
        if not text:
            continue
        try:
            if channel == "email":
                normalized = read.email(text)
            elif isinstance(raw, int | float) and not isinstance(raw, bool):
                normalized = read.phone(_cell_text(raw))
            else:
                normalized = read.phone(text)
        except ValueError as exc:
            reject(column, raw, str(exc))
            continue
        kind = "personal"
        if kind_cell is not None:
            try:
                kind = read.word(_KIND, kind_cell[1], "kind", "use personal or work") or "personal"
            except ValueError as exc:
                reject(kind_cell[0], kind_cell[1], str(exc))
        point_type = "main"
        if type_cell is not None and _cell_text(type_cell[1]).strip():
            point_type = snake_case(_cell_text(type_cell[1]))[:50] or "main"
        allowed = shared_allowed
        if allowed_cell is not None:
            try:
                own = read.yes_no(allowed_cell[1])
            except ValueError as exc:
                reject(allowed_cell[0], allowed_cell[1], str(exc))
                own = None
            if own is not None:
                allowed = own
        if any(p.channel == channel and p.normalized == normalized for p in points):
            continue  # the same address twice in one row (email = work_email)
        points.append(_Point(channel, normalized, text, kind, point_type, allowed, column, n))

    attributes: dict[str, Any] = {}
    for column, name in plan.attributes.items():
        raw = cells.get(column)
        if isinstance(raw, str):
            value = _attribute_text(clean(column, raw), infer_numbers)
        else:
            value = _attribute_value(raw, infer_numbers)
        if value is not None:
            attributes[name] = value

    if n in report.rejected:
        return None
    if not points:
        reject("", "", "no e-mail address or phone number")
        return None
    return _Candidate(n, external_id, fields, attributes, points)


def _pair(column: str | None, cells: dict[str, Any]) -> tuple[str, Any] | None:
    return None if column is None else (column, cells.get(column))


def _attribute_text(text: str, infer_numbers: bool) -> Any:
    """Return ``_attribute_value`` of a text cell already cleaned (``clean_text``)."""
    if not text:
        return None
    # CSV cells are all text; "3" becomes a number but "00123" (a post code) stays text.
    if infer_numbers and _PLAIN_NUMBER.match(text):
        return float(text) if "." in text else int(text)
    return text


def validate_rows(
    rows: list[SourceRow],
    plan: _Plan,
    region: str,
    infer_numbers: bool,
    report: _Report,
    *,
    label: str,
    progress: bool,
    chunk_rows: int = 5000,
) -> list[_Candidate]:
    """Check every row in chunks, one cache of cell answers for the whole source.

    The rows are taken out of ``rows`` as they are checked (the list is empty after), so
    a large source and its candidates are not held in full at the same time.
    """
    read = CellReader(region)
    point_columns = _point_columns(plan)
    candidates: list[_Candidate] = []
    with tqdm(total=len(rows), desc=label, disable=not progress, leave=False) as bar:
        for chunk in _take_chunks(rows, chunk_rows):
            for row in chunk:
                cand = _validate_row(row, plan, read, infer_numbers, report, point_columns)
                if cand is not None:
                    candidates.append(cand)
            bar.update(len(chunk))
    return candidates


def _take_chunks(rows: list[SourceRow], size: int) -> Iterator[list[SourceRow]]:
    """Yield the rows in order, ``size`` at a time, removing each chunk from the list."""
    rows.reverse()
    while rows:
        chunk = rows[-size:]
        del rows[-size:]
        chunk.reverse()
        yield chunk

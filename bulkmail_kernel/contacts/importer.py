"""Contacts: import from CSV, Excel, XML or SQL, validate, de-duplicate, and store.

``import_contacts`` reads a source (see :mod:`bulkmail_kernel.contacts.sources`), maps its columns
to contact fields (:mod:`bulkmail_kernel.contacts.columns`), validates every row with the cell
readers of :mod:`bulkmail_kernel.contacts.values`, merges duplicates, and upserts the result in one
transaction. The ``ImportResult`` it returns (:mod:`bulkmail_kernel.contacts.report`) says what
happened, row by row; reading the contacts back is :mod:`bulkmail_kernel.contacts.frame`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload
from tqdm.auto import tqdm

from bulkmail_kernel import config
from bulkmail_kernel.contacts.columns import _Plan, _plan_columns
from bulkmail_kernel.contacts.consents import record_import_consents
from bulkmail_kernel.contacts.forgotten import drop_forgotten
from bulkmail_kernel.contacts.report import ImportResult, _Report
from bulkmail_kernel.contacts.sources import SourceRow, read_source, snake_case
from bulkmail_kernel.contacts.values import (
    _GENDER,
    _KIND,
    _LANGUAGE,
    _attribute_value,
    _cell_text,
    _lookup,
    _needs_cleaning,
    clean_text,
    email_identity,
    normalize_phone,
    parse_date,
    parse_yes_no,
)
from bulkmail_kernel.db import (
    Contact,
    ContactPoint,
    Database,
    Event,
    ImportRun,
    chunks,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.exceptions import ContactImportError

log = logging.getLogger("bulkmail")

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


# --------------------------------------------------------------------------- validation


@dataclass
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


@dataclass
class _Candidate:
    row: int
    external_id: str | None
    fields: dict[str, Any]
    attributes: dict[str, Any]
    points: list[_Point]
    rows: list[int] = field(default_factory=list)
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
        self.rows.append(other.row)


def _label(channel: str) -> str:
    return "e-mail" if channel == "email" else "phone"


def _validate_row(
    row: SourceRow, plan: _Plan, region: str, infer_numbers: bool, report: _Report
) -> _Candidate | None:
    cells = row.cells
    n = row.row

    def cell(field_name: str) -> tuple[str, Any] | None:
        column = plan.fields.get(field_name)
        return None if column is None else (column, cells.get(column))

    def reject(column: str, value: Any, reason: str) -> None:
        report.add(n, "rejected", column, value, reason)

    def clean(column: str, value: Any) -> str:
        text = _cell_text(value)
        if _needs_cleaning(text):
            report.add(n, "cleaned", column, text, _CLEANED)
        return clean_text(text)

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
        ("gender", lambda v: _lookup(_GENDER, v, "gender", "use m or f, or leave it empty")),
        ("language", lambda v: _lookup(_LANGUAGE, v, "language", "use sk, cs, ru or en")),
        ("registered_at", parse_date),
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
            shared_allowed = parse_yes_no(got[1])
        except ValueError as exc:
            reject(got[0], got[1], str(exc))

    specs: list[tuple[str, str, Any, Any, Any, Any, str]] = []
    for value_field, channel, kind_field, type_field, allowed_field in _POINT_SPECS:
        if (got := cell(value_field)) is None:
            continue
        kind_cell = ("", "work") if kind_field == "work" else cell(kind_field)
        specs.append((got[0], channel, got[1], kind_cell, cell(type_field), cell(allowed_field),
                      value_field))  # fmt: skip
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
                normalized = email_identity(text)
            elif isinstance(raw, int | float) and not isinstance(raw, bool):
                normalized = normalize_phone(_cell_text(raw), region)
            else:
                normalized = normalize_phone(text, region)
        except ValueError as exc:
            reject(column, raw, str(exc))
            continue
        kind = "personal"
        if kind_cell is not None:
            try:
                kind = _lookup(_KIND, kind_cell[1], "kind", "use personal or work") or "personal"
            except ValueError as exc:
                reject(kind_cell[0], kind_cell[1], str(exc))
        point_type = "main"
        if type_cell is not None and _cell_text(type_cell[1]).strip():
            point_type = snake_case(_cell_text(type_cell[1]))[:50] or "main"
        allowed = shared_allowed
        if allowed_cell is not None:
            try:
                own = parse_yes_no(allowed_cell[1])
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
            clean(column, raw)
        value = _attribute_value(raw, infer_numbers)
        if value is not None:
            attributes[name] = value

    if n in report.rejected:
        return None
    if not points:
        reject("", "", "no e-mail address or phone number")
        return None
    return _Candidate(n, external_id, fields, attributes, points)


def _merge_within_source(candidates: list[_Candidate], report: _Report) -> list[_Candidate]:
    """Fold rows that share an external id, e-mail or phone into the first such row."""
    groups: list[_Candidate] = []
    by_ext: dict[str, _Candidate] = {}
    by_point: dict[tuple[str, str], _Candidate] = {}
    for cand in candidates:
        hits: list[tuple[_Candidate, str]] = []
        if cand.external_id is not None and cand.external_id in by_ext:
            hits.append((by_ext[cand.external_id], f"same external id {cand.external_id}"))
        for p in cand.points:
            if (g := by_point.get((p.channel, p.normalized))) is not None:
                hits.append((g, f"same {_label(p.channel)} {p.normalized}"))
        targets = list({id(g): g for g, _ in hits}.values())
        if len(targets) > 1:
            (g1, why1), (g2, why2) = hits[0], next(h for h in hits if h[0] is not hits[0][0])
            report.add(cand.row, "rejected", "", "",
                       f"conflict: {why1.removeprefix('same ')} is in row {g1.row} but "
                       f"{why2.removeprefix('same ')} is in row {g2.row}")  # fmt: skip
            continue
        if targets:
            g, why = hits[0]
            if cand.external_id and g.external_id and cand.external_id != g.external_id:
                report.add(cand.row, "rejected", "", cand.external_id,
                           f"conflict: {why.removeprefix('same ')} is already in row {g.row} "
                           f"with external id {g.external_id}")  # fmt: skip
                continue
            spellings = _other_spellings(g.points, cand.points)
            g.absorb(cand)
            for p, mine in spellings:
                same = (f"{p.value} is the same address as {mine.value} (row {mine.row}): "
                        "merged into one contact")  # fmt: skip
                report.add(cand.row, "merged", p.column, p.value, same)
            if not spellings:
                report.add(cand.row, "merged", "", "", f"merged into row {g.row}: {why}")
        else:
            g = cand
            groups.append(g)
        if g.external_id is not None:
            by_ext.setdefault(g.external_id, g)
        for p in g.points:
            by_point.setdefault((p.channel, p.normalized), g)
    return groups


def _other_spellings(have: list[_Point], new: list[_Point]) -> list[tuple[_Point, _Point]]:
    """Return (new point, point held) pairs of one e-mail identity spelled differently."""
    held = {p.normalized: p for p in have if p.channel == "email"}
    pairs = [(p, held[p.normalized]) for p in new if p.channel == "email" and p.normalized in held]
    return [(p, mine) for p, mine in pairs if mine.value != p.value]


# --------------------------------------------------------------------------- database


def _resolve_against_db(
    s: Session, groups: list[_Candidate], report: _Report
) -> dict[int, Contact]:
    """Attach each group to the existing contact it matches; reject conflicting ones."""
    ext_ids = sorted({g.external_id for g in groups if g.external_id is not None})
    by_ext: dict[str, int] = {}
    for chunk in chunks(ext_ids):
        ext_stmt = sa.select(Contact.external_id, Contact.id).where(Contact.external_id.in_(chunk))
        by_ext.update({e: i for e, i in s.execute(ext_stmt) if e is not None})
    owner: dict[tuple[str, str], int] = {}
    stored: dict[tuple[str, str], str] = {}  # the spelling kept for each identity
    for channel in ("email", "phone"):
        norms = sorted({p.normalized for g in groups for p in g.points if p.channel == channel})
        for chunk in chunks(norms):
            # channel first, so the (channel, normalized) unique index serves the lookup.
            point_stmt = sa.select(
                ContactPoint.normalized, ContactPoint.contact_id, ContactPoint.value
            ).where(ContactPoint.channel == channel, ContactPoint.normalized.in_(chunk))
            for nm, owner_id, value in s.execute(point_stmt):
                owner[(channel, nm)] = owner_id
                stored[(channel, nm)] = value
    matched_ids = sorted(set(by_ext.values()) | set(owner.values()))
    contacts: dict[int, Contact] = {}
    for ids_chunk in chunks(matched_ids):
        load = (
            sa.select(Contact)
            .where(Contact.id.in_(ids_chunk))
            .options(selectinload(Contact.points))
        )
        contacts.update({c.id: c for c in s.scalars(load)})

    claimed: dict[int, _Candidate] = {}
    for g in groups:
        hits: list[tuple[int, str]] = []
        if g.external_id is not None and g.external_id in by_ext:
            hits.append((by_ext[g.external_id], f"external id {g.external_id}"))
        for p in g.points:
            if (cid := owner.get((p.channel, p.normalized))) is not None:
                hits.append((cid, f"{_label(p.channel)} {p.normalized}"))
        ids = list(dict.fromkeys(cid for cid, _ in hits))
        reason = None
        if len(ids) > 1:
            (c1, w1), (c2, w2) = hits[0], next(h for h in hits if h[0] != hits[0][0])
            reason = (f"conflict: {w1} is contact {c1} in the database but {w2} is contact {c2}; "
                      "merge those contacts first or fix the row")  # fmt: skip
        elif ids:
            existing = contacts[ids[0]]
            if g.external_id and existing.external_id and existing.external_id != g.external_id:
                reason = (f"conflict: {hits[0][1]} belongs to contact {existing.id} with external "
                          f"id {existing.external_id} in the database")  # fmt: skip
        if reason is not None:
            report.add(g.row, "rejected", "", "", reason)
            for merged_row in g.rows:
                report.add(
                    merged_row, "rejected", "", "", f"merged into row {g.row}, which was rejected"
                )
            g.contact_id = -1
            continue
        if ids:
            g.contact_id = ids[0]
            for p in g.points:
                spelled = stored.get((p.channel, p.normalized))
                if p.channel == "email" and spelled is not None and spelled != p.value:
                    why = (f"{p.value} is the same address as {spelled} of contact {ids[0]} in "
                           "the database: merged into that contact")  # fmt: skip
                    report.add(p.row, "matched", p.column, p.value, why)
            if (first := claimed.get(ids[0])) is not None:
                first.absorb(g)
                first.rows.extend(g.rows)
                why = f"merged into row {first.row}: both are contact {ids[0]} in the database"
                report.add(g.row, "merged", "", "", why)
                g.contact_id = -2
            else:
                claimed[ids[0]] = g
    return contacts


def _insert_many(s: Session, groups: list[_Candidate], source: str, now: datetime) -> list[int]:
    """Insert new contacts and their points in bulk; return the new contact ids in order."""
    ids: list[int] = []
    for chunk in chunks(groups, 2000):
        rows = [
            {
                "external_id": g.external_id,
                "first_name": g.fields.get("first_name", ""),
                "last_name": g.fields.get("last_name", ""),
                "patronymic": g.fields.get("patronymic", ""),
                "gender": g.fields.get("gender"),
                "language": g.fields.get("language", config.DEFAULT_LANGUAGE),
                # Without a registration date the import is the best we know.
                "registered_at": g.fields.get("registered_at", now),
                "attributes": dict(g.attributes),
                "source": source,
                "created_at": now,
                "updated_at": now,
            }
            for g in chunk
        ]
        # One INSERT ... RETURNING per chunk (insertmanyvalues), ids in parameter order.
        stmt = sa.insert(Contact).returning(Contact.id, sort_by_parameter_order=True)
        chunk_ids = list(s.scalars(stmt, rows))
        points: list[dict[str, Any]] = []
        for cid, g in zip(chunk_ids, chunk, strict=True):
            seen: set[tuple[str, str]] = set()
            for p in g.points:
                points.append(_point_row(p, source, cid, now, (p.channel, p.kind) not in seen))
                seen.add((p.channel, p.kind))
        s.execute(sa.insert(ContactPoint), points)
        ids.extend(chunk_ids)
    return ids


def _point_row(
    p: _Point, source: str, contact_id: int, now: datetime, preferred: bool
) -> dict[str, Any]:
    return {
        "contact_id": contact_id, "channel": p.channel, "value": p.value[:320],
        "normalized": p.normalized, "type": p.type, "kind": p.kind,
        "mailing_allowed": bool(p.allowed), "is_preferred": preferred, "soft_bounces": 0,
        "source": source, "created_at": now, "updated_at": now,
    }  # fmt: skip


def _new_point(p: _Point, source: str, *, preferred: bool) -> ContactPoint:
    return ContactPoint(
        channel=p.channel, value=p.value[:320], normalized=p.normalized, type=p.type,
        kind=p.kind, mailing_allowed=bool(p.allowed), is_preferred=preferred, source=source,
    )  # fmt: skip


def _update(contact: Contact, g: _Candidate, source: str) -> list[str]:
    """Apply the group's values to an existing contact; return the names of what changed."""
    changed: list[str] = []
    if g.external_id is not None and contact.external_id != g.external_id:
        contact.external_id = g.external_id
        changed.append("external_id")
    for name, value in g.fields.items():
        if getattr(contact, name) != value:
            setattr(contact, name, value)
            changed.append(name)
    attrs = dict(contact.attributes or {})
    for name, value in g.attributes.items():
        if attrs.get(name) != value:
            attrs[name] = value
            changed.append(name)
    if attrs != (contact.attributes or {}):
        contact.attributes = attrs  # a new dict: JSON columns do not track in-place edits
    existing = {(p.channel, p.normalized): p for p in contact.points}
    preferred = {(p.channel, p.kind) for p in contact.points if p.is_preferred}
    for p in g.points:
        old = existing.get((p.channel, p.normalized))
        if old is None:
            contact.points.append(
                _new_point(p, source, preferred=(p.channel, p.kind) not in preferred)
            )
            preferred.add((p.channel, p.kind))
            changed.append(f"{p.channel} {p.normalized} added")
            continue
        # Only what the source states overwrites: no consent column leaves consent alone.
        # An e-mail keeps the spelling first stored (another spelling of the same identity
        # would flip it on every import); a phone shows how the source writes it now.
        updates: dict[str, Any] = {"type": p.type, "kind": p.kind}
        if p.channel != "email":
            updates["value"] = p.value[:320]
        if p.allowed is not None:
            updates["mailing_allowed"] = p.allowed
        for attr, value in updates.items():
            if getattr(old, attr) != value:
                setattr(old, attr, value)
                changed.append(f"{p.channel} {p.normalized} {attr}")
    return changed


# --------------------------------------------------------------------------- import


def import_contacts(
    source: str | Path | pd.DataFrame,
    *,
    db: Database | None = None,
    url: str | None = None,
    mapping: Mapping[str, str | None] | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    region: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    query: str | None = None,
    table: str | None = None,
    sheet: str | int | None = None,
    source_name: str | None = None,
    progress: bool = True,
    consent_text: str | None = None,
) -> ImportResult:
    """Import contacts from a file, another database or a DataFrame, all or nothing by default.

    Args:
        source: a .csv, .xlsx or .xml file (schema in docs/contacts-xml.md), a SQLAlchemy URL
            of another database (with ``table=`` or ``query=``), or a pandas DataFrame.
        db: the bulkmail database to import into (default: ``open_database(url)``).
        url: the bulkmail database URL when ``db`` is not given.
        mapping: ``{"Source column": "field"}`` for columns the built-in synonyms do not
            recognise; a field is one of ``FIELDS``, ``"attributes.<name>"``, or None to skip
            the column. Unmapped, unrecognised columns become custom attributes.
        encoding: CSV encoding; detected if None: UTF-8 or UTF-16/32 (Excel's "Unicode
            text"), else cp1250 or cp1251.
        delimiter: CSV delimiter; sniffed among , ; TAB and | if None.
        region: region for phone numbers without a country code (default
            ``config.default_region()``, "SK").
        on_error: ``"raise"`` (default) imports nothing if any row is rejected and returns the
            report with ``committed=False``; ``"skip"`` imports the good rows.
        query: the SELECT to run when ``source`` is a database URL.
        table: the table to read when ``source`` is a database URL.
        sheet: the Excel sheet name or index (default: the first sheet).
        source_name: the name recorded on contacts, points and the import run.
        progress: show a progress bar while validating.
        consent_text: the wording agreed to, kept on each allowed point's consent row.

    Mailing is allowed only on explicit opt-in: a point whose row has no
    ``mailing_allowed``/``email_allowed``/``phone_allowed`` value gets False, and on re-import an
    absent value leaves the stored consent alone. Rows sharing an external id, e-mail or phone are
    one contact; existing contacts are matched the same way and updated only where a value differs,
    so re-importing a file changes nothing. An e-mail address is matched by its identity
    (``email_identity``: any case, an IDN domain in either form); another spelling of a known
    address is reported and merged, and the spelling first stored is kept. A source that cannot be
    read at all raises ``ContactImportError``.

    """
    if on_error not in ("raise", "skip"):
        raise ContactImportError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    database = resolve_database(db, url)
    src = read_source(source, encoding=encoding, delimiter=delimiter, sheet=sheet, table=table,
                      query=query)  # fmt: skip
    name = source_name or src.name
    plan = _plan_columns(src, mapping)
    region = (region or config.default_region()).upper()
    report = _Report()
    for number, reason in src.broken:
        report.add(number, "rejected", "", "", reason)
    candidates = []
    for row in tqdm(src.rows, desc=f"checking {name}", disable=not progress, leave=False):
        cand = _validate_row(row, plan, region, src.kind == "csv", report)
        if cand is not None:
            candidates.append(cand)
    groups = _merge_within_source(candidates, report)
    n_rows = len(src.rows) + len(src.broken)
    inserted = updated = unchanged = 0
    committed = False
    with database.session() as s:
        run = ImportRun(source=name[:500], rows=n_rows)
        s.add(run)
        s.flush()
        groups = drop_forgotten(s, groups, report)  # erased on request: never back (GDPR 17)
        contacts = _resolve_against_db(s, groups, report)
        if on_error == "skip" or not report.rejected:
            now = utcnow()
            events: list[tuple[int, str, _Candidate, list[str]]] = []
            new: list[_Candidate] = []
            for g in groups:
                if g.contact_id is not None and g.contact_id < 0:
                    continue  # rejected, or folded into another row matching the same contact
                if g.contact_id is None:
                    new.append(g)
                elif changed := _update(contacts[g.contact_id], g, name):
                    events.append((g.contact_id, "updated", g, changed))
                    updated += 1
                else:
                    unchanged += 1
            s.flush()
            new_ids = _insert_many(s, new, name, now)
            events.extend((cid, "imported", g, []) for cid, g in zip(new_ids, new, strict=True))
            inserted = len(new_ids)
            event_rows = [
                {
                    "kind": kind, "contact_id": cid, "detail": f"{name} row {g.row}",
                    "data": {"import_run_id": run.id, "rows": [g.row, *g.rows], "changed": changed},
                    "occurred_at": now,
                }
                for cid, kind, g, changed in sorted(events, key=lambda e: e[2].row)
            ]  # fmt: skip
            for chunk in chunks(event_rows, 5000):
                s.execute(sa.insert(Event), chunk)
            committed = True
            record_import_consents(s, run.id, run.started_at, consent_text)  # GDPR art. 7(1)
        run.inserted, run.updated = inserted, updated
        run.merged = len(report.merged - report.rejected)
        run.rejected = len(report.rejected)
        run.committed = committed
        run.finished_at = utcnow()
        run_id = run.id
    result = ImportResult(
        source=name, rows=n_rows, inserted=inserted, updated=updated, unchanged=unchanged,
        merged=len(report.merged - report.rejected), rejected=len(report.rejected),
        committed=committed, report=report.frame(), run_id=run_id, encoding=src.encoding,
        delimiter=src.delimiter, notes=src.notes)  # fmt: skip
    log.info("import %s", result.summary())
    return result

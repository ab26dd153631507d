"""Storing an import: new contacts, their points and their events in bulk; updates in place.

New contacts get their ids reserved first (the next ids on SQLite, whose single writer
the import's transaction already is; the contacts sequence on PostgreSQL), so contacts,
points and events go in as plain rows with no RETURNING: ``executemany`` of tuples on
SQLite, ``COPY`` on PostgreSQL (issue 18: psycopg re-parsing the huge multi-row INSERTs
SQLAlchemy built cost 3–4 s per 20,000 rows). Values pass through each column's own
SQLAlchemy bind processing on SQLite, so they are stored exactly as the ORM stores them.
Existing contacts are updated through the ORM (``_update``), which reports what changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel import config
from bulkmail_kernel.contacts.checks import _Candidate, _Point
from bulkmail_kernel.db import Contact, ContactPoint, Event

_CONTACT_COLUMNS = ("id", "external_id", "first_name", "last_name", "patronymic", "gender",
                    "language", "registered_at", "attributes", "source", "created_at",
                    "updated_at")  # fmt: skip
_POINT_COLUMNS = ("contact_id", "channel", "value", "normalized", "type", "kind",
                  "mailing_allowed", "is_preferred", "soft_bounces", "source", "created_at",
                  "updated_at")  # fmt: skip
_EVENT_COLUMNS = ("kind", "contact_id", "detail", "data", "occurred_at")
_CONTACTS = cast(sa.Table, Contact.__table__)
_POINTS = cast(sa.Table, ContactPoint.__table__)
_EVENTS = cast(sa.Table, Event.__table__)


def _reserve_ids(s: Session, n: int) -> list[int]:
    """Return ``n`` new contact ids, in ascending order."""
    if n == 0:
        return []
    if s.get_bind().dialect.name == "postgresql":
        seq = sa.select(sa.func.nextval(sa.func.pg_get_serial_sequence("contacts", "id")))
        stmt = seq.select_from(sa.func.generate_series(1, n))
        return sorted(s.scalars(stmt))
    # SQLite: the transaction holds the write lock since the import run was flushed, and
    # an INTEGER PRIMARY KEY without AUTOINCREMENT gives max + 1 anyway.
    top = s.scalar(sa.select(sa.func.max(Contact.id))) or 0
    return list(range(top + 1, top + 1 + n))


def _insert_many(s: Session, groups: list[_Candidate], source: str, now: datetime) -> list[int]:
    """Insert new contacts and their points in bulk; return the new contact ids in order."""
    ids = _reserve_ids(s, len(groups))
    language = config.DEFAULT_LANGUAGE
    contacts = (
        (
            cid, g.external_id, g.fields.get("first_name", ""), g.fields.get("last_name", ""),
            g.fields.get("patronymic", ""), g.fields.get("gender"),
            g.fields.get("language", language),
            # Without a registration date the import is the best we know.
            g.fields.get("registered_at", now), g.attributes, source, now, now,
        )
        for cid, g in zip(ids, groups, strict=True)
    )  # fmt: skip
    _write(s, _CONTACTS, _CONTACT_COLUMNS, contacts)
    _write(s, _POINTS, _POINT_COLUMNS, _point_rows(ids, groups, source, now))
    return ids


def _point_rows(
    ids: Sequence[int], groups: Sequence[_Candidate], source: str, now: datetime
) -> Iterable[tuple[Any, ...]]:
    for cid, g in zip(ids, groups, strict=True):
        seen: set[tuple[str, str]] = set()
        for p in g.points:
            preferred = (p.channel, p.kind) not in seen
            seen.add((p.channel, p.kind))
            yield (cid, p.channel, p.value[:320], p.normalized, p.type, p.kind, bool(p.allowed),
                   preferred, 0, source, now, now)  # fmt: skip


def _insert_events(
    s: Session, rows: Iterable[tuple[str, int, str, dict[str, Any], datetime]]
) -> None:
    """Insert (kind, contact id, detail, data, occurred at) events in bulk."""
    _write(s, _EVENTS, _EVENT_COLUMNS, rows)


class _Last:
    """The last value a column's bind processor was given, and what it returned."""

    __slots__ = ("result", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.result: Any = None


def _write(
    s: Session, table: sa.Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Append rows (tuples in ``columns`` order) to ``table`` inside the session's transaction."""
    conn = s.connection()
    dialect = conn.dialect
    raw = conn.connection.driver_connection
    assert raw is not None
    names = ", ".join(dialect.identifier_preparer.quote(c) for c in columns)
    target = dialect.identifier_preparer.format_table(table)
    cur = raw.cursor()
    try:
        if dialect.name == "postgresql":
            json_at = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, sa.JSON)]
            with cur.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
                for row in rows:
                    if json_at:
                        row = list(row)
                        for i in json_at:
                            row[i] = json.dumps(row[i])
                    copy.write_row(row)
            return
        # Each column's own bind processing (UTC datetimes as text, JSON, booleans); the
        # import's timestamps repeat, so each column remembers its last value's result.
        procs = [(i, p, _Last()) for i, c in enumerate(columns)
                 if (p := table.c[c].type._cached_bind_processor(dialect)) is not None]  # fmt: skip
        marks = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {target} ({names}) VALUES ({marks})"
        batch: list[list[Any]] = []
        for row in rows:
            values = list(row)
            for i, proc, last in procs:
                value = values[i]
                if value is last.value and value is not None:
                    values[i] = last.result
                else:
                    values[i] = last.result = proc(value)
                    last.value = value
            batch.append(values)
            if len(batch) >= 5000:
                cur.executemany(sql, batch)
                batch = []
        if batch:
            cur.executemany(sql, batch)
    finally:
        cur.close()


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

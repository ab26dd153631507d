"""Consent records: who agreed (or stopped agreeing) to what, when, how and in which words.

Each row of ``consents`` is one consent given or withdrawn for a purpose — "marketing"
(being mailed) or "tracking" (click and open tracking) — with the method ("import",
"form", "analyst", "unsubscribe"), the source (the import run, the form's URL, the
analyst's OS and database user) and the wording shown. Rows are never updated: the
current consent of a contact for a purpose is its latest row, so the history is the
proof (GDPR art. 7(1): the controller must be able to demonstrate consent).
"""

from __future__ import annotations

import getpass
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel import config
from bulkmail_kernel.contacts.frame import contacts_named
from bulkmail_kernel.db import (
    Consent,
    Contact,
    ContactPoint,
    Database,
    chunks,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import ConfigError, ContactError

PURPOSES = ("marketing", "tracking")
METHODS = ("import", "form", "analyst", "unsubscribe")
#: What an import records as the wording when ``import_contacts(consent_text=...)`` is not given.
DEFAULT_IMPORT_TEXT = "mailing allowed in the imported source (wording not given at import)"

_C = cast(sa.Table, Consent.__table__)
_COLUMNS = ["recorded_at", "contact_id", "contact_point_id", "purpose", "granted", "method",
            "source", "text"]  # fmt: skip


def _check(purpose: str, method: str) -> None:
    if purpose not in PURPOSES:
        raise ConfigError(f"consent purpose {purpose!r}: use one of {', '.join(PURPOSES)}")
    if method not in METHODS:
        raise ConfigError(f"consent method {method!r}: use one of {', '.join(METHODS)}")


def analyst_source(s: Session) -> str:
    """Return who records by hand: the OS user, and on PostgreSQL the database user too."""
    who = f"os:{getpass.getuser()}"
    if s.get_bind().dialect.name == "postgresql":
        who += f" db:{s.scalar(sa.text('SELECT current_user'))}"
    return who


def _contact_ids(contacts: Any) -> list[int]:
    if isinstance(contacts, pd.DataFrame):
        if "contact_id" not in contacts.columns:
            raise ConfigError(
                "record_consent: the frame has no 'contact_id' column: pass rows of "
                "contacts_frame() or a list of contact ids"
            )
        values: Iterable[Any] = contacts["contact_id"].dropna()
    elif isinstance(contacts, int | str):
        values = [contacts]
    else:
        values = contacts
    return sorted({int(v) for v in values})


def record_consent(
    contacts: Any,
    purpose: str,
    granted: bool = True,
    *,
    method: str,
    text: str,
    source: str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> int:
    """Record that ``contacts`` gave (or with ``granted=False`` withdrew) consent; return rows.

    Args:
        contacts: contact ids, or a DataFrame with a ``contact_id`` column (rows of
            ``contacts_frame()``); each contact gets one row.
        purpose: "marketing" or "tracking" (click and open tracking, docs/tracking.md).
        granted: True to give consent, False to withdraw it.
        method: how it was given: "form", "analyst", "import" or "unsubscribe".
        text: the consent wording the person was shown (kept as proof).
        source: the form's URL or the import run; default for "analyst": the OS user and,
            on PostgreSQL, the database user.
        db: the bulkmail database (default: ``open_database(url)``).
        url: the database URL when ``db`` is not given.

    Raises:
        ConfigError: an unknown purpose or method, or no consent wording.
        ContactError: a contact id that does not exist.

    """
    _check(purpose, method)
    if not text or not text.strip():
        raise ConfigError(
            "record_consent: text is empty: give the consent wording the person was shown"
        )
    ids = _contact_ids(contacts)
    database = resolve_database(db, url)
    now = utcnow()
    with database.session() as s:
        known: set[int] = set()
        for chunk in chunks(ids, 500):
            known.update(s.scalars(sa.select(Contact.id).where(Contact.id.in_(chunk))))
        missing = [i for i in ids if i not in known]
        if missing:
            raise ContactError(
                f"record_consent: no contact with id {missing[0]} ({len(missing)} unknown): "
                "pass ids of stored contacts (contacts_frame()['contact_id'])",
                contact=missing[0],
            )
        who = source if source is not None else (analyst_source(s) if method == "analyst" else "")
        rows = [{"contact_id": i, "contact_point_id": None, "purpose": purpose,
                 "granted": bool(granted), "recorded_at": now, "method": method,
                 "source": who[:500], "text": text} for i in ids]  # fmt: skip
        for batch in chunks(rows, 5000):
            s.execute(sa.insert(Consent), batch)
    return len(ids)


def add_consent(
    s: Session,
    contact_id: int,
    purpose: str,
    granted: bool,
    *,
    method: str,
    source: str,
    text: str,
    contact_point_id: int | None = None,
) -> None:
    """Add one consent row inside the caller's transaction (an unsubscribe's withdrawal)."""
    _check(purpose, method)
    s.add(
        Consent(
            contact_id=contact_id,
            contact_point_id=contact_point_id,
            purpose=purpose,
            granted=granted,
            recorded_at=utcnow(),
            method=method,
            source=source[:500],
            text=text,
        )
    )


def record_import_consents(s: Session, run_id: int, since: datetime, text: str | None) -> None:
    """Record a "marketing" consent for each point an import stored with mailing allowed.

    One INSERT ... SELECT: the points inserted or changed by this run (``updated_at`` at or
    after ``since``) that allow mailing and whose latest marketing consent row is not
    already a grant for that point.
    """
    cp = cast(sa.Table, ContactPoint.__table__)
    other = _C.alias("latest_consent")
    latest = (
        sa.select(sa.func.max(other.c.id))
        .where(other.c.contact_id == cp.c.contact_id, other.c.purpose == "marketing")
        .scalar_subquery()
    )
    already = sa.exists().where(
        _C.c.id == latest, _C.c.granted.is_(True), _C.c.contact_point_id == cp.c.id
    )
    select = sa.select(
        cp.c.contact_id,
        cp.c.id,
        sa.literal("marketing"),
        sa.true(),
        sa.literal(utcnow(), type_=_C.c.recorded_at.type),
        sa.literal("import"),
        sa.literal(f"import run {run_id}"),
        sa.literal(text or DEFAULT_IMPORT_TEXT),
    ).where(cp.c.mailing_allowed.is_(True), cp.c.updated_at >= since, ~already)
    s.execute(
        sa.insert(_C).from_select(
            ["contact_id", "contact_point_id", "purpose", "granted", "recorded_at", "method",
             "source", "text"],
            select,
        )
    )  # fmt: skip


def consented(
    conn: sa.Connection | Session, contact_ids: Collection[int], purpose: str
) -> set[int]:
    """Return which of ``contact_ids`` currently consent to ``purpose`` (latest row a grant)."""
    out: set[int] = set()
    for chunk in chunks(sorted(set(contact_ids)), 500):
        latest = (
            sa.select(sa.func.max(_C.c.id).label("id"))
            .where(_C.c.contact_id.in_(chunk), _C.c.purpose == purpose)
            .group_by(_C.c.contact_id)
            .subquery()
        )
        out.update(
            conn.execute(
                sa.select(_C.c.contact_id)
                .join(latest, latest.c.id == _C.c.id)
                .where(_C.c.granted.is_(True))
            ).scalars()
        )
    return out


def consent_rows(s: Session, contact_id: int) -> list[Any]:
    """Return one contact's consent rows, oldest first (the GDPR export lists them)."""
    return list(
        s.execute(
            sa.select(*(_C.c[c] for c in _COLUMNS))
            .where(_C.c.contact_id == contact_id)
            .order_by(_C.c.id)
        )
    )


def erase_consents(s: Session, contact_id: int) -> int:
    """Delete one contact's consent rows (erasure on request); return how many."""
    result = s.execute(sa.delete(_C).where(_C.c.contact_id == contact_id))
    return int(getattr(result, "rowcount", 0) or 0)


def consents(
    contact: int | str | None = None, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return the consent history (one row per consent given or withdrawn, local time).

    ``contact`` (an id, customer number or address) narrows it to one person; the
    current consent per purpose is each contact's latest row.
    """
    database = resolve_database(db, url)
    stmt = sa.select(*(_C.c[c] for c in _COLUMNS)).order_by(_C.c.id)
    with database.session() as s:
        if contact is not None:
            named = contacts_named(contact)
            ids = list(s.scalars(named)) if named is not None else []
            if not ids:
                raise ContactError(
                    f"consents: nobody is known by {contact!r} (give a contact id, a customer "
                    "number, or an address as stored)",
                    contact=contact,
                )
            stmt = stmt.where(_C.c.contact_id.in_(ids))
        rows = s.execute(stmt).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=_COLUMNS)
    frame["contact_id"] = frame["contact_id"].astype("Int64")
    frame["contact_point_id"] = frame["contact_point_id"].astype("Int64")
    frame["granted"] = frame["granted"].astype(bool)
    frame["recorded_at"] = (
        pd.to_datetime(frame["recorded_at"], utc=True)
        .astype("datetime64[us, UTC]")
        .dt.tz_convert(config.local_timezone())
    )
    return readable(frame)

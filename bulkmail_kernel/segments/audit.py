"""Who may export contact data, and the log of every export (and every refused attempt).

Every path that writes addresses, phone numbers or names out of the database — a
segment export with contact columns (``export_recipients``), a GDPR export
(``export_contact_data``) — asks ``check_contact_export`` first and calls
``record_export`` after. On PostgreSQL the permission is the database role: a role that
may not read the contact columns (the analyst role of ``create_roles``) is refused. On
SQLite (one user) it is the setting ``allow_contact_export`` stores (allowed until it is
switched off); the setting is also honoured on PostgreSQL, as an extra lock. The log
names the database user on PostgreSQL and the OS user on SQLite. See docs/permissions.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.db import Database, ExportLogEntry, Setting, resolve_database
from bulkmail_kernel.db.denied import ASK
from bulkmail_kernel.db.exportlog import export_user, record_export
from bulkmail_kernel.db.roles import hidden_contact_columns
from bulkmail_kernel.exceptions import ContactAccessError

log = logging.getLogger("bulkmail")

#: The settings row that allows (default) or refuses contact-data exports.
SETTING = "contact_export"
EXPORT_LOG_COLUMNS = [
    "exported_at", "who", "outcome", "kind", "segment", "contact_id", "columns", "rows",
    "path", "detail",
]  # fmt: skip


def contact_export_allowed(database: Database) -> bool:
    """Return whether the local setting lets contact data be exported from this database."""
    with database.session() as s:
        row = s.get(Setting, SETTING)
        return bool(row.value.get("allowed", True)) if row is not None else True


def allow_contact_export(
    allowed: bool, *, db: Database | None = None, url: str | None = None
) -> bool:
    """Allow or refuse exports of contact data from this database (SQLite's permission).

    SQLite has one user, so the permission is a setting of the database file; on
    PostgreSQL the database role decides (``create_roles``) and this setting is an extra
    lock on top. Returns the setting now in force.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        row = s.get(Setting, SETTING)
        if row is None:
            s.add(Setting(name=SETTING, value={"allowed": bool(allowed)}))
        else:
            row.value = {"allowed": bool(allowed)}
    log.info("contact-data export %s on %s", "allowed" if allowed else "refused", database.url)
    return bool(allowed)


def check_contact_export(
    database: Database,
    columns: Sequence[str],
    *,
    kind: str,
    segment: str | None = None,
    contact_id: int | None = None,
    path: str | Path = "",
) -> str:
    """Return who exports if they may export contact ``columns``; else log the refusal and raise.

    Raises:
        ContactAccessError: the role cannot read contact data, or the setting refuses it.

    """
    who = export_user(database)
    hidden = hidden_contact_columns(database)
    if hidden:
        message = (
            f'database role "{who}" may not export contact data ({", ".join(columns)}): it '
            f"cannot read {', '.join(hidden)} (the analyst role); {ASK}, or leave the "
            "contact columns out"
        )
    elif not contact_export_allowed(database):
        message = (
            f"{who}: exporting contact data ({', '.join(columns)}) is switched off on this "
            "database; allow it with allow_contact_export(True) "
            "(bulkmail allow-contact-export yes), or leave the contact columns out"
        )
    else:
        return who
    try:
        record_export(database, who=who, kind=kind, columns=columns, rows=0, path=path,
                      segment=segment, contact_id=contact_id, outcome="refused",
                      detail=message)  # fmt: skip
    except sa.exc.SQLAlchemyError as exc:  # the refusal stands even if it cannot be logged
        log.warning("the refused export could not be logged: %s", exc)
    raise ContactAccessError(message, role=who, columns=list(columns), segment=segment)


def export_log(*, db: Database | None = None, url: str | None = None) -> pd.DataFrame:
    """Return every export of contact data and every refused attempt, newest first, local time."""
    database = resolve_database(db, url)
    t = ExportLogEntry.__table__
    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.select(*(t.c[name] for name in EXPORT_LOG_COLUMNS)).order_by(
                t.c.exported_at.desc(), t.c.id.desc()
            )
        ).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=EXPORT_LOG_COLUMNS)
    stamps = pd.to_datetime(frame["exported_at"], utc=True).astype("datetime64[us, UTC]")
    frame["exported_at"] = stamps.dt.tz_convert(config.local_timezone())
    frame["contact_id"] = frame["contact_id"].astype("Int64")
    frame["rows"] = frame["rows"].astype("int64")
    for name in ("who", "outcome", "kind", "segment", "columns", "path", "detail"):
        frame[name] = frame[name].astype("str")
    return frame

"""Write one row of the export log: who exported which contact columns, how many, where.

Kept in the database layer so every layer that writes contact data out can log it: the
segment and GDPR exports (``segments.audit``, which also decides who may export), the
CLI's ``--csv`` printing, and the import report (``contacts.report``), which sits below
the segments. See docs/permissions.md.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from pathlib import Path

from bulkmail_kernel.db.connection import Database
from bulkmail_kernel.db.roles import current_role
from bulkmail_kernel.db.schema import ExportLogEntry, utcnow

#: The import report's kind in the export log: logged, never refused.
IMPORT_REPORT = "import report"


def export_user(database: Database) -> str:
    """Return who exports: the database user on PostgreSQL, the OS user on SQLite."""
    if database.dialect == "postgresql":
        return current_role(database)
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


def record_export(
    database: Database,
    *,
    who: str,
    kind: str,
    columns: Sequence[str],
    rows: int,
    path: str | Path = "",
    segment: str | None = None,
    contact_id: int | None = None,
    outcome: str = "exported",
    detail: str = "",
) -> None:
    """Write one row of the export log (its own transaction, so a refusal is kept too)."""
    with database.session() as s:
        s.add(
            ExportLogEntry(
                exported_at=utcnow(),
                who=who,
                kind=kind,
                segment=segment,
                contact_id=contact_id,
                columns=",".join(map(str, columns)),
                rows=int(rows),
                path=str(path),
                outcome=outcome,
                detail=detail[:2000],
            )
        )

"""What each backend's connections need: SQLite's pragmas, PostgreSQL's keepalives.

Kept apart from the schema in :mod:`bulkmail_kernel.db`, which makes the engine with them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Set what every SQLite connection needs: WAL, foreign keys, a 30 s wait for the lock."""
    cur = dbapi_conn.cursor()
    # WAL lets a notebook read while a worker writes; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def server_options(url: str) -> dict[str, Any]:
    """Return PostgreSQL's engine options: survive a restart, notice a dead server.

    ``pool_pre_ping`` replaces a pooled connection a restart killed before it is used
    (what fails mid-transaction, ``outbox.reconnect`` retries); libpq gives up connecting
    after 10 s and TCP keepalives find a silently dead peer in about a minute, not never.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    libpq = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30}
    libpq |= {"keepalives_interval": 10, "keepalives_count": 3}
    args = {k: v for k, v in libpq.items() if k not in parsed.query}  # the URL's own win
    return {"pool_pre_ping": True, "connect_args": args}

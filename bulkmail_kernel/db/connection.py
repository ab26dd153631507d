"""Opening the database: engines with the pragmas and options we need, migrations, sessions.

``open_database`` applies the Alembic migrations on open, so an older file is upgraded
in place and never rebuilt; repeated opens of one URL share one engine; ``connect``
chooses the database of a notebook or process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from bulkmail_kernel import config
from bulkmail_kernel.db.denied import translate_denied
from bulkmail_kernel.exceptions import ConfigError

log = logging.getLogger("bulkmail")

T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets a notebook read while a worker writes; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _server_options(url: str) -> dict[str, Any]:
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


def create_db_engine(url: str | None = None) -> Engine:
    """Create an engine for ``url`` (see ``config.database_url``) with the pragmas we need."""
    resolved = config.database_url(url)
    try:
        engine = sa.create_engine(resolved, future=True, **_server_options(resolved))
    except (sa.exc.ArgumentError, ModuleNotFoundError) as exc:
        raise ConfigError(f"database URL {resolved!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        db_path = engine.url.database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # The analyst role's "permission denied" becomes a ContactAccessError saying what to do.
        event.listen(engine, "handle_error", translate_denied)
    return engine


@dataclass
class Database:
    """An open, migrated database: the engine and a session factory."""

    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def url(self) -> str:
        """Return the URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """Return ``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session that commits on success and rolls back on any error."""
        with self.sessions.begin() as s:
            yield s

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


_migrate_lock = threading.Lock()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision`` (default: the newest)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parents[1] / "migrations"))
    with _migrate_lock, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """Return the migration revision the database is at, or None for an empty one."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


_open: dict[str, Database] = {}
#: The URL ``connect`` chose for this notebook or process (None: the environment's or the default).
_connected: str | None = None


def connect(url: str | None = None) -> Database:
    """Open the database every function of this process uses unless given another.

    Call it once at the top of a notebook (``bm.connect("postgresql+psycopg://...")``);
    ``db=`` or ``url=`` on a single call still wins. Without it, functions use
    ``BULKMAIL_DB_URL`` or ``data/bulkmail.db``.
    """
    global _connected
    database = open_database(url)
    _connected = config.database_url(url)
    return database


def open_database(url: str | None = None, *, migrate: bool = True) -> Database:
    """Open (and by default migrate) the database at ``url``; repeated calls share one engine.

    Without ``url``: the database ``connect`` chose, else ``BULKMAIL_DB_URL``, else
    ``data/bulkmail.db``.
    """
    resolved = config.database_url(url if url is not None else _connected)
    db = _open.get(resolved)
    if db is None:
        engine = create_db_engine(resolved)
        if migrate:
            try:
                upgrade(engine)
            except sa.exc.OperationalError as exc:
                engine.dispose()
                raise ConfigError(
                    f"cannot open the database {engine.url.render_as_string(hide_password=True)}: "
                    f"{exc.orig}; check BULKMAIL_DB_URL and that the server is running"
                ) from exc
        db = Database(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
        _open[resolved] = db
    return db


def resolve_database(db: Database | None = None, url: str | None = None) -> Database:
    """Return ``db``, else the database at ``url``, else the connected (or default) one."""
    return db if db is not None else open_database(url)


def chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """Yield ``items`` in slices of ``size``: IN lists and multi-row INSERTs stay bounded."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def close_all() -> None:
    """Dispose every engine ``open_database`` opened and forget ``connect`` (tests, notebooks)."""
    global _connected
    for db in _open.values():
        db.dispose()
    _open.clear()
    _connected = None

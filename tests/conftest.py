"""Shared fixtures: a real SQLite file and a real PostgreSQL schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from dovecot_support import Imap, run_dovecot

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.servers.sink import Sink, start_sink

PG_URL = os.environ.get("BULKMAIL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def _pg_unreachable_reason() -> str | None:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure to reach it is a reason to skip, said loudly
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}: {exc}"
    return None


_PG_REASON = _pg_unreachable_reason()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the developer's data/ and BULKMAIL_* settings."""
    for var in ("BULKMAIL_DB_URL", "BULKMAIL_HOME", "BULKMAIL_DATA_DIR", "BULKMAIL_JOURNAL_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BULKMAIL_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """Return the URL of a fresh SQLite file."""
    yield f"sqlite:///{tmp_path / 'bulkmail.db'}"
    dbmod.close_all()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """Return a URL whose search_path is a fresh schema in the test PostgreSQL."""
    if _PG_REASON:
        pytest.skip(_PG_REASON)
    schema = f"bm_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    dbmod.close_all()
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Return a fresh database URL; tests using it run on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(name)


@pytest.fixture
def database(db_url: str) -> dbmod.Database:
    """Return an opened, migrated database on both backends."""
    return dbmod.open_database(db_url)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    """Start a real SMTP sink (aiosmtpd) on a free loopback port; it records what it accepts."""
    running = start_sink(tmp_path / "sink")
    yield running
    running.stop()


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Imap]:
    """Start a private Dovecot (IMAP on a free loopback port, maildir in tmp_path)."""
    yield from run_dovecot(tmp_path)

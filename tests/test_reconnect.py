"""A lost PostgreSQL connection mid-claim and mid-record: retried, adopted, nothing twice.

The connections are really lost: this test's own backend is terminated on the server
(``pg_terminate_backend``), either before the commit (nothing was written) or right
after the server committed and before the client heard it (a lost commit). Only this
test's backends are touched on the shared server, found by their application name.
The whole-cluster restart under three workers is in test_database_restart.py.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from conftest import PG_URL
from sending_support import make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import queue, send
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import Event, Message, RateBucket
from bulkmail_kernel.engine.loop import RetryPolicy
from bulkmail_kernel.engine.throttle import SharedTokenBucket
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.reconnect import is_connection_lost, retrying
from bulkmail_kernel.outbox.store import OutboxStore
from bulkmail_kernel.servers.sink import Sink, free_port
from bulkmail_kernel.transports import SendResult

pytestmark = pytest.mark.postgres


@pytest.fixture
def app_url(pg_url: str) -> str:
    """The test schema's URL, its connections named so that only they are terminated."""
    return f"{pg_url}&application_name=bm_reconnect_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_URL)
    yield engine
    engine.dispose()


def _terminate(admin: sa.Engine, pid: int) -> None:
    with admin.connect() as conn:
        # With a timeout it returns once the backend is gone, not when it was signalled.
        gone = conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        assert gone.scalar()


def _lose_next_commit(database: dbmod.Database, admin: sa.Engine, *, committed: bool) -> None:
    """Make the next COMMIT fail on a dead connection; ``committed``: after the server did it."""

    armed = [True]

    def sabotage(conn: sa.Connection) -> None:
        if not armed:
            return
        armed.clear()  # once (a listener cannot remove itself while it is being called)
        raw: Any = conn.connection.dbapi_connection
        if committed:
            raw.commit()  # the server commits ...
            raw.execute("SELECT 1")  # ... and the client's own COMMIT has a transaction to end
        _terminate(admin, raw.info.backend_pid)

    sa.event.listen(database.engine, "commit", sabotage)


def _statuses(database: dbmod.Database, cid: int) -> Counter[str]:
    with database.engine.connect() as conn:
        return Counter(
            dict(
                conn.execute(
                    sa.select(Message.status, sa.func.count())
                    .where(Message.campaign_id == cid)
                    .group_by(Message.status)
                ).all()
            )
        )


def _lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    back = [r.getMessage() for r in caplog.records if "connection back" in r.getMessage()]
    return lost, back


@pytest.mark.parametrize("committed", [True, False], ids=["lost-commit", "lost-before-commit"])
def test_a_claim_whose_connection_drops_is_adopted_not_claimed_twice(
    app_url: str, admin: sa.Engine, caplog: pytest.LogCaptureFixture, committed: bool
) -> None:
    database = dbmod.open_database(app_url)
    sink_account(database, free_port())
    cid = make_campaign(database, 30, status="sending")
    store = OutboxStore(database, "worker-a")
    store.register_worker()
    _lose_next_commit(database, admin, committed=committed)
    with caplog.at_level(logging.INFO, logger="bulkmail"):
        batch = store.claim(cid, 10, hand=3)
    first_ten = sorted(m.id for m in batch)
    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.select(Message.id, Message.status, Message.claimed_by, Message.attempts)
            .where(Message.campaign_id == cid)
            .order_by(Message.id)
        ).all()
    # The same ten whether the lost commit went through or not: one batch, claimed once.
    assert first_ten == [r.id for r in rows[:10]]
    assert [m.handed for m in sorted(batch, key=lambda m: m.id)] == [True] * 3 + [False] * 7
    assert all(r.status == "sending" and r.claimed_by == "worker-a" for r in rows[:10])
    assert all(r.attempts == 1 for r in rows[:10])  # the attempt is counted once
    assert all(r.status == "queued" for r in rows[10:])
    lost, back = _lines(caplog)
    assert (len(lost), len(back)) == (1, 1), caplog.text


@pytest.mark.parametrize("committed", [True, False], ids=["lost-commit", "lost-before-commit"])
def test_a_record_whose_connection_drops_is_written_once(
    app_url: str, admin: sa.Engine, caplog: pytest.LogCaptureFixture, committed: bool
) -> None:
    database = dbmod.open_database(app_url)
    sink_account(database, free_port())
    cid = make_campaign(database, 10, status="sending")
    store = OutboxStore(database, "worker-a")
    store.register_worker()
    batch = sorted(store.claim(cid, 10), key=lambda m: m.id)
    outcomes = [(m, SendResult("sent", 250, "2.0.0 OK")) for m in batch[:5]]
    outcomes.append((batch[5], SendResult("deferred", 451, "4.3.0 try later")))
    _lose_next_commit(database, admin, committed=committed)
    with caplog.at_level(logging.INFO, logger="bulkmail"):
        counts, mine = store.record_and_mark(
            cid, outcomes, RetryPolicy(), [m.id for m in batch[6:9]]
        )
    assert counts["sent"] == 5
    assert counts["deferred"] == 1
    assert mine == {m.id for m in batch[6:9]}
    assert _statuses(database, cid) == {"sent": 5, "deferred": 1, "sending": 4}
    with database.engine.connect() as conn:
        events = Counter(
            conn.execute(
                sa.select(Event.kind).where(Event.campaign_id == cid, Event.message_id.isnot(None))
            ).scalars()
        )
        handed = conn.execute(
            sa.select(sa.func.count()).where(
                Message.campaign_id == cid, Message.handed_at.isnot(None)
            )
        ).scalar()
    assert events == {"sent": 5, "deferred": 1}  # not doubled by the retry
    assert handed == 3
    lost, back = _lines(caplog)
    assert (len(lost), len(back)) == (1, 1), caplog.text


def test_only_a_lost_connection_is_retried(app_url: str, admin: sa.Engine) -> None:
    database = dbmod.open_database(app_url)
    with database.engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        _terminate(admin, pid)
        with pytest.raises(sa.exc.DBAPIError) as lost:
            conn.execute(sa.text("SELECT 1"))
    assert is_connection_lost(lost.value)
    tries: list[int] = []

    def typo(attempt: int) -> object:
        tries.append(attempt)
        with database.engine.connect() as conn:
            return conn.execute(sa.text("SELEC 1"))

    with pytest.raises(sa.exc.ProgrammingError) as real:
        retrying(database, "typo", typo)
    assert tries == [0]  # a real error is raised at once
    assert not is_connection_lost(real.value)
    with pytest.raises(sa.exc.IntegrityError) as integrity, database.engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE t (x int PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1), (1)"))
    assert not is_connection_lost(integrity.value)
    assert not is_connection_lost(psycopg.errors.QueryCanceled("canceling statement"))


def test_a_wrong_database_name_fails_at_once(pg_url: str) -> None:
    base = sa.engine.make_url(pg_url)
    url = base.set(database=f"bm_missing_{uuid.uuid4().hex[:8]}").render_as_string(False)
    database = dbmod.open_database(url, migrate=False)
    start = time.monotonic()
    try:
        with pytest.raises(sa.exc.OperationalError, match="does not exist") as exc:
            OutboxStore(database, "worker-a").counts(1)
    finally:
        dbmod.close_all()
    assert not is_connection_lost(exc.value)
    assert time.monotonic() - start < 5


def test_gives_up_after_the_configured_time_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BULKMAIL_DB_RETRY_S", "1.5")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    database = dbmod.open_database(url, migrate=False)
    store = OutboxStore(database, "worker-a")
    start = time.monotonic()
    try:
        with caplog.at_level(logging.INFO, logger="bulkmail"), pytest.raises(ConfigError) as exc:
            store.counts(1)
    finally:
        dbmod.close_all()
    assert 1.4 < time.monotonic() - start < 10
    assert "unreachable for 2 s (counts)" in exc.value.message
    assert "BULKMAIL_DB_RETRY_S=1.5" in exc.value.message
    lost, back = _lines(caplog)
    assert len(lost) == 1
    assert not back


def test_a_bad_retry_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKMAIL_DB_RETRY_S", "soon")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    database = dbmod.open_database(url, migrate=False)
    try:
        with pytest.raises(ConfigError, match="BULKMAIL_DB_RETRY_S='soon'"):
            OutboxStore(database, "worker-a").counts(1)
    finally:
        dbmod.close_all()


@pytest.mark.slow
def test_send_carries_on_while_its_connections_are_killed(
    app_url: str, admin: sa.Engine, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """Kill every connection of this test again and again while send() runs: nothing twice."""
    database = dbmod.open_database(app_url)
    sink_account(database, sink.port)
    n = 400
    cid = make_campaign(database, n, status="sending")
    app = database.engine.url.query["application_name"]
    done = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not done.wait(0.25):
            if len(sink.messages) < 30:
                continue
            with admin.connect() as conn:
                kills.extend(
                    conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                            "WHERE application_name = :app"
                        ),
                        {"app": app},
                    ).scalars()
                )
            if len(kills) >= 8:
                return

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, logger="bulkmail"):
            # Finite and fast: every message also takes a token from the shared bucket.
            summary = send(
                cid, rate_per_hour=360_000, burst=5, connections=2, progress=False, db=database
            )
    finally:
        done.set()
        thread.join()
    assert len(kills) >= 3, "the killer found no connection to kill"
    assert summary.sent == n
    assert summary.unknown == 0
    accepted = Counter(m.message_id for m in sink.messages)
    assert len(accepted) == n
    assert max(accepted.values()) == 1
    assert set(queue(cid, db=database)["status"].astype(str)) == {"sent"}
    lost, back = _lines(caplog)
    assert lost
    assert back
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("committed", [True, False], ids=["lost-commit", "lost-before-commit"])
def test_the_shared_throttle_waits_out_a_lost_connection(
    app_url: str, admin: sa.Engine, committed: bool
) -> None:
    database = dbmod.open_database(app_url)
    clock = ManualClock()
    bucket = SharedTokenBucket(database, "campaign:1", rate_per_hour=3600, burst=5, clock=clock)
    _lose_next_commit(database, admin, committed=committed)
    assert bucket.acquire() == 0.0
    with database.engine.connect() as conn:
        tokens = conn.execute(sa.select(RateBucket.tokens)).scalar_one()
    # A take retried after its commit went through spends a second token: slower, never faster.
    assert tokens == pytest.approx(3.0 if committed else 4.0)

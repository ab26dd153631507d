"""PostgreSQL restarted under three workers: they carry on, nothing twice, nothing lost.

The shared test server must never be restarted, so each test runs a private cluster:
initdb and pg_ctl as user postgres (when the suite runs as root) on a free port, in a
temporary folder of its own (pytest's ``tmp_path`` lies under a root-only folder the
postgres user cannot enter). Three ``bulkmail run-worker --exit-when-idle`` processes
send a campaign to a real SMTP sink that takes a little time per message; the server
is stopped mid-send for a few seconds (like the 3.8 s restart of issue 13), once
cleanly (``-m fast``: every backend is told to terminate) and once as a crash
(``-m immediate``: crash recovery on start), then started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from process_support import stop
from sending_support import make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import queue
from bulkmail_kernel.db import Event, Worker
from bulkmail_kernel.outbox.store import OutboxStore
from bulkmail_kernel.servers.sink import Sink, free_port, start_sink

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.postgres


def _bin_dir() -> Path | None:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    return next((b for b in found if (b / "initdb").exists() and (b / "pg_ctl").exists()), None)


@dataclass
class Cluster:
    """A private PostgreSQL cluster the test may stop and start at will."""

    bin: Path
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = [str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-w"]
        command += ["-l", str(self.folder / "server.log"), "-o", options, *args]
        subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=60)

    def log(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")


def _as_postgres(command: list[str]) -> list[str]:
    # initdb refuses to run as root; as anyone else it runs as that user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    folder = Path(tempfile.mkdtemp(prefix="bulkmail-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    running = Cluster(bin_dir, folder, free_port())
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres"]
        initdb += ["-A", "trust", "-E", "UTF8", "--no-sync"]
        subprocess.run(_as_postgres(initdb), check=True, capture_output=True, timeout=120)
        running.pg_ctl("start")
        yield running
    finally:
        dbmod.close_all()
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            running.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


class _Slow:
    """The sink's handler, but each message takes ``delay_s`` (a relay doing its work)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay_s)
        return str(await self.inner.handle_DATA(server, session, envelope))


@pytest.fixture
def slow_sink(tmp_path: Path) -> Iterator[Sink]:
    running = start_sink(tmp_path / "sink")
    controller = running._controller  # each new SMTP session takes the handler from here
    controller.handler = _Slow(controller.handler, 0.015)
    yield running
    running.stop()


def _worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bulkmail_kernel.cli", "-v", "run-worker"]
    command += ["--exit-when-idle", "--poll-interval-s", "0.2", "--db", url]
    with log.open("wb") as err:  # a file, not a pipe: a chatty worker never blocks on it
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)


def _workers(database: dbmod.Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(Worker)).scalar_one())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_three_workers_carry_on_through_a_postgresql_restart(
    cluster: Cluster, slow_sink: Sink, tmp_path: Path, mode: str
) -> None:
    database = dbmod.open_database(cluster.url)
    sink_account(database, slow_sink.port)
    n = 600
    # Fast but finite: every message also takes a token from the bucket in the database.
    cid = make_campaign(database, n, rate_per_hour=10_000_000, burst=10, status="scheduled")
    logs = [tmp_path / f"worker{k}.log" for k in range(3)]
    procs = [_worker(cluster.url, log) for log in logs]
    try:
        deadline = time.monotonic() + 120
        # All three registered (a worker still starting would meet a server that is down,
        # which is not what this test is about) and well into the campaign.
        while len(slow_sink.messages) < 150 or _workers(database) < 3:
            assert time.monotonic() < deadline, "the workers sent nothing for 120 s"
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            time.sleep(0.01)
        cluster.pg_ctl("stop", "-m", mode)
        down_at = len(slow_sink.messages)
        time.sleep(3.0)
        cluster.pg_ctl("start")
        for p in procs:
            p.wait(timeout=180)
    finally:
        codes = [stop(p) for p in procs]
    errors = [log.read_text(errors="replace") for log in logs]
    assert down_at < n - 100, "the campaign was nearly done before the restart"
    for code, err in zip(codes, errors, strict=True):
        assert code == 0, err
        assert "Traceback" not in err, err
        assert err.count("connection lost") == 1, err  # one line when it went ...
        assert err.count("connection back") == 1, err  # ... and one when it came back
    accepted = Counter(m.message_id for m in slow_sink.messages)
    assert len(accepted) == n  # nothing lost
    assert max(accepted.values()) == 1  # nothing twice
    frame = queue(cid, db=database)
    assert set(frame["status"].astype(str)) == {"sent"}  # and nothing left unknown
    with database.engine.connect() as conn:
        sent_events = conn.execute(
            sa.select(Event.message_id, sa.func.count())
            .where(Event.campaign_id == cid, Event.kind == "sent")
            .group_by(Event.message_id)
        ).all()
        doubt = conn.execute(
            sa.select(sa.func.count()).where(
                Event.campaign_id == cid, Event.kind.in_(["unknown", "requeued"])
            )
        ).scalar()
    assert len(sent_events) == n
    assert {count for _, count in sent_events} == {1}  # no event written twice
    assert doubt == 0  # no live worker was taken for dead during the gap
    assert "database system is ready to accept connections" in cluster.log()


def test_after_an_outage_a_live_worker_is_not_taken_for_dead(cluster: Cluster) -> None:
    """Nobody could beat while the server was down: the gap is not a sign of death."""
    database = dbmod.open_database(cluster.url)
    sink_account(database, free_port())
    cid = make_campaign(database, 20, status="sending")
    other = OutboxStore(database, "worker-b")  # alive, in this very process
    other.register_worker()
    assert len(other.claim(cid, 5, hand=2)) == 5
    me = OutboxStore(database, "worker-a")
    cluster.pg_ctl("stop", "-m", "fast")
    restart = threading.Timer(2.0, cluster.pg_ctl, args=("start",))
    restart.start()
    try:
        assert me.counts(cid) == {"sending": 5, "queued": 15}  # waits for the server
    finally:
        restart.join()
    # worker-b's heartbeat is older than the limit, but only because of the outage.
    assert len(me.recover(stale_after_s=1.5)) == 0
    assert me.counts(cid) == {"sending": 5, "queued": 15}
    # Once the live workers had their time to beat again, silence means death again.
    time.sleep(1.6)
    assert len(me.recover(stale_after_s=1.5)) == 2
    assert me.counts(cid) == {"unknown": 2, "queued": 18}

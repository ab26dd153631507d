"""The worker as a production service, in real processes (issue 13).

- Several PostgreSQL workers at a low rate with a short dead-worker limit: a worker
  sleeping for its token is never taken for dead, nothing is requeued or stolen.
- SIGTERM mid-send to ``bulkmail send`` (1 and 4 connections) and ``bulkmail
  run-worker``: a clean exit within seconds, nothing ``unknown``, and a resumed send
  delivers the rest, each message exactly once.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from process_support import stop
from sending_support import make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import get_campaign, queue, send
from bulkmail_kernel.db import Event, Worker
from bulkmail_kernel.servers.sink import Sink, start_sink


def _exe() -> str:
    exe = shutil.which("bulkmail", path=str(Path(sys.executable).parent))
    assert exe, "the bulkmail console script is not installed next to this Python"
    return exe


def _bulkmail(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [_exe(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _events(db: dbmod.Database, cid: int) -> Counter[str]:
    with db.session() as s:
        rows = s.execute(
            sa.select(Event.kind, sa.func.count())
            .where(Event.campaign_id == cid)
            .group_by(Event.kind)
        ).all()
    return Counter({kind: int(n) for kind, n in rows})


def _statuses(db: dbmod.Database, cid: int) -> Counter[str]:
    return Counter(queue(cid, db=db)["status"].astype(str))


def _each_sent_once(db: dbmod.Database, cid: int, sink: Sink) -> Counter[str]:
    """Assert the sink took each message at most once and every sent one exactly once."""
    frame = queue(cid, db=db)
    status = dict(zip(frame["message_id_header"], frame["status"].astype(str), strict=True))
    accepted = Counter(m.message_id for m in sink.messages)
    assert set(accepted) <= set(status)
    assert max(accepted.values(), default=1) == 1
    assert {mid for mid, st in status.items() if st == "sent"} == set(accepted)
    return accepted


def _wait_for(condition: object, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()}"
        assert time.monotonic() < deadline, "nothing happened in time"
        time.sleep(0.005)


# --------------------------------------------------------------------------- several workers


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_at_a_low_rate_never_take_each_other_for_dead(
    pg_url: str, sink: Sink, workers: int
) -> None:
    # 120/h: after the burst of 4, the fifth waits 30 s for its token, ten times the 3 s
    # dead-worker limit. The old worker beat only between messages: its sleep made it
    # look dead, the others requeued its message and deleted its row, in turns.
    database = dbmod.open_database(pg_url)
    sink_account(database, sink.port)
    n = 5
    cid = make_campaign(database, n, rate_per_hour=120, burst=4, status="scheduled")
    # No --exit-when-idle: the idle workers stay, recovering every 0.2 s all the while.
    args = ["run-worker", "--db", pg_url, "--poll-interval-s", "0.2"]
    env = {"BULKMAIL_DEAD_WORKER_S": "3"}
    procs = [_bulkmail(*args, env=env) for _ in range(workers)]
    logs = []
    try:
        deadline = time.monotonic() + 55
        while get_campaign(cid, db=database).status != "finished":
            assert time.monotonic() < deadline, _events(database, cid)
            assert all(p.poll() is None for p in procs)
            time.sleep(0.2)
        for p in procs:  # stopped as systemd stops them
            p.send_signal(signal.SIGTERM)
        for p in procs:
            _, err = p.communicate(timeout=10)
            logs.append(err)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            stop(p)
    assert get_campaign(cid, db=database).status == "finished"
    assert len(_each_sent_once(database, cid, sink)) == n
    events = _events(database, cid)
    assert events["sent"] == n
    assert events["requeued"] == 0
    assert events["unknown"] == 0
    # No worker row was deleted while its worker lived (each says so if it finds it gone).
    for err in logs:
        assert "taken for dead" not in err, err
        assert "taken back" not in err, err
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0
    # Every worker told what it did as it went: started, picked up, stopped.
    assert all("started on" in err and "stopped after" in err for err in logs)


# --------------------------------------------------------------------------- SIGTERM


@pytest.fixture
def slow_sink(tmp_path: Path) -> object:
    """A sink that holds each message 40 ms before answering: a kill lands mid-send."""
    running = start_sink(tmp_path / "slow-sink", delay_s=0.04)
    yield running
    running.stop()


def _sigterm_mid_send(proc: subprocess.Popen[str], sink: Sink, after: int) -> tuple[int, str]:
    """Let ``after`` messages through, SIGTERM, return (exit code, stderr); within 10 s."""
    _wait_for(lambda: len(sink.messages) >= after, proc)
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        stop(proc)
    assert time.monotonic() - start < 10
    return int(proc.returncode), err


@pytest.mark.slow
@pytest.mark.parametrize("connections", [1, 4])
def test_sigterm_mid_send_drains_and_a_resumed_send_delivers_the_rest(
    db_url: str, slow_sink: Sink, connections: int
) -> None:
    database = dbmod.open_database(db_url)
    sink_account(database, slow_sink.port)
    n = 120
    cid = make_campaign(database, n)
    proc = _bulkmail(
        "send", "spring", "--rate-per-hour", "inf", "--connections", str(connections),
        "--quiet", "--db", db_url,
    )  # fmt: skip
    code, err = _sigterm_mid_send(proc, slow_sink, 10)
    assert code == 0, err
    assert "SIGTERM received" in err
    counts = _statuses(database, cid)
    # The messages on the wire were finished and recorded; nothing is in doubt or held.
    assert counts["unknown"] == 0
    assert counts["sending"] == 0
    assert set(counts) == {"sent", "queued"}
    accepted = _each_sent_once(database, cid, slow_sink)
    assert 10 <= len(accepted) < n
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0
    rest = send(cid, rate_per_hour=math.inf, progress=False, connections=connections, db=database)
    assert (rest.sent, rest.unknown, rest.status) == (n - len(accepted), 0, "finished")
    assert len(_each_sent_once(database, cid, slow_sink)) == n


@pytest.mark.slow
def test_sigterm_to_run_worker_drains_and_the_campaign_goes_on(
    db_url: str, slow_sink: Sink
) -> None:
    database = dbmod.open_database(db_url)
    sink_account(database, slow_sink.port)
    n = 80
    cid = make_campaign(database, n, rate_per_hour=10_000_000, status="scheduled")
    proc = _bulkmail("run-worker", "--db", db_url, "--poll-interval-s", "0.1")
    code, err = _sigterm_mid_send(proc, slow_sink, 10)
    assert code == 0, err
    assert "SIGTERM received" in err
    assert "campaign 'spring' picked up" in err
    counts = _statuses(database, cid)
    assert counts["unknown"] == 0
    assert counts["sending"] == 0
    accepted = _each_sent_once(database, cid, slow_sink)
    assert 10 <= len(accepted) < n
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0
    rest = send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert (rest.sent, rest.status) == (n - len(accepted), "finished")
    assert len(_each_sent_once(database, cid, slow_sink)) == n


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_still_records(sqlite_url: str, slow_sink: Sink) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, slow_sink.port)
    n = 80
    cid = make_campaign(database, n)
    proc = _bulkmail("send", "spring", "--rate-per-hour", "inf", "--quiet", "--db", sqlite_url)
    _wait_for(lambda: len(slow_sink.messages) >= 5, proc)
    # Back to back: the second arrives while the first is draining the message on the wire.
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        stop(proc)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    counts = _statuses(database, cid)
    assert counts["sending"] == 0
    assert counts["unknown"] <= 1  # at most the one on the wire
    frame = queue(cid, db=database)
    status = dict(zip(frame["message_id_header"], frame["status"].astype(str), strict=True))
    accepted = Counter(m.message_id for m in slow_sink.messages)
    assert max(accepted.values()) == 1
    assert all(status[mid] in ("sent", "unknown") for mid in accepted)
    assert all(accepted[mid] == 1 for mid, st in status.items() if st == "sent")

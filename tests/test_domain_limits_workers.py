"""Per-domain limits held by several real senders sharing one campaign, against the real sink.

Three ``bulkmail run-worker`` processes on PostgreSQL (and three ``send()`` connections
on SQLite) send one campaign to four providers at four limits and to a fifth that
allows one message an hour and sits first in the queue. Over a 33-second window in
steady state (after each group's burst), every group's rate (the slope of its arrivals)
is within 5 % of its limit, and the blocked provider sent its burst and nothing more
without holding anyone back.
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from process_support import stop
from sending_support import make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import domain_group, queue, send, set_domain_limits
from bulkmail_kernel.db import Worker
from bulkmail_kernel.outbox.domains import burst
from bulkmail_kernel.servers.sink import Sink

#: Messages per hour per group: 10, 6, 4 and 2 a second; Centrum one an hour (blocked).
LIMITS: dict[str, float] = {
    "gmail": 36_000,
    "outlook": 21_600,
    "yahoo": 14_400,
    "seznam": 7_200,
    "centrum": 1,
}
#: The queue in id order: the blocked group first, then more of each than 50 s can take.
PLAN = [
    ("azet.sk", 30),
    ("gmail.com", 700),
    ("hotmail.com", 420),
    ("yahoo.com", 280),
    ("seznam.cz", 140),
]
#: The window measured, in seconds after the first message: the bursts (ten seconds of
#: tokens, taken by the first claims and sent by one worker each) are long gone.
WINDOW = (15.0, 48.0)
RUN_S = 50.0


def _address(i: int) -> str:
    for domain, n in PLAN:
        if i < n:
            return f"u{i:04d}@{domain}"
        i -= n
    raise IndexError(i)


def _set_up(database: dbmod.Database, sink: Sink) -> int:
    sink_account(database, sink.port)
    set_domain_limits("sink", dict(LIMITS), db=database)  # type: ignore[arg-type]
    total = sum(n for _, n in PLAN)
    # The campaign's own rate is far above the sum of the limits: only they hold it back.
    return make_campaign(
        database, total, rate_per_hour=10_000_000, status="scheduled", address=_address
    )


def _wait_for_first(sink: Sink, alive: object, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while not sink.messages:
        assert alive(), "the senders ended before sending anything"  # type: ignore[operator]
        assert time.monotonic() < deadline, "nothing was sent in time"
        time.sleep(0.01)
    return time.monotonic()


def _check_rates(database: dbmod.Database, cid: int, sink: Sink, started: float) -> None:
    """Assert each group's rate in the window is its limit ±5 %, and nothing went twice.

    ``started`` is the wall-clock time before the senders started: no group can have sent
    more than its burst and its rate since then.
    """
    arrivals: dict[str, list[float]] = {}
    for m in sink.messages:
        arrivals.setdefault(domain_group(m.rcpt_tos[0]), []).append(m.path.stat().st_mtime)
    t0 = min(t for times in arrivals.values() for t in times)
    lo, hi = t0 + WINDOW[0], t0 + WINDOW[1]
    # The rate is the slope of the arrivals counted against their times in the window (least
    # squares): a sender that stalls a moment on this busy machine and catches up moves a
    # few arrivals across the window's edges, not the slope.
    rates = {}
    for g, times in arrivals.items():
        inside = sorted(t for t in times if lo <= t < hi)
        if len(inside) > 1:
            rates[g] = statistics.linear_regression(inside, range(len(inside))).slope * 3600
    for group in ("gmail", "outlook", "yahoo", "seznam"):
        assert rates[group] == pytest.approx(LIMITS[group], rel=0.05), (group, rates)
        # Never ahead of the limit over the whole run either: its burst and its rate.
        whole = max(arrivals[group]) - started
        assert len(arrivals[group]) <= burst(LIMITS[group]) + whole * LIMITS[group] / 3600
    # The blocked provider sent its burst of one and waits for its next token, an hour on.
    assert len(arrivals["centrum"]) == 1
    accepted = Counter(m.message_id for m in sink.messages)
    assert max(accepted.values()) == 1
    frame = queue(cid, db=database)
    sent = set(frame.loc[frame["status"].astype(str) == "sent", "message_id_header"])
    assert sent == set(accepted)
    statuses = Counter(frame["status"].astype(str))
    assert statuses["sending"] == 0
    assert statuses["unknown"] == 0


def _exe() -> str:
    exe = shutil.which("bulkmail", path=str(Path(sys.executable).parent))
    assert exe, "the bulkmail console script is not installed next to this Python"
    return exe


@pytest.mark.postgres
@pytest.mark.slow
def test_three_postgresql_workers_hold_each_domain_limit(pg_url: str, sink: Sink) -> None:
    database = dbmod.open_database(pg_url)
    cid = _set_up(database, sink)
    args = [_exe(), "run-worker", "--db", pg_url, "--poll-interval-s", "0.2"]
    started = time.time()
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    logs = []
    try:
        start = _wait_for_first(sink, lambda: all(p.poll() is None for p in procs))
        while time.monotonic() - start < RUN_S:
            assert all(p.poll() is None for p in procs)
            time.sleep(0.2)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            _, err = p.communicate(timeout=20)
            logs.append(err)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            stop(p)
    _check_rates(database, cid, sink, started)
    # Each of the three took part (each says how many it sent when it stops).
    for err in logs:
        said = [line for line in err.splitlines() if "stopped after" in line]
        assert said, err
        assert " 0 messages" not in said[-1], err
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0


@pytest.mark.slow
def test_three_sqlite_connections_hold_each_domain_limit(sqlite_url: str, sink: Sink) -> None:
    database = dbmod.open_database(sqlite_url)
    cid = _set_up(database, sink)
    halt = threading.Event()
    started = time.time()
    done: list[object] = []
    sender = threading.Thread(
        target=lambda: done.append(
            send(cid, progress=False, connections=3, stop=halt, db=database)
        ),
        daemon=True,
    )
    sender.start()
    start = _wait_for_first(sink, sender.is_alive)
    while time.monotonic() - start < RUN_S:
        assert sender.is_alive(), done
        time.sleep(0.2)
    halt.set()
    sender.join(30)
    assert not sender.is_alive()
    assert done[0].sent == len(sink.messages)  # type: ignore[attr-defined]
    _check_rates(database, cid, sink, started)

"""send_in_background: returns at once; a live worker takes the campaign, else a kernel thread."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from process_support import stop
from sending_support import make_campaign, sink_account

from bulkmail_kernel import (
    BackgroundSend,
    SendError,
    campaign_report,
    create_campaign,
    live_workers,
    pause,
    send_in_background,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.db import Worker, utcnow
from bulkmail_kernel.servers.sink import Sink

ROOT = Path(__file__).resolve().parents[1]


def _counts(name: str, database: dbmod.Database) -> dict[str, int]:
    return {k: int(v) for k, v in campaign_report(name, db=database)["messages"].items()}


def _until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_kernel_thread_returns_at_once_and_stops_cleanly(sqlite_url: str, sink: Sink) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, sink.port)
    n = 30
    make_campaign(database, n, name="slow", rate_per_hour=7200, burst=1)  # two a second

    started = time.monotonic()
    handle = send_in_background("slow", db=database)
    returned_after = time.monotonic() - started
    assert isinstance(handle, BackgroundSend)
    assert handle.by == "kernel"  # no worker runs on this database
    assert returned_after < 1.0, f"send_in_background held the caller {returned_after:.2f} s"
    assert handle.running
    # The notebook is free: it can read progress while the thread sends.
    _until("two messages sent", lambda: handle.status().sent >= 2)
    look = handle.status()
    assert look.status == "sending"
    assert look.rate_per_hour == 7200
    assert "slow [sending]" in handle.progress()
    assert "'slow' by this kernel's thread: sending" in repr(handle)

    assert handle.stop(timeout=10), "the kernel thread did not stop within 10 s"
    assert not handle.running
    assert handle.error is None
    assert handle.summary is not None
    counts = _counts("slow", database)
    assert counts["unknown"] == 0
    assert counts["sending"] == 0
    assert counts["sent"] == handle.summary.sent == len(sink.messages)
    assert counts["sent"] + counts["queued"] == n
    assert counts["sent"] < n

    # Going on sends the rest, each exactly once.
    again = send_in_background("slow", rate_per_hour=float("inf"), db=database)
    assert again.wait(30)
    assert again.error is None
    assert _counts("slow", database)["sent"] == n
    delivered = Counter(r for m in sink.messages for r in m.rcpt_tos)
    assert len(delivered) == n
    assert set(delivered.values()) == {1}
    assert "finished, 30/30 sent; thread ended" in repr(again)


def test_a_failed_thread_says_why(sqlite_url: str) -> None:
    database = dbmod.open_database(sqlite_url)
    port = socket.socket()  # a port nobody listens on
    port.bind(("127.0.0.1", 0))
    dead = port.getsockname()[1]
    port.close()
    sink_account(database, dead)
    make_campaign(database, 2, name="nowhere")
    handle = send_in_background("nowhere", db=database)
    assert handle.wait(30)
    assert isinstance(handle.error, SendError)
    assert "thread ended with SendError" in repr(handle)
    assert _counts("nowhere", database)["unknown"] == 0


def test_refuses_paused_and_draft_campaigns_and_a_missing_worker(sqlite_url: str) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, 2525)
    make_campaign(database, 1, name="p")
    pause("p", db=database)
    with pytest.raises(SendError, match="is paused: resume"):
        send_in_background("p", db=database)
    create_campaign("d", sender="sink", db=database)  # never registered: a draft
    with pytest.raises(SendError, match="is draft: register"):
        send_in_background("d", db=database)
    make_campaign(database, 1, name="w", first=5)
    with pytest.raises(SendError, match="no live worker"):
        send_in_background("w", use_worker=True, db=database)


def test_live_workers_reads_fresh_rows_and_tells_a_worker_from_a_send(db_url: str) -> None:
    database = dbmod.open_database(db_url)
    now = utcnow()
    with database.session() as s:
        s.add_all(
            [
                # Another machine's worker, beating: alive, and a worker.
                Worker(id="far:1:a", hostname="far", pid=1, started_at=now, heartbeat_at=now),
                # Silent for ten minutes: dead.
                Worker(
                    id="far:2:b",
                    hostname="far",
                    pid=2,
                    started_at=now,
                    heartbeat_at=now - timedelta(minutes=10),
                ),
                # This process (a notebook's send()): alive, but no worker.
                Worker(
                    id="me",
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                ),
            ]
        )
    frame = live_workers(db=database).set_index("worker_id")
    assert set(frame.index) == {"far:1:a", "me"}
    assert bool(frame.loc["far:1:a", "runs_worker"]) is True
    assert bool(frame.loc["me", "runs_worker"]) is False
    assert str(frame["heartbeat_at"].dt.tz) == "Europe/Bratislava"
    # The limit is a setting: with 5 s nobody old enough survives, with 1 h the silent one does.
    assert "far:2:b" in set(live_workers(stale_after_s=3600, db=database)["worker_id"])


@pytest.fixture
def worker(sqlite_url: str) -> subprocess.Popen[bytes]:
    """Run `bulkmail run-worker` on the database as its own process, as `bulkmail lab` does."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bulkmail_kernel.cli",
            "-v",
            "run-worker",
            "--poll-interval-s",
            "0.2",
            "--db",
            sqlite_url,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield proc
    stop(proc)


def test_a_live_worker_takes_the_campaign(
    sqlite_url: str, sink: Sink, worker: subprocess.Popen[bytes]
) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, sink.port)
    _until(
        "the worker's row",
        lambda: bool(live_workers(db=database)["runs_worker"].any()),
    )
    make_campaign(database, 5, name="handed", rate_per_hour=360_000)
    with database.engine.begin() as conn:  # scheduled far ahead: send_in_background means now
        conn.execute(
            sa.update(dbmod.Campaign).values(
                status="scheduled", scheduled_at=utcnow() + timedelta(days=1)
            )
        )
    started = time.monotonic()
    handle = send_in_background("handed", db=database)
    assert time.monotonic() - started < 1.0
    assert handle.by == "worker"
    assert "by a bulkmail worker" in repr(handle)
    assert handle.wait(30, poll_s=0.1)
    assert _counts("handed", database)["sent"] == 5
    assert len(sink.messages) == 5
    assert worker.poll() is None  # still running, for the next campaign


def test_a_run_worker_script_on_this_machine_counts_as_a_worker(sqlite_url: str) -> None:
    database = dbmod.open_database(sqlite_url)
    code = (
        "from bulkmail_kernel import run_worker;"
        f"run_worker(url={sqlite_url!r}, poll_interval_s=0.2)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        _until("the script's worker row", lambda: len(live_workers(db=database)) == 1)
        frame = live_workers(db=database)
        assert bool(frame["runs_worker"].iloc[0]) is True
        assert int(frame["pid"].iloc[0]) == proc.pid
    finally:
        stop(proc)
    # Its process gone, its row (left by the hard stop) no longer counts, however fresh.
    assert live_workers(db=database).empty

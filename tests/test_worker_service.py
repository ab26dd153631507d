"""The worker as a service, in-process: heartbeat, late campaigns, its log lines, exit codes.

The multi-process checks (several PostgreSQL workers at a low rate, SIGTERM mid-send)
are in test_worker_robustness.py.
"""

from __future__ import annotations

import _thread
import logging
import math
import re
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sending_support import make_campaign, sink_account

from bulkmail_kernel import (
    config,
    get_campaign,
    list_campaigns,
    pause,
    queue,
    resume,
    run_worker,
    send,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli import main
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import Campaign, Event, SenderAccount, Worker
from bulkmail_kernel.engine.heartbeat import Heartbeat, beat_interval_s, dead_worker_limit_s
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.store import OutboxStore
from bulkmail_kernel.servers.sink import Sink, start_sink


def _statuses(db: dbmod.Database, cid: int) -> Counter[str]:
    return Counter(queue(cid, db=db)["status"].astype(str))


def _events(db: dbmod.Database, kind: str) -> int:
    with db.session() as s:
        return int(
            s.scalar(sa.select(sa.func.count()).select_from(Event).where(Event.kind == kind)) or 0
        )


# --------------------------------------------------------------------------- settings


def test_dead_worker_limit_and_lateness_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.dead_worker_s() == 120.0
    assert config.max_lateness_s() == 6 * 3600.0
    monkeypatch.setenv("BULKMAIL_DEAD_WORKER_S", "3")
    monkeypatch.setenv("BULKMAIL_MAX_LATENESS_S", "90")
    assert config.dead_worker_s() == 3.0
    assert config.max_lateness_s() == 90.0
    assert dead_worker_limit_s(None) == 3.0
    assert dead_worker_limit_s(7) == 7.0
    for bad in ("abc", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("BULKMAIL_DEAD_WORKER_S", bad)
        with pytest.raises(ConfigError, match="BULKMAIL_DEAD_WORKER_S"):
            config.dead_worker_s()
    monkeypatch.setenv("BULKMAIL_MAX_LATENESS_S", "6h")
    with pytest.raises(ConfigError, match="BULKMAIL_MAX_LATENESS_S"):
        config.max_lateness_s()
    with pytest.raises(ConfigError, match="dead_worker_s"):
        dead_worker_limit_s(0)


def test_the_beat_is_four_times_per_limit_and_at_least_every_30_s() -> None:
    assert beat_interval_s(3) == 0.75
    assert beat_interval_s(120) == 30.0
    assert beat_interval_s(3600) == 30.0


# --------------------------------------------------------------------------- the heartbeat


def test_heartbeat_beats_from_its_own_thread_and_registers_again(
    database: dbmod.Database,
) -> None:
    store = OutboxStore(database, "here:1:beat")
    store.register_worker()
    beat = Heartbeat(store, 0.2).start()  # every 0.05 s
    try:
        with database.session() as s:
            first = s.get(Worker, "here:1:beat").heartbeat_at  # type: ignore[union-attr]
        time.sleep(0.3)
        with database.session() as s:
            assert s.get(Worker, "here:1:beat").heartbeat_at > first  # type: ignore[union-attr]
            # Another worker took it for dead and deleted its row: it comes back.
            s.execute(sa.delete(Worker))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with database.session() as s:
                if s.get(Worker, "here:1:beat") is not None:
                    break
            time.sleep(0.02)
        else:
            pytest.fail("the heartbeat did not register the worker again")
    finally:
        beat.stop()
    assert beat.beats >= 2
    store.unregister_worker()


def test_a_worker_sleeping_for_its_token_is_not_taken_for_dead(
    database: dbmod.Database, sink: Sink
) -> None:
    # 3 messages at one a second: each claim waits about a second for its token, three
    # times the 0.3 s dead-worker limit. Another worker recovers all the while.
    sink_account(database, sink.port)
    cid = make_campaign(database, 3, rate_per_hour=3600, burst=1)
    result: list[object] = []
    thread = threading.Thread(
        target=lambda: result.append(
            send(cid, progress=False, dead_worker_s=0.3, db=database)  # type: ignore[func-returns-value]
        )
    )
    thread.start()
    rescuer = OutboxStore(database, "rescuer:1:x")
    while thread.is_alive():
        rescuer.recover(stale_after_s=0.3)
        time.sleep(0.05)
    thread.join()
    assert [getattr(r, "sent", None) for r in result] == [3]
    assert _events(database, "requeued") == 0
    assert _events(database, "unknown") == 0
    assert len(sink.messages) == 3


@pytest.mark.postgres
def test_recovery_leaves_a_worker_that_started_meanwhile_alone(pg_url: str, sink: Sink) -> None:
    # The recovering worker reads the list of workers, then the claims in 'sending'. A
    # worker that registers and claims between the two is in no list it read, yet alive:
    # its claims must stay its own (requeued, they would go out twice).
    database = dbmod.open_database(pg_url)
    sink_account(database, sink.port)
    cid = make_campaign(database, 4)
    newcomer = OutboxStore(database, "newcomer:1:x")
    held: list[object] = []

    def meanwhile(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not held and statement.lstrip().startswith("SELECT") and "handed_at" in statement:
            newcomer.register_worker()
            held.extend(newcomer.claim(cid, 2, hand=1))

    sa.event.listen(database.engine, "before_cursor_execute", meanwhile)
    try:
        OutboxStore(database, "rescuer:1:x").recover(stale_after_s=60)
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", meanwhile)
    assert len(held) == 2
    assert _statuses(database, cid) == {"sending": 2, "queued": 2}
    assert _events(database, "requeued") == 0
    assert _events(database, "unknown") == 0
    with database.session() as s:
        assert s.get(Worker, "newcomer:1:x") is not None


@pytest.mark.postgres
def test_recovery_leaves_a_worker_that_beat_meanwhile_alone(pg_url: str, sink: Sink) -> None:
    # Read as dead (its heartbeat too old), the worker beats before its claims are read:
    # it is alive after all, so its claims and its row stay.
    database = dbmod.open_database(pg_url)
    sink_account(database, sink.port)
    cid = make_campaign(database, 4)
    sleeper = OutboxStore(database, "sleeper:1:x")
    sleeper.register_worker()
    sleeper.claim(cid, 2, hand=1)
    with database.session() as s:
        s.execute(sa.update(Worker).values(heartbeat_at=dbmod.utcnow() - timedelta(hours=1)))
    beat: list[bool] = []

    def meanwhile(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not beat and statement.lstrip().startswith("SELECT") and "handed_at" in statement:
            beat.append(sleeper.heartbeat())

    sa.event.listen(database.engine, "before_cursor_execute", meanwhile)
    try:
        OutboxStore(database, "rescuer:1:x").recover(stale_after_s=60)
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", meanwhile)
    assert beat == [True]
    assert _statuses(database, cid) == {"sending": 2, "queued": 2}
    assert _events(database, "requeued") == 0
    assert _events(database, "unknown") == 0
    with database.session() as s:
        assert s.get(Worker, "sleeper:1:x") is not None


# --------------------------------------------------------------------------- Ctrl-C in a notebook


class _InterruptingClock(ManualClock):
    """A manual clock whose third wait for a token is cut by Kernel → Interrupt."""

    def sleep(self, seconds: float) -> None:
        if len(self.slept) == 2:
            raise KeyboardInterrupt
        super().sleep(seconds)


def test_interrupting_a_throttled_send_returns_its_summary_with_one_line(
    database: dbmod.Database, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 10, burst=1)
    with caplog.at_level(logging.WARNING, logger="bulkmail"):
        summary = send(
            cid, rate_per_hour=3600, progress=False, clock=_InterruptingClock(), db=database
        )
    # The first from the full bucket, two after a wait, then Ctrl-C while waiting for the fourth.
    assert summary.interrupted
    assert (summary.sent, summary.unknown, summary.remaining) == (3, 0, 7)
    assert _statuses(database, cid) == {"sent": 3, "queued": 7}
    said = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert said == [
        "send('spring') interrupted: 3 sent, 0 unknown, 7 left in the queue; send() again to go on"
    ]
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0
    rest = send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert (rest.sent, rest.status, rest.interrupted) == (7, "finished", False)
    assert len({m.message_id for m in sink.messages}) == len(sink.messages) == 10


def test_kernel_interrupt_mid_send_finishes_the_message_on_the_wire(
    database: dbmod.Database, tmp_path: Path
) -> None:
    # Kernel → Interrupt is a KeyboardInterrupt in the main thread. The one connection
    # sends from a thread of its own, so it lands in the waiting caller: the message on
    # the wire (the sink holds each 40 ms) is finished and recorded, nothing is unknown.
    sink = start_sink(tmp_path / "slow", delay_s=0.04)
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 60)

        def interrupt() -> None:
            deadline = time.monotonic() + 30
            while len(sink.messages) < 5 and time.monotonic() < deadline:
                time.sleep(0.005)
            _thread.interrupt_main()

        helper = threading.Thread(target=interrupt)
        helper.start()
        summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
        helper.join()
        assert summary.interrupted
        assert summary.unknown == 0
        assert 5 <= summary.sent < 60
        assert _statuses(database, cid) == {"sent": summary.sent, "queued": 60 - summary.sent}
        assert len({m.message_id for m in sink.messages}) == len(sink.messages) == summary.sent
        rest = send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert (rest.sent, rest.status) == (60 - summary.sent, "finished")
        assert len({m.message_id for m in sink.messages}) == len(sink.messages) == 60
    finally:
        sink.stop()


def test_without_a_log_handler_the_line_is_printed_once(
    sqlite_url: str, sink: Sink, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, sink.port)
    cid = make_campaign(database, 5, burst=1)
    # As in a fresh kernel: nothing but the package's NullHandler up the logger tree.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    summary = send(cid, rate_per_hour=3600, progress=False, clock=_InterruptingClock(), db=database)
    assert summary.interrupted
    err = capsys.readouterr().err
    assert err.count("interrupted") == 1
    assert "Traceback" not in err


# --------------------------------------------------------------------------- late campaigns


def test_a_campaign_found_too_late_waits_as_late_until_resumed(
    database: dbmod.Database,
    sink: Sink,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BULKMAIL_MAX_LATENESS_S", str(6 * 3600))
    sink_account(database, sink.port)
    clock = ManualClock()
    weekend = make_campaign(database, 3, name="weekend", status="scheduled")
    monday = make_campaign(database, 2, name="monday", first=10, status="scheduled")
    with database.session() as s:
        for cid, ago in ((weekend, timedelta(hours=7)), (monday, timedelta(hours=5))):
            s.execute(
                sa.update(Campaign).where(Campaign.id == cid).values(scheduled_at=clock.now() - ago)
            )
    with caplog.at_level(logging.INFO, logger="bulkmail"):
        sent = run_worker(db=database, clock=clock, exit_when_idle=True, poll_interval_s=1)
    assert sent == 2
    assert get_campaign(weekend, db=database).status == "late"
    assert get_campaign(monday, db=database).status == "finished"
    assert {m.rcpt_tos[0] for m in sink.messages} == {
        "user00010@sk.example.net",
        "user00011@sk.example.net",
    }
    assert _statuses(database, weekend) == {"queued": 3}
    assert any("campaign 'weekend' is late" in m for m in caplog.messages)
    with database.session() as s:
        late = s.scalars(sa.select(Event).where(Event.kind == "late")).all()
    assert [e.campaign_id for e in late] == [weekend]
    assert "waits for resume()" in late[0].detail
    listed = list_campaigns(db=database).set_index("name")
    assert listed.loc["weekend", "status"] == "late"
    # A second pass does not report it again.
    run_worker(db=database, clock=clock, exit_when_idle=True, poll_interval_s=1)
    assert _events(database, "late") == 1
    # Someone decides it may still go: resume() sends it now.
    assert resume(weekend, db=database).status == "sending"
    assert run_worker(db=database, clock=clock, exit_when_idle=True, poll_interval_s=1) == 3
    assert get_campaign(weekend, db=database).status == "finished"
    assert len(sink.messages) == 5


def test_a_scheduled_campaign_within_the_lateness_is_sent(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    clock = ManualClock()
    cid = make_campaign(database, 2, status="scheduled")
    with database.session() as s:
        s.execute(
            sa.update(Campaign)
            .where(Campaign.id == cid)
            .values(scheduled_at=clock.now() - timedelta(seconds=50))
        )
    run_worker(db=database, clock=clock, exit_when_idle=True, max_lateness_s=60)
    assert get_campaign(cid, db=database).status == "finished"


# --------------------------------------------------------------------------- run-worker


def test_run_worker_logs_each_state_and_a_progress_line(
    sqlite_url: str, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, sink.port)
    make_campaign(database, 6, rate_per_hour=7200, burst=1, status="scheduled")  # 2.5 s
    caplog.set_level(logging.INFO, logger="bulkmail")
    code = main([
        "run-worker", "--db", sqlite_url, "--exit-when-idle", "--poll-interval-s", "0.1",
        "--progress-every-s", "0.5",
    ])  # fmt: skip
    assert code == 0
    said = caplog.messages
    assert any(re.fullmatch(r"worker \S+ started on .*", m) for m in said)
    assert "campaign 'spring' picked up (7200/h, burst 1)" in said
    progress = [m for m in said if m.startswith("campaign 'spring': ")]
    assert progress, said
    line = re.compile(
        r"campaign 'spring': [0-6]/6 sent, (no rate yet|[\d,]+/h) \(set 7,200/h\), ETA .+"
    )
    assert all(line.fullmatch(m) for m in progress), progress
    assert "campaign 'spring' finished" in said
    assert any(re.fullmatch(r"worker \S+ stopped after 6 messages", m) for m in said)
    # The CLI leaves the logger as it found it.
    assert not any(type(h).__name__ == "_Errors" for h in logging.getLogger("bulkmail").handlers)


def test_run_worker_quiet_keeps_warnings_only(
    sqlite_url: str, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, sink.port)
    make_campaign(database, 2, status="scheduled")
    code = main(["run-worker", "--db", sqlite_url, "--exit-when-idle", "--quiet"])
    assert code == 0
    assert [r for r in caplog.records if r.levelno < logging.WARNING] == []


def test_run_worker_exits_1_when_a_campaign_stopped_with_an_error(
    sqlite_url: str, sink: Sink, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, sink.port)
    cid = make_campaign(database, 2, status="scheduled")
    with database.session() as s:
        account = s.scalars(sa.select(SenderAccount)).one()
        missing = str(tmp_path / "no-such-key.pem")
        account.settings = {**account.settings, "dkim": {"selector": "s1", "key_path": missing}}
    code = main(["run-worker", "--db", sqlite_url, "--exit-when-idle", "--quiet"])
    assert code == 1
    assert get_campaign(cid, db=database).status == "stopped"
    assert "does not exist" in get_campaign(cid, db=database).last_error
    assert len(sink.messages) == 0


def test_run_worker_exits_2_on_a_usage_or_settings_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["run-worker", "--progress-every-s", "often", "--db", sqlite_url])
    assert usage.value.code == 2
    monkeypatch.setenv("BULKMAIL_DEAD_WORKER_S", "two minutes")
    assert main(["run-worker", "--exit-when-idle", "--db", sqlite_url]) == 2
    assert "BULKMAIL_DEAD_WORKER_S" in capsys.readouterr().err


def test_run_worker_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("run-worker", "worker"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        for code in ("0 ", "1 ", "2 ", "130 "):
            assert re.search(rf"^\s+{code}\s*\S", text, re.M), (name, code)
        assert "SIGTERM" in text
        assert "BULKMAIL_DEAD_WORKER_S" in text


def test_resume_sends_what_is_due_and_schedules_what_is_ahead(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    # Back to 'scheduled' with its time long past, a worker would find it late at once.
    overdue = make_campaign(database, 1, name="overdue", status="scheduled")
    ahead = make_campaign(database, 1, name="ahead", first=10, status="scheduled")
    with database.session() as s:
        for cid, shift in ((overdue, timedelta(days=-3)), (ahead, timedelta(days=3))):
            s.execute(
                sa.update(Campaign)
                .where(Campaign.id == cid)
                .values(scheduled_at=dbmod.utcnow() + shift)
            )
    for cid in (overdue, ahead):
        pause(cid, db=database)
    assert resume(overdue, db=database).status == "sending"
    assert resume(ahead, db=database).status == "scheduled"
    with pytest.raises(SendError, match="not paused, stopped or late"):
        resume(ahead, db=database)

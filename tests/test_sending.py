"""The send loop against a real aiosmtpd sink on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import _thread
import email
import math
import threading
from collections import Counter
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sending_support import address, make_campaign, sink_account

from bulkmail_kernel import (
    RetryPolicy,
    SenderInfo,
    campaign_report,
    get_campaign,
    history,
    pause,
    queue,
    requeue,
    resume,
    run_worker,
    send,
    unknown_messages,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import ContactPoint, Event, Message, Suppression, Worker
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.store import OutboxStore
from bulkmail_kernel.servers.sink import Sink, SinkRules, start_sink
from bulkmail_kernel.transports import SendResult
from bulkmail_kernel.transports.smtp import SmtpTransport


def _statuses(db: dbmod.Database, cid: int) -> Counter[str]:
    return Counter(queue(cid, db=db)["status"].astype(str))


def test_every_message_accepted_once_on_one_connection(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 300)
    clock = ManualClock()
    summary = send(cid, rate_per_hour=math.inf, progress=False, db=database, clock=clock)
    assert (summary.sent, summary.remaining, summary.status) == (300, 0, "finished")
    assert sink.connections == 1
    ids = Counter(m.message_id for m in sink.messages)
    assert len(ids) == 300
    assert set(ids.values()) == {1}
    frame = queue(cid, db=database)
    assert set(frame["status"].astype(str)) == {"sent"}
    assert set(frame["message_id_header"]) == set(ids)
    # The Date header is the moment of sending, not of registration, and dot-stuffing survived.
    parsed = email.message_from_bytes(sink.messages[0].data)
    assert parsedate_to_datetime(parsed["Date"]) == clock.now().replace(microsecond=0)
    assert "\n.line that starts with a dot" in parsed.get_payload(decode=True).decode()
    # The sink's log file agrees with the database.
    logged = [line.split("\t")[2] for line in (sink.folder / "sink.log").read_text().splitlines()]
    assert sorted(logged) == sorted(frame["message_id_header"])
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).where(Event.kind == "sent")) == 300
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0
    report = campaign_report(cid, db=database)
    assert report.loc["sent", "messages"] == 300


def test_4xx_is_retried_with_backoff_then_sent(database: dbmod.Database, tmp_path: Path) -> None:
    sink = start_sink(
        tmp_path / "s",
        rcpt_replies={address(1): ["451 4.3.0 greylisted", "452 4.2.2 mailbox full"]},
    )
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 3)
        clock = ManualClock()
        first = send(cid, rate_per_hour=math.inf, progress=False, db=database, clock=clock)
        assert (first.sent, first.deferred, first.status) == (2, 1, "sending")
        q = queue(cid, db=database).set_index("recipient")
        assert q.loc[address(1), "status"] == "deferred"
        assert q.loc[address(1), "next_attempt_at"] == clock.now() + pd_seconds(300)
        # Not due yet: nothing is sent and the campaign is not finished.
        clock.advance(299)
        assert send(cid, progress=False, db=database, clock=clock).sent == 0
        clock.advance(1)
        second = send(cid, progress=False, db=database, clock=clock)
        assert second.deferred == 1
        q = queue(cid, db=database).set_index("recipient")
        assert q.loc[address(1), "next_attempt_at"] == clock.now() + pd_seconds(600)  # doubled
        clock.advance(600)
        third = send(cid, progress=False, db=database, clock=clock)
        assert (third.sent, third.status) == (1, "finished")
        assert len(sink.received_by(address(1))) == 1
        assert [r for r, _ in sink.refusals] == [address(1)] * 2
        h = history(_contact_of(database, address(1)), db=database)
        assert list(h["kind"]) == ["deferred", "deferred", "sent"]
    finally:
        sink.stop()


def test_wait_for_retries_sleeps_on_the_clock(database: dbmod.Database, tmp_path: Path) -> None:
    sink = start_sink(tmp_path / "s", rcpt_replies={address(0): ["421 4.7.0 try later"]})
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 2)
        clock = ManualClock()
        summary = send(
            cid,
            rate_per_hour=math.inf,
            progress=False,
            db=database,
            clock=clock,
            wait_for_retries=True,
        )
        assert (summary.sent, summary.status) == (2, "finished")
        assert sum(clock.slept) >= 300
        # 421 closes the connection: a second login, through yagmail, on the same transport.
        assert sink.connections == 2
    finally:
        sink.stop()


def test_retries_expire_into_failed(database: dbmod.Database, tmp_path: Path) -> None:
    sink = start_sink(tmp_path / "s", rcpt_replies={address(0): ["450 4.2.0 busy"] * 10})
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 1)
        clock = ManualClock()
        policy = RetryPolicy(retry_backoff_s=300, max_backoff_s=4000, expiry_s=1000)
        summary = send(
            cid, progress=False, db=database, clock=clock, retry=policy, wait_for_retries=True
        )
        assert summary.status == "finished"
        row = queue(cid, db=database).iloc[0]
        assert row["status"] == "failed"
        assert "gave up after 3 attempts" in row["last_error"]
    finally:
        sink.stop()


def test_5xx_recipient_fails_and_is_suppressed(database: dbmod.Database, tmp_path: Path) -> None:
    sink = start_sink(tmp_path / "s", rcpt_replies={address(2): ["550 5.1.1 no such user"]})
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 4)
        summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert (summary.sent, summary.failed, summary.status) == (3, 1, "finished")
        row = queue(cid, db=database).set_index("recipient").loc[address(2)]
        assert (row["status"], row["last_code"]) == ("failed", "550")
        with database.session() as s:
            sup = s.scalars(sa.select(Suppression)).one()
            assert (sup.channel, sup.normalized, sup.reason) == ("email", address(2), "hard_bounce")
        # A later campaign to the same address does not mail it: suppressed at claim time.
        make_campaign(database, 4, name="summer")
        again = send("summer", rate_per_hour=math.inf, progress=False, db=database)
        assert again.sent == 3
        assert again.removed == 1
        assert len(sink.received_by(address(2))) == 0
    finally:
        sink.stop()


def test_auth_failure_stops_campaign_and_marks_nothing(
    database: dbmod.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = start_sink(tmp_path / "s", users={"shop": "right"})
    try:
        monkeypatch.setenv("SHOP_SMTP_PASSWORD", "wrong")
        sink_account(database, sink.port, user="shop", credential_ref="SHOP_SMTP_PASSWORD")
        cid = make_campaign(database, 5)
        with pytest.raises(SendError, match=r"login as 'shop' refused .*535") as err:
            send(cid, progress=False, db=database)
        assert err.value.fields["code"] == 535
        info = get_campaign(cid, db=database)
        assert info.status == "stopped"
        assert "535" in info.last_error
        frame = queue(cid, db=database)
        assert set(frame["status"].astype(str)) == {"queued"}
        assert frame["attempts"].sum() == 0
        assert sink.messages == []
        # Fix the password, resume, send: everything goes, once.
        monkeypatch.setenv("SHOP_SMTP_PASSWORD", "right")
        resume(cid, db=database)
        assert send(cid, rate_per_hour=math.inf, progress=False, db=database).sent == 5
        assert len(sink.messages) == 5
    finally:
        sink.stop()


def test_sender_refused_mid_run_stops_without_marking(
    database: dbmod.Database, tmp_path: Path
) -> None:
    sink = start_sink(tmp_path / "s", mail_reply="553 5.7.1 sender not allowed")
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 5)
        with pytest.raises(SendError, match="refused the sender"):
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        frame = queue(cid, db=database)
        assert set(frame["status"].astype(str)) == {"queued"}
        assert frame["attempts"].sum() == 0
        assert get_campaign(cid, db=database).status == "stopped"
    finally:
        sink.stop()


def test_unsubscribed_after_registration_is_not_mailed(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 3)
    with database.session() as s:
        s.execute(
            sa.update(ContactPoint)
            .where(ContactPoint.normalized == address(0))
            .values(mailing_allowed=False)
        )
    summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert (summary.sent, summary.removed) == (2, 1)
    assert sink.received_by(address(0)) == []
    row = queue(cid, db=database).set_index("recipient").loc[address(0)]
    assert row["status"] == "removed"
    assert "no longer allowed" in row["last_error"]


def test_dead_workers_handed_claims_become_unknown_the_rest_are_requeued(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 10)
    crashed = OutboxStore(database, "elsewhere:999999:dead")
    crashed.register_worker()
    held = crashed.claim(cid, 4)
    assert len(held) == 4
    # It had handed two to its transport when it died; two never left its hands.
    assert crashed.mark_handed([held[0].id, held[1].id]) == {held[0].id, held[1].id}
    with database.session() as s:  # its last sign of life was long ago
        s.execute(sa.update(Worker).values(heartbeat_at=dbmod.utcnow() - pd_seconds(3600)))
    summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert summary.sent == 8  # the six never claimed and the two never handed over
    unknown = unknown_messages(cid, db=database)
    assert sorted(unknown["message_id"]) == [held[0].id, held[1].id]
    received = [r for m in sink.messages for r in m.rcpt_tos]
    assert {held[0].recipient, held[1].recipient}.isdisjoint(received)  # never resent silently
    assert received.count(held[2].recipient) == received.count(held[3].recipient) == 1
    assert summary.status == "finished"
    with database.session() as s:
        kinds = s.execute(
            sa.select(Event.message_id, Event.kind).where(Event.kind.in_(["unknown", "requeued"]))
        ).all()
    assert sorted(kinds) == sorted(
        [
            (held[0].id, "unknown"),
            (held[1].id, "unknown"),
            (held[2].id, "requeued"),
            (held[3].id, "requeued"),
        ]
    )
    frame = queue(cid, db=database).set_index("message_id")
    assert frame.loc[held[2].id, "attempts"] == 1  # the requeue did not count an attempt


def test_claim_marks_the_first_ones_handed_in_the_same_commit(database: dbmod.Database) -> None:
    sink_account(database, 2525)
    cid = make_campaign(database, 5)
    store = OutboxStore(database, "here:1:w")
    store.register_worker()
    batch = store.claim(cid, 5, hand=2)
    assert [m.handed for m in batch] == [True, True, False, False, False]
    with database.engine.connect() as conn:
        marked = conn.execute(
            sa.select(Message.id).where(Message.handed_at.is_not(None)).order_by(Message.id)
        ).scalars()
        assert list(marked) == [batch[0].id, batch[1].id]
    # A retry claims afresh: the old mark is cleared with the new claim.
    store.release(batch)
    again = store.claim(cid, 5)
    assert not any(m.handed for m in again)
    with database.engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).where(Message.handed_at.is_not(None))
            ).scalar_one()
            == 0
        )


def test_a_claim_taken_back_is_not_sent_by_its_old_worker(
    database: dbmod.Database, sink: Sink
) -> None:
    # A worker presumed dead (stale heartbeat) comes back: what was recovered from it
    # in the meantime is no longer its to send, and mark_handed() says so.
    sink_account(database, sink.port)
    cid = make_campaign(database, 3)
    slow = OutboxStore(database, "elsewhere:999998:paused")
    slow.register_worker()
    held = slow.claim(cid, 3)
    assert slow.mark_handed([held[0].id]) == {held[0].id}
    with database.session() as s:
        s.execute(sa.update(Worker).values(heartbeat_at=dbmod.utcnow() - pd_seconds(3600)))
    OutboxStore(database, "rescuer").recover()
    assert slow.mark_handed([m.id for m in held[1:]]) == set()
    statuses = _statuses(database, cid)
    assert statuses == {"unknown": 1, "queued": 2}


def test_live_workers_claims_are_left_alone(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 6)
    other = OutboxStore(database, "otherhost:1:alive")
    other.register_worker()
    with database.session() as s:
        s.execute(sa.update(Worker).values(hostname="otherhost"))
    held = other.claim(cid, 2)
    summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert summary.sent == 4
    assert summary.remaining == 2
    assert summary.status == "sending"
    assert _statuses(database, cid)["sending"] == 2
    other.record(cid, [(m, SendResult("sent", 250)) for m in held], RetryPolicy())
    assert _statuses(database, cid)["sent"] == 6


class _InterruptAfter:
    """The real SMTP transport, with a Ctrl-C arriving after ``n`` messages."""

    def __init__(self, inner: SmtpTransport, n: int) -> None:
        self.inner, self.n = inner, n

    def open(self) -> None:
        self.inner.open()

    def send(self, message: bytes, *, mail_from: str, rcpt_to: str) -> SendResult:
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.inner.send(message, mail_from=mail_from, rcpt_to=rcpt_to)

    def close(self) -> None:
        self.inner.close()


def test_interrupt_leaves_queue_consistent_and_send_resumes(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 50)
    transport = _InterruptAfter(SmtpTransport("127.0.0.1", sink.port, security="none"), 17)
    # Kernel → Interrupt ends send() quietly: a summary, not a traceback (issue 13).
    interrupted = send(
        cid, rate_per_hour=math.inf, progress=False, db=database, transport=transport
    )
    assert interrupted.interrupted
    assert (interrupted.sent, interrupted.unknown, interrupted.remaining) == (17, 1, 32)
    assert interrupted.status == "sending"
    transport.close()
    counts = _statuses(database, cid)
    # The interrupt arrived inside the transport: that message may have gone, so it is unknown.
    assert (counts["sent"], counts["queued"], counts["unknown"], counts["sending"]) == (
        17,
        32,
        1,
        0,
    )
    unknown = unknown_messages(cid, db=database)
    assert sink.received_by(unknown["recipient"].iloc[0]) == []
    assert requeue(cid, unknown, db=database) == 1
    summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert summary.sent == 33
    assert len({m.message_id for m in sink.messages}) == 50
    assert len(sink.messages) == 50


def test_paused_campaign_is_not_sent(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 2)
    pause(cid, db=database)
    with pytest.raises(SendError, match="paused"):
        send(cid, progress=False, db=database)
    resume(cid, db=database)
    assert send(cid, rate_per_hour=math.inf, progress=False, db=database).sent == 2


def test_throttled_send_follows_the_rate(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 40, burst=1)
    clock = ManualClock()
    send(cid, rate_per_hour=3600, progress=False, db=database, clock=clock)
    # 40 messages at one a second, the first from the full bucket: 39 s of (manual) time.
    assert clock.elapsed == pytest.approx(39.0, abs=0.01)
    assert len(sink.messages) == 40


@pytest.mark.slow
def test_ten_thousand_messages_each_accepted_exactly_once(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 10_000)
    summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert (summary.sent, summary.status, sink.connections) == (10_000, "finished", 1)
    accepted = Counter(m.message_id for m in sink.messages)
    assert len(accepted) == 10_000
    assert max(accepted.values()) == 1
    with database.session() as s:
        sent_ids = set(
            s.scalars(sa.select(Message.message_id_header).where(Message.status == "sent"))
        )
    assert sent_ids == set(accepted)
    logged = Counter(
        line.split("\t")[2] for line in (sink.folder / "sink.log").read_text().splitlines()
    )
    assert logged == accepted
    assert len(list(sink.folder.glob("*.eml"))) == 10_000


# --------------------------------------------------------------------------- several connections


def _sent_ids(database: dbmod.Database, cid: int) -> Counter[str]:
    with database.session() as s:
        return Counter(
            s.scalars(
                sa.select(Message.message_id_header).where(
                    Message.campaign_id == cid, Message.status == "sent"
                )
            )
        )


def _assert_db_and_sink_agree(database: dbmod.Database, cid: int, sink: Sink) -> Counter[str]:
    accepted = Counter(m.message_id for m in sink.messages)
    assert set(accepted.values()) <= {1}, "a message reached the sink twice"
    assert _sent_ids(database, cid) == accepted
    logged = Counter(
        line.split("\t")[2] for line in (sink.folder / "sink.log").read_text().splitlines()
    )
    assert logged == accepted
    return accepted


def test_four_connections_send_each_message_exactly_once(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 3000)
    summary = send(cid, rate_per_hour=math.inf, progress=False, connections=4, db=database)
    assert (summary.sent, summary.remaining, summary.status) == (3000, 0, "finished")
    assert summary.connections == 4
    assert sink.connections == 4
    assert len(_assert_db_and_sink_agree(database, cid, sink)) == 3000
    frame = queue(cid, db=database)
    # Claimed once each: two threads never held the same message.
    assert set(frame["attempts"]) == {1}
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).where(Event.kind == "sent")) == 3000
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0


def test_auth_failure_with_three_connections_stops_before_anything(
    database: dbmod.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = start_sink(tmp_path / "s", users={"shop": "right"})
    try:
        monkeypatch.setenv("SHOP_SMTP_PASSWORD", "wrong")
        sink_account(database, sink.port, user="shop", credential_ref="SHOP_SMTP_PASSWORD")
        cid = make_campaign(database, 30)
        with pytest.raises(SendError, match=r"login as 'shop' refused .*535"):
            send(cid, rate_per_hour=math.inf, progress=False, connections=3, db=database)
        # The first refused login ends it: the other two connections are never tried.
        assert sink.connections == 1
        assert get_campaign(cid, db=database).status == "stopped"
        frame = queue(cid, db=database)
        assert set(frame["status"].astype(str)) == {"queued"}
        assert frame["attempts"].sum() == 0
        assert sink.messages == []
        monkeypatch.setenv("SHOP_SMTP_PASSWORD", "right")
        resume(cid, db=database)
        again = send(cid, rate_per_hour=math.inf, progress=False, connections=3, db=database)
        assert (again.sent, again.connections, sink.connections) == (30, 3, 4)
        assert len(_assert_db_and_sink_agree(database, cid, sink)) == 30
    finally:
        sink.stop()


class _RefuseSenderAfter:
    """Sink rules that accept ``n`` messages, then refuse the sender for every connection."""

    def __init__(self, sink: Sink, n: int) -> None:
        self.sink, self.n = sink, n
        self.rcpt_replies: dict[str, list[str]] = {}
        self.delay_s = 0.0
        self.users: dict[str, str] | None = None

    @property
    def mail_reply(self) -> str | None:
        if len(self.sink.messages) >= self.n:
            return "553 5.7.1 sender not allowed"
        return None


def test_fatal_answer_in_one_connection_stops_all_of_them(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 1000)
    sink.rules = _RefuseSenderAfter(sink, 150)  # type: ignore[assignment]
    with pytest.raises(SendError, match="refused the sender") as err:
        send(cid, rate_per_hour=math.inf, progress=False, connections=3, db=database)
    assert err.value.fields["code"] == 553
    assert get_campaign(cid, db=database).status == "stopped"
    counts = _statuses(database, cid)
    # Nothing marked falsely: what the sink took is sent, everything else is back in the queue.
    assert set(counts) == {"sent", "queued"}
    accepted = _assert_db_and_sink_agree(database, cid, sink)
    assert 150 <= len(accepted) < 1000
    frame = queue(cid, db=database)
    assert frame.loc[frame["status"] == "queued", "attempts"].sum() == 0
    sink.rules = SinkRules()
    resume(cid, db=database)
    rest = send(cid, rate_per_hour=math.inf, progress=False, connections=3, db=database)
    assert (rest.sent, rest.status) == (1000 - len(accepted), "finished")
    assert len(_assert_db_and_sink_agree(database, cid, sink)) == 1000


class _InterruptMainAfter:
    """The real SMTP transport; after ``n`` messages in all, Ctrl-C lands in the main thread."""

    def __init__(self, inner: SmtpTransport, count: list[int], lock: threading.Lock) -> None:
        self.inner, self.count, self.lock = inner, count, lock
        self.logins = 0

    def open(self) -> None:
        self.inner.open()
        self.logins = self.inner.logins

    def send(self, message: bytes, *, mail_from: str, rcpt_to: str) -> SendResult:
        result = self.inner.send(message, mail_from=mail_from, rcpt_to=rcpt_to)
        with self.lock:
            self.count[0] -= 1
            if self.count[0] == 0:
                _thread.interrupt_main()  # what the kernel's interrupt button does
        return result

    def close(self) -> None:
        self.inner.close()


def test_ctrl_c_with_three_connections_leaves_queue_consistent(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 1000)
    count, lock = [200], threading.Lock()

    def factory(sender: SenderInfo) -> _InterruptMainAfter:
        inner = SmtpTransport("127.0.0.1", int(sender.settings["port"]), security="none")
        return _InterruptMainAfter(inner, count, lock)

    summary = send(
        cid,
        rate_per_hour=math.inf,
        progress=False,
        connections=3,
        transport_factory=factory,
        db=database,
    )
    assert summary.interrupted
    assert summary.unknown == 0
    counts = _statuses(database, cid)
    # Each thread finished the message in hand and recorded it: nothing unknown or held.
    assert set(counts) == {"sent", "queued"}
    accepted = _assert_db_and_sink_agree(database, cid, sink)
    assert 200 <= len(accepted) < 1000
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 0
    rest = send(cid, rate_per_hour=math.inf, progress=False, connections=3, db=database)
    assert (rest.sent, rest.status) == (1000 - len(accepted), "finished")
    assert len(_assert_db_and_sink_agree(database, cid, sink)) == 1000


class _LatestWakeClock:
    """A manual clock for several threads: the time is when the latest sleeper wakes.

    ``ManualClock`` adds up every sleep, so two threads waiting for the same second
    would move it two seconds. Here a thread sleeps from the time *it* last read,
    as on a real clock, and nothing ever really waits.
    """

    def __init__(self) -> None:
        self.start = ManualClock().start
        self.elapsed = 0.0
        self._seen: dict[int, float] = {}
        self._lock = threading.Lock()

    def _read(self) -> float:
        with self._lock:
            self._seen[threading.get_ident()] = self.elapsed
            return self.elapsed

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self._read())

    def monotonic(self) -> float:
        return self._read()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            wake = self._seen.get(threading.get_ident(), self.elapsed) + max(0.0, seconds)
            self.elapsed = max(self.elapsed, wake)


def test_rate_is_shared_by_all_connections(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 30, burst=1)
    clock = _LatestWakeClock()
    summary = send(cid, rate_per_hour=3600, progress=False, connections=3, db=database, clock=clock)
    assert (summary.sent, summary.connections, sink.connections) == (30, 3, 3)
    # One shared bucket at one a second, the first token in it: the last message leaves at
    # exactly 29 s whatever the threads' interleaving; three buckets would end near 9 s.
    assert clock.elapsed == pytest.approx(29.0, abs=1e-6)
    assert set(queue(cid, db=database)["attempts"]) == {1}
    assert len(_assert_db_and_sink_agree(database, cid, sink)) == 30


def test_bad_connections_are_refused(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 2)
    with pytest.raises(ConfigError, match="connections=0"):
        send(cid, connections=0, progress=False, db=database)
    with pytest.raises(ConfigError, match="transport_factory"):
        send(
            cid,
            connections=2,
            transport=SmtpTransport("127.0.0.1", sink.port, security="none"),
            progress=False,
            db=database,
        )
    assert set(_statuses(database, cid)) == {"queued"}


def test_worker_with_two_connections(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 600, rate_per_hour=3_600_000, status="scheduled")
    sent = run_worker(db=database, connections=2, exit_when_idle=True, poll_interval_s=0.01)
    assert sent == 600
    assert sink.connections == 2
    assert len(_assert_db_and_sink_agree(database, cid, sink)) == 600
    assert get_campaign(cid, db=database).status == "finished"


def test_wire_format_matches_the_reference_regexes() -> None:
    """The fast CRLF + dot-stuffing path gives the bytes the two regexes would, always."""
    import random
    import re

    from bulkmail_kernel.transports.smtp import _BARE_LF, _wire_format

    leading_dot = re.compile(rb"(?m)^\.")
    rng = random.Random(5321)
    samples = [b"", b".", b"..\n.", b"a\r\n.b\n.c\r", b"\r\r\n.\n\n."]
    samples += [
        bytes(rng.choice(b".\r\nab") for _ in range(rng.randint(0, 16))) for _ in range(5000)
    ]
    for m in samples:
        assert _wire_format(m) == leading_dot.sub(b"..", _BARE_LF.sub(b"\r\n", m)), m


def pd_seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


def _contact_of(database: dbmod.Database, addr: str) -> int:
    with database.session() as s:
        return s.scalar(sa.select(ContactPoint.contact_id).where(ContactPoint.normalized == addr))

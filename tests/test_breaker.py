"""The circuit breaker and the send summary: the real sink on loopback, SQLite and PostgreSQL.

A relay that refuses *us* (554 5.7.1 ... blocked using zen.spamhaus.org) at RCPT or
after DATA fails the message, suppresses nobody, and after N such refusals in a row
pauses the campaign with the reason; the rest stays queued and goes after resume.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from sending_support import address, make_campaign, sink_account

from bulkmail_kernel import (
    RetryPolicy,
    campaign_failures,
    campaign_progress,
    get_campaign,
    list_campaigns,
    queue,
    requeue,
    resume,
    run_worker,
    send,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import Campaign, ContactPoint, Event, Suppression
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.breaker import reason, streak
from bulkmail_kernel.servers.sink import start_sink
from bulkmail_kernel.transports import SendResult
from bulkmail_kernel.transports.smtp import SmtpTransport

BLOCKED = "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org"


def _statuses(db: dbmod.Database, cid: int) -> Counter[str]:
    return Counter(queue(cid, db=db)["status"].astype(str))


def _suppressions(db: dbmod.Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(Suppression)).scalar_one())


def _paused_events(db: dbmod.Database, cid: int) -> list[str]:
    with db.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(Event.detail).where(Event.campaign_id == cid, Event.kind == "paused")
            ).scalars()
        )


def test_a_blocklisting_at_rcpt_pauses_after_n_and_suppresses_nobody(
    database: dbmod.Database, tmp_path: Path
) -> None:
    sink = start_sink(tmp_path / "s", rcpt_reply=BLOCKED)
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 20)
        with pytest.raises(SendError, match="paused after 10 refusals in a row") as err:
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        message = err.value.message
        assert (
            f"campaign 'spring' paused after 10 refusals in a row: the relay refuses us: {BLOCKED}"
            in message
        )
        assert "reputation" in message
        assert "resume" in message
        assert err.value.fields["paused"] is True
        assert _suppressions(database) == 0
        assert _statuses(database, cid) == {"failed": 10, "queued": 10}
        assert len(sink.refusals) == 10  # not one recipient more was tried
        info = get_campaign(cid, db=database)
        assert info.status == "paused"
        assert "blocked using zen.spamhaus.org" in info.last_error
        assert _paused_events(database, cid) == [info.last_error]
        failed = campaign_failures(cid, db=database)
        assert set(failed["last_code"]) == {"554"}
        assert set(failed["category"]) == {"policy"}  # the report says why
        # The reason shows where a paused campaign's reason shows: the list, the monitor.
        listed = list_campaigns(db=database).set_index("name")
        assert listed.loc["spring", "last_error"] == info.last_error
        progress = campaign_progress(cid, db=database)
        assert progress.last_error == info.last_error
        from bulkmail_kernel.widgets.monitor import rate_html

        assert html.escape(info.last_error) in rate_html(progress)
        # Sending again without resuming is refused; the reputation fixed, resume sends the rest.
        with pytest.raises(SendError, match="paused"):
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        sink.rules.rcpt_reply = None
        resume(cid, db=database)
        assert get_campaign(cid, db=database).last_error == ""
        summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert (summary.sent, summary.failed, summary.status) == (10, 0, "finished")
        assert _statuses(database, cid) == {"failed": 10, "sent": 10}
        assert _suppressions(database) == 0
        # The ten refused before the pause never arrived: queued again, they go too.
        assert requeue(cid, queue(cid, status="failed", db=database), db=database) == 10
        again = send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert (again.sent, again.status) == (10, "finished")
        assert _statuses(database, cid) == {"sent": 20}
        assert sorted(a for m in sink.messages for a in m.rcpt_tos) == sorted(
            address(i) for i in range(20)
        )
    finally:
        sink.stop()


def test_the_count_starts_again_after_resume(database: dbmod.Database, tmp_path: Path) -> None:
    sink = start_sink(tmp_path / "s", rcpt_reply=BLOCKED)
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 20, breaker_after=4)
        with pytest.raises(SendError, match="paused after 4 refusals"):
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        resume(cid, db=database)  # resumed too early: the relay still refuses us
        with pytest.raises(SendError, match="paused after 4 refusals"):
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert _statuses(database, cid) == {"failed": 8, "queued": 12}
        assert len(_paused_events(database, cid)) == 2
    finally:
        sink.stop()


def test_refusals_after_data_pause_too(database: dbmod.Database, tmp_path: Path) -> None:
    sink = start_sink(
        tmp_path / "s",
        data_reply="554 5.7.1 Message rejected as spam",
        data_replies={address(0): ["550 5.1.1 no such user"]},
    )
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 20, breaker_after=5)
        with pytest.raises(SendError, match="paused after 5 refusals in a row"):
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert _statuses(database, cid) == {"failed": 6, "queued": 14}
        # The one bad mailbox after DATA is suppressed; the spam refusals suppress nobody.
        with database.engine.connect() as conn:
            suppressed = conn.execute(sa.select(Suppression.normalized)).scalars().all()
        assert suppressed == [address(0)]
        assert sink.messages == []
    finally:
        sink.stop()


def test_bad_mailboxes_are_suppressed_and_never_trip_it(
    database: dbmod.Database, tmp_path: Path
) -> None:
    sink = start_sink(tmp_path / "s", rcpt_reply="550 5.1.1 <x>: Recipient address rejected")
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 20)
        summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert (summary.failed, summary.status) == (20, "finished")
        assert _suppressions(database) == 20
        assert _paused_events(database, cid) == []
    finally:
        sink.stop()


def test_only_refusals_in_a_row_count(database: dbmod.Database, tmp_path: Path) -> None:
    # Nine refused, one taken, nine refused, ...: never ten in a row.
    refused = {address(i): [BLOCKED] for i in range(30) if i % 10 != 9}
    sink = start_sink(tmp_path / "s", rcpt_replies=refused)
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 30)
        summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert (summary.sent, summary.failed, summary.status) == (3, 27, "finished")
        assert _suppressions(database) == 0
        with database.engine.connect() as conn:
            in_row = conn.execute(
                sa.select(Campaign.refusals_in_row).where(Campaign.id == cid)
            ).scalar_one()
        assert in_row == 0  # the last one was taken
    finally:
        sink.stop()


def test_several_connections_share_one_count(database: dbmod.Database, tmp_path: Path) -> None:
    sink = start_sink(tmp_path / "s", rcpt_reply=BLOCKED)
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 60)
        with pytest.raises(SendError, match="paused after"):
            send(cid, rate_per_hour=math.inf, progress=False, connections=3, db=database)
        counts = _statuses(database, cid)
        # Each connection may have one refusal on the wire when another trips the breaker.
        assert 10 <= counts["failed"] <= 12
        assert counts["failed"] + counts["queued"] == 60
        assert _suppressions(database) == 0
        assert len(_paused_events(database, cid)) == 1
    finally:
        sink.stop()


def test_several_workers_pause_it_and_log_why(
    database: dbmod.Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = start_sink(tmp_path / "s", rcpt_reply=BLOCKED)
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 60, rate_per_hour=3_600_000, status="sending")
        with caplog.at_level(logging.INFO, logger="bulkmail"):
            run_worker(db=database, connections=2, exit_when_idle=True, poll_interval_s=0.01)
        counts = _statuses(database, cid)
        assert 10 <= counts["failed"] <= 11
        assert counts["failed"] + counts["queued"] == 60
        assert _suppressions(database) == 0
        assert get_campaign(cid, db=database).status == "paused"
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("zen.spamhaus.org" in e and "paused after" in e for e in errors), errors
    finally:
        sink.stop()


def test_the_limit_comes_from_the_environment(
    database: dbmod.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = start_sink(tmp_path / "s", rcpt_reply=BLOCKED)
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 20)
        monkeypatch.setenv("BULKMAIL_BREAKER_AFTER", "3")
        with pytest.raises(SendError, match="paused after 3 refusals"):
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        monkeypatch.setenv("BULKMAIL_BREAKER_AFTER", "zero")
        resume(cid, db=database)
        with pytest.raises(ConfigError, match="BULKMAIL_BREAKER_AFTER='zero'"):
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert _statuses(database, cid) == {"failed": 3, "queued": 17}
    finally:
        sink.stop()


def test_a_full_mailbox_is_retried_as_a_soft_bounce(
    database: dbmod.Database, tmp_path: Path
) -> None:
    sink = start_sink(tmp_path / "s", rcpt_replies={address(1): ["552 5.2.2 mailbox full"]})
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 3)
        clock = ManualClock()
        first = send(cid, rate_per_hour=math.inf, progress=False, db=database, clock=clock)
        assert (first.sent, first.deferred, first.failed) == (2, 1, 0)
        assert _suppressions(database) == 0
        with database.engine.connect() as conn:
            bounces = conn.execute(
                sa.select(ContactPoint.soft_bounces).where(ContactPoint.normalized == address(1))
            ).scalar_one()
        assert bounces == 1
        clock.advance(300)
        second = send(cid, progress=False, db=database, clock=clock)
        assert (second.sent, second.status) == (1, "finished")
    finally:
        sink.stop()


def test_the_summary_equals_the_database_when_retries_expire(
    database: dbmod.Database, tmp_path: Path
) -> None:
    # Issue 14: a message that gave up after its retries was counted as deferred.
    sink = start_sink(
        tmp_path / "s",
        rcpt_replies={
            address(0): ["450 4.2.0 busy"] * 10,
            address(1): ["450 4.2.0 busy"] * 10,
            address(2): ["450 4.2.0 busy"] * 10,
            address(3): ["451 4.3.0 greylisted"],
            address(4): ["550 5.1.1 no such user"],
        },
    )
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 7)
        policy = RetryPolicy(retry_backoff_s=300, max_backoff_s=4000, expiry_s=1000)
        summary = send(
            cid,
            rate_per_hour=math.inf,
            progress=False,
            db=database,
            clock=ManualClock(),
            retry=policy,
            wait_for_retries=True,
        )
        stored = _statuses(database, cid)
        assert stored == {"sent": 3, "failed": 4}
        got = {k: getattr(summary, k) for k in ("sent", "deferred", "failed", "unknown")}
        assert got == {k: stored.get(k, 0) for k in got}
        assert summary.status == "finished"
        # Three messages deferred three times each before giving up, one greylisted once.
        assert summary.deferrals == 10
    finally:
        sink.stop()


def test_a_summary_counts_what_is_left_deferred(database: dbmod.Database, tmp_path: Path) -> None:
    sink = start_sink(tmp_path / "s", rcpt_replies={address(0): ["450 4.2.0 busy"] * 3})
    try:
        sink_account(database, sink.port)
        cid = make_campaign(database, 2)
        policy = RetryPolicy(retry_backoff_s=300, max_backoff_s=4000, expiry_s=1000)
        clock = ManualClock()
        first = send(cid, rate_per_hour=math.inf, progress=False, db=database, clock=clock)
        assert (first.sent, first.deferred, first.failed) == (1, 1, 0)
        clock.advance(300)
        second = send(cid, progress=False, db=database, clock=clock, retry=policy)
        assert (second.sent, second.deferred, second.failed) == (0, 1, 0)
        assert _statuses(database, cid) == {"sent": 1, "deferred": 1}
    finally:
        sink.stop()


def test_a_relay_without_auth_says_so(
    database: dbmod.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_PW", "s3cret")
    sink = start_sink(tmp_path / "s")  # aiosmtpd configured without AUTH
    try:
        t = SmtpTransport(
            "127.0.0.1", sink.port, security="none", user="shop", credential_ref="SHOP_PW"
        )
        with pytest.raises(SendError) as err:
            t.open()
        assert err.value.message == (
            f"SMTP 127.0.0.1:{sink.port} offers no login (no AUTH in its EHLO reply) but the "
            "account has user 'shop': remove the user for a relay that needs none, or use the "
            "server's submission port 587/465 (many servers offer AUTH only after STARTTLS: "
            "set security to 'starttls')"
        )
        assert "STARTTLS extension" not in err.value.message
        assert err.value.fields["fatal"] is True
        # Through send(): the campaign stops with that reason and nothing is marked.
        sink_account(database, sink.port, user="shop", credential_ref="SHOP_PW")
        cid = make_campaign(database, 3)
        with pytest.raises(SendError, match="offers no login"):
            send(cid, rate_per_hour=math.inf, progress=False, db=database)
        assert _statuses(database, cid) == {"queued": 3}
        assert "offers no login" in get_campaign(cid, db=database).last_error
        assert sink.messages == []
    finally:
        sink.stop()


def test_streak_resets_on_a_taken_message_or_a_bad_mailbox() -> None:
    blocked = SendResult("failed", 554, BLOCKED, category="policy")
    sent = SendResult("sent", 250)
    bad = SendResult("failed", 550, "550 5.1.1 no such user", suppress=True, category="mailbox")
    later = SendResult("deferred", 451, "451 4.7.1 later", category="policy")
    unread = SendResult("failed", None, "not sent: a header was refused")
    assert streak([blocked, blocked, later, unread]) == (False, 2, blocked)
    assert streak([blocked, sent, blocked]) == (True, 1, blocked)
    assert streak([blocked, bad]) == (True, 0, blocked)
    assert streak([later, unread]) == (False, 0, None)


def test_reason_says_what_happened_and_what_to_do() -> None:
    last = SendResult("failed", 554, BLOCKED, category="policy")
    text = reason(10, last)
    assert text.startswith(f"paused after 10 refusals in a row: the relay refuses us: {BLOCKED} — ")
    assert "reputation" in text
    assert "Nobody was suppressed" in text
    assert "resume" in text
    assert "too big" in reason(3, SendResult("failed", 552, "552 5.3.4 too big", category="size"))


def test_the_cli_says_why_it_paused_and_reports_counts_by_name(
    sqlite_url: str, tmp_path: Path
) -> None:
    database = dbmod.open_database(sqlite_url)
    sink = start_sink(tmp_path / "s", rcpt_reply=BLOCKED)
    try:
        sink_account(database, sink.port)
        make_campaign(database, 20, rate_per_hour=3_600_000)
        sent = _cli("send", "spring", "--quiet", "--db", sqlite_url)
        assert sent.returncode == 2  # the campaign cannot be sent on: see SEND_EXIT_CODES
        assert sent.stderr.startswith(
            "bulkmail send: campaign 'spring' paused after 10 refusals in a row: the relay "
            f"refuses us: {BLOCKED} — check your server's reputation"
        )
        progress = _cli("campaign-progress", "spring", "--db", sqlite_url).stdout
        assert f"paused after 10 refusals in a row: the relay refuses us: {BLOCKED}" in progress
        listed = _cli("list-campaigns", "--csv", "--db", sqlite_url).stdout
        row = next(csv.DictReader(io.StringIO(listed)))
        assert (row["status"], row["failed"], row["queued"]) == ("paused", "10", "10")
        assert row["last_error"].startswith("paused after 10 refusals in a row")
        report = _cli("report", "spring", "--db", sqlite_url).stdout.splitlines()
        counts = dict(line.split()[:2] for line in report[1:8])
        assert counts == {
            "queued": "10",
            "sending": "0",
            "sent": "0",
            "deferred": "0",
            "failed": "10",
            "unknown": "0",
            "removed": "0",
        }
    finally:
        sink.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("bulkmail")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=120, check=False
    )

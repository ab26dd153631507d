"""The outbox monitor: campaign_progress on both databases, and the widget built on it."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from sending_support import address, make_campaign, sink_account

from bulkmail_kernel import (
    RecipientsSkippedWarning,
    add_sender_account,
    campaign_progress,
    contacts_frame,
    create_campaign,
    get_campaign,
    import_contacts,
    outbox_monitor,
    queue,
    register,
    send,
    template_from_html,
    unsubscribe_address,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns.monitor import registration_skips
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import Event
from bulkmail_kernel.servers.sink import Sink, start_sink
from bulkmail_kernel.widgets.monitor import OutboxMonitor

STATUSES = ["queued", "sending", "sent", "deferred", "failed", "unknown", "removed"]
FAILS, DEFERS = address(2), address(3)


class _StopAfter(ManualClock):
    """The manual clock, which ends the send (through its stop event) after ``limit_s``."""

    def __init__(self, stop: threading.Event, limit_s: float) -> None:
        super().__init__()
        self.stop, self.limit_s = stop, limit_s

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.elapsed >= self.limit_s:
            self.stop.set()


@pytest.fixture
def refusing_sink(tmp_path: Path) -> Iterator[Sink]:
    """A sink that refuses one address for good (550) and greylists another (451)."""
    sink = start_sink(
        tmp_path / "refusing",
        rcpt_replies={FAILS: ["550 5.1.1 no such user"], DEFERS: ["451 4.7.1 greylisted"]},
    )
    try:
        yield sink
    finally:
        sink.stop()


def _partly_sent(database: dbmod.Database, sink: Sink) -> tuple[int, ManualClock]:
    """Return campaign 'spring' (30 messages, set to 3,000/h) after ten seconds at 3,600/h."""
    sink_account(database, sink.port)
    cid = make_campaign(database, 30, burst=1)
    stop = threading.Event()
    clock = _StopAfter(stop, 9.5)
    send(cid, rate_per_hour=3600, progress=False, clock=clock, stop=stop, db=database)
    return cid, clock


def _statuses(database: dbmod.Database, cid: int) -> dict[str, str]:
    frame = queue(cid, db=database)
    return dict(zip(frame["recipient"], frame["status"].astype(str), strict=True))


def test_progress_of_a_partly_sent_campaign(
    database: dbmod.Database, refusing_sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKMAIL_TZ", "Asia/Tokyo")
    cid, clock = _partly_sent(database, refusing_sink)
    frame = queue(cid, db=database)
    sent_at = frame.loc[frame["status"] == "sent", "sent_at"].sort_values().tolist()
    n_sent = len(sent_at)
    assert n_sent == len(refusing_sink.messages) >= 5
    now = clock.now() + timedelta(minutes=5)

    p = campaign_progress(cid, now=now, db=database)

    # Every status, zeros included, agreeing message by message with the queue.
    assert list(p.counts) == STATUSES
    assert p.counts == {s: Counter(frame["status"].astype(str))[s] for s in STATUSES}
    assert (p.sent, p.counts["failed"], p.counts["deferred"], p.total) == (n_sent, 1, 1, 30)
    assert p.remaining == 30 - n_sent - 1 == p.counts["queued"] + 1
    assert (p.name, p.status, p.rate_per_hour) == ("spring", "sending", 3000)
    # The window (10 min) reaches back before the first send: the rate runs from that send.
    elapsed = (now - sent_at[0]).total_seconds()
    assert p.actual_rate_per_hour == pytest.approx(n_sent / elapsed * 3600)
    assert p.actual_rate_per_hour < 3000
    # The ETA takes the lower of the actual and the set rate.
    assert p.eta_s == pytest.approx(p.remaining / p.actual_rate_per_hour * 3600)
    assert p.eta is not None
    assert p.eta == now + timedelta(seconds=p.eta_s)
    # Times are shown in the analyst's zone.
    tokyo = ZoneInfo("Asia/Tokyo")
    for when in (p.as_of, p.eta, p.started_at, p.last_sent_at):
        assert when is not None
        assert when.utcoffset() == timedelta(hours=9)
    assert p.as_of == now
    assert (p.started_at, p.last_sent_at) == (sent_at[0], sent_at[-1])
    assert p.started_at.tzinfo == tokyo
    # The last errors, newest first: the greylisted message came after the refused one.
    errors = p.errors
    assert list(errors.columns) == ["message_id", "recipient", "status", "code", "error", "at"]
    assert list(errors["recipient"]) == [DEFERS, FAILS]
    assert list(errors["status"]) == ["deferred", "failed"]
    assert list(errors["code"]) == ["451", "550"]
    assert "greylisted" in errors["error"].iloc[0]
    assert "no such user" in errors["error"].iloc[1]
    assert str(errors["at"].dt.tz) == "Asia/Tokyo"
    assert f"{n_sent}/30 sent" in p.summary()
    assert campaign_progress(cid, now=now, errors=1, db=database).errors["recipient"].tolist() == [
        DEFERS
    ]


def test_the_rate_counts_only_the_window(database: dbmod.Database, refusing_sink: Sink) -> None:
    cid, _clock = _partly_sent(database, refusing_sink)
    frame = queue(cid, db=database)
    sent_at = frame.loc[frame["status"] == "sent", "sent_at"].sort_values().tolist()
    now = sent_at[-1] + timedelta(seconds=30)
    # A window that starts at the fifth send counts that one and the later ones only.
    window_s = (now - sent_at[4]).total_seconds()
    p = campaign_progress(cid, now=now, window_s=window_s, db=database)
    assert p.actual_rate_per_hour == pytest.approx((len(sent_at) - 4) / window_s * 3600)
    # Twenty minutes of silence: the rate is zero, and no ETA can be given.
    quiet = campaign_progress(cid, now=sent_at[-1] + timedelta(minutes=20), db=database)
    assert (quiet.actual_rate_per_hour, quiet.eta_s, quiet.eta) == (0.0, None, None)
    assert quiet.remaining == p.remaining > 0


def test_progress_before_and_after_sending(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 12)
    before = campaign_progress(cid, db=database)
    assert before.counts == {**dict.fromkeys(STATUSES, 0), "queued": 12}
    assert (before.actual_rate_per_hour, before.eta_s, before.started_at) == (None, None, None)
    assert (before.remaining, before.errors.empty) == (12, True)
    clock = ManualClock()
    send(cid, rate_per_hour=math.inf, progress=False, clock=clock, db=database)
    after = campaign_progress("spring", now=clock.now() + timedelta(seconds=1), db=database)
    assert after.counts == {**dict.fromkeys(STATUSES, 0), "sent": 12}
    assert (after.status, after.remaining, after.eta_s, after.eta) == ("finished", 0, None, None)
    assert after.finished_at == clock.now()
    assert after.actual_rate_per_hour == pytest.approx(12 * 3600)


def _numbers(html: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r">(?:<b>)?([\d,]+)(?:</b>)?</td>", html)]


def test_the_monitor_shows_the_counts_and_its_buttons_act(
    database: dbmod.Database, refusing_sink: Sink
) -> None:
    cid, _clock = _partly_sent(database, refusing_sink)
    n_sent = len(refusing_sink.messages)
    m = outbox_monitor("spring", refresh_s=0, db=database)
    try:
        assert m.progress_label.value == f"{n_sent} / 30"
        assert (m.progress_bar.value, m.progress_bar.max) == (n_sent, 30)
        counts = campaign_progress(cid, db=database).counts
        assert _numbers(m.counts.value) == [*counts.values(), 30]
        assert "of 3,000/h set" in m.rate.value
        assert DEFERS in m.errors.value
        assert FAILS in m.errors.value

        m.pause_button.click()
        assert get_campaign(cid, db=database).status == "paused"
        assert m.status.value == "paused: now paused"
        # Pausing twice is refused in one readable line.
        m.pause_button.click()
        assert m.status.value.startswith("not done: campaign 'spring' is paused")
        assert "\n" not in m.status.value
        m.resume_button.click()
        assert get_campaign(cid, db=database).status == "registered"

        # The queue list: the deferred message first, then the queue in order.
        listed = [v for _label, v in m.queue.options]
        assert len(listed) == 30 - n_sent - 1
        before = _statuses(database, cid)
        chosen = (listed[0], listed[3])
        m.queue.value = chosen
        m.remove_button.click()
        assert m.status.value == "2 of 2 selected messages removed"
        after = _statuses(database, cid)
        frame = queue(cid, db=database).set_index("message_id")
        gone = {frame.loc[i, "recipient"] for i in chosen}
        assert DEFERS in gone
        assert {r for r, s in after.items() if s == "removed"} == gone
        assert {r: s for r, s in after.items() if r not in gone} == {
            r: s for r, s in before.items() if r not in gone
        }
        assert _numbers(m.counts.value)[STATUSES.index("removed")] == 2
        assert not set(chosen) & {v for _label, v in m.queue.options}

        # Cancel asks first, then removes every unsent message.
        m.cancel_button.click()
        assert get_campaign(cid, db=database).status == "registered"
        assert "again" in m.status.value
        m.cancel_button.click()
        assert get_campaign(cid, db=database).status == "cancelled"
        assert m.last is not None
        assert m.last.remaining == 0
        assert m.queue.options == ()
    finally:
        m.close()


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bulkmail-monitor")]


def test_the_monitor_follows_the_database_and_stops_on_close(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    cid = make_campaign(database, 40)
    m = outbox_monitor(refresh_s=0.05, db=database)
    try:
        assert m.campaign_id == cid
        assert m.progress_label.value == "0 / 40"
        assert len(_monitor_threads()) == 1
        # Another sender (here the same process; a worker anywhere is the same) sends it all.
        send(cid, rate_per_hour=math.inf, progress=False, db=database)
        deadline = time.monotonic() + 60
        while m.progress_label.value != "40 / 40" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert m.progress_label.value == "40 / 40"
        deadline = time.monotonic() + 60
        while "finished" not in m.rate.value and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "finished" in m.rate.value
        # Finished, it stays on show though the list offers only unfinished campaigns.
        assert m.campaign_id == cid
    finally:
        m.close()
    assert _monitor_threads() == []
    assert m.refresh()  # a refresh by hand still works, the thread is gone for good
    assert _monitor_threads() == []


def test_the_monitor_lists_the_campaigns_still_open(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    first = make_campaign(database, 3, name="first", first=0)
    second = make_campaign(database, 3, name="second", first=10)
    send(first, rate_per_hour=math.inf, progress=False, db=database)
    m = outbox_monitor(refresh_s=0, db=database)
    try:
        assert [v for _label, v in m.picker.options] == [second]
        assert m.picker.options[0][0] == "second (registered)"
        make_campaign(database, 2, name="third", first=20)
        m.refresh()
        labels = [label for label, _v in m.picker.options]
        assert labels == ["third (registered)", "second (registered)"]
        assert m.campaign_id == second
        m.picker.value = dict(m.picker.options)["third (registered)"]
        assert m.progress_label.value == "0 / 2"
    finally:
        m.close()
    assert isinstance(m, OutboxMonitor)


def test_campaign_progress_command(sqlite_url: str, refusing_sink: Sink) -> None:
    database = dbmod.open_database(sqlite_url)
    _cid, _clock = _partly_sent(database, refusing_sink)
    n_sent = len(refusing_sink.messages)
    exe = shutil.which("bulkmail", path=str(Path(sys.executable).parent))
    assert exe
    proc = subprocess.run(
        [exe, "campaign-progress", "spring", "--db", sqlite_url, "--csv"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"spring [sending]: {n_sent}/30 sent" in proc.stdout
    assert "of 3,000/h set" in proc.stdout
    assert f"{DEFERS},deferred,451" in proc.stdout
    assert f"{FAILS},failed,550" in proc.stdout


def _campaign_with_skips(database: dbmod.Database, tmp_path: Path) -> pd.DataFrame:
    """Create campaign 'spring'; return its five people: two not opted in, one unsubscribed."""
    people = pd.DataFrame(
        {
            "first_name": ["Ján", "Eva", "Ola", "Ivan", "Mia"],
            "email": [f"p{i}@a.sk" for i in range(5)],
            "mailing_allowed": ["no", "yes", "no", "yes", "yes"],
        }
    )
    import_contacts(people, db=database, progress=False)
    add_sender_account(
        "out",
        kind="file",
        from_email="news@shop.sk",
        settings={
            "folder": str(tmp_path / "out"),
            "unsubscribe_url": "https://shop.sk/u?t={token}",
        },
        db=database,
    )
    html = '<p>Dobrý deň {{ first_name }}</p><a href="{{ unsubscribe_url }}">Odhlásiť</a>'
    template = template_from_html(html, "Pozvánka", name="pozvanka")
    create_campaign("spring", sender="out", template=template, db=database)
    unsubscribe_address("p3@a.sk", db=database)
    frame = contacts_frame(database)
    return frame[frame["address"].str.endswith("@a.sk")]


def _register_with_skips(database: dbmod.Database, tmp_path: Path) -> None:
    """Register campaign 'spring' for its five people: three are skipped."""
    people = _campaign_with_skips(database, tmp_path)
    with pytest.warns(RecipientsSkippedWarning, match="3 of 5 recipients skipped"):
        register("spring", people, db=database)


SKIP_LINE = (
    "3 recipients were skipped at registration: 2 mailing not allowed; 1 suppressed "
    "— see bm.skipped(&#x27;spring&#x27;)"
)


def test_the_monitor_says_who_registration_skipped_and_why(
    database: dbmod.Database, tmp_path: Path
) -> None:
    _register_with_skips(database, tmp_path)
    m = outbox_monitor("spring", refresh_s=0, db=database)
    try:
        assert m.progress_label.value == "0 / 2"
        assert SKIP_LINE in m.skips.value
        assert m.skips in m.children
        # The line is read again only when the messages change or Refresh is pressed.
        with database.engine.begin() as conn:
            conn.execute(sa.delete(Event).where(Event.kind == "skipped"))
        m.refresh()
        assert SKIP_LINE in m.skips.value
        m.refresh_button.click()
        assert m.skips.value == ""
    finally:
        m.close()


def test_a_campaign_registered_while_watched_shows_its_skip_line(
    database: dbmod.Database, tmp_path: Path
) -> None:
    add_sender_account(
        "early",
        kind="file",
        from_email="news@shop.sk",
        settings={
            "folder": str(tmp_path / "early"),
            "unsubscribe_url": "https://shop.sk/u?t={token}",
        },
        db=database,
    )
    nothing_skipped = make_campaign(database, 2, name="other", sender="early")
    people = _campaign_with_skips(database, tmp_path)
    m = outbox_monitor("spring", refresh_s=0, db=database)
    try:
        assert (m.progress_label.value, m.skips.value) == ("0 / 0", "")
        with pytest.warns(RecipientsSkippedWarning):
            register("spring", people, db=database)
        m.refresh()  # what the thread does every refresh_s
        assert m.progress_label.value == "0 / 2"
        assert SKIP_LINE in m.skips.value
    finally:
        m.close()
    m = outbox_monitor(refresh_s=0, db=database)
    try:
        m.picker.value = nothing_skipped
        assert m.skips.value == ""
        m.picker.value = get_campaign("spring", db=database).id
        assert SKIP_LINE in m.skips.value
    finally:
        m.close()


def test_the_skip_line_survives_a_kernel_restart(sqlite_url: str, tmp_path: Path) -> None:
    _register_with_skips(dbmod.open_database(sqlite_url), tmp_path)
    script = (
        "from bulkmail_kernel import outbox_monitor\n"
        f"m = outbox_monitor('spring', refresh_s=0, url={sqlite_url!r})\n"
        "print(m.skips.value)\n"
        "m.close()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert SKIP_LINE in proc.stdout
    assert registration_skips("spring", url=sqlite_url) == (
        "3 recipients were skipped at registration: 2 mailing not allowed; 1 suppressed "
        "— see bm.skipped('spring')"
    )

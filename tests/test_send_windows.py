"""Send windows on the recipient's wall clock: the syntax, the zones, and the send path.

The daylight-saving cases go through registration, the real send loop and the real SMTP
sink with a manual clock, on SQLite and PostgreSQL: a message registered on Friday
evening, outside "Mon–Fri 09:00–18:00", waits over the weekend of a clock change and
goes at 09:00 on Monday by its recipient's clock, which is a different UTC hour than
on the Friday before.
"""

from __future__ import annotations

import email
import email.utils
import html
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from sending_support import sink_account

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.contacts.zones import recipient_zone, zone_of_address, zone_of_number
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.parking import Parker, waiting_for_window
from bulkmail_kernel.outbox.windows import parse_window
from bulkmail_kernel.servers.sink import Sink, start_sink
from bulkmail_kernel.widgets.monitor import rate_html

BRATISLAVA = ZoneInfo("Europe/Bratislava")
NEW_YORK = ZoneInfo("America/New_York")

# --------------------------------------------------------------------------- the syntax


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("Mon–Fri 09:00–18:00", "Mon–Fri 09:00–18:00"),
        ("mon-fri 9:00-18:00", "Mon–Fri 09:00–18:00"),
        ("Monday to Friday 09:00 to 18:00", "Mon–Fri 09:00–18:00"),
        ("weekdays 09:00-17:30", "Mon–Fri 09:00–17:30"),
        ("at 10:00 local", "daily at 10:00"),
        ("Mon,Wed at 10:00", "Mon,Wed at 10:00"),
        ("Mon-Fri 09:00-18:00; Sat 10:00-14:00", "Mon–Fri 09:00–18:00; Sat 10:00–14:00"),
        ("Fri-Sun 20:00-02:00", "Fri–Sun 20:00–02:00"),
        ("08:00-24:00", "daily 08:00–24:00"),
    ],
)
def test_window_text_is_read_and_written_one_way(written: str, stored: str) -> None:
    window = parse_window(written)
    assert str(window) == stored
    assert parse_window(stored) == window  # what is stored reads back the same


def test_structured_form_is_the_same_window() -> None:
    assert parse_window({"days": "Mon-Fri", "start": "09:00", "end": "18:00"}) == parse_window(
        "Mon–Fri 09:00–18:00"
    )
    assert str(parse_window([{"days": [0, 2], "at": "10:00"}, "Sat 10:00-12:00"])) == (
        "Mon,Wed at 10:00; Sat 10:00–12:00"
    )


@pytest.mark.parametrize(
    ("bad", "part"),
    [
        ("Mon-Fry 09:00-18:00", "'Mon-Fry' is not a day"),
        ("Mon-Fri 09:00-25:00", "'25:00' is not a time of day"),
        ("Mon-Fri 09:61-18:00", "'09:61' is not a time of day"),
        ("whenever", "'whenever' is not a window"),
        ("Mon-Fri 09:00-18:00; soon", "'soon' is not a window"),
        ("Mon 09:00-09:00", "opens and closes at the same time"),
        ({"days": "Mon", "start": "09:00"}, "'start/end' is missing"),
        ({"from": "09:00"}, "'from' is not a key"),
    ],
)
def test_a_bad_window_names_the_bad_part(bad: object, part: str) -> None:
    with pytest.raises(ConfigError, match=part):
        parse_window(bad)  # type: ignore[arg-type]


def test_create_campaign_refuses_a_bad_window_naming_the_campaign(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    with pytest.raises(ConfigError, match=r"campaign 'c': send window .*'Sun-Thurs' is not a day"):
        bm.create_campaign("c", sender="sink", send_window="Sun-Thurs 9:00-17:00", db=database)
    assert bm.list_campaigns(db=database).empty


# --------------------------------------------------------------------------- the arithmetic


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "now", "opens"),
    [
        # Friday evening, a clock change on Sunday: Monday 09:00 is another UTC hour.
        (BRATISLAVA, _utc(2026, 3, 27, 17, 30), _utc(2026, 3, 30, 7)),  # CET -> CEST
        (BRATISLAVA, _utc(2026, 10, 23, 16, 30), _utc(2026, 10, 26, 8)),  # CEST -> CET
        (NEW_YORK, _utc(2026, 3, 6, 23, 30), _utc(2026, 3, 9, 13)),  # EST -> EDT
        (NEW_YORK, _utc(2026, 10, 30, 22, 30), _utc(2026, 11, 2, 14)),  # EDT -> EST
        # New York keeps its hour over Europe's last Sunday of March.
        (NEW_YORK, _utc(2026, 3, 27, 22, 30), _utc(2026, 3, 30, 13)),
    ],
)
def test_next_opening_follows_the_recipients_clock_changes(
    zone: ZoneInfo, now: datetime, opens: datetime
) -> None:
    window = parse_window("Mon–Fri 09:00–18:00")
    assert not window.is_open(now, zone)
    assert window.next_open(now, zone) == opens
    assert window.is_open(opens, zone)
    assert not window.is_open(opens - timedelta(seconds=1), zone)


def test_at_ten_local_on_the_day_of_the_change() -> None:
    window = parse_window("at 10:00 local")
    # Saturday 10:00 CET, then Sunday 10:00 CEST: 23 hours apart.
    sat = window.next_open(_utc(2026, 3, 28, 0), BRATISLAVA)
    sun = window.next_open(sat + timedelta(hours=1), BRATISLAVA)
    assert (sat, sun) == (_utc(2026, 3, 28, 9), _utc(2026, 3, 29, 8))
    # It stays open an hour, then waits for the next day's 10:00.
    assert window.is_open(sun + timedelta(minutes=59), BRATISLAVA)
    assert window.next_open(sun + timedelta(hours=1), BRATISLAVA) == _utc(2026, 3, 30, 8)
    # Autumn: Sunday 10:00 CET is 25 hours after Saturday 10:00 CEST.
    sat = window.next_open(_utc(2026, 10, 24, 0), BRATISLAVA)
    sun = window.next_open(sat + timedelta(hours=1), BRATISLAVA)
    assert (sat, sun) == (_utc(2026, 10, 24, 8), _utc(2026, 10, 25, 9))


def test_a_window_over_midnight() -> None:
    window = parse_window("Fri 20:00-02:00")
    assert window.is_open(_utc(2026, 3, 28, 0, 30), BRATISLAVA)  # Sat 01:30 CET
    assert not window.is_open(_utc(2026, 3, 28, 1, 0), BRATISLAVA)  # Sat 02:00
    assert window.next_open(_utc(2026, 3, 28, 1, 0), BRATISLAVA) == _utc(2026, 4, 3, 18)


# --------------------------------------------------------------------------- the zones


def test_zone_from_column_then_number_then_address() -> None:
    assert recipient_zone({"timezone": "America/New_York"}, "email", "a@x.sk") == (
        "America/New_York"
    )
    assert recipient_zone({"tz": " Asia/Tokyo "}, "email", "a@x.com") == "Asia/Tokyo"
    assert recipient_zone({"timezone": None}, "email", "a@firma.sk") == "Europe/Bratislava"
    assert zone_of_address("jan@firma.cz") == "Europe/Prague"
    assert zone_of_address("olga@mail.ru") == "Europe/Moscow"
    assert zone_of_address("a@b.co.uk") == "Europe/London"
    assert zone_of_address("a@gmail.com") is None  # generic: no guess
    assert zone_of_address("a@b.eu") is None
    assert zone_of_number("+421905123456") == "Europe/Bratislava"
    assert zone_of_number("+12125550123") == "America/New_York"  # the prefix's own zone
    assert zone_of_number("+79161234567") == "Europe/Moscow"  # many zones: the country's main
    assert recipient_zone({}, "phone", "+420601123456") == "Europe/Prague"


def test_a_bad_zone_column_names_the_recipient() -> None:
    with pytest.raises(SendError, match=r"recipient a@x\.sk: timezone 'Europe/Bratslava' is no"):
        recipient_zone({"timezone": "Europe/Bratslava"}, "email", "a@x.sk")


# --------------------------------------------------------------------------- the send path


def _people(database: dbmod.Database, rows: list[dict[str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame([{**r, "mailing_allowed": "yes"} for r in rows])
    import_contacts(frame, db=database, progress=False)
    return bm.contacts_frame(database)


def _campaign(database: dbmod.Database, port: int, window: str | None) -> None:
    sink_account(database, port)
    template = bm.template_from_html(
        "<p>Dobrý deň {{ first_name }}</p>", subject="Ponuka", name="w"
    )
    bm.create_campaign("c", sender="sink", template=template, send_window=window, db=database)


def _date(data: bytes) -> datetime:
    return email.utils.parsedate_to_datetime(email.message_from_bytes(data)["Date"])


def _register_jan(database: dbmod.Database) -> None:
    bm.register(
        "c", _people(database, [{"first_name": "Ján", "email": "jan@firma.sk"}]), db=database
    )


def _send(database: dbmod.Database, clock: ManualClock) -> int:
    summary = bm.send("c", rate_per_hour=float("inf"), progress=False, clock=clock, db=database)
    return summary.sent


def _sent_at(database: dbmod.Database) -> dict[str, datetime]:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.select(dbmod.Message.recipient, dbmod.Message.sent_at)).all()
    return {r.recipient: r.sent_at for r in rows if r.sent_at is not None}


@pytest.mark.parametrize(
    ("row", "friday_evening", "monday_nine"),
    [
        ({"email": "jan@firma.sk"}, _utc(2026, 3, 27, 17, 30), _utc(2026, 3, 30, 7)),
        ({"email": "jan@firma.sk"}, _utc(2026, 10, 23, 16, 30), _utc(2026, 10, 26, 8)),
        (
            {"email": "ann@example.com", "timezone": "America/New_York"},
            _utc(2026, 3, 27, 22, 30),
            _utc(2026, 3, 30, 13),
        ),
        (
            {"email": "ann@example.com", "timezone": "America/New_York"},
            _utc(2026, 10, 30, 22, 30),
            _utc(2026, 11, 2, 14),
        ),
    ],
    ids=["bratislava-march", "bratislava-october", "new-york-march", "new-york-november"],
)
def test_a_message_waits_over_the_clock_change_and_goes_at_nine_on_monday(
    database: dbmod.Database,
    sink: Sink,
    row: dict[str, str],
    friday_evening: datetime,
    monday_nine: datetime,
) -> None:
    _campaign(database, sink.port, "Mon–Fri 09:00–18:00")
    people = _people(database, [{"first_name": "Ján", **row}])
    bm.register("c", people, db=database)
    clock = ManualClock(start=friday_evening)

    assert _send(database, clock) == 0  # Friday evening: closed, parked for Monday
    assert sink.messages == []
    progress = bm.campaign_progress("c", now=clock.now(), db=database)
    assert progress.window_line() == (
        "window Mon–Fri 09:00–18:00 recipient's local time; 1 waiting for their window"
    )
    assert html.escape(progress.window_line()) in rate_html(progress)  # the monitor shows it
    clock.start = monday_nine - timedelta(seconds=1)
    assert _send(database, clock) == 0  # a second early: still waiting
    clock.start = monday_nine
    assert _send(database, clock) == 1
    assert _sent_at(database) == {row["email"]: monday_nine}
    (received,) = sink.messages
    assert _date(received.data) == monday_nine
    assert bm.get_campaign("c", db=database).status == "finished"


def test_each_recipient_goes_in_their_own_window_and_the_firms_zone_is_the_fallback(
    database: dbmod.Database, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKMAIL_TZ", "Asia/Tokyo")
    _campaign(database, sink.port, "at 10:00 local")
    people = _people(
        database,
        [
            {"first_name": "Ján", "email": "jan@firma.sk"},  # .sk: Bratislava
            {"first_name": "Ann", "email": "ann@example.com", "tz": "America/New_York"},
            {"first_name": "Aiko", "email": "aiko@example.com"},  # no guess: the firm's zone
        ],
    )
    bm.register("c", people, db=database)
    with database.engine.connect() as conn:
        rows = conn.execute(sa.select(dbmod.Message.recipient, dbmod.Message.timezone)).all()
    zones = {r.recipient: r.timezone for r in rows}
    assert zones == {
        "jan@firma.sk": "Europe/Bratislava",
        "ann@example.com": "America/New_York",
        "aiko@example.com": None,
    }
    # Saturday 28 March 2026 from 00:00 UTC, every quarter of an hour.
    clock = ManualClock(start=_utc(2026, 3, 28, 0))
    while clock.now() <= _utc(2026, 3, 28, 15):
        _send(database, clock)
        clock.start += timedelta(minutes=15)
    assert _sent_at(database) == {
        "aiko@example.com": _utc(2026, 3, 28, 1),  # 10:00 in Tokyo, Saturday
        "jan@firma.sk": _utc(2026, 3, 28, 9),  # 10:00 CET, Saturday
        "ann@example.com": _utc(2026, 3, 28, 14),  # 10:00 EDT, Saturday
    }
    assert len(sink.messages) == 3


def test_set_send_window_frees_and_parks_at_once(database: dbmod.Database, sink: Sink) -> None:
    _campaign(database, sink.port, None)
    bm.register(
        "c", _people(database, [{"first_name": "Ján", "email": "jan@firma.sk"}]), db=database
    )
    # A window that is never open now: the message waits for it whatever the real time is.
    now = datetime.now(UTC)
    closed = (now.astimezone(BRATISLAVA) + timedelta(days=2)).strftime("%a")
    info = bm.set_send_window("c", f"{closed} at 03:00", db=database)
    assert info.send_window == f"{closed} at 03:00"
    assert waiting_for_window(database, [info.id], now) == {info.id: 1}
    listed = bm.list_campaigns(db=database).set_index("name")
    assert listed.loc["c", "send_window"] == f"{closed} at 03:00"
    assert listed.loc["c", "waiting_for_window"] == 1
    bm.set_send_window("c", None, db=database)
    assert waiting_for_window(database, [info.id], now) == {}
    assert bm.list_campaigns(db=database).loc[0, "waiting_for_window"] == 0
    assert bm.get_campaign("c", db=database).send_window is None


def test_the_worker_holds_and_sends_by_the_window(
    database: dbmod.Database, sink: Sink, tmp_path: Path
) -> None:
    _campaign(database, sink.port, "Mon–Fri 09:00–18:00")
    bm.register(
        "c", _people(database, [{"first_name": "Ján", "email": "jan@firma.sk"}]), db=database
    )
    bm.schedule("c", _utc(2026, 3, 27, 17, 30), db=database)
    clock = ManualClock(start=_utc(2026, 3, 27, 17, 30))
    # The worker polls every 10 minutes (of the manual clock) until nothing is left.
    sent = bm.run_worker(db=database, clock=clock, exit_when_idle=True, poll_interval_s=600.0)
    assert sent == 1
    assert _sent_at(database) == {"jan@firma.sk": _utc(2026, 3, 30, 7)}


def test_the_commands_set_and_show_the_window(
    sqlite_url: str, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    from bulkmail_kernel.cli import main

    database = dbmod.open_database(sqlite_url)
    sink_account(database, sink.port)
    assert main(["create-campaign", "c", "--sender", "sink", "--send-window", "weekdays "
                 "9:00-18:00", "--db", sqlite_url]) == 0  # fmt: skip
    assert "send_window='Mon–Fri 09:00–18:00'" in capsys.readouterr().out
    assert main(["set-send-window", "c", "at 10:00 local", "--db", sqlite_url]) == 0
    assert "send_window='daily at 10:00'" in capsys.readouterr().out
    assert main(["campaign-progress", "c", "--db", sqlite_url]) == 0
    assert "window daily at 10:00 recipient's local time; 0 waiting" in capsys.readouterr().out
    assert main(["set-send-window", "c", "none", "--db", sqlite_url]) == 0
    assert "send_window=None" in capsys.readouterr().out
    assert main(["set-send-window", "c", "Mon-Fry 10:00-12:00", "--db", sqlite_url]) != 0
    assert "'Mon-Fry' is not a day" in capsys.readouterr().err


def test_a_throttled_send_stops_when_the_window_closes_and_goes_on_when_it_opens(
    database: dbmod.Database, sink: Sink
) -> None:
    _campaign(database, sink.port, "Mon–Fri 09:00–18:00")
    rows = [{"first_name": f"K{i}", "email": f"k{i:02d}@firma.sk"} for i in range(30)]
    bm.register("c", _people(database, rows), db=database)
    # Friday 17:59:40 in Bratislava, one message a second: twenty seconds of window left.
    clock = ManualClock(start=_utc(2026, 3, 27, 16, 59, 40))
    summary = bm.send("c", rate_per_hour=3600, burst=1, progress=False, clock=clock, db=database)
    closing = _utc(2026, 3, 27, 17)
    first = _sent_at(database)
    # What was claimed before 18:00 goes (a claim is five seconds' worth), nothing later.
    assert 20 <= summary.sent <= 25
    assert all(t < closing + timedelta(seconds=5) for t in first.values())
    assert summary.remaining == 30 - summary.sent
    monday = _utc(2026, 3, 30, 7)
    with database.engine.connect() as conn:
        waiting = conn.execute(
            sa.select(dbmod.Message.not_before).where(dbmod.Message.status == "queued")
        ).scalars()
        assert set(waiting) == {monday}
    clock.start = monday - timedelta(seconds=clock.elapsed)  # its monotonic time goes on
    bm.send("c", rate_per_hour=3600, burst=1, progress=False, clock=clock, db=database)
    assert len(_sent_at(database)) == 30 == len(sink.messages)
    # Date is set as each leaves (sent_at when it is recorded, a token later when throttled).
    dates = sorted(_date(m.data) for m in sink.messages)
    assert dates[len(first) - 1] < closing + timedelta(seconds=5)
    assert dates[len(first)] == monday


def test_a_retry_that_falls_outside_the_window_waits_for_it(
    database: dbmod.Database, tmp_path: Path
) -> None:
    greylisting = start_sink(tmp_path / "grey", rcpt_replies={"jan@firma.sk": ["451 4.7.1 later"]})
    try:
        _campaign(database, greylisting.port, "Mon–Fri 09:00–18:00")
        _register_jan(database)
        # Friday 17:58 in Bratislava: deferred, its retry due at 18:03, after the close.
        clock = ManualClock(start=_utc(2026, 3, 27, 16, 58))
        assert _send(database, clock) == 0
        assert greylisting.refusals == [("jan@firma.sk", "451 4.7.1 later")]
        clock.start = _utc(2026, 3, 27, 17, 10)  # the retry is due, the window is closed
        assert _send(database, clock) == 0
        assert greylisting.messages == []
        clock.start = _utc(2026, 3, 30, 7)  # Monday 09:00 CEST
        assert _send(database, clock) == 1
        assert _sent_at(database) == {"jan@firma.sk": _utc(2026, 3, 30, 7)}
    finally:
        greylisting.stop()


def test_send_waiting_for_retries_waits_for_the_window_too(
    database: dbmod.Database, sink: Sink
) -> None:
    _campaign(database, sink.port, "Mon–Fri 09:00–18:00")
    _register_jan(database)
    clock = ManualClock(start=_utc(2026, 3, 30, 6, 55))  # Monday 08:55 in Bratislava
    summary = bm.send(
        "c", rate_per_hour=float("inf"), progress=False, clock=clock, wait_for_retries=True,
        db=database,
    )  # fmt: skip
    assert (summary.sent, summary.remaining, summary.status) == (1, 0, "finished")
    assert _sent_at(database) == {"jan@firma.sk": _utc(2026, 3, 30, 7)}


def test_workers_parking_at_the_same_moment_agree(database: dbmod.Database, sink: Sink) -> None:
    _campaign(database, sink.port, "Mon–Fri 09:00–18:00")
    zones = ["Europe/Bratislava", "America/New_York", "Asia/Tokyo"]
    rows = [
        {"first_name": f"K{i}", "email": f"k{i:03d}@example.com", "timezone": zones[i % 3]}
        for i in range(150)
    ]
    bm.register("c", _people(database, rows), db=database)
    now = _utc(2026, 3, 27, 17, 0)  # Friday: 18:00 Bratislava, 13:00 New York, Sat 02:00 Tokyo
    parkers = [Parker(database, 1) for _ in range(3)]
    barrier = threading.Barrier(3)

    def park(p: Parker) -> None:
        barrier.wait()
        p.park(now)

    threads = [threading.Thread(target=park, args=(p,)) for p in parkers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with database.engine.connect() as conn:
        got = conn.execute(
            sa.select(dbmod.Message.timezone, dbmod.Message.not_before).distinct()
        ).all()
    assert set(got) == {
        ("Europe/Bratislava", _utc(2026, 3, 30, 7)),  # Monday 09:00 CEST
        ("America/New_York", None),  # open: goes now
        ("Asia/Tokyo", _utc(2026, 3, 30, 0)),  # Monday 09:00 JST
    }

"""Times in the analyst's zone: "2026-12-03 09:00" is BULKMAIL_TZ time, stored UTC, shown local."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sending_support import make_campaign, sink_account

from bulkmail_kernel import (
    ConfigError,
    SendError,
    create_campaign,
    get_campaign,
    history,
    list_campaigns,
    queue,
    schedule,
    send,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli import main
from bulkmail_kernel.config import to_utc
from bulkmail_kernel.db import Campaign

BRATISLAVA = ZoneInfo("Europe/Bratislava")


@pytest.fixture(autouse=True)
def _default_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BULKMAIL_TZ", raising=False)


def _stored(database: dbmod.Database, name: str) -> datetime:
    with database.engine.connect() as conn:
        value = conn.execute(
            sa.select(Campaign.scheduled_at).where(Campaign.name == name)
        ).scalar_one()
    assert value.tzinfo is not None
    return value


@pytest.mark.parametrize(
    ("given", "utc"),
    [
        ("2026-12-03 09:00", datetime(2026, 12, 3, 8, 0, tzinfo=UTC)),  # CET, +01:00
        ("2026-12-03T09:00:30", datetime(2026, 12, 3, 8, 0, 30, tzinfo=UTC)),
        ("2026-07-01 09:00", datetime(2026, 7, 1, 7, 0, tzinfo=UTC)),  # CEST, +02:00
        (datetime(2026, 12, 3, 9, 0), datetime(2026, 12, 3, 8, 0, tzinfo=UTC)),  # naive: local
        ("2026-12-03T09:00+00:00", datetime(2026, 12, 3, 9, 0, tzinfo=UTC)),  # an offset wins
        ("2026-12-03T09:00Z", datetime(2026, 12, 3, 9, 0, tzinfo=UTC)),
        (datetime(2026, 12, 3, 9, 0, tzinfo=UTC), datetime(2026, 12, 3, 9, 0, tzinfo=UTC)),
    ],
)
def test_text_and_naive_times_are_local_aware_ones_as_they_are(
    given: datetime | str, utc: datetime
) -> None:
    got = to_utc(given)
    assert got == utc
    offset = got.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0


def test_a_time_in_the_spring_gap_is_refused_with_what_to_write() -> None:
    # 2026-03-29: the clocks in Central Europe jump from 02:00 to 03:00.
    with pytest.raises(ConfigError, match="does not exist in Europe/Bratislava") as err:
        to_utc("2026-03-29 02:30")
    assert "03:30" in err.value.message
    assert "01:30" in err.value.message
    assert to_utc("2026-03-29 03:30") == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_a_time_that_happens_twice_in_autumn_is_the_first() -> None:
    # 2026-10-25: 02:00-03:00 happens twice (CEST, then CET); the first is taken.
    assert to_utc("2026-10-25 02:30") == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    # An offset says the second one.
    assert to_utc("2026-10-25T02:30+01:00") == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


def test_nonsense_and_an_unknown_zone_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="is not a date and time"):
        to_utc("tomorrow at nine")
    monkeypatch.setenv("BULKMAIL_TZ", "Europe/Atlantis")
    with pytest.raises(ConfigError, match="BULKMAIL_TZ='Europe/Atlantis'"):
        to_utc("2026-12-03 09:00")


def test_create_campaign_stores_utc_and_shows_local(db_url: str) -> None:
    database = dbmod.open_database(db_url)
    sink_account(database, 2525)
    info = create_campaign("x", sender="sink", scheduled_at="2026-12-03 09:00", db=database)
    assert _stored(database, "x") == datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    # Read back in the analyst's zone, the same moment.
    assert info.scheduled_at == datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    assert info.scheduled_at.tzinfo == BRATISLAVA
    assert info.scheduled_at.hour == 9
    got = get_campaign("x", db=database)
    assert (got.scheduled_at.hour, got.scheduled_at.tzinfo) == (9, BRATISLAVA)
    frame = list_campaigns(db=database)
    assert str(frame["scheduled_at"].dt.tz) == "Europe/Bratislava"
    assert frame["scheduled_at"].iloc[0].hour == 9
    assert str(frame["registered_at"].dt.tz) == "Europe/Bratislava"
    with pytest.raises(ConfigError, match="campaign 'y': scheduled_at 2026-03-29 02:30 does not"):
        create_campaign("y", sender="sink", scheduled_at="2026-03-29 02:30", db=database)


def test_another_zone_from_bulkmail_tz(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKMAIL_TZ", "America/New_York")
    database = dbmod.open_database(db_url)
    sink_account(database, 2525)
    create_campaign("ny", sender="sink", scheduled_at="2026-12-03 09:00", db=database)
    assert _stored(database, "ny") == datetime(2026, 12, 3, 14, 0, tzinfo=UTC)  # EST, -05:00
    frame = list_campaigns(db=database)
    assert str(frame["scheduled_at"].dt.tz) == "America/New_York"
    assert frame["scheduled_at"].iloc[0].strftime("%Y-%m-%d %H:%M") == "2026-12-03 09:00"
    # New York's own spring gap (2026-03-08, 02:00 -> 03:00) is refused there.
    with pytest.raises(ConfigError, match="does not exist in America/New_York"):
        schedule("ny", "2026-03-08 02:15", db=database)


def test_schedule_moves_a_registered_campaign_and_refuses_a_sending_one(sqlite_url: str) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, 2525)
    make_campaign(database, 3, name="later")
    info = schedule("later", "2026-12-24 18:00", db=database)
    assert info.status == "scheduled"
    assert info.scheduled_at == datetime(2026, 12, 24, 17, 0, tzinfo=UTC)
    assert _stored(database, "later") == datetime(2026, 12, 24, 17, 0, tzinfo=UTC)
    with database.engine.begin() as conn:
        conn.execute(sa.update(Campaign).values(status="sending"))
    with pytest.raises(SendError, match="is sending: pause"):
        schedule("later", "2026-12-24 19:00", db=database)


def test_schedule_from_the_shell_is_local_time(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, 2525)
    make_campaign(database, 2, name="shell")
    assert main(["schedule", "shell", "2026-12-03 09:00", "--db", sqlite_url]) == 0
    assert "scheduled" in capsys.readouterr().out
    assert _stored(database, "shell") == datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    assert main(["schedule", "shell", "2026-03-29 02:30", "--db", sqlite_url]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_queue_and_history_frames_are_local(sqlite_url: str, sink: object) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, sink.port)  # type: ignore[attr-defined]
    make_campaign(database, 2, name="now")
    send("now", rate_per_hour=float("inf"), progress=False, db=database)
    q = queue("now", db=database)
    assert str(q["sent_at"].dt.tz) == "Europe/Bratislava"
    assert q["sent_at"].notna().all()
    contact_id = int(q["contact_id"].iloc[0])
    h = history(contact_id, db=database)
    assert str(h["occurred_at"].dt.tz) == "Europe/Bratislava"
    assert "sent" in set(h["kind"])

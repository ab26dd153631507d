"""The monitor's date-time picker: the Schedule button schedules at the picked local time."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import ipywidgets as widgets
import pytest
import sqlalchemy as sa
from sending_support import make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import get_campaign, outbox_monitor
from bulkmail_kernel.db import Campaign


def _stored(database: dbmod.Database, cid: int) -> datetime:
    with database.engine.connect() as conn:
        return conn.execute(sa.select(Campaign.scheduled_at).where(Campaign.id == cid)).scalar_one()


@pytest.mark.parametrize(
    ("zone", "picked", "utc"),
    [
        (None, datetime(2026, 12, 24, 18, 0), datetime(2026, 12, 24, 17, 0, tzinfo=UTC)),
        ("Asia/Tokyo", datetime(2026, 12, 24, 18, 0), datetime(2026, 12, 24, 9, 0, tzinfo=UTC)),
    ],
)
def test_the_schedule_button_schedules_at_the_picked_local_time(
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    zone: str | None,
    picked: datetime,
    utc: datetime,
) -> None:
    if zone is None:
        monkeypatch.delenv("BULKMAIL_TZ", raising=False)
    else:
        monkeypatch.setenv("BULKMAIL_TZ", zone)
    database = dbmod.open_database(sqlite_url)
    sink_account(database, 2525)
    cid = make_campaign(database, 3, name="later")
    m = outbox_monitor("later", refresh_s=0, db=database)
    try:
        assert isinstance(m.when, widgets.NaiveDatetimePicker)
        assert m.when.value is not None  # the next minute, offered first
        assert m.when.value.tzinfo is None
        assert m.when_zone.value == (zone or "Europe/Bratislava")
        m.when.value = picked
        m.schedule_button.click()
        assert m.status.value.startswith(f"scheduled for {picked:%Y-%m-%d %H:%M}")
        assert m.status.value.endswith("now scheduled")
        assert _stored(database, cid) == utc
        assert get_campaign(cid, db=database).status == "scheduled"
        assert "scheduled " + f"{picked:%Y-%m-%d %H:%M}" in m.rate.value  # shown local

        # A time the clocks skip is refused in one line, nothing changed.
        if zone is None:
            m.when.value = datetime(2026, 3, 29, 2, 30)
            m.schedule_button.click()
            assert m.status.value.startswith("not done: campaign 'later': scheduled_at")
            assert "does not exist" in m.status.value
            assert _stored(database, cid) == utc
        m.when.value = None
        m.schedule_button.click()
        assert m.status.value == "pick a date and time first"
    finally:
        m.close()


def test_the_picker_starts_from_the_campaigns_send_time(sqlite_url: str) -> None:
    database = dbmod.open_database(sqlite_url)
    sink_account(database, 2525)
    make_campaign(database, 1, name="set")
    from bulkmail_kernel import schedule

    schedule("set", "2026-12-31 23:30", db=database)
    m = outbox_monitor("set", refresh_s=0, db=database)
    try:
        assert m.when.value == datetime(2026, 12, 31, 23, 30)
    finally:
        m.close()


def test_the_monitor_says_when_a_scheduled_campaign_goes_out_and_who_sends_it(
    sqlite_url: str,
) -> None:
    from datetime import timedelta

    from bulkmail_kernel import schedule
    from bulkmail_kernel.db import Worker, utcnow

    database = dbmod.open_database(sqlite_url)
    sink_account(database, 2525)
    make_campaign(database, 2, name="soon")
    schedule("soon", utcnow() + timedelta(minutes=5), db=database)
    m = outbox_monitor("soon", refresh_s=0, db=database)
    try:
        assert re.search(r"due in [45] min \d\d s", m.rate.value), m.rate.value
        assert "no worker is running to send it" in m.rate.value
        # Its time passed while nobody runs a worker: the monitor says what to do.
        schedule("soon", utcnow() - timedelta(seconds=75), db=database)
        m.refresh()
        assert "due 1 min 15 s ago, but no worker is running" in m.rate.value
        assert "bulkmail_kernel.cli run-worker" in m.rate.value
        now = utcnow()
        with database.session() as s:  # a worker on another machine, beating
            s.add(Worker(id="far:7:x", hostname="far", pid=7, started_at=now, heartbeat_at=now))
        m.refresh()
        assert "a worker takes it at its next look" in m.rate.value
    finally:
        m.close()

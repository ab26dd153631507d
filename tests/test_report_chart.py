"""The campaign chart and the rates in the campaign list, drawn with Agg and read back."""

from __future__ import annotations

import math
import re
import threading
from datetime import UTC, datetime, timedelta

import matplotlib
import matplotlib.pyplot as plt
import pytest
import sqlalchemy as sa
from sending_support import make_campaign, sink_account

from bulkmail_kernel import (
    campaign_timeline,
    create_campaign,
    list_campaigns,
    plot_timeline,
    run_worker,
    send,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns.reports import timeline_freq
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import Event
from bulkmail_kernel.servers.sink import Sink

matplotlib.use("Agg")

# 1 July: Bratislava is UTC+02:00, so 08:00 UTC reads 10:00 on the chart.
T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _bratislava(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKMAIL_TZ", "Europe/Bratislava")


@pytest.fixture(autouse=True)
def _close_figures() -> object:
    yield
    plt.close("all")


def _events(database: dbmod.Database, cid: int, seconds: list[float], kind: str = "sent") -> None:
    """Store ``kind`` events at T0 + each offset, as the send loop would have written them."""
    with database.engine.begin() as conn:
        conn.execute(
            sa.insert(Event),
            [
                {"kind": kind, "campaign_id": cid, "occurred_at": T0 + timedelta(seconds=s)}
                for s in seconds
            ],
        )


def _stored_campaign(sqlite_url: str, name: str) -> tuple[dbmod.Database, int]:
    """Open a real SQLite database with an empty campaign ``name`` (its sends come as events)."""
    database = dbmod.open_database(sqlite_url)
    sink_account(database, 1)  # never connected to: the events are stored directly
    return database, create_campaign(name, sender="sink", db=database).id


def _drawn(ax: matplotlib.axes.Axes) -> list[str]:
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


@pytest.mark.parametrize(
    ("span_s", "freq", "bars"),
    [(0, "1s", 1), (59, "1s", 60), (300, "10s", 31), (7200, "300s", 25), (86400, "1800s", 49)],
)
def test_timeline_freq_gives_at_most_sixty_bars(span_s: int, freq: str, bars: int) -> None:
    assert timeline_freq(T0, T0 + timedelta(seconds=span_s)) == freq
    assert span_s // int(freq[:-1]) + 1 == bars


def test_chart_axis_reads_local_time_with_bins_from_the_duration(sqlite_url: str) -> None:
    database, cid = _stored_campaign(sqlite_url, "leto")
    _events(database, cid, [i * 5.0 for i in range(25)])  # 08:00:00..08:02:00 UTC
    _events(database, cid, [61.0], kind="deferred")
    ax = plot_timeline("leto", db=database)
    labels = _drawn(ax)
    assert labels, "no time labels"
    # Concise labels: the times of day and, once, the date; local (10:0x), never UTC (08:0x).
    assert any(label.startswith("10:0") for label in labels), labels
    assert not any(label.startswith("08:") for label in labels), labels
    assert "2026-Jul-01" in ax.xaxis.get_major_formatter().get_offset()
    assert ax.get_xlabel() == "local time (Europe/Bratislava)"
    assert ax.get_title() == "leto: 25 sent (rate 1,000/h)"  # no run recorded: the campaign's
    # 120 s of sending: 5 s bins (25 of them), one bar per bin that had a send.
    assert ax.get_ylabel() == "messages per 5 seconds"
    widths = {round(p.get_width() * 86400, 6) for p in ax.patches}
    assert widths == {5.0}
    sent, deferred = ax.containers
    assert len(sent.patches) == 25
    assert [p.get_height() for p in deferred.patches if p.get_height()] == [1]
    first = matplotlib.dates.num2date(min(p.get_x() for p in ax.patches), tz=None)
    assert first == T0


def test_two_bins_are_two_bars_not_a_slope(sqlite_url: str) -> None:
    database, cid = _stored_campaign(sqlite_url, "jar")
    _events(database, cid, [0, 10, 20, 70, 80])
    table = campaign_timeline("jar", db=database)
    assert list(table["sent"]) == [3, 2]
    ax = plot_timeline("jar", freq="1min", db=database)
    assert not ax.lines, "drawn as a line"
    assert not ax.collections, "drawn as an area"
    assert sorted(p.get_height() for p in ax.patches) == [2, 3]
    assert {round(p.get_width() * 1440, 6) for p in ax.patches} == {1.0}
    assert ax.get_ylabel() == "messages per minute"


def test_legend_is_outside_the_data_area(sqlite_url: str) -> None:
    database, cid = _stored_campaign(sqlite_url, "zima")
    _events(database, cid, [float(i) for i in range(40)])
    _events(database, cid, [3.0, 4.0], kind="failed")
    ax = plot_timeline("zima", db=database)
    ax.figure.canvas.draw()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["sent", "failed"]
    box = legend.get_window_extent()
    area = ax.get_window_extent()
    assert not box.overlaps(area), (box, area)
    # And it is still on the figure, not cut off.
    assert ax.figure.bbox.contains(box.x1 - 1, box.y0 + 1)


def test_chart_title_names_the_campaign_and_the_rate_achieved(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 11, name="jeseň", rate_per_hour=1000)
    clock = ManualClock(start=T0)
    summary = send("jeseň", rate_per_hour=3000, burst=1, progress=False, db=database, clock=clock)
    assert summary.sent == 11
    ax = plot_timeline("jeseň", db=database)
    # The throttle's clock spaces them ~1.2 s apart: achieved near the 3,000/h asked for.
    assert re.fullmatch(r"jeseň: 11 sent, 3,\d{3}/h achieved \(rate 3,000/h\)", ax.get_title())
    assert plot_timeline(make_campaign(database, 1, name="neskôr", first=50), db=database)
    assert plt.gca().get_title() == "neskôr: nothing sent yet"


def test_list_campaigns_shows_the_rate_the_run_used_and_achieved(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 11, name="jar", rate_per_hour=1000)
    make_campaign(database, 4, name="leto", rate_per_hour=1000, first=100)
    make_campaign(database, 2, name="zima", rate_per_hour=500, first=200)
    clock = ManualClock(start=T0)
    send("jar", rate_per_hour=3000, burst=1, progress=False, db=database, clock=clock)
    send("leto", rate_per_hour=math.inf, progress=False, db=database, clock=clock)
    listed = list_campaigns(db=database).set_index("name")
    assert listed.loc["jar", "rate_per_hour"] == 3000  # not the campaign's 1000
    # 11 messages about 1.2 s apart on the throttle's clock (sent ÷ time between first and last).
    assert listed.loc["jar", "achieved_per_hour"] == pytest.approx(3000, rel=0.15)
    assert math.isinf(listed.loc["leto", "rate_per_hour"])
    assert listed.loc["zima", "rate_per_hour"] == 500  # never sent: the campaign's own
    assert math.isnan(listed.loc["zima", "achieved_per_hour"])
    columns = list(listed.columns)
    assert columns.index("achieved_per_hour") == columns.index("rate_per_hour") + 1


def test_a_worker_run_after_a_faster_send_lists_the_campaigns_own_rate(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 6, name="jar", rate_per_hour=1000)
    stop = threading.Event()
    stop.set()  # the notebook's run ends at once, leaving the campaign sending
    clock = ManualClock(start=T0)
    send("jar", rate_per_hour=3000, progress=False, stop=stop, db=database, clock=clock)
    assert list_campaigns(db=database).set_index("name").loc["jar", "rate_per_hour"] == 3000
    run_worker(db=database, poll_interval_s=0.01, exit_when_idle=True, clock=clock)
    listed = list_campaigns(db=database).set_index("name")
    assert listed.loc["jar", "sent"] == 6
    assert listed.loc["jar", "rate_per_hour"] == 1000  # the worker ran at the campaign's rate

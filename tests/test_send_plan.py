"""The send plan against the engine: a real throttled run into the SMTP sink, and windows.

The plan is honest when what it says is what the send loop then does: the finish of a
real throttled run lands within 2 % of the planned one, and with a manual clock over a
weekend of a clock change every message goes exactly when the plan says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import matplotlib
import pandas as pd
import pytest
import sqlalchemy as sa
from sending_support import make_campaign, sink_account

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli import main
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.servers.sink import Sink

matplotlib.use("Agg")


def _sent_at(database: dbmod.Database) -> dict[int, datetime]:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.select(dbmod.Message.id, dbmod.Message.sent_at)).all()
    return {r.id: r.sent_at for r in rows if r.sent_at is not None}


def _set_zone(database: dbmod.Database, ids: list[int], zone: str | None) -> None:
    with database.engine.begin() as conn:
        conn.execute(
            sa.update(dbmod.Message).where(dbmod.Message.id.in_(ids)).values(timezone=zone)
        )


def test_a_throttled_run_finishes_within_two_percent_of_the_plan(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    # 100 messages, 10 at once, then 4 a second: 22.5 s planned.
    make_campaign(database, 100, rate_per_hour=14400, burst=10)
    plan = bm.send_plan("spring", db=database)
    start, finish = plan.attrs["start"], plan.attrs["finish"]
    planned_s = (finish - start).total_seconds()
    assert planned_s == pytest.approx(22.5, abs=0.05)
    assert plan["planned_at"].is_monotonic_increasing
    assert list(plan["message_id"]) == sorted(plan["message_id"])  # claim order

    summary = bm.send("spring", progress=False, db=database)
    assert summary.sent == 100
    assert len(sink.messages) == 100
    sent = sorted(_sent_at(database).values())
    # From the first message out: opening the SMTP connection is not the plan's to know.
    real_s = (sent[-1] - sent[0]).total_seconds()
    assert abs(real_s - planned_s) <= 0.02 * planned_s, (real_s, planned_s)
    assert bm.send_plan("spring", db=database).empty  # nothing left to plan


def test_with_windows_each_message_goes_when_the_plan_says(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 10, rate_per_hour=360, burst=1)  # one every 10 s
    bm.set_send_window("spring", "Mon–Fri 09:00–18:00", db=database)
    with database.engine.connect() as conn:
        ids = list(conn.execute(sa.select(dbmod.Message.id).order_by(dbmod.Message.id)).scalars())
    _set_zone(database, ids[1::3], "America/New_York")
    _set_zone(database, ids[2::3], "Europe/Bratislava")  # the rest: the firm's zone, the same
    # Friday 27 March 2026, 17:59 in Bratislava: one minute of its window left; then the
    # clocks go forward on Sunday, so Monday's 09:00 is 07:00 UTC, not Friday's 08:00.
    friday = datetime(2026, 3, 27, 16, 59, tzinfo=UTC)
    clock = ManualClock(start=friday)
    plan = bm.send_plan("spring", clock=clock, db=database)
    planned = dict(zip(plan["message_id"], plan["planned_at"], strict=True))
    ny = set(ids[1::3])
    assert all(
        planned[i].tz_convert("UTC") >= pd.Timestamp("2026-03-30 07:00", tz="UTC")
        for i in ids
        if i not in ny and planned[i].tz_convert("UTC") > pd.Timestamp(friday) + timedelta(hours=1)
    )
    monday = [planned[i] for i in ids if planned[i].tz_convert("UTC").day == 30]
    assert monday
    assert min(monday).tz_convert("UTC") == pd.Timestamp("2026-03-30 07:00", tz="UTC")
    assert plan.attrs["window"] == "Mon–Fri 09:00–18:00"

    assert bm.send("spring", progress=False, clock=clock, db=database).remaining > 0
    clock.start = datetime(2026, 3, 30, 6, 0, tzinfo=UTC) - timedelta(seconds=clock.elapsed)
    bm.send("spring", progress=False, clock=clock, wait_for_retries=True, db=database)
    sent = _sent_at(database)
    assert set(sent) == set(ids)
    for i in ids:
        assert abs((sent[i] - planned[i]).total_seconds()) < 0.001, (i, sent[i], planned[i])


def test_deferred_and_scheduled_messages_wait_and_domain_groups_keep_their_limits(
    database: dbmod.Database, sink: Sink
) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 40, rate_per_hour=3600, burst=1)
    now = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    with database.engine.begin() as conn:
        ids = list(conn.execute(sa.select(dbmod.Message.id).order_by(dbmod.Message.id)).scalars())
        conn.execute(
            sa.update(dbmod.Message)
            .where(dbmod.Message.id == ids[0])
            .values(status="deferred", next_attempt_at=now + timedelta(hours=2))
        )
    half = set(ids[::2])

    def group(recipient: str) -> str:
        return "gmail" if int(recipient[4:9]) % 2 == 0 else ""

    plan = bm.send_plan(
        "spring", now=now, domain_limits={"gmail": 360}, group_of=group, db=database
    )
    at = dict(zip(plan["message_id"], plan["planned_at"], strict=True))
    assert at[ids[0]].tz_convert("UTC") == pd.Timestamp(now + timedelta(hours=2))
    assert set(plan.loc[plan["message_id"].isin(half), "domain_group"]) == {"gmail"}
    assert set(plan.loc[~plan["message_id"].isin(half), "domain_group"]) == {"other"}
    # The others go at the campaign's rate, one a second, not held back behind gmail, whose
    # tokens (one every 10 s, taken at the claim) space its messages by 10 s, give or take
    # the campaign token each then waits for.
    others = plan[plan["domain_group"] == "other"]["planned_at"]
    assert (others.max() - others.min()).total_seconds() < 60
    gmail = plan[(plan["domain_group"] == "gmail") & (plan["message_id"] != ids[0])]
    gaps = gmail["planned_at"].sort_values().diff().dropna().dt.total_seconds()
    assert gaps.min() >= 9 - 1e-6
    assert gaps.sum() >= 18 * 10 - 1
    per_hour = bm.plan_per_hour(plan)
    assert int(per_hour.to_numpy().sum()) == 40
    assert set(per_hour.columns) == {"gmail", "other"}
    ax = bm.plot_plan(plan)
    assert "40 planned" in ax.get_title()

    bm.schedule("spring", now + timedelta(days=1), db=database)
    later = bm.send_plan("spring", now=now, db=database)
    assert later.attrs["start"] == pd.Timestamp(now + timedelta(days=1))
    assert later["planned_at"].min() >= later.attrs["start"]


def test_who_gets_both_this_week(
    database: dbmod.Database, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 5, name="spring", rate_per_hour=3600)
    make_campaign(database, 5, name="summer", first=3, rate_per_hour=3600)
    both = bm.plan_overlap("spring", "summer", db=database)
    assert sorted(both["recipient"]) == ["user00003@sk.example.net", "user00004@sk.example.net"]
    bm.schedule("summer", datetime.now(UTC) + timedelta(days=8), db=database)
    assert bm.plan_overlap("spring", "summer", db=database).empty  # not this week
    assert main(["plan-overlap", "spring", "summer", "--days", "9", "--db", database.url]) == 0
    assert capsys.readouterr().out.count("@sk.example.net") == 4  # both addresses, twice


def test_sms_cost_and_bad_input(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 3, rate_per_hour=3600)
    with database.engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.min(dbmod.Message.id))).scalar_one()
        conn.execute(
            sa.update(dbmod.Message)
            .where(dbmod.Message.id == first)
            .values(channel="phone", recipient="+421900123456")
        )
        conn.execute(
            sa.update(dbmod.MessageBody)
            .where(dbmod.MessageBody.message_id == first)
            .values(body=("x" * 200).encode())
        )
    plan = bm.send_plan("spring", sms_price_per_segment=0.05, db=database)
    sms = plan[plan["channel"] == "sms"].iloc[0]
    assert sms["segments"] == 2
    assert sms["cost"] == pytest.approx(0.10)
    assert sms["domain_group"] == "sms"
    assert plan["cost"].isna().sum() == 2
    assert plan.attrs["cost"] == pytest.approx(0.10)
    with pytest.raises(SendError, match="campaign 'nope' does not exist"):
        bm.send_plan("nope", db=database)
    with pytest.raises(ConfigError, match="rate_per_hour=-1"):
        bm.send_plan("spring", rate_per_hour=-1, db=database)
    with pytest.raises(ConfigError, match=r"domain_limits\['gmail'\]=0: give a positive"):
        bm.send_plan("spring", domain_limits={"gmail": 0}, db=database)


def test_cli_prints_the_finish_and_the_hours(
    database: dbmod.Database, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 30, rate_per_hour=3600, burst=1)
    assert main(["send-plan", "spring", "--db", database.url]) == 0
    out = capsys.readouterr().out
    assert "spring: 30 queued, finish " in out
    assert "hour" in out
    assert main(["send-plan", "spring", "--messages", "--csv", "--db", database.url]) == 0
    assert capsys.readouterr().out.count("@sk.example.net") == 30

"""Reports an analyst reads after sending, as DataFrames: nothing here writes.

Per campaign: counts per status, failures, provider-side ids, a timeline and its
plot; across campaigns: the list of campaigns and of suppressions; per contact:
its history.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.complaints import ComplaintRate, complaints_of
from bulkmail_kernel.db import (
    Campaign,
    Database,
    Event,
    Message,
    MessageStatus,
    Suppression,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.db.roles import readable_events
from bulkmail_kernel.display import readable
from bulkmail_kernel.outbox.handover import REF_FIELDS, ref_frame
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.outbox.parking import waiting_for_window
from bulkmail_kernel.outbox.queue import queue
from bulkmail_kernel.outbox.runs import RUN_STARTED
from bulkmail_kernel.outbox.store import OutboxStore
from bulkmail_kernel.records import CampaignRef
from bulkmail_kernel.transports.replies import stored_category

log = logging.getLogger("bulkmail")

# Declarative models' __table__ is a Table; SQLAlchemy's stubs only say FromClause.
_M = cast(sa.Table, Message.__table__)
_STATUSES = ("queued", "sending", "sent", "deferred", "failed", "unknown", "removed")


def list_campaigns(*, db: Database | None = None, url: str | None = None) -> pd.DataFrame:
    """Return every campaign with its status, schedule and message count per status.

    Times are in the analyst's zone (``BULKMAIL_TZ``), as tz-aware columns; ``last_error``
    says why a campaign stopped or was paused by the circuit breaker ("" otherwise).
    ``rate_per_hour`` is the rate its last run (``send()`` or a worker) really used
    (``inf``: unthrottled; the campaign's own rate before any run); ``achieved_per_hour``
    is what went out: messages sent per hour between the first and the last one sent
    (blank under two). ``send_window`` is when its messages may go on each recipient's
    wall clock ("" for any time), ``waiting_for_window`` how many wait for it to open.
    """
    database = resolve_database(db, url)
    counts = (
        sa.select(Message.campaign_id, Message.status, sa.func.count().label("n"))
        .group_by(Message.campaign_id, Message.status)
        .subquery()
    )
    with database.engine.connect() as conn:
        camps = conn.execute(
            sa.select(
                Campaign.id,
                Campaign.name,
                Campaign.channel,
                Campaign.status,
                Campaign.template_name,
                Campaign.rate_per_hour,
                Campaign.scheduled_at,
                Campaign.registered_at,
                Campaign.finished_at,
                Campaign.send_window,
                Campaign.last_error,
            ).order_by(Campaign.id)
        ).all()
        per_status = conn.execute(sa.select(counts)).all()
    frame = pd.DataFrame(
        camps,
        columns=[
            "campaign_id",
            "name",
            "channel",
            "status",
            "template",
            "rate_per_hour",
            "scheduled_at",
            "registered_at",
            "finished_at",
            "send_window",
            "last_error",
        ],
    )
    for col in ("scheduled_at", "registered_at", "finished_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True).dt.tz_convert(config.local_timezone())
    pivot = pd.DataFrame(per_status, columns=["campaign_id", "status", "n"]).pivot_table(
        index="campaign_id", columns="status", values="n", aggfunc="sum", fill_value=0
    )
    pivot = pivot.reindex(columns=list(_STATUSES), fill_value=0)
    frame = frame.join(pivot, on="campaign_id")
    frame[list(_STATUSES)] = frame[list(_STATUSES)].fillna(0).astype("int64")
    runs = _run_rates(database)
    none = _RunRate(None, 0, math.nan)
    frame["rate_per_hour"] = [
        float(set_rate) if runs.get(cid, none).used is None else runs[cid].used
        for cid, set_rate in zip(frame["campaign_id"], frame["rate_per_hour"], strict=True)
    ]
    where = int(frame.columns.get_loc("rate_per_hour")) + 1
    achieved = [runs.get(cid, none).achieved for cid in frame["campaign_id"]]
    frame.insert(where, "achieved_per_hour", pd.Series(achieved, index=frame.index, dtype=float))
    # Held back until their window opens on their recipient's clock (see outbox.parking).
    waiting = waiting_for_window(database, frame["campaign_id"], utcnow())
    frame["send_window"] = frame["send_window"].fillna("").astype("str")
    frame["waiting_for_window"] = frame["campaign_id"].map(waiting).fillna(0).astype("int64")
    # The reason last: a long line after the counts, not between them.
    return readable(frame[[c for c in frame.columns if c != "last_error"] + ["last_error"]])


def list_suppressions(
    *,
    reason: str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the suppressed addresses (unsubscribes, hard bounces, ...), newest first."""
    database = resolve_database(db, url)
    query = sa.select(
        Suppression.created_at,
        Suppression.channel,
        Suppression.normalized.label("address"),
        Suppression.reason,
        Suppression.detail,
    ).order_by(Suppression.created_at.desc(), Suppression.id.desc())
    if reason is not None:
        query = query.where(Suppression.reason == reason)
    with database.engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["created_at", "channel", "address", "reason", "detail"])
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True).dt.tz_convert(
        config.local_timezone()
    )
    return readable(frame)


def history(contact_id: int, *, db: Database | None = None, url: str | None = None) -> pd.DataFrame:
    """Return everything that happened to contact ``contact_id``, oldest first (local times)."""
    database = resolve_database(db, url)
    ev = Event.__table__
    query = (
        sa.select(
            ev.c.occurred_at,
            ev.c.kind,
            Campaign.name.label("campaign"),
            ev.c.message_id,
            _M.c.recipient,
            ev.c.detail,
        )
        .select_from(ev)
        .join(Campaign, Campaign.id == ev.c.campaign_id, isouter=True)
        .join(_M, _M.c.id == ev.c.message_id, isouter=True)
        .where(ev.c.contact_id == contact_id)
        .order_by(ev.c.occurred_at, ev.c.id)
    )
    with database.engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(
        rows, columns=["occurred_at", "kind", "campaign", "message_id", "recipient", "detail"]
    )
    frame["occurred_at"] = (
        pd.to_datetime(frame["occurred_at"], utc=True)
        .astype("datetime64[us, UTC]")
        .dt.tz_convert(config.local_timezone())
    )
    frame["message_id"] = frame["message_id"].astype("Int64")
    return readable(frame)


def campaign_report(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return the campaign's message count per status (every status, zeros included).

    ``frame.attrs["clicks"]`` counts tracked clicks (counted, messages clicked, flagged as
    scanner traffic). ``frame.attrs["complaints"]`` is the campaign's
    :class:`~bulkmail_kernel.campaigns.complaints.ComplaintRate` (complaints ÷ sent,
    with a warning from 0.1 %); ``bulkmail report`` prints its line.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        cid = campaign_row(s, campaign).id
        complaints = complaints_of(s, cid)
        tracked = s.execute(
            sa.select(Event.kind, sa.func.count(), sa.func.count(sa.distinct(Event.message_id)))
            .where(Event.campaign_id == cid, Event.kind.in_(("clicked", "click_flagged")))
            .group_by(Event.kind)
        ).all()
    counts = OutboxStore(database, "report").counts(cid)
    statuses = [m.value for m in MessageStatus]
    frame = pd.DataFrame(
        {"messages": [counts.get(k, 0) for k in statuses]},
        index=pd.Index(statuses, name="status"),
    )
    total = int(frame["messages"].sum())
    frame["share"] = frame["messages"] / total if total else 0.0
    rate = ComplaintRate(complaints, counts.get(MessageStatus.SENT.value, 0))
    frame.attrs["complaints"] = rate
    by_kind = {k: (int(n), int(m)) for k, n, m in tracked}
    # Tracked campaigns only (docs/tracking.md): counted clicks, messages clicked, scanner hits.
    frame.attrs["clicks"] = {
        "clicks": by_kind.get("clicked", (0, 0))[0],
        "messages_clicked": by_kind.get("clicked", (0, 0))[1],
        "flagged": by_kind.get("click_flagged", (0, 0))[0],
    }
    if rate.warning:
        log.warning("campaign %s: %s", campaign, rate.warning)
    return readable(frame)


def campaign_failures(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return the failed, removed and unknown messages with their code and reason.

    ``category`` says why a failed one failed: mailbox (suppressed), policy, system,
    content, size, sender, mailbox_full, gave_up (retries expired), bounce (see
    ``transports.replies``).
    """
    bad = [MessageStatus.FAILED.value, MessageStatus.REMOVED.value, MessageStatus.UNKNOWN.value]
    frame = queue(campaign, status=bad, db=db, url=url)
    frame["category"] = [
        stored_category(str(st), code if isinstance(code, str) else None, str(err or ""))
        for st, code, err in zip(
            frame["status"], frame["last_code"], frame["last_error"], strict=True
        )
    ]
    return readable(
        frame[
            ["message_id", "recipient", "status", "attempts", "last_code", "category", "last_error"]
        ]
    )


def provider_status(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return the provider-side ids and status stored on the campaign (one row per provider).

    For a campaign handed to SendPulse: its address book and campaign ids, the status
    as last seen (``sendpulse_report()`` asks SendPulse again). Empty when the campaign
    went out message by message (SMTP, EuroSMS) and has no provider-side campaign.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        ref = dict(campaign_row(s, campaign).provider_ref or {})
    rows = [
        [provider] + [dict(info or {}).get(k) for k in REF_FIELDS]
        for provider, info in sorted(ref.items())
        if isinstance(info, dict)
    ]
    return ref_frame("provider", rows)


def campaign_timeline(
    campaign: CampaignRef,
    *,
    freq: str | None = "1min",
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return attempts per ``freq`` interval (local time) and outcome (sent, deferred, ...).

    ``freq=None`` picks the interval from how long the campaign took (see
    :func:`timeline_freq`); ``frame.attrs["freq"]`` says which one was used.
    """
    database = resolve_database(db, url)
    ev = Event.__table__
    kinds = list(_KINDS)
    with database.session() as s:
        cid = campaign_row(s, campaign).id
        rows = s.execute(
            sa.select(ev.c.occurred_at, ev.c.kind).where(
                ev.c.campaign_id == cid, ev.c.kind.in_(kinds)
            )
        ).all()
    frame = pd.DataFrame(rows, columns=["occurred_at", "kind"])
    zone = config.local_timezone()
    # Local intervals: a day (freq="1D") is the analyst's day, not UTC's.
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True).dt.tz_convert(zone)
    if frame.empty:
        empty = pd.DataFrame(columns=kinds, index=pd.DatetimeIndex([], tz=zone, name="time"))
        empty.attrs["freq"] = freq or "1min"
        return readable(empty)
    if freq is None:
        freq = timeline_freq(frame["occurred_at"].min(), frame["occurred_at"].max())
    table = (
        frame.groupby([pd.Grouper(key="occurred_at", freq=freq), "kind"])
        .size()
        .unstack("kind", fill_value=0)
        .reindex(columns=kinds, fill_value=0)
    )
    table.index.name = "time"
    table.columns.name = None
    table.attrs["freq"] = freq
    return readable(table)


_KINDS = ("sent", "deferred", "failed", "unknown")
_COLOURS = {"sent": "#2a9d8f", "deferred": "#e9c46a", "failed": "#e76f51", "unknown": "#8d99ae"}
#: Bin widths to choose from, in seconds: the narrowest that gives at most _MAX_BARS bars.
_BIN_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
_MAX_BARS = 60


def timeline_freq(first: datetime, last: datetime) -> str:
    """Return the bin width (a pandas frequency) that shows ``first``..``last`` in ≤ 60 bars."""
    span = (last - first).total_seconds()
    for seconds in _BIN_STEPS:
        if span // seconds + 1 <= _MAX_BARS:
            return f"{seconds}s"
    return f"{int(span // (86400 * _MAX_BARS)) + 1}D"


def _per(freq: str) -> str:
    """Return ``freq`` as words for an axis label: "minute", "5 minutes", "2 hours"."""
    try:
        seconds = int(pd.Timedelta(pd.tseries.frequencies.to_offset(freq)).total_seconds())
    except ValueError:  # a calendar frequency (month, week): no fixed length
        return freq
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % size == 0:
            n = seconds // size
            return unit if n == 1 else f"{n} {unit}s"
    return freq


@dataclass(frozen=True)
class _RunRate:
    """The rate a campaign's last send() ran at and what it achieved (per hour).

    ``used`` is None when no run recorded its rate (none yet, or one from before runs were
    recorded), ``inf`` when the run was unthrottled.
    """

    used: float | None
    sent: int
    achieved: float


def _run_rates(database: Database, campaign_id: int | None = None) -> dict[int, _RunRate]:
    """Return per campaign id the rate its last recorded run used and the rate it achieved."""
    ev = readable_events(database)  # the analyst reads the rate through events_masked
    started = (
        sa.select(ev.c.campaign_id, ev.c.data)
        .where(ev.c.kind == RUN_STARTED)
        .order_by(ev.c.id)  # recorded order: a test's manual clock may lag the real one
    )
    sent = (
        sa.select(
            _M.c.campaign_id, sa.func.count(), sa.func.min(_M.c.sent_at), sa.func.max(_M.c.sent_at)
        )
        .where(_M.c.status == MessageStatus.SENT.value, _M.c.sent_at.is_not(None))
        .group_by(_M.c.campaign_id)
    )
    if campaign_id is not None:
        started = started.where(ev.c.campaign_id == campaign_id)
        sent = sent.where(_M.c.campaign_id == campaign_id)
    with database.engine.connect() as conn:
        # In recorded order, so the last run's rate is the one left in the dict.
        used = {cid: _used_rate(data) for cid, data in conn.execute(started)}
        spans = conn.execute(sent).all()
    out: dict[int, _RunRate] = {}
    for cid, n, first, last in spans:
        span = (pd.Timestamp(last) - pd.Timestamp(first)).total_seconds()
        # n messages over the span between the first and the last: n - 1 gaps.
        achieved = (n - 1) / span * 3600.0 if n > 1 and span > 0 else math.nan
        out[cid] = _RunRate(used.get(cid), int(n), achieved)
    for cid, rate in used.items():
        out.setdefault(cid, _RunRate(rate, 0, math.nan))
    return out


def _used_rate(data: dict[str, Any] | None) -> float:
    """Return the rate a ``sending started`` event recorded (JSON null: unthrottled)."""
    rate = dict(data or {}).get("rate_per_hour")
    return math.inf if rate is None else float(rate)


def plot_timeline(
    campaign: CampaignRef,
    *,
    freq: str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> Any:
    """Plot the campaign's attempts per interval as stacked bars; return the matplotlib Axes.

    The time axis is in the analyst's zone (``BULKMAIL_TZ``); ``freq=None`` picks the bin
    width from the campaign's duration (at most 60 bars); the legend sits right of the
    plot; the title gives the rate the last run used and the rate it achieved.
    """
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    database = resolve_database(db, url)
    with database.session() as s:
        row = campaign_row(s, campaign)
        cid, name, set_rate = row.id, row.name, float(row.rate_per_hour)
    table = campaign_timeline(cid, freq=freq, db=database)
    _fig, ax = plt.subplots(figsize=(9, 3.2), layout="constrained")
    if table.empty:
        ax.set_title(f"{name}: nothing sent yet")
        return ax
    bin_freq = str(table.attrs["freq"])
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(bin_freq))
    zone = config.local_zone()
    starts = [t.to_pydatetime() for t in table.index]
    bottom = [0] * len(table)
    for kind in _KINDS:
        counts = [int(v) for v in table[kind]]
        if not any(counts):
            continue
        # Bars over [start, start + step): one bin is one bar, never a slope to the next.
        ax.bar(
            starts,
            counts,
            width=step.to_pytimedelta(),
            bottom=bottom,
            align="edge",
            label=kind,
            color=_COLOURS[kind],
            edgecolor="white",
            linewidth=0.5,
        )
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    locator = mdates.AutoDateLocator(tz=zone)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone))
    ax.set_xlim(starts[0] - step.to_pytimedelta() / 2, starts[-1] + step.to_pytimedelta() * 1.5)
    ax.set_xlabel(f"local time ({zone.key})")
    ax.set_ylabel(f"messages per {_per(bin_freq)}")
    # Outside the axes, so it never covers a bar; constrained layout makes room for it.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    sent = int(table["sent"].sum())
    ax.set_title(_rate_title(name, sent, set_rate, _run_rates(database, cid).get(cid)))
    return ax


def _rate_title(name: str, sent: int, set_rate: float, run: _RunRate | None) -> str:
    """Return the chart title: the campaign, how many it sent, the rate used and achieved."""
    used = set_rate if run is None or run.used is None else run.used
    rate = "unthrottled" if math.isinf(used) else f"rate {used:,.0f}/h"
    if not sent:
        return f"{name}: nothing sent yet ({rate})"
    achieved = (
        "" if run is None or math.isnan(run.achieved) else f", {run.achieved:,.0f}/h achieved"
    )
    return f"{name}: {sent:,} sent{achieved} ({rate})"

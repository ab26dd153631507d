"""Reports an analyst reads after sending, as DataFrames: nothing here writes.

Per campaign: counts per status, failures, provider-side ids, a timeline and its
plot; across campaigns: the list of campaigns and of suppressions; per contact:
its history.
"""

from __future__ import annotations

import logging
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
)
from bulkmail_kernel.display import readable
from bulkmail_kernel.outbox.handover import REF_FIELDS
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.outbox.queue import queue
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

    ``frame.attrs["complaints"]`` is the campaign's
    :class:`~bulkmail_kernel.campaigns.complaints.ComplaintRate` (complaints ÷ sent,
    with a warning from 0.1 %); ``bulkmail report`` prints its line.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        cid = campaign_row(s, campaign).id
        complaints = complaints_of(s, cid)
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


_PROVIDER_COLUMNS = ["provider", *REF_FIELDS]


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
        [provider] + [dict(info or {}).get(k) for k in _PROVIDER_COLUMNS[1:]]
        for provider, info in sorted(ref.items())
        if isinstance(info, dict)
    ]
    return readable(pd.DataFrame(rows, columns=_PROVIDER_COLUMNS))


def campaign_timeline(
    campaign: CampaignRef,
    *,
    freq: str = "1min",
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return attempts per ``freq`` interval (local time) and outcome (sent, deferred, ...)."""
    database = resolve_database(db, url)
    ev = Event.__table__
    kinds = ["sent", "deferred", "failed", "unknown"]
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
        return pd.DataFrame(columns=kinds, index=pd.DatetimeIndex([], tz=zone, name="time"))
    table = (
        frame.groupby([pd.Grouper(key="occurred_at", freq=freq), "kind"])
        .size()
        .unstack("kind", fill_value=0)
        .reindex(columns=kinds, fill_value=0)
    )
    table.index.name = "time"
    table.columns.name = None
    return table


def plot_timeline(
    campaign: CampaignRef,
    *,
    freq: str = "1min",
    db: Database | None = None,
    url: str | None = None,
) -> Any:
    """Plot the campaign's attempts per ``freq`` interval by outcome; return the matplotlib Axes."""
    import matplotlib.pyplot as plt

    table = campaign_timeline(campaign, freq=freq, db=db, url=url)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    if table.empty:
        ax.set_title("nothing sent yet")
        return ax
    if len(table) < 2:
        # A campaign sent within one interval: pad with empty ones so the area has a width.
        step = pd.tseries.frequencies.to_offset(freq)
        first = table.index[0]
        table = table.reindex([first - step, first, first + step], fill_value=0)
    table.plot(ax=ax, kind="area", stacked=True, linewidth=0, alpha=0.8)
    ax.set_xlabel(f"time ({config.local_timezone()})")
    ax.set_ylabel(f"messages per {freq}")
    ax.set_title(f"campaign {campaign!s}: attempts over time")
    fig.tight_layout()
    return ax

"""Reports an analyst reads after sending: campaigns at a glance, suppressions, a timeline plot.

Per-campaign counts, failures and per-contact history live with the send loop
(``sending.campaign_report``, ``campaign_failures``, ``history``); this module adds
the cross-campaign views and the plot.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.campaigns.campaigns import CampaignRef
from bulkmail_kernel.db import Campaign, Database, Message, Suppression, open_database
from bulkmail_kernel.engine.sending import campaign_timeline

_STATUSES = ("queued", "sending", "sent", "deferred", "failed", "unknown", "removed")


def _database(db: Database | None, url: str | None) -> Database:
    return db or open_database(url)


def list_campaigns(*, db: Database | None = None, url: str | None = None) -> pd.DataFrame:
    """Return every campaign with its status, schedule and message count per status."""
    database = _database(db, url)
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
        ],
    )
    for col in ("scheduled_at", "registered_at", "finished_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    pivot = pd.DataFrame(per_status, columns=["campaign_id", "status", "n"]).pivot_table(
        index="campaign_id", columns="status", values="n", aggfunc="sum", fill_value=0
    )
    pivot = pivot.reindex(columns=list(_STATUSES), fill_value=0)
    frame = frame.join(pivot, on="campaign_id")
    frame[list(_STATUSES)] = frame[list(_STATUSES)].fillna(0).astype("int64")
    return frame


def list_suppressions(
    *,
    reason: str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the suppressed addresses (unsubscribes, hard bounces, ...), newest first."""
    database = _database(db, url)
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
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame


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
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(f"messages per {freq}")
    ax.set_title(f"campaign {campaign!s}: attempts over time")
    fig.tight_layout()
    return ax

"""Reading a send plan: sends per hour by domain group, its chart, and who gets two campaigns.

The plan itself is :func:`bulkmail_kernel.campaigns.plan.send_plan`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.plan import send_plan
from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.db import Database, resolve_database
from bulkmail_kernel.records import CampaignRef


def plan_per_hour(plan: pd.DataFrame) -> pd.DataFrame:
    """Return the plan's sends per hour (rows, local time) by domain group (columns)."""
    if plan.empty:
        return pd.DataFrame(dtype="int64")
    hours = plan["planned_at"].dt.floor("h")
    table = pd.crosstab(hours, plan["domain_group"]).rename_axis(index="hour", columns=None)
    return table.astype("int64")


def plot_plan(plan: pd.DataFrame, *, top: int = 8) -> Any:
    """Plot the plan's sends per hour as bars stacked by domain group; return the Axes."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    _fig, ax = plt.subplots(figsize=(9, 3.2), layout="constrained")
    table = plan_per_hour(plan)
    name = plan.attrs.get("campaign", "plan")
    if table.empty:
        ax.set_title(f"{name}: nothing queued")
        return ax
    keep = list(table.sum().sort_values(ascending=False).index[:top])
    if len(table.columns) > top:  # the long tail of small domains as one bar
        table = table[keep].assign(others=table.drop(columns=keep).sum(axis=1))
    starts = [t.to_pydatetime() for t in table.index]
    bottom = np.zeros(len(table))
    for group in table.columns:
        counts = table[group].to_numpy()
        ax.bar(starts, counts, width=1 / 24, bottom=bottom, align="edge", label=group)
        bottom += counts
    zone = config.local_zone()
    locator = mdates.AutoDateLocator(tz=zone)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone))
    ax.set_xlabel(f"local time ({zone.key})")
    ax.set_ylabel("messages per hour")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    finish = plan.attrs.get("finish")
    ax.set_title(f"{name}: {len(plan):,} planned, finish {finish:%Y-%m-%d %H:%M}")
    return ax


def plan_overlap(
    campaign: CampaignRef,
    other: CampaignRef,
    *,
    days: float = 7.0,
    now: datetime | None = None,
    clock: Clock = SYSTEM_CLOCK,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the contacts planned to get both campaigns within ``days`` from now.

    Who gets both this week: one row per contact with a queued message in each campaign
    planned before now + ``days``, with both planned times and the gap between them.
    """
    database = resolve_database(db, url)
    at = now or clock.now()
    horizon = pd.Timestamp(at + timedelta(days=days))
    mine = send_plan(campaign, now=at, db=database)
    theirs = send_plan(other, now=at, db=database)
    cols = ["contact_id", "recipient", "planned_at"]
    a = mine.loc[mine["planned_at"] < horizon, cols].drop_duplicates("contact_id")
    b = theirs.loc[theirs["planned_at"] < horizon, cols].drop_duplicates("contact_id")
    both = a.merge(b, on="contact_id", suffixes=("", "_other"))
    both["gap"] = (both["planned_at_other"] - both["planned_at"]).abs()
    return both.sort_values("planned_at").reset_index(drop=True)

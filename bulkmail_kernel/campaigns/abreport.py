"""The A/B test report: each arm's click and conversion rates, intervals, uplift and tests.

Clicks are the ``events`` rows of kind ``clicked`` the click-tracking endpoint records
(scanner traffic is never written as such): a click rate is unique clickers per
message sent. Conversions come from a frame the analyst joins (orders from the
accounting system: ``contact_id`` and ``converted`` or ``amount``); a conversion rate
is converted contacts per contact assigned to the arm (intent to treat: the holdout
got nothing, so assignment is the only fair common ground). Statistics: :mod:`.abstats`.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.campaigns.abstats import CONFIDENCE, compare, wilson_interval
from bulkmail_kernel.db import (
    AbAssignment,
    Database,
    Event,
    Message,
    MessageStatus,
    resolve_database,
)
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.records import CampaignRef

#: The click events counted (written by the tracking endpoint, scanners left out).
CLICKED = "clicked"


def assignments(database: Database, campaign: CampaignRef) -> tuple[dict[str, Any], pd.DataFrame]:
    """Return the test's set-up and one row per assigned recipient (arm, status, clicked)."""
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid, name, test = c.id, c.name, dict(c.ab_test or {})
    if not test:
        raise SendError(f"campaign {name!r} has no A/B test: create_ab_test() first", campaign=name)
    a = AbAssignment.__table__
    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.select(a.c.contact_point_id, a.c.contact_id, a.c.arm, Message.id, Message.status)
            .select_from(a)
            .join(
                Message,
                sa.and_(
                    Message.campaign_id == a.c.campaign_id,
                    Message.contact_point_id == a.c.contact_point_id,
                ),
                isouter=True,
            )
            .where(a.c.campaign_id == cid)
        ).all()
        clicked = set(
            conn.execute(
                sa.select(Event.message_id)
                .where(Event.campaign_id == cid, Event.kind == CLICKED)
                .distinct()
            ).scalars()
        )
    frame = pd.DataFrame(
        [(r[0], r[1], r[2], r[3], r[4]) for r in rows],
        columns=["contact_point_id", "contact_id", "arm", "message_id", "status"],
    )
    frame["clicked"] = frame["message_id"].isin(clicked) & frame["message_id"].notna()
    test["campaign_id"], test["campaign"] = cid, name
    return test, frame


def converted_contacts(campaign: str, conversions: pd.DataFrame) -> set[int]:
    """Return the contact ids that converted: ``converted`` true, or ``amount`` above 0."""
    if not isinstance(conversions, pd.DataFrame) or "contact_id" not in conversions.columns:
        raise ConfigError(
            f"campaign {campaign!r}: conversions: give a DataFrame with a 'contact_id' column "
            "and 'converted' (true/false) or 'amount' (0 for none)",
            campaign=campaign,
            field="conversions",
        )
    if "converted" in conversions.columns:
        column = "converted"
        flag = conversions["converted"]
        if pd.api.types.is_string_dtype(flag):
            flag = flag.str.strip().str.lower().isin(("1", "true", "yes", "y"))
    elif "amount" in conversions.columns:
        column = "amount"
        flag = pd.to_numeric(conversions["amount"], errors="coerce").fillna(0) > 0
    else:
        raise ConfigError(
            f"campaign {campaign!r}: conversions has columns {list(conversions.columns)}: add "
            "'converted' (true/false) or 'amount' beside 'contact_id'",
            campaign=campaign,
            field="conversions",
        )
    ids = pd.to_numeric(conversions["contact_id"], errors="coerce")
    bad = conversions.index[ids.isna()]
    if len(bad):
        raise ConfigError(
            f"campaign {campaign!r}: conversions row {bad[0]}: contact_id "
            f"{conversions['contact_id'].iloc[list(conversions.index).index(bad[0])]!r} is not "
            f"a contact id: fix or drop the row (the {column!r} rows need one)",
            campaign=campaign,
            row=int(bad[0]) if isinstance(bad[0], int) else str(bad[0]),
        )
    return {int(i) for i, f in zip(ids, flag.fillna(False).astype(bool), strict=True) if f}


def ab_report(
    campaign: CampaignRef,
    conversions: pd.DataFrame | None = None,
    *,
    confidence: float = CONFIDENCE,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return one row per arm (variants, holdout, rest): rates with intervals, uplift, p-values.

    Columns: arm, subject, assigned, sent, clickers, click_rate, click_low, click_high
    (Wilson interval), click_diff_vs_best, click_p_vs_best (two-proportion z-test of the
    arm against the best other variant); with ``conversions`` (or the ones
    ``pick_winner`` was given) also converted, conversion_rate, conversion_low/high,
    uplift (conversion rate minus the holdout's), uplift_low/high (Newcombe interval) and
    p_vs_holdout; and winner. ``frame.attrs`` holds metric, seed, wait_s, winner and
    decided_at.
    """
    database = resolve_database(db, url)
    test, frame = assignments(database, campaign)
    name = test["campaign"]
    converted: set[int] | None = None
    if conversions is not None:
        converted = converted_contacts(name, conversions)
    elif test.get("converted_contacts") is not None:
        converted = set(test["converted_contacts"])
    subjects = {v["name"]: v["subject"] for v in test["variants"]}
    variants = list(subjects)
    sent = frame["status"] == MessageStatus.SENT.value
    counts = {}
    for arm in [*variants, "holdout", "rest"]:
        mine = frame["arm"] == arm
        counts[arm] = (
            int(mine.sum()),
            int((mine & sent).sum()),
            int((mine & frame["clicked"]).sum()),
        )
    rows = []
    for arm, (assigned, n_sent, clicks) in counts.items():
        low, high = wilson_interval(clicks, n_sent, confidence)
        row: dict[str, Any] = {
            "arm": arm,
            "subject": subjects.get(arm)
            or ((test.get("winner_subject") or "") if arm == "rest" else ""),
            "assigned": assigned,
            "sent": n_sent,
            "clickers": clicks,
            "click_rate": clicks / n_sent if n_sent else math.nan,
            "click_low": low,
            "click_high": high,
        }
        others = [v for v in variants if v != arm and counts[v][1]]
        if arm in variants and others:
            best = max(others, key=lambda v: counts[v][2] / counts[v][1])
            cmp = compare(clicks, n_sent, counts[best][2], counts[best][1], confidence)
            row["click_diff_vs_best"], row["click_p_vs_best"] = cmp.difference, cmp.p_value
        else:
            row["click_diff_vs_best"], row["click_p_vs_best"] = math.nan, math.nan
        rows.append(row)
    if converted is not None:
        hold_n = counts["holdout"][0]
        hold_c = int(frame.loc[frame["arm"] == "holdout", "contact_id"].isin(converted).sum())
        for row in rows:
            mine = frame[frame["arm"] == row["arm"]]
            conv = int(mine["contact_id"].isin(converted).sum())
            low, high = wilson_interval(conv, len(mine), confidence)
            row |= {
                "converted": conv,
                "conversion_rate": conv / len(mine) if len(mine) else math.nan,
                "conversion_low": low,
                "conversion_high": high,
            }
            if row["arm"] == "holdout":
                row |= {
                    "uplift": math.nan,
                    "uplift_low": math.nan,
                    "uplift_high": math.nan,
                    "p_vs_holdout": math.nan,
                }
            else:
                cmp = compare(conv, len(mine), hold_c, hold_n, confidence)
                row |= {
                    "uplift": cmp.difference,
                    "uplift_low": cmp.low,
                    "uplift_high": cmp.high,
                    "p_vs_holdout": cmp.p_value,
                }
    for row in rows:
        row["winner"] = row["arm"] == test.get("winner")
    out = pd.DataFrame(rows)
    out["arm"] = out["arm"].astype("str")
    out["subject"] = out["subject"].astype("str")
    out.attrs.update(
        {k: test.get(k) for k in ("metric", "seed", "wait_s", "winner", "decided_at", "decided_by")}
        | {"confidence": confidence, "campaign": name}
    )
    return out

"""A/B tests with a holdout: variants to a seeded sample, a wait, a winner, then the rest.

``create_ab_test(campaign, variants=[...], sample=0.2, holdout=0.1, wait="4h")`` splits
the campaign's recipients with a seeded shuffle into a holdout (no message, but
recorded in ``ab_assignments`` so it can be compared), the test sample (dealt to the
variants in turn) and the rest, and registers the sample's messages, each with its
variant's template. Sending them goes through the normal outbox and worker. Once every
variant message is out and ``wait`` has passed since the last one, a worker (run with
:func:`ab_test_step`) picks the variant with the best click rate and registers the rest
with it; with ``metric="conversions"`` the analyst calls ``pick_winner(campaign,
conversions=orders)`` instead. ``ab_report(campaign)`` shows the numbers
(:mod:`.abreport`, statistics in :mod:`.abstats`).
"""

from __future__ import annotations

import logging
import random
import re
import secrets
from dataclasses import replace as dc_replace
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.campaigns.abreport import ab_report, assignments, converted_contacts
from bulkmail_kernel.campaigns.campaigns import recipients_of, schedule
from bulkmail_kernel.campaigns.registration import register
from bulkmail_kernel.campaigns.rendering import template_of, template_source
from bulkmail_kernel.compose.templates import Template, load_template
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.db import (
    AbAssignment,
    Campaign,
    CampaignStatus,
    Database,
    Message,
    MessageStatus,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.exceptions import BulkmailError, ConfigError, SendError
from bulkmail_kernel.outbox.events import add_events
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.records import CampaignRef

log = logging.getLogger("bulkmail")

METRICS = ("clicks", "conversions")
#: Arm names a variant may not take: they name the groups without a variant.
RESERVED = ("holdout", "rest")
_OPEN = (MessageStatus.QUEUED.value, MessageStatus.SENDING.value, MessageStatus.DEFERRED.value)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def wait_seconds(wait: str | float | timedelta, *, where: str = "create_ab_test") -> float:
    """Return ``wait`` ("4h", "30m", "2d", seconds, a timedelta) in seconds."""
    if isinstance(wait, timedelta):
        seconds = wait.total_seconds()
    elif isinstance(wait, int | float) and not isinstance(wait, bool):
        seconds = float(wait)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|m|h|d)\s*", str(wait))
        if m is None:
            raise ConfigError(
                f"{where}: wait={wait!r}: give a duration such as '4h', '30m', '2d' or seconds",
                field="wait",
            )
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ConfigError(f"{where}: wait={wait!r}: give a duration of 0 or more", field="wait")
    return seconds


def _variants(name: str, variants: Any, base: Template) -> list[tuple[str, Template]]:
    """Return (name, template) of each variant, checked: a subject and/or a template each."""
    if not isinstance(variants, list | tuple) or len(variants) < 2:
        raise ConfigError(
            f"create_ab_test {name!r}: variants={variants!r}: give a list of at least two, "
            "e.g. [{'subject': 'Spring sale'}, {'subject': '20 % off'}]",
            campaign=name,
            field="variants",
        )
    out: list[tuple[str, Template]] = []
    for i, v in enumerate(variants):
        label = chr(ord("A") + i) if i < 26 else f"V{i + 1}"
        if isinstance(v, str):
            v = {"subject": v}
        if not isinstance(v, dict) or not (set(v) <= {"name", "subject", "template"}):
            raise ConfigError(
                f"create_ab_test {name!r}: variant {i + 1} ({v!r}): give a dict with "
                "'subject' and/or 'template' (and optionally 'name')",
                campaign=name,
                variant=i + 1,
            )
        vname = str(v.get("name") or label)
        if vname in RESERVED or vname in [n for n, _ in out]:
            raise ConfigError(
                f"create_ab_test {name!r}: variant {i + 1} is named {vname!r}, which is "
                f"{'reserved' if vname in RESERVED else 'taken'}: give each variant its own name",
                campaign=name,
                variant=vname,
            )
        if not v.get("subject") and v.get("template") is None:
            raise ConfigError(
                f"create_ab_test {name!r}: variant {vname!r} has neither 'subject' nor "
                "'template': say what differs in it",
                campaign=name,
                variant=vname,
            )
        tmpl = v.get("template")
        t = base if tmpl is None else (load_template(tmpl) if isinstance(tmpl, str) else tmpl)
        if v.get("subject"):
            t = dc_replace(t, subject=str(v["subject"]))
        out.append((vname, t))
    return out


def _fraction(name: str, field: str, value: float, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < 1:
        raise ConfigError(
            f"create_ab_test {name!r}: {field}={value!r}: give a share of the recipients, "
            f"{low:g} <= {field} < 1 (0.2 is 20 %)",
            campaign=name,
            field=field,
        )
    return float(value)


def split(
    point_ids: list[int], arms: list[str], sample: float, holdout: float, seed: int
) -> dict[int, str]:
    """Return each contact point's arm: a seeded shuffle, holdout first, then the variants."""
    ids = sorted(set(point_ids))
    random.Random(seed).shuffle(ids)
    n_hold = round(holdout * len(ids))
    n_sample = round(sample * len(ids))
    out = {pid: "holdout" for pid in ids[:n_hold]}
    for k, pid in enumerate(ids[n_hold : n_hold + n_sample]):
        out[pid] = arms[k % len(arms)]
    out.update({pid: "rest" for pid in ids[n_hold + n_sample :]})
    return out


def create_ab_test(
    campaign: CampaignRef,
    variants: list[dict[str, Any]] | list[str],
    *,
    sample: float = 0.2,
    holdout: float = 0.1,
    wait: str | float | timedelta = "4h",
    metric: str = "clicks",
    seed: int | None = None,
    recipients: pd.DataFrame | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Split a draft campaign's recipients into variants, a holdout and the rest; register the test.

    Args:
        campaign: a draft campaign (``create_campaign``), nothing registered yet.
        variants: two or more dicts ``{"name": "A", "subject": ..., "template": ...}``
            (a subject and/or a template; the others come from the campaign), or subjects.
        sample: the share of recipients that get a variant, dealt to the variants in turn.
        holdout: the share that gets nothing, recorded to compare against.
        wait: how long after the last variant message the winner is chosen ("4h").
        metric: "clicks" (a worker decides by itself) or "conversions" (the analyst
            calls ``pick_winner(campaign, conversions=frame)``).
        seed: the shuffle's seed (default: a random one, stored and shown by ab_report);
            the same seed and recipients give the same split.
        recipients: rows of ``contacts_frame()`` (default: the campaign's segment).
        db: the database (default: the notebook's, or ``BULKMAIL_DB_URL``).
        url: or its URL.

    Returns:
        One row per arm: arm, subject, assigned, registered.

    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid, cname = c.id, c.name
        if c.ab_test:
            raise SendError(
                f"create_ab_test {cname!r}: it already has an A/B test: see ab_report()",
                campaign=cname,
            )
        if c.status != CampaignStatus.DRAFT.value:
            raise SendError(
                f"create_ab_test {cname!r}: the campaign is {c.status}: an A/B test needs a "
                "draft with nothing registered; create a new campaign",
                campaign=cname,
            )
        base = template_of(c, None)
        base_name, base_source = c.template_name, dict(c.template_source or {})
        frame = recipients if recipients is not None else recipients_of(c, database)
    if metric not in METRICS:
        raise ConfigError(
            f"create_ab_test {cname!r}: metric={metric!r}: give 'clicks' or 'conversions'",
            campaign=cname,
            field="metric",
        )
    arms = _variants(cname, variants, base)
    share = _fraction(cname, "sample", sample, 0.0)
    if share <= 0:
        raise ConfigError(
            f"create_ab_test {cname!r}: sample=0: give a share above 0", campaign=cname
        )
    hold = _fraction(cname, "holdout", holdout, 0.0)
    if share + hold > 1:
        raise ConfigError(
            f"create_ab_test {cname!r}: sample={sample} + holdout={holdout} is more than 1: "
            "make them smaller",
            campaign=cname,
            field="sample",
        )
    wait_s = wait_seconds(wait, where=f"create_ab_test {cname!r}")
    if "contact_point_id" not in frame.columns:
        raise SendError(
            f"create_ab_test {cname!r}: the recipients frame has no 'contact_point_id' "
            "column: pass rows of contacts_frame() (or of filter_recipients())",
            campaign=cname,
        )
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    frame = frame.drop_duplicates("contact_point_id")
    where = split(
        [int(x) for x in frame["contact_point_id"]], [n for n, _ in arms], share, hold, seed
    )
    if sum(1 for a in where.values() if a not in RESERVED) < 2 * len(arms):
        raise ConfigError(
            f"create_ab_test {cname!r}: sample={sample} of {len(where)} recipients gives fewer "
            f"than 2 per variant: raise sample or use a bigger audience",
            campaign=cname,
            field="sample",
        )
    contact_of = dict(zip(frame["contact_point_id"].astype(int), frame["contact_id"], strict=True))
    rows = [
        {
            "campaign_id": cid,
            "contact_point_id": pid,
            "contact_id": int(contact_of[pid]),
            "arm": arm,
        }
        for pid, arm in where.items()
    ]
    with database.engine.begin() as conn:
        for k in range(0, len(rows), 500):
            conn.execute(sa.insert(AbAssignment), rows[k : k + 500])
    points = frame["contact_point_id"].astype(int)
    for vname, tmpl in arms:
        mine = frame[points.map(where).eq(vname)].reset_index(drop=True)
        register(cid, mine, template=tmpl, db=database)
    with database.session() as s:
        c = campaign_row(s, cid)
        # The campaign's template stays the base one; each variant's is in ab_test.
        c.template_name, c.template_source = base_name, base_source
        c.ab_test = {
            "variants": [
                {
                    "name": n,
                    "subject": t.subject,
                    "template_name": t.name,
                    "template": template_source(t),
                }
                for n, t in arms
            ],
            "sample": share,
            "holdout": hold,
            "wait_s": wait_s,
            "metric": metric,
            "seed": seed,
            "created_at": utcnow().isoformat(),
            "winner": None,
        }
    return arm_counts(cid, db=database)


def arm_counts(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return one row per arm of the campaign's A/B test: arm, subject, assigned, registered."""
    database = resolve_database(db, url)
    test, frame = assignments(database, campaign)
    subjects = {v["name"]: v["subject"] for v in test["variants"]}
    order = [*subjects, "holdout", "rest"]
    out = []
    for arm in order:
        mine = frame[frame["arm"] == arm]
        out.append(
            {
                "arm": arm,
                "subject": subjects.get(arm)
                or ((test.get("winner_subject") or "") if arm == "rest" else ""),
                "assigned": len(mine),
                "registered": int(mine["status"].notna().sum()),
            }
        )
    return pd.DataFrame(out).astype(
        {"arm": "str", "subject": "str", "assigned": "int64", "registered": "int64"}
    )


def _variant_template(test: dict[str, Any], arm: str) -> Template:
    v = next(v for v in test["variants"] if v["name"] == arm)
    return template_of(
        Campaign(template_name=v["template_name"], template_source=v["template"]), None
    )


def pick_winner(
    campaign: CampaignRef,
    conversions: pd.DataFrame | None = None,
    *,
    winner: str | None = None,
    now: datetime | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Choose the A/B test's winner and register the rest of the audience with it.

    The winner is the variant with the best rate of the test's metric: click rate
    (unique clickers per message sent), or with ``conversions`` (a frame with
    ``contact_id`` and ``converted`` or ``amount``) the conversion rate; ties go to the
    first variant. ``winner="B"`` overrides the choice. The rest is registered with the
    winner's template and scheduled at ``now`` (default: now), so a worker sends it.
    Returns ``ab_report`` as it stood at the decision.
    """
    database = resolve_database(db, url)
    when = now or utcnow()
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid, cname, test = c.id, c.name, dict(c.ab_test or {})
        if not test:
            raise SendError(
                f"pick_winner {cname!r}: the campaign has no A/B test: create_ab_test() first",
                campaign=cname,
            )
        if test.get("winner"):
            raise SendError(
                f"pick_winner {cname!r}: variant {test['winner']!r} already won "
                f"({test.get('decided_at')}): see ab_report()",
                campaign=cname,
            )
        still = s.scalar(
            sa.select(sa.func.count()).where(Message.campaign_id == cid, Message.status.in_(_OPEN))
        )
    if still:
        raise SendError(
            f"pick_winner {cname!r}: {still} variant messages are not sent yet: let the worker "
            "send them (send_in_background) and wait",
            campaign=cname,
        )
    if test["metric"] == "conversions" and conversions is None and winner is None:
        raise ConfigError(
            f"pick_winner {cname!r}: the test's metric is conversions: pass conversions=<a frame "
            "with contact_id and converted (or amount)>",
            campaign=cname,
            field="conversions",
        )
    report = ab_report(cid, conversions=conversions, db=database)
    names = [v["name"] for v in test["variants"]]
    if winner is not None and winner not in names:
        raise ConfigError(
            f"pick_winner {cname!r}: winner={winner!r} is not a variant: give one of "
            f"{', '.join(names)}",
            campaign=cname,
            field="winner",
        )
    rate = "conversion_rate" if conversions is not None else "click_rate"
    rates = report.set_index("arm")[rate]
    chosen = winner or max(
        names, key=lambda n: (float(rates[n]) if rates[n] == rates[n] else -1.0, -names.index(n))
    )
    by = "analyst" if winner is not None else rate
    tmpl = _variant_template(test, chosen)
    decision = {
        "winner": chosen,
        "winner_subject": tmpl.subject,
        "decided_at": when.isoformat(),
        "decided_by": by,
        "rates": {n: (None if rates[n] != rates[n] else float(rates[n])) for n in names},
        "error": None,
    }
    if conversions is not None:
        decision["converted_contacts"] = sorted(converted_contacts(cname, conversions))
    _decide(database, cid, cname, decision)
    _, frame = assignments(database, cid)
    rest_points = set(frame.loc[frame["arm"] == "rest", "contact_point_id"].astype(int))
    try:
        if rest_points:
            people = _audience(database, cid)
            rest = people[people["contact_point_id"].astype(int).isin(rest_points)]
            register(cid, rest.reset_index(drop=True), template=tmpl, db=database)
    except BaseException:
        # Undecided again, so the analyst (or the next pass) can try once the cause is fixed.
        with database.session() as s:
            c = campaign_row(s, cid)
            c.ab_test = dict(c.ab_test or {}) | {"winner": None}
        raise
    add_events(
        database,
        [
            {
                "kind": "ab_winner",
                "campaign_id": cid,
                "occurred_at": when,
                "detail": f"variant {chosen} won by {by}",
                "data": {"winner": chosen, "rates": decision["rates"]},
            }
        ],
    )
    if rest_points:
        schedule(cid, when, db=database)  # due now: a worker's next look sends the rest
    log.info(
        "campaign %s: variant %s won (%s); the rest (%d) is queued",
        cname,
        chosen,
        by,
        len(rest_points),
    )
    return ab_report(cid, conversions=conversions, db=database)


def _decide(database: Database, cid: int, cname: str, decision: dict[str, Any]) -> None:
    """Record the decision unless another worker or analyst has just made one.

    The transaction writes the campaign row first, which locks it (PostgreSQL) or takes
    the one write lock (SQLite) before the winner is read again: of two workers deciding
    at once, the second waits, then sees the first's winner and stops. (Reading first
    would let SQLite's second writer fail with "database is locked" instead.)
    """
    with database.session() as s:
        s.execute(sa.update(Campaign).where(Campaign.id == cid).values(updated_at=utcnow()))
        c = s.scalars(sa.select(Campaign).where(Campaign.id == cid)).one()
        test = dict(c.ab_test or {})
        if test.get("winner"):
            raise SendError(
                f"pick_winner {cname!r}: variant {test['winner']!r} already won "
                f"({test.get('decided_at')}): see ab_report()",
                campaign=cname,
            )
        c.ab_test = test | decision


def _audience(database: Database, cid: int) -> pd.DataFrame:
    """Return who the rest is taken from: the segment's rows (its columns), else every contact."""
    with database.session() as s:
        c = campaign_row(s, cid)
    if c.segment_id is not None:
        return recipients_of(c, database)
    # A hand-made frame is not kept: extra columns it had are not there for the rest.
    return contacts_frame(database)


def ab_test_step(database: Database, now: datetime) -> bool:
    """Decide every click-rate A/B test whose wait is over; return whether one still waits.

    Every worker calls this each pass (``run_worker()`` and ``bulkmail run-worker``
    alike): a test is decided once no variant message is open and ``wait``
    has passed since the last was sent. Conversion tests wait for ``pick_winner``.
    """
    waiting = False
    with database.engine.connect() as conn:
        tests = conn.execute(
            sa.select(Campaign.id, Campaign.name, Campaign.ab_test, Campaign.status).where(
                Campaign.status != CampaignStatus.CANCELLED.value
            )
        ).all()
    for cid, name, test, status in tests:
        if not test or test.get("winner") or test.get("metric") != "clicks" or test.get("error"):
            continue
        if status in (CampaignStatus.PAUSED.value, CampaignStatus.STOPPED.value):
            continue
        with database.engine.connect() as conn:
            still, last = conn.execute(
                sa.select(
                    sa.func.count().filter(Message.status.in_(_OPEN)),
                    sa.func.max(Message.sent_at),
                ).where(Message.campaign_id == cid)
            ).one()
        if still:
            waiting = True
            continue
        if last is None:
            continue  # nothing went out (all failed or removed): nothing to compare
        last = last if last.tzinfo else last.replace(tzinfo=now.tzinfo)
        if now < last + timedelta(seconds=float(test["wait_s"])):
            waiting = True
            continue
        try:
            pick_winner(cid, now=now, db=database)
        except BulkmailError as exc:
            with database.session() as s:
                c = campaign_row(s, cid)
                if (c.ab_test or {}).get("winner"):
                    continue  # another worker decided it a moment ago
                # Said once and kept: the next pass must not try (and log) it again.
                log.error("A/B test of %r not decided: %s", name, exc.message)
                c.ab_test = dict(c.ab_test or {}) | {"error": exc.message}
    return waiting

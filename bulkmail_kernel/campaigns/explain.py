"""``explain(campaign, contact)``: why one person gets a campaign, or why not, in one table.

It gathers what bulkmail knows about the person and the campaign, each as rows of
section · address · check · result · detail · when:

- **message**: their message in the campaign's outbox, with its status and times;
- **skipped**: why registration (or sending) left an address out — suppressed, mailing
  not allowed, a duplicate address, a render failure, a frequency cap — as recorded;
- **audience**: every rule of the filter the campaign's recipients were chosen by (its
  saved group's, or the one ``filter_recipients`` attached to the frame given to
  ``register``) judged on each of their addresses today, settings included;
- **suppression**: suppression-list entries for their addresses, with reason and date;
- **consent**: mailing allowed or not, per address of the campaign's channel;
- **frequency cap**: the rule the campaign is judged by and the person's messages of other
  campaigns that count toward it (or that the campaign is transactional, so exempt).

``attrs["verdict"]`` says it in a line: "in: …" or "out: …".
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.campaigns.caps import cap_standing
from bulkmail_kernel.contacts.frame import contacts_frame, find_contact_ids
from bulkmail_kernel.db import (
    Campaign,
    ContactPoint,
    Database,
    Event,
    Message,
    Segment,
    SegmentMember,
    Suppression,
    resolve_database,
)
from bulkmail_kernel.display import ReadableFrame, readable
from bulkmail_kernel.exceptions import FilterError
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.records import CampaignRef, point_channel
from bulkmail_kernel.segments.explain import contact_rows, explain_segment
from bulkmail_kernel.segments.spec import FilterSpec

COLUMNS = ["section", "address", "check", "result", "detail", "when"]


def explain(
    campaign: CampaignRef,
    contact: int | str,
    *,
    frame: pd.DataFrame | None = None,
    today: date | datetime | str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> ReadableFrame:
    """Return why ``contact`` (contact id, customer number or address) is in ``campaign`` or not.

    ``frame`` is the recipient frame to judge the filter on (default: the person's own
    rows of ``contacts_frame()``, read alone, so it answers at once on a big database).
    See the module docstring for the sections; ``attrs["verdict"]`` is one line.

    Raises:
        SendError: the campaign is unknown.
        FilterError: nobody in the contacts is known by ``contact``.

    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        info = _campaign(s, c)
    if frame is None:
        # Only this person's rows: an answer at once, whatever the size of the database.
        ids = find_contact_ids(database, contact)
        if not ids:
            raise FilterError(
                f"explain: nobody in these contacts is {contact!r} (give a contact id, a "
                "customer number or an e-mail address or phone number as stored)",
                field="contact",
            )
        data = contacts_frame(database, contact_ids=ids)
    else:
        data = frame
    rows = contact_rows(data, contact)
    part = data.iloc[rows]
    contact_ids = sorted({int(x) for x in part["contact_id"]})
    channel = point_channel(info["channel"])
    out: list[dict[str, Any]] = []
    with database.session() as s:
        messages = _messages(s, info["id"], contact_ids)
        skips = _skips(s, info["id"], contact_ids)
        suppressions = _suppressions(s, part)
        members = _members(s, info["segment_id"], part)
    out += messages + skips
    audience, verdict_rule = _audience(info, part, data, contact, today, members)
    out += audience + suppressions + _caps(info["id"], contact_ids, database)
    for r in part.itertuples():
        if str(r.channel) != channel:
            continue
        allowed = bool(r.mailing_allowed)
        out.append(
            _row("consent", r.address, "mailing allowed", "yes" if allowed else "no", "", None)
        )
    result = readable(pd.DataFrame(out, columns=COLUMNS))
    result.attrs["verdict"] = _verdict(messages, skips, verdict_rule, info["name"])
    return result


def _row(section: str, address: Any, check: str, result: str, detail: str, when: Any) -> dict:
    return {
        "section": section,
        "address": "" if address is None else str(address),
        "check": check,
        "result": result,
        "detail": detail,
        "when": when,
    }


def _campaign(s: sa.orm.Session, c: Campaign) -> dict[str, Any]:
    segment = s.get(Segment, c.segment_id) if c.segment_id is not None else None
    return {
        "id": c.id,
        "name": c.name,
        "channel": c.channel,
        "segment_id": c.segment_id,
        "segment": segment.name if segment is not None else None,
        "segment_spec": dict(segment.spec) if segment is not None else None,
        "audience": dict(c.audience) if c.audience else None,
    }


def _messages(s: sa.orm.Session, cid: int, contact_ids: list[int]) -> list[dict]:
    rows = s.execute(
        sa.select(Message.recipient, Message.status, Message.sent_at, Message.created_at,
                  Message.last_error)
        .where(Message.campaign_id == cid, Message.contact_id.in_(contact_ids))
        .order_by(Message.id)
    ).all()  # fmt: skip
    return [
        _row("message", r.recipient, "in the outbox", r.status, r.last_error or "",
             r.sent_at or r.created_at)
        for r in rows
    ]  # fmt: skip


def _skips(s: sa.orm.Session, cid: int, contact_ids: list[int]) -> list[dict]:
    rows = s.execute(
        sa.select(Event.detail, Event.occurred_at, Event.data, ContactPoint.value)
        .join(ContactPoint, ContactPoint.id == Event.contact_point_id, isouter=True)
        .where(Event.campaign_id == cid, Event.kind == "skipped",
               Event.contact_id.in_(contact_ids))
        .order_by(Event.id)
    ).all()  # fmt: skip
    return [
        _row("skipped", r.value or (r.data or {}).get("address"),
             f"left out at {(r.data or {}).get('at') or 'registration'}", "out", r.detail,
             r.occurred_at)
        for r in rows
    ]  # fmt: skip


def _suppressions(s: sa.orm.Session, part: pd.DataFrame) -> list[dict]:
    ids = [int(x) for x in part["contact_point_id"]]
    points = s.execute(
        sa.select(ContactPoint.value, ContactPoint.channel, ContactPoint.normalized).where(
            ContactPoint.id.in_(ids)
        )
    ).all()
    out: list[dict] = []
    for p in points:
        for sup in s.scalars(
            sa.select(Suppression).where(
                Suppression.channel == p.channel, Suppression.normalized == p.normalized
            )
        ):
            detail = sup.reason + (f": {sup.detail}" if sup.detail else "")
            out.append(_row("suppression", p.value, "on the suppression list", "yes", detail,
                            sup.created_at))  # fmt: skip
    return out


def _members(s: sa.orm.Session, segment_id: int | None, part: pd.DataFrame) -> set[int] | None:
    if segment_id is None:
        return None
    ids = [int(x) for x in part["contact_point_id"]]
    return set(
        s.scalars(
            sa.select(SegmentMember.contact_point_id).where(
                SegmentMember.segment_id == segment_id, SegmentMember.contact_point_id.in_(ids)
            )
        )
    )


def _audience(
    info: dict[str, Any],
    part: pd.DataFrame,
    data: pd.DataFrame,
    contact: int | str,
    today: date | datetime | str | None,
    members: set[int] | None,
) -> tuple[list[dict], str | None]:
    raw = info["segment_spec"] or info["audience"]
    out: list[dict] = []
    if members is not None:
        for r in part.itertuples():
            member = int(r.contact_point_id) in members
            out.append(_row("audience", r.address, f"in saved group {info['segment']!r}",
                            "yes" if member else "no", "the group's snapshot", None))  # fmt: skip
    if raw is None:
        detail = "registered from a list that carried no filter: nothing to judge"
        out.append(_row("audience", None, "filter", "—", detail, None))
        return out, None
    try:
        spec = FilterSpec.from_dict(raw)
        judged = explain_segment(data, spec, contact, today=today)
    except FilterError as exc:
        out.append(_row("audience", None, "filter", "cannot judge", exc.message, None))
        return out, None
    for r in judged.itertuples(index=False):
        out.append(_row("audience", r[0], r[1], "holds" if r[2] else "fails", r[3], None))
    verdict = judged.attrs["verdict"]
    return out, (None if verdict.startswith("in:") else verdict.removeprefix("out: "))


def _caps(cid: int, contact_ids: list[int], database: Database) -> list[dict]:
    """Where each of the person's contacts stands against the campaign's frequency cap."""
    out: list[dict] = []
    for contact_id in contact_ids:
        standing = cap_standing(cid, contact_id, db=database)
        if standing.transactional:
            out.append(_row("frequency cap", None, "transactional", "exempt",
                            "a service message: never capped, never counted", None))  # fmt: skip
            continue
        if standing.rule is None:
            continue
        rule = f"at most {standing.rule.max_messages} in {standing.rule.days} days"
        counted = "; ".join(m.describe() for m in standing.counted) or "none"
        out.append(_row("frequency cap", None, rule, "over" if standing.capped else "within",
                        f"counting: {counted}", None))  # fmt: skip
    return out


def _verdict(messages: list[dict], skips: list[dict], rule: str | None, name: str) -> str:
    if messages:
        first = messages[0]
        return f"in: {first['address']} has a message in {name!r} ({first['result']})"
    if skips:
        return f"out: {skips[-1]['address']} was left out: {skips[-1]['detail']}"
    if rule:
        return f"out: the filter leaves them out ({rule})"
    return f"out: not among the recipients registered for {name!r}"

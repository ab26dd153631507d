"""A person's rights under the GDPR: a copy of their data (art. 15/20), and erasure (art. 17).

``export_contact_data(contact)`` gathers everything the database holds about one person
— the contact, their addresses with consent, the consent records (with source, date and
wording) and unsubscribe history, their clicks on tracked links, the
saved segments they are a member of, their messages, events and suppressions — and
writes it as JSON (machine-readable, article 20) and as a page a person can read.
``forget_contact(contact)`` erases it: the outbox anonymises the history
(``outbox.erasure``), the contact and its addresses are deleted, and each address is
kept only as a salted hash so a later import cannot bring it back
(``contacts.forgotten``). See docs/gdpr.md.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel import config
from bulkmail_kernel.contacts.consents import consent_rows, erase_consents
from bulkmail_kernel.contacts.forgotten import remember_forgotten
from bulkmail_kernel.contacts.frame import contacts_named
from bulkmail_kernel.db import (
    Campaign,
    Contact,
    ContactPoint,
    Database,
    Event,
    Message,
    MessageBody,
    MessageStatus,
    Segment,
    SegmentMember,
    Suppression,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.db.exportlog import record_export
from bulkmail_kernel.exceptions import ContactError
from bulkmail_kernel.outbox.erasure import erase_outbox_history
from bulkmail_kernel.segments.audit import check_contact_export

log = logging.getLogger("bulkmail")

#: Event kinds that record consent given, changed or withdrawn.
CONSENT_EVENTS = ("imported", "updated", "unsubscribed", "suppressed", "complained", "merged")
#: The contact data a GDPR export writes, as the export log names it.
EXPORTED_COLUMNS = ("first_name", "last_name", "patronymic", "value", "normalized", "recipient")


@dataclass(frozen=True)
class ContactData:
    """What ``export_contact_data`` found and where it wrote it."""

    contact_id: int
    #: Everything held, JSON-ready (times as ISO 8601 UTC strings).
    data: dict[str, Any]
    json_path: Path
    html_path: Path


@dataclass(frozen=True)
class ForgetResult:
    """What ``forget_contact`` erased and what it kept as anonymous counts."""

    contact_id: int
    addresses: int
    messages: int
    events: int
    suppressions: int
    forgotten_at: datetime


def find_contact(s: Session, contact: int | str) -> Contact:
    """Return the one contact known by an id, a customer number (external id) or an address."""
    query = contacts_named(contact)
    if query is None:
        raise ContactError(f"{contact!r} is not a contact id, customer number or address")
    ids = list(s.scalars(query))
    if len(ids) > 1:
        raise ContactError(
            f"contact {contact!r}: several contacts are known by it (ids "
            f"{', '.join(map(str, ids))}): give the contact id",
            contact=contact,
        )
    found = s.get(Contact, ids[0]) if ids else None
    if found is None:
        raise ContactError(
            f"contact {contact!r}: nobody is known by it (give a contact id, a customer number, "
            "or an e-mail address or phone number as stored)",
            contact=contact,
        )
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _rows(s: Session, stmt: sa.Executable) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in s.execute(stmt).mappings()]


def _gather(s: Session, c: Contact) -> dict[str, Any]:
    points = list(c.points)
    pids = [p.id for p in points] or [-1]
    addresses = [(p.channel, p.normalized) for p in points]
    contact = {
        k: _plain(getattr(c, k))
        for k in ("id", "external_id", "first_name", "last_name", "patronymic", "gender",
                  "language", "registered_at", "attributes", "source", "created_at", "updated_at")
    }  # fmt: skip
    point_fields = ("id", "channel", "value", "normalized", "type", "kind", "mailing_allowed",
                    "is_preferred", "soft_bounces", "source", "created_at",
                    "updated_at")  # fmt: skip
    point_rows = [{k: _plain(getattr(p, k)) for k in point_fields} for p in points]
    mine = sa.or_(Message.contact_id == c.id, Message.contact_point_id.in_(pids))
    messages = _rows(s, sa.select(
        Message.id, Campaign.name.label("campaign"), Message.channel, Message.recipient,
        Message.status, Message.created_at, Message.sent_at, Message.attempts,
        Message.last_code, Message.last_error, MessageBody.subject,
    ).join(Campaign, Campaign.id == Message.campaign_id).outerjoin(
        MessageBody, MessageBody.message_id == Message.id
    ).where(mine).order_by(Message.id))  # fmt: skip
    mids = [m["id"] for m in messages] or [-1]
    events = _rows(s, sa.select(
        Event.occurred_at, Event.kind, Campaign.name.label("campaign"), Event.message_id,
        Event.contact_point_id, Event.detail, Event.data,
    ).outerjoin(Campaign, Campaign.id == Event.campaign_id).where(sa.or_(
        Event.contact_id == c.id, Event.contact_point_id.in_(pids), Event.message_id.in_(mids)
    )).order_by(Event.occurred_at, Event.id))  # fmt: skip
    segments = _rows(s, sa.select(
        Segment.name, Segment.snapshot_at, SegmentMember.contact_point_id
    ).join(SegmentMember, SegmentMember.segment_id == Segment.id).where(
        SegmentMember.contact_point_id.in_(pids)
    ).order_by(Segment.name))  # fmt: skip
    suppressions = _rows(s, sa.select(
        Suppression.channel, Suppression.normalized, Suppression.reason, Suppression.detail,
        Suppression.created_at,
    ).where(sa.or_(sa.false(), *(
        sa.and_(Suppression.channel == ch, Suppression.normalized == n) for ch, n in addresses
    ))))  # fmt: skip
    consent_log = [{k: _plain(v) for k, v in r._mapping.items()} for r in consent_rows(s, c.id)]
    clicks = [
        {"clicked_at": e["occurred_at"], "campaign": e["campaign"], "message_id": e["message_id"],
         "url": (e["data"] or {}).get("url"), "link": (e["data"] or {}).get("link"),
         "counted": e["kind"] == "clicked", "why_not": (e["data"] or {}).get("why")}
        for e in events if e["kind"] in ("clicked", "click_flagged")
    ]  # fmt: skip
    consent = {
        "records": consent_log,
        "addresses": [
            {"address": p["value"], "channel": p["channel"],
             "mailing_allowed": p["mailing_allowed"], "source": p["source"],
             "recorded_at": p["updated_at"]}
            for p in point_rows
        ],
        "history": [_how(e, points, suppressions) for e in events if e["kind"] in CONSENT_EVENTS],
    }  # fmt: skip
    return {
        "exported_at": _plain(utcnow()),
        "contact": contact,
        "points": point_rows,
        "consent": consent,
        "segments": segments,
        "clicks": clicks,
        "messages": messages,
        "events": events,
        "suppressions": suppressions,
    }


def _how(
    event: dict[str, Any], points: list[ContactPoint], suppressions: list[dict[str, Any]]
) -> dict[str, Any]:
    """Return a consent event with where it came from: the import row, the campaign, by hand."""
    source = event["detail"]  # imports: "<source> row <n>"
    if event["kind"] in ("unsubscribed", "suppressed", "complained"):
        point = next((p for p in points if p.id == event["contact_point_id"]), None)
        said = [x["detail"] for x in suppressions if point and x["normalized"] == point.normalized]
        source = said[0] if said else f"campaign {event['campaign']}"
    return {**event, "source": source}


def _page(data: dict[str, Any]) -> str:
    """Return the export as one HTML page: a table per part, every value escaped."""
    c = data["contact"]
    name = " ".join(x for x in (c["first_name"], c["last_name"]) if x) or f"contact {c['id']}"
    parts = [f"<h1>Data held about {html.escape(name)}</h1>",
             f"<p>Exported {html.escape(data['exported_at'])} (UTC).</p>"]  # fmt: skip
    sections = {
        "Contact": [c],
        "Addresses": data["points"],
        "Consent per address": data["consent"]["addresses"],
        "Consents recorded (what, when, how, source, wording)": data["consent"]["records"],
        "Consent and unsubscribe history": data["consent"]["history"],
        "Clicks on tracked links": data["clicks"],
        "Segments": data["segments"],
        "Messages": data["messages"],
        "Events": data["events"],
        "Suppressions": data["suppressions"],
    }
    for title, rows in sections.items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if not rows:
            parts.append("<p>none</p>")
            continue
        frame = pd.DataFrame([{k: _cell(v) for k, v in r.items()} for r in rows])
        parts.append(frame.to_html(index=False, escape=True, na_rep=""))
    head = f"<head><meta charset='utf-8'><title>{html.escape(name)}</title></head>"
    return f"<!doctype html>\n<html>{head}<body>\n" + "\n".join(parts) + "\n</body></html>\n"


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "" if value is None else str(value)


def export_contact_data(
    contact: int | str,
    *,
    folder: str | Path | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> ContactData:
    """Write everything held about a person as JSON and a readable page (GDPR art. 15/20).

    Args:
        contact: a contact id, a customer number (external id), or an e-mail address or
            phone number of theirs (matched by identity, any spelling).
        folder: where to write ``contact-<id>-<UTC time>.json`` and ``.html``
            (default: ``data/exports``, ignored by git: the files hold personal data).
        db: the bulkmail database (default: ``open_database(url)``).
        url: the database URL when ``db`` is not given.

    The export is written to the export log (``export_log()``); a role that may not read
    contact data (PostgreSQL's analyst role) or a database whose setting refuses
    contact-data exports is refused, and the refusal logged.

    Raises:
        ContactError: nobody is known by ``contact``.
        ContactAccessError: this role or database may not export contact data.

    """
    database = resolve_database(db, url)
    named = contact if isinstance(contact, int) else None
    who = check_contact_export(database, EXPORTED_COLUMNS, kind="contact", contact_id=named)
    with database.session() as s:
        found = find_contact(s, contact)
        data = _gather(s, found)
        cid = found.id
    target = Path(folder).expanduser() if folder is not None else config.exports_dir()
    target.mkdir(parents=True, exist_ok=True)
    stem = f"contact-{cid}-{utcnow().strftime('%Y%m%dT%H%M%SZ')}"
    json_path = target / f"{stem}.json"
    json_path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    html_path = target / f"{stem}.html"
    html_path.write_text(_page(data), encoding="utf-8")
    record_export(database, who=who, kind="contact", columns=EXPORTED_COLUMNS,
                  rows=len(data["points"]), path=json_path, contact_id=cid,
                  detail=f"also {html_path.name}")  # fmt: skip
    log.info("exported the data of contact %s to %s", cid, json_path)
    return ContactData(contact_id=cid, data=data, json_path=json_path, html_path=html_path)


def forget_contact(
    contact: int | str, *, db: Database | None = None, url: str | None = None
) -> ForgetResult:
    """Erase a person's data on request (GDPR art. 17), keeping anonymous counts.

    Deletes the contact and its addresses (segment memberships and unsubscribe tokens go
    with them), anonymises their messages and events (rows stay, so campaign reports
    still add up), deletes their suppressions, and keeps a salted hash of each address
    so a later import refuses it. One transaction: all of it, or nothing. Leaves one
    ``forgotten`` event naming no one. Files written outside the database (exports,
    .eml folders) are not touched: docs/gdpr.md lists them.

    Raises:
        ContactError: nobody is known by ``contact``, or a worker is sending them a
            message right now.

    """
    database = resolve_database(db, url)
    now = utcnow()
    with database.session() as s:
        found = find_contact(s, contact)
        cid = found.id
        pids = [p.id for p in found.points]
        busy = s.scalar(
            sa.select(Campaign.name)
            .join(Message, Message.campaign_id == Campaign.id)
            .where(
                sa.or_(Message.contact_id == cid, Message.contact_point_id.in_(pids or [-1])),
                Message.status == MessageStatus.SENDING.value,
            )
        )
        if busy is not None:
            # A worker holds it and will record its outcome against this contact.
            raise ContactError(
                f"contact {cid}: a message of campaign {busy!r} is being sent to them right "
                "now; forget them when it is done (or pause the campaign first)",
                contact=cid,
            )
        addresses = sorted({(p.channel, p.normalized) for p in found.points})
        counts = erase_outbox_history(s, cid, pids, addresses, now)
        remember_forgotten(s, addresses, now)
        erase_consents(s, cid)  # the proof of consent goes with the person (nothing to prove)
        s.delete(found)
    log.info("contact %s forgotten on request: %s", cid, counts)
    return ForgetResult(contact_id=cid, addresses=len(addresses), forgotten_at=now, **counts)

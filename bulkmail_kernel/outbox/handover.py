"""What providers report back: hand-overs to SendPulse, delivery reports from EuroSMS.

A provider workflow (:mod:`bulkmail_kernel.providers`) talks to its provider and
asks this module to record the outcome: which queued messages a SendPulse campaign
took over (marked and evented in one transaction, the campaign finished), which
sent SMS have a final delivery report, and the provider's ids and status kept in
``campaigns.provider_ref`` (whose SendPulse fields, :data:`REF_FIELDS`, reports
list). The workflows write no message, event or suppression themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.db import (
    Campaign,
    CampaignStatus,
    Contact,
    Database,
    Event,
    Message,
    MessageStatus,
)
from bulkmail_kernel.display import readable

#: What a hand-over records in ``campaigns.provider_ref["sendpulse"]``, in report order.
REF_FIELDS = (
    "book_id",
    "campaign_id",
    "draft",
    "status",
    "status_text",
    "count",
    "created_at",
    "send_date",
    "checked_at",
)

#: The REF_FIELDS stored as ISO text that a report shows as times.
REF_TIMES = ("created_at", "send_date", "checked_at")


def ref_frame(first: str, rows: list[list[Any]]) -> pd.DataFrame:
    """Return provider-side ids and status as a report frame: ``first`` column, then REF_FIELDS.

    The times are stored as ISO text in the campaign's JSON; here they become local
    datetimes, shown to the second (not UTC with microseconds).
    """
    frame = pd.DataFrame(rows, columns=[first, *REF_FIELDS])
    for name in REF_TIMES:
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601").dt.tz_convert(
            config.local_timezone()
        )
    return readable(frame)


_RECIPIENT_COLUMNS = [
    "message_id",
    "contact_id",
    "contact_point_id",
    "address",
    "first_name",
    "last_name",
    "patronymic",
    "language",
]


# --------------------------------------------------------------------------- provider refs


def update_provider_ref(
    database: Database, campaign_id: int, provider: str, /, **values: Any
) -> dict[str, Any]:
    """Merge ``values`` into the campaign's ``provider_ref[provider]`` and return that entry.

    The first three are positional only: ``values`` may hold a ``campaign_id`` (SendPulse's).
    """
    with database.session() as s:
        c = s.get(Campaign, campaign_id)
        assert c is not None
        ref = dict(c.provider_ref or {})
        entry = dict(ref.get(provider) or {})
        entry.update(values)
        ref[provider] = entry
        c.provider_ref = ref
        return entry


def recent_handover_ages(database: Database, account_id: int, now: datetime) -> list[float]:
    """Ages (s) of campaigns this account created in SendPulse in the last hour, any process."""
    with database.session() as s:
        refs = s.scalars(
            sa.select(Campaign.provider_ref).where(Campaign.sender_account_id == account_id)
        ).all()
    ages = []
    for ref in refs:
        created = (ref or {}).get("sendpulse", {}).get("created_at")
        if created:
            age = (now - datetime.fromisoformat(created)).total_seconds()
            if 0 <= age < 3600:
                ages.append(age)
    return ages


def record_handover_error(database: Database, campaign_id: int, message: str) -> None:
    """Keep why the provider refused the hand-over as the campaign's last error."""
    with database.session() as s:
        row = s.get(Campaign, campaign_id)
        assert row is not None
        row.last_error = f"SendPulse: {message}"


# --------------------------------------------------------------------------- SendPulse hand-over


def handover_recipients(database: Database, campaign_id: int) -> pd.DataFrame:
    """Return the campaign's queued (or deferred) messages with the contacts' names."""
    with database.session() as s:
        rows = s.execute(
            sa.select(
                Message.id,
                Message.contact_id,
                Message.contact_point_id,
                Message.recipient,
                Contact.first_name,
                Contact.last_name,
                Contact.patronymic,
                Contact.language,
            )
            .join(Contact, Contact.id == Message.contact_id, isouter=True)
            .where(
                Message.campaign_id == campaign_id,
                Message.status.in_((MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)),
            )
            .order_by(Message.id)
        ).all()
    frame = pd.DataFrame(rows, columns=_RECIPIENT_COLUMNS)
    for col in ("first_name", "last_name", "patronymic"):
        frame[col] = frame[col].fillna("")
    return frame


def record_handover(
    database: Database,
    campaign_id: int,
    frame: pd.DataFrame,
    *,
    provider_id: int,
    book_id: int,
    draft: bool,
    now: datetime,
) -> None:
    """Mark the messages of ``frame`` handed over and write one event each, in one transaction.

    A campaign leaves them ``sent``; a draft leaves them ``removed`` with the draft's id
    (the analyst sends it from SendPulse's cabinet). The campaign is finished either way.
    """
    status = MessageStatus.REMOVED.value if draft else MessageStatus.SENT.value
    detail = (
        f"handed to SendPulse draft {provider_id}: send it from SendPulse's cabinet"
        if draft
        else f"handed to SendPulse campaign {provider_id}"
    )
    data = {"provider": "sendpulse", "campaign_id": provider_id, "book_id": book_id}
    with database.engine.begin() as conn:
        conn.execute(
            sa.update(Message)
            .where(Message.id == sa.bindparam("mid"))
            .values(
                status=status,
                sent_at=None if draft else now,
                provider_message_id=f"sendpulse:{provider_id}",
                last_error=detail if draft else "",
                updated_at=now,
            ),
            [{"mid": int(x)} for x in frame["message_id"]],
        )
        conn.execute(
            sa.insert(Event),
            [
                {
                    "kind": "handed_over" if draft else "sent",
                    "contact_id": None if pd.isna(r.contact_id) else int(r.contact_id),
                    "contact_point_id": None
                    if pd.isna(r.contact_point_id)
                    else int(r.contact_point_id),
                    "campaign_id": campaign_id,
                    "message_id": int(r.message_id),
                    "detail": detail,
                    "data": data,
                    "occurred_at": now,
                }
                for r in frame.itertuples()
            ],
        )
        conn.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(status=CampaignStatus.FINISHED.value, finished_at=now, last_error="")
        )
        conn.execute(
            sa.insert(Event).values(
                kind="finished", campaign_id=campaign_id, detail=detail, data=data, occurred_at=now
            )
        )


# --------------------------------------------------------------------------- EuroSMS reports


@dataclass(frozen=True)
class AwaitingReport:
    """A sent SMS without a final delivery report yet, with its segments' provider ids."""

    message_id: int
    contact_id: int | None
    contact_point_id: int | None
    recipient: str
    provider_message_id: str


@dataclass(frozen=True)
class DeliveryReport:
    """The final state of ``message``: ``kind`` is the event, delivered or bounced."""

    message: AwaitingReport
    kind: str
    state: str
    #: The provider's reports as it sent them, per segment id.
    reports: dict[str, Any]


def awaiting_reports(database: Database, campaign_id: int) -> list[AwaitingReport]:
    """Return the campaign's sent messages with provider ids and no delivered/bounced event."""
    with database.session() as s:
        done = set(
            s.scalars(
                sa.select(Event.message_id).where(
                    Event.campaign_id == campaign_id, Event.kind.in_(("delivered", "bounced"))
                )
            )
        )
        rows = s.execute(
            sa.select(
                Message.id,
                Message.contact_id,
                Message.contact_point_id,
                Message.recipient,
                Message.provider_message_id,
            )
            .where(
                Message.campaign_id == campaign_id,
                Message.status == MessageStatus.SENT.value,
                Message.provider_message_id.is_not(None),
            )
            .order_by(Message.id)
        ).all()
    return [
        AwaitingReport(mid, contact_id, point_id, recipient, str(pmid))
        for mid, contact_id, point_id, recipient, pmid in rows
        if mid not in done
    ]


def record_delivery_reports(
    database: Database, campaign_id: int, reports: list[DeliveryReport], *, now: datetime
) -> None:
    """Store one delivered or bounced event per final EuroSMS report, in one transaction."""
    if not reports:
        return
    events = [
        {
            "kind": r.kind,
            "contact_id": r.message.contact_id,
            "contact_point_id": r.message.contact_point_id,
            "campaign_id": campaign_id,
            "message_id": r.message.message_id,
            "detail": f"EuroSMS delivery report: {r.state}",
            "data": {"provider": "eurosms", "dlr": r.state, "reports": r.reports},
            "occurred_at": now,
        }
        for r in reports
    ]
    with database.engine.begin() as conn:
        conn.execute(sa.insert(Event), events)

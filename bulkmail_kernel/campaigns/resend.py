"""Resend to non-clickers: a new campaign, linked to the first, for who got it and did not click.

``resend_to_non_clickers(campaign, "spring-2", subject="Last days of the sale", days=3)``
creates campaign ``spring-2`` (``parent_id`` = the first) with the first's sender,
values and template under the new subject, and registers through the normal path the
recipients whose first message was sent and who have no ``clicked`` event: registration
leaves out whoever has since unsubscribed, bounced or been suppressed, as always. An
A/B test's holdout was never sent anything, so it is not resent to either.
"""

from __future__ import annotations

from dataclasses import replace as dc_replace
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.abreport import CLICKED
from bulkmail_kernel.campaigns.campaigns import create_campaign, get_campaign
from bulkmail_kernel.campaigns.registration import register
from bulkmail_kernel.campaigns.rendering import template_of
from bulkmail_kernel.compose.templates import load_template
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.db import (
    Database,
    Event,
    Message,
    MessageStatus,
    SenderAccount,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.records import CampaignInfo, CampaignRef


def non_clickers(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return the rows of ``contacts_frame()`` whose message of ``campaign`` was sent, unclicked."""
    database = resolve_database(db, url)
    with database.session() as s:
        cid = campaign_row(s, campaign).id
    clicked = (
        sa.select(Event.message_id)
        .where(Event.campaign_id == cid, Event.kind == CLICKED, Event.message_id.is_not(None))
        .scalar_subquery()
    )
    with database.engine.connect() as conn:
        points = set(
            conn.execute(
                sa.select(Message.contact_point_id).where(
                    Message.campaign_id == cid,
                    Message.status == MessageStatus.SENT.value,
                    Message.contact_point_id.is_not(None),
                    Message.id.not_in(clicked),
                )
            ).scalars()
        )
    people = contacts_frame(database)
    return people[people["contact_point_id"].astype(int).isin(points)].reset_index(drop=True)


def resend_to_non_clickers(
    campaign: CampaignRef,
    name: str,
    *,
    subject: str,
    days: float = 3,
    template: Any = None,
    now: datetime | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> CampaignInfo:
    """Create and register ``name``: ``campaign`` again, with a new subject, to its non-clickers.

    ``days`` must have passed since the first campaign's last message was sent (a
    SendError says when it will have, so the clicks had time to come); ``template``
    replaces the first's (default: the first's, as registered); the new campaign has
    the first's sender, values, rate and send window and ``parent_id`` pointing at it.
    Send it as any other (``send_in_background``, ``schedule``).
    """
    if not subject or not str(subject).strip():
        raise ConfigError(
            f"resend_to_non_clickers {name!r}: subject={subject!r}: give the new subject",
            field="subject",
        )
    database = resolve_database(db, url)
    when = now or utcnow()
    with database.session() as s:
        c = campaign_row(s, campaign)
        parent_id, parent = c.id, c.name
        base = template_of(c, template)
        sender = s.scalar(
            sa.select(SenderAccount.name).where(SenderAccount.id == c.sender_account_id)
        )
        settings: dict[str, Any] = {
            "values": dict(c.values or {}),
            "rate_per_hour": c.rate_per_hour,
            "burst": c.burst,
            "channel": c.channel,
            "send_window": c.send_window,
            "transactional": c.transactional,
        }
        last = s.scalar(
            sa.select(sa.func.max(Message.sent_at)).where(
                Message.campaign_id == parent_id, Message.status == MessageStatus.SENT.value
            )
        )
    if last is None:
        raise SendError(
            f"resend_to_non_clickers {name!r}: campaign {parent!r} has sent nothing yet: "
            "send it first",
            campaign=parent,
        )
    ready = last + timedelta(days=float(days))
    if when < ready:
        raise SendError(
            f"resend_to_non_clickers {name!r}: campaign {parent!r} last sent at "
            f"{config.as_local(last):%Y-%m-%d %H:%M %Z}; days={days:g} have not passed: "
            f"resend after {config.as_local(ready):%Y-%m-%d %H:%M %Z} (or give a smaller days)",
            campaign=parent,
        )
    if sender is None:
        raise SendError(
            f"resend_to_non_clickers {name!r}: campaign {parent!r} has no sender account left: "
            "create the resend with create_campaign and register non_clickers() yourself",
            campaign=parent,
        )
    tmpl = load_template(base) if isinstance(base, str) else base
    tmpl = dc_replace(tmpl, subject=str(subject))
    audience = non_clickers(parent_id, db=database)
    create_campaign(name, sender=sender, template=tmpl, db=database, **settings)
    with database.session() as s:
        campaign_row(s, name).parent_id = parent_id
    if len(audience):
        register(name, audience, db=database)
    return get_campaign(name, db=database)

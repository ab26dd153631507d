"""Which campaign, which sender account: ORM rows looked up by name or id, handed on as records."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel.config import as_local
from bulkmail_kernel.db import Campaign, SenderAccount
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.records import CampaignInfo, CampaignRef, SenderInfo


def campaign_info(c: Campaign) -> CampaignInfo:
    """Return the stored campaign ``c`` as a record, its times in the analyst's zone."""
    return CampaignInfo(
        id=c.id,
        name=c.name,
        channel=c.channel,
        status=c.status,
        template_name=c.template_name,
        segment_id=c.segment_id,
        sender_account_id=c.sender_account_id,
        rate_per_hour=c.rate_per_hour,
        burst=c.burst,
        scheduled_at=as_local(c.scheduled_at),
        registered_at=as_local(c.registered_at),
        finished_at=as_local(c.finished_at),
        last_error=c.last_error,
        breaker_after=c.breaker_after,
        send_window=c.send_window,
        frequency_cap=c.frequency_cap,
        transactional=bool(c.transactional),
    )


def sender_info(a: SenderAccount) -> SenderInfo:
    """Return the stored sender account ``a`` as a record (it holds no secret)."""
    return SenderInfo(
        a.id, a.name, a.kind, a.from_name, a.from_email, dict(a.settings), a.credential_ref
    )


def campaign_row(s: Session, campaign: CampaignRef) -> Campaign:
    """Return the ORM row of ``campaign`` (name or id) or raise SendError naming it."""
    if isinstance(campaign, CampaignInfo):
        campaign = campaign.id
    column = Campaign.id if isinstance(campaign, int) else Campaign.name
    row = s.scalars(sa.select(Campaign).where(column == campaign)).one_or_none()
    if row is None:
        known = s.scalars(sa.select(Campaign.name).order_by(Campaign.name)).all()
        raise SendError(
            f"campaign {campaign!r} does not exist; campaigns: {', '.join(known) or '(none)'}",
            campaign=campaign,
        )
    return row


def account_row(s: Session, name: str) -> SenderAccount:
    """Return the ORM row of sender account ``name`` or raise ConfigError listing the known."""
    row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
    if row is None:
        known = s.scalars(sa.select(SenderAccount.name).order_by(SenderAccount.name)).all()
        raise ConfigError(
            f"sender account {name!r} does not exist; accounts: {', '.join(known) or '(none)'}",
            account=name,
        )
    return row


def sender_of(s: Session, c: Campaign) -> SenderInfo:
    """Return the sender account of campaign ``c`` or raise SendError saying how to set one."""
    account = s.get(SenderAccount, c.sender_account_id) if c.sender_account_id else None
    if account is None:
        raise SendError(
            f"campaign {c.name!r} has no sender account: create one with add_sender_account() "
            "and pass sender=... to create_campaign()",
            campaign=c.name,
        )
    return sender_info(account)

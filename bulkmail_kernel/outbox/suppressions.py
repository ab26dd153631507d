"""Suppressions and unsubscribes: who must never be mailed again on a channel, and why.

One function adds a suppression (``add_suppression``), whoever asks: an unsubscribe
link, the analyst, a hard bounce, a provider's refusal.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel.db import (
    ContactPoint,
    Database,
    Event,
    Suppression,
    UnsubscribeToken,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.records import point_channel

log = logging.getLogger("bulkmail")


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest under which an unsubscribe token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def unsubscribe(token: str, *, db: Database | None = None, url: str | None = None) -> bool:
    """Honour an unsubscribe token: clear mailing-allowed and suppress the address.

    Returns False for an unknown token. Using a token twice is harmless (RFC 8058
    one-click senders may POST more than once).
    """
    database = resolve_database(db, url)
    with database.session() as s:
        row = s.get(UnsubscribeToken, hash_token(token))
        if row is None:
            log.warning("unsubscribe: unknown token (ignored)")
            return False
        point = s.get(ContactPoint, row.contact_point_id)
        if point is None:
            return False
        if row.used_at is not None and not point.mailing_allowed:
            return True  # already honoured: a second POST records nothing new
        row.used_at = row.used_at or utcnow()
        honour_unsubscribe(
            s, point, campaign_id=row.campaign_id, detail=f"campaign {row.campaign_id}"
        )
    return True


def unsubscribe_address(
    address: str,
    *,
    channel: str = "email",
    detail: str = "unsubscribed by the analyst",
    db: Database | None = None,
    url: str | None = None,
) -> bool:
    """Unsubscribe an address by hand (a phone call, a reply): clear opt-in and suppress it.

    ``channel`` is "email", or "phone" (also "sms") for a number. The address is
    normalised as at import, and every contact point holding it is unsubscribed.
    Returns False if no contact has it; the suppression is added anyway, so a later
    import of that address is not mailed.
    """
    from bulkmail_kernel.contacts.importer import normalize_email, normalize_phone

    channel = point_channel(channel)
    try:
        norm = normalize_email(address) if channel == "email" else normalize_phone(address)
    except ValueError as exc:
        raise ConfigError(
            f"unsubscribe_address: {address!r} is not a valid {channel} ({exc}); give the "
            "address as the contact wrote it",
            address=address,
        ) from exc
    with resolve_database(db, url).session() as s:
        points = s.scalars(
            sa.select(ContactPoint).where(
                ContactPoint.channel == channel, ContactPoint.normalized == norm
            )
        ).all()
        if not points:
            add_suppression(s, channel, norm, reason="unsubscribe", detail=detail)
            return False
        for point in points:
            honour_unsubscribe(s, point, campaign_id=None, detail=detail)
    return True


def add_suppression(
    conn: sa.Connection | Session,
    channel: str,
    normalized: str,
    *,
    reason: str,
    detail: str,
    message_id: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Suppress ``normalized`` on ``channel`` (an existing suppression is kept); True if added.

    The one insert of a suppression: unsubscribes, hard bounces at sending and from
    the bounce mailbox all come here, inside their caller's transaction.
    """
    exists = conn.execute(
        sa.select(Suppression.id).where(
            Suppression.channel == channel, Suppression.normalized == normalized
        )
    ).first()
    if exists is not None:
        return False
    conn.execute(
        sa.insert(Suppression).values(
            channel=channel,
            normalized=normalized,
            reason=reason,
            detail=detail,
            message_id=message_id,
            created_at=now or utcnow(),
        )
    )
    return True


def honour_unsubscribe(
    s: Session, point: ContactPoint, *, campaign_id: int | None, detail: str
) -> None:
    """Clear the point's mailing-allowed flag, suppress its address, record the event."""
    point.mailing_allowed = False
    add_suppression(s, point.channel, point.normalized, reason="unsubscribe", detail=detail)
    s.add(
        Event(
            kind="unsubscribed",
            contact_id=point.contact_id,
            contact_point_id=point.id,
            campaign_id=campaign_id,
            detail=point.normalized,
        )
    )

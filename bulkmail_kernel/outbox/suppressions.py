"""Suppressions and unsubscribes: who must never be mailed again on a channel, and why.

One function adds a suppression (``add_suppression``), whoever asks: an unsubscribe
link, the analyst, a hard bounce, a provider's refusal. It stores an e-mail address by
its identity (``contacts.values.email_identity``), so a suppression of one spelling
suppresses them all. Each claim asks again at send time (``remove_not_allowed``): what
was suppressed since registration is not sent.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel.contacts.consents import add_consent, analyst_source
from bulkmail_kernel.contacts.values import address_identity, email_identity
from bulkmail_kernel.db import (
    ContactPoint,
    Database,
    Event,
    Message,
    MessageStatus,
    Suppression,
    UnsubscribeToken,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.recovery import event_row
from bulkmail_kernel.records import point_channel

log = logging.getLogger("bulkmail")

#: The wording a withdrawal by the unsubscribe link records (the link's own text varies).
UNSUBSCRIBE_TEXT = "unsubscribed with the message's unsubscribe link or List-Unsubscribe"

# Declarative models' __table__ is a Table; SQLAlchemy's stubs only say FromClause.
_M = cast(sa.Table, Message.__table__)


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
        add_consent(s, point.contact_id, "marketing", False, method="unsubscribe",
                    source=f"unsubscribe link of campaign {row.campaign_id}",
                    text=UNSUBSCRIBE_TEXT, contact_point_id=point.id)  # fmt: skip
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

    ``channel`` is "email", or "phone" (also "sms") for a number. The address is keyed
    as at import (any spelling of it: case, IDN form), and every contact point holding
    it is unsubscribed.
    Returns False if no contact has it; the suppression is added anyway, so a later
    import of that address is not mailed.
    """
    channel = point_channel(channel)
    try:
        norm = address_identity(channel, address)
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
            add_consent(s, point.contact_id, "marketing", False, method="analyst",
                        source=analyst_source(s), text=detail,
                        contact_point_id=point.id)  # fmt: skip
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
    the bounce mailbox all come here, inside their caller's transaction. An e-mail
    address may come in any spelling: it is stored as its identity.
    """
    normalized = address_key(channel, normalized)
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


def address_key(channel: str, address: str) -> str:
    """Return what a suppression of ``address`` on ``channel`` is stored and matched by."""
    if channel != "email":
        return address  # phones arrive in E.164 from the points and the provider reports
    try:
        return email_identity(address)
    except ValueError:
        # Never lose a suppression over spelling: what a server reported is kept as it came.
        log.warning("suppression of %r: not a valid e-mail address, stored as given", address)
        return address.strip()


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


_CP = cast(sa.Table, ContactPoint.__table__)
_SUP = cast(sa.Table, Suppression.__table__)
#: Each of messages ``ids`` with its point's ``mailing_allowed`` and any suppression's reason:
#: built once (the send path's claims run it on every batch, see .prepared).
_ALLOWED = (
    sa.select(_M.c.id, _CP.c.mailing_allowed, _SUP.c.reason)
    .select_from(_M)
    .join(_CP, _CP.c.id == _M.c.contact_point_id, isouter=True)
    .join(
        _SUP,
        sa.and_(_SUP.c.channel == _M.c.channel, _SUP.c.normalized == _M.c.recipient),
        isouter=True,
    )
    .where(_M.c.id.in_(sa.bindparam("ids", expanding=True)))
)


def remove_not_allowed(conn: sa.Connection, rows: list[Any], now: datetime) -> list[Any]:
    """Remove the just-claimed ``rows`` no longer allowed to be sent; return the others.

    A contact point unsubscribed, suppressed or with mailing disallowed since
    registration is ``removed`` (the claim's attempt uncounted) with a ``skipped`` event.
    """
    allowed_rows = conn.execute(_ALLOWED, {"ids": [r.id for r in rows]}).all()
    why: dict[int, str] = {}
    for mid, mailing_allowed, suppressed in allowed_rows:
        if suppressed is not None:
            why[mid] = f"suppressed since registration ({suppressed})"
        elif not mailing_allowed:
            why[mid] = "mailing no longer allowed for this contact point"
    refused = [r for r in rows if r.id in why]
    if refused:
        conn.execute(
            sa.update(_M)
            .where(_M.c.id == sa.bindparam("mid"))
            .values(
                status=MessageStatus.REMOVED.value,
                last_error=sa.bindparam("b_why"),
                attempts=_M.c.attempts - 1,
                claimed_by=None,
                updated_at=now,
            ),
            [{"mid": r.id, "b_why": why[r.id]} for r in refused],
        )
        conn.execute(
            sa.insert(Event),
            [event_row("skipped", r, None, why[r.id], {"at": "send time"}, now) for r in refused],
        )
    return [r for r in rows if r.id not in why]

"""What the bounce mailbox concludes, recorded: the message a bounce is about, and what follows.

:mod:`bulkmail_kernel.deliverability.mailbox` reads the mailbox and decides; it asks
here for our message by the Message-ID a bounce returned, by the tag a message-VERP
return path carries, or by the address among the account's campaigns, and
:func:`record_bounce` writes what the bounce means: the ``bounced`` event and the
code on the message; a hard bounce fails the message and suppresses the address
(through :func:`~bulkmail_kernel.outbox.suppressions.add_suppression`), a soft one
counts on the contact point and suppresses at the limit. Also answered here: which
sender account a mailbox belongs to, and whether a word of an unsubscribe mail is
one of our tokens (the unsubscribe itself is :mod:`.suppressions`'s).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel.contacts.values import email_identity
from bulkmail_kernel.db import (
    Campaign,
    ContactPoint,
    Event,
    Message,
    MessageStatus,
    SenderAccount,
    UnsubscribeToken,
)
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.lookup import sender_info
from bulkmail_kernel.outbox.suppressions import add_suppression, hash_token
from bulkmail_kernel.records import SenderInfo


@dataclass(frozen=True)
class BouncedMessage:
    """Our message a bounce was matched to."""

    id: int
    recipient: str
    campaign_id: int


def _bounced(msg: Message | None) -> BouncedMessage | None:
    return None if msg is None else BouncedMessage(msg.id, msg.recipient, msg.campaign_id)


def mailbox_account(s: Session, account: str | int | Any) -> SenderInfo:
    """Return the sender account (name, id, or a row or record with an id) or raise ConfigError."""
    if isinstance(account, SenderAccount):
        return sender_info(account)
    if hasattr(account, "id") and hasattr(account, "settings"):
        account = account.id
    column = SenderAccount.id if isinstance(account, int) else SenderAccount.name
    row = s.scalars(sa.select(SenderAccount).where(column == account)).one_or_none()
    if row is None:
        known = ", ".join(s.scalars(sa.select(SenderAccount.name))) or "(none)"
        raise ConfigError(f"sender account {account!r} does not exist; accounts: {known}")
    return sender_info(row)


def is_unsubscribe_token(s: Session, token: str) -> bool:
    """Return whether ``token`` is an unsubscribe token we issued."""
    return s.get(UnsubscribeToken, hash_token(token)) is not None


def message_by_header(s: Session, message_ids: Sequence[str]) -> BouncedMessage | None:
    """Return our message with one of the Message-ID headers ``message_ids``, if any."""
    return _bounced(
        s.scalars(sa.select(Message).where(Message.message_id_header.in_(message_ids))).first()
    )


def message_by_verp_tag(s: Session, tag: str) -> BouncedMessage | None:
    """Return our message whose Message-ID has the unique part ``tag``, if any."""
    # The tag is the random part of a Message-ID we wrote: unique, so no account filter.
    return _bounced(
        s.scalars(sa.select(Message).where(Message.message_id_header.like(f"<{tag}@%"))).first()
    )


def last_message_to(s: Session, account_id: int, address: str) -> BouncedMessage | None:
    """Return the account's latest e-mail to ``address`` (the last sent first), if any.

    ``address`` may be spelled any way (a server may upper-case it): it matches by identity.
    """
    with suppress(ValueError):  # not an address at all: it matches only as written
        address = email_identity(address)
    return _bounced(
        s.scalars(
            sa.select(Message)
            .join(Campaign, Campaign.id == Message.campaign_id)
            .where(
                Campaign.sender_account_id == account_id,
                Message.channel == "email",
                Message.recipient == address,
            )
            .order_by(Message.sent_at.desc().nulls_last(), Message.id.desc())
        ).first()
    )


def record_bounce(
    s: Session,
    message_id: int,
    *,
    status: str,
    permanent: bool,
    detail: str,
    data: dict[str, Any],
    soft_bounce_limit: int,
    suppress: bool = True,
) -> tuple[str, int]:
    """Record a bounce of message ``message_id``; return its kind and the soft-bounce count.

    Always: a ``bounced`` event (``detail``, ``data``) and the status code and error
    on the message. A permanent bounce fails the message and, unless ``suppress`` is
    False (a refusal about the sender, not the address), suppresses its address
    ("hard_bounce"); a temporary one adds one to the contact point's soft bounces
    ("soft_bounce") and suppresses the address once they reach ``soft_bounce_limit``
    ("soft_bounce_limit"). The count is 0 for a hard bounce.
    """
    msg = s.get(Message, message_id)
    assert msg is not None, message_id
    address = msg.recipient
    point = (
        s.get(ContactPoint, msg.contact_point_id)
        if msg.contact_point_id
        else s.scalars(
            sa.select(ContactPoint).where(
                ContactPoint.channel == "email", ContactPoint.normalized == address
            )
        ).first()
    )
    event = {
        "contact_id": msg.contact_id,
        "contact_point_id": msg.contact_point_id,
        "campaign_id": msg.campaign_id,
        "message_id": msg.id,
    }
    s.add(Event(kind="bounced", detail=detail, data=data, **event))
    msg.last_code = status
    msg.last_error = f"{'hard' if permanent else 'soft'} bounce: {detail}"[:2000]
    if permanent:
        msg.status = MessageStatus.FAILED.value
        if suppress and add_suppression(
            s, "email", address, reason="hard_bounce", detail=detail, message_id=msg.id
        ):
            s.add(Event(kind="suppressed", detail=f"hard bounce: {detail}", **event))
        return "hard_bounce", 0
    count = 0
    if point is not None:
        point.soft_bounces = (point.soft_bounces or 0) + 1
        count = point.soft_bounces
    if count < soft_bounce_limit:
        return "soft_bounce", count
    why = f"{count} soft bounces (limit {soft_bounce_limit}), last {detail}"
    if add_suppression(
        s, "email", address, reason="soft_bounce_limit", detail=why, message_id=msg.id
    ):
        s.add(Event(kind="suppressed", detail=why, **event))
    return "soft_bounce_limit", count


def record_complaint(s: Session, message_id: int, *, detail: str, data: dict[str, Any]) -> bool:
    """Record a complaint about message ``message_id``: suppress and stop mailing the contact.

    A ``complained`` event on the message; the address is suppressed with reason
    ``complaint`` and every contact point holding it has mailing-allowed cleared, as an
    unsubscribe would. The message's status is left alone: it was delivered. Returns
    True if the suppression is new.
    """
    msg = s.get(Message, message_id)
    assert msg is not None, message_id
    event = {
        "contact_id": msg.contact_id,
        "contact_point_id": msg.contact_point_id,
        "campaign_id": msg.campaign_id,
        "message_id": msg.id,
    }
    s.add(Event(kind="complained", detail=detail, data=data, **event))
    points = s.scalars(
        sa.select(ContactPoint).where(
            ContactPoint.channel == "email", ContactPoint.normalized == msg.recipient
        )
    ).all()
    for point in points:
        point.mailing_allowed = False
    added = add_suppression(
        s, "email", msg.recipient, reason="complaint", detail=detail, message_id=msg.id
    )
    if added:
        s.add(Event(kind="suppressed", detail=f"complaint: {detail}", **event))
    return added


def record_notice(
    s: Session, message_id: int, *, kind: str, detail: str, data: dict[str, Any]
) -> None:
    """Add an event ``kind`` (auto_reply, delivery_report) to message ``message_id``'s history.

    Nothing else changes: no status, no suppression, no soft-bounce count.
    """
    msg = s.get(Message, message_id)
    assert msg is not None, message_id
    s.add(
        Event(
            kind=kind,
            detail=detail[:2000],
            data=data,
            contact_id=msg.contact_id,
            contact_point_id=msg.contact_point_id,
            campaign_id=msg.campaign_id,
            message_id=msg.id,
        )
    )

"""Erasure on request (GDPR art. 17), the outbox's part: anonymise one person's history.

The person's messages stay as rows, so a campaign's counts (sent, failed, bounced) still
add up after the erasure, but lose everything that points to the person: the recipient
becomes ``erased-<message id>``, the contact and point links are cleared, a message
still queued or deferred is removed (it must not go out to the erased address), the rendered
body and subject (which held their name) are emptied, and so are error texts (a relay
quotes the address in them). Their events keep kind, time, campaign and message, and lose
detail and data; their suppressions and unsubscribe tokens are deleted (the salted hash
kept by ``contacts.forgotten`` refuses the address instead). The contact itself is
deleted by the caller (``campaigns.privacy.forget_contact``) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from bulkmail_kernel.db import (
    Event,
    Message,
    MessageBody,
    MessageStatus,
    Suppression,
    UnsubscribeToken,
    chunks,
)
from bulkmail_kernel.outbox.clicks import erase_links

_M = cast(sa.Table, Message.__table__)
_B = cast(sa.Table, MessageBody.__table__)
_E = cast(sa.Table, Event.__table__)

_NOT_YET_SENT = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)

#: The audit event an erasure leaves behind; it names no person.
FORGOTTEN = "forgotten"


def _count(result: Any) -> int:
    """Return the rows an UPDATE or DELETE touched (a Session hands back a CursorResult)."""
    return int(cast("CursorResult[Any]", result).rowcount)


def erase_outbox_history(
    s: Session,
    contact_id: int,
    point_ids: Collection[int],
    addresses: Collection[tuple[str, str]],
    now: datetime,
) -> dict[str, int]:
    """Anonymise one contact's messages and events, drop their suppressions; return counts.

    ``addresses`` are the person's (channel, identity) pairs: messages registered to them
    without a contact link (a campaign from a DataFrame) are anonymised too.
    """
    by_person = sa.or_(
        _M.c.contact_id == contact_id,
        _M.c.contact_point_id.in_(list(point_ids) or [-1]),
        *(sa.and_(_M.c.channel == ch, _M.c.recipient == ident) for ch, ident in addresses),
    )
    message_ids = list(s.scalars(sa.select(_M.c.id).where(by_person)))
    for chunk in chunks(message_ids):
        s.execute(
            sa.update(_M)
            .where(_M.c.id.in_(chunk))
            .values(
                recipient=sa.literal("erased-") + sa.cast(_M.c.id, sa.String),
                contact_id=None,
                contact_point_id=None,
                last_error="",
                updated_at=now,
            )
        )
        # What was still to go must not go to "erased-<id>": removed, like the analyst's removal.
        s.execute(
            sa.update(_M)
            .where(_M.c.id.in_(chunk), _M.c.status.in_(_NOT_YET_SENT))
            .values(status=MessageStatus.REMOVED.value, next_attempt_at=None)
        )
        s.execute(sa.update(_B).where(_B.c.message_id.in_(chunk)).values(subject="", body=b""))
        erase_links(
            s, list(chunk)
        )  # a tracked link may carry their data; the event keeps the count
    conds = [_E.c.contact_id == contact_id]
    if point_ids:
        conds.append(_E.c.contact_point_id.in_(list(point_ids)))
    n_events = 0
    for chunk in chunks(message_ids) if message_ids else [()]:
        where = sa.or_(*conds, _E.c.message_id.in_(list(chunk))) if chunk else sa.or_(*conds)
        n_events += _count(
            s.execute(
                sa.update(_E)
                .where(where, _E.c.kind != FORGOTTEN)
                .values(contact_id=None, contact_point_id=None, detail="", data={})
            )
        )
    n_supp = 0
    for ch, ident in addresses:
        n_supp += _count(
            s.execute(
                sa.delete(Suppression).where(
                    Suppression.channel == ch, Suppression.normalized == ident
                )
            )
        )
    if point_ids:
        s.execute(
            sa.delete(UnsubscribeToken).where(
                UnsubscribeToken.contact_point_id.in_(list(point_ids))
            )
        )
    counts = {"messages": len(message_ids), "events": n_events, "suppressions": n_supp}
    # The audit line: that an erasure happened, when, and how much it touched; no person.
    s.add(
        Event(
            kind=FORGOTTEN,
            occurred_at=now,
            detail="contact erased on request (GDPR art. 17)",
            data={**counts, "addresses": len(addresses)},
        )
    )
    return counts

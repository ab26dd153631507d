"""The send path's hot statements, built once as SQLAlchemy Core with expanding parameters.

Building ``update(...).where(id.in_([...]))`` anew for every group of messages coerced
each id into its own literal and rebuilt the statement's cache key: a tenth of the
sending thread's time (issue 18). These are built at import, their ids bound as one
expanding parameter, so each use is a cached compile and one round trip.
"""

from __future__ import annotations

from typing import cast

import sqlalchemy as sa

from bulkmail_kernel.db import Message, MessageBody, MessageStatus

_M = cast(sa.Table, Message.__table__)
_MB = cast(sa.Table, MessageBody.__table__)

_IDS: sa.BindParameter[list[int]] = sa.bindparam("ids", expanding=True)

#: Record plain successes of one reply code: ``ids``, ``worker``, ``code``, ``now``. The
#: claim already counted this attempt: ``attempts`` stays as it is.
SENT = (
    sa.update(_M)
    .where(_M.c.id.in_(_IDS), _M.c.claimed_by == sa.bindparam("worker"))
    .values(
        status=MessageStatus.SENT.value,
        last_code=sa.bindparam("code", type_=_M.c.last_code.type),
        last_error="",
        next_attempt_at=None,
        sent_at=sa.bindparam("now", type_=_M.c.sent_at.type),
        provider_message_id=None,
        claimed_by=None,
        updated_at=sa.bindparam("now", type_=_M.c.updated_at.type),
    )
)

#: Mark ``ids`` handed over at ``now`` where ``worker`` still holds them; returns those.
MARK = (
    sa.update(_M)
    .where(
        _M.c.id.in_(_IDS),
        _M.c.claimed_by == sa.bindparam("worker"),
        _M.c.status == MessageStatus.SENDING.value,
    )
    .values(handed_at=sa.bindparam("now", type_=_M.c.handed_at.type))
    .returning(_M.c.id)
)

#: The stored bytes of messages ``ids``: (message id, body).
BODIES = sa.select(_MB.c.message_id, _MB.c.body).where(_MB.c.message_id.in_(_IDS))

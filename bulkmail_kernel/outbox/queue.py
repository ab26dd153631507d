"""The queue: registered messages stored, listed, removed, requeued.

``store_messages`` is how registration puts messages into the outbox (state in
``messages``, bytes in ``message_bodies``, the unsubscribe tokens as hashes, a
``registered`` event each); the rest are the analyst's edits of the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import CursorResult

from bulkmail_kernel import config
from bulkmail_kernel.db import (
    Campaign,
    CampaignStatus,
    Database,
    Event,
    Message,
    MessageBody,
    MessageLink,
    MessageStatus,
    UnsubscribeToken,
    chunks,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import SendError
from bulkmail_kernel.outbox.caps import CapCheck
from bulkmail_kernel.outbox.domains import domain_group
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.outbox.suppressions import hash_token
from bulkmail_kernel.records import CampaignRef

log = logging.getLogger("bulkmail")

#: Statuses a message can be removed from the queue in (sent ones are history).
REMOVABLE = (MessageStatus.QUEUED, MessageStatus.DEFERRED, MessageStatus.UNKNOWN)


_QUEUE_COLUMNS = [
    "message_id",
    "contact_id",
    "contact_point_id",
    "recipient",
    "domain_group",
    "subject",
    "status",
    "attempts",
    "next_attempt_at",
    "sent_at",
    "last_code",
    "last_error",
    "message_id_header",
]


def queue(
    campaign: CampaignRef,
    *,
    status: str | Sequence[str] | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the campaign's messages (optionally only those in ``status``) as a DataFrame.

    ``next_attempt_at`` and ``sent_at`` are in the analyst's zone (``BULKMAIL_TZ``);
    ``domain_group`` is the recipient's mailbox provider, whose per-hour limit it waits for.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        q = (
            sa.select(
                Message.id,
                Message.contact_id,
                Message.contact_point_id,
                Message.recipient,
                Message.domain_group,
                MessageBody.subject,
                Message.status,
                Message.attempts,
                Message.next_attempt_at,
                Message.sent_at,
                Message.last_code,
                Message.last_error,
                Message.message_id_header,
            )
            .join(MessageBody, MessageBody.message_id == Message.id, isouter=True)
            .where(Message.campaign_id == c.id)
            .order_by(Message.id)
        )
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            q = q.where(Message.status.in_(wanted))
        rows = s.execute(q).all()
    frame = pd.DataFrame(rows, columns=_QUEUE_COLUMNS)
    frame["message_id"] = frame["message_id"].astype("int64")
    for col in ("contact_id", "contact_point_id", "attempts"):
        frame[col] = frame[col].astype("Int64")
    for col in ("next_attempt_at", "sent_at"):
        frame[col] = (
            pd.to_datetime(frame[col], utc=True)
            .astype("datetime64[us, UTC]")
            .dt.tz_convert(config.local_timezone())
        )
    frame["status"] = frame["status"].astype(pd.CategoricalDtype([m.value for m in MessageStatus]))
    return readable(frame)


def _message_ids(messages: Iterable[int] | pd.DataFrame | pd.Series) -> list[int]:
    if isinstance(messages, pd.DataFrame):
        if "message_id" not in messages.columns:
            raise SendError(
                "remove_from_queue: the frame has no 'message_id' column: "
                "filter the frame that queue() returned"
            )
        messages = messages["message_id"]
    return [int(m) for m in messages]


def remove_from_queue(
    campaign: CampaignRef,
    messages: Iterable[int] | pd.DataFrame | pd.Series,
    *,
    reason: str = "removed by the analyst",
    db: Database | None = None,
    url: str | None = None,
) -> int:
    """Take messages (ids, or a frame filtered from ``queue()``) out of the queue; return how many.

    Only queued, deferred and unknown messages can be removed; sent and failed
    ones are history and stay.
    """
    ids = _message_ids(messages)
    database = resolve_database(db, url)
    removed = 0
    with database.session() as s:
        c = campaign_row(s, campaign)
        for chunk in chunks(ids, 500):
            rows = s.execute(
                sa.update(Message)
                .where(
                    Message.campaign_id == c.id,
                    Message.id.in_(chunk),
                    Message.status.in_([m.value for m in REMOVABLE]),
                )
                .values(status=MessageStatus.REMOVED.value, last_error=reason, updated_at=utcnow())
                .returning(Message.id, Message.contact_id, Message.contact_point_id)
            ).all()
            if rows:
                s.execute(
                    sa.insert(Event),
                    [
                        {
                            "kind": "removed",
                            "contact_id": r.contact_id,
                            "contact_point_id": r.contact_point_id,
                            "campaign_id": c.id,
                            "message_id": r.id,
                            "detail": reason,
                            "data": {},
                        }
                        for r in rows
                    ],
                )
            removed += len(rows)
    log.info("campaign %s: %d messages removed from the queue", campaign, removed)
    return removed


def unknown_messages(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """List the messages whose fate is unknown (a worker died or a connection broke mid-send)."""
    return queue(campaign, status=MessageStatus.UNKNOWN.value, db=db, url=url)


def requeue(
    campaign: CampaignRef,
    messages: Iterable[int] | pd.DataFrame | pd.Series,
    *,
    db: Database | None = None,
    url: str | None = None,
) -> int:
    """Queue unknown or failed messages again; return how many.

    An unknown one only after checking it did not arrive. A failed one never arrived:
    after a circuit breaker's pause (a blocklisting refused them all), requeue the
    campaign's failed messages once the cause is fixed. One whose address is suppressed
    (a hard bounce) is removed when it is claimed, never sent.
    """
    ids = _message_ids(messages)
    with resolve_database(db, url).session() as s:
        c = campaign_row(s, campaign)
        n = 0
        for chunk in chunks(ids, 500):
            # Session.execute is typed as returning Result; an UPDATE returns a CursorResult.
            result = cast(
                CursorResult[Any],
                s.execute(
                    sa.update(Message)
                    .where(
                        Message.campaign_id == c.id,
                        Message.id.in_(chunk),
                        Message.status.in_(
                            [MessageStatus.UNKNOWN.value, MessageStatus.FAILED.value]
                        ),
                    )
                    .values(status=MessageStatus.QUEUED.value, next_attempt_at=None)
                ),
            )
            n += result.rowcount
        if n and c.status == CampaignStatus.FINISHED.value:
            c.status = CampaignStatus.REGISTERED.value
    return n


def store_messages(
    database: Database,
    cid: int,
    channel: str,
    messages: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    now: datetime,
    cap: CapCheck | None = None,
) -> int:
    """Store registered messages (state, body, token hash, event) and skip events, in one go.

    Return how many messages were stored: a recipient another registration of the
    campaign stored meanwhile is left to it, with the bytes it rendered. With ``cap``, a
    recipient over the frequency cap is skipped instead, judged in this transaction
    (see :mod:`.caps`; ``cap.skipped`` lists them).
    """
    stored = 0
    with database.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two registrations of one campaign at once (two `bulkmail register`): the second
            # waits here until the first commits, then finds its recipients taken. Locking the
            # campaign row first, rather than waiting on each conflicting message row, keeps two
            # frames in different orders from deadlocking. SQLite lets one writer in at a time.
            conn.execute(sa.select(Campaign.id).where(Campaign.id == cid).with_for_update())
        if cap is not None:
            messages = cap.hold(conn, channel, messages, now)
            skipped = [*skipped, *cap.skipped]
        for chunk in chunks(messages, 500):
            rows = conn.execute(
                _insert_new(conn).returning(Message.id, Message.recipient),
                [
                    {
                        "campaign_id": cid,
                        "contact_id": m["point"].contact_id,
                        "contact_point_id": m["point"].id,
                        "channel": channel,
                        "recipient": m["point"].normalized,
                        "status": MessageStatus.QUEUED.value,
                        "attempts": 0,
                        "message_id_header": m["message_id"],
                        "timezone": m.get("timezone"),
                        "last_error": "",
                        # Whose per-hour limit it counts against (an SMS: no one's).
                        "domain_group": domain_group(m["point"].normalized)
                        if channel == "email"
                        else "",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for m in chunk
                ],
            ).all()
            ids = {r.recipient: r.id for r in rows}
            chunk = [m for m in chunk if m["point"].normalized in ids]
            stored += len(chunk)
            if not chunk:
                continue
            conn.execute(
                sa.insert(MessageBody),
                [
                    {
                        "message_id": ids[m["point"].normalized],
                        "subject": m["subject"],
                        "body": m["body"],
                    }
                    for m in chunk
                ],
            )
            # A tracked message's original links, in the same transaction: a worker can
            # never send a message whose /c/ links lead nowhere (docs/tracking.md).
            links = [
                {"message_id": ids[m["point"].normalized], "link": i, "url": url}
                for m in chunk
                for i, url in enumerate(m.get("links") or ())
            ]
            if links:
                conn.execute(sa.insert(MessageLink), links)
            tokens = [
                {
                    "token_hash": hash_token(m["token"]),
                    "contact_point_id": m["point"].id,
                    "campaign_id": cid,
                    "created_at": now,
                }
                for m in chunk
                if m["token"] is not None
            ]
            if tokens:
                conn.execute(sa.insert(UnsubscribeToken), tokens)
            conn.execute(
                sa.insert(Event),
                [
                    {
                        "kind": "registered",
                        "contact_id": m["point"].contact_id,
                        "contact_point_id": m["point"].id,
                        "campaign_id": cid,
                        "message_id": ids[m["point"].normalized],
                        "detail": m["subject"][:2000],
                        "data": {},
                        "occurred_at": now,
                    }
                    for m in chunk
                ],
            )
        if skipped:
            # A recipient skipped for the same reason before (registering again, or a
            # registration running at the same time) is one line in skipped(), not one per run.
            known = {
                (r.contact_point_id, r.detail)
                for r in conn.execute(
                    sa.select(Event.contact_point_id, Event.detail).where(
                        Event.campaign_id == cid, Event.kind == "skipped"
                    )
                )
            }
            fresh = [e for e in skipped if (e["contact_point_id"], e["detail"]) not in known]
            if fresh:
                conn.execute(sa.insert(Event), fresh)
    return stored


def _insert_new(conn: sa.Connection) -> sa.Insert:
    """Return an INSERT into messages that leaves out a recipient the campaign already has."""
    # ON CONFLICT DO NOTHING on (campaign_id, channel, recipient): the constraint decides who
    # registered a recipient first, and RETURNING names only the rows this INSERT stored.
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(Message).on_conflict_do_nothing(
            index_elements=["campaign_id", "channel", "recipient"]
        )
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(Message).on_conflict_do_nothing(
        index_elements=["campaign_id", "channel", "recipient"]
    )

"""Workers: their registration and heartbeat, and the recovery of a dead worker's claims.

A worker announces itself in ``workers`` and beats while it sends. When one is gone
(heartbeat too old or, on this machine, no such process), whatever it left in
``sending`` is recovered: marked handed over means it may have gone out (``unknown``,
for the analyst to resend or drop, never resent silently); unmarked means it never
reached the transport and goes back to the queue. :class:`~.store.OutboxStore`
exposes these as its methods.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.db import Database, Event, Message, MessageStatus, Worker, chunks
from bulkmail_kernel.outbox.journal import (
    Answer,
    pid_alive,
    read_journal,
    remove_journal,
    stale_journals,
)

log = logging.getLogger("bulkmail")

# Declarative models' __table__ is a Table; SQLAlchemy's stubs only say FromClause.
_M = cast(sa.Table, Message.__table__)


def new_worker_id() -> str:
    """Return a worker id naming the host and process, unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def event_row(
    kind: str, m: Any, campaign_id: int | None, detail: str, data: dict[str, Any], now: Any
) -> dict[str, Any]:
    """Return the ``events`` row for message ``m`` (a claimed message or a ``messages`` row)."""
    return {
        "kind": kind,
        "contact_id": m.contact_id,
        "contact_point_id": m.contact_point_id,
        "campaign_id": campaign_id if campaign_id is not None else getattr(m, "campaign_id", None),
        "message_id": m.id,
        "detail": detail[:2000],
        "data": data,
        "occurred_at": now,
    }


def back_to_queue() -> dict[str, Any]:
    """Return the column values that put a claimed, never-sent message back where it was."""
    return {
        "status": sa.case(
            (_M.c.next_attempt_at.is_(None), MessageStatus.QUEUED.value),
            else_=MessageStatus.DEFERRED.value,
        ),
        "attempts": _M.c.attempts - 1,  # the claim counted an attempt that never happened
        "claimed_by": None,
        "handed_at": None,
    }


def register_worker(database: Database, worker_id: str, now: datetime) -> None:
    """Announce worker ``worker_id`` (so its claims are not taken for a dead one's)."""
    with database.session() as s:
        row = s.get(Worker, worker_id)
        if row is None:
            s.add(
                Worker(
                    id=worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        else:
            row.heartbeat_at = now


def beat(conn: sa.Connection, worker_id: str, now: datetime) -> bool:
    """Record that worker ``worker_id`` is alive at ``now``, inside the caller's transaction.

    False if its row is gone: another worker took it for dead and recovered its claims.
    """
    result = conn.execute(sa.update(Worker).where(Worker.id == worker_id).values(heartbeat_at=now))
    return bool(result.rowcount)


def unregister_worker(database: Database, worker_id: str) -> None:
    """Remove the worker's row on a clean exit."""
    with database.engine.begin() as conn:
        conn.execute(sa.delete(Worker).where(Worker.id == worker_id))


def recover(
    database: Database,
    worker_id: str,
    now: datetime,
    *,
    stale_after_s: float | None = None,
    journals: Path | None = None,
) -> pd.DataFrame:
    """Flag ``unknown`` what a worker that is gone may have sent; requeue what it never did.

    ``worker_id`` is the caller, alive by definition; ``stale_after_s`` defaults to
    ``config.dead_worker_s()``. ``journals`` is this machine's journal folder: a dead
    worker's journal there settles most of what it handed over (see :mod:`.journal`).
    See :meth:`~.store.OutboxStore.recover`.

    Only the claims of the workers found dead here, or of no worker at all, are
    touched: a worker that registers (and claims) while this runs is not in the list
    read first, but it has a row, and every statement below checks for one (issue 13:
    at 20 messages/h two workers took each other's claims in turns).
    """
    if stale_after_s is None:
        stale_after_s = config.dead_worker_s()
    host = socket.gethostname()
    with database.session() as s:
        workers = s.scalars(sa.select(Worker)).all()
        alive = {
            w.id
            for w in workers
            if w.id == worker_id
            or (
                (now - w.heartbeat_at).total_seconds() < stale_after_s
                and (w.hostname != host or pid_alive(w.pid))
            )
        }
        dead = {w.id: w.heartbeat_at for w in workers if w.id not in alive}
        orphaned = _orphaned(dead)
        rows = s.execute(
            sa.select(
                _M.c.id,
                _M.c.campaign_id,
                _M.c.contact_id,
                _M.c.contact_point_id,
                _M.c.recipient,
                _M.c.claimed_by,
                _M.c.handed_at,
            )
            .where(_M.c.status == MessageStatus.SENDING.value)
            .where(orphaned)
        ).all()
        # Never handed to the transport: it cannot have gone out, so it goes back.
        fresh = [r for r in rows if r.handed_at is None]
        requeued: set[int] = set()
        for chunk in chunks([r.id for r in fresh], 500):
            requeued |= set(
                s.execute(
                    sa.update(_M)
                    .where(
                        _M.c.id.in_(chunk),
                        _M.c.status == MessageStatus.SENDING.value,
                        _M.c.handed_at.is_(None),
                        orphaned,
                    )
                    .values(**back_to_queue())
                    .returning(_M.c.id)
                ).scalars()
            )
        # (One marked in the meantime by a worker presumed dead stays: next pass, unknown.)
        fresh = [r for r in fresh if r.id in requeued]
        if fresh:
            s.execute(
                sa.insert(Event),
                [
                    event_row(
                        "requeued",
                        r,
                        r.campaign_id,
                        f"worker {r.claimed_by} died before handing it to the server: "
                        "back in the queue",
                        {"worker": r.claimed_by},
                        now,
                    )
                    for r in fresh
                ],
            )
            log.warning(
                "%d messages claimed by a worker that died were never handed over: requeued",
                len(fresh),
            )
        rows = [r for r in rows if r.handed_at is not None]
        # A dead worker's journal (same machine) says which handed messages it never
        # began (back to the queue) and which the server accepted (sent); see .journal.
        said = _journal_answers(journals, {r.claimed_by for r in rows if r.claimed_by})
        back = [r for r in rows if _said(said, r) in ("never", "refused")]
        back_ids: set[int] = set()
        for chunk in chunks([r.id for r in back], 500):
            back_ids |= set(
                s.execute(
                    sa.update(_M)
                    .where(_M.c.id.in_(chunk), _M.c.status == MessageStatus.SENDING.value, orphaned)
                    .values(**back_to_queue())
                    .returning(_M.c.id)
                ).scalars()
            )
        back = [r for r in back if r.id in back_ids]
        if back:
            s.execute(
                sa.insert(Event),
                [
                    event_row(
                        "requeued",
                        r,
                        r.campaign_id,
                        f"worker {r.claimed_by} died; its journal shows the message "
                        + (
                            "was refused by the server"
                            if _said(said, r) == "refused"
                            else "never reached the server"
                        )
                        + ": back in the queue",
                        {"worker": r.claimed_by, "journal": True},
                        now,
                    )
                    for r in back
                ],
            )
            log.warning(
                "%d messages handed over by a worker that died never left (its journal says "
                "so): requeued",
                len(back),
            )
        accepted = [(r, _answer(said, r)) for r in rows if _said(said, r) == "sent"]
        recorded = _record_journal_sent(s, accepted, now, orphaned)
        if recorded:
            log.warning(
                "%d messages sent by a worker that died before recording them: recorded "
                "sent from its journal",
                len(recorded),
            )
        rows = [r for r in rows if _said(said, r) in ("begun", "unknown", "untrusted")]
        if rows:
            flagged: set[int] = set()
            for chunk in chunks([r.id for r in rows], 500):
                flagged |= set(
                    s.execute(
                        sa.update(_M)
                        .where(
                            _M.c.id.in_(chunk),
                            _M.c.status == MessageStatus.SENDING.value,
                            orphaned,
                        )
                        .values(
                            status=MessageStatus.UNKNOWN.value,
                            last_error="the worker died while sending: it may or may not have "
                            "gone out; check and requeue() or remove_from_queue()",
                        )
                        .returning(_M.c.id)
                    ).scalars()
                )
            rows = [r for r in rows if r.id in flagged]
        if rows:
            s.execute(
                sa.insert(Event),
                [
                    event_row(
                        "unknown",
                        r,
                        r.campaign_id,
                        f"worker {r.claimed_by} died while sending",
                        {"worker": r.claimed_by},
                        now,
                    )
                    for r in rows
                ],
            )
            log.warning(
                "%d messages were being sent by a worker that died: flagged 'unknown' "
                "(list them with unknown_messages())",
                len(rows),
            )
        # Only as last seen: a row that beat since was alive after all, and stays.
        table = cast(sa.Table, Worker.__table__)
        for w, hb in dead.items():
            gone = (
                s.connection()
                .execute(sa.delete(table).where(table.c.id == w, table.c.heartbeat_at == hb))
                .rowcount
            )
            if gone:
                log.warning(
                    "worker %s taken for dead (no heartbeat for %g s, or no such process here)",
                    w,
                    stale_after_s,
                )
    if journals is not None:
        # Committed: the dead workers' journals have said all they can.
        for wid in {w for w in said} | set(stale_journals(journals)):
            if wid not in alive:
                remove_journal(journals, wid)
    return pd.DataFrame(
        [(r.id, r.campaign_id, r.recipient, r.claimed_by) for r in rows],
        columns=["message_id", "campaign_id", "recipient", "claimed_by"],
    )


def _orphaned(dead: dict[str, datetime]) -> sa.ColumnElement[bool]:
    """Return the condition of a claim no live worker holds: a dead one's, or nobody's.

    Checked against ``workers`` as the statement runs: a worker taken for dead that
    beat since (its heartbeat is no longer the one seen) keeps its claims.
    """
    holder = sa.select(Worker.id).where(Worker.id == _M.c.claimed_by)
    still_dead = [sa.and_(Worker.id == w, Worker.heartbeat_at == hb) for w, hb in dead.items()]
    return sa.or_(
        _M.c.claimed_by.is_(None),
        ~holder.exists(),
        holder.where(sa.or_(*still_dead)).exists() if still_dead else sa.false(),
    )


def _journal_answers(
    journals: Path | None, worker_ids: set[str]
) -> dict[str, dict[int, Answer] | None]:
    """Return each dead worker's journal (None: none here, or not to be trusted)."""
    if journals is None:
        return {}
    return {w: read_journal(journals, w) for w in sorted(worker_ids)}


def _said(said: dict[str, dict[int, Answer] | None], r: Any) -> str:
    """Return what row ``r``'s worker journal says of it ('untrusted': nothing to go by).

    One of never (not begun), sent, refused, begun (no answer), unknown, untrusted.
    """
    answers = said.get(r.claimed_by) if r.claimed_by else None
    if answers is None:
        return "untrusted"
    a = answers.get(r.id)
    return "never" if a is None else a.outcome


def _answer(said: dict[str, dict[int, Answer] | None], r: Any) -> Answer:
    answers = said[r.claimed_by]
    assert answers is not None
    return answers[r.id]


def _record_journal_sent(
    s: Any, accepted: list[tuple[Any, Answer]], now: datetime, orphaned: sa.ColumnElement[bool]
) -> list[Any]:
    """Record as sent what a dead worker's journal shows accepted; return the rows recorded."""
    done = []
    for r, a in accepted:
        at = datetime.fromtimestamp(a.at, UTC) if a.at is not None else now
        hit = s.execute(
            sa.update(_M)
            .where(
                _M.c.id == r.id,
                _M.c.status == MessageStatus.SENDING.value,
                _M.c.claimed_by == r.claimed_by,
                orphaned,
            )
            .values(
                status=MessageStatus.SENT.value,
                last_code=str(a.code) if a.code is not None else None,
                last_error="",
                next_attempt_at=None,
                sent_at=at,
                provider_message_id=a.provider_message_id,
                claimed_by=None,
                updated_at=now,
            )
            .returning(_M.c.id)
        ).first()
        if hit is not None:
            done.append((r, a))
    if done:
        s.execute(
            sa.insert(Event),
            [
                event_row(
                    "sent",
                    r,
                    r.campaign_id,
                    f"accepted ({a.code}); recorded from the journal of worker "
                    f"{r.claimed_by}, which died before recording it",
                    {"worker": r.claimed_by, "code": a.code, "recovered": True},
                    now,
                )
                for r, a in done
            ],
        )
    return [r for r, _ in done]

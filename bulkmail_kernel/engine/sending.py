"""The sending engine: a store that claims and records, a throttled loop, and the worker.

Per message the state machine is::

    queued ──claim──> sending ──> sent
                         │──────> deferred ──(backoff elapsed)──> sending ...
                         │──────> failed       (5xx, or retries expired)
                         └──────> unknown      (worker died / connection broke after the content)

A claim is one guarded UPDATE: ``... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``
on PostgreSQL, so several workers never take the same message, and on SQLite the
same statement is atomic because SQLite has one writer at a time. Within a batch,
every few messages (one at campaign rates, 50 unthrottled) the loop records what
went out and, in the same commit, marks the next few ``handed_at`` before they go
to the transport. If the process dies, its messages stay in ``sending``; the next
worker flags the marked ones ``unknown`` (they may have gone out) for the analyst
to resend or drop, never resending them silently, and puts the unmarked rest of
the claim back in the queue (they cannot have gone out).

``send(connections=N)`` runs N such loops as threads of one worker, each over its
own SMTP connection, all claiming through that same statement and taking their
turn from the one shared token bucket; a fatal answer or Ctrl-C in any of them
stops them all, each recording what it sent and putting the rest back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
from tqdm.auto import tqdm

from bulkmail_kernel.compose.headers import envelope_from
from bulkmail_kernel.db import (
    Campaign,
    CampaignStatus,
    ContactPoint,
    Database,
    Event,
    Message,
    MessageBody,
    MessageStatus,
    Suppression,
    Worker,
    resolve_database,
)
from bulkmail_kernel.deliverability.dkim import (
    SIGNED_HEADERS,
    DkimSigner,
    prepare_outgoing,
    signer_for,
)
from bulkmail_kernel.engine.throttle import SYSTEM_CLOCK, Clock, SharedTokenBucket, Throttle
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.lookup import campaign_row, sender_of
from bulkmail_kernel.records import CampaignRef, SenderInfo, campaign_channel
from bulkmail_kernel.transports import SendResult, Transport, open_transport

log = logging.getLogger("bulkmail")

# Declarative models' __table__ is a Table; SQLAlchemy's stubs only say FromClause.
_M = cast(sa.Table, Message.__table__)
_CLAIMABLE = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)
_OPEN = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value, MessageStatus.SENDING.value)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for 4xx answers and dropped connections (Postfix-like defaults)."""

    retry_backoff_s: float = 300.0
    max_backoff_s: float = 4000.0
    expiry_s: float = 5 * 86400.0

    def delay_s(self, attempts: int) -> float:
        """Return the wait before the next try after ``attempts`` failed tries."""
        return min(self.max_backoff_s, self.retry_backoff_s * 2 ** max(0, attempts - 1))

    def waited_s(self, attempts: int) -> float:
        """Return the total backoff spent once ``attempts`` tries were deferred."""
        return sum(self.delay_s(k) for k in range(1, attempts + 1))


@dataclass(frozen=True)
class Claimed:
    """A message this worker holds in ``sending``."""

    id: int
    contact_id: int | None
    contact_point_id: int | None
    recipient: str
    attempts: int
    body: bytes = field(repr=False)
    #: The contact-point channel, "email" or "phone": what a hard bounce suppresses.
    channel: str = "email"
    #: The Message-ID fixed at registration (a VERP return path carries its unique part).
    message_id_header: str = ""
    #: Marked handed over by the claim itself (``claim(hand=...)``).
    handed: bool = False


@dataclass(frozen=True)
class SendSummary:
    """What one ``send`` call did, and what is left."""

    campaign: str
    status: str
    sent: int
    deferred: int
    failed: int
    unknown: int
    removed: int
    remaining: int
    elapsed_s: float
    connections: int


# --------------------------------------------------------------------------- store


class OutboxStore:
    """Claims batches of messages for one worker and records what happened to them."""

    def __init__(self, database: Database, worker_id: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = database
        self.worker_id = worker_id
        self.clock = clock

    # -- workers ---------------------------------------------------------------

    def register_worker(self) -> None:
        """Announce this worker (so its claims are not taken for a dead one's)."""
        now = self.clock.now()
        with self.db.session() as s:
            row = s.get(Worker, self.worker_id)
            if row is None:
                s.add(
                    Worker(
                        id=self.worker_id,
                        hostname=socket.gethostname(),
                        pid=os.getpid(),
                        started_at=now,
                        heartbeat_at=now,
                    )
                )
            else:
                row.heartbeat_at = now

    def heartbeat(self) -> None:
        """Say this worker is alive."""
        with self.db.engine.begin() as conn:
            conn.execute(
                sa.update(Worker)
                .where(Worker.id == self.worker_id)
                .values(heartbeat_at=self.clock.now())
            )

    def unregister_worker(self) -> None:
        """Remove this worker's row on a clean exit."""
        with self.db.engine.begin() as conn:
            conn.execute(sa.delete(Worker).where(Worker.id == self.worker_id))

    def recover(self, *, stale_after_s: float = 120.0) -> pd.DataFrame:
        """Flag ``unknown`` what a worker that is gone may have sent; requeue what it never did.

        A worker is gone when its heartbeat is older than ``stale_after_s`` or, on
        this machine, its process no longer exists. Of its messages left in
        ``sending``, those marked handed over (``handed_at``) may or may not have gone
        out and become ``unknown``; the others never reached the transport and go back
        to the queue. Returns the messages flagged unknown.
        """
        now = self.clock.now()
        host = socket.gethostname()
        with self.db.session() as s:
            workers = s.scalars(sa.select(Worker)).all()
            alive = {
                w.id
                for w in workers
                if w.id == self.worker_id
                or (
                    (now - w.heartbeat_at).total_seconds() < stale_after_s
                    and (w.hostname != host or _pid_alive(w.pid))
                )
            }
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
                .where(sa.or_(_M.c.claimed_by.is_(None), _M.c.claimed_by.not_in(alive)))
            ).all()
            # Never handed to the transport: it cannot have gone out, so it goes back.
            fresh = [r for r in rows if r.handed_at is None]
            requeued: set[int] = set()
            for chunk in _chunks([r.id for r in fresh], 500):
                requeued |= set(
                    s.execute(
                        sa.update(_M)
                        .where(
                            _M.c.id.in_(chunk),
                            _M.c.status == MessageStatus.SENDING.value,
                            _M.c.handed_at.is_(None),
                        )
                        .values(**_back_to_queue())
                        .returning(_M.c.id)
                    ).scalars()
                )
            # (One marked in the meantime by a worker presumed dead stays: next pass, unknown.)
            fresh = [r for r in fresh if r.id in requeued]
            if fresh:
                s.execute(
                    sa.insert(Event),
                    [
                        _event(
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
            if rows:
                ids = [r.id for r in rows]
                for chunk in _chunks(ids, 500):
                    s.execute(
                        sa.update(Message)
                        .where(Message.id.in_(chunk), Message.status == MessageStatus.SENDING.value)
                        .values(
                            status=MessageStatus.UNKNOWN.value,
                            last_error="the worker died while sending: it may or may not have "
                            "gone out; check and requeue() or remove_from_queue()",
                        )
                    )
                s.execute(
                    sa.insert(Event),
                    [
                        _event(
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
            dead = [w.id for w in workers if w.id not in alive]
            if dead:
                s.execute(sa.delete(Worker).where(Worker.id.in_(dead)))
        return pd.DataFrame(
            [(r.id, r.campaign_id, r.recipient, r.claimed_by) for r in rows],
            columns=["message_id", "campaign_id", "recipient", "claimed_by"],
        )

    # -- claims ----------------------------------------------------------------

    def claim(self, campaign_id: int, limit: int, *, hand: int = 0) -> list[Claimed]:
        """Move up to ``limit`` due messages of the campaign to ``sending`` and return them.

        Permission is checked again here: a contact point that was unsubscribed,
        suppressed or had mailing disallowed since registration is removed, not sent.
        The first ``hand`` are marked handed over in the same commit (``Claimed.handed``),
        and the worker's heartbeat goes with it too: one write fewer each.
        """
        now = self.clock.now()
        due = sa.or_(
            _M.c.status == MessageStatus.QUEUED.value,
            sa.and_(_M.c.status == MessageStatus.DEFERRED.value, _M.c.next_attempt_at <= now),
        )
        candidates = (
            sa.select(_M.c.id)
            .where(_M.c.campaign_id == campaign_id, due)
            .order_by(_M.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.db.engine.begin() as conn:
            conn.execute(
                sa.update(Worker).where(Worker.id == self.worker_id).values(heartbeat_at=now)
            )
            rows = conn.execute(
                sa.update(_M)
                .where(_M.c.id.in_(candidates.scalar_subquery()), _M.c.status.in_(_CLAIMABLE))
                .values(
                    status=MessageStatus.SENDING.value,
                    claimed_by=self.worker_id,
                    claimed_at=now,
                    handed_at=None,
                    attempts=_M.c.attempts + 1,
                    updated_at=now,
                )
                .returning(
                    _M.c.id,
                    _M.c.contact_id,
                    _M.c.contact_point_id,
                    _M.c.recipient,
                    _M.c.attempts,
                    _M.c.channel,
                    _M.c.message_id_header,
                )
            ).all()
            if not rows:
                return []
            ids = [r.id for r in rows]
            cp = ContactPoint.__table__
            sup = cast(sa.Table, Suppression.__table__)
            allowed_rows = conn.execute(
                sa.select(_M.c.id, cp.c.mailing_allowed, sup.c.reason)
                .select_from(_M)
                .join(cp, cp.c.id == _M.c.contact_point_id, isouter=True)
                .join(
                    sup,
                    sa.and_(sup.c.channel == _M.c.channel, sup.c.normalized == _M.c.recipient),
                    isouter=True,
                )
                .where(_M.c.id.in_(ids))
            ).all()
            refused: dict[int, str] = {}
            for mid, mailing_allowed, suppressed in allowed_rows:
                if suppressed is not None:
                    refused[mid] = f"suppressed since registration ({suppressed})"
                elif not mailing_allowed:
                    refused[mid] = "mailing no longer allowed for this contact point"
            if refused:
                self._remove(conn, [r for r in rows if r.id in refused], refused, now)
            keep = [r for r in rows if r.id not in refused]
            bodies = (
                dict(
                    conn.execute(
                        sa.select(MessageBody.message_id, MessageBody.body).where(
                            MessageBody.message_id.in_([r.id for r in keep])
                        )
                    ).all()
                )
                if keep
                else {}
            )
            keep.sort(key=lambda r: r.id)
            handed = self._mark(conn, [r.id for r in keep[:hand]])
        claimed = [
            Claimed(
                r.id,
                r.contact_id,
                r.contact_point_id,
                r.recipient,
                r.attempts,
                bodies[r.id],
                _point_channel(r.channel),
                r.message_id_header or "",
                r.id in handed,
            )
            for r in keep
        ]
        return claimed

    def _remove(self, conn: sa.Connection, rows: list[Any], why: dict[int, str], now: Any) -> None:
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
            [{"mid": r.id, "b_why": why[r.id]} for r in rows],
        )
        conn.execute(
            sa.insert(Event),
            [_event("skipped", r, None, why[r.id], {"at": "send time"}, now) for r in rows],
        )

    def release(self, messages: list[Claimed]) -> None:
        """Put claimed but unsent messages back in the queue (interrupt, stop, pause)."""
        if not messages:
            return
        with self.db.engine.begin() as conn:
            conn.execute(
                sa.update(_M)
                .where(
                    _M.c.id == sa.bindparam("mid"),
                    _M.c.status == MessageStatus.SENDING.value,
                    _M.c.claimed_by == self.worker_id,
                )
                .values(**_back_to_queue()),
                [{"mid": m.id} for m in messages],
            )

    def mark_handed(self, ids: list[int]) -> set[int]:
        """Mark claimed messages as about to go to the transport; return those still ours.

        Committed before they are sent, so a crash leaves only these in doubt. A
        message missing from the answer was taken back (this worker was presumed dead
        and its claim recovered): it must not be sent by us.
        """
        if not ids:
            return set()
        with self.db.engine.begin() as conn:
            return self._mark(conn, ids)

    def _mark(self, conn: sa.Connection, ids: list[int]) -> set[int]:
        if not ids:
            return set()
        return set(
            conn.execute(
                sa.update(_M)
                .where(
                    _M.c.id.in_(ids),
                    _M.c.claimed_by == self.worker_id,
                    _M.c.status == MessageStatus.SENDING.value,
                )
                .values(handed_at=self.clock.now())
                .returning(_M.c.id)
            ).scalars()
        )

    def record(
        self, campaign_id: int, outcomes: list[tuple[Claimed, SendResult]], retry: RetryPolicy
    ) -> dict[str, int]:
        """Store the outcome of each sent message and its event, in one transaction."""
        return self.record_and_mark(campaign_id, outcomes, retry, [])[0]

    def record_and_mark(
        self,
        campaign_id: int,
        outcomes: list[tuple[Claimed, SendResult]],
        retry: RetryPolicy,
        hand: list[int],
    ) -> tuple[dict[str, int], set[int]]:
        """Record ``outcomes`` and mark ``hand`` handed over, in one transaction.

        Returns the counts per outcome and the messages of ``hand`` still ours (see
        :meth:`mark_handed`): one commit where the send loop would otherwise make two.
        """
        counts = {"sent": 0, "deferred": 0, "failed": 0, "unknown": 0, "fatal": 0}
        if not outcomes:
            return counts, self.mark_handed(hand)
        now = self.clock.now()
        updates: list[dict[str, Any]] = []
        # Plain successes (the bulk of every batch) differ only in their id: one UPDATE
        # ... WHERE id IN (...) per reply code instead of a row each in an executemany.
        sent_by_code: dict[str | None, list[int]] = {}
        events: list[dict[str, Any]] = []
        suppress: list[tuple[Claimed, SendResult]] = []
        for m, r in outcomes:
            code = str(r.code) if r.code is not None else None
            data = {"attempt": m.attempts, "code": r.code, "worker": self.worker_id}
            kind: str = r.status
            counts[r.status] += 1
            events.append(_event(kind, m, campaign_id, r.detail, data, now))
            if r.status == "sent" and r.provider_message_id is None:
                sent_by_code.setdefault(code, []).append(m.id)
                continue
            u: dict[str, Any] = {
                "mid": m.id,
                "b_status": r.status,
                "b_code": code,
                "b_error": "",
                "b_next": None,
                "b_sent": None,
                "b_attempts": m.attempts,
                "b_pmid": r.provider_message_id,
            }
            if r.status == "sent":
                u["b_sent"] = now
            elif r.status == "deferred":
                if retry.waited_s(m.attempts) >= retry.expiry_s:
                    u["b_status"] = kind = "failed"
                    u["b_error"] = f"gave up after {m.attempts} attempts: {r.detail}"
                else:
                    u["b_next"] = now + timedelta(seconds=retry.delay_s(m.attempts))
                    u["b_error"] = r.detail
            elif r.status == "fatal":
                # Nothing is known against this message: back to where it was, attempt uncounted.
                u["b_status"] = MessageStatus.QUEUED.value
                u["b_attempts"] = m.attempts - 1
                u["b_error"] = r.detail
                kind = "error"
            else:
                u["b_error"] = r.detail
                if r.status == "failed" and r.suppress:
                    suppress.append((m, r))
            events[-1]["kind"] = kind
            updates.append(u)
        with self.db.engine.begin() as conn:
            for code, ids in sent_by_code.items():
                # The claim already counted this attempt: attempts stays as it is.
                conn.execute(
                    sa.update(_M)
                    .where(_M.c.id.in_(ids), _M.c.claimed_by == self.worker_id)
                    .values(
                        status=MessageStatus.SENT.value,
                        last_code=code,
                        last_error="",
                        next_attempt_at=None,
                        sent_at=now,
                        provider_message_id=None,
                        claimed_by=None,
                        updated_at=now,
                    )
                )
            if updates:
                conn.execute(
                    sa.update(_M)
                    .where(_M.c.id == sa.bindparam("mid"), _M.c.claimed_by == self.worker_id)
                    .values(
                        status=sa.bindparam("b_status"),
                        last_code=sa.bindparam("b_code"),
                        last_error=sa.bindparam("b_error"),
                        next_attempt_at=sa.bindparam("b_next", type_=_M.c.next_attempt_at.type),
                        sent_at=sa.bindparam("b_sent", type_=_M.c.sent_at.type),
                        attempts=sa.bindparam("b_attempts"),
                        provider_message_id=sa.bindparam("b_pmid"),
                        claimed_by=None,
                        updated_at=now,
                    ),
                    updates,
                )
            conn.execute(sa.insert(Event), events)
            for m, r in suppress:
                self._suppress(conn, m, r, campaign_id, now)
            mine = self._mark(conn, hand)
        return counts, mine

    def _suppress(
        self, conn: sa.Connection, m: Claimed, r: SendResult, campaign_id: int, now: Any
    ) -> None:
        sup = cast(sa.Table, Suppression.__table__)
        exists = conn.execute(
            sa.select(sup.c.id).where(sup.c.channel == m.channel, sup.c.normalized == m.recipient)
        ).first()
        if exists is None:
            conn.execute(
                sup.insert().values(
                    channel=m.channel,
                    normalized=m.recipient,
                    reason="hard_bounce",
                    detail=r.detail,
                    message_id=m.id,
                    created_at=now,
                )
            )
        conn.execute(
            sa.insert(Event).values(
                _event("suppressed", m, campaign_id, f"hard bounce: {r.detail}", {}, now)
            )
        )

    # -- campaign state ---------------------------------------------------------

    def counts(self, campaign_id: int) -> dict[str, int]:
        """Return the number of messages per status."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_M.c.status, sa.func.count())
                .where(_M.c.campaign_id == campaign_id)
                .group_by(_M.c.status)
            ).all()
        return {status: int(n) for status, n in rows}

    def next_due(self, campaign_id: int) -> Any:
        """Return when the next deferred message becomes due, or None."""
        with self.db.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(_M.c.next_attempt_at)).where(
                    _M.c.campaign_id == campaign_id,
                    _M.c.status == MessageStatus.DEFERRED.value,
                )
            ).scalar()


def _event(
    kind: str, m: Any, campaign_id: int | None, detail: str, data: dict[str, Any], now: Any
) -> dict[str, Any]:
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


def _back_to_queue() -> dict[str, Any]:
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


def _point_channel(channel: str) -> str:
    # Outboxes written before SMS existed may say "sms"; suppressions always say "phone".
    return "phone" if channel in ("sms", "phone") else channel


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _chunks(items: list[Any], size: int) -> Any:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def new_worker_id() -> str:
    """Return a worker id naming the host and process, unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- loop


class _NoThrottle:
    def acquire(self) -> float:
        return 0.0


@dataclass
class _Run:
    """Everything one campaign's send loop needs."""

    db: Database
    store: OutboxStore
    campaign_id: int
    name: str
    sender: SenderInfo
    transport: Transport
    throttle: Throttle
    clock: Clock
    retry: RetryPolicy
    batch: int
    stop: threading.Event | None = None
    on_progress: Callable[[int], None] | None = None
    #: Signs every e-mail of the campaign (None: the account has no DKIM key).
    signer: DkimSigner | None = None
    #: How many messages are recorded and marked handed over at a time (``mark_handed``).
    mark_ahead: int = 20
    totals: dict[str, int] = field(
        default_factory=lambda: {"sent": 0, "deferred": 0, "failed": 0, "unknown": 0}
    )


def _campaign_state(db: Database, campaign_id: int) -> str:
    with db.engine.connect() as conn:
        return str(
            conn.execute(sa.select(Campaign.status).where(Campaign.id == campaign_id)).scalar_one()
        )


def _stop_campaign(db: Database, campaign_id: int, error: str) -> None:
    with db.session() as s:
        c = s.get(Campaign, campaign_id)
        assert c is not None
        c.status = CampaignStatus.STOPPED.value
        c.last_error = error
        s.add(Event(kind="stopped", campaign_id=campaign_id, detail=error))


def _run_batches(run: _Run) -> None:
    """Claim, send and record batches until nothing is due, the campaign pauses or we're told."""
    while True:
        if run.stop is not None and run.stop.is_set():
            return
        if _campaign_state(run.db, run.campaign_id) != CampaignStatus.SENDING.value:
            return  # paused, cancelled or stopped from elsewhere: leave the rest queued
        # Unthrottled, the first few are marked by the claim; throttled, each message is
        # marked only once its token is in hand (a crash while waiting leaves no doubt).
        first = run.mark_ahead if isinstance(run.throttle, _NoThrottle) else 0
        batch = run.store.claim(run.campaign_id, run.batch, hand=first)
        if not batch:
            return
        outcomes: list[tuple[Claimed, SendResult]] = []
        recorded = 0  # outcomes[:recorded] are in the database
        in_flight: Claimed | None = None
        fatal: SendResult | None = None
        handed = {m.id for m in batch if m.handed}
        lost: set[int] = set()  # taken back from us: neither sent, recorded nor released
        try:
            for i, m in enumerate(batch):
                if run.stop is not None and run.stop.is_set():
                    break
                body = m.body
                if m.channel != "phone":  # an SMS is the bare text: a Date would be sent as words
                    try:
                        body = _outgoing(run, m)
                    except SendError as exc:
                        # Never handed to the transport: a smuggled header must not leave.
                        log.error("message %d to %s not sent: %s", m.id, m.recipient, exc.message)
                        outcomes.append((m, SendResult("failed", None, f"not sent: {exc.message}")))
                        continue
                run.throttle.acquire()
                if run.stop is not None and run.stop.is_set():
                    break  # told to stop while waiting for the token: this one goes back
                if m.id not in handed:
                    # Every few messages: record what went out so far, then mark (committed)
                    # the next few as handed over before they leave. After a crash only those
                    # few are in doubt ('unknown'); the rest of the claim is requeued.
                    ahead = [c.id for c in batch[i : i + run.mark_ahead] if c.id not in lost]
                    recorded, mine = _flush(run, outcomes, recorded, ahead)
                    handed |= mine
                    lost |= set(ahead) - mine
                    if m.id not in handed:
                        log.warning("message %d was taken back from this worker: not sent", m.id)
                        continue
                in_flight = m
                result = run.transport.send(
                    body,
                    mail_from=envelope_from(run.sender, m.message_id_header),
                    rcpt_to=m.recipient,
                )
                in_flight = None
                outcomes.append((m, result))
                if result.status == "fatal":
                    fatal = result
                    break
        except BaseException:
            # Ctrl-C or a crash inside the transport: what was sent is recorded, what was in
            # flight may have gone out (unknown), the rest goes back to the queue untouched.
            if in_flight is not None:
                outcomes.append(
                    (in_flight, SendResult("unknown", None, "interrupted while sending"))
                )
                with contextlib.suppress(Exception):
                    run.transport.close()
            _flush(run, outcomes, recorded, [])
            done = {o[0].id for o in outcomes} | lost
            run.store.release([m for m in batch if m.id not in done])
            raise
        _flush(run, outcomes, recorded, [])
        done = {o[0].id for o in outcomes} | lost
        run.store.release([m for m in batch if m.id not in done])
        if fatal is not None:
            error = (
                f"campaign {run.name!r} stopped: {fatal.detail}. Nothing after it was sent and no "
                "message was marked; fix the sender account, then resume() and send() again"
            )
            _stop_campaign(run.db, run.campaign_id, error)
            raise SendError(error, campaign=run.name, code=fatal.code)


def _flush(
    run: _Run, outcomes: list[tuple[Claimed, SendResult]], recorded: int, hand: list[int]
) -> tuple[int, set[int]]:
    """Record ``outcomes[recorded:]``, mark ``hand``; return how many are recorded, and ours."""
    counts, mine = run.store.record_and_mark(run.campaign_id, outcomes[recorded:], run.retry, hand)
    for k in run.totals:
        run.totals[k] += counts[k]
    if run.on_progress is not None:
        run.on_progress(sum(counts[k] for k in ("sent", "failed", "unknown")))
    return len(outcomes), mine


def _outgoing(run: _Run, m: Claimed) -> bytes:
    """Return the bytes of e-mail ``m`` as they leave: Date now, header set checked, signed."""
    return prepare_outgoing(m.body, when=run.clock.now(), signer=run.signer, allowed=SIGNED_HEADERS)


def _signer(sender: SenderInfo, channel: str) -> DkimSigner | None:
    """Return the DKIM signer of an e-mail campaign's account (ConfigError for bad settings)."""
    if campaign_channel(channel) != "email":
        return None
    try:
        return signer_for(sender.settings, sender.from_email)
    except ConfigError as exc:
        raise ConfigError(
            f"sender account {sender.name!r}: {exc.message}; nothing was sent",
            **{**exc.fields, "account": sender.name},
        ) from exc


def _finish_if_done(db: Database, store: OutboxStore, campaign_id: int) -> str:
    counts = store.counts(campaign_id)
    with db.session() as s:
        c = s.get(Campaign, campaign_id)
        assert c is not None
        if c.status == CampaignStatus.SENDING.value and not any(counts.get(k) for k in _OPEN):
            c.status = CampaignStatus.FINISHED.value
            c.finished_at = store.clock.now()
            s.add(Event(kind="finished", campaign_id=campaign_id, data=counts))
        return c.status


def _mark_ahead(rate_per_hour: float) -> int:
    # About half a second's worth, 1 to 20: at campaign rates (100-3,000/h) every message
    # is recorded and the next marked on its own, so a crash leaves at most the one in
    # hand in doubt. Unthrottled, 50 at a time: the claim marks the first 50 in its own
    # commit, then one commit per 50 records them and marks the next, so a crash leaves
    # at most 50 in doubt whatever the claim's size (the rest is requeued), and claims
    # can be large (send()'s batch_size, 200) to spread their own cost.
    if math.isinf(rate_per_hour):
        return 50
    return max(1, min(20, int(rate_per_hour / 3600 * 0.5)))


def _batch_size(rate_per_hour: float, batch_size: int) -> int:
    if math.isinf(rate_per_hour):
        return batch_size
    # Claim about five seconds' worth: a crash then leaves at most that many 'unknown'.
    return max(1, min(batch_size, int(rate_per_hour / 3600 * 5)))


def send(
    campaign: CampaignRef,
    *,
    rate_per_hour: float | None = None,
    burst: int | None = None,
    progress: bool = True,
    connections: int = 1,
    transport: Transport | None = None,
    transport_factory: Callable[[SenderInfo], Transport] | None = None,
    retry: RetryPolicy | None = None,
    wait_for_retries: bool = False,
    batch_size: int = 200,
    clock: Clock = SYSTEM_CLOCK,
    stop: threading.Event | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> SendSummary:
    """Send the campaign's due messages, throttled, and return what happened.

    Interrupting (Ctrl-C) leaves the queue consistent; calling ``send`` again resumes.
    The throttle is shared through the database with any worker sending the same campaign.

    Args:
        campaign: name or id of a registered campaign.
        rate_per_hour: messages per hour (default: the campaign's); ``math.inf`` sends
            as fast as the server takes them (a local sink, benchmarks).
        burst: how many may leave at once before the rate applies (default: the campaign's).
        progress: show a ``tqdm`` progress bar.
        connections: how many SMTP connections send in parallel, one thread each. They
            claim from the same outbox (no message goes out twice) and share the one
            throttle, so the rate stays the campaign's; more connections only help when
            the server, not the rate, is the limit. Keep it at or below what the relay
            allows per client (often 2 to 10).
        transport: where messages go (default: the campaign's sender account); one
            connection, so only with ``connections=1``.
        transport_factory: builds one transport per connection from the sender account
            (default: the account's own kind, e.g. SMTP through yagmail's login).
        retry: backoff and expiry for deferred messages.
        wait_for_retries: keep waiting for deferred messages to come due instead of
            returning with them pending (the worker picks them up later otherwise).
        batch_size: most messages claimed at once when unthrottled; a crash leaves at
            most 50 of them in doubt whatever the size (the rest go back to the queue).
        clock: time source (tests pass a ``ManualClock``).
        stop: an event that ends the run after the message in hand.
        db: an open database (default: ``open_database(url)``).
        url: the database URL when ``db`` is not given.

    """
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
        raise ConfigError(f"send: connections={connections!r}: give a whole number, 1 or more")
    if transport is not None and (connections > 1 or transport_factory is not None):
        raise ConfigError(
            "send: a transport is one connection: pass transport_factory (one transport per "
            "connection) to send over several, or leave connections at 1"
        )
    database = resolve_database(db, url)
    retry = retry or RetryPolicy()
    with database.session() as s:
        c = campaign_row(s, campaign)
        if c.status == CampaignStatus.PAUSED.value:
            raise SendError(f"campaign {c.name!r} is paused: resume() it first", campaign=c.name)
        if c.status in (CampaignStatus.CANCELLED.value, CampaignStatus.DRAFT.value):
            raise SendError(
                f"campaign {c.name!r} is {c.status}: "
                + ("register() it first" if c.status == "draft" else "it cannot be sent"),
                campaign=c.name,
            )
        sender = sender_of(s, c)
        campaign_id, name, channel = c.id, c.name, c.channel
        rate = float(rate_per_hour if rate_per_hour is not None else c.rate_per_hour)
        burst_n = int(burst if burst is not None else c.burst)
    # Loaded once, before anything is claimed: a missing key stops us with nothing sent.
    signer = _signer(sender, channel)
    store = OutboxStore(database, new_worker_id(), clock)
    store.register_worker()
    start = clock.monotonic()
    # Set to end every sender thread: the caller's stop, Ctrl-C, or a fatal answer in one.
    halt = threading.Event() if connections > 1 else stop
    transports: list[Transport] = []
    runs: list[_Run] = []
    try:
        store.recover()
        own_transport = transport is None
        if transport is not None:
            _open(transport, database, campaign_id, name)
            transports = [transport]
        else:
            factory = transport_factory or _account_transport
            transports = _open_transports(
                lambda: factory(sender), connections, database, campaign_id, name
            )
        with database.session() as s:
            running = s.get(Campaign, campaign_id)
            assert running is not None
            running.status = CampaignStatus.SENDING.value
            running.last_error = ""
        # Threads sleep for their token on the halt event, so Ctrl-C never waits out a token.
        throttle_clock = _HaltableClock(clock, halt) if halt is not stop else clock
        throttle: Throttle = (
            _NoThrottle()
            if math.isinf(rate)
            else SharedTokenBucket(
                database, f"campaign:{campaign_id}", rate, burst_n, clock=throttle_clock
            )
        )
        counts = store.counts(campaign_id)
        todo = sum(counts.get(k, 0) for k in _CLAIMABLE)
        bar = tqdm(total=todo, desc=name, unit="msg", disable=not progress)
        bar_lock = threading.Lock()

        def tick(n: int) -> None:
            with bar_lock:  # one bar for every connection's thread
                bar.update(n)

        runs = [
            _Run(
                database,
                store,
                campaign_id,
                name,
                sender,
                t,
                throttle,
                clock,
                retry,
                _batch_size(rate, batch_size),
                halt,
                tick,
                signer,
                _mark_ahead(rate),
            )
            for t in transports
        ]
        try:
            while True:
                if len(runs) == 1:
                    _run_batches(runs[0])
                else:
                    _run_parallel(runs, halt, stop)
                if not wait_for_retries or (stop is not None and stop.is_set()):
                    break
                if _campaign_state(database, campaign_id) != CampaignStatus.SENDING.value:
                    break
                due = store.next_due(campaign_id)
                if due is None:
                    break
                store.heartbeat()
                clock.sleep(min(60.0, max(0.0, (due - clock.now()).total_seconds())))
        finally:
            bar.close()
            if own_transport:
                for t in transports:
                    with contextlib.suppress(Exception):
                        t.close()
        status = _finish_if_done(database, store, campaign_id)
    finally:
        store.unregister_worker()
    counts = store.counts(campaign_id)
    totals = {k: sum(r.totals[k] for r in runs) for k in ("sent", "deferred", "failed", "unknown")}
    return SendSummary(
        campaign=name,
        status=status,
        sent=totals["sent"],
        deferred=totals["deferred"],
        failed=totals["failed"],
        unknown=totals["unknown"],
        removed=counts.get(MessageStatus.REMOVED.value, 0),
        remaining=sum(counts.get(k, 0) for k in _OPEN),
        elapsed_s=clock.monotonic() - start,
        connections=sum(getattr(t, "logins", 1) for t in transports),
    )


def _account_transport(sender: SenderInfo) -> Transport:
    return open_transport(sender.kind, sender.settings, sender.credential_ref)


def _open_transports(
    factory: Callable[[], Transport], n: int, database: Database, campaign_id: int, name: str
) -> list[Transport]:
    """Open ``n`` connections one after the other; fewer if the server refuses the later ones."""
    opened: list[Transport] = []
    try:
        for k in range(n):
            t = factory()
            try:
                _open(t, database, campaign_id, name)
            except SendError as exc:
                with contextlib.suppress(Exception):
                    t.close()
                if exc.fields.get("fatal") or not opened:
                    raise
                # Relays cap connections per client ("421 too many connections"): go on with
                # the ones we have rather than not at all.
                log.warning(
                    "campaign %r: connection %d of %d refused (%s): sending over %d",
                    name,
                    k + 1,
                    n,
                    exc.message,
                    len(opened),
                )
                break
            opened.append(t)
    except BaseException:
        for t in opened:
            with contextlib.suppress(Exception):
                t.close()
        raise
    return opened


class _HaltableClock:
    """The run's clock, but a real sleep ends early when the halt event is set."""

    def __init__(self, clock: Clock, halt: threading.Event | None) -> None:
        self.clock = clock
        self.halt = halt

    def now(self) -> datetime:
        return self.clock.now()

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def sleep(self, seconds: float) -> None:
        if self.clock is SYSTEM_CLOCK and self.halt is not None:
            if seconds > 0:
                self.halt.wait(seconds)
        else:
            self.clock.sleep(seconds)


def _run_parallel(
    runs: list[_Run], halt: threading.Event | None, stop: threading.Event | None
) -> None:
    """Run one sender thread per connection until all are done; re-raise the first failure.

    A failure in one thread (a fatal SMTP answer, a crash) and Ctrl-C in the caller set
    ``halt``: every thread records what it sent and puts the rest of its batch back.
    """
    assert halt is not None
    errors = _in_threads([functools.partial(_run_batches, r) for r in runs], halt, stop)
    if errors:
        # A fatal answer wins over the consequences it caused in the other threads.
        raise next((e for e in errors if isinstance(e, SendError)), errors[0])


def _in_threads(
    jobs: list[Callable[[], object]], halt: threading.Event, stop: threading.Event | None
) -> list[BaseException]:
    """Run each job in its own thread until all end; return what they raised.

    A job that raises sets ``halt`` for the others. Ctrl-C lands in the calling thread
    only: it sets ``halt``, waits for every job to record and return, and is re-raised.
    """
    errors: list[BaseException] = []
    lock = threading.Lock()
    # Our own "finished" flags, not Thread.join(): in CPython 3.11 a join interrupted by
    # Ctrl-C marks a still-running thread as stopped (the bpo-45274 branch of
    # Thread._wait_for_tstate_lock), and we must not return while a thread still holds
    # messages in 'sending'.
    done = [threading.Event() for _ in jobs]

    def work(k: int) -> None:
        try:
            jobs[k]()
        except BaseException as exc:
            with lock:
                errors.append(exc)
            halt.set()
        finally:
            done[k].set()

    for k in range(len(jobs)):
        threading.Thread(target=work, args=(k,), name=f"bulkmail-{k}", daemon=True).start()
    try:
        while not all(d.is_set() for d in done):
            if stop is not None and stop.is_set():
                halt.set()
            next(d for d in done if not d.is_set()).wait(0.05)
    except BaseException:
        halt.set()
        for d in done:
            d.wait()
        raise
    return errors


def _open(transport: Transport, database: Database, campaign_id: int, name: str) -> None:
    opener = getattr(transport, "open", None)
    if opener is None:
        return
    try:
        opener()
    except SendError as exc:
        if exc.fields.get("fatal"):
            error = f"campaign {name!r} stopped: {exc.message}"
            _stop_campaign(database, campaign_id, error)
            raise SendError(error, campaign=name, **exc.fields) from exc
        raise


# --------------------------------------------------------------------------- worker


def run_worker(
    *,
    db: Database | None = None,
    url: str | None = None,
    poll_interval_s: float = 5.0,
    stop: threading.Event | None = None,
    exit_when_idle: bool = False,
    retry: RetryPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
    transport_factory: Callable[[SenderInfo], Transport] | None = None,
    connections: int = 1,
) -> int:
    """Send scheduled and running campaigns until stopped (``bulkmail worker``); return the count.

    Each worker holds one connection per sender account, claims with ``SKIP LOCKED``
    and shares each campaign's rate with every other worker through the database.
    ``connections`` runs that many workers as threads of this process (each its own
    connection, worker row and claims): the same as starting that many processes.
    """
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
        raise ConfigError(
            f"run_worker: connections={connections!r}: give a whole number, 1 or more"
        )
    database = resolve_database(db, url)
    retry = retry or RetryPolicy()
    stop = stop or threading.Event()
    args = (database, poll_interval_s, stop, exit_when_idle, retry, clock, transport_factory)
    if connections == 1:
        return _worker_loop(*args)
    sent: list[int] = []

    def work() -> None:
        # Each thread is a worker of its own: its row, its claims, its connections.
        sent.append(_worker_loop(*args))

    # Ctrl-C or a crash in one worker thread stops them all after the message in hand.
    errors = _in_threads([work] * connections, stop, None)
    if errors:
        raise errors[0]
    return sum(sent)


def _worker_loop(
    database: Database,
    poll_interval_s: float,
    stop: threading.Event,
    exit_when_idle: bool,
    retry: RetryPolicy,
    clock: Clock,
    transport_factory: Callable[[SenderInfo], Transport] | None,
) -> int:
    store = OutboxStore(database, new_worker_id(), clock)
    store.register_worker()
    log.info("worker %s started on %s", store.worker_id, database.url)
    transports: dict[int, Transport] = {}
    signers: dict[tuple[int, str], DkimSigner | None] = {}
    sent = 0
    try:
        while not stop.is_set():
            store.heartbeat()
            store.recover()
            worked = False
            for campaign_id in _due_campaigns(database, clock):
                with database.session() as s:
                    c = s.get(Campaign, campaign_id)
                    if c is None:
                        continue
                    if c.status == CampaignStatus.SCHEDULED.value:
                        c.status = CampaignStatus.SENDING.value
                    sender = sender_of(s, c)
                    name, rate, burst = c.name, float(c.rate_per_hour), c.burst
                    channel = c.channel
                key = (sender.id, campaign_channel(channel))
                if key not in signers:
                    try:
                        signers[key] = _signer(sender, channel)
                    except ConfigError as exc:
                        # Other campaigns keep going; this one waits for the account to be fixed.
                        error = f"campaign {name!r} stopped: {exc.message}"
                        log.error("worker: %s", error)
                        _stop_campaign(database, campaign_id, error)
                        continue
                transport = transports.get(sender.id)
                if transport is None:
                    transport = (
                        transport_factory(sender)
                        if transport_factory
                        else open_transport(sender.kind, sender.settings, sender.credential_ref)
                    )
                    try:
                        _open(transport, database, campaign_id, name)
                    except SendError as exc:
                        log.error("worker: %s", exc.message)
                        continue
                    transports[sender.id] = transport
                run = _Run(
                    database,
                    store,
                    campaign_id,
                    name,
                    sender,
                    transport,
                    SharedTokenBucket(
                        database,
                        f"campaign:{campaign_id}",
                        rate,
                        burst,
                        clock=_HaltableClock(clock, stop),
                    ),
                    clock,
                    retry,
                    _batch_size(rate, 100),
                    stop,
                    signer=signers[key],
                    mark_ahead=_mark_ahead(rate),
                )
                try:
                    _run_batches(run)
                except SendError as exc:
                    log.error("worker: %s", exc.message)
                    transports.pop(sender.id, None)
                sent += run.totals["sent"]
                worked = worked or any(run.totals.values())
                _finish_if_done(database, store, campaign_id)
            if not worked:
                if exit_when_idle and not _has_open_work(database):
                    break
                stop.wait(poll_interval_s) if clock is SYSTEM_CLOCK else clock.sleep(
                    poll_interval_s
                )
    finally:
        for t in transports.values():
            with contextlib.suppress(Exception):
                t.close()
        store.unregister_worker()
        log.info("worker %s stopped after %d messages", store.worker_id, sent)
    return sent


def _due_campaigns(database: Database, clock: Clock) -> list[int]:
    now = clock.now()
    with database.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(Campaign.id)
                .where(
                    sa.or_(
                        Campaign.status == CampaignStatus.SENDING.value,
                        sa.and_(
                            Campaign.status == CampaignStatus.SCHEDULED.value,
                            sa.or_(Campaign.scheduled_at.is_(None), Campaign.scheduled_at <= now),
                        ),
                    )
                )
                .order_by(Campaign.id)
            ).scalars()
        )


def _has_open_work(database: Database) -> bool:
    with database.engine.connect() as conn:
        n = conn.execute(
            sa.select(sa.func.count())
            .select_from(_M)
            .join(Campaign, Campaign.id == _M.c.campaign_id)
            .where(
                _M.c.status.in_(_CLAIMABLE),
                Campaign.status.in_([CampaignStatus.SENDING.value, CampaignStatus.SCHEDULED.value]),
            )
        ).scalar_one()
    return bool(n)

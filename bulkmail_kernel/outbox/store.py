"""The outbox store: the one writer of what happens to messages once they are queued.

Per message the state machine is::

    queued ──claim──> sending ──> sent
                         │──────> deferred ──(backoff elapsed)──> sending ...
                         │──────> failed       (5xx, or retries expired)
                         └──────> unknown      (worker died / connection broke after the content)

A claim is one guarded UPDATE: ``... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``
on PostgreSQL, so several workers never take the same message, and on SQLite the
same statement is atomic because SQLite has one writer at a time. The send loop
records what went out and, in the same commit, marks the next few ``handed_at``
before they go to the transport (:meth:`OutboxStore.record_and_mark`); if the
process dies, :mod:`.recovery` flags the marked ones ``unknown`` and requeues the
rest. The store also moves the campaign through its states as the loop and the
worker ask (started, stopped, finished), so neither of them holds any SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.db import (
    Campaign,
    CampaignStatus,
    ContactPoint,
    Database,
    Event,
    Message,
    MessageStatus,
)
from bulkmail_kernel.exceptions import SendError
from bulkmail_kernel.outbox import breaker, domains, prepared, reconnect, recovery, runs
from bulkmail_kernel.outbox.journal import journal_dir
from bulkmail_kernel.outbox.lookup import campaign_info, campaign_row, sender_of
from bulkmail_kernel.outbox.parking import not_parked
from bulkmail_kernel.outbox.reconnect import reconnecting, retrying
from bulkmail_kernel.outbox.recovery import back_to_queue, event_row
from bulkmail_kernel.outbox.suppressions import add_suppression, remove_not_allowed
from bulkmail_kernel.records import CampaignInfo, CampaignRef, SenderInfo, point_channel
from bulkmail_kernel.transports import SendResult

# Declarative models' __table__ is a Table; SQLAlchemy's stubs only say FromClause.
_M = cast(sa.Table, Message.__table__)

_P = cast(sa.Table, ContactPoint.__table__)
_SOFT_BOUNCE = (
    sa.update(_P).where(_P.c.id == sa.bindparam("pid")).values(soft_bounces=_P.c.soft_bounces + 1)
)

#: Statuses a message can be claimed from (a deferred one once it is due).
CLAIMABLE = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)
#: Statuses of a message not yet done with: the campaign is not finished while any is left.
OPEN = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value, MessageStatus.SENDING.value)


def gives_up(retry: Backoff, attempts: int) -> bool:
    """Return whether a message deferred at its ``attempts``-th try is given up (failed)."""
    return retry.waited_s(attempts) >= retry.expiry_s


class Backoff(Protocol):
    """When a deferred message is tried again and when it is given up (the engine's RetryPolicy)."""

    @property
    def expiry_s(self) -> float:
        """Return the total backoff after which a deferred message fails."""
        ...

    def delay_s(self, attempts: int) -> float:
        """Return the wait before the next try after ``attempts`` failed tries."""
        ...

    def waited_s(self, attempts: int) -> float:
        """Return the total backoff spent once ``attempts`` tries were deferred."""
        ...


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


class OutboxStore:
    """Claims batches of messages for one worker and records what happened to them."""

    def __init__(self, database: Database, worker_id: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = database
        self.worker_id = worker_id
        self.clock = clock
        self._stamp = reconnect.ClaimStamp()

    # -- workers (see .recovery) ---------------------------------------------------

    @reconnecting
    def register_worker(self) -> None:
        """Announce this worker (so its claims are not taken for a dead one's)."""
        recovery.register_worker(self.db, self.worker_id, self.clock.now())

    @reconnecting
    def heartbeat(self) -> bool:
        """Say this worker is alive; False if its row is gone (it was taken for dead)."""
        with self.db.engine.begin() as conn:
            return recovery.beat(conn, self.worker_id, self.clock.now())

    @reconnecting
    def unregister_worker(self) -> None:
        """Remove this worker's row on a clean exit."""
        recovery.unregister_worker(self.db, self.worker_id)

    @reconnecting
    def recover(self, *, stale_after_s: float | None = None) -> pd.DataFrame:
        """Flag ``unknown`` what a worker that is gone may have sent; requeue what it never did.

        A worker is gone when its heartbeat is older than ``stale_after_s`` (default
        ``config.dead_worker_s()``, ``BULKMAIL_DEAD_WORKER_S``) or, on
        this machine, its process no longer exists. Of its messages left in
        ``sending``, those marked handed over (``handed_at``) may or may not have gone
        out and become ``unknown``; the others never reached the transport and go back
        to the queue. Returns the messages flagged unknown. Just after the database was
        lost for a while, the limit is that much longer (:func:`.reconnect.grace_s`).
        """
        limit = config.dead_worker_s() if stale_after_s is None else stale_after_s
        limit += reconnect.grace_s(self.db, limit)
        return recovery.recover(
            self.db,
            self.worker_id,
            self.clock.now(),
            stale_after_s=limit,
            journals=journal_dir(self.db),
        )

    # -- claims ----------------------------------------------------------------

    def claim(self, campaign_id: int, limit: int, *, hand: int = 0) -> list[Claimed]:
        """Move up to ``limit`` due messages of the campaign to ``sending`` and return them.

        Permission is checked again here: a contact point that was unsubscribed,
        suppressed or had mailing disallowed since registration is removed, not sent.
        The first ``hand`` are marked handed over in the same commit (``Claimed.handed``),
        and the worker's heartbeat goes with it too: one write fewer each. After a lost
        connection the claim is run again, adopting what a lost commit took (see
        :mod:`.reconnect`): never a second batch while the first sits unsent.
        """
        stamp = self._stamp.next(self.clock.now())
        return retrying(
            self.db, "claim", lambda n: self._claim(campaign_id, limit, hand, stamp, n > 0)
        )

    def _claim(
        self, campaign_id: int, limit: int, hand: int, now: datetime, retry: bool
    ) -> list[Claimed]:
        due = sa.or_(
            _M.c.status == MessageStatus.QUEUED.value,
            sa.and_(_M.c.status == MessageStatus.DEFERRED.value, _M.c.next_attempt_at <= now),
        )
        due = sa.and_(due, not_parked(now))  # outside its send window: see .parking
        with self.db.engine.begin() as conn:
            recovery.beat(conn, self.worker_id, now)
            keep = reconnect.adopt_claim(conn, self.worker_id, campaign_id, now) if retry else []
            # Adopted rows were checked and marked by the claim that committed unheard.
            handed = {r.id for r in keep if r.handed_at is not None}
            if not keep:
                # Due messages, none of a provider at its per-hour limit (no head-of-line wait).
                chosen = domains.pick(conn, campaign_id, due, limit, now)
                rows = conn.execute(
                    sa.update(_M)
                    .where(_M.c.id.in_(chosen.ids), _M.c.status.in_(CLAIMABLE))
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
                        _M.c.domain_group,
                    )
                ).all()
                if not rows:
                    return []
                keep = remove_not_allowed(conn, list(rows), now)
                domains.spend(conn, chosen, keep, now)
                keep.sort(key=lambda r: r.id)
                handed = self._mark(conn, [r.id for r in keep[:hand]])
            ids = [r.id for r in keep]
            bodies = dict(conn.execute(prepared.BODIES, {"ids": ids}).all()) if keep else {}
            # Built before the commit: a message the store cannot read is not left claimed.
            return [
                Claimed(
                    r.id,
                    r.contact_id,
                    r.contact_point_id,
                    r.recipient,
                    r.attempts,
                    bodies[r.id],
                    # Outboxes written before SMS existed may say "sms" for "phone".
                    point_channel(r.channel),
                    r.message_id_header or "",
                    r.id in handed,
                )
                for r in keep
            ]

    @reconnecting
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
                .values(**back_to_queue()),
                [{"mid": m.id} for m in messages],
            )

    @reconnecting
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
        params = {"ids": ids, "worker": self.worker_id, "now": self.clock.now()}
        return set(conn.execute(prepared.MARK, params).scalars())

    # -- outcomes --------------------------------------------------------------

    def record(
        self, campaign_id: int, outcomes: list[tuple[Claimed, SendResult]], retry: Backoff
    ) -> dict[str, int]:
        """Store the outcome of each sent message and its event, in one transaction."""
        return self.record_and_mark(campaign_id, outcomes, retry, [])[0]

    def record_and_mark(
        self,
        campaign_id: int,
        outcomes: list[tuple[Claimed, SendResult]],
        retry: Backoff,
        hand: list[int],
        *,
        breaker_after: int | None = None,
    ) -> tuple[dict[str, int], set[int]]:
        """Record ``outcomes`` and mark ``hand`` handed over, in one transaction.

        Returns the counts per outcome as stored (a deferral given up is failed) and the
        messages of ``hand`` still ours (:meth:`mark_handed`). With ``breaker_after``, the
        refusals about us count towards pausing the campaign (:mod:`.breaker`), the count
        returned as ``counts["refusals_in_row"]``. After a lost connection it is run again
        unless the lost commit went through (:mod:`.reconnect`): no event is doubled.
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
        soft: list[int] = []  # contact points whose mailbox is full: a soft bounce each
        for m, r in outcomes:
            code = str(r.code) if r.code is not None else None
            data: dict[str, Any] = {"attempt": m.attempts, "code": r.code, "worker": self.worker_id}
            if r.category:
                data["category"] = r.category
            kind: str = r.status
            events.append(event_row(kind, m, campaign_id, r.detail, data, now))
            if r.status == "sent" and r.provider_message_id is None:
                counts["sent"] += 1
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
                if r.category == "mailbox_full" and m.contact_point_id is not None:
                    soft.append(m.contact_point_id)
                if gives_up(retry, m.attempts):
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
            # Counted as stored, so a send's summary agrees with the database (issue 14).
            counts["fatal" if kind == "error" else kind] += 1
            events[-1]["kind"] = kind
            updates.append(u)
        results = [r for _, r in outcomes]
        in_row: list[int | None] = [None]

        def write(attempt: int) -> set[int]:
            with self.db.engine.begin() as conn:
                if attempt and reconnect.already_recorded(conn, events[0]):
                    if breaker_after is not None:
                        in_row[0] = breaker.refusals_in_row(conn, campaign_id)
                    return reconnect.still_held(conn, self.worker_id, hand)
                for code, ids in sent_by_code.items():
                    params = {"ids": ids, "worker": self.worker_id, "code": code, "now": now}
                    conn.execute(prepared.SENT, params)
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
                if soft:  # a full mailbox is a soft bounce (the bounce mailbox counts its own)
                    conn.execute(_SOFT_BOUNCE, [{"pid": pid} for pid in soft])
                mine = self._mark(conn, hand)
                if breaker_after is not None:
                    # Last: the campaign row is locked only for the end of this commit.
                    in_row[0] = breaker.count_refusals(
                        conn, campaign_id, results, breaker_after, now
                    )
                return mine

        mine = retrying(self.db, "record", write)
        if in_row[0] is not None:
            counts["refusals_in_row"] = in_row[0]
        return counts, mine

    def _suppress(
        self, conn: sa.Connection, m: Claimed, r: SendResult, campaign_id: int, now: datetime
    ) -> None:
        add_suppression(
            conn,
            m.channel,
            m.recipient,
            reason="hard_bounce",
            detail=r.detail,
            message_id=m.id,
            now=now,
        )
        conn.execute(
            sa.insert(Event).values(
                event_row("suppressed", m, campaign_id, f"hard bounce: {r.detail}", {}, now)
            )
        )

    # -- message counts --------------------------------------------------------

    @reconnecting
    def counts(self, campaign_id: int) -> dict[str, int]:
        """Return the number of messages per status."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_M.c.status, sa.func.count())
                .where(_M.c.campaign_id == campaign_id)
                .group_by(_M.c.status)
            ).all()
        return {status: int(n) for status, n in rows}

    @reconnecting
    def next_due(self, campaign_id: int) -> Any:
        """Return when the next deferred message becomes due, or None."""
        with self.db.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(_M.c.next_attempt_at)).where(
                    _M.c.campaign_id == campaign_id,
                    _M.c.status == MessageStatus.DEFERRED.value,
                )
            ).scalar()

    @reconnecting
    def has_open_work(self) -> bool:
        """Return whether any sending or scheduled campaign still has messages to claim."""
        with self.db.engine.connect() as conn:
            n = conn.execute(
                sa.select(sa.func.count())
                .select_from(_M)
                .join(Campaign, Campaign.id == _M.c.campaign_id)
                .where(
                    _M.c.status.in_(CLAIMABLE),
                    Campaign.status.in_(
                        [CampaignStatus.SENDING.value, CampaignStatus.SCHEDULED.value]
                    ),
                )
            ).scalar_one()
        return bool(n)

    # -- campaign state --------------------------------------------------------

    @reconnecting
    def campaign_to_send(self, campaign: CampaignRef) -> tuple[CampaignInfo, SenderInfo]:
        """Return the campaign and its sender account, or raise SendError if it cannot be sent."""
        with self.db.session() as s:
            c = campaign_row(s, campaign)
            if c.status == CampaignStatus.PAUSED.value:
                raise SendError(
                    f"campaign {c.name!r} is paused: resume() it first", campaign=c.name
                )
            if c.status in (CampaignStatus.CANCELLED.value, CampaignStatus.DRAFT.value):
                raise SendError(
                    f"campaign {c.name!r} is {c.status}: "
                    + ("register() it first" if c.status == "draft" else "it cannot be sent"),
                    campaign=c.name,
                )
            return campaign_info(c), sender_of(s, c)

    @reconnecting
    def due_campaigns(self) -> list[int]:
        """Return the ids of the campaigns sending now or scheduled for now or earlier."""
        now = self.clock.now()
        with self.db.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(Campaign.id)
                    .where(
                        sa.or_(
                            Campaign.status == CampaignStatus.SENDING.value,
                            sa.and_(
                                Campaign.status == CampaignStatus.SCHEDULED.value,
                                sa.or_(
                                    Campaign.scheduled_at.is_(None), Campaign.scheduled_at <= now
                                ),
                            ),
                        )
                    )
                    .order_by(Campaign.id)
                ).scalars()
            )

    @reconnecting
    def take_due(self, campaign_id: int) -> tuple[CampaignInfo, SenderInfo] | None:
        """Start a due campaign (scheduled becomes sending); return it and its sender account.

        None if the campaign was deleted in the meantime.
        """
        with self.db.session() as s:
            c = s.get(Campaign, campaign_id)
            if c is None:
                return None
            if c.status == CampaignStatus.SCHEDULED.value:
                c.status = CampaignStatus.SENDING.value
            return campaign_info(c), sender_of(s, c)

    @reconnecting
    def start_sending(self, campaign_id: int, rate_per_hour: float | None = None) -> None:
        """Set the campaign ``sending``, clear its last error, record the run's rate (None: ∞)."""
        with self.db.session() as s:
            running = s.get(Campaign, campaign_id)
            assert running is not None
            running.status = CampaignStatus.SENDING.value
            running.last_error = ""
            # The rate this run really uses (send(rate_per_hour=) may override the campaign's).
            s.add(runs.run_started(campaign_id, rate_per_hour, self.clock.now()))

    def campaign_status(self, campaign_id: int) -> str:
        """Return the campaign's status as stored now (it may be paused from elsewhere)."""
        return self.campaign_state(campaign_id)[0]

    @reconnecting
    def campaign_state(self, campaign_id: int) -> tuple[str, str]:
        """Return the campaign's status and its reason (``last_error``) as stored now."""
        with self.db.engine.connect() as conn:
            status, why = conn.execute(
                sa.select(Campaign.status, Campaign.last_error).where(Campaign.id == campaign_id)
            ).one()
        return str(status), str(why or "")

    @reconnecting
    def stop_campaign(self, campaign_id: int, error: str) -> None:
        """Set the campaign ``stopped`` with ``error`` as the reason (and its event)."""
        with self.db.session() as s:
            c = s.get(Campaign, campaign_id)
            assert c is not None
            if c.status == CampaignStatus.STOPPED.value and c.last_error == error:
                return  # a retry after a lost commit: stopped already, its event written
            c.status = CampaignStatus.STOPPED.value
            c.last_error = error
            s.add(Event(kind="stopped", campaign_id=campaign_id, detail=error))

    @reconnecting
    def finish_if_done(self, campaign_id: int) -> str:
        """Set a sending campaign ``finished`` once no message is open; return its status."""
        counts = self.counts(campaign_id)
        with self.db.session() as s:
            c = s.get(Campaign, campaign_id)
            assert c is not None
            if c.status == CampaignStatus.SENDING.value and not any(counts.get(k) for k in OPEN):
                c.status = CampaignStatus.FINISHED.value
                c.finished_at = self.clock.now()
                s.add(Event(kind="finished", campaign_id=campaign_id, data=counts))
            return c.status

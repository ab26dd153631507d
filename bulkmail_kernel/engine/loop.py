"""The send loop: claim a batch, send each message through the transport, record, repeat.

Within a batch, every few messages (one at campaign rates, 50 unthrottled) the loop
records what went out and, in the same commit, marks the next few handed over
before they go to the transport (see :mod:`bulkmail_kernel.outbox.store`, which holds
every query). Each sender thread also journals every hand-over and answer
(:mod:`bulkmail_kernel.outbox.journal`): after a crash, only the message on the wire
stays in doubt, not the whole marked group. Each e-mail gets its
Date, header check and DKIM signature on the way out
(:func:`~bulkmail_kernel.deliverability.dkim.prepare_outgoing`); an SMS leaves as stored.

``send(connections=N)`` runs N such loops as threads of one worker, each over its
own SMTP connection, all claiming through that same statement and taking their
turn from the one shared token bucket; a fatal answer or Ctrl-C in any of them
stops them all, each recording what it sent and putting the rest back. One
connection is one such thread too, so Ctrl-C never lands inside the send loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from bulkmail_kernel import config
from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.compose.headers import envelope_from
from bulkmail_kernel.db import CampaignStatus, Database, MessageStatus, resolve_database
from bulkmail_kernel.deliverability.dkim import (
    SIGNED_HEADERS,
    DkimSigner,
    prepare_outgoing,
)
from bulkmail_kernel.engine.connections import (
    account_signer,
    account_transport,
    open_connection,
    open_transports,
)
from bulkmail_kernel.engine.heartbeat import Heartbeat, dead_worker_limit_s
from bulkmail_kernel.engine.threads import _HaltableClock, _in_threads
from bulkmail_kernel.engine.throttle import SharedTokenBucket, Throttle
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.breaker import is_refusal
from bulkmail_kernel.outbox.domains import held_back_s
from bulkmail_kernel.outbox.journal import Journal, journal_dir
from bulkmail_kernel.outbox.parking import Parker
from bulkmail_kernel.outbox.recovery import new_worker_id
from bulkmail_kernel.outbox.store import CLAIMABLE, OPEN, Claimed, OutboxStore, gives_up
from bulkmail_kernel.records import CampaignRef, SenderInfo
from bulkmail_kernel.transports import SendResult, Transport

log = logging.getLogger("bulkmail")


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
class SendSummary:
    """What one ``send`` call did, and what is left.

    ``sent``, ``failed`` and ``unknown`` count the messages this call settled that way
    (one that gave up after its retries is failed, as in the database); ``deferred``
    the messages it left waiting for a retry (one deferred and later sent in the same
    call is only sent).
    """

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
    #: Ended by Ctrl-C (Kernel → Interrupt): what was sent is recorded, the rest is queued.
    interrupted: bool = False
    #: Answers this call deferred (4xx, a dropped connection), each retry of a message once.
    deferrals: int = 0


class _NoThrottle:
    def acquire(self) -> float:
        return 0.0


@dataclass
class _Run:
    """Everything one campaign's send loop needs."""

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
    #: This sender thread's journal (see :mod:`~bulkmail_kernel.outbox.journal`).
    journal: Journal | None = None
    totals: dict[str, int] = field(
        default_factory=lambda: {
            "sent": 0,
            "deferred": 0,
            "failed": 0,
            "unknown": 0,
            "deferrals": 0,
        }
    )
    #: Policy or system refusals in a row that pause the campaign (None: no breaker).
    breaker_after: int | None = None
    #: The campaign's refusals in a row as last recorded (see ``outbox.breaker``).
    refusals_in_row: int = 0
    #: Messages this call left deferred, shared by its connections: one sent or failed
    #: later in the same call is no longer counted deferred.
    deferred_ids: set[int] = field(default_factory=set)
    #: Holds back the messages outside their send window before each claim.
    windows: Parker | None = None
    #: A provider's next token (outbox.domains) further off than this: return, don't wait.
    max_wait_s: float = math.inf


def _run_batches(run: _Run) -> None:
    """Claim, send and record batches until nothing is due, the campaign pauses or we're told."""
    while True:
        if run.stop is not None and run.stop.is_set():
            return
        if run.store.campaign_status(run.campaign_id) != CampaignStatus.SENDING.value:
            return  # paused, cancelled or stopped from elsewhere: leave the rest queued
        # Unthrottled, the first few are marked by the claim; throttled, each message is
        # marked only once its token is in hand (a crash while waiting leaves no doubt).
        first = run.mark_ahead if isinstance(run.throttle, _NoThrottle) else 0
        if run.windows is not None:
            run.windows.park(run.clock.now())
        batch = run.store.claim(run.campaign_id, run.batch, hand=first)
        if not batch:
            # Due messages of a provider at its per-hour limit: wait for its next token.
            wait = held_back_s(run.store.db, run.campaign_id, run.clock.now())
            if wait is None or wait > run.max_wait_s:
                return
            _HaltableClock(run.clock, run.stop).sleep(max(wait, 0.001))
            continue
        outcomes: list[tuple[Claimed, SendResult]] = []
        recorded = 0  # outcomes[:recorded] are in the database
        in_flight: Claimed | None = None
        fatal: SendResult | None = None
        tripped: SendResult | None = None
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
                if run.journal is not None:
                    run.journal.begin(m.id)
                result = run.transport.send(
                    body,
                    mail_from=envelope_from(run.sender, m.message_id_header),
                    rcpt_to=m.recipient,
                )
                if run.journal is not None:
                    at = run.clock.now().timestamp()
                    pid = result.provider_message_id
                    run.journal.answer(m.id, result.status, result.code, at, pid)
                in_flight = None
                outcomes.append((m, result))
                if result.status == "fatal":
                    fatal = result
                    break
                if run.breaker_after is not None and is_refusal(result):
                    # Recorded at once: the count lives in the database, shared by every
                    # connection and worker, and must stop us before the list is refused.
                    recorded, _ = _flush(run, outcomes, recorded, [])
                    if run.refusals_in_row >= run.breaker_after:
                        tripped = result
                        break
        except BaseException:
            # Ctrl-C or a crash inside the transport: what was sent is recorded, what was in
            # flight may have gone out (unknown), the rest goes back to the queue untouched.
            if in_flight is not None:
                outcomes.append(
                    (in_flight, SendResult("unknown", None, "interrupted while sending"))
                )
                with contextlib.suppress(Exception):
                    # Cut off mid-send: no polite QUIT into a half-written DATA.
                    getattr(run.transport, "abort", run.transport.close)()
            _flush(run, outcomes, recorded, [])
            done = {o[0].id for o in outcomes} | lost
            run.store.release([m for m in batch if m.id not in done])
            raise
        _flush(run, outcomes, recorded, [])
        done = {o[0].id for o in outcomes} | lost
        run.store.release([m for m in batch if m.id not in done])
        if run.journal is not None:
            run.journal.settled()  # the whole batch is in the database
        if fatal is not None:
            error = (
                f"campaign {run.name!r} stopped: {fatal.detail}. Nothing after it was sent and no "
                "message was marked; fix the sender account, then resume() and send() again"
            )
            run.store.stop_campaign(run.campaign_id, error)
            raise SendError(error, campaign=run.name, code=fatal.code)
        if tripped is not None:
            status, why = run.store.campaign_state(run.campaign_id)
            if status != CampaignStatus.PAUSED.value or not why:
                why = f"is {status} after {run.refusals_in_row} refusals in a row: {tripped.detail}"
            raise SendError(
                f"campaign {run.name!r} {why}", campaign=run.name, code=tripped.code, paused=True
            )


def _flush(
    run: _Run, outcomes: list[tuple[Claimed, SendResult]], recorded: int, hand: list[int]
) -> tuple[int, set[int]]:
    """Record ``outcomes[recorded:]``, mark ``hand``; return how many are recorded, and ours."""
    fresh = outcomes[recorded:]
    counts, mine = run.store.record_and_mark(
        run.campaign_id, fresh, run.retry, hand, breaker_after=run.breaker_after
    )
    run.refusals_in_row = counts.get("refusals_in_row", run.refusals_in_row)
    for k in ("sent", "deferred", "failed", "unknown"):
        run.totals[k] += counts[k]
    for m, r in fresh:
        run.totals["deferrals"] += r.status == "deferred"
        # A message this call deferred and now settles is no longer "left deferred".
        if m.id in run.deferred_ids:
            run.deferred_ids.discard(m.id)
            run.totals["deferred"] -= 1
        if r.status == "deferred" and not gives_up(run.retry, m.attempts):
            run.deferred_ids.add(m.id)
    if run.on_progress is not None:
        run.on_progress(sum(counts[k] for k in ("sent", "failed", "unknown")))
    return len(outcomes), mine


def _outgoing(run: _Run, m: Claimed) -> bytes:
    """Return the bytes of e-mail ``m`` as they leave: Date now, header set checked, signed."""
    return prepare_outgoing(m.body, when=run.clock.now(), signer=run.signer, allowed=SIGNED_HEADERS)


def _mark_ahead(rate_per_hour: float) -> int:
    # About half a second's worth, 1 to 20: at campaign rates (100-3,000/h) every message
    # is recorded and the next marked on its own, so a crash leaves at most the one in
    # hand in doubt. Unthrottled, 50 at a time: the claim marks the first 50 in its own
    # commit, then one commit per 50 records them and marks the next, so the database
    # alone knows at most 50 in doubt whatever the claim's size (the rest is requeued),
    # and claims can be large (send()'s batch_size, 200) to spread their own cost. The
    # thread's journal (two small writes a message, no sync) then settles all but the one
    # on the wire, so the groups stay large without leaving more in doubt.
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
    dead_worker_s: float | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> SendSummary:
    """Send the campaign's due messages, throttled, and return what happened.

    Interrupting (Ctrl-C, Kernel → Interrupt) ends it quietly: what was sent is
    recorded, the rest goes back to the queue, one line says so and the summary is
    returned (``interrupted=True``); calling ``send`` again resumes.
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
        wait_for_retries: keep waiting for deferred messages, and those outside their
            send window, to come due instead of returning with them pending (the worker
            picks them up later otherwise).
        batch_size: most messages claimed at once when unthrottled; a crash leaves at
            most the one on the wire per connection in doubt whatever the size (the
            send journal settles the rest; without it, at most 50).
        clock: time source (tests pass a ``ManualClock``).
        stop: an event that ends the run after the message in hand.
        dead_worker_s: after how many seconds without a heartbeat a worker is taken for
            dead (default ``BULKMAIL_DEAD_WORKER_S``, 120); this one beats from a thread
            of its own every quarter of it, whatever it waits for.
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
    dead_s = dead_worker_limit_s(dead_worker_s)
    database = resolve_database(db, url)
    retry = retry or RetryPolicy()
    store = OutboxStore(database, new_worker_id(), clock)
    c, sender = store.campaign_to_send(campaign)
    campaign_id, name = c.id, c.name
    rate = float(rate_per_hour if rate_per_hour is not None else c.rate_per_hour)
    burst_n = int(burst if burst is not None else c.burst)
    # Loaded once, before anything is claimed: a missing key stops us with nothing sent.
    signer = account_signer(sender, c.channel)
    breaker_after = c.breaker_after or config.breaker_after()
    deferred_ids: set[int] = set()  # shared by the connections (see _Run.deferred_ids)
    store.register_worker()
    heartbeat = Heartbeat(store, dead_s).start()
    start = clock.monotonic()
    # Set to end every sender thread: the caller's stop, Ctrl-C, or a fatal answer in one.
    # Even one connection sends from a thread of its own: Ctrl-C (Kernel → Interrupt) then
    # lands in this waiting thread, never inside a database call or half a DATA; the sender
    # finishes the message in hand, records it and puts the rest back (issue 13).
    halt = threading.Event()
    transports: list[Transport] = []
    runs: list[_Run] = []
    journals: list[Journal] = []
    interrupted = False
    try:
        store.recover(stale_after_s=dead_s)
        own_transport = transport is None
        if transport is not None:
            open_connection(transport, store, campaign_id, name)
            transports = [transport]
        else:
            factory = transport_factory or account_transport
            transports = open_transports(
                lambda: factory(sender), connections, store, campaign_id, name
            )
        store.start_sending(campaign_id, None if math.isinf(rate) else rate)
        # Threads sleep for their token on the halt event, so a stop (Ctrl-C, SIGTERM in the
        # CLI) never waits out a token.
        throttle_clock = _HaltableClock(clock, halt)
        throttle: Throttle = (
            _NoThrottle()
            if math.isinf(rate)
            else SharedTokenBucket(
                database, f"campaign:{campaign_id}", rate, burst_n, clock=throttle_clock
            )
        )
        counts = store.counts(campaign_id)
        todo = sum(counts.get(k, 0) for k in CLAIMABLE)
        bar = tqdm(total=todo, desc=name, unit="msg", disable=not progress)
        bar_lock = threading.Lock()

        def tick(n: int) -> None:
            with bar_lock:  # one bar for every connection's thread
                bar.update(n)

        # One journal per sender thread, open before anything is claimed (see _mark_ahead).
        folder = journal_dir(database)
        n = len(transports)
        journals = [Journal(folder, store.worker_id, k, n) for k in range(n)]
        windows = Parker(database, campaign_id)
        runs = [
            _Run(
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
                journal=j,
                breaker_after=breaker_after,
                deferred_ids=deferred_ids,
                windows=windows,
            )
            for t, j in zip(transports, journals, strict=True)
        ]
        try:
            while True:
                _run_parallel(runs, halt, stop)
                if not wait_for_retries or (stop is not None and stop.is_set()):
                    break
                if store.campaign_status(campaign_id) != CampaignStatus.SENDING.value:
                    break
                due = windows.next_due(store.next_due(campaign_id), clock.now())
                if due is None:
                    break
                _HaltableClock(clock, stop).sleep(
                    min(60.0, max(0.0, (due - clock.now()).total_seconds()))
                )
        except BaseException as exc:
            # Ctrl-C: every sender recorded and released. Anything else may leave messages
            # ours in 'sending': the journal settles them once this process is gone.
            if not isinstance(exc, KeyboardInterrupt):
                for j in journals:
                    j.close(keep=True)
            raise
        finally:
            bar.close()
            for j in journals:
                j.close()
            if own_transport:
                for t in transports:
                    with contextlib.suppress(Exception):
                        t.close()
        status = store.finish_if_done(campaign_id)
    except KeyboardInterrupt:
        # Kernel → Interrupt (issue 13): every sender recorded what it sent and put the rest
        # back before this arrived here; a summary, not a traceback through the throttle.
        interrupted = True
        status = store.finish_if_done(campaign_id)
    finally:
        heartbeat.stop()
        store.unregister_worker()
    counts = store.counts(campaign_id)
    totals = {k: sum(r.totals[k] for r in runs) for k in runs[0].totals} if runs else {}
    summary = SendSummary(
        campaign=name,
        status=status,
        sent=totals.get("sent", 0),
        deferred=totals.get("deferred", 0),
        failed=totals.get("failed", 0),
        unknown=totals.get("unknown", 0),
        removed=counts.get(MessageStatus.REMOVED.value, 0),
        remaining=sum(counts.get(k, 0) for k in OPEN),
        elapsed_s=clock.monotonic() - start,
        connections=sum(getattr(t, "logins", 1) for t in transports),
        interrupted=interrupted,
        deferrals=totals.get("deferrals", 0),
    )
    if interrupted:
        say_once(
            f"send({name!r}) interrupted: {summary.sent} sent, {summary.unknown} unknown, "
            f"{summary.remaining} left in the queue; send() again to go on"
        )
    return summary


def say_once(line: str) -> None:
    """Log ``line`` as a warning, or print it to stderr when nothing would show the log."""
    logger: logging.Logger | None = log
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            log.warning(line)
            return
        logger = logger.parent if logger.propagate else None
    print(line, file=sys.stderr)


def _run_parallel(runs: list[_Run], halt: threading.Event, stop: threading.Event | None) -> None:
    """Run one sender thread per connection until all are done; re-raise the first failure.

    A failure in one thread (a fatal SMTP answer, a crash) and Ctrl-C in the caller set
    ``halt``: every thread records what it sent and puts the rest of its batch back.
    """
    errors = _in_threads([functools.partial(_run_batches, r) for r in runs], halt, stop)
    if errors:
        # A fatal answer wins over the consequences it caused in the other threads.
        raise next((e for e in errors if isinstance(e, SendError)), errors[0])

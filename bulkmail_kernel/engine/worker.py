"""The worker daemon (``bulkmail worker``): send every due campaign until stopped.

Each pass it recovers what dead workers left in ``sending``, sets ``late`` the
scheduled campaigns overdue by more than ``BULKMAIL_MAX_LATENESS_S`` (they wait for
``resume``), starts the scheduled campaigns that are due and runs the send loop over
each sending one, one connection per sender account, taking turns from each
campaign's shared throttle. It beats from a thread of its own (:mod:`.heartbeat`)
and logs each change of state: started, campaign picked up, paused, cancelled,
stopped, finished, late, stopped itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple

from bulkmail_kernel import config
from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.db import CampaignStatus, Database, open_database
from bulkmail_kernel.deliverability.dkim import DkimSigner
from bulkmail_kernel.engine.connections import account_signer, account_transport, open_connection
from bulkmail_kernel.engine.heartbeat import Heartbeat, dead_worker_limit_s
from bulkmail_kernel.engine.loop import (
    RetryPolicy,
    _batch_size,
    _HaltableClock,
    _in_threads,
    _mark_ahead,
    _Run,
    _run_batches,
)
from bulkmail_kernel.engine.throttle import SharedTokenBucket
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.journal import Journal, journal_dir
from bulkmail_kernel.outbox.parking import Parker
from bulkmail_kernel.outbox.reconnect import is_connection_lost, retry_limit_s, retrying
from bulkmail_kernel.outbox.recovery import new_worker_id
from bulkmail_kernel.outbox.runs import record_run
from bulkmail_kernel.outbox.schedule import mark_late
from bulkmail_kernel.outbox.store import OutboxStore
from bulkmail_kernel.records import SenderInfo, campaign_channel
from bulkmail_kernel.transports import Transport

log = logging.getLogger("bulkmail")


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
    dead_worker_s: float | None = None,
    max_lateness_s: float | None = None,
    steps: Sequence[Callable[[Database, datetime], bool]] = (),
) -> int:
    """Send scheduled and running campaigns until stopped (``bulkmail worker``); return the count.

    Each worker holds one connection per sender account, claims with ``SKIP LOCKED``
    and shares each campaign's rate with every other worker through the database.
    ``connections`` runs that many workers as threads of this process (each its own
    connection, worker row and claims): the same as starting that many processes.
    ``dead_worker_s`` (default ``BULKMAIL_DEAD_WORKER_S``, 120) is when a silent worker
    is taken for dead; ``max_lateness_s`` (default ``BULKMAIL_MAX_LATENESS_S``, 6 h) is
    how late a scheduled campaign may still start: later, it is set ``late`` and waits
    for ``resume``. Setting ``stop`` ends it after the message in hand, everything
    recorded and the rest of its claims back in the queue. Started before its database
    is reachable, it waits for it up to ``BULKMAIL_DB_RETRY_S`` (then logs an error and
    returns 0).

    ``steps`` are called at the start of each pass with the database and the clock's
    time, before the due campaigns are looked up; one returns True while it still waits
    for something (then ``exit_when_idle`` does not end the worker). The public
    ``run_worker`` (``campaigns.worker``) passes ``ab_test_step``, which decides A/B
    tests whose wait is over.
    """
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
        raise ConfigError(
            f"run_worker: connections={connections!r}: give a whole number, 1 or more"
        )
    limits = _Limits(
        dead_worker_limit_s(dead_worker_s),
        config.max_lateness_s() if max_lateness_s is None else _lateness(max_lateness_s),
    )
    config.breaker_after()  # a bad BULKMAIL_BREAKER_AFTER is a settings error before anything
    stop = stop or threading.Event()
    waited = db if db is not None else _wait_for_database(url, stop)
    if waited is None:
        return 0  # stopped while waiting, or the database never came (logged)
    database = waited
    retry = retry or RetryPolicy()
    args = (
        database,
        poll_interval_s,
        stop,
        exit_when_idle,
        retry,
        clock,
        transport_factory,
        limits,
        tuple(steps),
    )
    sent: list[int] = []

    def work() -> None:
        # Each thread is a worker of its own: its row, its claims, its connections.
        sent.append(_worker_loop(*args))

    # Ctrl-C or a crash in one worker thread stops them all after the message in hand.
    # One worker runs in a thread too: Ctrl-C then lands in this waiting thread, never
    # inside a database call (where it could leave SQLite's write lock held) or half a DATA.
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
    limits: _Limits,
    steps: tuple[Callable[[Database, datetime], bool], ...] = (),
) -> int:
    store = OutboxStore(database, new_worker_id(), clock)
    store.register_worker()
    log.info("worker %s started on %s", store.worker_id, database.url)
    active: set[int] = set()  # the campaigns this worker is sending, for the log
    transports: dict[int, Transport] = {}
    signers: dict[tuple[int, str], DkimSigner | None] = {}
    parkers: dict[int, Parker] = {}  # per campaign: knows when its windows open or close
    sent = 0
    # Open before the first claim: a crash is then settled by it (see _mark_ahead).
    journal = Journal(journal_dir(database), store.worker_id)
    clean = False
    heartbeat = Heartbeat(store, limits.dead_worker_s).start()
    try:
        while not stop.is_set():
            store.recover(stale_after_s=limits.dead_worker_s)
            _mark_late(store, limits.max_lateness_s)
            waiting = _run_steps(steps, store)
            worked = False
            for campaign_id in store.due_campaigns():
                due = store.take_due(campaign_id)
                if due is None:
                    continue  # deleted in the meantime
                c, sender = due
                name, rate, burst = c.name, float(c.rate_per_hour), c.burst
                if campaign_id not in active:
                    active.add(campaign_id)
                    log.info("campaign %r picked up (%s/h, burst %d)", name, c.rate_per_hour, burst)
                    record_run(store.db, campaign_id, rate, clock.now())
                key = (sender.id, campaign_channel(c.channel))
                if key not in signers:
                    try:
                        signers[key] = account_signer(sender, c.channel)
                    except ConfigError as exc:
                        # Other campaigns keep going; this one waits for the account to be fixed.
                        error = f"campaign {name!r} stopped: {exc.message}"
                        log.error("worker: %s", error)
                        store.stop_campaign(campaign_id, error)
                        continue
                transport = transports.get(sender.id)
                if transport is None:
                    transport = (transport_factory or account_transport)(sender)
                    try:
                        open_connection(transport, store, campaign_id, name)
                    except SendError as exc:
                        log.error("worker: %s", exc.message)
                        continue
                    transports[sender.id] = transport
                run = _Run(
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
                    journal=journal,
                    breaker_after=c.breaker_after or config.breaker_after(),
                    windows=parkers.setdefault(campaign_id, Parker(database, campaign_id)),
                    # A provider's token further off than a poll: on to the other campaigns.
                    max_wait_s=poll_interval_s,
                )
                try:
                    _run_batches(run)
                except SendError as exc:
                    log.error("worker: %s", exc.message)
                    transports.pop(sender.id, None)
                sent += run.totals["sent"]
                worked = worked or any(run.totals.values())
                _log_state(name, store.finish_if_done(campaign_id), campaign_id, active)
            if not worked:
                if exit_when_idle and not waiting and not store.has_open_work():
                    break
                stop.wait(poll_interval_s) if clock is SYSTEM_CLOCK else clock.sleep(
                    poll_interval_s
                )
        clean = True
    finally:
        # After an error, messages may stay ours in 'sending': the journal settles them.
        journal.close(keep=not clean)
        for t in transports.values():
            with contextlib.suppress(Exception):
                t.close()
        heartbeat.stop()
        store.unregister_worker()
        log.info("worker %s stopped after %d messages", store.worker_id, sent)
    return sent


def _run_steps(steps: tuple[Callable[[Database, datetime], bool], ...], store: OutboxStore) -> bool:
    """Run each step of the pass; return whether one still waits. A failing step is logged."""
    waiting = False
    for step in steps:
        try:
            waiting = bool(step(store.db, store.clock.now())) or waiting
        except Exception as exc:  # one step's bug must not stop the sending of every campaign
            log.exception("worker: step %s failed: %s", getattr(step, "__name__", step), exc)
    return waiting


class _Limits(NamedTuple):
    dead_worker_s: float
    max_lateness_s: float


def _lateness(max_lateness_s: float) -> float:
    if isinstance(max_lateness_s, bool) or not max_lateness_s > 0:
        raise ConfigError(
            f"run_worker: max_lateness_s={max_lateness_s!r}: give a positive number of seconds"
        )
    return float(max_lateness_s)


def _mark_late(store: OutboxStore, max_lateness_s: float) -> None:
    """Set ``late`` the scheduled campaigns overdue by more than the lateness, and say so."""
    # Through the reconnecting path as every other call of the loop: an outage here must
    # not end the worker.
    late = retrying(
        store.db, "mark_late", lambda _: mark_late(store.db, store.clock.now(), max_lateness_s)
    )
    for name, scheduled_at in late:
        log.warning(
            "campaign %r is late: it was due at %s, more than %s ago; not sent. "
            "resume() it (bulkmail resume) to send it now, or cancel() it",
            name,
            f"{config.as_local(scheduled_at):%Y-%m-%d %H:%M %Z}",
            _hours(max_lateness_s),
        )


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def _log_state(name: str, status: str, campaign_id: int, active: set[int]) -> None:
    """Log what became of a campaign this worker was sending, once it is no longer sending."""
    if status == CampaignStatus.SENDING.value or campaign_id not in active:
        return
    active.discard(campaign_id)
    if status == CampaignStatus.FINISHED.value:
        log.info("campaign %r finished", name)
    elif status == CampaignStatus.STOPPED.value:
        log.info("campaign %r stopped (see its last error)", name)
    else:  # paused or cancelled from elsewhere: the rest stays queued
        log.info("campaign %r is %s: left alone", name, status)


def _wait_for_database(url: str | None, stop: threading.Event) -> Database | None:
    """Open the database, waiting for a server that is not up yet; None if it never came.

    A worker started at boot may come up before PostgreSQL (or its network): it waits
    with backoff for up to ``BULKMAIL_DB_RETRY_S``, as for a connection lost mid-run,
    then logs an error (``bulkmail run-worker`` exits 1, so a service manager restarts
    it, not 2, which says the settings are wrong). A wrong password or database name
    fails at once.
    """
    limit_s = retry_limit_s()
    deadline = time.monotonic() + limit_s
    delay_s, said = 0.5, False
    while True:
        try:
            database = open_database(url)
        except ConfigError as exc:
            cause = exc.__cause__
            if cause is None or not is_connection_lost(cause):
                raise
            if time.monotonic() >= deadline:
                log.error(
                    "run-worker: %s; gave up after %g s (BULKMAIL_DB_RETRY_S)", exc.message, limit_s
                )
                return None
            if not said:
                log.warning(
                    "run-worker: %s; waiting for it (up to %g s, BULKMAIL_DB_RETRY_S)",
                    exc.message,
                    limit_s,
                )
                said = True
            if stop.wait(delay_s):
                return None
            delay_s = min(10.0, delay_s * 2)
            continue
        if said:
            log.info("run-worker: the database is up: starting")
        return database

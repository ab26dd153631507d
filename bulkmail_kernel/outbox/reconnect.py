"""Survive the database: when the connection is lost, reconnect with backoff and carry on.

A PostgreSQL restart, a fail-over or a network blip must not kill a worker, and must
not turn a message that went out into ``unknown`` (issue 13: a 3.8 s restart killed
every worker and left 4 delivered messages ``unknown``). Every database call of the
send path (:class:`~.store.OutboxStore`, the shared throttle) runs through
:func:`retrying`, which runs it again once the server answers.

**Which errors.** Only a lost connection is retried (:func:`is_connection_lost`):
SQLAlchemy's ``connection_invalidated``, SQLSTATE class 08 (connection exception),
57P01-57P03 (administrator or crash shutdown, "the database system is starting up"),
57P05 (idle session timeout), 53300 (too many clients) and psycopg's connection
failures, which carry no SQLSTATE ("server closed the connection unexpectedly",
"connection refused"). A real error (syntax, integrity, a
cancelled statement) is raised at once. SQLite is never retried here: its one
transient error, "database is locked", is already waited out by the busy timeout.

**How long.** 0.5 s, doubling to 10 s between tries, for at most ``BULKMAIL_DB_RETRY_S``
seconds (default 300) counted from the start of the outage, not of each call: once a
call gave up, the clean-up calls after it fail at their first try instead of waiting
the whole time again. Giving up raises :class:`~bulkmail_kernel.exceptions.ConfigError`
saying so; the messages the worker held are then recovered as a dead worker's.

**One log line each way.** The first lost connection of an outage logs a warning (per
engine, however many threads hit it), the first new connection after it an info line.
SQLAlchemy's ``pool_pre_ping`` (set in :func:`bulkmail_kernel.db.create_db_engine`)
replaces a pooled connection the restart killed before it is used; that is logged the
same way, through the engine's ``handle_error`` event.

**Nothing twice.** Running a read again is harmless, and so are most writes, guarded
as they are by ``claimed_by = this worker``: recording, releasing or marking clears or
keeps that claim, so a second run after a commit that went through changes nothing.
(A record does not also demand ``status = 'sending'``: a message flagged ``unknown``
while this worker was presumed dead keeps its ``claimed_by``, and our record of what
really happened to it is the truth.) Two writes are not safe to repeat as they are,
when the connection drops after the server committed but before the client heard it
(a lost commit):

- a *claim* run again would take a second batch while the first stays ``sending``
  under this worker's name, never sent. Each claim stamps its rows with a
  ``claimed_at`` unique to this store (:class:`ClaimStamp`); a retried claim first
  adopts what that stamp holds (:func:`adopt_claim`) and claims afresh only if
  nothing committed.
- a *record* run again would find its messages no longer claimed (no harm) but would
  insert every event a second time. Its events and updates share one transaction, so a
  lost commit applied both or neither: a retried record first looks for its own first
  event (:func:`already_recorded`) and, if it is there, only reads which of the
  messages to hand over are still ours (:func:`still_held`).

The shared throttle's take is retried as it is: a lost commit there spends one token
twice, which only slows the rate. ``stop_campaign`` skips a second stop with the same
reason, so its event is not doubled either.

The outcome of a message on the wire stays in the send loop's memory while the
record waits here, and is written once the server is back: it never becomes
``unknown``. A worker cannot beat while the server is down: the dead-worker limit
(120 s) is far above a restart, and after a longer outage :func:`grace_s` stretches the
limit by the outage's length until the live workers had time to beat again.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from bulkmail_kernel.db import Database, Event, Message, MessageStatus
from bulkmail_kernel.exceptions import ConfigError

log = logging.getLogger("bulkmail")

T = TypeVar("T")
P = ParamSpec("P")

# Declarative models' __table__ is a Table; SQLAlchemy's stubs only say FromClause.
_M = cast(sa.Table, Message.__table__)
_E = cast(sa.Table, Event.__table__)

#: How long (seconds) the send path waits for a lost database before giving up.
RETRY_ENV = "BULKMAIL_DB_RETRY_S"
DEFAULT_RETRY_S = 300.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0

#: Admin shutdown, crash shutdown, "cannot connect now" (starting up, shutting down), an
#: idle session timed out, and "too many clients" (every worker reconnecting at once).
_SQLSTATES = {"57P01", "57P02", "57P03", "57P05", "53300"}
#: What libpq says when the connection itself failed (psycopg gives these no SQLSTATE).
#: Not "connection failed" alone: a wrong password or database name says that too, and
#: those must fail at once.
_PHRASES = (
    "server closed the connection",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "terminating connection",
    "connection refused",
    "could not connect",
    "connection is closed",
    "connection is lost",
    "timeout expired",
    "consuming input failed",
    "no connection to the server",
    "no route to host",
    "network is unreachable",
    "temporary failure in name resolution",
    "ssl syscall error",
    "ssl connection has been closed",
)


def is_connection_lost(exc: BaseException) -> bool:
    """Return whether ``exc`` says the connection to PostgreSQL was lost (worth a retry)."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig: BaseException | None = exc.orig
    else:
        orig = exc
    if orig is None or not type(orig).__module__.startswith("psycopg"):
        return False  # SQLite waits out its locks itself; nothing else is ours to retry
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:
        return str(sqlstate).startswith("08") or sqlstate in _SQLSTATES
    text = str(orig).lower()
    return any(p in text for p in _PHRASES)


def retry_limit_s() -> float:
    """Return how long to wait for a lost database (``BULKMAIL_DB_RETRY_S``, default 300 s)."""
    raw = os.environ.get(RETRY_ENV, "")
    if not raw.strip():
        return DEFAULT_RETRY_S
    try:
        limit = float(raw)
    except ValueError:
        limit = -1.0
    if not limit >= 0:
        raise ConfigError(f"{RETRY_ENV}={raw!r}: give the seconds to wait for the database, >= 0")
    return limit


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return (text.splitlines() or [type(orig).__name__])[0][:300]


class _Outage:
    """What one engine knows about the outage it is in, shared by its threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        #: time.monotonic() of the first lost connection, None while connected.
        self.since: float | None = None
        #: When the last outage ended (time.monotonic()) and how long it lasted.
        self.ended: float | None = None
        self.length_s = 0.0

    def lost(self, exc: BaseException) -> float:
        """Note a lost connection (a warning if it starts the outage); return the outage start."""
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
                log.warning(
                    "database %s: connection lost (%s): reconnecting", self.url, _first_line(exc)
                )
            return self.since

    def connected(self) -> None:
        """Note a new connection: it ends the outage, if there is one (an info line)."""
        if self.since is None:
            return
        with self.lock:
            if self.since is None:
                return
            self.ended = time.monotonic()
            self.length_s = self.ended - self.since
            self.since = None
            log.info("database %s: connection back after %.1f s", self.url, self.length_s)


_outages: weakref.WeakKeyDictionary[Engine, _Outage] = weakref.WeakKeyDictionary()
_outages_lock = threading.Lock()


def watch(database: Database) -> _Outage:
    """Return the engine's outage record, listening to its errors and connects the first time."""
    engine = database.engine
    outage = _outages.get(engine)
    if outage is not None:
        return outage
    with _outages_lock:
        outage = _outages.get(engine)
        if outage is None:
            outage = _Outage(database.url)

            def on_error(context: sa.engine.ExceptionContext) -> None:
                # Also the pre-ping's failures, which SQLAlchemy repairs without raising.
                if context.is_disconnect or is_connection_lost(context.original_exception):
                    outage.lost(context.original_exception)

            def on_connect(_dbapi_conn: Any, _record: Any) -> None:
                outage.connected()

            event.listen(engine, "handle_error", on_error)
            event.listen(engine, "connect", on_connect)
            _outages[engine] = outage
    return outage


def grace_s(database: Database, window_s: float) -> float:
    """Return how long the database was lost, if that ended less than ``window_s`` ago.

    No worker could beat while it was down: for a while after an outage, a heartbeat
    that much older than the dead-worker limit is still a live worker's.
    """
    outage = watch(database)
    now = time.monotonic()
    if outage.since is not None:
        return now - outage.since
    if outage.ended is not None and now - outage.ended < window_s:
        return outage.length_s
    return 0.0


def retrying(database: Database, what: str, op: Callable[[int], T]) -> T:
    """Run ``op(attempt)`` (0 first) again after each lost connection, with backoff.

    ``op`` runs one whole transaction; ``attempt`` > 0 tells it that an earlier run may
    have committed without our hearing it (see the module docstring). Any other error,
    and a lost connection once ``BULKMAIL_DB_RETRY_S`` has passed, is raised.
    """
    outage = watch(database)
    delay = FIRST_DELAY_S
    attempt = 0
    while True:
        try:
            return op(attempt)
        except sa.exc.DBAPIError as exc:
            if not is_connection_lost(exc):
                raise
            since = outage.lost(exc)
            limit = retry_limit_s()
            waited = time.monotonic() - since
            if waited >= limit:
                raise ConfigError(
                    f"database {database.url} unreachable for {waited:.0f} s ({what}): "
                    f"{_first_line(exc)}; check that the server is running "
                    f"({RETRY_ENV}={limit:g} sets how long to wait)",
                    operation=what,
                ) from exc
            time.sleep(min(delay, limit - waited))
            delay = min(delay * 2, MAX_DELAY_S)
            attempt += 1


class _HasDatabase(Protocol):
    db: Database


S = TypeVar("S", bound=_HasDatabase)


def reconnecting(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Make a method of an object with ``.db`` run again after a lost connection.

    Only for methods that are safe to run twice (reads, and writes guarded so that a
    second run changes nothing): :func:`retrying` documents the two that are not.
    """

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return retrying(self.db, method.__name__, lambda _attempt: method(self, *args, **kwargs))

    return wrapper


# -- lost commits ----------------------------------------------------------------------


class ClaimStamp:
    """Hands out ``claimed_at`` values unique to one store, so a claim can be found again.

    The claim's rows carry (``claimed_by``, ``claimed_at``); two claims of the same worker
    (threads of one ``send(connections=N)``, or a hand-moved test clock) never share one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: datetime | None = None

    def next(self, now: datetime) -> datetime:
        """Return ``now``, or a microsecond after the last stamp if ``now`` is not later."""
        with self._lock:
            if self._last is not None and now <= self._last:
                now = self._last + timedelta(microseconds=1)
            self._last = now
            return now


def adopt_claim(
    conn: sa.Connection, worker_id: str, campaign_id: int, stamp: datetime
) -> list[Any]:
    """Return the rows a claim stamped ``stamp`` holds (empty if it never committed).

    The rows have the columns of the claim's RETURNING, and ``handed_at``.
    """
    return list(
        conn.execute(
            sa.select(
                _M.c.id,
                _M.c.contact_id,
                _M.c.contact_point_id,
                _M.c.recipient,
                _M.c.attempts,
                _M.c.channel,
                _M.c.message_id_header,
                _M.c.handed_at,
            )
            .where(
                _M.c.campaign_id == campaign_id,
                _M.c.claimed_by == worker_id,
                _M.c.claimed_at == stamp,
                _M.c.status == MessageStatus.SENDING.value,
            )
            .order_by(_M.c.id)
        ).all()
    )


def already_recorded(conn: sa.Connection, first_event: dict[str, Any]) -> bool:
    """Return whether the event row ``first_event`` of a record is stored (it committed)."""
    return (
        conn.execute(
            sa.select(_E.c.id)
            .where(
                _E.c.message_id == first_event["message_id"],
                _E.c.occurred_at == first_event["occurred_at"],
                _E.c.kind == first_event["kind"],
                _E.c.detail == first_event["detail"],
            )
            .limit(1)
        ).first()
        is not None
    )


def still_held(conn: sa.Connection, worker_id: str, ids: list[int]) -> set[int]:
    """Return which of ``ids`` this worker still holds in ``sending``."""
    if not ids:
        return set()
    return set(
        conn.execute(
            sa.select(_M.c.id).where(
                _M.c.id.in_(ids),
                _M.c.claimed_by == worker_id,
                _M.c.status == MessageStatus.SENDING.value,
            )
        ).scalars()
    )

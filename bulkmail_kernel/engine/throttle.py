"""Throttling: a token bucket per process, or one shared by every worker through the database.

Both buckets take an injectable :class:`~bulkmail_kernel.clock.Clock`, so tests
move time by hand and never sleep. The shared bucket keeps its state in the
``rate_buckets`` table; on PostgreSQL the row is locked with ``SELECT ... FOR
UPDATE`` and on SQLite the write lock is taken first, so two workers never spend
the same token.

A caller that finds the bucket empty *reserves* its token (the level goes
negative) and sleeps until the token would have arrived: one round trip per
message, no polling, and the rate holds however many workers share it.

A lost database connection is waited out (:mod:`bulkmail_kernel.outbox.reconnect`).
A take retried after a commit that went through unheard spends a second token: one
message waits one token longer, the rate is never exceeded.
"""

from __future__ import annotations

import threading
from typing import Protocol, cast

import sqlalchemy as sa

from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.db import Database, RateBucket
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.reconnect import retrying


def _check(rate_per_hour: float, burst: int) -> None:
    if not rate_per_hour > 0:
        raise ConfigError(
            f"throttle: rate_per_hour={rate_per_hour!r}: "
            "give a positive number of messages per hour"
        )
    if burst < 1:
        raise ConfigError(f"throttle: burst={burst!r}: give at least 1")


class Throttle(Protocol):
    """Anything that can make the caller wait for its turn to send."""

    def acquire(self) -> float:
        """Take one token, sleeping as long as needed; return the seconds waited."""
        ...


class TokenBucket:
    """An in-process token bucket: ``burst`` messages at once, then ``rate_per_hour``.

    The bucket starts full, so the first ``burst`` messages leave immediately.
    """

    def __init__(
        self, rate_per_hour: float, burst: int = 1, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        _check(rate_per_hour, burst)
        self.rate_per_s = rate_per_hour / 3600.0
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping as long as needed; return the seconds waited."""
        with self._lock:
            now = self.clock.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now
            self._tokens -= 1.0
            wait = -self._tokens / self.rate_per_s if self._tokens < 0 else 0.0
        self.clock.sleep(wait)
        return wait


def _bucket_table() -> sa.Table:
    # DeclarativeBase types __table__ as FromClause; a declarative model's is a Table.
    return cast(sa.Table, RateBucket.__table__)


class SharedTokenBucket:
    """A token bucket stored in ``rate_buckets`` and shared by every worker on the database."""

    def __init__(
        self,
        database: Database,
        name: str,
        rate_per_hour: float,
        burst: int = 1,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        _check(rate_per_hour, burst)
        self.db = database
        self.name = name
        self.rate_per_s = rate_per_hour / 3600.0
        self.burst = burst
        self.clock = clock
        retrying(self.db, "throttle", self._ensure_row)

    def _ensure_row(self, _attempt: int = 0) -> None:
        table = _bucket_table()
        with self.db.engine.begin() as conn:
            exists = conn.execute(sa.select(table.c.name).where(table.c.name == self.name)).first()
            if exists is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            table.insert().values(
                                name=self.name,
                                tokens=float(self.burst),
                                updated_at=self.clock.now(),
                            )
                        )
                except sa.exc.IntegrityError:
                    pass  # another worker created it first: same bucket, nothing to do

    def acquire(self) -> float:
        """Take one token, sleeping as long as needed; return the seconds waited."""
        tokens = retrying(self.db, "throttle", self._take)
        wait = -tokens / self.rate_per_s if tokens < 0 else 0.0
        self.clock.sleep(wait)
        return wait

    def _take(self, _attempt: int) -> float:
        """Take one token from the stored bucket; return the level left (negative: wait)."""
        table = _bucket_table()
        with self.db.engine.begin() as conn:
            if self.db.dialect == "sqlite":
                # SQLite has no row locks: a no-op write takes the database write lock first,
                # so the read below cannot interleave with another process's read-modify-write.
                conn.execute(
                    table.update().where(table.c.name == self.name).values(tokens=table.c.tokens)
                )
                query = sa.select(table.c.tokens, table.c.updated_at)
            else:
                query = sa.select(table.c.tokens, table.c.updated_at).with_for_update()
            row = conn.execute(query.where(table.c.name == self.name)).one()
            now = self.clock.now()
            elapsed = max(0.0, (now - row.updated_at).total_seconds())
            tokens = min(float(self.burst), row.tokens + elapsed * self.rate_per_s) - 1.0
            conn.execute(
                table.update()
                .where(table.c.name == self.name)
                .values(tokens=tokens, updated_at=now)
            )
        return tokens

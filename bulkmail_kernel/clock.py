"""Time for the engine and the outbox: a protocol, the real clock, and a hand-moved one.

Everything that waits or stamps a time takes a :class:`Clock`, so tests move time by
hand and never sleep. It sits below every stage: the outbox stamps claims and records
with it, the throttle and the send loop sleep on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where the sending engine gets time from (patched in tests, never slept in them)."""

    def now(self) -> datetime:
        """Return the current wall-clock time, aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """Return the current UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        if seconds > 0:
            time.sleep(seconds)


@dataclass
class ManualClock:
    """A clock that only moves when told to; ``sleep`` advances it instantly."""

    start: datetime = field(default_factory=lambda: datetime(2025, 1, 6, 9, 0, tzinfo=UTC))
    elapsed: float = 0.0
    slept: list[float] = field(default_factory=list)

    def now(self) -> datetime:
        """Return the start time plus the elapsed seconds."""
        return self.start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        """Return the elapsed seconds."""
        return self.elapsed

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` without waiting."""
        if seconds > 0:
            self.slept.append(seconds)
            self.elapsed += seconds

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.elapsed += seconds


SYSTEM_CLOCK = SystemClock()

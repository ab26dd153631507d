"""The heartbeat: a thread per worker that says it is alive, whatever the send loop waits on.

A worker that beat only between messages looked dead while it slept for its token:
at 20 messages/h two workers sleep 360 s per claim, past the 120 s limit, so each took
the other for dead, requeued its message and deleted its row, in turns, for ever
(issue 13). Here every worker (``send()`` and each ``run_worker`` thread) beats from
a daemon thread of its own every quarter of the dead-worker limit (at most every
30 s), through its own pooled connection, so no throttle sleep at any rate starves it.
"""

from __future__ import annotations

import logging
import math
import threading

from bulkmail_kernel import config
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.store import OutboxStore

log = logging.getLogger("bulkmail")

#: The longest gap between two beats, whatever the limit.
MAX_INTERVAL_S = 30.0


def dead_worker_limit_s(dead_worker_s: float | None) -> float:
    """Return the dead-worker limit: ``dead_worker_s`` if given, else ``BULKMAIL_DEAD_WORKER_S``."""
    if dead_worker_s is None:
        return config.dead_worker_s()
    if (
        isinstance(dead_worker_s, bool)
        or not isinstance(dead_worker_s, int | float)
        or not math.isfinite(dead_worker_s)
        or dead_worker_s <= 0
    ):
        raise ConfigError(
            f"dead_worker_s={dead_worker_s!r}: give a positive number of seconds (default "
            f"{config.DEFAULT_DEAD_WORKER_S:g}, or BULKMAIL_DEAD_WORKER_S)"
        )
    return float(dead_worker_s)


def beat_interval_s(dead_worker_s: float) -> float:
    """Return how often a worker beats: four times per dead-worker limit, at least every 30 s."""
    return min(MAX_INTERVAL_S, dead_worker_s / 4.0)


class Heartbeat:
    """Beat ``store.heartbeat()`` from a daemon thread until stopped.

    Use ``start()`` right after ``register_worker()`` and ``stop()`` in the ``finally``
    before ``unregister_worker()``. A beat that fails (the database is away) is logged
    once and tried again next time; a worker whose row is gone (taken for dead while
    it could not beat) registers again, so its next claims are not taken from it.
    """

    def __init__(self, store: OutboxStore, dead_worker_s: float) -> None:
        self.store = store
        self.interval_s = beat_interval_s(dead_worker_s)
        self.beats = 0
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(
            target=self._run, name=f"bulkmail-heartbeat-{store.worker_id}", daemon=True
        )

    def start(self) -> Heartbeat:
        """Start beating; return self."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop beating and wait for the thread (at most ``timeout_s``, a beat in progress)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def beat(self) -> None:
        """Beat once; never raises (the send loop must not die of its heartbeat)."""
        try:
            alive = self.store.heartbeat()
            if not alive and not self._stop.is_set():
                log.warning(
                    "worker %s: taken for dead by another worker (no heartbeat for too long): "
                    "registered again",
                    self.store.worker_id,
                )
                self.store.register_worker()
        except Exception as exc:  # the database is away: say so once, keep trying
            if not self._failing:
                log.warning(
                    "worker %s: heartbeat failed (%s: %s); trying again every %g s",
                    self.store.worker_id,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                    self.interval_s,
                )
            self._failing = True
            return
        if self._failing:
            log.info("worker %s: heartbeat back", self.store.worker_id)
        self._failing = False
        self.beats += 1

"""Threads of the engine: several jobs until all end, and a clock whose sleep a stop cuts short.

A Ctrl-C (KeyboardInterrupt) lands in the main thread only; the sender threads must
each finish the message in hand, record it and put the rest back before the caller
returns, so the main thread waits for them on flags of its own (see ``_in_threads``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock


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

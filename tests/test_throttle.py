"""Throttle: token buckets with a manual clock, in process and shared through the database."""

from __future__ import annotations

import threading

import pytest

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.engine.throttle import SharedTokenBucket, TokenBucket
from bulkmail_kernel.exceptions import ConfigError


def test_burst_then_steady_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(3600, burst=5, clock=clock)
    waits = [bucket.acquire() for _ in range(25)]
    assert waits[:5] == [0, 0, 0, 0, 0]
    # 3,600/h is one a second: after the burst every message waits exactly its second.
    assert waits[5:] == pytest.approx([1.0] * 20)
    assert clock.elapsed == pytest.approx(20.0)


def test_idle_time_refills_only_up_to_burst() -> None:
    clock = ManualClock()
    bucket = TokenBucket(360, burst=3, clock=clock)  # one per 10 s
    for _ in range(3):
        bucket.acquire()
    clock.advance(3600)
    assert [bucket.acquire() for _ in range(4)] == pytest.approx([0, 0, 0, 10.0])


def test_measured_rate_within_two_percent_over_a_run() -> None:
    clock = ManualClock()
    bucket = TokenBucket(3000, burst=10, clock=clock)
    n = 3000
    for _ in range(n):
        bucket.acquire()
    rate = n / clock.elapsed * 3600
    # the burst makes the first minutes faster; over an hour's worth the error is < 2 %.
    assert rate == pytest.approx(3000, rel=0.02)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-5, 1), (100, 0)])
def test_bad_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ConfigError, match="throttle"):
        TokenBucket(rate, burst)


def test_shared_bucket_rate_is_shared(database: dbmod.Database) -> None:
    clock = ManualClock()
    a = SharedTokenBucket(database, "campaign:1", 3600, burst=2, clock=clock)
    b = SharedTokenBucket(database, "campaign:1", 3600, burst=2, clock=clock)
    waits = []
    for _ in range(5):
        waits.append(a.acquire())
        waits.append(b.acquire())
    assert waits[:2] == [0, 0]
    # Each worker's sleep moves the shared clock: the pair never exceeds one a second overall.
    assert clock.elapsed == pytest.approx(8.0, abs=0.01)


def test_shared_bucket_threads_never_overspend(database: dbmod.Database) -> None:
    """Real clock: four threads share a 36,000/h (10/s) bucket with burst 1."""
    buckets = [SharedTokenBucket(database, "shared", 36000, burst=1) for _ in range(4)]
    import time

    stamps: list[float] = []
    lock = threading.Lock()

    def run(bucket: SharedTokenBucket) -> None:
        for _ in range(5):
            bucket.acquire()
            with lock:
                stamps.append(time.monotonic())

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(b,)) for b in buckets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 20 tokens at 10/s with one in the bucket: at least 1.9 s, and not much more.
    assert 1.85 <= max(stamps) - start < 3.0

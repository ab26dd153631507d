"""Send windows on a large campaign: parking it, and the claim past what is parked.

    python bench/bench_windows.py [--messages 200000] [--rounds 5] [--no-pg] [--pg URL]

A campaign of ``--messages`` queued messages (tests/sending_support's ``make_campaign``)
spread over six recipient zones, window "Mon–Fri 09:00–18:00", looked at on a Monday
at 08:30 UTC: five zones closed, one open, and the open zone's messages last in id
order, the worst case for the claim (it must pass every parked message). Timed: the
first park (one UPDATE per closed zone, every message written), a park when nothing
opened or closed (the cached answer, what each batch pays), and a claim of 100 (then
released) with the five zones parked against the same claim with no window. Goals:
the first park <= 10 s, the cached park <= 5 ms, the claim <= 0.5 s. Exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import sqlalchemy as sa
from pg_schema import fresh_schema
from sending_support import make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import Campaign, Message
from bulkmail_kernel.outbox.parking import Parker, set_window
from bulkmail_kernel.outbox.store import OutboxStore

PG_DEFAULT = os.environ.get(
    "BULKMAIL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
#: Closed on Monday 08:30 UTC (before 09:00 local) but for the last, Europe/Moscow (11:30).
ZONES = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Atlantic/Reykjavik",
    "Europe/Moscow",
]
NOW = datetime(2026, 3, 30, 8, 30, tzinfo=UTC)
GOALS = {"first park": 10.0, "cached park": 0.005, "claim 100, 5/6 parked": 0.5}


def _fill(database: dbmod.Database, n: int) -> int:
    sink_account(database, 2525)
    cid = make_campaign(database, n, name="bench", status="sending")
    with database.engine.begin() as conn:
        ids = list(
            conn.execute(
                sa.select(Message.id).where(Message.campaign_id == cid).order_by(Message.id)
            ).scalars()
        )
        share = len(ids) // len(ZONES) + 1
        for k, zone in enumerate(ZONES):
            part = ids[k * share : (k + 1) * share]
            if part:
                conn.execute(
                    sa.update(Message)
                    .where(Message.id.between(part[0], part[-1]))
                    .values(timezone=zone)
                )
        conn.execute(
            sa.update(Campaign).where(Campaign.id == cid).values(send_window="Mon–Fri 09:00–18:00")
        )
    return cid


def _best(func: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def _claim(store: OutboxStore, cid: int) -> None:
    batch = store.claim(cid, 100)
    assert len(batch) == 100, "the open zone's messages are claimed"
    store.release(batch)


def _run(label: str, url: str, n: int, rounds: int) -> list[tuple[str, float]]:
    database = dbmod.open_database(url)
    start = time.perf_counter()
    cid = _fill(database, n)
    took = time.perf_counter() - start
    print(f"{label}: {n:,} messages in {len(ZONES)} zones stored in {took:.1f} s")
    parker = Parker(database, cid)
    start = time.perf_counter()
    parker.park(NOW)
    first = time.perf_counter() - start
    with database.engine.connect() as conn:
        parked = conn.execute(
            sa.select(sa.func.count()).where(Message.campaign_id == cid, Message.not_before > NOW)
        ).scalar_one()
    assert parked > n * 0.8, f"five zones of six are parked ({parked:,})"
    cached = _best(lambda: parker.park(NOW), rounds)
    store = OutboxStore(database, "bench-worker", ManualClock(start=NOW))
    store.register_worker()
    claim = _best(lambda: _claim(store, cid), rounds)
    set_window(database, cid, None, NOW)
    baseline = _best(lambda: _claim(store, cid), rounds)
    store.unregister_worker()
    dbmod.close_all()
    print(f"  {parked:,} parked; the claim with no window: {baseline * 1000:.1f} ms")
    return [
        (f"{label}: first park", first),
        (f"{label}: cached park", cached),
        (f"{label}: claim 100, 5/6 parked", claim),
    ]


def main() -> int:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--pg", default=PG_DEFAULT, help="PostgreSQL URL (a schema is made and dropped)"
    )
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = ap.parse_args()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BULKMAIL_DATA_DIR"] = tmp
        rows += _run("SQLite", f"sqlite:///{tmp}/bench.db", args.messages, args.rounds)
        if not args.no_pg:
            with fresh_schema(args.pg) as url:
                rows += _run("PostgreSQL", url, args.messages, args.rounds)
    print(f"\n{'what':<42} {'best':>10} {'goal':>10}  ok")
    ok = True
    for what, seconds in rows:
        goal = GOALS[what.split(": ", 1)[1]]
        good = seconds <= goal
        ok &= good
        mark = "yes" if good else "NO"
        print(f"{what:<42} {seconds * 1000:>7.1f} ms {goal * 1000:>7.0f} ms  {mark}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The outbox monitor's refresh on a 100,000-message campaign, SQLite and PostgreSQL.

    python bench/bench_monitor.py [--messages 100000] [--rounds 5] [--no-pg] [--pg URL]

A campaign of ``--messages`` queued messages is stored (tests/sending_support's
``make_campaign``: contacts, points, messages, bodies), then 60 % marked sent over the
last half hour, 2 % failed, 1 % deferred, each with a code and an error. Timed, best
of ``--rounds``: ``campaign_progress`` (the read), and a full refresh of the
``outbox_monitor`` widget (that read, the removable-messages list, every widget
value). Goal: each <= 1 s. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import sqlalchemy as sa
from pg_schema import fresh_schema
from sending_support import make_campaign, sink_account

from bulkmail_kernel import campaign_progress, outbox_monitor
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.db import Message

GOAL_S = 1.0
PG_DEFAULT = os.environ.get(
    "BULKMAIL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _fill(database: dbmod.Database, n: int) -> int:
    """Store the campaign and mark it part sent, failed and deferred; return its id."""
    sink_account(database, 2525)
    cid = make_campaign(database, n, name="bench", rate_per_hour=3000, status="sending")
    now = datetime.now(UTC)
    with database.engine.begin() as conn:
        ids = conn.execute(
            sa.select(Message.id).where(Message.campaign_id == cid).order_by(Message.id)
        ).scalars()
        ids = list(ids)
        n_sent, n_failed, n_deferred = int(n * 0.60), int(n * 0.02), int(n * 0.01)
        sent = ids[:n_sent]
        # Sent over the last 30 minutes, in slices of 1,000 with their own time.
        for i in range(0, len(sent), 1000):
            at = now - timedelta(seconds=1800 * (1 - i / max(len(sent), 1)))
            conn.execute(
                sa.update(Message)
                .where(Message.id.in_(sent[i : i + 1000]))
                .values(status="sent", sent_at=at, last_code="250", attempts=1, updated_at=at)
            )
        for status, chunk, code, error in (
            ("failed", ids[n_sent : n_sent + n_failed], "550", "5.1.1 no such user"),
            (
                "deferred",
                ids[n_sent + n_failed : n_sent + n_failed + n_deferred],
                "451",
                "4.7.1 greylisted",
            ),
        ):
            for i in range(0, len(chunk), 1000):
                conn.execute(
                    sa.update(Message)
                    .where(Message.id.in_(chunk[i : i + 1000]))
                    .values(status=status, last_code=code, last_error=error, attempts=1)
                )
    return cid


def _best(func: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def _run(label: str, url: str, n: int, rounds: int) -> list[tuple[str, float]]:
    database = dbmod.open_database(url)
    start = time.perf_counter()
    cid = _fill(database, n)
    print(f"{label}: {n:,} messages stored and marked in {time.perf_counter() - start:.1f} s")
    p = campaign_progress(cid, db=database)
    print(f"  {p.summary()}")
    read = _best(lambda: campaign_progress(cid, db=database), rounds)
    monitor = outbox_monitor(cid, refresh_s=0, db=database)
    try:
        refresh = _best(monitor.refresh, rounds)
        assert monitor.progress_bar.value == p.sent, "the widget shows what was read"
    finally:
        monitor.close()
    dbmod.close_all()
    return [(f"{label}: campaign_progress", read), (f"{label}: widget refresh", refresh)]


def main() -> int:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
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
    print(f"\n{'what':<34} {'best of ' + str(args.rounds):>12} {'goal':>8}  ok")
    ok = True
    for what, seconds in rows:
        good = seconds <= GOAL_S
        ok &= good
        print(f"{what:<34} {seconds * 1000:>9.1f} ms {'<= 1 s':>8}  {'yes' if good else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

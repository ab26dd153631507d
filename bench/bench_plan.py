"""The send plan of a campaign of a million queued messages: how long send_plan takes.

    python bench/bench_plan.py [--messages 1000000] [--no-pg] [--pg URL]

The outbox is filled with one ``INSERT ... SELECT`` over a generated series (a
recursive CTE on SQLite, ``generate_series`` on PostgreSQL): ``--messages`` queued
e-mails to seven domains (gmail.com, seznam.cz, centrum.sk, outlook.com, yahoo.com
and two firms), in six recipient zones and the firm's. Timed, each once (a plan
reads the whole queue, so a second run measures the same): the plan at 36,000/h with
no window; with "Mon–Fri 09:00–18:00" in the recipients' zones (the sending spans
several days, so dozens of window openings and closings); and with per-domain-group
hourly limits on top (gmail, outlook, seznam). Goal: each <= 15 s, i.e. seconds, not
minutes. Exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import sqlalchemy as sa
from pg_schema import fresh_schema
from sending_support import sink_account

from bulkmail_kernel import create_campaign, send_plan, set_send_window
from bulkmail_kernel import db as dbmod

PG_DEFAULT = os.environ.get(
    "BULKMAIL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
NOW = datetime(2026, 3, 30, 6, 0, tzinfo=UTC)  # a Monday, before 09:00 in Europe
GOAL_S = 15.0
DOMAINS = ["gmail.com", "seznam.cz", "centrum.sk", "outlook.com", "yahoo.com", "firma.sk"]
DOMAINS.append("shop.example.com")
ZONES = ["America/New_York", "Europe/London", "Europe/Moscow", "Asia/Tokyo", "Europe/Prague"]
LIMITS = {"gmail.com": 3600.0, "outlook.com": 3600.0, "seznam.cz": 1800.0}


def _fill(database: dbmod.Database, n: int) -> int:
    sink_account(database, 2525)
    cid = create_campaign("bench", sender="sink", rate_per_hour=36000, burst=10, db=database).id
    domain = " ".join(f"WHEN {k} THEN '{d}'" for k, d in enumerate(DOMAINS))
    zone = " ".join(f"WHEN {k} THEN '{z}'" for k, z in enumerate(ZONES))
    select = (
        f"SELECT {cid}, 'email', 'u' || i || '@' || (CASE i % {len(DOMAINS)} {domain} END), "
        f"'queued', 0, (CASE i % {len(ZONES) + 1} {zone} ELSE NULL END), "
        f"'<b' || i || '@shop.sk>', '', :now, :now"
    )
    columns = (
        "campaign_id, channel, recipient, status, attempts, timezone, message_id_header, "
        "last_error, created_at, updated_at"
    )
    if database.dialect == "sqlite":
        sql = (
            f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
            f"INSERT INTO messages ({columns}) {select} FROM s"
        )
        now: object = NOW.strftime("%Y-%m-%d %H:%M:%S.%f")
    else:
        sql = f"INSERT INTO messages ({columns}) {select} FROM generate_series(1, {n}) AS s(i)"
        now = NOW
    with database.engine.begin() as conn:
        conn.execute(sa.text(sql), {"now": now})
    return cid


def _timed(what: str, func: object) -> tuple[str, float]:
    start = time.perf_counter()
    plan = func()  # type: ignore[operator]
    took = time.perf_counter() - start
    finish = plan.attrs["finish"]
    print(f"  {what}: {len(plan):,} planned, finish {finish:%a %Y-%m-%d %H:%M} in {took:.1f} s")
    return what, took


def _run(label: str, url: str, n: int) -> list[tuple[str, float]]:
    database = dbmod.open_database(url)
    start = time.perf_counter()
    _fill(database, n)
    print(f"{label}: {n:,} queued messages stored in {time.perf_counter() - start:.1f} s")
    rows = [_timed("no window", lambda: send_plan("bench", now=NOW, db=database))]
    set_send_window("bench", "Mon–Fri 09:00–18:00", db=database)
    rows.append(_timed("window", lambda: send_plan("bench", now=NOW, db=database)))
    rows.append(
        _timed(
            "window + domain limits",
            lambda: send_plan("bench", now=NOW, domain_limits=LIMITS, db=database),
        )
    )
    dbmod.close_all()
    return [(f"{label}: {what}", took) for what, took in rows]


def main() -> int:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument(
        "--pg", default=PG_DEFAULT, help="PostgreSQL URL (a schema is made and dropped)"
    )
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = ap.parse_args()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BULKMAIL_DATA_DIR"] = tmp
        rows += _run("SQLite", f"sqlite:///{tmp}/bench.db", args.messages)
        if not args.no_pg:
            with fresh_schema(args.pg) as url:
                rows += _run("PostgreSQL", url, args.messages)
    print(f"\n{'what':<44} {'took':>8} {'goal':>8}  ok")
    ok = True
    for what, seconds in rows:
        good = seconds <= GOAL_S
        ok &= good
        print(f"{what:<44} {seconds:>6.1f} s {GOAL_S:>6.0f} s  {'yes' if good else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

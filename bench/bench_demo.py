"""Benchmark: how long ``generate_demo`` takes to load a million contacts.

Run:  .venv/bin/python bench/bench_demo.py [--contacts N] [--pg [URL]]

Each run goes into a fresh temporary SQLite file (and, with ``--pg``, a fresh schema in
PostgreSQL that is dropped afterwards), so figures never depend on earlier data.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from pg_schema import fresh_schema

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.demo.generate import generate_demo

GOAL_S = 120.0
DEFAULT_PG = os.environ.get(
    "BULKMAIL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def run(label: str, url: str, contacts: int) -> dict[str, object]:
    db = dbmod.open_database(url)  # migrations are not part of the timed load
    started = time.perf_counter()
    summary = generate_demo(
        contacts, db=db, today=date(2026, 11, 23), progress=True, samples_dir=None
    )
    seconds = time.perf_counter() - started
    rows = dict(zip(summary["table"], summary["rows"], strict=True))
    db.dispose()
    total = sum(rows.values())
    return {
        "backend": label,
        "contacts": rows["contacts"],
        "contact points": rows["contact_points"],
        "seconds": round(seconds, 1),
        "rows/s": int(total / seconds),
        "goal": f"< {GOAL_S:.0f} s",
        "result": "PASS" if seconds < GOAL_S else "FAIL",
    }


def run_sqlite(contacts: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        os.environ["BULKMAIL_DATA_DIR"] = tmp
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        result = run("sqlite", url, contacts)
        dbmod.close_all()
        return result


def run_pg(base_url: str, contacts: int) -> dict[str, object]:
    with fresh_schema(base_url) as url:
        return run("postgresql", url, contacts)


def print_table(results: list[dict[str, object]]) -> None:
    cols = list(results[0])
    widths = {
        c: max(len(c), *(len(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c])) for r in results))
        for c in cols
    }

    def cell(r: dict[str, object], c: str) -> str:
        v = r[c]
        text = f"{v:,}" if isinstance(v, int) else str(v)
        return text.rjust(widths[c])

    print(" | ".join(c.rjust(widths[c]) for c in cols))
    print("-+-".join("-" * widths[c] for c in cols))
    for r in results:
        print(" | ".join(cell(r, c) for c in cols))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument(
        "--pg",
        nargs="?",
        const=DEFAULT_PG,
        default=None,
        help=f"also load into a fresh schema of this PostgreSQL (default {DEFAULT_PG})",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite run")
    args = parser.parse_args()
    results = []
    if not args.no_sqlite:
        results.append(run_sqlite(args.contacts))
    if args.pg:
        results.append(run_pg(args.pg, args.contacts))
    if not results:
        parser.error("nothing to run")
    print()
    print(f"generate_demo({args.contacts:,}) on {os.cpu_count()} CPUs")
    print_table(results)
    return 0 if all(r["result"] == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

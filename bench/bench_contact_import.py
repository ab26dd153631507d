"""Time import_contacts on 100,000 clean CSV rows, SQLite and PostgreSQL, against read_csv+to_sql.

Run: python bench/bench_contact_import.py [--rows N] [--rounds 3] [--pg [URL]] [--profile]
     [--before DIR]   (also time bulkmail_kernel of another checkout, e.g. a worktree of main)

Each measurement runs in a fresh interpreter, so its peak memory (ru_maxrss) is its own:
"above baseline" is the peak minus the resident size once the packages are imported and
the empty database is open. Rounds are interleaved (every variant once per round) and
the best round of each variant counts, as the machine is shared. ``--profile`` runs
cProfile over one import of 20,000 rows into SQLite instead and prints the top entries.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_DEFAULT = os.environ.get(
    "BULKMAIL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FIRST = ["Ján", "Eva", "Peter", "Mária", "Tomáš", "Zuzana", "Ольга", "Jiří", "Anna", "Martin"]
LAST = ["Novák", "Malá", "Horváth", "Kováčová", "Петров", "Svoboda", "Tóth", "Varga"]
DOMAINS = ["gmail.com", "azet.sk", "centrum.sk", "seznam.cz", "firma.sk", "post.sk", "mail.ru"]


def write_csv(path: Path, n: int) -> None:
    """Write ``n`` clean rows: names, e-mail, phone, gender, language, date, consent, city."""
    rnd = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "first_name", "last_name", "email", "phone", "gender", "language",
                    "registered", "opt_in", "city"])  # fmt: skip
        for i in range(n):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            w.writerow([
                f"N{i}", first, last, f"user.{i}+news@{rnd.choice(DOMAINS)}",
                f"+4219{rnd.choice('0144')}{i:07d}"[:13], rnd.choice("mf"),
                rnd.choice(["sk", "cs", "ru"]), f"{1 + i % 28}.{1 + i % 12}.20{10 + i % 14}",
                rnd.choice(["yes", "no"]), rnd.choice(["Košice", "Bratislava", "Brno"]),
            ])  # fmt: skip


def child(variant: str, url: str, csv_path: str) -> None:
    """Run one measurement in this (fresh) process and print it as JSON."""
    import pandas as pd

    from bulkmail_kernel import db as dbmod
    from bulkmail_kernel.contacts.importer import import_contacts

    database = dbmod.open_database(url)
    base = _rss_kib()
    t = time.perf_counter()
    if variant in ("bulkmail", "before"):
        r = import_contacts(csv_path, db=database, progress=False)
        if not (r.committed and r.inserted == r.rows):
            raise SystemExit(r.summary())
        n = r.rows
    else:  # the naive comparison: no checks at all
        df = pd.read_csv(csv_path)
        df.to_sql("naive_contacts", database.engine, index=False, chunksize=10_000)
        n = len(df)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": n, "secs": secs, "above_kib": peak - base}))


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def profile(csv_path: Path, tmp: Path) -> None:
    """Profile one 20,000-row import into SQLite with cProfile."""
    import cProfile
    import pstats

    from bulkmail_kernel import db as dbmod
    from bulkmail_kernel.contacts.importer import import_contacts

    database = dbmod.open_database(f"sqlite:///{tmp / 'profile.db'}")
    prof = cProfile.Profile()
    prof.enable()
    import_contacts(csv_path, db=database, progress=False)
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(35)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg", nargs="?", const=PG_DEFAULT, help="also PostgreSQL (URL optional)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--before", help="another checkout to time in the same rounds")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from pg_schema import fresh_schema

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        csv_path = tmp / "contacts.csv"
        if args.profile:
            write_csv(csv_path, 20_000)
            profile(csv_path, tmp)
            return
        write_csv(csv_path, args.rows)
        backends = ["sqlite"] + (["postgresql"] if args.pg else [])
        best: dict[tuple[str, str], dict[str, float]] = {}
        for rnd in range(args.rounds):
            for backend in backends:
                for variant in ("bulkmail", "naive", *(("before",) if args.before else ())):
                    if backend == "sqlite":
                        url = f"sqlite:///{tmp / f'{variant}-{rnd}.db'}"
                        got = _run(variant, url, csv_path, args.before)
                        (tmp / f"{variant}-{rnd}.db").unlink()
                    else:
                        with fresh_schema(args.pg) as url:
                            got = _run(variant, url, csv_path, args.before)
                    key = (backend, variant)
                    rate = got["rows"] / got["secs"]
                    print(f"round {rnd + 1} {backend:10} {variant:8} {got['secs']:7.2f} s "
                          f"{rate:9,.0f} rows/s {got['above_kib'] / 1024:7.1f} MiB above "
                          "baseline", flush=True)  # fmt: skip
                    if key not in best or got["secs"] < best[key]["secs"]:
                        best[key] = got
    print(f"\nbest of {args.rounds} interleaved rounds, {args.rows:,} clean CSV rows "
          f"(load average {os.getloadavg()[0]:.1f}):")  # fmt: skip
    print(f"{'backend':10} {'what':25} {'seconds':>8} {'rows/s':>9} {'MiB above':>10} {'B/row':>7}")
    missed = False
    for (backend, variant), got in best.items():
        what = {"bulkmail": "import_contacts", "naive": "read_csv + to_sql (naive)",
                "before": "import_contacts before"}[variant]  # fmt: skip
        rate = got["rows"] / got["secs"]
        per_row = got["above_kib"] * 1024 / got["rows"]
        print(f"{backend:10} {what:25} {got['secs']:8.2f} {rate:9,.0f} "
              f"{got['above_kib'] / 1024:10.1f} {per_row:7.0f}")  # fmt: skip
        if variant == "bulkmail" and (rate < 10_000 or per_row > 1024):
            missed = True
    if missed:
        print("goal missed: >= 10,000 rows/s and <= 1 KB a row above the baseline")
        sys.exit(1)


def _run(variant: str, url: str, csv_path: Path, before: str | None) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=before) if variant == "before" and before else None
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, url, str(csv_path)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()

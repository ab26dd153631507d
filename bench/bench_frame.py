"""Benchmark contacts_frame() on the 1,000,000-contact demo (1.9 M points), SQLite and PostgreSQL.

Run: ``.venv/bin/python bench/bench_frame.py --sqlite FILE [--pg URL] [--rounds 3] [--old]``.

Building the demo takes minutes, so the databases are given, built once with
``generate_demo(1_000_000, today=date(2026, 12, 1))`` (SQLite file, PostgreSQL schema in
the URL's search_path). Each measurement runs in a fresh interpreter so its peak RSS
(``ru_maxrss``) is its own; the peak is shown above the RSS just before the call, and the
call's CPU seconds beside its wall time (the machine is shared: wall time swings). Rows:
this project's ``contacts_frame``; a raw ``fetchall`` of the frame's old single query
(the floor for anything that builds Python rows); with ``--old``, the row builder
contacts_frame used before issue 18 (kept in tests/test_frame.py). Best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {tests!r})
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts.frame import contacts_frame
mode, url = sys.argv[1], sys.argv[2]
database = dbmod.open_database(url)
import test_frame
def rss_kb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS"))
before = rss_kb()
cpu = time.process_time()
start = time.perf_counter()
if mode == "raw":
    raw = database.engine.raw_connection()
    cur = raw.cursor(); cur.execute(test_frame._OLD_SQL); rows = cur.fetchall(); n = len(rows)
    frame_mb = 0.0
else:
    df = contacts_frame(database) if mode == "new" else test_frame.old_frame(database)
    n = len(df)
seconds = time.perf_counter() - start
cpu = time.process_time() - cpu
if mode != "raw":
    frame_mb = df.memory_usage(deep=True).sum() / 1e6
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {{"s": seconds, "cpu": cpu, "rows": n, "frame_mb": frame_mb}}
out["peak_mb"] = (peak - before) / 1e3
print(json.dumps(out))
"""


def measure(mode: str, url: str) -> dict[str, float]:
    """Run one measurement in a fresh interpreter and return its figures."""
    code = _CHILD.format(tests=str(ROOT / "tests"))
    out = subprocess.run(
        [sys.executable, "-c", code, mode, url], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print seconds and peak memory of each row, best of the rounds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sqlite", default="/tmp/frame-bench/demo1m.db")
    ap.add_argument("--pg", help="URL of a PostgreSQL schema holding the same demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--old", action="store_true", help="also time the old row builder (~30 s)")
    args = ap.parse_args()
    backends = [("sqlite", f"sqlite:///{args.sqlite}")]
    if args.pg:
        backends.append(("postgresql", args.pg))
    modes = ["new", "raw"] + (["old"] if args.old else [])
    ok = True
    print(f"{'backend':11} {'what':30} {'rows':>10} {'best s':>7} {'CPU s':>6} {'peak MB':>8}"
          f" {'frame MB':>9}")  # fmt: skip
    for backend, url in backends:
        for mode in modes:
            runs = [measure(mode, url) for _ in range(args.rounds if mode != "old" else 1)]
            best = min(runs, key=lambda r: r["s"])
            peak = min(r["peak_mb"] for r in runs)
            name = {"new": "contacts_frame()", "raw": "fetchall of the old SQL",
                    "old": "row builder before"}[mode]  # fmt: skip
            cpu = min(r["cpu"] for r in runs)
            print(f"{backend:11} {name:30} {best['rows']:>10,} {best['s']:>7.2f} {cpu:>6.2f}"
                  f" {peak:>8.0f} {best['frame_mb']:>9.0f}")  # fmt: skip
            if mode == "new":
                ok &= best["s"] <= 5.0 and peak <= 2 * best["frame_mb"]
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs;"
        " goal: contacts_frame <= 5 s, peak <= 2x the frame"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

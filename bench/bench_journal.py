"""The send journal's cost: unthrottled send() with and without it, paired round by round.

    python bench/bench_journal.py [--messages 2000] [--rounds 10] [--postgres URL]

Each round runs ``send()`` twice back to back on fresh campaigns of the same size,
once as shipped and once with ``BULKMAIL_JOURNAL=off``, the order alternating by round
so the VM's drift favours neither; the median of the rounds' ratios is checked against
the issue's goal (throughput with the journal within 10 % of without). It also times
the journal's own work per message (two appended lines) in a tight loop. The sink runs
in its own process (``bench_send.RemoteSink``); every run is checked against it.
Exits 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_send import (  # type: ignore[import-not-found]
    VARIANTS,
    Checked,
    RemoteSink,
    _drop_schemas,
    _fresh_schema,
    _journal,
    engine_send,
    prepare_campaign,
)

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.outbox.journal import Journal


def journal_cost_us(n: int = 100_000) -> float:
    """Return the journal's wall time per message (begin + answer), in microseconds."""
    with tempfile.TemporaryDirectory() as tmp:
        j = Journal(Path(tmp), "bench:1:journal")
        start = time.perf_counter()
        for i in range(n):
            j.begin(i)
            j.answer(i, "sent", 250, 1_700_000_000.0, None)
            if i % 200 == 0:
                j.settled()
        elapsed = time.perf_counter() - start
        j.close()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--postgres", default=None, help="also run on this URL")
    args = parser.parse_args()
    n, rounds = args.messages, args.rounds
    failed = False
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        sink = RemoteSink(Path(tmp) / "sink")
        try:
            databases = [("SQLite", dbmod.open_database(f"sqlite:///{tmp}/bench.db"))]
            if args.postgres:
                databases.append(("PostgreSQL", dbmod.open_database(_fresh_schema(args.postgres))))
            for _label, db in databases:
                for k in range(rounds):
                    for conns in (1, args.connections):
                        for variant in VARIANTS:
                            prepare_campaign(db, sink.port, n, f"j{conns}r{k}{variant}")
            for label, db in databases:
                for conns in (1, args.connections):
                    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
                    for k in range(rounds):
                        for variant in VARIANTS if k % 2 == 0 else VARIANTS[::-1]:
                            with (
                                Checked(sink, n, f"send() {label} x{conns}{variant}") as run,
                                _journal(variant),
                            ):
                                engine_send(db, f"j{conns}r{k}{variant}", n, conns)
                            rates[variant].append(run.rate)
                    on, off = rates[""], rates["-nojournal"]
                    ratio = statistics.median(a / b for a, b in zip(on, off, strict=True))
                    ok = ratio >= 0.9
                    failed |= not ok
                    lines.append(
                        f"{label:10} x{conns}  journal {statistics.median(on):7,.0f} msg/s  "
                        f"off {statistics.median(off):7,.0f} msg/s  (medians)  paired ratio "
                        f"{ratio:.1%}  >= 90 % {'PASS' if ok else 'FAIL'}"
                    )
        finally:
            sink.stop()
            _drop_schemas()
    print(f"{n:,} messages a run, {rounds} paired rounds")
    print("\n".join(lines))
    print(f"the journal's own work: {journal_cost_us():.1f} us a message (two appended lines)")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()

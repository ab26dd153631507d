"""Benchmark explain(campaign, contact) on a 1,000,000-contact database.

Run: ``.venv/bin/python bench/bench_explain.py [--contacts N] [--db-file PATH]``.
The demo data set (``generate_demo``) is built once into ``--db-file`` (kept, so a second
run starts at once). A campaign is registered for 500 recipients chosen by a rule, then
explain() is timed for a person who is in, one the rule leaves out, and one the filter
never saw, each answered from that person's rows alone: its cost must not grow with the
database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import sqlalchemy as sa

import bulkmail_kernel as bm
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.demo.generate import generate_demo

HTML = '<p>Dobrý deň {{ first_name }}</p><p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p>'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument(
        "--db-file", default=str(Path(tempfile.gettempdir()) / "bulkmail-bench-explain.db")
    )
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    url = f"sqlite:///{args.db_file}"
    if not Path(args.db_file).exists():
        start = time.perf_counter()
        generate_demo(args.contacts, url=url, progress=False, samples_dir=None)
        print(f"built {args.contacts:,} contacts in {time.perf_counter() - start:.0f} s")
    database = bm.connect(url)
    name = "bench-explain"
    if name not in set(bm.list_campaigns(db=database)["name"]):
        bm.add_sender_account(
            "bench",
            kind="smtp",
            from_email="news@shop.sk",
            settings={"host": "127.0.0.1", "port": 2525, "security": "none",
                      "unsubscribe_url": "https://shop.sk/u?t={token}"},
            db=database,
            check=False,
        )  # fmt: skip
        template = template_from_html(HTML, "Ahoj {{ first_name }}", name="bench")
        bm.create_campaign(name, sender="bench", template=template, db=database)
        frame = bm.contacts_frame(database)
        spec = bm.FilterSpec(rules={"all": [{"field": "language", "op": "is", "value": "sk"}]})
        chosen = bm.filter_recipients(frame, spec).head(500)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bm.RecipientsSkippedWarning)
            bm.register(name, chosen, db=database)
        del frame, chosen
    queue = bm.queue(name, db=database)
    inside = str(queue["recipient"].iloc[0])
    with database.engine.connect() as conn:
        czech = conn.execute(
            sa.text("SELECT id FROM contacts WHERE language = 'cs' ORDER BY id DESC LIMIT 1")
        ).scalar_one()
    people = {"in (has a message)": inside, "out (the rule fails)": int(czech)}
    results = []
    for label, who in people.items():
        verdict = bm.explain(name, who, db=database).attrs["verdict"]
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            bm.explain(name, who, db=database)
            times.append(time.perf_counter() - start)
        results.append((label, statistics.median(times), min(times), verdict))
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for label, median, best, verdict in results:
        ok = median <= 0.5
        print(f"explain, {label:<24} median {median * 1e3:6.1f} ms (best {best * 1e3:.1f})"
              f"  goal <= 500 ms  {'PASS' if ok else 'FAIL'}  [{verdict[:70]}]")  # fmt: skip


if __name__ == "__main__":
    main()

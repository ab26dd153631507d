"""What a frequency cap costs registration: the count of every recipient's messages, and the lock.

    python bench/bench_caps.py [--recipients 10000] [--rounds 3] [--no-pg] [--pg URL]

``--recipients`` contacts each have two earlier marketing messages (one sent yesterday,
one queued; tests/sending_support's ``make_campaign``). Each round registers the same
recipients twice, order alternating: into a campaign with ``frequency_cap="none"``
(takes the caps' lock, counts nothing) and into one with a cap nobody reaches (1000 in 7
days: every recipient's messages are counted, none is skipped), so the pair differs only
by the counting. Best of the rounds, since other work on a shared machine only ever adds
time. Goals: best capped / best uncapped <= 1.10 (rendering dominates registration; the
count must not), and the count alone (``count_messages`` for every recipient, what the
registration runs under the lock) <= 10 % of the best uncapped registration. Exits 1 when
a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import sqlalchemy as sa
from pg_schema import fresh_schema
from sending_support import make_campaign, sink_account

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.db import Message
from bulkmail_kernel.outbox.caps import count_messages

GOAL_RATIO = 1.10
PG_DEFAULT = os.environ.get(
    "BULKMAIL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HTML = (
    "<html><body><p>Dobrý deň {{ first_name }},</p><p>jarná zľava.</p>"
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p></body></html>'
)


def _fill(database: dbmod.Database, n: int) -> None:
    """Store n contacts with two marketing messages each: one sent yesterday, one queued."""
    sink_account(database, 2525)
    sent = make_campaign(database, n, name="history-sent")
    make_campaign(database, n, name="history-queued")
    yesterday = datetime.now(UTC) - timedelta(days=1)
    with database.engine.begin() as conn:
        conn.execute(
            sa.update(Message)
            .where(Message.campaign_id == sent)
            .values(status="sent", sent_at=yesterday, updated_at=yesterday)
        )


def _register(database: dbmod.Database, name: str, people: object, cap: object) -> float:
    tmpl = bm.template_from_html(HTML, "Zľava pre {{ first_name }}", name="zlava")
    bm.create_campaign(name, sender="sink", template=tmpl, frequency_cap=cap, db=database)  # type: ignore[arg-type]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", bm.RecipientsSkippedWarning)  # nobody may be capped
        queued = bm.register(name, people, db=database)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    assert len(queued) == len(people), f"{name}: {len(queued)} of {len(people)} registered"  # type: ignore[arg-type]
    return seconds


def _run(label: str, url: str, n: int, rounds: int) -> list[tuple[str, float, str, bool]]:
    database = dbmod.open_database(url)
    start = time.perf_counter()
    _fill(database, n)
    people = bm.contacts_frame(database)
    print(f"{label}: {n:,} contacts with 2 messages each in {time.perf_counter() - start:.1f} s")
    capped_s, free_s, count_s = [], [], []
    ids = [int(x) for x in people["contact_id"]]
    for r in range(rounds):
        pair = [("free", "none"), ("capped", (1000, 7))]
        if r % 2:
            pair.reverse()
        took = {kind: _register(database, f"{kind}-{r}", people, cap) for kind, cap in pair}
        capped_s.append(took["capped"])
        free_s.append(took["free"])
        start = time.perf_counter()
        with database.engine.connect() as conn:
            counts = count_messages(conn, ids, 7, datetime.now(UTC))
        count_s.append(time.perf_counter() - start)
        assert min(counts.values()) >= 2, "every contact has its history counted"
        print(
            f"  round {r}: uncapped {took['free']:.2f} s, capped {took['capped']:.2f} s, "
            f"count alone {count_s[-1]:.3f} s"
        )
    dbmod.close_all()
    ratio = min(capped_s) / min(free_s)
    share = min(count_s) / min(free_s)
    return [
        (f"{label}: register {n:,}, uncapped (best)", min(free_s), "", True),
        (f"{label}: register {n:,}, capped (best)", min(capped_s), "", True),
        (f"{label}: capped / uncapped", ratio, f"<= {GOAL_RATIO}", ratio <= GOAL_RATIO),
        (f"{label}: count_messages, {n:,} contacts", min(count_s), "", True),
        (f"{label}: count / uncapped register", share, "<= 0.1", share <= 0.10),
    ]


def main() -> int:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--pg", default=PG_DEFAULT, help="PostgreSQL URL (a schema is made and dropped)"
    )
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = ap.parse_args()
    rows: list[tuple[str, float, str, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BULKMAIL_DATA_DIR"] = tmp
        rows += _run("SQLite", f"sqlite:///{tmp}/bench.db", args.recipients, args.rounds)
        if not args.no_pg:
            with fresh_schema(args.pg) as url:
                rows += _run("PostgreSQL", url, args.recipients, args.rounds)
    print(f"\n{'what':<46} {'measured':>10} {'goal':>8}  ok")
    ok = True
    for what, value, goal, good in rows:
        ok &= good
        shown = f"{value:.3f}" if "/" in what else f"{value:.2f} s"
        print(f"{what:<46} {shown:>10} {goal:>8}  {'yes' if good else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The per-domain limits' cost to the claim: unthrottled send() with and without them, paired.

    python bench/bench_domains.py [--messages 2000] [--rounds 6] [--postgres URL]

Three variants run back to back in each round on fresh campaigns of the same size, the
order rotating by round so the VM's drift favours none:

- ``off``: the account's limits all lifted (``set_domain_limits(..., None)``): the claim
  is the one statement it was before the limits;
- ``on``: the default limits, recipients at no limited provider (a firm's own list of
  work addresses): the claim also reads and locks the account's six group buckets;
- ``mixed``: the recipients spread over the six providers and an unlimited domain, each
  limit far above the run's rate: every claim also takes tokens from each group.

The median of the rounds' ratios against ``off`` is checked: the limits may cost at
most 10 % of unthrottled throughput. The sink runs in its own process
(``bench_send.RemoteSink``); every run is checked against it. Exits 1 when missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_send import (  # type: ignore[import-not-found]
    PADDING,
    RemoteSink,
    _drop_schemas,
    _fresh_schema,
    engine_send,
)
from sending_support import make_campaign, sink_account  # type: ignore[import-not-found]

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import set_domain_limits
from bulkmail_kernel.db import Message, MessageBody
from bulkmail_kernel.outbox.domains import GROUPS

VARIANTS = ("off", "on", "mixed")
_DOMAINS = ["gmail.com", "hotmail.com", "yahoo.com", "seznam.cz", "azet.sk", "mail.ru"]
_PREPARED: dict[str, set[str]] = {}
_NEXT = [0]  # the next contact number: each campaign its own recipients, on every database


def _prepare(db: dbmod.Database, n: int, name: str, mixed: bool) -> None:
    """Queue campaign ``name``: ``n`` messages padded to ~4 KB, mixed over the providers."""

    def address(i: int) -> str:
        domain = [*_DOMAINS, "sk.example.net"][i % 7] if mixed else "sk.example.net"
        return f"{name}.{i:05d}@{domain}"

    first = _NEXT[0]
    _NEXT[0] += n
    cid = make_campaign(db, n, name=name, first=first, address=address)
    _PREPARED[name] = {address(i) for i in range(first, first + n)}
    ids = sa.select(Message.id).where(Message.campaign_id == cid).scalar_subquery()
    with db.engine.begin() as conn:
        padded = MessageBody.body.op("||")(sa.literal(PADDING, sa.LargeBinary))
        value = sa.cast(padded, sa.LargeBinary) if db.dialect == "sqlite" else padded
        conn.execute(
            sa.update(MessageBody).where(MessageBody.message_id.in_(ids)).values(body=value)
        )


class Checked:
    """Time one send and check the sink received each of its recipients exactly once."""

    def __init__(self, sink: RemoteSink, name: str) -> None:
        self.sink, self.name = sink, name

    def __enter__(self) -> Checked:
        self.messages0 = self.sink.stats()[0]
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        if exc[0] is not None:
            return
        got = Counter(r for _mid, rs in self.sink.since(self.messages0) for r in rs)
        if set(got) != _PREPARED[self.name] or max(got.values()) != 1:
            raise SystemExit(f"{self.name}: the sink did not get each recipient exactly once")
        self.rate = len(_PREPARED[self.name]) / elapsed


def _limits(db: dbmod.Database, variant: str) -> None:
    value: float | str | None = {"off": None, "on": "default", "mixed": 1e9}[variant]
    set_domain_limits("sink", dict.fromkeys(GROUPS, value), db=db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
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
            for label, db in databases:
                sink_account(db, sink.port)
                for k in range(rounds):
                    for conns in (1, args.connections):
                        for v in VARIANTS:
                            _prepare(db, n, f"{label}{conns}r{k}{v}", v == "mixed")
            for label, db in databases:
                for conns in (1, args.connections):
                    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
                    for k in range(rounds):
                        for v in VARIANTS[k % 3 :] + VARIANTS[: k % 3]:
                            _limits(db, v)
                            with Checked(sink, f"{label}{conns}r{k}{v}") as run:
                                engine_send(db, f"{label}{conns}r{k}{v}", n, conns)
                            rates[v].append(run.rate)
                    for v in ("on", "mixed"):
                        ratio = statistics.median(
                            a / b for a, b in zip(rates[v], rates["off"], strict=True)
                        )
                        ok = ratio >= 0.9
                        failed |= not ok
                        lines.append(
                            f"{label:10} x{conns}  {v:5} {statistics.median(rates[v]):7,.0f} msg/s"
                            f"  off {statistics.median(rates['off']):7,.0f} msg/s  (medians)  "
                            f"paired ratio {ratio:.1%}  >= 90 % {'PASS' if ok else 'FAIL'}"
                        )
        finally:
            sink.stop()
            _drop_schemas()
    print(f"{n:,} messages a run, {rounds} rounds")
    print("\n".join(lines))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()

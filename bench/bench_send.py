"""Sending throughput and throttle accuracy against the local aiosmtpd sink.

    python bench/bench_send.py [--messages 3000] [--throttle-messages 40] [--postgres URL]

Prints one table: the engine's unthrottled ``send()`` (claim, send, record in the
database) next to raw smtplib pushing the same pre-serialised bytes over one reused
connection (the ceiling), then the measured rate of a 3,000/h throttled run.
"""

from __future__ import annotations

import argparse
import math
import smtplib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sending_support import address, body, make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.sending import send
from bulkmail_kernel.sink import start_sink

PADDING = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 60).encode()


def raw_smtplib(port: int, messages: list[tuple[str, bytes]]) -> float:
    start = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as client:
        for rcpt, data in messages:
            client.sendmail("news@shop.sk", [rcpt], data)
    return time.perf_counter() - start


def engine(url: str, port: int, n: int, name: str) -> float:
    db = dbmod.open_database(url)
    sink_account(db, port)
    make_campaign(db, n, name=name)
    mark = "?" if db.dialect == "sqlite" else "%s"
    with db.engine.begin() as conn:  # pad bodies to a realistic ~4 KB
        # SQLite's || yields TEXT: cast back so the body stays bytes.
        conn.exec_driver_sql(
            f"UPDATE message_bodies SET body = CAST(body || {mark} AS BLOB)"
            if db.dialect == "sqlite"
            else f"UPDATE message_bodies SET body = body || {mark}",
            (PADDING,),
        )
    start = time.perf_counter()
    summary = send(name, rate_per_hour=math.inf, progress=False, db=db)
    elapsed = time.perf_counter() - start
    assert summary.sent == n, summary
    return elapsed


def throttled(url: str, port: int, n: int) -> tuple[float, float]:
    db = dbmod.open_database(url)
    make_campaign(db, n, name="throttled", first=10_000_000, burst=1)
    start = time.perf_counter()
    send("throttled", rate_per_hour=3000, burst=1, progress=False, db=db)
    total = time.perf_counter() - start
    return total, (n - 1) / total * 3600


_SCHEMAS: list[tuple[str, str]] = []


def _fresh_schema(url: str) -> str:
    """Return ``url`` pointed at a new schema (dropped at exit) so the bench leaves no tables."""
    import uuid

    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    _SCHEMAS.append((url, schema))
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def _drop_schemas() -> None:
    import sqlalchemy as sa

    dbmod.close_all()
    for url, schema in _SCHEMAS:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--throttle-messages", type=int, default=40)
    parser.add_argument("--postgres", default=None, help="also run the engine on this URL")
    args = parser.parse_args()
    n = args.messages
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sink = start_sink(Path(tmp) / "sink")
        try:
            data = [(address(i), body(i, "raw") + PADDING) for i in range(n)]
            t_raw = raw_smtplib(sink.port, data)
            rows.append(("raw smtplib, 1 reused connection", f"{n / t_raw:,.0f} msg/s", "100 %"))
            t_eng = engine(f"sqlite:///{tmp}/bench.db", sink.port, n, "bench")
            rows.append(
                ("bulkmail send() on SQLite", f"{n / t_eng:,.0f} msg/s", f"{t_raw / t_eng:.0%}")
            )
            if args.postgres:
                t_pg = engine(_fresh_schema(args.postgres), sink.port, n, "bench")
                rows.append(
                    (
                        "bulkmail send() on PostgreSQL",
                        f"{n / t_pg:,.0f} msg/s",
                        f"{t_raw / t_pg:.0%}",
                    )
                )
            k = args.throttle_messages
            _total, rate = throttled(f"sqlite:///{tmp}/bench.db", sink.port, k)
            rows.append(
                (
                    f"throttled 3,000/h, {k} msgs, burst 1",
                    f"{rate:,.0f} /h measured",
                    f"{rate / 3000 - 1:+.2%} error",
                )
            )
            rows.append(("sink connections seen", str(sink.connections), "1 per send()"))
        finally:
            sink.stop()
            _drop_schemas()
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'result':>22}  {'vs':>12}")
    for what, result, vs in rows:
        print(f"{what:<{width}}  {result:>22}  {vs:>12}")


if __name__ == "__main__":
    main()

"""Sending throughput and throttle accuracy against the local aiosmtpd sink.

    python bench/bench_send.py [--messages 3000] [--throttle-messages 40] [--postgres URL]

Prints one table: the engine's unthrottled ``send()`` (claim, send, record in the
database) next to raw smtplib pushing the same pre-serialised bytes over one reused
connection (the ceiling, goal >= 80 %) and the real ``mailmerge`` command-line tool
sending the same recipients with a comparable ~4 KB body (goal >= 5x), then the
measured rate of a 3,000/h throttled run (goal within +-2 %). Exits 1 when a goal
is missed. The mailmerge column needs ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sending_support import address, body, make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.sending import send
from bulkmail_kernel.sink import Sink, start_sink

PADDING_LINE = "Lorem ipsum dolor sit amet, consectetur adipiscing elit."
PADDING = ((PADDING_LINE + "\r\n") * 60).encode()


def raw_smtplib(port: int, messages: list[tuple[str, bytes]]) -> float:
    start = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as client:
        for rcpt, data in messages:
            client.sendmail("news@shop.sk", [rcpt], data)
    return time.perf_counter() - start


def mailmerge_cli() -> Path | None:
    """Return the venv's ``mailmerge`` executable (or one on PATH), None when not installed."""
    beside = Path(sys.executable).parent / "mailmerge"
    if beside.exists():
        return beside
    found = shutil.which("mailmerge")
    return Path(found) if found else None


def run_mailmerge(cli: Path, folder: Path, sink: Sink, n: int) -> float:
    """Send ``n`` messages with the real mailmerge CLI to the sink; check it got exactly ``n``."""
    folder.mkdir()
    template = folder / "mailmerge_template.txt"
    database = folder / "mailmerge_database.csv"
    config = folder / "mailmerge_server.conf"
    # The same recipients, sender and greeting as the raw run, padded to the same ~4 KB.
    template.write_text(
        "TO: {{email}}\nSUBJECT: mailmerge #{{number}}\nFROM: Shop <news@shop.sk>\n\n"
        "Dobrý deň, zákazník {{number}}.\n" + (PADDING_LINE + "\n") * 60,
        encoding="utf-8",
    )
    database.write_text(
        "email,number\n" + "".join(f"{address(i)},{i}\n" for i in range(n)), encoding="utf-8"
    )
    # security Never and no username: plain SMTP on loopback, no password prompt.
    config.write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {sink.port}\nsecurity = Never\n",
        encoding="utf-8",
    )
    before = len(sink.messages)
    output = folder / "mailmerge.out"
    start = time.perf_counter()
    with output.open("wb") as out:
        proc = subprocess.run(
            [
                str(cli),
                "--no-dry-run",
                "--no-limit",
                "--output-format",
                "text",
                "--template",
                str(template),
                "--database",
                str(database),
                "--config",
                str(config),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
            check=False,
        )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = output.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise SystemExit(f"mailmerge exited with {proc.returncode}:\n{tail}")
    got = sink.messages[before:]
    expected = {address(i) for i in range(n)}
    received = [r for m in got for r in m.rcpt_tos]
    if len(got) != n or sorted(received) != sorted(expected):
        raise SystemExit(
            f"mailmerge: the sink received {len(got)} messages for {len(set(received))} "
            f"recipients, expected exactly {n}"
        )
    return elapsed


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


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--throttle-messages", type=int, default=40)
    parser.add_argument("--postgres", default=None, help="also run the engine on this URL")
    args = parser.parse_args()
    n = args.messages
    rows: list[tuple[str, str, str, str]] = []
    failed = False
    cli = mailmerge_cli()
    with tempfile.TemporaryDirectory() as tmp:
        sink = start_sink(Path(tmp) / "sink")
        try:
            data = [(address(i), body(i, "raw") + PADDING) for i in range(n)]
            t_raw = raw_smtplib(sink.port, data)
            rows.append(
                ("raw smtplib, 1 reused connection", f"{n / t_raw:,.0f} msg/s", "100 %", "")
            )
            t_mm: float | None = None
            if cli is not None:
                before = sink.connections
                t_mm = run_mailmerge(cli, Path(tmp) / "mailmerge", sink, n)
                rows.append(
                    (
                        f"mailmerge CLI ({sink.connections - before:,} connections)",
                        f"{n / t_mm:,.0f} msg/s",
                        f"{t_raw / t_mm:.0%}",
                        "",
                    )
                )
            engine_conns = sink.connections
            t_eng = engine(f"sqlite:///{tmp}/bench.db", sink.port, n, "bench")
            engines = [("SQLite", t_eng)]
            if args.postgres:
                engines.append(
                    ("PostgreSQL", engine(_fresh_schema(args.postgres), sink.port, n, "bench"))
                )
            for label, t in engines:
                ok = t_raw / t >= 0.8
                failed |= not ok
                rows.append(
                    (
                        f"bulkmail send() on {label}",
                        f"{n / t:,.0f} msg/s",
                        f"{t_raw / t:.0%}",
                        f">= 80 % {_verdict(ok)}",
                    )
                )
                if t_mm is not None:
                    ok = t_mm / t >= 5
                    failed |= not ok
                    rows.append(
                        (
                            f"  bulkmail ({label}) / mailmerge",
                            f"{t_mm / t:.1f}x",
                            "",
                            f">= 5x {_verdict(ok)}",
                        )
                    )
            engine_conns = sink.connections - engine_conns
            k = args.throttle_messages
            _total, rate = throttled(f"sqlite:///{tmp}/bench.db", sink.port, k)
            ok = abs(rate / 3000 - 1) <= 0.02
            failed |= not ok
            rows.append(
                (
                    f"throttled 3,000/h, {k} msgs, burst 1",
                    f"{rate:,.0f} /h measured",
                    f"{rate / 3000 - 1:+.2%} error",
                    f"+-2 % {_verdict(ok)}",
                )
            )
            rows.append(("engine connections seen", str(engine_conns), "1 per send()", ""))
        finally:
            sink.stop()
            _drop_schemas()
    if cli is None:
        print(
            "mailmerge is not installed: column skipped. Install it with: pip install -e '.[bench]'"
        )
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'result':>22}  {'vs raw':>12}  goal")
    for what, result, vs, goal in rows:
        print(f"{what:<{width}}  {result:>22}  {vs:>12}  {goal}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

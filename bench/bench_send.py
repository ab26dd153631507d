"""Sending throughput and throttle accuracy against the aiosmtpd sink in its own process.

    python bench/bench_send.py [--messages 3000] [--throttle-messages 40] [--postgres URL]
                               [--sink aiosmtpd|smtp-sink]

With ``--sink smtp-sink`` every row goes into Postfix's C ``smtp-sink`` instead (Debian's
``postfix`` package, the daemon left stopped), and ``smtp-source -d`` (C, reused
connections) joins as the physical-limit row; the sink then keeps nothing, so each row
is checked by its own count (``send()``'s summary, smtplib's and mailmerge's errors)
rather than by what arrived. The bench says so and stops when it is not installed.
Every row also shows its client CPU a message (this process's CPU time, every thread,
or the child's for mailmerge and smtp-source, over the messages sent).

The sink (``bulkmail_kernel.servers.sink``, the same one the tests use: every message is
stored as an .eml file and logged) runs in a separate process, so it does not share
the GIL with the sender being measured. One run prints, side by side, on the same
~4 KB pre-serialised messages to the same recipients:

- raw smtplib ``sendmail`` over 1 reused connection, and over 4 (one thread each):
  the ceilings;
- the engine's unthrottled ``send()`` (claim, send, record in SQLite) with
  ``connections=1`` and ``connections=4``: goal >= 80 % of raw over one connection
  (the "vs raw" column also shows each against raw with as many connections); each
  also with the send journal off (``BULKMAIL_JOURNAL=off``), shown only
  (``bench_journal.py`` pairs enough rounds to judge the journal's cost);
- the real ``mailmerge`` command-line tool on the same recipients (one connection per
  message, as it works): goal, the best ``send()`` >= 5x it;
- the measured rate of a 3,000/h throttled run: goal within +-2 %.

The rows run interleaved for ``--rounds`` rounds and each row's best round counts
(the machine's speed drifts; noise only slows a row). Every run is checked against
the sink: exactly the expected messages, each once. Exits 1 when a goal is missed.
The mailmerge row needs ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import resource
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import sqlalchemy as sa
from sending_support import address, body, make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import send
from bulkmail_kernel.db import Message, MessageBody
from bulkmail_kernel.servers.sink import free_port, start_sink

PADDING_LINE = "Lorem ipsum dolor sit amet, consectetur adipiscing elit."
PADDING = ((PADDING_LINE + "\r\n") * 60).encode()


# --------------------------------------------------------------------------- the sink process


def _serve_sink(folder: str, port: int, conn: Connection) -> None:
    """Run the sink in this (child) process and answer the bench's questions about it."""
    sink = start_sink(folder, port)
    conn.send(sink.port)
    while True:
        cmd, arg = conn.recv()
        if cmd == "stats":
            conn.send((len(sink.messages), sink.connections))
        elif cmd == "since":
            conn.send([(m.message_id, m.rcpt_tos) for m in sink.messages[arg:]])
        elif cmd == "stop":
            sink.stop()
            conn.send(None)
            return


class RemoteSink:
    """The sink running in another process, asked over a pipe."""

    def __init__(self, folder: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve_sink, args=(str(folder), free_port(), child), daemon=True
        )
        self._proc.start()
        self.port: int = self._conn.recv()

    def _ask(self, cmd: str, arg: Any = None) -> Any:
        self._conn.send((cmd, arg))
        return self._conn.recv()

    def stats(self) -> tuple[int, int]:
        """Return (messages accepted, connections seen) so far."""
        n, c = self._ask("stats")
        return int(n), int(c)

    def since(self, index: int) -> list[tuple[str, tuple[str, ...]]]:
        """Return (Message-ID, recipients) of the messages accepted after the first ``index``."""
        return list(self._ask("since", index))

    def stop(self) -> None:
        """Stop the sink and its process."""
        if self._proc.is_alive():
            self._ask("stop")
        self._proc.join(10)


SMTP_SINK = Path("/usr/sbin/smtp-sink")
SMTP_SOURCE = Path("/usr/sbin/smtp-source")


class CSink:
    """Postfix's C ``smtp-sink`` (announces PIPELINING, keeps nothing) in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        # As root it must be told whom to run as; -c keeps quiet, 256 is the listen backlog.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self._proc = subprocess.Popen(
            [str(SMTP_SINK), *user, f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", self.port) as c:
                c.noop()
                return
            time.sleep(0.05)
        self.stop()
        raise SystemExit("smtp-sink did not start")

    def stats(self) -> tuple[int, int]:
        """Return (0, 0): the C sink keeps no count the bench can ask for."""
        return 0, 0

    def since(self, index: int) -> list[tuple[str, tuple[str, ...]]]:
        """Return nothing: rows into the C sink are checked by their own count."""
        return []

    def stop(self) -> None:
        """Stop the sink."""
        self._proc.terminate()
        self._proc.wait(10)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Checked:
    """Measure one row and check the sink received exactly ``n`` messages, each once."""

    def __init__(self, sink: RemoteSink | CSink, n: int, label: str) -> None:
        self.sink, self.n, self.label = sink, n, label
        self.connections = 0

    def __enter__(self) -> Checked:
        self.messages0, self.connections0 = self.sink.stats()
        self.cpu0 = time.process_time() + _children_cpu()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
        #: Client CPU a message, in µs: this process (every thread) and any child it ran.
        self.cpu_us = (time.process_time() + _children_cpu() - self.cpu0) / self.n * 1e6
        if exc[0] is not None or isinstance(self.sink, CSink):
            return
        got = self.sink.since(self.messages0)
        self.connections = self.sink.stats()[1] - self.connections0
        rcpts = Counter(r for _mid, rs in got for r in rs)
        ids = Counter(mid for mid, _rs in got)
        expected = {address(i) for i in range(self.n)}
        if len(got) != self.n or set(rcpts) != expected or max(rcpts.values()) != 1:
            raise SystemExit(
                f"{self.label}: the sink received {len(got)} messages for {len(rcpts)} "
                f"recipients, expected exactly {self.n}, one each"
            )
        if "" not in ids and max(ids.values()) != 1:
            raise SystemExit(f"{self.label}: a Message-ID reached the sink twice")

    @property
    def rate(self) -> float:
        """Return messages per second."""
        return self.n / self.elapsed


# --------------------------------------------------------------------------- the contenders


def raw_smtplib(port: int, messages: list[tuple[str, bytes]], connections: int) -> None:
    """Push ``messages`` with smtplib.sendmail over ``connections`` reused connections."""

    def push(part: list[tuple[str, bytes]]) -> None:
        with smtplib.SMTP("127.0.0.1", port) as client:
            for rcpt, data in part:
                client.sendmail("news@shop.sk", [rcpt], data)

    if connections == 1:
        push(messages)
        return
    threads = [
        threading.Thread(target=push, args=(messages[k::connections],)) for k in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def smtp_source(port: int, n: int, connections: int) -> None:
    """Push ``n`` ~4 KB messages with Postfix's C ``smtp-source -d`` over ``connections``."""
    proc = subprocess.run(
        [
            str(SMTP_SOURCE),
            "-d",  # reuse each connection, as the other rows do
            *("-s", str(connections), "-m", str(n), "-l", str(len(PADDING) + 300)),
            *("-f", "news@shop.sk", "-t", address(0)),
            f"127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"smtp-source exited with {proc.returncode}: {proc.stderr[-500:]!r}")


def prepare_campaign(db: dbmod.Database, port: int, n: int, name: str) -> int:
    """Register campaign ``name`` with ``n`` messages padded to the raw run's ~4 KB."""
    if not _has_account(db):
        sink_account(db, port)
    cid = make_campaign(db, n, name=name)
    ids = sa.select(Message.id).where(Message.campaign_id == cid).scalar_subquery()
    with db.engine.begin() as conn:
        # SQLite's || yields TEXT: cast back so the body stays bytes.
        padded = MessageBody.body.op("||")(sa.literal(PADDING, sa.LargeBinary))
        value = sa.cast(padded, sa.LargeBinary) if db.dialect == "sqlite" else padded
        conn.execute(
            sa.update(MessageBody).where(MessageBody.message_id.in_(ids)).values(body=value)
        )
    return cid


def _has_account(db: dbmod.Database) -> bool:
    from bulkmail_kernel.db import SenderAccount

    with db.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(SenderAccount)) > 0


def engine_send(db: dbmod.Database, name: str, n: int, connections: int) -> None:
    """Send the prepared campaign unthrottled over ``connections`` connections."""
    summary = send(name, rate_per_hour=math.inf, progress=False, connections=connections, db=db)
    if summary.sent != n or summary.connections != connections:
        raise SystemExit(f"send(connections={connections}): {summary}")


#: Each send() row runs as shipped ("") and with the send journal off, side by side.
VARIANTS = ("", "-nojournal")


@contextlib.contextmanager
def _journal(variant: str) -> Iterator[None]:
    """Turn the send journal off for the "-nojournal" rows."""
    if variant != "-nojournal":
        yield
        return
    os.environ["BULKMAIL_JOURNAL"] = "off"
    try:
        yield
    finally:
        del os.environ["BULKMAIL_JOURNAL"]


def mailmerge_cli() -> Path | None:
    """Return the venv's ``mailmerge`` executable (or one on PATH), None when not installed."""
    beside = Path(sys.executable).parent / "mailmerge"
    if beside.exists():
        return beside
    found = shutil.which("mailmerge")
    return Path(found) if found else None


def prepare_mailmerge(folder: Path, port: int, n: int) -> list[str]:
    """Write mailmerge's template, CSV and server config; return its command line."""
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
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\n", encoding="utf-8"
    )
    return [
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
    ]


def run_mailmerge(cli: Path, args: list[str], folder: Path) -> None:
    """Run the real mailmerge CLI; stop the bench if it fails."""
    output = folder / "mailmerge.out"
    with output.open("wb") as out:
        proc = subprocess.run(
            [str(cli), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
            check=False,
        )
    if proc.returncode != 0:
        tail = output.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise SystemExit(f"mailmerge exited with {proc.returncode}:\n{tail}")


def throttled(db: dbmod.Database, n: int) -> float:
    """Send ``n`` messages at 3,000/h, burst 1; return the measured rate per hour."""
    make_campaign(db, n, name="throttled", first=10_000_000, burst=1)
    start = time.perf_counter()
    send("throttled", rate_per_hour=3000, burst=1, progress=False, db=db)
    total = time.perf_counter() - start
    return (n - 1) / total * 3600


_SCHEMAS: list[tuple[str, str]] = []


def _fresh_schema(url: str) -> str:
    """Return ``url`` pointed at a new schema (dropped at exit) so the bench leaves no tables."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    _SCHEMAS.append((url, schema))
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def _drop_schemas() -> None:
    dbmod.close_all()
    for url, schema in _SCHEMAS:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _best(rates: list[float]) -> float:
    return max(rates)


def _saw(conns_seen: dict[str, int], key: str) -> str:
    """Return the connections the sink saw for a row ("" when the sink cannot tell)."""
    return f"{conns_seen[key]:,} conn" if key in conns_seen else ""


def _cpu(us: list[float]) -> str:
    """Return the least client CPU a message of a row's rounds, in µs (noise only adds)."""
    return f"{min(us):,.0f}"


def _spread(rates: list[float]) -> str:
    return "/".join(f"{r:,.0f}" for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best counts")
    parser.add_argument("--connections", type=int, default=4, help="the parallel rows' count")
    parser.add_argument("--throttle-messages", type=int, default=40)
    parser.add_argument("--postgres", default=None, help="also run send() on this URL")
    parser.add_argument(
        "--sink", choices=("aiosmtpd", "smtp-sink"), default="aiosmtpd", help="where rows send"
    )
    args = parser.parse_args()
    c_sink = args.sink == "smtp-sink"
    if c_sink and not (SMTP_SINK.exists() and SMTP_SOURCE.exists()):
        raise SystemExit(
            "smtp-sink/smtp-source not installed: apt-get install postfix (choose 'No "
            "configuration', the daemon stays stopped), or run with --sink aiosmtpd"
        )
    n, rounds, wide = args.messages, args.rounds, args.connections
    widths = (1, wide)
    rows: list[tuple[str, str, str, str, str]] = []
    #: Each measured row's client CPU a message (µs, the least round's), by the row's index.
    cpu_col: dict[int, str] = {}
    failed = False
    cli = mailmerge_cli()
    with tempfile.TemporaryDirectory() as tmp:
        sink: RemoteSink | CSink = CSink() if c_sink else RemoteSink(Path(tmp) / "sink")
        try:
            databases = [("SQLite", dbmod.open_database(f"sqlite:///{tmp}/bench.db"))]
            if args.postgres:
                databases.append(("PostgreSQL", dbmod.open_database(_fresh_schema(args.postgres))))
            # Registration is not what is measured: prepare every campaign of every round first.
            for _label, db in databases:
                for k in range(rounds):
                    for conns in widths:
                        for variant in VARIANTS:
                            prepare_campaign(db, sink.port, n, f"bench{conns}r{k}{variant}")
            mm_args = prepare_mailmerge(Path(tmp) / "mailmerge", sink.port, n) if cli else []
            # Warm the sink up (first connection, new folder) so the baseline is not the row
            # that pays for it: this only makes the ratios harder for send().
            raw_smtplib(sink.port, [(address(i), body(i, "warm") + PADDING) for i in range(200)], 1)
            # The machine's speed drifts (a shared VM: the same row can be 2x apart minutes
            # later), so the rows run interleaved, round after round, and each row's best
            # round counts, as timeit takes the fastest: noise only ever slows a row down.
            rates: dict[str, list[float]] = {}
            cpus: dict[str, list[float]] = {}
            conns_seen: dict[str, int] = {}

            def keep(key: str, run: Checked) -> None:
                rates.setdefault(key, []).append(run.rate)
                cpus.setdefault(key, []).append(run.cpu_us)
                if not c_sink:  # the C sink counts no connections
                    conns_seen[key] = run.connections

            for k in range(rounds):
                if c_sink:
                    with Checked(sink, n, "smtp-source") as run:
                        smtp_source(sink.port, n, wide)
                    keep("source", run)
                for conns in widths:
                    key = f"raw{conns}"
                    data = [(address(i), body(i, f"raw{conns}r{k}") + PADDING) for i in range(n)]
                    with Checked(sink, n, f"raw smtplib x{conns}") as run:
                        raw_smtplib(sink.port, data, conns)
                    keep(key, run)
                    for label, db in databases:
                        # The pair runs back to back, its order alternating by round, so
                        # the machine's drift favours neither (see the journal row below).
                        for variant in VARIANTS if k % 2 == 0 else VARIANTS[::-1]:
                            key = f"send{conns}{label}{variant}"
                            with (
                                Checked(sink, n, f"send() {label} x{conns}{variant}") as run,
                                _journal(variant),
                            ):
                                engine_send(db, f"bench{conns}r{k}{variant}", n, conns)
                            keep(key, run)
                if cli is not None:
                    with Checked(sink, n, "mailmerge") as run:
                        run_mailmerge(cli, mm_args, Path(tmp) / "mailmerge")
                    keep("mailmerge", run)
            if c_sink:
                rows.append(
                    (
                        f"Postfix smtp-source -d x{wide} (C, the physical limit)",
                        f"{_best(rates['source']):,.0f} msg/s",
                        "",
                        "",
                        _spread(rates["source"]),
                    )
                )
                cpu_col[len(rows) - 1] = _cpu(cpus["source"])
            for conns in widths:
                raw = _best(rates[f"raw{conns}"])
                plural = "s" * (conns > 1)
                rows.append(
                    (
                        f"raw smtplib, {conns} reused connection{plural}",
                        f"{raw:,.0f} msg/s",
                        "100 %",
                        _saw(conns_seen, f"raw{conns}"),
                        _spread(rates[f"raw{conns}"]),
                    )
                )
                cpu_col[len(rows) - 1] = _cpu(cpus[f"raw{conns}"])
                for label, _db in databases:
                    key = f"send{conns}{label}"
                    best = _best(rates[key])
                    # The goal is against raw over one connection; x4 against x4 is
                    # the stricter comparison, shown alongside.
                    ok = best >= 0.8 * _best(rates["raw1"])
                    goal = f">= 80 % of raw x1 {_verdict(ok)}"
                    if conns == wide:
                        # Issue 18: x4 against raw x4 and <= 300 µs of client CPU a message.
                        wide_ok = best >= 0.8 * raw and min(cpus[key]) <= 300
                        ok &= wide_ok
                        goal += f"; >= 80 % of raw x{wide}, <= 300 us {_verdict(wide_ok)}"
                    failed |= not ok
                    rows.append(
                        (
                            f"bulkmail send(connections={conns}) on {label}",
                            f"{best:,.0f} msg/s",
                            f"{best / raw:.0%}",
                            _saw(conns_seen, key),
                            f"{_spread(rates[key])}  {goal}",
                        )
                    )
                    cpu_col[len(rows) - 1] = _cpu(cpus[key])
                    # The send journal's cost: the same run with journals off, side by side.
                    # Best against best swings +-30 % on a drifting VM: the median of each
                    # round's back-to-back pair is shown.
                    off = _best(rates[f"{key}-nojournal"])
                    pairs = zip(rates[key], rates[f"{key}-nojournal"], strict=True)
                    paired = statistics.median(on / no for on, no in pairs)
                    # Shown, not judged: bench_journal.py pairs enough rounds to judge it.
                    rows.append(
                        (
                            f"  same without the send journal on {label}",
                            f"{off:,.0f} msg/s",
                            f"{paired:.0%} paired",
                            _saw(conns_seen, f"{key}-nojournal"),
                            f"{_spread(rates[f'{key}-nojournal'])}  (bench_journal.py judges)",
                        )
                    )
                    cpu_col[len(rows) - 1] = _cpu(cpus[f"{key}-nojournal"])
            if cli is not None:
                mm = _best(rates["mailmerge"])
                best = max(
                    _best(v) for k, v in rates.items() if k.startswith("send") and "-no" not in k
                )
                ok = best >= 5 * mm
                failed |= not ok
                rows.append(
                    (
                        "mailmerge 2.x CLI (a connection per message)",
                        f"{mm:,.0f} msg/s",
                        "",
                        _saw(conns_seen, "mailmerge"),
                        _spread(rates["mailmerge"]),
                    )
                )
                cpu_col[len(rows) - 1] = _cpu(cpus["mailmerge"])
                verdict = f">= 5x {_verdict(ok)}"
                rows.append(("  best send() / mailmerge", f"{best / mm:.1f}x", "", "", verdict))
                # The ceiling: what raw smtplib itself reaches over the same sink.
                raw_best = max(_best(rates[f"raw{c}"]) for c in widths)
                rows.append(("  best raw smtplib / mailmerge", f"{raw_best / mm:.1f}x", "", "", ""))
            k = args.throttle_messages
            rate = throttled(databases[0][1], k)
            ok = abs(rate / 3000 - 1) <= 0.02
            failed |= not ok
            rows.append(
                (
                    f"throttled 3,000/h, {k} msgs, burst 1",
                    f"{rate:,.0f} /h",
                    f"{rate / 3000 - 1:+.2%} error",
                    "",
                    f"+-2 % {_verdict(ok)}",
                )
            )
        finally:
            sink.stop()
            _drop_schemas()
    if cli is None:
        print("mailmerge is not installed: row skipped. Install it with: pip install -e '.[bench]'")
    print(
        f"{n:,} messages of ~4 KB each, best of {rounds} interleaved rounds "
        "(every round's rate in the last column); "
        + (
            "Postfix's C smtp-sink (keeps nothing: rows checked by their own counts)"
            if c_sink
            else "aiosmtpd sink in its own process"
        )
    )
    width = max(len(r[0]) for r in rows)
    head = f"{'what':<{width}}  {'result':>12}  {'vs raw':>8}  {'sink saw':>11}  {'us CPU':>7}"
    print(f"{head}  rounds / goal")
    for i, (what, result, vs, conns, goal) in enumerate(rows):
        cpu = cpu_col.get(i, "")
        print(f"{what:<{width}}  {result:>12}  {vs:>8}  {conns:>11}  {cpu:>7}  {goal}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

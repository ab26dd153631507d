"""Commands that run servers: start-sink, unsubscribe-server and lab (all until Ctrl-C).

``lab`` assembles the workbench: the demo database, the local sink, the unsubscribe
endpoint, a worker for scheduled campaigns (``bulkmail run-worker`` as a child, its log
in ``data/worker.log``) and JupyterLab; it stops them all when it exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bulkmail_kernel import config
from bulkmail_kernel.cli.common import Commands, add_csv, add_db, print_frame

if TYPE_CHECKING:
    import subprocess


def cmd_start_sink(args: argparse.Namespace) -> int:
    """Run the local SMTP sink that stores every message as an .eml file, until Ctrl-C."""
    from bulkmail_kernel import start_sink

    folder = args.folder or config.data_dir() / "sink"
    sink = start_sink(
        folder, args.port, host=args.host, rcpt_reply=args.rcpt_reply, data_reply=args.data_reply
    )
    print(f"bulkmail sink: listening on {args.host}:{sink.port}, storing into {sink.folder}")
    for what, reply in (("every RCPT", args.rcpt_reply), ("every message", args.data_reply)):
        if reply:
            print(f"bulkmail sink: answering {what} with {reply!r}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
        print(f"bulkmail sink: {len(sink.messages)} messages, {sink.connections} connections")
    return 0


def cmd_unsubscribe_server(args: argparse.Namespace) -> int:
    """Run the one-click unsubscribe endpoint (put it behind the firm's https site)."""
    import uvicorn

    from bulkmail_kernel import create_unsubscribe_app

    # Listen on loopback behind the firm's HTTPS proxy: forwarded headers are trusted only
    # from it, so the logs show the real clients.
    uvicorn.run(
        create_unsubscribe_app(url=args.db),
        host=args.host,
        port=args.port,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        server_header=False,
    )
    return 0


#: JupyterLab settings the workbench starts with. Widgets keep their last state in the
#: notebook when it is saved, so a reopened notebook shows its progress bars and panels
#: as they ended instead of "Error displaying widget: model not found". No question about
#: fetching Jupyter news over the analyst's page (``--LabApp.news_url=None`` stops the
#: fetching, not the question), and no check for a newer JupyterLab.
LAB_SETTINGS = {
    "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True},
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def lab_settings_dir(folder: Path | None = None) -> Path:
    """Return JupyterLab's settings folder for the workbench: the installation's, plus ours.

    The installation's folder (``share/jupyter/lab/settings``) is copied, so whatever it
    sets still holds; ours go in ``overrides.d``, below a user's own ``overrides.json``.
    """
    import json
    import shutil

    folder = folder or config.data_dir() / "lab-settings"
    installed = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings"
    if installed.is_dir():
        shutil.copytree(installed, folder, dirs_exist_ok=True)
    (folder / "overrides.d").mkdir(parents=True, exist_ok=True)
    (folder / "overrides.d" / "bulkmail.json").write_text(
        json.dumps(LAB_SETTINGS, indent=2) + "\n", encoding="utf-8"
    )
    return folder


def cmd_lab(args: argparse.Namespace) -> int:
    """Open JupyterLab on notebooks/ with the demo database, a local sink and a worker.

    The demo database is created if missing; the sink, the unsubscribe endpoint and a
    worker for scheduled campaigns run until JupyterLab exits (Ctrl-C, SIGTERM).
    """
    # lab is no function of the API: it assembles the workbench, so it may look inside.
    import signal
    import subprocess

    import sqlalchemy as sa

    from bulkmail_kernel import generate_demo, open_database, start_sink
    from bulkmail_kernel.db import Contact
    from bulkmail_kernel.servers.web import start_in_background

    if args.db:
        # The worker and JupyterLab's kernels are children: they find the database here.
        os.environ["BULKMAIL_DB_URL"] = args.db
    # ... and the demo sender account, created for the sink on this port.
    os.environ["BULKMAIL_SINK_PORT"] = str(args.sink_port)
    db = open_database(args.db)
    with db.session() as s:
        empty = s.scalar(sa.select(Contact.id).limit(1)) is None
    if empty:
        print(f"{db.url} is empty: generating the demo data set (5,000 contacts) ...")
        generate_demo(5000, db=db)
    db.dispose()
    sink = None
    if not args.no_sink:
        try:
            sink = start_sink(config.data_dir() / "sink", args.sink_port)
            print(f"local SMTP sink on 127.0.0.1:{sink.port}: messages land in {sink.folder}")
        except OSError as exc:
            print(f"sink not started ({exc}); is `bulkmail sink` already running?")
    unsub = None
    if not args.no_unsubscribe_server:
        try:
            unsub = start_in_background("127.0.0.1", args.unsubscribe_port, url=args.db)
            print(f"unsubscribe links answer on http://127.0.0.1:{unsub.port}/u/...")
        except OSError as exc:
            print(f"unsubscribe endpoint not started ({exc}); is it already running?")
    notebooks = config.project_dir() / "notebooks"
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        f"--notebook-dir={notebooks}",
        f"--ServerApp.port={args.port}",
        "--ServerApp.ip=127.0.0.1",
        # An analyst's workbench, not a JupyterLab showcase: no pop-up asking to fetch
        # Jupyter news on every start, no check of pypi.org for a newer JupyterLab.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.app_settings_dir={lab_settings_dir()}",
    ]
    if args.no_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and fresh VMs often run as root
    lab = None
    worker: subprocess.Popen[bytes] | None = None

    def stop_on_sigterm(signum: int, frame: object) -> None:
        # systemctl stop and docker stop send SIGTERM (docker to this process alone, its PID 1):
        # leave the wait as Ctrl-C does, so the finally below stops everything (issue 12).
        raise SystemExit(0)  # JupyterLab too exits 0 when SIGTERM stops it

    previous_term = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        if not args.no_worker:
            worker = _start_worker(args)
        # Flushed first: JupyterLab writes to the same stdout (a log file under a service).
        print("starting JupyterLab:", " ".join(cmd[2:]), flush=True)
        lab = subprocess.Popen(cmd)  # noqa: S603 - our own interpreter, fixed arguments
        return lab.wait()
    finally:
        # A second signal must not cut this short and leave JupyterLab unreaped.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        if lab is not None:
            _stop_child(lab, 10)  # JupyterLab shuts its kernels down on SIGTERM
        if worker is not None:
            # Before the sink: the worker drains (finishes the message on the wire) into it.
            code = _stop_child(worker, WORKER_STOP_S)
            print(f"worker stopped (exit {code}); its log: {_worker_log()}")
        if sink is not None:
            sink.stop()
        if unsub is not None:
            unsub.stop()
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


#: How long the lab waits for its worker to drain after SIGTERM before it kills it.
WORKER_STOP_S = 20.0


def _worker_log() -> Path:
    return config.data_dir() / "worker.log"


def _start_worker(args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    """Start ``bulkmail run-worker`` on the lab's database, unless a live one already runs."""
    import subprocess

    from bulkmail_kernel import live_workers

    running = live_workers(url=args.db)
    running = running[running["runs_worker"]]
    if len(running) and not args.another_worker:
        w = running.iloc[0]
        print(
            f"a worker already runs on this database ({w['worker_id']}, last beat "
            f"{w['age_s']:.0f} s ago): not starting another (--another-worker to do so)"
        )
        return None
    log_path = _worker_log()
    # Same interpreter, same environment (BULKMAIL_DB_URL, BULKMAIL_DATA_DIR, BULKMAIL_TZ):
    # the same database. -v: a log line per state change, into data/worker.log.
    cmd = [sys.executable, "-m", "bulkmail_kernel.cli", "-v", "run-worker"]
    with log_path.open("ab") as log:
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    print(
        f"worker running (pid {worker.pid}) for scheduled campaigns: its log is {log_path}",
        flush=True,
    )
    return worker


def _stop_child(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Stop a child with SIGTERM, wait ``timeout`` s, then kill it; always reap it."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def cmd_live_workers(args: argparse.Namespace) -> int:
    """List the workers alive on the database (heartbeat within BULKMAIL_DEAD_WORKER_S)."""
    from bulkmail_kernel import live_workers

    print_frame(live_workers(stale_after_s=args.stale_after_s, url=args.db), args)
    return 0


def add_commands(commands: Commands) -> None:
    """Add the server commands."""
    p = commands.add(
        "start-sink",
        cmd_start_sink,
        "run a local SMTP server that stores messages as .eml files",
        old=["sink"],
    )
    p.add_argument("folder", nargs="?", type=Path, help="where to store (default: data/sink)")
    p.add_argument("--port", type=int, default=2525, help="port to listen on (default 2525)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument(
        "--rcpt-reply",
        metavar="REPLY",
        help="answer every RCPT with REPLY, e.g. '554 5.7.1 Client host blocked using "
        "zen.spamhaus.org' (rehearse a blocklisting and the circuit breaker)",
    )
    p.add_argument(
        "--data-reply",
        metavar="REPLY",
        help="answer every message's content with REPLY, e.g. '554 5.7.1 rejected as spam'",
    )

    p = commands.add(
        "unsubscribe-server",
        cmd_unsubscribe_server,
        "run the one-click unsubscribe endpoint (create_unsubscribe_app)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address (default loopback, behind a proxy)")
    p.add_argument("--port", type=int, default=8025, help="port (default 8025)")
    add_db(p)

    p = commands.add(
        "lab", cmd_lab, "open JupyterLab with the demo database, a local sink and a worker"
    )
    p.add_argument("--port", type=int, default=8888, help="JupyterLab port (default 8888)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--no-sink", action="store_true", help="do not start the local SMTP sink")
    p.add_argument("--sink-port", type=int, default=2525, help="sink port (default 2525)")
    p.add_argument(
        "--no-unsubscribe-server",
        action="store_true",
        help="do not start the local unsubscribe endpoint",
    )
    p.add_argument(
        "--unsubscribe-port", type=int, default=8025, help="unsubscribe endpoint port (8025)"
    )
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="do not start a worker (scheduled campaigns then wait for `bulkmail run-worker`)",
    )
    p.add_argument(
        "--another-worker",
        action="store_true",
        help="start a worker even if a live one already runs on this database",
    )
    add_db(p)

    p = commands.add("live-workers", cmd_live_workers, "the workers alive on the database")
    p.add_argument(
        "--stale-after-s",
        type=float,
        help="a worker silent this long is dead (default BULKMAIL_DEAD_WORKER_S, 120)",
    )
    add_csv(p)
    add_db(p)

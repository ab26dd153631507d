"""Who is sending right now: the workers with a fresh heartbeat, read from ``workers``.

Read-only: the rows are written by :mod:`.recovery` (register, beat, unregister). Both
``bulkmail run-worker`` and a ``send()`` in progress announce themselves there; only
the first picks up *other* campaigns, so each row says which it is (``runs_worker``):
on this machine from the process's command line, elsewhere assumed to be a worker (a
``send()`` on another machine beats only while it sends its own campaign).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.db import Database, Worker, resolve_database, utcnow
from bulkmail_kernel.display import readable

_COLUMNS = ["worker_id", "hostname", "pid", "runs_worker", "started_at", "heartbeat_at", "age_s"]


def live_workers(
    *,
    stale_after_s: float | None = None,
    now: datetime | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the workers whose heartbeat is fresh, newest beat first (times local).

    Columns: ``worker_id``, ``hostname``, ``pid``, ``runs_worker`` (True for a
    ``bulkmail run-worker`` that picks up any due campaign, False for a ``send()`` of
    one campaign, such as a notebook's), ``started_at``, ``heartbeat_at`` and ``age_s``
    (seconds since the last beat). ``stale_after_s`` defaults to ``BULKMAIL_DEAD_WORKER_S``
    (120 s); on this machine a row whose process is gone is left out at once.
    """
    limit = config.dead_worker_s() if stale_after_s is None else float(stale_after_s)
    now = utcnow() if now is None else now
    database = resolve_database(db, url)
    with database.session() as s:
        rows = s.scalars(sa.select(Worker).order_by(Worker.heartbeat_at.desc())).all()
        found = [
            (w.id, w.hostname, int(w.pid), w.started_at, w.heartbeat_at)
            for w in rows
            if (now - w.heartbeat_at).total_seconds() < limit
        ]
    host = socket.gethostname()
    records = []
    for wid, hostname, pid, started, beat in found:
        if hostname == host:
            command = _command_line(pid)
            if command is None:
                continue  # its process is gone: dead, whatever its last beat said
            runs_worker = pid != os.getpid() and _is_worker_command(command)
        else:
            runs_worker = True
        records.append(
            (wid, hostname, pid, runs_worker, started, beat, (now - beat).total_seconds())
        )
    frame = pd.DataFrame(records, columns=_COLUMNS)
    zone = config.local_timezone()
    for col in ("started_at", "heartbeat_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True).dt.tz_convert(zone)
    frame["pid"] = frame["pid"].astype("int64")
    frame["runs_worker"] = frame["runs_worker"].astype(bool)
    frame["age_s"] = frame["age_s"].astype(float)
    return readable(frame)


def _command_line(pid: int) -> list[str] | None:
    """Return the command line of process ``pid`` on this machine ([] if unreadable), or None."""
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            raw = proc.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return []
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    try:
        os.kill(pid, 0)  # no /proc (macOS): at least whether it lives
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return []


def _is_worker_command(command: list[str]) -> bool:
    """Return whether a command line is ``bulkmail run-worker`` (or ``worker``), any spelling."""
    if not command:
        return True  # unreadable: a worker row we cannot disprove
    # `bulkmail [-v] run-worker ...`, `python -m bulkmail_kernel.cli -v worker ...`, and a
    # script calling run_worker() (`python -c "...run_worker(...)"`).
    return any(word in ("run-worker", "worker") or "run_worker" in word for word in command[1:])

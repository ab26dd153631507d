"""Stop the processes a test starts, however the suite itself was started.

A shell starts background jobs (``pytest … &``, ``nohup``, some CI runners) with SIGINT
ignored and every child inherits that, so a test that stops its child with SIGINT leaves
it running there; a Popen never waited for then fails a later test on its
ResourceWarning (issue 12). Tests stop their children with :func:`stop` in a ``finally``
or a fixture's teardown instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any


def stop(proc: subprocess.Popen[Any], timeout: float = 30, *, group: bool = False) -> int:
    """Stop ``proc`` with SIGTERM and reap it; SIGKILL after ``timeout`` s; return its status.

    With ``group`` (a child started with ``start_new_session=True``) whatever is still
    running in its process group afterwards is killed too, so no grandchild outlives it.
    Its pipes are closed, as ``with Popen(...)`` would.
    """
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if group:
            with contextlib.suppress(ProcessLookupError):  # empty: nothing was left behind
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return int(proc.returncode)


def live_in_group(pgid: int) -> list[int]:
    """Return the pids of the processes of group ``pgid`` that still run (zombies aside)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces: the fields follow the last ")".
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # it ended meanwhile
            continue
        if int(pgrp) == pgid and state not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found

"""The tests' stop helper ends and reaps children that ignore SIGINT, as under nohup or ``&``."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from process_support import live_in_group, stop


def _start(script: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``sh -c script`` in its own session; return it once it has printed a line."""
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


def test_stop_ends_and_reaps_a_child_that_ignores_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored (as "trap '' INT" does here) and
    # their children keep it ignored across exec: SIGINT does not stop them (issue 12).
    proc, _ = _start("trap '' INT; echo ready; exec sleep 600")
    try:
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.5)
    finally:
        status = stop(proc, 10)
    assert status == -signal.SIGTERM
    assert proc.returncode == -signal.SIGTERM  # reaped: no ResourceWarning in a later test
    assert proc.stdout is not None
    assert proc.stdout.closed


def test_stop_kills_a_child_that_ignores_sigterm_and_what_it_left_in_its_group() -> None:
    # Both ignored, and a background grandchild that inherits that: the last resort is SIGKILL.
    proc, grandchild = _start("trap '' INT TERM; sleep 600 & echo $!; wait")
    start = time.monotonic()
    try:
        assert set(live_in_group(proc.pid)) == {proc.pid, int(grandchild)}
    finally:
        status = stop(proc, 0.5, group=True)
    assert status == -signal.SIGKILL
    assert time.monotonic() - start < 10
    deadline = time.monotonic() + 10
    while live_in_group(proc.pid):  # killed; the kernel takes a moment to end it
        assert time.monotonic() < deadline, live_in_group(proc.pid)
        time.sleep(0.05)

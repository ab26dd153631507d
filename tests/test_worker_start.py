"""A worker started before its database is reachable waits for it instead of dying."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from process_support import stop

from bulkmail_kernel.servers.sink import free_port

ROOT = Path(__file__).resolve().parents[1]


def _worker(url: str, retry_s: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BULKMAIL_DB_RETRY_S": str(retry_s)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bulkmail_kernel.cli",
            "run-worker",
            "--exit-when-idle",
            "--db",
            url,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


class _LateProxy:
    """A TCP forwarder to the test PostgreSQL that starts listening only after a delay:
    the database's network comes up after the worker (a boot order a service manager
    does not guarantee)."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.port = free_port()
        self.target = target
        self.closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, args=(delay_s,), daemon=True)
        self._thread.start()

    def _serve(self, delay_s: float) -> None:
        if self.closed.wait(delay_s):
            return
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.2)
        while not self.closed.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
        server.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self._thread.join(5)
        for s in self._sockets:
            s.close()


@pytest.mark.postgres
def test_a_worker_started_before_the_database_waits_for_it(pg_url: str) -> None:
    url = sa.engine.make_url(pg_url)
    proxy = _LateProxy((url.host or "127.0.0.1", url.port or 5432), delay_s=3.0)
    late = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proc = _worker(late, retry_s=60)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        stop(proc)
        proxy.close()
    text = err.decode()
    assert proc.returncode == 0, text
    assert "waiting for it" in text
    assert "the database is up: starting" in text
    assert "Traceback" not in text


def test_a_database_that_never_comes_exits_1_so_a_service_manager_restarts() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    start = time.monotonic()
    proc = _worker(url, retry_s=2)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    text = err.decode()
    assert proc.returncode == 1, text  # not 2: the settings are right, the server is away
    assert "waiting for it" in text
    assert "gave up after 2 s" in text
    assert time.monotonic() - start < 30


def test_sigterm_while_waiting_for_the_database_exits_0_at_once() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    proc = _worker(url, retry_s=300)
    try:
        time.sleep(3)  # well into the wait
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        stop(proc)
    assert proc.returncode == 0, err.decode()


@pytest.mark.postgres
def test_a_wrong_database_name_is_a_settings_error_at_once(pg_url: str) -> None:
    wrong = (
        sa.engine.make_url(pg_url)
        .set(database="no_such_db_13")
        .render_as_string(hide_password=False)
    )
    start = time.monotonic()
    proc = _worker(wrong, retry_s=300)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 2, err.decode()
    assert "waiting" not in err.decode()
    assert time.monotonic() - start < 30

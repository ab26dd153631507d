"""The send journal: what each sender thread handed to its transport, and the answer.

The outbox marks messages handed over in groups (one commit per group keeps the
send loop fast), so after a hard crash (kill -9, OOM, power cut) the database alone
cannot tell which of a group went out. Each sender thread therefore appends one line
to a journal file of its own just before a message goes to the transport (``S``) and
one when the answer comes back (``R``). A recovering worker on the same machine reads
the dead worker's journals: a message never begun goes back to the queue, one the
server accepted is recorded sent, and only the one on the wire stays ``unknown``.

Each line is one ``write()`` to a file opened with ``O_APPEND``: once it returns, the
line is in the kernel's page cache and survives the death of the process, so nothing
is synced and the send loop pays two small system calls per message. What a page
cache does not survive is the machine: a journal is trusted only when it was written
under the same boot (``/proc/sys/kernel/random/boot_id``) and pid namespace, its
process is gone, every line is whole and every thread's file is there. Anything else
(another machine, a reboot, a torn or missing file, a failed write) is untrusted and
recovery falls back to the database: every handed message in doubt is ``unknown``.

Format (text, one record per line)::

    B <boot id> <pid namespace> <worker id> <threads>   header, first line
    S <message id>                                      about to hand it over
    R <message id> <status> <code|-> <unix time> <provider id|->
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from bulkmail_kernel.config import data_dir
from bulkmail_kernel.db import Database

log = logging.getLogger("bulkmail")

#: A journal is cut back to its header once it is this large and nothing in it is open.
_KEEP_BYTES = 64 * 1024

#: Statuses that mean the message certainly did not reach the recipient's server.
_REFUSED = frozenset({"deferred", "failed", "fatal"})


@dataclass(frozen=True)
class Answer:
    """What a dead worker's journal says about one message."""

    #: ``begun`` (handed over, no answer), ``sent``, ``refused`` or ``unknown``.
    outcome: str
    code: int | None = None
    #: When the answer came (unix time), for ``sent``.
    at: float | None = None
    provider_message_id: str | None = None


def journal_dir(database: Database) -> Path | None:
    """Return where this database's workers keep their journals on this machine.

    ``BULKMAIL_JOURNAL_DIR`` if set; beside a SQLite file (``<file>.journal.d``); else
    ``<data>/journal``. Every worker of one database on one machine must see the same
    folder: workers on other machines keep their own. ``BULKMAIL_JOURNAL=off`` turns
    journals off (None): a crash then leaves every handed-over message in doubt.
    """
    if os.environ.get("BULKMAIL_JOURNAL", "").strip().lower() in ("off", "0", "no", "false"):
        return None
    env = os.environ.get("BULKMAIL_JOURNAL_DIR")
    if env:
        return Path(env).expanduser().resolve()
    db_file = database.engine.url.database if database.dialect == "sqlite" else None
    if db_file and db_file != ":memory:":
        return Path(db_file).resolve().with_name(Path(db_file).name + ".journal.d")
    return data_dir() / "journal"


def _machine() -> tuple[str, str]:
    """Return this boot's id and this process's pid namespace ('-' where unknown)."""
    boot = "-"
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip() or "-"
    ns = "-"
    with contextlib.suppress(OSError):
        ns = os.readlink("/proc/self/ns/pid").replace(" ", "_")
    return boot, ns


def _stem(worker_id: str) -> str:
    return quote(worker_id, safe="")


class Journal:
    """One sender thread's journal file; every method is best effort and never raises."""

    def __init__(
        self, directory: Path | None, worker_id: str, thread: int = 0, threads: int = 1
    ) -> None:
        self.path = (directory or Path()) / f"{_stem(worker_id)}.{thread}.journal"
        self._fd: int | None = None
        self._header = b""
        if directory is None:
            return  # journals are off: every method does nothing
        boot, ns = _machine()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            self._fd = os.open(self.path, flags, 0o600)
            self._header = f"B {boot} {ns} {worker_id} {threads}\n".encode()
            self._write(self._header)
        except OSError as exc:
            why = "a crash leaves more in doubt"
            log.warning("send journal %s not written (%s): %s", self.path, exc, why)
            self._fd = None

    def begin(self, message_id: int) -> None:
        """Note that message ``message_id`` is about to go to the transport."""
        self._write(b"S %d\n" % message_id)

    def answer(
        self,
        message_id: int,
        status: str,
        code: int | None,
        at: float,
        provider_message_id: str | None,
    ) -> None:
        """Note the transport's answer for message ``message_id``."""
        pid = quote(provider_message_id, safe="") if provider_message_id else "-"
        line = f"R {message_id} {status} {code if code is not None else '-'} {at:.3f} {pid}\n"
        self._write(line.encode())

    def settled(self) -> None:
        """Say everything journalled is recorded in the database: the file may be cut back."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_size > _KEEP_BYTES:
                os.ftruncate(self._fd, len(self._header))
        except OSError:
            self._broken()

    def close(self, *, keep: bool = False) -> None:
        """Close the journal and delete it: every outcome is in the database.

        ``keep`` leaves the file for recovery (a run that ends on an error may leave
        messages in ``sending``); closing again later does not delete it.
        """
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if not keep:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._fd = None

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError("short write")
        except OSError as exc:
            log.warning("send journal %s: %s; going on without it", self.path, exc)
            self._broken()

    def _broken(self) -> None:
        # A journal with a hole would send a message twice: empty it (no header means
        # untrusted), or failing that remove it (a missing thread file is untrusted too).
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def read_journal(directory: Path, worker_id: str) -> dict[int, Answer] | None:
    """Return what dead worker ``worker_id``'s journals say, or None if they cannot be trusted.

    Trusted only on the machine, boot and pid namespace that wrote them, with the
    process gone, every line whole and one file per thread of the worker present.
    """
    parts = worker_id.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return None
    if pid_alive(int(parts[1])):
        return None  # a hung worker may still send: its journal is not final
    files = sorted(directory.glob(f"{_stem(worker_id)}.*.journal"))
    if not files:
        return None
    boot, ns = _machine()
    if "-" in (boot, ns):
        return None
    answers: dict[int, Answer] = {}
    for path in files:
        try:
            text = path.read_bytes().decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        if not text.endswith("\n"):
            return None  # empty (a failed write emptied it) or torn
        lines = text.splitlines()
        head = lines[0].split(" ")
        if head[:4] != ["B", boot, ns, worker_id] or len(head) != 5 or head[4] != str(len(files)):
            return None
        for line in lines[1:]:
            f = line.split(" ")
            try:
                if f[0] == "S" and len(f) == 2:
                    answers[int(f[1])] = Answer("begun")
                elif f[0] == "R" and len(f) == 6:
                    mid, status = int(f[1]), f[2]
                    code = None if f[3] == "-" else int(f[3])
                    if status == "sent":
                        pmid = None if f[5] == "-" else unquote(f[5])
                        answers[mid] = Answer("sent", code, float(f[4]), pmid)
                    elif status in _REFUSED:
                        answers[mid] = Answer("refused", code)
                    else:
                        answers[mid] = Answer("unknown", code)
                else:
                    return None
            except ValueError:
                return None
    return answers


def remove_journal(directory: Path, worker_id: str) -> None:
    """Delete dead worker ``worker_id``'s journals once recovery has committed."""
    for path in directory.glob(f"{_stem(worker_id)}.*.journal"):
        with contextlib.suppress(OSError):
            path.unlink()


def stale_journals(directory: Path) -> list[str]:
    """Return the worker ids of this machine's journals whose process is gone."""
    host = socket.gethostname()
    ids: set[str] = set()
    for path in directory.glob("*.journal"):
        worker_id = unquote(path.name.rsplit(".", 2)[0])
        parts = worker_id.split(":")
        mine = len(parts) >= 3 and parts[0] == host and parts[1].isdigit()
        if mine and not pid_alive(int(parts[1])):
            ids.add(worker_id)
    return sorted(ids)


def pid_alive(pid: int) -> bool:
    """Return whether process ``pid`` exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

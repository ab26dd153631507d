"""The send journal: what a dead worker's journal settles, and when it is not trusted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from process_support import stop
from sending_support import make_campaign, sink_account

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import queue
from bulkmail_kernel.db import Event
from bulkmail_kernel.outbox.journal import Answer, Journal, journal_dir, read_journal
from bulkmail_kernel.outbox.recovery import new_worker_id
from bulkmail_kernel.outbox.store import OutboxStore

ROOT = Path(__file__).resolve().parents[1]


def _die_after(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a child that then kills itself with SIGKILL; return its worker id."""
    script = (
        textwrap.dedent(
            """
        import os, signal, sys
        from bulkmail_kernel.outbox.journal import Journal
        from bulkmail_kernel.outbox.recovery import new_worker_id
        wid = new_worker_id()
        print(wid, flush=True)
        """
        )
        + textwrap.dedent(code)
        + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    return out.decode().split()[0]


def test_a_dead_workers_journal_is_read_back(tmp_path: Path) -> None:
    wid = _die_after(
        f"""
        from pathlib import Path
        j = Journal(Path({str(tmp_path)!r}), wid)
        j.begin(1); j.answer(1, "sent", 250, 1700000000.5, "abc/1 x")
        j.begin(2); j.answer(2, "deferred", 451, 1700000001.0, None)
        j.begin(3); j.answer(3, "failed", 550, 1700000002.0, None)
        j.begin(4); j.answer(4, "unknown", None, 1700000003.0, None)
        j.begin(5)
        j.begin(6); j.answer(6, "deferred", 421, 1700000004.0, None)
        j.begin(6); j.answer(6, "sent", 250, 1700000005.0, None)
        """
    )
    answers = read_journal(tmp_path, wid)
    assert answers == {
        1: Answer("sent", 250, 1700000000.5, "abc/1 x"),
        2: Answer("refused", 451),
        3: Answer("refused", 550),
        4: Answer("unknown", None),
        5: Answer("begun"),
        6: Answer("sent", 250, 1700000005.0, None),  # the latest try is what counts
    }


def test_a_live_process_or_another_machine_is_not_trusted(tmp_path: Path) -> None:
    mine = new_worker_id()  # this process: alive, so its journal may still grow
    j = Journal(tmp_path, mine)
    j.begin(1)
    assert read_journal(tmp_path, mine) is None
    j.close()
    assert not list(tmp_path.glob("*.journal"))  # a clean close leaves nothing
    wid = _die_after(f"Journal(__import__('pathlib').Path({str(tmp_path)!r}), wid).begin(7)")
    other = "elsewhere" + wid[wid.index(":") :]
    for path in tmp_path.glob("*.journal"):
        path.rename(path.with_name(path.name.replace(wid.split(":")[0], "elsewhere")))
    assert read_journal(tmp_path, other) is None


@pytest.mark.parametrize("damage", ["torn", "missing_thread", "other_boot", "emptied"])
def test_a_damaged_journal_is_not_trusted(tmp_path: Path, damage: str) -> None:
    wid = _die_after(
        f"""
        from pathlib import Path
        for k in range(2):
            j = Journal(Path({str(tmp_path)!r}), wid, k, 2)
            j.begin(10 + k); j.answer(10 + k, "sent", 250, 1.0, None)
        """
    )
    assert read_journal(tmp_path, wid) is not None
    files = sorted(tmp_path.glob("*.journal"))
    assert len(files) == 2
    if damage == "torn":
        with files[1].open("ab") as f:
            f.write(b"R 11 se")  # a write cut short
    elif damage == "missing_thread":
        files[1].unlink()  # its S lines would be missing: handed messages look never begun
    elif damage == "other_boot":
        lines = files[0].read_text().splitlines(keepends=True)
        head = lines[0].split(" ")
        head[1] = "00000000-0000-0000-0000-000000000000"
        files[0].write_text(" ".join(head) + "".join(lines[1:]))
    else:
        files[0].write_bytes(b"")  # what a failed write leaves
    assert read_journal(tmp_path, wid) is None


def test_a_failed_write_makes_the_journal_untrusted_not_wrong(tmp_path: Path) -> None:
    wid = _die_after(
        f"""
        from pathlib import Path
        j = Journal(Path({str(tmp_path)!r}), wid)
        j.begin(1); j.answer(1, "sent", 250, 1.0, None)
        os.close(j._fd)  # the disk goes away under it
        j.begin(2)       # this line cannot be written: the journal must not claim 2 never began
        """
    )
    assert read_journal(tmp_path, wid) is None


def test_a_long_journal_is_cut_back_once_settled(tmp_path: Path) -> None:
    j = Journal(tmp_path, new_worker_id())
    for i in range(3000):
        j.begin(i)
        j.answer(i, "sent", 250, 1.0, None)
    assert j.path.stat().st_size > 64 * 1024
    j.settled()
    assert j.path.read_text().count("\n") == 1  # the header only
    j.begin(5)
    assert j.path.read_text().splitlines()[1] == "S 5"
    j.close()


def test_journal_folder_follows_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = dbmod.open_database(f"sqlite:///{tmp_path / 'x.db'}")
    assert journal_dir(database) == tmp_path / "x.db.journal.d"
    monkeypatch.setenv("BULKMAIL_JOURNAL_DIR", str(tmp_path / "j"))
    assert journal_dir(database) == tmp_path / "j"
    monkeypatch.setenv("BULKMAIL_JOURNAL", "off")
    assert journal_dir(database) is None
    j = Journal(None, new_worker_id())
    j.begin(1)
    j.close()
    assert not list(tmp_path.rglob("*.journal"))


_CRASH = """
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.outbox.journal import journal_dir
from bulkmail_kernel.outbox.store import OutboxStore
from bulkmail_kernel.transports import SendResult
database = dbmod.open_database({url!r})
store = OutboxStore(database, wid)
store.register_worker()
j = Journal(journal_dir(database), wid)
batch = store.claim({cid}, 10, hand=10)      # all ten marked handed over
for m in batch[:3]:
    j.begin(m.id); j.answer(m.id, "sent", 250, 1700000000.0, None)
j.begin(batch[3].id); j.answer(batch[3].id, "deferred", 451, 1700000001.0, None)
j.begin(batch[4].id)                         # on the wire when the process dies
"""


@pytest.mark.parametrize("journal", ["trusted", "elsewhere"])
def test_recovery_settles_a_dead_workers_claims_from_its_journal(
    database: dbmod.Database, db_url: str, tmp_path: Path, journal: str
) -> None:
    sink_account(database, 2525)  # nothing is sent: the crash is staged
    cid = make_campaign(database, 10)
    env = {"BULKMAIL_JOURNAL_DIR": str(tmp_path / "other")} if journal == "elsewhere" else {}
    wid = _die_after(_CRASH.format(url=db_url, cid=cid), env)
    OutboxStore(database, new_worker_id()).recover()
    frame = queue(cid, db=database).sort_values("message_id")
    status = frame["status"].astype(str).tolist()
    if journal == "elsewhere":
        # No journal where this worker looks: the database alone knows all ten were handed.
        assert status == ["unknown"] * 10
        return
    # Three accepted (recorded sent, with the time the server took them), one refused and
    # five never begun (back in the queue), only the one on the wire in doubt.
    assert status == ["sent"] * 3 + ["queued"] + ["unknown"] + ["queued"] * 5
    sent_at = frame["sent_at"].dropna()
    assert len(sent_at) == 3
    assert all(t.timestamp() == 1700000000.0 for t in sent_at)
    with database.session() as s:
        kinds = dict(
            s.execute(
                sa.select(Event.kind, sa.func.count())
                .where(Event.campaign_id == cid)
                .group_by(Event.kind)
            ).all()
        )
        recovered = s.scalars(
            sa.select(Event.data).where(Event.kind == "sent", Event.campaign_id == cid)
        ).all()
    assert (kinds["requeued"], kinds["unknown"], kinds["sent"]) == (6, 1, 3)
    assert all(d["recovered"] and d["worker"] == wid for d in recovered)
    assert not list(journal_dir(database).glob("*.journal"))  # consumed once committed

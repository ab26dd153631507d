"""Registration of one campaign by two processes or threads at once: both end well, once each."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from process_support import stop

import bulkmail_kernel as cm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.db import Message
from bulkmail_kernel.outbox.queue import store_messages

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = 120
ALLOWED = PEOPLE - PEOPLE // 10
HTML = (
    "<html><body><p>Dobrý deň {{ first_name }},</p><p>pozývame vás.</p>"
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p></body></html>'
)


def _setup(database: dbmod.Database, campaigns: list[str]) -> pd.DataFrame:
    """Import PEOPLE contacts, save segment 'all' of them, create each campaign on it."""
    frame = pd.DataFrame(
        {
            "first_name": [f"Meno{i}" for i in range(PEOPLE)],
            "email": [f"p{i:04d}@a.sk" for i in range(PEOPLE)],
            # Every tenth person has not opted in: skipped, and listed once by skipped().
            "mailing_allowed": ["no" if i % 10 == 0 else "yes" for i in range(PEOPLE)],
        }
    )
    import_contacts(frame, db=database, progress=False)
    people = contacts_frame(database)
    cm.save_segment(
        "all", cm.FilterSpec(channel="email", mailing_allowed=None), people, db=database
    )
    cm.add_sender_account(
        "shop",
        kind="smtp",
        from_email="news@shop.sk",
        from_name="Obchod",
        settings={"host": "127.0.0.1", "port": 2525, "security": "none",
                  "unsubscribe_url": "https://shop.sk/u?t={token}"},
        db=database,
        check=False,
    )  # fmt: skip
    template = template_from_html(HTML, "Pozvánka pre {{ first_name }}", name="pozvanka")
    for name in campaigns:
        cm.create_campaign(name, sender="shop", template=template, segment="all", db=database)
    return people


def _messages_per_recipient(database: dbmod.Database, campaign: str) -> dict[str, int]:
    cid = cm.get_campaign(campaign, db=database).id
    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.select(Message.recipient, sa.func.count())
            .where(Message.campaign_id == cid)
            .group_by(Message.recipient)
        ).all()
    return {r: n for r, n in rows}


def _assert_skipped_once(database: dbmod.Database, campaign: str) -> None:
    gone = cm.skipped(campaign, db=database)
    assert sorted(gone["address"]) == [f"p{i:04d}@a.sk" for i in range(0, PEOPLE, 10)]
    assert set(gone["reason"]) == {"mailing not allowed"}


def _register_cli(url: str, campaign: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bulkmail_kernel.cli", "register", campaign, "--db", url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_register_commands_at_once_both_end_well(database: dbmod.Database, db_url: str) -> None:
    rounds = [f"jar{i}" for i in range(3)]
    _setup(database, rounds)
    for campaign in rounds:
        procs = [_register_cli(db_url, campaign), _register_cli(db_url, campaign)]
        outcomes = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=120)
            finally:
                stop(proc)
            outcomes.append((proc.returncode, out, err))
        for code, out, err in outcomes:
            # Before: the second died with exit 1 and a 4.9 KB IntegrityError traceback.
            assert code == 0, err
            assert "Traceback" not in err, err
            assert "Error" not in err, err
            assert f"{ALLOWED} messages in the queue of '{campaign}'" in out, out
            # Whatever it says on stderr is one line per registration that lost the race.
            assert all("registered meanwhile by another registration" in line
                       for line in err.splitlines()), err  # fmt: skip
        per_recipient = _messages_per_recipient(database, campaign)
        assert len(per_recipient) == ALLOWED
        assert set(per_recipient.values()) == {1}
        _assert_skipped_once(database, campaign)


def _register_in_threads(
    database: dbmod.Database, campaign: str, people: pd.DataFrame
) -> tuple[list[pd.DataFrame], list[BaseException]]:
    """Run register() from two threads released together; return their queues and errors."""
    start = threading.Barrier(2)
    results: list[pd.DataFrame] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(cm.register(campaign, people, db=database))
        except BaseException as exc:  # the test reports it, with its type
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


@pytest.mark.slow
def test_register_from_two_threads_stores_each_recipient_once(database: dbmod.Database) -> None:
    rounds = [f"jar{i}" for i in range(3)]
    people = _setup(database, rounds)
    for campaign in rounds:
        results, errors = _register_in_threads(database, campaign, people)
        assert errors == []
        assert [len(q) for q in results] == [ALLOWED, ALLOWED]
        assert set(_messages_per_recipient(database, campaign).values()) == {1}
        _assert_skipped_once(database, campaign)


@pytest.mark.postgres
def test_a_registration_that_waited_for_another_stores_nothing_twice(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Hold the campaign row so both registrations render, wait, then go one after the other."""
    database = dbmod.open_database(pg_url)
    people = _setup(database, ["jar"])
    cid = cm.get_campaign("jar", db=database).id
    results: list[pd.DataFrame] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(cm.register("jar", people, db=database))
        except BaseException as exc:  # the test reports it below, with its type
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    caplog.set_level(logging.WARNING, logger="bulkmail")
    with database.engine.connect() as holder:
        holder.execute(sa.text("SELECT id FROM campaigns WHERE id = :c FOR UPDATE"), {"c": cid})
        # The sessions waiting, directly or in line, behind the one holding the row.
        waiting = sa.text(
            "WITH RECURSIVE behind(pid) AS (SELECT CAST(:holder AS integer) UNION "
            "SELECT a.pid FROM pg_stat_activity a JOIN behind b "
            "ON b.pid = ANY(pg_blocking_pids(a.pid))) SELECT count(*) - 1 FROM behind"
        ).bindparams(holder=holder.execute(sa.text("SELECT pg_backend_pid()")).scalar())
        for t in threads:
            t.start()
        # Both have rendered and wait for the row. Waiting for a state of the server, not
        # for time to pass: give up after 60 s.
        with database.engine.connect() as watch:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(t.is_alive() for t in threads):
                if watch.execute(waiting).scalar() == 2:
                    break
                watch.rollback()  # pg_stat_activity is read once per transaction
                threading.Event().wait(0.05)
            assert watch.execute(waiting).scalar() == 2, errors
        holder.rollback()
    for t in threads:
        t.join(120)
    assert errors == []
    assert [len(q) for q in results] == [ALLOWED, ALLOWED]
    assert set(_messages_per_recipient(database, "jar").values()) == {1}
    _assert_skipped_once(database, "jar")
    lines = [r.getMessage() for r in caplog.records if "meanwhile" in r.getMessage()]
    assert lines == [
        f"campaign jar: {ALLOWED} of {ALLOWED} recipients were registered meanwhile by another "
        "registration of this campaign; each has one message"
    ]


def test_storing_recipients_another_registration_stored_writes_nothing(
    database: dbmod.Database,
) -> None:
    """What the registration that lost the race does: its rows are left out, no error."""
    people = _setup(database, ["jar"])
    cm.register("jar", people.iloc[1:6], db=database)  # p0001-p0005, all opted in
    cid = cm.get_campaign("jar", db=database).id
    with database.engine.connect() as conn:
        points = conn.execute(
            sa.select(
                dbmod.ContactPoint.id, dbmod.ContactPoint.contact_id, dbmod.ContactPoint.normalized
            ).order_by(dbmod.ContactPoint.id)
        ).all()[:7]
        events_before = conn.scalar(sa.select(sa.func.count()).select_from(dbmod.Event))
    messages = [
        {"point": p, "token": None, "message_id": f"<m{p.id}@shop.sk>", "subject": "s",
         "body": b"x"}
        for p in points
    ]  # fmt: skip
    # Five of the seven are already the campaign's: only the last two are stored.
    assert store_messages(database, cid, "email", messages, [], dbmod.utcnow()) == 2
    assert store_messages(database, cid, "email", messages, [], dbmod.utcnow()) == 0
    assert set(_messages_per_recipient(database, "jar").values()) == {1}
    with database.engine.connect() as conn:
        events_after = conn.scalar(sa.select(sa.func.count()).select_from(dbmod.Event))
        bodies = conn.scalar(sa.select(sa.func.count()).select_from(dbmod.MessageBody))
    assert events_after - events_before == 2
    assert bodies == 7


def test_registering_again_lists_each_skipped_recipient_once(database: dbmod.Database) -> None:
    people = _setup(database, ["jar"])
    for _ in range(3):
        assert len(cm.register("jar", people, db=database)) == ALLOWED
    _assert_skipped_once(database, "jar")

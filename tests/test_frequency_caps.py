"""Frequency caps across e-mail, SMS and SendPulse, on SQLite and PostgreSQL.

Real parts: the SMTP sink, the EuroSMS and SendPulse fakes over HTTP, the real
databases; only the clock of the senders is moved by hand.
"""

from __future__ import annotations

import math
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from fakes.eurosms_fake import EuroSmsFake, running_eurosms
from fakes.sendpulse_fake import SendPulseFake, running_sendpulse
from sending_support import make_campaign, sink_account

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns.caps import cap_standing
from bulkmail_kernel.cli import main
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.config import local_zone
from bulkmail_kernel.db import Message
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.caps import _LOCK_KEY, lock_caps
from bulkmail_kernel.outbox.queue import store_messages
from bulkmail_kernel.servers.sink import Sink

HTML = (
    "<html><body><p>Dobrý deň {{ first_name }},</p><p>jarná zľava.</p>"
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p></body></html>'
)
SMS_VALUES = {"company_name": "Labka", "due_date": "2025-08-15", "clinic_phone": "+421559876543"}
PEOPLE = pd.DataFrame(
    {
        "first_name": ["Anna", "Boris", "Cyril", "Dana"],
        "email": ["anna@x.sk", "boris@x.sk", "cyril@x.sk", "dana@x.sk"],
        "phone": ["+421905111111", "+421905222222", "", ""],
        "mailing_allowed": ["yes"] * 4,
        "phone_allowed": ["yes", "yes", "", ""],
    }
)


@pytest.fixture
def eurosms() -> Iterator[EuroSmsFake]:
    with running_eurosms() as fake:
        yield fake


@pytest.fixture
def clock() -> ManualClock:
    """The senders' clock, started now: what they record falls in today's window."""
    return ManualClock(start=datetime.now(UTC))


@pytest.fixture
def sendpulse(clock: ManualClock) -> Iterator[SendPulseFake]:
    with running_sendpulse(SendPulseFake(clock=clock)) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_SECRET", "sp-client-secret")
    monkeypatch.setenv("EUROSMS_KEY", "integration-key")


def _people(database: dbmod.Database) -> pd.DataFrame:
    bm.import_contacts(PEOPLE, db=database, progress=False, region="SK")
    return bm.contacts_frame(database)


def _emails(people: pd.DataFrame, *names: str) -> pd.DataFrame:
    rows = people[(people["channel"] == "email") & people["first_name"].isin(names)]
    return rows.reset_index(drop=True)


def _phones(people: pd.DataFrame, *names: str) -> pd.DataFrame:
    rows = people[(people["channel"] == "phone") & people["first_name"].isin(names)]
    return rows.reset_index(drop=True)


def _register(database: dbmod.Database, campaign: str, frame: pd.DataFrame) -> list[str]:
    """Register ``frame``; return the one-line summaries registration warned with."""
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", bm.RecipientsSkippedWarning)
        bm.register(campaign, frame, db=database)
    return [str(n.message) for n in notes if issubclass(n.category, bm.RecipientsSkippedWarning)]


def _queued(database: dbmod.Database, campaign: str) -> list[str]:
    return sorted(bm.queue(campaign, db=database)["recipient"])


def _email_campaign(database: dbmod.Database, name: str, **kwargs: object) -> None:
    tmpl = bm.template_from_html(HTML, "Zľava pre {{ first_name }}", name="zlava")
    bm.create_campaign(name, sender="sink", template=tmpl, db=database, **kwargs)  # type: ignore[arg-type]


def _accounts(
    database: dbmod.Database, sink: Sink, eurosms: EuroSmsFake, sendpulse: SendPulseFake
) -> None:
    sink_account(database, sink.port)
    bm.add_eurosms_account(
        "sms",
        integration_id="1-AB12CD",
        sender_id="Shop",
        credential_ref="EUROSMS_KEY",
        base_url=eurosms.base_url,
        db=database,
    )
    bm.add_sendpulse_account(
        "sp",
        client_id=sendpulse.client_id,
        from_email="news@shop.sk",
        from_name="Shop",
        secret_env="SP_SECRET",
        base_url=sendpulse.base_url,
        clock=sendpulse.clock,
        db=database,
    )


def test_a_cap_counts_email_sms_and_sendpulse_and_spares_transactional_messages(
    database: dbmod.Database,
    sink: Sink,
    eurosms: EuroSmsFake,
    sendpulse: SendPulseFake,
    clock: ManualClock,
) -> None:
    people = _people(database)
    _accounts(database, sink, eurosms, sendpulse)
    assert bm.frequency_cap(db=database) is None  # none until someone sets one
    assert bm.set_frequency_cap(2, 7, db=database) == bm.FrequencyCap(2, 7)
    assert bm.frequency_cap(db=database) == bm.FrequencyCap(2, 7)

    # 1. A SendPulse hand-over to Anna, Boris and Cyril: sent, as far as bulkmail knows.
    sp_html = "<html><body><p>Dobrý deň, {{ name }}!</p><p>Novinky.</p></body></html>"
    tmpl = bm.template_from_html(sp_html, "Novinky pre {{ name }}", name="novinky")
    bm.create_campaign("sp-news", sender="sp", template=tmpl, db=database)
    assert _register(database, "sp-news", _emails(people, "Anna", "Boris", "Cyril")) == []
    bm.send_campaign_via_sendpulse("sp-news", clock=clock, progress=False, db=database)
    assert set(bm.queue("sp-news", db=database)["status"].astype(str)) == {"sent"}

    # 2. An SMS to Anna's and Boris's phones through EuroSMS: another contact point each.
    sms = bm.load_template("sms_reminder_sk")
    bm.create_campaign("sms-promo", sender="sms", template=sms, values=SMS_VALUES, db=database)
    assert _register(database, "sms-promo", _phones(people, "Anna", "Boris")) == []
    summary = bm.send("sms-promo", rate_per_hour=math.inf, progress=False, clock=clock, db=database)
    assert summary.sent == 2
    assert {s.rcpt for s in eurosms.sent} == {421905111111, 421905222222}

    # 3. An e-mail campaign: Anna and Boris have had 2 in 7 days (one e-mail, one SMS).
    _email_campaign(database, "sale")
    lines = _register(database, "sale", _emails(people, "Anna", "Boris", "Cyril", "Dana"))
    assert lines == [
        "campaign 'sale': 2 of 4 recipients skipped (2 over the frequency cap of 2 in 7 days "
        "(counting 'sms-promo', 'sp-news')); 2 registered; bm.skipped('sale') lists them"
    ]
    assert _queued(database, "sale") == ["cyril@x.sk", "dana@x.sk"]
    gone = bm.skipped("sale", db=database).set_index("address")
    assert sorted(gone.index) == ["anna@x.sk", "boris@x.sk"]
    anna = gone.loc["anna@x.sk", "reason"]
    assert anna.startswith("frequency cap 2 in 7 days: 2 marketing messages already count (")
    assert "'sp-news' sent " in anna
    assert "'sms-promo' sent " in anna
    # With the day it was sent, in the analyst's zone.
    assert f"'sp-news' sent {datetime.now(local_zone()):%Y-%m-%d} " in anna

    # 4. What is queued counts too: Cyril has sp-news (sent) and sale (queued).
    _email_campaign(database, "flash")
    lines = _register(database, "flash", _emails(people, "Cyril", "Dana"))
    assert _queued(database, "flash") == ["dana@x.sk"]
    cyril = bm.skipped("flash", db=database).set_index("address").loc["cyril@x.sk", "reason"]
    assert "'sp-news' sent " in cyril
    assert "'sale' queued since " in cyril
    assert lines == [
        "campaign 'flash': 1 of 2 recipients skipped (1 over the frequency cap of 2 in 7 days "
        "(counting 'sale', 'sp-news')); 1 registered; bm.skipped('flash') lists them"
    ]

    # 5. A transactional campaign (an appointment reminder) is never capped...
    _email_campaign(database, "reminder", transactional=True)
    assert bm.frequency_cap("reminder", db=database) is None
    assert bm.get_campaign("reminder", db=database).transactional
    everyone = _emails(people, "Anna", "Boris", "Cyril", "Dana")
    assert _register(database, "reminder", everyone) == []
    assert len(_queued(database, "reminder")) == 4
    # ...and does not count: Dana has sale + flash queued and the reminder; a cap of 3
    # lets her through only because the reminder is not counted.
    _email_campaign(database, "last-call", frequency_cap="3/7")
    assert bm.frequency_cap("last-call", db=database) == bm.FrequencyCap(3, 7)
    _register(database, "last-call", _emails(people, "Dana"))
    assert _queued(database, "last-call") == ["dana@x.sk"]

    # 6. A campaign with no cap of its own reaches the capped, and still counts for others.
    _email_campaign(database, "vip", frequency_cap="none")
    assert bm.frequency_cap("vip", db=database) is None
    assert _register(database, "vip", _emails(people, "Anna")) == []
    assert _queued(database, "vip") == ["anna@x.sk"]

    # The sale goes out into the sink: only the two within the cap get it.
    sent = bm.send("sale", rate_per_hour=math.inf, progress=False, clock=clock, db=database)
    assert sent.sent == 2
    assert sorted(a for m in sink.messages for a in m.rcpt_tos) == ["cyril@x.sk", "dana@x.sk"]
    # Sent now rather than queued, it still counts: Dana is at 3 for last-call's rule.
    _email_campaign(database, "last-call-2", frequency_cap=(3, 7))
    _register(database, "last-call-2", _emails(people, "Dana"))
    assert _queued(database, "last-call-2") == []

    # Where one person stands, as an explanation of "why is she out" reads it.
    anna_id = int(_emails(people, "Anna")["contact_id"].iloc[0])
    standing = cap_standing("sale", anna_id, db=database)
    assert standing.capped
    assert standing.rule == bm.FrequencyCap(2, 7)
    assert [(m.campaign, m.status) for m in standing.counted] == [
        ("sp-news", "sent"),
        ("sms-promo", "sent"),
        ("vip", "queued"),
    ]  # the reminder is transactional: not among them
    reminder = cap_standing("reminder", anna_id, db=database)
    assert (reminder.capped, reminder.transactional, reminder.counted) == (False, True, ())

    # explain() says the same: the skip with its reason, and the cap with what counts.
    why = bm.explain("sale", anna_id, db=database)
    assert why.attrs["verdict"].startswith(
        "out: anna@x.sk was left out: frequency cap 2 in 7 days: 2 marketing messages"
    )
    cap = why[why["section"] == "frequency cap"].iloc[0]
    assert (cap["check"], cap["result"]) == ("at most 2 in 7 days", "over")
    assert "'sp-news' sent" in cap["detail"]
    assert "'sms-promo' sent" in cap["detail"]
    exempt = bm.explain("reminder", anna_id, db=database)
    assert exempt[exempt["section"] == "frequency cap"]["result"].tolist() == ["exempt"]


def test_messages_sent_before_the_window_do_not_count(database: dbmod.Database, sink: Sink) -> None:
    people = _people(database)
    sink_account(database, sink.port)
    bm.set_frequency_cap(1, 7, db=database)
    _email_campaign(database, "old")
    bm.register("old", _emails(people, "Anna"), db=database)
    eight_days_ago = ManualClock(start=datetime.now(UTC) - timedelta(days=8))
    bm.send("old", rate_per_hour=math.inf, progress=False, clock=eight_days_ago, db=database)
    assert len(sink.received_by("anna@x.sk")) == 1
    # Sent 8 days ago: outside a 7-day window, inside a 10-day one.
    _email_campaign(database, "week")
    assert _register(database, "week", _emails(people, "Anna")) == []
    bm.cancel("week", db=database)  # cancelled: its removed message no longer counts
    _email_campaign(database, "ten-days", frequency_cap=(1, 10))
    lines = _register(database, "ten-days", _emails(people, "Anna"))
    assert _queued(database, "ten-days") == []
    assert "over the frequency cap of 1 in 10 days (counting 'old')" in lines[0]


def test_a_second_address_of_the_same_person_in_one_frame_counts(
    database: dbmod.Database, sink: Sink
) -> None:
    """The cap is per contact, across its points: two addresses, one person, one allowance."""
    frame = pd.DataFrame(
        {"first_name": ["Eva"], "email": ["eva@x.sk"], "work_email": ["eva@firma.sk"]}
    )
    frame["mailing_allowed"] = "yes"
    frame["work_email_allowed"] = "yes"
    bm.import_contacts(frame, db=database, progress=False)
    people = bm.contacts_frame(database)
    assert len(people[people["channel"] == "email"]) == 2
    sink_account(database, sink.port)
    bm.set_frequency_cap(1, 7, db=database)
    _email_campaign(database, "one")
    lines = _register(database, "one", people[people["channel"] == "email"])
    assert len(_queued(database, "one")) == 1
    assert "1 over the frequency cap of 1 in 7 days (counting 'one')" in lines[0]


def test_bad_caps_are_refused_naming_what_to_do(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    with pytest.raises(ConfigError, match=r"max_messages=0: give a whole number, 1 or more"):
        bm.set_frequency_cap(0, 7, db=database)
    with pytest.raises(ConfigError, match=r"give the days too"):
        bm.set_frequency_cap(2, db=database)
    with pytest.raises(ConfigError, match=r"campaign 'x': frequency cap '2 per week': write"):
        _email_campaign(database, "x", frequency_cap="2 per week")
    with pytest.raises(ConfigError, match=r"campaign 'x': a transactional campaign is never"):
        _email_campaign(database, "x", frequency_cap=(2, 7), transactional=True)
    assert bm.set_frequency_cap(3, 14, db=database) == bm.FrequencyCap(3, 14)
    assert bm.set_frequency_cap(None, db=database) is None
    assert bm.frequency_cap(db=database) is None


def _total_per_contact(database: dbmod.Database) -> dict[int, int]:
    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.select(Message.contact_id, sa.func.count()).group_by(Message.contact_id)
        ).all()
    return {int(c): int(n) for c, n in rows}


# --------------------------------------------------------------------------- two at once

CROWD = 40


def _crowd(database: dbmod.Database) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "first_name": [f"Meno{i}" for i in range(CROWD)],
            "email": [f"p{i:03d}@a.sk" for i in range(CROWD)],
            "mailing_allowed": ["yes"] * CROWD,
        }
    )
    bm.import_contacts(frame, db=database, progress=False)
    return bm.contacts_frame(database)


def _inside(thread: threading.Thread, func: Callable[..., object]) -> bool:
    """Say whether ``thread`` is inside ``func`` now (its stack, read, not patched)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code is func.__code__:
            return True
        frame = frame.f_back
    return False


def _in_lock_caps(thread: threading.Thread) -> bool:
    """Say whether ``thread`` is waiting inside ``lock_caps``."""
    return _inside(thread, lock_caps)


@contextmanager
def _caps_held(database: dbmod.Database) -> Iterator[None]:
    """Hold what lock_caps waits for: PostgreSQL's advisory lock, SQLite's one write lock."""
    if database.dialect == "postgresql":
        with database.engine.connect() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
            yield
            conn.rollback()
        return
    raw = sqlite3.connect(database.engine.url.database or "", isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")
        yield
        raw.execute("ROLLBACK")
    finally:
        raw.close()


def test_two_campaigns_registered_at_once_stay_within_the_cap(
    database: dbmod.Database, sink: Sink
) -> None:
    """Both render, both wait at the caps' lock, then they go one after the other."""
    people = _crowd(database)
    sink_account(database, sink.port)
    bm.set_frequency_cap(1, 7, db=database)
    for name in ("a", "b"):
        _email_campaign(database, name)
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", bm.RecipientsSkippedWarning)
                bm.register(name, people, db=database)
        except BaseException as exc:  # the test reports it below, with its type
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    with _caps_held(database):
        for t in threads:
            t.start()
        # Waiting for a state of the threads, not for time to pass: give up after 60 s.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(_in_lock_caps(t) for t in threads):
            threading.Event().wait(0.02)
        assert all(_in_lock_caps(t) for t in threads), errors
    for t in threads:
        t.join(120)
    assert errors == []
    # Without the lock both would have counted 0 and each person would have 2 messages.
    assert set(_total_per_contact(database).values()) == {1}
    sizes = {name: len(bm.queue(name, db=database)) for name in ("a", "b")}
    assert sorted(sizes.values()) == [0, CROWD]
    loser = min(sizes, key=lambda n: sizes[n])
    winner = max(sizes, key=lambda n: sizes[n])
    reasons = set(bm.skipped(loser, db=database)["reason"].str.split(" \\(").str[0])
    assert reasons == {"frequency cap 1 in 7 days: 1 marketing message already counts"}
    assert all(f"'{winner}' queued since" in r for r in bm.skipped(loser, db=database)["reason"])


def test_the_commands_set_and_show_the_caps(
    sqlite_url: str, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["frequency-cap", "--db", sqlite_url]) == 0
    assert capsys.readouterr().out == "global rule: no frequency cap\n"
    assert main(["set-frequency-cap", "2", "7", "--db", sqlite_url]) == 0
    assert capsys.readouterr().out == (
        "global rule: at most 2 in 7 days per contact (e-mail, SMS and SendPulse together)\n"
    )
    database = dbmod.open_database(sqlite_url)
    assert bm.frequency_cap(db=database) == bm.FrequencyCap(2, 7)
    sink_account(database, sink.port)
    base = ["create-campaign", "--sender", "sink", "--db", sqlite_url]
    assert main([*base, "own", "--frequency-cap", "3/14"]) == 0
    assert main([*base, "reminder", "--transactional"]) == 0
    assert main([*base, "plain"]) == 0
    capsys.readouterr()
    for campaign, said in [
        ("own", "campaign 'own' (its own rule): at most 3 in 14 days per contact"),
        ("plain", "campaign 'plain' (the global rule): at most 2 in 7 days per contact"),
        ("reminder", "campaign 'reminder': transactional, never capped and never counted"),
    ]:
        assert main(["frequency-cap", "--campaign", campaign, "--db", sqlite_url]) == 0
        assert capsys.readouterr().out.startswith(said)
    assert main(["set-frequency-cap", "none", "--db", sqlite_url]) == 0
    assert bm.frequency_cap(db=database) is None
    capsys.readouterr()
    assert main(["set-frequency-cap", "2/7", "--db", sqlite_url]) == 2
    assert "bulkmail set-frequency-cap 2 7" in capsys.readouterr().err


def test_a_long_history_is_named_in_short_and_kept_whole(database: dbmod.Database) -> None:
    sink_account(database, 2525)
    for k in range(7):  # one person with 7 queued messages of 7 campaigns
        make_campaign(database, 1, name=f"h{k}")
    bm.set_frequency_cap(2, 7, db=database)
    _email_campaign(database, "more")
    _register(database, "more", bm.contacts_frame(database))
    (reason,) = bm.skipped("more", db=database)["reason"]
    assert reason.startswith(
        "frequency cap 2 in 7 days: 7 marketing messages already count (2 earlier and 'h2' "
        "queued since "
    )
    assert [part.split("'")[1] for part in reason.split(", ")] == ["h2", "h3", "h4", "h5", "h6"]
    with database.engine.connect() as conn:
        data = conn.execute(
            sa.select(dbmod.Event.data).where(dbmod.Event.kind == "skipped")
        ).scalar_one()
    assert data["frequency_cap"] == "2/7"
    assert [m["campaign"] for m in data["counted"]] == [f"h{k}" for k in range(7)]
    assert {m["status"] for m in data["counted"]} == {"queued"}


def test_registering_again_after_the_cap_is_raised_adds_those_it_turned_away(
    database: dbmod.Database, sink: Sink
) -> None:
    people = _people(database)
    sink_account(database, sink.port)
    bm.set_frequency_cap(1, 7, db=database)
    _email_campaign(database, "first")
    _register(database, "first", _emails(people, "Anna"))
    _email_campaign(database, "second")
    for _ in range(2):
        _register(database, "second", _emails(people, "Anna", "Boris"))
        assert _queued(database, "second") == ["boris@x.sk"]
    # Turned away twice for the same reason: one line, not one per registration.
    assert list(bm.skipped("second", db=database)["address"]) == ["anna@x.sk"]
    bm.set_frequency_cap(2, 7, db=database)
    assert _register(database, "second", _emails(people, "Anna", "Boris")) == []
    assert _queued(database, "second") == ["anna@x.sk", "boris@x.sk"]


def test_one_campaign_registered_twice_at_once_is_not_capped_by_itself(
    database: dbmod.Database, sink: Sink
) -> None:
    """The registration that waited finds its recipients taken by the other: not capped."""
    people = _crowd(database)
    sink_account(database, sink.port)
    bm.set_frequency_cap(1, 7, db=database)
    _email_campaign(database, "twice")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", bm.RecipientsSkippedWarning)  # nobody capped
                bm.register("twice", people, db=database)
        except BaseException as exc:  # the test reports it below, with its type
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    with _caps_held(database):
        for t in threads:
            t.start()
        # Both store: on SQLite both wait at the caps' lock; on PostgreSQL one does, the
        # other waits for the campaign's row that one holds.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            all(_inside(t, store_messages) for t in threads)
            and any(_in_lock_caps(t) for t in threads)
        ):
            threading.Event().wait(0.02)
        assert all(_inside(t, store_messages) for t in threads), errors
    for t in threads:
        t.join(120)
    assert errors == []
    assert set(_total_per_contact(database).values()) == {1}
    assert len(_queued(database, "twice")) == CROWD
    assert bm.skipped("twice", db=database).empty

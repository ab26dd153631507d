"""Per-domain limits: groups, an account's own figures, the claim that skips a group at its limit.

With the manual clock (SQLite and PostgreSQL) the limits are exact and a provider at its
limit holds nobody else back; the three real ``bulkmail run-worker`` processes sharing
one campaign on PostgreSQL are in test_domain_limits_workers.py.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sending_support import make_campaign, sink_account

from bulkmail_kernel import (
    add_sender_account,
    domain_group,
    domain_limits,
    queue,
    send,
    set_domain_limits,
)
from bulkmail_kernel import (
    db as dbmod,
)
from bulkmail_kernel.cli import main
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import Message, RateBucket
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.domains import _EXACT, DEFAULT_LIMITS, GROUPS, burst
from bulkmail_kernel.servers.sink import Sink

# --------------------------------------------------------------------------- groups


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("jana@gmail.com", "gmail"),
        ("Jana@GoogleMail.com", "gmail"),
        ("a@outlook.com", "outlook"),
        ("a@outlook.sk", "outlook"),
        ("a@hotmail.com", "outlook"),
        ("a@hotmail.co.uk", "outlook"),
        ("a@live.sk", "outlook"),
        ("a@live.com.au", "outlook"),
        ("a@msn.com", "outlook"),
        ("a@yahoo.com", "yahoo"),
        ("a@yahoo.de", "yahoo"),
        ("a@yahoo.co.jp", "yahoo"),
        ("a@ymail.com", "yahoo"),
        ("a@seznam.cz", "seznam"),
        ("a@email.cz", "seznam"),
        ("a@post.cz", "seznam"),
        ("a@centrum.sk", "centrum"),
        ("a@azet.sk", "centrum"),
        ("a@atlas.sk", "centrum"),
        ("a@mail.ru", "mailru"),
        ("a@bk.ru", "mailru"),
        ("a@inbox.ru", "mailru"),
        ("a@list.ru", "mailru"),
        ("a@ya.ru", "mailru"),
        ("a@yandex.ru", "mailru"),
        ("a@yandex.com.tr", "mailru"),
        # Look-alikes and sub-domains of other firms are not the provider.
        ("a@notgmail.com", ""),
        ("a@gmail.com.evil.org", ""),
        ("a@live.myshop.com", ""),
        ("a@yahoo.example.net", ""),
        ("a@mail.seznam.cz.example.net", ""),
        ("a@shop.sk", ""),
        ("+421900123456", ""),
    ],
)
def test_domain_group_of_an_address(address: str, group: str) -> None:
    assert domain_group(address) == group


@given(st.text(max_size=80))
def test_domain_group_takes_any_text_and_ignores_case(text: str) -> None:
    group = domain_group(text)
    assert group in {"", *GROUPS}
    assert domain_group(text.upper()) == domain_group(text.lower()) or not text.isascii()


@given(st.sampled_from(sorted(_EXACT)), st.from_regex(r"[a-z0-9._+-]{1,20}", fullmatch=True))
def test_every_listed_domain_is_its_group_whoever_the_mailbox(domain: str, local: str) -> None:
    assert domain_group(f"{local}@{domain.upper()}") == _EXACT[domain]
    assert domain_group(f"{local}@mail.{domain}") == ""  # a sub-domain is someone else's


def test_every_group_has_a_default_and_the_burst_is_ten_seconds_worth() -> None:
    assert set(DEFAULT_LIMITS) == set(GROUPS)
    assert burst(3600) == 10
    assert burst(600) == 2
    assert burst(1) == 1


# --------------------------------------------------------------------------- per account


def test_limits_are_the_defaults_until_the_account_sets_its_own(database: dbmod.Database) -> None:
    sink_account(database, 2525)
    frame = domain_limits("sink", db=database)
    assert list(frame["group"]) == list(GROUPS)
    assert set(frame["source"]) == {"default"}
    assert dict(zip(frame["group"], frame["limit_per_hour"], strict=True)) == DEFAULT_LIMITS

    frame = set_domain_limits("sink", {"gmail": 300, "yahoo": None}, db=database)
    by = frame.set_index("group")
    assert by.loc["gmail", "limit_per_hour"] == 300
    assert by.loc["gmail", "source"] == "account"
    assert math.isnan(by.loc["yahoo", "limit_per_hour"])  # no limit
    assert by.loc["outlook", "source"] == "default"

    # Saving the account again (a notebook cell run twice) keeps its own limits.
    sink_account(database, 2525)
    assert (
        domain_limits("sink", db=database).set_index("group").loc["gmail", "limit_per_hour"] == 300
    )

    by = set_domain_limits("sink", {"gmail": "default"}, db=database).set_index("group")
    assert by.loc["gmail", "limit_per_hour"] == DEFAULT_LIMITS["gmail"]
    assert by.loc["gmail", "source"] == "default"
    assert math.isnan(by.loc["yahoo", "limit_per_hour"])


def test_a_file_account_is_not_limited(database: dbmod.Database, tmp_path: object) -> None:
    add_sender_account(
        "folder", kind="file", from_email="a@shop.sk", settings={"folder": "out"}, db=database
    )
    frame = domain_limits("folder", db=database)
    assert frame["limit_per_hour"].isna().all()
    assert frame["source"].str.startswith("not limited").all()


@pytest.mark.parametrize(
    ("limits", "said"),
    [
        ({"hotmail": 10}, "domain group 'hotmail' is not known"),
        ({"gmail": 0}, "'gmail': 0 is not a positive number"),
        ({"gmail": -5}, "not a positive number"),
        ({"gmail": "lots"}, "not a positive number"),
        ({"gmail": math.inf}, "not a positive number"),
        ({"gmail": True}, "not a positive number"),
    ],
)
def test_bad_limits_are_refused_naming_the_account_and_group(
    database: dbmod.Database, limits: dict[str, object], said: str
) -> None:
    sink_account(database, 2525)
    with pytest.raises(ConfigError, match="sender account 'sink'") as caught:
        set_domain_limits("sink", limits, db=database)  # type: ignore[arg-type]
    assert said in caught.value.message
    with pytest.raises(ConfigError, match=said):
        add_sender_account(
            "other",
            kind="smtp",
            from_email="a@shop.sk",
            settings={"host": "127.0.0.1", "domain_limits": limits},
            check=False,
            db=database,
        )
    with pytest.raises(ConfigError, match="sender account 'nobody' does not exist"):
        set_domain_limits("nobody", {"gmail": 10}, db=database)


def test_the_commands_show_and_set_the_limits(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database = dbmod.open_database(db_url)
    sink_account(database, 2525)
    assert main(["set-domain-limits", "sink", "gmail=120", "yahoo=none", "--db", db_url]) == 0
    assert main(["domain-limits", "sink", "--csv", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert 'sink,gmail,"gmail.com, googlemail.com",120.0,600.0,account,1' in out
    assert 'sink,yahoo,"ymail.com, rocketmail.com, yahoo.*",,600.0,account,' in out
    assert main(["domain-group", "x@seznam.cz", "y@shop.sk"]) == 0
    assert capsys.readouterr().out.splitlines() == ["x@seznam.cz\tseznam", "y@shop.sk\t"]
    with pytest.raises(SystemExit):
        main(["set-domain-limits", "sink", "gmail", "--db", db_url])
    assert "GROUP=MESSAGES_PER_HOUR" in capsys.readouterr().err


# --------------------------------------------------------------------------- the migration


def test_the_migration_gives_queued_messages_their_group(db_url: str) -> None:
    """Messages queued before the column existed get their group when the database upgrades."""
    database = dbmod.open_database(db_url)
    sink_account(database, 2525)
    domains = ["gmail.com", "Hotmail.co.uk", "sk.example.net", "azet.sk", "yandex.ru", "email.cz"]
    cid = make_campaign(database, 12, address=lambda i: f"u{i}@{domains[i % len(domains)]}")
    dbmod.close_all()
    engine = dbmod.create_db_engine(db_url)
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option(
        "script_location", str(Path(dbmod.__file__).resolve().parents[1] / "migrations")
    )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
    assert "domain_group" not in {c["name"] for c in sa.inspect(engine).get_columns("messages")}
    engine.dispose()
    database = dbmod.open_database(db_url)  # upgrades to the head again
    with database.engine.connect() as conn:
        got = dict(
            conn.execute(
                sa.select(Message.recipient, Message.domain_group).where(Message.campaign_id == cid)
            ).all()
        )
    assert got == {r: domain_group(r) for r in got}
    assert Counter(got.values()) == Counter(
        {"gmail": 2, "outlook": 2, "": 2, "centrum": 2, "mailru": 2, "seznam": 2}
    )


# --------------------------------------------------------------------------- sending


def _domains_of(i: int, plan: list[tuple[str, int]]) -> str:
    """Recipient ``i`` of a campaign laid out as ``plan``: (domain, how many) in id order."""
    for domain, n in plan:
        if i < n:
            return f"u{i:04d}@{domain}"
        i -= n
    raise IndexError(i)


def _sent_at(database: dbmod.Database, cid: int, clock: ManualClock) -> dict[str, list[float]]:
    """Return, per domain group, the seconds after the clock's start each message was sent."""
    frame = queue(cid, db=database)
    assert set(frame["status"].astype(str)) == {"sent"}
    times: dict[str, list[float]] = {}
    for recipient, sent in zip(frame["recipient"], frame["sent_at"], strict=True):
        at = (sent.to_pydatetime() - clock.start) / timedelta(seconds=1)
        times.setdefault(domain_group(recipient), []).append(at)
    return {g: sorted(t) for g, t in times.items()}


def test_a_domain_at_its_limit_holds_no_one_else_back(database: dbmod.Database, sink: Sink) -> None:
    # Gmail first in the queue and allowed one message an hour: the claim skips it, so
    # the 30 others leave at once, and each later Gmail message waits its own hour.
    sink_account(database, sink.port)
    set_domain_limits("sink", {"gmail": 1}, db=database)
    plan = [("gmail.com", 4), ("sk.example.net", 20), ("seznam.cz", 10)]
    cid = make_campaign(database, 34, address=lambda i: _domains_of(i, plan))
    clock = ManualClock()
    summary = send(cid, rate_per_hour=math.inf, progress=False, clock=clock, db=database)
    assert (summary.sent, summary.status) == (34, "finished")
    at = _sent_at(database, cid, clock)
    assert at[""] == [0.0] * 20  # the unlimited ones: no wait at all
    frame = queue(cid, db=database)
    assert Counter(frame["domain_group"]) == {"gmail": 4, "": 20, "seznam": 10}
    # Seznam at its default 300/h: a burst of one, then one each 12 s.
    assert at["seznam"] == pytest.approx([12.0 * k for k in range(10)], abs=0.01)
    assert at["gmail"] == pytest.approx([0.0, 3600.0, 7200.0, 10800.0], abs=0.01)
    # In the sink: every other message was taken before the second Gmail one.
    order = [m.rcpt_tos[0] for m in sink.messages]
    second_gmail = [k for k, r in enumerate(order) if r.endswith("@gmail.com")][1]
    assert second_gmail == len(order) - 3


def test_each_group_keeps_its_own_limit(database: dbmod.Database, sink: Sink) -> None:
    """Four groups at four rates, one campaign: each sends its burst, then exactly its rate."""
    sink_account(database, sink.port)
    limits = {"gmail": 3600, "outlook": 1800, "yahoo": 720, "mailru": 360}
    set_domain_limits("sink", limits, db=database)  # type: ignore[arg-type]
    plan = [("gmail.com", 60), ("hotmail.com", 40), ("yahoo.com", 20), ("mail.ru", 8)]
    cid = make_campaign(database, 128, address=lambda i: _domains_of(i, plan))
    clock = ManualClock()
    send(cid, rate_per_hour=math.inf, progress=False, clock=clock, db=database)
    at = _sent_at(database, cid, clock)
    for group, per_hour in limits.items():
        gap = 3600 / per_hour
        first = burst(per_hour)
        expected = [0.0] * first + [gap * k for k in range(1, len(at[group]) - first + 1)]
        assert at[group] == pytest.approx(expected, abs=0.01), group
    # The run lasts as long as its slowest group needs: Yahoo, 18 at 720/h after 2 at once.
    assert clock.elapsed == pytest.approx(18 * 5.0, abs=0.01)


def test_the_limit_is_the_accounts_across_its_campaigns(
    database: dbmod.Database, sink: Sink
) -> None:
    # Two campaigns of one account share its Gmail bucket: the second waits for the first.
    sink_account(database, sink.port)
    set_domain_limits("sink", {"gmail": 360}, db=database)  # one each 10 s, burst 1
    a = make_campaign(database, 3, name="a", address=lambda i: f"a{i}@gmail.com")
    b = make_campaign(database, 3, name="b", first=3, address=lambda i: f"b{i}@gmail.com")
    clock = ManualClock()
    send(a, rate_per_hour=math.inf, progress=False, clock=clock, db=database)
    assert clock.elapsed == pytest.approx(20.0, abs=0.01)
    send(b, rate_per_hour=math.inf, progress=False, clock=clock, db=database)
    assert _sent_at(database, b, clock)["gmail"] == pytest.approx([30.0, 40.0, 50.0], abs=0.01)
    with database.session() as s:
        names = set(s.scalars(sa.select(RateBucket.name)))
    assert {n for n in names if n.startswith("domain:")} == {
        f"domain:{database_account_id(database)}:{g}" for g in GROUPS
    }


def database_account_id(database: dbmod.Database) -> int:
    with database.session() as s:
        return int(s.scalar(sa.text("SELECT id FROM sender_accounts WHERE name = 'sink'")))


def test_a_stop_while_waiting_for_a_token_ends_the_send(
    database: dbmod.Database, sink: Sink
) -> None:
    # Real clock: the two Gmail messages left wait an hour each for their token; a stop
    # ends send() at once, the rest queued for the next run.
    import threading

    sink_account(database, sink.port)
    set_domain_limits("sink", {"gmail": 1}, db=database)
    cid = make_campaign(database, 3, address=lambda i: f"g{i}@gmail.com")
    stop = threading.Event()
    done: list[object] = []
    worker = threading.Thread(
        target=lambda: done.append(
            send(cid, rate_per_hour=math.inf, progress=False, stop=stop, db=database)
        ),
        daemon=True,
    )
    worker.start()
    while len(sink.messages) < 1:
        worker.join(0.05)
        assert worker.is_alive() or done
    stop.set()
    worker.join(30)
    assert not worker.is_alive(), "send() slept through the stop"
    summary = done[0]
    assert (summary.sent, summary.remaining, summary.status) == (1, 2, "sending")  # type: ignore[attr-defined]
    assert Counter(queue(cid, db=database)["status"].astype(str)) == {"sent": 1, "queued": 2}


def test_registration_stores_each_recipients_group(database: dbmod.Database) -> None:
    import pandas as pd

    import bulkmail_kernel as bm

    emails = ["jana@Gmail.com", "peter@azet.sk", "ivan@yandex.ru", "eva@shop.sk", "o@live.sk"]
    frame = pd.DataFrame(
        {"first_name": ["A", "B", "C", "D", "E"], "email": emails, "mailing_allowed": "yes"}
    )
    bm.import_contacts(frame, db=database, progress=False)
    people = bm.contacts_frame(database)
    bm.save_segment("all", bm.FilterSpec(channel="email"), people, db=database)
    sink_account(database, 2525)
    template = bm.template_from_html(
        '<p>Ahoj {{ first_name }}</p><a href="{{ unsubscribe_url }}">x</a>', "Ahoj", name="t"
    )
    bm.create_campaign("c", sender="sink", template=template, segment="all", db=database)
    bm.register("c", db=database)
    with database.engine.connect() as conn:
        got = dict(conn.execute(sa.select(Message.recipient, Message.domain_group)).all())
    assert got == {
        "jana@gmail.com": "gmail",
        "peter@azet.sk": "centrum",
        "ivan@yandex.ru": "mailru",
        "eva@shop.sk": "",
        "o@live.sk": "outlook",
    }


def test_the_worker_serves_other_campaigns_while_a_provider_waits(
    database: dbmod.Database, sink: Sink
) -> None:
    # Campaign a (all Gmail, one each 10 s) comes first; the worker must not sleep on it
    # while campaign b has messages it may send now.
    from bulkmail_kernel import run_worker

    sink_account(database, sink.port)
    set_domain_limits("sink", {"gmail": 360}, db=database)
    a = make_campaign(
        database, 3, name="a", status="scheduled", address=lambda i: f"a{i}@gmail.com"
    )
    b = make_campaign(database, 10, name="b", first=3, status="scheduled")
    clock = ManualClock()
    assert run_worker(db=database, clock=clock, exit_when_idle=True, poll_interval_s=5) == 13
    assert _sent_at(database, b, clock)[""] == [0.0] * 10
    assert _sent_at(database, a, clock)["gmail"] == pytest.approx([0.0, 10.0, 20.0], abs=0.01)

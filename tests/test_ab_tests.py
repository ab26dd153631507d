"""A/B tests with a holdout, and resends to non-clickers, on SQLite and PostgreSQL.

Real parts: the SMTP sink, the worker, the real databases; only the worker's clock is
moved by hand. Clicks: the click-tracking endpoint records each counted click as an
``events`` row of kind "clicked" (campaign_id, message_id, contact_id,
contact_point_id, data {"url", "link"}). Here those rows are written through the
outbox's event writer (``outbox.events.add_events``) as fixture data standing for the
endpoint; ``test_clicks_through_the_real_endpoint_pick_the_winner`` clicks the real
tracked links over HTTP instead.
"""

from __future__ import annotations

import email
import email.policy
import io
import re
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from sending_support import sink_account
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)
from statsmodels.stats.proportion import (
    test_proportions_2indep as score_test_2indep,  # not named test_*: pytest would collect it
)

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns.abstats import (
    newcombe_interval,
    two_proportion_z_test,
    wilson_interval,
)
from bulkmail_kernel.campaigns.abtests import split
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.db import AbAssignment, Campaign
from bulkmail_kernel.outbox.events import add_events
from bulkmail_kernel.servers.sink import Sink
from bulkmail_kernel.servers.web import create_app, serve_in_thread

HTML = (
    "<html><body><p>Dobrý deň {{ first_name }},</p><p>jarná zľava.</p>"
    '<p><a href="https://shop.sk/sale">Zľava</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p></body></html>'
)
N = 100


def _people(database: dbmod.Database, n: int = N) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "first_name": [f"Meno{i}" for i in range(n)],
            "email": [f"clovek{i:03d}@x.sk" for i in range(n)],
            "mailing_allowed": ["yes"] * n,
        }
    )
    bm.import_contacts(frame, db=database, progress=False, region="SK")
    people = bm.contacts_frame(database)
    return people[people["channel"] == "email"].reset_index(drop=True)


def _campaign(database: dbmod.Database, name: str = "jar") -> None:
    tmpl = bm.template_from_html(HTML, "Jarná zľava", name="jar")
    bm.create_campaign(
        name, sender="sink", template=tmpl, rate_per_hour=360_000, burst=100, db=database
    )


def _arms(database: dbmod.Database, campaign: str) -> dict[int, str]:
    with database.session() as s:
        cid = s.scalar(sa.select(Campaign.id).where(Campaign.name == campaign))
        rows = s.execute(
            sa.select(AbAssignment.contact_point_id, AbAssignment.arm).where(
                AbAssignment.campaign_id == cid
            )
        ).all()
    return {int(p): a for p, a in rows}


def _subject(data: bytes) -> str:
    return str(email.message_from_bytes(data, policy=email.policy.default)["Subject"])


def _click(database: dbmod.Database, campaign: str, recipients: list[str]) -> None:
    """Record one counted click per recipient, as the tracking endpoint would (fixture data)."""
    q = bm.queue(campaign, db=database)
    q = q[q["recipient"].isin(recipients)]
    with database.session() as s:
        cid = s.scalar(sa.select(Campaign.id).where(Campaign.name == campaign))
        rows = s.execute(
            sa.select(dbmod.Message.id, dbmod.Message.contact_id, dbmod.Message.contact_point_id)
            .where(dbmod.Message.campaign_id == cid)
            .where(dbmod.Message.recipient.in_(list(q["recipient"])))
        ).all()
    add_events(
        database,
        [
            {
                "kind": "clicked",
                "campaign_id": cid,
                "message_id": m,
                "contact_id": c,
                "contact_point_id": p,
                "data": {"url": "https://shop.sk/sale", "link": 0},
            }
            for m, c, p in rows
        ],
    )
    assert len(rows) == len(recipients)


# ------------------------------------------------------------------ statistics


KNOWN = [(12, 200, 5, 210), (0, 50, 3, 48), (45, 120, 44, 118), (7, 19, 1, 23), (30, 30, 20, 25)]


# statsmodels also works out an odds ratio it does not return: 30 of 30 divides by zero.
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize(("c1", "n1", "c2", "n2"), KNOWN)
def test_intervals_and_p_values_match_statsmodels(c1: int, n1: int, c2: int, n2: int) -> None:
    """Wilson, Newcombe (hybrid score) and the pooled z-test against statsmodels' own."""
    low, high = wilson_interval(c1, n1)
    sm_low, sm_high = proportion_confint(c1, n1, alpha=0.05, method="wilson")
    assert (low, high) == pytest.approx((sm_low, sm_high), abs=1e-12)

    low, high = newcombe_interval(c1, n1, c2, n2)
    sm = confint_proportions_2indep(c1, n1, c2, n2, method="newcomb", compare="diff", alpha=0.05)
    assert (low, high) == pytest.approx(tuple(sm), abs=1e-12)

    z, p = two_proportion_z_test(c1, n1, c2, n2)
    if c1 + c2 in (0, n1 + n2):
        return  # no variance: both sides say nothing
    sm_z, sm_p = proportions_ztest([c1, c2], [n1, n2])
    assert (z, p) == pytest.approx((sm_z, sm_p), abs=1e-12)
    score = score_test_2indep(c1, n1, c2, n2, method="score", correction=False)
    assert p == pytest.approx(score.pvalue, abs=1e-10)


def test_the_split_is_reproducible_with_the_seed_and_respects_the_shares() -> None:
    ids = list(range(1, 1001))
    one = split(ids, ["A", "B"], 0.2, 0.1, seed=42)
    assert one == split(list(reversed(ids)), ["A", "B"], 0.2, 0.1, seed=42)
    assert one != split(ids, ["A", "B"], 0.2, 0.1, seed=43)
    counts = pd.Series(one).value_counts().to_dict()
    assert counts == {"rest": 700, "A": 100, "B": 100, "holdout": 100}


# ------------------------------------------------------------------ end to end


def test_an_ab_test_runs_end_to_end_through_the_worker(
    database: dbmod.Database, sink: Sink
) -> None:
    """Variants to the sample, the holdout untouched, the worker waits, picks B, sends the rest."""
    people = _people(database)
    sink_account(database, sink.port)
    _campaign(database)
    arms = bm.create_ab_test(
        "jar",
        [{"subject": "Jar A"}, {"name": "B", "subject": "Jar B: -20 %"}],
        sample=0.4,
        holdout=0.2,
        wait="4h",
        seed=7,
        recipients=people,
        db=database,
    )
    assert arms.set_index("arm")["assigned"].to_dict() == {
        "A": 20,
        "B": 20,
        "holdout": 20,
        "rest": 40,
    }
    assert arms.set_index("arm")["registered"].to_dict() == {
        "A": 20,
        "B": 20,
        "holdout": 0,
        "rest": 0,
    }
    assert len(bm.queue("jar", db=database)) == 40

    # The same seed on the same recipients gives the same split.
    _campaign(database, "jar-again")
    bm.create_ab_test(
        "jar-again",
        ["Jar A", "Jar B: -20 %"],
        sample=0.4,
        holdout=0.2,
        seed=7,
        recipients=people,
        db=database,
    )
    assert _arms(database, "jar-again") == _arms(database, "jar")
    bm.cancel("jar-again", db=database)

    where = _arms(database, "jar")
    address = dict(zip(people["contact_point_id"].astype(int), people["address"], strict=True))
    by_arm: dict[str, list[str]] = {}
    for pid, arm in where.items():
        by_arm.setdefault(arm, []).append(address[pid])

    # 1. A worker without steps (so it does not wait for the decision) sends the variants
    # (nothing else is due) into the real SMTP sink.
    clock = ManualClock(start=datetime.now(UTC))
    bm.schedule("jar", clock.now(), db=database)
    sent = bm.run_worker(
        db=database, clock=clock, exit_when_idle=True, poll_interval_s=600.0, steps=()
    )
    assert sent == 40
    subjects = {m.rcpt_tos[0]: _subject(m.data) for m in sink.messages}
    assert {subjects[a] for a in by_arm["A"]} == {"Jar A"}
    assert {subjects[a] for a in by_arm["B"]} == {"Jar B: -20 %"}

    # 2. Clicks come in: 2 of A's 20, 10 of B's 20 (one clicks twice: counted once).
    _click(database, "jar", sorted(by_arm["A"])[:2])
    _click(database, "jar", sorted(by_arm["B"])[:10])
    _click(database, "jar", sorted(by_arm["B"])[:1])
    assert bm.ab_test_step(database, clock.now()) is True  # the wait is not over: no winner
    assert bm.ab_report("jar", db=database).attrs["winner"] is None

    # 3. The worker idles through the 4 hours on its clock, picks B, sends the rest with it
    # (deciding tests is one of the steps every worker runs: no steps= needed).
    start = clock.now()
    sent = bm.run_worker(
        db=database,
        clock=clock,
        exit_when_idle=True,
        poll_interval_s=600.0,
    )
    assert sent == 40
    assert clock.now() - start >= timedelta(hours=4)
    report = bm.ab_report("jar", db=database).set_index("arm")
    assert report.attrs["winner"] == "B"
    assert report.attrs["decided_by"] == "click_rate"
    assert report.loc["A", "click_rate"] == pytest.approx(0.1)
    assert report.loc["B", "click_rate"] == pytest.approx(0.5)
    assert report.loc["B", "clickers"] == 10
    low, high = proportion_confint(10, 20, method="wilson")
    assert (report.loc["B", "click_low"], report.loc["B", "click_high"]) == pytest.approx(
        (low, high)
    )
    assert report.loc["A", "click_p_vs_best"] == pytest.approx(
        proportions_ztest([2, 10], [20, 20])[1]
    )
    assert report.loc["rest", "sent"] == 40
    assert report.loc["holdout", "sent"] == 0
    assert bool(report.loc["B", "winner"])

    subjects = {m.rcpt_tos[0]: _subject(m.data) for m in sink.messages}
    assert len(sink.messages) == 80
    assert {subjects[a] for a in by_arm["rest"]} == {"Jar B: -20 %"}
    assert not set(by_arm["holdout"]) & set(subjects), "the holdout got nothing"
    assert bm.get_campaign("jar", db=database).status == "finished"
    with pytest.raises(bm.SendError, match="already won"):
        bm.pick_winner("jar", db=database)


def test_a_conversion_test_is_decided_by_the_analyst_with_uplift_over_the_holdout(
    database: dbmod.Database, sink: Sink
) -> None:
    people = _people(database)
    sink_account(database, sink.port)
    _campaign(database)
    bm.create_ab_test(
        "jar",
        ["Jar A", "Jar B"],
        sample=0.5,
        holdout=0.3,
        metric="conversions",
        seed=3,
        recipients=people,
        db=database,
    )
    clock = ManualClock(start=datetime.now(UTC))
    bm.schedule("jar", clock.now(), db=database)
    bm.run_worker(
        db=database,
        clock=clock,
        exit_when_idle=True,
        poll_interval_s=600.0,
        steps=[bm.ab_test_step],
    )
    # A conversion test waits for the analyst: the worker did not decide it.
    assert bm.ab_report("jar", db=database).attrs["winner"] is None
    with pytest.raises(bm.ConfigError, match="conversions="):
        bm.pick_winner("jar", db=database)
    with pytest.raises(bm.ConfigError, match="'converted'"):
        bm.pick_winner("jar", conversions=pd.DataFrame({"contact_id": [1]}), db=database)

    where = _arms(database, "jar")
    contact = dict(zip(people["contact_point_id"].astype(int), people["contact_id"], strict=True))
    members = {
        arm: sorted(contact[p] for p, a in where.items() if a == arm)
        for arm in ("A", "B", "holdout")
    }
    # Orders from the accounting system: A converts 5 of 25, B 12 of 25, the holdout 3 of 30.
    buyers = members["A"][:5] + members["B"][:12] + members["holdout"][:3]
    orders = pd.DataFrame({"contact_id": buyers, "amount": [19.9] * len(buyers)})
    report = bm.pick_winner("jar", conversions=orders, now=clock.now(), db=database).set_index(
        "arm"
    )
    assert report.attrs["winner"] == "B"
    assert report.loc["B", "conversion_rate"] == pytest.approx(12 / 25)
    assert report.loc["holdout", "conversion_rate"] == pytest.approx(3 / 30)
    assert report.loc["B", "uplift"] == pytest.approx(12 / 25 - 3 / 30)
    sm = confint_proportions_2indep(12, 25, 3, 30, method="newcomb", compare="diff")
    assert (report.loc["B", "uplift_low"], report.loc["B", "uplift_high"]) == pytest.approx(
        tuple(sm)
    )
    assert report.loc["B", "p_vs_holdout"] == pytest.approx(proportions_ztest([12, 3], [25, 30])[1])
    # The rest (20) goes with B; the stored conversions keep the report's uplift.
    assert bm.run_worker(db=database, clock=clock, exit_when_idle=True, poll_interval_s=600.0) == 20
    again = bm.ab_report("jar", db=database).set_index("arm")
    assert again.loc["B", "uplift"] == pytest.approx(12 / 25 - 3 / 30)
    assert len(sink.messages) == 70


def test_resend_to_non_clickers_is_a_linked_campaign_to_who_did_not_click(
    database: dbmod.Database, sink: Sink
) -> None:
    people = _people(database, 6)
    sink_account(database, sink.port)
    _campaign(database)
    bm.register("jar", people, db=database)
    assert bm.send("jar", db=database, progress=False).sent == 6
    addresses = sorted(people["address"])
    _click(database, "jar", addresses[:2])
    bm.unsubscribe_address(addresses[2], db=database)
    assert sorted(bm.non_clickers("jar", db=database)["address"]) == addresses[2:]

    with pytest.raises(bm.SendError, match="resend after"):
        bm.resend_to_non_clickers("jar", "jar-2", subject="Posledné dni zľavy", db=database)
    info = bm.resend_to_non_clickers(
        "jar",
        "jar-2",
        subject="Posledné dni zľavy",
        days=3,
        now=datetime.now(UTC) + timedelta(days=3, minutes=1),
        db=database,
    )
    assert info.status == "registered"
    with database.session() as s:
        parent = s.scalar(sa.select(Campaign.parent_id).where(Campaign.name == "jar-2"))
        assert parent == s.scalar(sa.select(Campaign.id).where(Campaign.name == "jar"))
    # The clickers are left out, and so is the one who unsubscribed since (registration).
    assert sorted(bm.queue("jar-2", db=database)["recipient"]) == addresses[3:]
    assert bm.send("jar-2", db=database, progress=False).sent == 3
    assert {_subject(m.data) for m in sink.messages[6:]} == {"Posledné dni zľavy"}


def test_bad_set_ups_say_which_field_and_what_to_do(sqlite_url: str, sink: Sink) -> None:
    database = dbmod.open_database(sqlite_url)
    people = _people(database, 20)
    sink_account(database, sink.port)
    _campaign(database)
    cases = [
        (["only one"], {}, "at least two"),
        ([{"subject": "x"}, {"name": "holdout", "subject": "y"}], {}, "reserved"),
        ([{"subject": "x"}, {"color": "red"}], {}, "variant 2"),
        (["x", "y"], {"sample": 0.8, "holdout": 0.3}, "more than 1"),
        (["x", "y"], {"metric": "opens"}, "'clicks' or 'conversions'"),
        (["x", "y"], {"wait": "soon"}, "wait='soon'"),
        (["x", "y"], {"sample": 0.1}, "fewer than 2 per variant"),
    ]
    for variants, kwargs, words in cases:
        with pytest.raises(bm.ConfigError, match=words):
            bm.create_ab_test("jar", variants, recipients=people, db=database, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(bm.SendError, match="no A/B test"):
        bm.ab_report("jar", db=database)
    bm.register("jar", people, db=database)
    with pytest.raises(bm.SendError, match="needs a draft"):
        bm.create_ab_test("jar", ["x", "y"], db=database)


def test_the_widget_sets_a_test_up_and_shows_its_arms(sqlite_url: str, sink: Sink) -> None:
    database = dbmod.open_database(sqlite_url)
    _people(database, 40)
    sink_account(database, sink.port)
    segment_people = bm.contacts_frame(database)
    assert len(segment_people)
    tmpl = bm.template_from_html(HTML, "Jarná zľava", name="jar")
    bm.save_segment("all", bm.FilterSpec(), segment_people, db=database)
    bm.create_campaign(
        "jar", sender="sink", template=tmpl, segment="all", rate_per_hour=360_000, db=database
    )
    panel = bm.ab_test_widget("jar", db=database)
    assert "no A/B test" in panel.message.value
    panel.subjects.value = "Jar A\nJar B"
    panel.sample.value, panel.holdout.value, panel.seed.value = 0.5, 0.2, 11
    panel.create.click()
    assert panel.setup.layout.display == "none"
    assert "Jar B" in panel.table.value
    assert "holdout" in panel.table.value
    assert "seed 11" in panel.message.value
    panel.pick.click()  # nothing sent yet: the error is shown, not raised
    assert "not sent yet" in panel.message.value


def test_the_commands_run_a_test_on_a_segment(
    sqlite_url: str, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    from bulkmail_kernel.cli import main

    database = dbmod.open_database(sqlite_url)
    people = _people(database, 30)
    sink_account(database, sink.port)
    bm.save_segment("all", bm.FilterSpec(), people, db=database)
    tmpl = bm.template_from_html(HTML, "Jarná zľava", name="jar")
    bm.create_campaign(
        "jar", sender="sink", template=tmpl, segment="all", rate_per_hour=360_000, db=database
    )
    db = ["--db", sqlite_url]
    assert (
        main(["create-ab-test", "jar", "Jar A", "Jar B", "--sample", "0.4", "--seed", "5", *db])
        == 0
    )
    assert "holdout" in capsys.readouterr().out
    assert main(["send", "jar", *db]) == 0
    assert len(sink.messages) == 12
    capsys.readouterr()
    assert main(["pick-winner", "jar", "--winner", "B", *db]) == 0
    assert "winner: B" in capsys.readouterr().out
    assert main(["send", "jar", *db]) == 0
    # 30 recipients: 3 in the holdout, 12 in the test, the 15 others get B from the segment.
    assert len(sink.messages) == 27
    assert [_subject(m.data) for m in sink.messages[12:]] == ["Jar B"] * 15
    capsys.readouterr()
    assert main(["ab-report", "jar", "--csv", *db]) == 0
    report = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("arm")
    assert report.loc["rest", "sent"] == 15
    assert report.loc["holdout", "sent"] == 0
    assert main(["non-clickers", "jar", "--csv", *db]) == 0
    assert len(pd.read_csv(io.StringIO(capsys.readouterr().out))) == 27


def test_two_deciders_at_once_make_one_decision(database: dbmod.Database, sink: Sink) -> None:
    """Two workers (or a worker and the analyst) deciding together: one wins, one is told."""
    people = _people(database, 40)
    sink_account(database, sink.port)
    _campaign(database)
    bm.create_ab_test("jar", ["Jar A", "Jar B"], sample=0.5, seed=1, recipients=people, db=database)
    assert bm.send("jar", db=database, progress=False).sent == 20
    outcomes: list[str] = []

    def decide(arm: str) -> None:
        try:
            bm.pick_winner("jar", winner=arm, db=database)
            outcomes.append(arm)
        except bm.SendError as exc:
            outcomes.append(exc.message)

    threads = [threading.Thread(target=decide, args=(arm,)) for arm in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    winner = bm.ab_report("jar", db=database).attrs["winner"]
    assert sorted(outcomes, key=len)[0] == winner
    assert "already won" in sorted(outcomes, key=len)[1]
    rest = bm.queue("jar", status=["queued"], db=database)
    assert len(rest) == 16  # 40 - 4 holdout - 20 sent: registered once
    assert bm.send("jar", db=database, progress=False).sent == 16
    assert {_subject(m.data) for m in sink.messages[20:]} == {f"Jar {winner}"}


BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


def _tracked_link(data: bytes) -> str:
    """Return the one tracked link (``/c/{token}``) of a sent message's HTML part."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    [link] = re.findall(r'href="(https://shop\.sk/c/[^"]+)"', html)
    return link


def test_clicks_through_the_real_endpoint_pick_the_winner(
    database: dbmod.Database, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracked links, real clicks over HTTP (uvicorn), the worker's decision, the rest sent.

    The worker's clock starts two hours back, so the real clicks come well after each
    message was sent (a click within seconds of delivery is taken for a link scanner).
    """
    people = _people(database, 40)
    sink_account(database, sink.port)
    monkeypatch.setenv("BULKMAIL_CLICK_URL", "https://shop.sk/c/{token}")
    assert bm.record_consent(people, "tracking", method="form", text="Súhlasím.", db=database)
    _campaign(database)
    bm.set_tracking("jar", clicks=True, db=database)
    bm.create_ab_test(
        "jar",
        ["Jar A", "Jar B"],
        sample=0.5,
        holdout=0.25,
        wait="1h",
        seed=3,
        recipients=people,
        db=database,
    )
    where = _arms(database, "jar")
    address = dict(zip(people["contact_point_id"].astype(int), people["address"], strict=True))
    by_arm: dict[str, list[str]] = {}
    for pid, arm in where.items():
        by_arm.setdefault(arm, []).append(address[pid])
    assert {arm: len(a) for arm, a in by_arm.items()} == {
        "A": 10,
        "B": 10,
        "holdout": 10,
        "rest": 10,
    }

    clock = ManualClock(start=datetime.now(UTC) - timedelta(hours=2))
    bm.schedule("jar", clock.now(), db=database)
    assert bm.run_worker(db=database, clock=clock, exit_when_idle=True, steps=()) == 20
    links = {m.rcpt_tos[0]: _tracked_link(m.data) for m in sink.messages}

    server = serve_in_thread(create_app(db=database))
    try:
        with httpx.Client(headers={"User-Agent": BROWSER}) as web:
            for who in sorted(by_arm["B"])[:6] + sorted(by_arm["A"])[:1]:
                answer = web.get(links[who].replace("https://shop.sk", server.url))
                assert answer.status_code == 302
                assert answer.headers["location"] == "https://shop.sk/sale"
            # A link scanner's HEAD on four more of A's links is flagged, not counted.
            for who in sorted(by_arm["A"])[1:5]:
                web.head(links[who].replace("https://shop.sk", server.url))
    finally:
        server.stop()

    sent = bm.run_worker(db=database, clock=clock, exit_when_idle=True, poll_interval_s=600.0)
    assert sent == 10
    report = bm.ab_report("jar", db=database).set_index("arm")
    assert report.attrs["winner"] == "B"
    assert report.attrs["decided_by"] == "click_rate"
    assert (report.loc["A", "clickers"], report.loc["B", "clickers"]) == (1, 6)
    subjects = {m.rcpt_tos[0]: _subject(m.data) for m in sink.messages}
    assert {subjects[a] for a in by_arm["rest"]} == {"Jar B"}
    assert not set(by_arm["holdout"]) & set(subjects), "the holdout got nothing"

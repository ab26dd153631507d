"""explain(): why a person gets a campaign or not — one assertion per reason, on both databases."""

from __future__ import annotations

import html
import warnings

import pandas as pd
import pytest

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.exceptions import FilterError
from bulkmail_kernel.outbox.suppressions import add_suppression

HTML = (
    "<html><body><p>Dobrý deň {{ first_name }}, {{ pet + ' čaká' }} na očkovanie.</p>"
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p></body></html>'
)
PEOPLE = pd.DataFrame(
    {
        "external_id": ["K1", "K2", "K3", "K4", "K5", "K6"],
        "first_name": ["Jana", "Peter", "Eva", "Ján", "Oľga", "Ivan"],
        "email": ["jana@a.sk", "peter@a.sk", "eva@a.sk", "jan@a.sk", "olga@a.sk", "ivan@a.sk"],
        "language": ["sk", "sk", "sk", "sk", "sk", "ru"],
        "mailing_allowed": ["yes", "yes", "no", "yes", "yes", "yes"],
        "pet": ["Rex", "Micka", "Bobik", "Alma", "", "Šarik"],
    }
)


@pytest.fixture
def world(database: dbmod.Database) -> dbmod.Database:
    import_contacts(PEOPLE, db=database, progress=False)
    with database.session() as s:
        add_suppression(s, "email", "jan@a.sk", reason="unsubscribed", detail="link in May")
    bm.add_sender_account(
        "clinic",
        kind="smtp",
        from_email="vet@clinic.sk",
        settings={"host": "127.0.0.1", "port": 2525, "security": "none",
                  "unsubscribe_url": "https://clinic.sk/u?t={token}"},
        db=database,
        check=False,
    )  # fmt: skip
    template = template_from_html(HTML, "Očkovanie pre {{ pet }}", name="vaccination")
    bm.create_campaign("spring", sender="clinic", template=template, db=database)
    frame = contacts_frame(database)
    spec = bm.FilterSpec(
        mailing_allowed=None,
        exclude_suppressed=False,
        rules={"all": [{"field": "language", "op": "is", "value": "sk"}]},
    )
    chosen = bm.filter_recipients(frame, spec)
    # Peter twice: the second is a duplicate address in this campaign.
    twice = pd.concat([chosen, chosen[chosen["external_id"] == "K2"]])
    twice.attrs = chosen.attrs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.RecipientsSkippedWarning)
        bm.register("spring", twice, db=database)
    return database


def _reasons(table: pd.DataFrame, section: str) -> list[str]:
    return table.loc[table["section"] == section, "detail"].tolist()


def test_a_recipient_is_in_with_the_rule_that_let_them(world: dbmod.Database) -> None:
    table = bm.explain("spring", "K1", db=world)
    assert table.attrs["verdict"].startswith("in: jana@a.sk has a message in 'spring' (queued)")
    message = table[table["section"] == "message"]
    assert message["address"].tolist() == ["jana@a.sk"]
    assert message["result"].tolist() == ["queued"]
    rules = table[(table["section"] == "audience") & table["check"].str.contains("rule '")]
    assert rules["check"].str.strip().tolist() == ["rule 'Language is sk'"]
    assert rules["result"].tolist() == ["holds"]
    assert rules["detail"].tolist() == ["sk"]  # their value


def test_the_rule_that_left_someone_out(world: dbmod.Database) -> None:
    table = bm.explain("spring", "ivan@a.sk", db=world)
    assert table.attrs["verdict"] == (
        "out: the filter leaves them out (ivan@a.sk: rule 'Language is sk')"
    )
    row = table[table["check"].str.strip() == "rule 'Language is sk'"].iloc[0]
    assert (row["result"], row["detail"]) == ("fails", "ru")
    assert (table["section"] == "message").sum() == 0


def test_consent_suppression_duplicate_and_render_failure(world: dbmod.Database) -> None:
    eva = bm.explain("spring", "K3", db=world)
    assert eva.attrs["verdict"] == "out: eva@a.sk was left out: mailing not allowed"
    consent = eva[eva["section"] == "consent"]
    assert consent[["address", "result"]].values.tolist() == [["eva@a.sk", "no"]]

    jan = bm.explain("spring", "JAN@a.sk", db=world)  # any spelling of the address
    assert jan.attrs["verdict"] == "out: jan@a.sk was left out: suppressed"
    sup = jan[jan["section"] == "suppression"].iloc[0]
    assert sup["detail"] == "unsubscribed: link in May"
    assert pd.notna(sup["when"])

    peter = bm.explain("spring", "K2", db=world)
    assert peter.attrs["verdict"].startswith("in: peter@a.sk")
    assert _reasons(peter, "skipped") == ["duplicate address in this campaign"]

    olga = bm.explain("spring", "K5", db=world)
    assert olga.attrs["verdict"].startswith("out: olga@a.sk was left out: cannot render")
    assert "unsupported operand" in olga.attrs["verdict"]  # the renderer's own words


def test_a_saved_group_is_judged_by_its_snapshot_and_its_rules(world: dbmod.Database) -> None:
    frame = contacts_frame(world)
    bm.save_segment("russian", bm.FilterSpec(language=["ru"]), frame, db=world)
    template = template_from_html(HTML, "Прививка", name="ru")
    bm.create_campaign("ru", sender="clinic", template=template, segment="russian", db=world)
    table = bm.explain("ru", "K1", db=world)
    group = table[table["check"] == "in saved group 'russian'"]
    assert group["result"].tolist() == ["no"]
    assert table.attrs["verdict"] == (
        "out: the filter leaves them out (jana@a.sk: rule 'Language is one of ru')"
    )
    ivan = bm.explain("ru", "K6", db=world)
    assert ivan[ivan["check"] == "in saved group 'russian'"]["result"].tolist() == ["yes"]


def test_a_list_without_a_filter_says_so(world: dbmod.Database) -> None:
    template = template_from_html(HTML, "Hello", name="plain")
    bm.create_campaign("plain", sender="clinic", template=template, db=world)
    frame = contacts_frame(world)
    hand_made = frame[frame["external_id"] == "K1"].copy()
    hand_made.attrs = {}
    bm.register("plain", hand_made, db=world)
    table = bm.explain("plain", "K4", db=world)
    assert "carried no filter" in " ".join(_reasons(table, "audience"))
    assert table.attrs["verdict"] == "out: not among the recipients registered for 'plain'"


def test_an_unknown_person_is_named(world: dbmod.Database) -> None:
    with pytest.raises(FilterError, match=r"nobody in these contacts is 'nobody@a\.sk'"):
        bm.explain("spring", "nobody@a.sk", db=world)


def test_explain_segment_on_a_million_finds_the_person_without_filtering_everyone() -> None:
    from test_segments import TODAY, make_frame

    from bulkmail_kernel.segments.explain import explain_segment

    frame = make_frame(20_000, seed=3)
    spec = bm.FilterSpec(
        channel="email", rules={"any": [{"field": "visits", "op": "at_least", "value": 25}]}
    )
    target = frame[frame["visits"] >= 25].iloc[0]
    table = explain_segment(frame, spec, int(target["contact_id"]), today=TODAY)
    selected = bm.filter_recipients(frame, spec, today=TODAY)
    mine = selected[selected["contact_id"] == target["contact_id"]]
    assert table.attrs["selected"] == mine["address"].tolist()


def test_the_command_line_says_the_same(
    world: dbmod.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    from bulkmail_kernel.cli import main

    assert main(["explain", "spring", "K3", "--db", str(world.url)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "out: eva@a.sk was left out: mailing not allowed"
    assert "mailing not allowed" in out
    jana = bm.explain("spring", "K1", db=world)
    frame = contacts_frame(world)
    contact_id = int(frame.loc[frame["external_id"] == "K1", "contact_id"].iloc[0])
    assert main(["explain", "spring", str(contact_id), "--db", str(world.url)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == jana.attrs["verdict"]


def test_only_the_persons_rows_are_read(world: dbmod.Database) -> None:
    from bulkmail_kernel.contacts.frame import find_contact_ids

    frame = contacts_frame(world)
    jana = int(frame.loc[frame["external_id"] == "K1", "contact_id"].iloc[0])
    for who in ("K1", "JANA@A.SK", jana, str(jana)):
        assert find_contact_ids(world, who) == [jana]
    assert find_contact_ids(world, "nobody@a.sk") == []
    alone = contacts_frame(world, contact_ids=[jana])
    assert alone["contact_id"].unique().tolist() == [jana]
    full = frame[frame["contact_id"] == jana].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone[full.columns], full, check_categorical=False)
    # A rule on a field this person lacks is judged on an empty value, not an error.
    template = template_from_html(HTML, "Hi", name="cats")
    bm.create_campaign("cats", sender="clinic", template=template, db=world)
    spec = bm.FilterSpec(rules={"field": "cat_name", "op": "is", "value": "Murka"})
    table = bm.explain("cats", "K1", db=world, frame=None)
    assert "carried no filter" in " ".join(_reasons(table, "audience"))
    from bulkmail_kernel.segments.explain import explain_segment

    judged = explain_segment(alone, spec, "K1")
    row = judged[judged["check"].str.strip() == "rule 'Cat name is Murka'"].iloc[0]
    assert (bool(row["holds"]), row["their value"]) == (False, "(empty)")


def test_the_monitor_explains_the_picked_message(world: dbmod.Database) -> None:
    from bulkmail_kernel.widgets.monitor import OutboxMonitor

    monitor = OutboxMonitor("spring", refresh_s=0, db=world)
    try:
        jana = next(mid for mid, addr in monitor._recipients.items() if addr == "jana@a.sk")
        monitor.queue.value = (jana,)
        assert "in: jana@a.sk has a message in &#x27;spring&#x27;" in monitor.why_result.value
        assert "Language is sk" in html.unescape(monitor.why_result.value)
        monitor.queue.value = ()
        monitor.why.value = "K3"
        monitor.why_button.click()
        assert "out: eva@a.sk was left out: mailing not allowed" in monitor.why_result.value
        monitor.why.value = "nobody@a.sk"
        monitor.why_button.click()
        assert "nobody in these contacts" in monitor.why_result.value
    finally:
        monitor.close()


def test_the_monitor_sets_window_and_cap_and_shows_the_plan(
    world: dbmod.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    from bulkmail_kernel.widgets.monitor import OutboxMonitor

    monitor = OutboxMonitor("spring", refresh_s=0, db=world)
    try:
        assert (monitor.window.value, monitor.cap.value) == ("", "")
        monitor.window.value = "Mon-Fri 09:00-18:00"
        monitor.window_button.click()
        assert bm.get_campaign("spring", db=world).send_window == "Mon–Fri 09:00–18:00"
        assert "send window: Mon–Fri 09:00–18:00" in monitor.status.value
        monitor.cap.value = "3/7"
        monitor.cap_button.click()
        assert bm.frequency_cap("spring", db=world) == bm.FrequencyCap(3, 7)
        assert "frequency cap: " in monitor.status.value
        monitor.cap.value = ""
        monitor.transactional.value = True
        monitor.cap_button.click()
        info = bm.get_campaign("spring", db=world)
        assert (info.frequency_cap, info.transactional) == (None, True)
        assert "transactional" in monitor.status.value
        monitor.transactional.value = False
        monitor.cap.value = "2/7, please"
        monitor.cap_button.click()  # a bad rule is said in the panel, nothing changes
        assert "2/7, please" in monitor.status.value
        assert bm.get_campaign("spring", db=world).transactional
        plan = monitor.show_plan()
        assert plan is not None
        assert len(plan) == len(bm.queue("spring", db=world))
        assert f"{len(plan):,} queued; the last planned at" in monitor.plan_note.value
        # A window that closes now and then shows in the plan: nothing before 09:00 local.
        local = plan["planned_at"]
        assert ((local.dt.hour >= 9) & (local.dt.hour < 18)).all()
    finally:
        monitor.close()
    from bulkmail_kernel.cli import main

    assert main(["set-campaign-cap", "spring", "global", "--db", str(world.url)]) == 0
    assert "the global rule" in capsys.readouterr().out
    assert not bm.get_campaign("spring", db=world).transactional

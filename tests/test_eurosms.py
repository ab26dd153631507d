"""EuroSMS against a faithful local fake: signatures, error mapping, a real campaign, DLRs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from fakes.eurosms_fake import EuroSmsFake, running_eurosms

from bulkmail_kernel import (
    EuroSmsError,
    RetryPolicy,
    add_eurosms_account,
    add_sender_account,
    create_campaign,
    get_campaign,
    history,
    poll_delivery_reports,
    queue,
    register,
    run_worker,
    send,
    skipped,
    test_send,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.compose.sms import sms_segments
from bulkmail_kernel.compose.templates import Template, load_template, template_from_html
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.db import (
    Campaign,
    Contact,
    ContactPoint,
    Event,
    Message,
    MessageBody,
    SenderAccount,
    Suppression,
    UnsubscribeToken,
)
from bulkmail_kernel.display import ReadableFrame
from bulkmail_kernel.exceptions import ConfigError, SendError, TemplateError
from bulkmail_kernel.transports.eurosms import (
    DEFAULT_BASE_URL,
    EuroSmsClient,
    EuroSmsTransport,
    client_from_settings,
    rcpt_number,
    sign,
    sms_flags,
)

IID, KEY = "1-AB12CD", "integration-key"
NUMBERS = ["+421905111111", "+421905222222", "+421905333333"]


@pytest.fixture
def fake() -> Iterator[EuroSmsFake]:
    with running_eurosms() as f:
        yield f


def test_signature_is_hmac_sha1_hex_of_the_concatenation() -> None:
    # Reference value computed independently: hmac.new(b"key", b"Shop421905111111Ahoj", sha1).
    import hashlib
    import hmac

    expected = hmac.new(b"key", b"Shop421905111111Ahoj", hashlib.sha1).hexdigest()
    assert sign("key", "Shop", 421905111111, "Ahoj") == expected
    assert len(expected) == 40


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("Ahoj", 0),
        ("a" * 161, 2),
        ("Žltý kôň", 4),
        ("ž" * 71, 6),
        ("€" * 80, 0),
        ("€" * 81, 2),
    ],
)
def test_flags_follow_the_segment_count(text: str, flags: int) -> None:
    assert sms_flags(text) == flags


def test_rcpt_is_international_digits_without_plus() -> None:
    assert rcpt_number("0905 111 111", "SK") == 421905111111
    assert rcpt_number("+420 601 123 456") == 420601123456
    with pytest.raises(SendError, match="'12'"):
        rcpt_number("12")


def test_send_one_is_signed_and_enqueued(fake: EuroSmsFake) -> None:
    client = EuroSmsClient(IID, KEY, "Shop", base_url=fake.base_url)
    try:
        answer = client.send_one("+421905111111", "Dobrý deň, " + "x" * 70)
    finally:
        client.close()
    assert answer["err_code"] == "ENQUEUED"
    assert len(answer["uuid"]) == 2  # UCS-2, 81 units: two parts of 67
    path, body = fake.requests[0]
    assert path == "send/one"
    assert body["rcpt"] == 421905111111
    assert isinstance(body["rcpt"], int)
    assert body["flgs"] == 6
    assert fake.sent[0].txt.startswith("Dobrý deň")


def test_wrong_key_is_rejected_by_the_fake(fake: EuroSmsFake) -> None:
    client = EuroSmsClient(IID, "not-the-key", "Shop", base_url=fake.base_url)
    try:
        with pytest.raises(EuroSmsError, match="WRONG_SIGNATURE") as info:
            client.send_one("+421905111111", "Ahoj")
    finally:
        client.close()
    assert info.value.err_code == "WRONG_SIGNATURE"
    assert "credential_ref" in info.value.message
    assert fake.sent == []


def test_o2m_signs_every_recipient_and_reports_wrong_numbers(fake: EuroSmsFake) -> None:
    fake.wrong_numbers.add(421905222222)
    client = EuroSmsClient(IID, KEY, "Shop", base_url=fake.base_url)
    try:
        answer = client.send_many([(n, f"m{i}") for i, n in enumerate(NUMBERS)], "Zľava 20 %")
    finally:
        client.close()
    assert [a["f"] for a in answer["accepted"]] == ["m0", "m2"]
    assert answer["wrong_numbers"] == [{"r": 421905222222, "f": "m1"}]
    assert fake.requests[0][1]["rsp"] == "full"
    assert all(len(a["i"]) == 1 for a in answer["accepted"])


def test_transport_maps_error_codes(fake: EuroSmsFake) -> None:
    fake.wrong_numbers.add(421905222222)
    t = EuroSmsTransport(EuroSmsClient(IID, KEY, "Shop", base_url=fake.base_url))
    try:
        # The transport moves the text as given: the engine never puts a Date on an SMS
        # (the end-to-end test below checks that no "Date:" reaches the gateway).
        ok = t.send(b"Ahoj", mail_from="", rcpt_to=NUMBERS[0])
        wrong = t.send(b"Ahoj", mail_from="", rcpt_to=NUMBERS[1])
        fake.outage = 1
        outage = t.send(b"Ahoj", mail_from="", rcpt_to=NUMBERS[2])
        fake.balance = 0
        broke = t.send(b"Ahoj", mail_from="", rcpt_to=NUMBERS[2])
    finally:
        t.close()
    assert ok.status == "sent"
    assert ok.provider_message_id == fake.sent[0].uuids[0]
    assert fake.sent[0].txt == "Ahoj"
    assert (wrong.status, wrong.suppress) == ("failed", True)
    assert outage.status == "deferred"
    assert broke.status == "fatal"
    assert "NO_BALANCE" in broke.detail


def test_unreachable_provider_defers() -> None:
    t = EuroSmsTransport(EuroSmsClient(IID, KEY, "Shop", base_url="http://127.0.0.1:9/api/v3/"))
    try:
        result = t.send(b"Ahoj", mail_from="", rcpt_to=NUMBERS[0])
    finally:
        t.close()
    assert result.status == "deferred"


# --------------------------------------------------------------------------- campaigns


def _sms_campaign(
    database: dbmod.Database, base_url: str, texts: dict[str, str], *, name: str = "sms"
) -> int:
    """An SMS campaign whose outbox holds ``texts`` (number -> text), as registration stores it."""
    if not _has_account(database):
        add_eurosms_account(
            "eurosms",
            integration_id=IID,
            sender_id="Shop",
            credential_ref="EUROSMS_KEY",
            base_url=base_url,
            db=database,
        )
    info = create_campaign(name, sender="eurosms", channel="sms", db=database)
    now = datetime.now(UTC)
    with database.session() as s:
        for i, (number, text) in enumerate(texts.items()):
            contact = Contact(first_name=f"Meno{i}", registered_at=now)
            point = ContactPoint(
                channel="phone", value=number, normalized=number, mailing_allowed=True
            )
            contact.points.append(point)
            s.add(contact)
            s.flush()
            msg = Message(
                campaign_id=info.id,
                contact_id=contact.id,
                contact_point_id=point.id,
                channel="phone",
                recipient=number,
                message_id_header=f"<{name}.{i}@sms.invalid>",
            )
            s.add(msg)
            s.flush()
            s.add(MessageBody(message_id=msg.id, subject="", body=text.encode()))
        s.get(Campaign, info.id).status = "registered"
    return info.id


def _has_account(database: dbmod.Database) -> bool:
    with database.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(SenderAccount)) > 0


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EUROSMS_KEY", KEY)


@contextmanager
def _transport(database: dbmod.Database) -> Iterator[EuroSmsTransport]:
    """The campaign's transport built from its stored account (send() leaves closing to us)."""
    with database.session() as s:
        a = s.scalars(sa.select(SenderAccount)).one()
        settings, ref, name = a.settings, a.credential_ref, a.name
    t = EuroSmsTransport(client_from_settings(settings, ref, account=name))
    try:
        yield t
    finally:
        t.close()


@pytest.mark.usefixtures("key_env")
def test_campaign_sends_fails_wrong_number_and_polls_dlrs(
    database: dbmod.Database, fake: EuroSmsFake
) -> None:
    fake.wrong_numbers.add(421905222222)
    texts = {
        NUMBERS[0]: "Dobrý deň, Meno0, zľava 20 %.",
        NUMBERS[1]: "Ahoj Meno1",
        NUMBERS[2]: "a" * 161,
    }
    cid = _sms_campaign(database, fake.base_url, texts)
    clock = ManualClock()
    with _transport(database) as t:
        summary = send(
            cid, rate_per_hour=math.inf, progress=False, transport=t, clock=clock, db=database
        )
    assert (summary.sent, summary.failed, summary.status) == (2, 1, "finished")
    q = queue(cid, db=database).set_index("recipient")
    assert q.loc[NUMBERS[1], "status"] == "failed"
    assert "WRONG_NUMBER" in q.loc[NUMBERS[1], "last_error"]
    assert [s.txt for s in fake.sent] == [texts[NUMBERS[0]], texts[NUMBERS[2]]]
    assert [s.flgs for s in fake.sent] == [4, 2]
    with database.session() as s:
        sup = s.scalars(sa.select(Suppression)).all()
        pmids = dict(s.execute(sa.select(Message.recipient, Message.provider_message_id)).all())
    assert [x.normalized for x in sup] == [NUMBERS[1]]
    assert pmids[NUMBERS[2]] == ",".join(fake.sent[1].uuids)  # two segments, two uuids

    # Nothing final yet: ENROUTE is listed but not stored.
    first = poll_delivery_reports(cid, db=database, clock=clock)
    assert list(first["dlr"]) == ["ENROUTE", "ENROUTE"]
    assert first["event"].isna().all()
    assert isinstance(first, ReadableFrame)
    html = first._repr_html_()
    assert "None" not in html  # no final report yet: a blank cell, not Python's None
    assert "<td>ENROUTE</td>" in html
    fake.set_dlr(421905111111, "DELIVRD")
    fake.set_dlr(421905333333, "UNDELIV")
    second = poll_delivery_reports(cid, db=database, clock=clock)
    assert dict(zip(second["recipient"], second["event"], strict=True)) == {
        NUMBERS[0]: "delivered",
        NUMBERS[2]: "bounced",
    }
    assert poll_delivery_reports(cid, db=database, clock=clock).empty  # stored once
    with database.session() as s:
        events = s.execute(
            sa.select(Event.kind, Event.data).where(Event.kind.in_(("delivered", "bounced")))
        ).all()
    assert sorted(k for k, _ in events) == ["bounced", "delivered"]
    assert {d["dlr"] for _, d in events} == {"DELIVRD", "UNDELIV"}


def test_wrong_key_stops_the_campaign_and_marks_nothing(
    database: dbmod.Database, fake: EuroSmsFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EUROSMS_KEY", "a-stale-key")
    cid = _sms_campaign(database, fake.base_url, {n: "Ahoj" for n in NUMBERS})
    # No transport given: the engine opens the account's own (open_transport -> eurosms).
    with pytest.raises(SendError, match="WRONG_SIGNATURE"):
        send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert get_campaign(cid, db=database).status == "stopped"
    assert set(queue(cid, db=database)["status"].astype(str)) == {"queued"}
    assert fake.sent == []
    assert [r[0] for r in fake.requests] == ["send/one"]  # stopped at the first refusal


@pytest.mark.usefixtures("key_env")
def test_outage_is_deferred_then_retried(database: dbmod.Database, fake: EuroSmsFake) -> None:
    cid = _sms_campaign(database, fake.base_url, {NUMBERS[0]: "Ahoj"})
    fake.outage = 2
    with _transport(database) as t:
        summary = send(
            cid,
            rate_per_hour=math.inf,
            progress=False,
            transport=t,
            clock=ManualClock(),
            retry=RetryPolicy(retry_backoff_s=60),
            wait_for_retries=True,
            db=database,
        )
    # Deferred twice, then sent in the same call: one message, sent (as in the database).
    assert (summary.sent, summary.deferred, summary.deferrals, summary.status) == (
        1,
        0,
        2,
        "finished",
    )
    assert len(fake.sent) == 1


# --------------------------------------------------------------------------- accounts


def test_account_keeps_only_the_name_of_the_secret(
    database: dbmod.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EUROSMS_KEY", KEY)
    info = add_eurosms_account(
        "sms", integration_id=IID, sender_id="Shop", credential_ref="EUROSMS_KEY", db=database
    )
    assert info["kind"] == "eurosms"
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount)).one()
        assert row.credential_ref == "EUROSMS_KEY"
        assert KEY not in repr(row.settings)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"integration_id": "ABC"}, "integration_id='ABC'"),
        ({"sender_id": "A-very-long-sender"}, "sender id"),
        ({"credential_ref": "MISSING_ENV"}, "MISSING_ENV is not set"),
        ({"credential_ref": "s3cr3t key!"}, "never put the secret"),
    ],
)
def test_bad_account_is_refused_and_not_saved(
    database: dbmod.Database, kwargs: dict[str, str], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EUROSMS_KEY", KEY)
    args = {"integration_id": IID, "sender_id": "Shop", "credential_ref": "EUROSMS_KEY", **kwargs}
    with pytest.raises(ConfigError, match=match):
        add_eurosms_account("sms", db=database, **args)
    assert not _has_account(database)


# --------------------------------------------------------------------------- the real engine path

VALUES = {"company_name": "Labka", "due_date": "2025-08-15", "clinic_phone": "+421559876543"}


def _phone_people(database: dbmod.Database) -> pd.DataFrame:
    """Import four people with phone numbers (one without SMS consent); return their phone rows."""
    frame = pd.DataFrame(
        {
            "first_name": ["Ján", "Eva", "Olga", "Peter"],
            "last_name": ["Novák", "Malá", "Ivanova", "Kráľ"],
            "phone": ["0905 111 111", "+421 905 222 222", "0905333333", "0905 444 444"],
            "phone_allowed": ["yes", "yes", "yes", "no"],
            "pet_name": ["Rex", "", "Micka", "Bobík"],
        }
    )
    import_contacts(frame, db=database, progress=False, region="SK")
    people = contacts_frame(database)
    return people[people["channel"] == "phone"].reset_index(drop=True)


def _eurosms_account(database: dbmod.Database, base_url: str) -> None:
    # Through the generic entry point: it must hand over to add_eurosms_account's checks.
    add_sender_account(
        "sms",
        kind="eurosms",
        from_email="",
        from_name="Labka",
        settings={"integration_id": IID, "sender_id": "Shop", "base_url": base_url},
        credential_ref="EUROSMS_KEY",
        db=database,
    )


def _contact_of(people: pd.DataFrame, number: str) -> int:
    return int(people.set_index("address").loc[number, "contact_id"])


@pytest.mark.usefixtures("key_env")
def test_registered_sms_campaign_goes_out_through_eurosms(
    database: dbmod.Database, fake: EuroSmsFake
) -> None:
    fake.wrong_numbers.add(421905222222)
    people = _phone_people(database)
    _eurosms_account(database, fake.base_url)
    info = create_campaign(
        "reminder", sender="sms", template=load_template("sms_reminder_sk"), values=VALUES,
        db=database,
    )  # fmt: skip
    assert info.channel == "sms"  # from the template; the outbox and suppressions say "phone"
    q = register("reminder", people, db=database)
    assert sorted(q["recipient"]) == NUMBERS  # E.164; Peter gave no SMS consent
    assert list(skipped("reminder", db=database)["reason"]) == ["mailing not allowed"]
    with database.session() as s:
        stored = dict(
            s.execute(
                sa.select(Message.recipient, MessageBody.body).join(
                    MessageBody, MessageBody.message_id == Message.id
                )
            ).all()
        )
        assert set(s.scalars(sa.select(Message.channel))) == {"phone"}
        assert s.scalar(sa.select(sa.func.count()).select_from(UnsubscribeToken)) == 0
    jan = stored[NUMBERS[0]].decode("utf-8")
    assert jan.startswith("Labka: pripominame termin ")
    assert "pre Rex." in jan
    assert jan.endswith("Zmena: +421559876543")
    assert "pre " not in stored[NUMBERS[1]].decode()  # Eva has no pet: the clause is left out

    clock = ManualClock(start=datetime.now(UTC))
    # No transport given: the engine opens the account's own EuroSmsTransport.
    summary = send("reminder", rate_per_hour=math.inf, progress=False, clock=clock, db=database)
    assert (summary.sent, summary.failed, summary.status) == (2, 1, "finished")
    # The fake checked every HMAC signature; the texts arrived as registered, with no Date line.
    assert {s.rcpt: s.txt for s in fake.sent} == {
        421905111111: jan,
        421905333333: stored[NUMBERS[2]].decode(),
    }
    assert all(s.flgs == 0 for s in fake.sent)  # the template is GSM-7, one part each
    q = queue("reminder", db=database).set_index("recipient")
    assert q.loc[NUMBERS[1], "status"] == "failed"
    assert "WRONG_NUMBER" in q.loc[NUMBERS[1], "last_error"]
    with database.session() as s:
        sup = s.execute(sa.select(Suppression.channel, Suppression.normalized)).all()
    assert sup == [("phone", NUMBERS[1])]
    # A later campaign to the same people skips the wrong number at registration.
    create_campaign(
        "reminder2", sender="sms", template=load_template("sms_reminder_sk"), values=VALUES,
        db=database,
    )  # fmt: skip
    register("reminder2", people, db=database)
    again = skipped("reminder2", db=database).set_index("address")
    assert again.loc[NUMBERS[1], "reason"] == "suppressed"

    fake.set_dlr(421905111111, "DELIVRD")
    fake.set_dlr(421905333333, "EXPIRED")
    polled = poll_delivery_reports("reminder", db=database, clock=clock)
    assert sorted(polled["event"]) == ["bounced", "delivered"]
    jan_history = history(_contact_of(people, NUMBERS[0]), db=database)
    jan_history = jan_history[jan_history["campaign"] == "reminder"]
    assert list(jan_history["kind"]) == ["registered", "sent", "delivered"]
    assert jan_history["detail"].iloc[-1] == "EuroSMS delivery report: DELIVRD"
    eva_history = history(_contact_of(people, NUMBERS[1]), db=database)
    eva_history = eva_history[eva_history["campaign"] == "reminder"]
    assert list(eva_history["kind"]) == ["registered", "failed", "suppressed"]


def test_wrong_key_stops_a_registered_sms_campaign(
    database: dbmod.Database, fake: EuroSmsFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EUROSMS_KEY", KEY)
    people = _phone_people(database)
    _eurosms_account(database, fake.base_url)
    create_campaign(
        "reminder", sender="sms", template=load_template("sms_reminder_sk"), values=VALUES,
        db=database,
    )  # fmt: skip
    register("reminder", people, db=database)
    monkeypatch.setenv("EUROSMS_KEY", "a-stale-key")  # rotated in EuroSMS, not here
    with pytest.raises(SendError, match=r"stopped: EuroSMS send/one .*WRONG_SIGNATURE") as info:
        send("reminder", rate_per_hour=math.inf, progress=False, db=database)
    assert "integration key" in info.value.message
    assert get_campaign("reminder", db=database).status == "stopped"
    assert set(queue("reminder", db=database)["status"].astype(str)) == {"queued"}
    assert fake.sent == []
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).where(Event.kind == "sent")) == 0


@pytest.mark.usefixtures("key_env")
def test_worker_sends_a_scheduled_sms_campaign(database: dbmod.Database, fake: EuroSmsFake) -> None:
    people = _phone_people(database)
    _eurosms_account(database, fake.base_url)
    create_campaign(
        "reminder", sender="sms", template=load_template("sms_reminder_sk"), values=VALUES,
        rate_per_hour=3_600_000, scheduled_at=datetime.now(UTC) - timedelta(minutes=1),
        db=database,
    )  # fmt: skip
    register("reminder", people, db=database)
    assert get_campaign("reminder", db=database).status == "scheduled"
    assert run_worker(db=database, exit_when_idle=True, poll_interval_s=0.01) == 3
    assert get_campaign("reminder", db=database).status == "finished"
    assert sorted(s.rcpt for s in fake.sent) == [421905111111, 421905222222, 421905333333]
    assert not any(s.txt.startswith("Date:") for s in fake.sent)


@pytest.mark.usefixtures("key_env")
def test_too_many_segments_is_refused_naming_the_recipient_unless_fitted(
    database: dbmod.Database, fake: EuroSmsFake
) -> None:
    people = _phone_people(database)
    _eurosms_account(database, fake.base_url)
    # Slovak diacritics force UCS-2: 2 parts of 67 as written, 1 part of 160 once fitted.
    tmpl = Template(
        name="zlava",
        subject="",
        channel="sms",
        sms="Dobrý deň {{ first_name }}, ďakujeme za vernosť. Zľava 20 % na krmivo "
        "pre {{ pet_name | default('miláčika') }} platí do nedele. Vaša Labka",
    )
    create_campaign("zlava", sender="sms", template=tmpl, db=database)
    with pytest.raises(SendError, match=r"\+421905111111.* 2 segments \(UCS-2.*max_segments=1"):
        register("zlava", people, max_segments=1, db=database)
    assert queue("zlava", db=database).empty  # nothing half-registered
    # The default limit (6) takes it as written; fitting to GSM-7 makes it one part.
    create_campaign("zlava-6", sender="sms", template=tmpl, db=database)
    as_written = register("zlava-6", people, db=database)["subject"]
    assert [sms_segments(t).segments for t in as_written] == [2, 2, 2]
    create_campaign("zlava-fit", sender="sms", template=tmpl, db=database)
    register("zlava-fit", people, max_segments=1, fit_to_gsm7=True, db=database)
    q = queue("zlava-fit", db=database).set_index("recipient")
    text = q.loc[NUMBERS[0], "subject"]
    assert text.startswith("Dobry den Jan, dakujeme za vernost. Zlava 20 %")
    assert sms_segments(text).encoding == "GSM-7"
    assert sms_segments(text).segments == 1


def test_sms_campaign_refuses_mismatched_template_account_and_points(
    database: dbmod.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EUROSMS_KEY", KEY)
    monkeypatch.setenv("BULKMAIL_UNSUBSCRIBE_URL", "https://shop.sk/u?t={token}")
    _eurosms_account(database, DEFAULT_BASE_URL)
    email_template = template_from_html("<p>Ahoj</p>", "Ahoj", name="mail")
    with pytest.raises(ConfigError, match="kind 'eurosms' cannot send email"):
        create_campaign("x", sender="sms", template=email_template, channel="email", db=database)
    with pytest.raises(ConfigError, match="'sms' but template 'mail' is an email template"):
        create_campaign("x", sender="sms", template=email_template, channel="sms", db=database)
    with pytest.raises(ConfigError, match="'email' or 'sms'"):
        create_campaign("x", sender="sms", channel="fax", db=database)
    import_contacts(
        pd.DataFrame({"first_name": ["Eva"], "email": ["eva@a.sk"], "mailing_allowed": ["yes"]}),
        db=database,
        progress=False,
    )
    reminder = load_template("sms_reminder_sk")
    # Its values are checked now: without company_name and the rest it is refused at once.
    with pytest.raises(TemplateError, match="needs the value 'company_name'"):
        create_campaign("x", sender="sms", template=reminder, db=database)
    create_campaign("x", sender="sms", template=reminder, values=reminder.sample, db=database)
    assert register("x", contacts_frame(database), db=database).empty
    assert list(skipped("x", db=database)["reason"]) == ["not a phone contact point (email)"]


def test_eurosms_account_through_add_sender_account_is_checked(
    database: dbmod.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EUROSMS_KEY", raising=False)
    with pytest.raises(ConfigError, match="EUROSMS_KEY is not set"):
        _eurosms_account(database, DEFAULT_BASE_URL)
    with pytest.raises(ConfigError, match=r"lacks 'sender_id'.*add_eurosms_account"):
        add_sender_account(
            "sms", kind="eurosms", from_email="", settings={"integration_id": IID},
            credential_ref="EUROSMS_KEY", db=database,
        )  # fmt: skip
    assert not _has_account(database)
    monkeypatch.setenv("EUROSMS_KEY", KEY)
    _eurosms_account(database, DEFAULT_BASE_URL)
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount)).one()
        assert (row.kind, row.settings["sender_id"], row.credential_ref) == (
            "eurosms",
            "Shop",
            "EUROSMS_KEY",
        )
    with pytest.raises(ConfigError, match="edit it with add_eurosms_account"):
        add_sender_account("sms", kind="smtp", from_email="a@b.sk", db=database)


@pytest.mark.usefixtures("key_env")
def test_test_send_of_an_sms_campaign_leaves_the_queue_alone(
    database: dbmod.Database, fake: EuroSmsFake
) -> None:
    people = _phone_people(database)
    _eurosms_account(database, fake.base_url)
    create_campaign(
        "reminder",
        sender="sms",
        template=load_template("sms_reminder_sk"),
        values=VALUES,
        db=database,
    )
    before = register("reminder", people, db=database)
    out = test_send("reminder", ["0905 999 999"], db=database)
    assert list(out["status"]) == ["sent"]
    (sms,) = fake.sent
    assert sms.rcpt == 421905999999
    assert sms.txt == out.loc[0, "subject"]
    assert sms.txt.startswith("TEST: Labka: pripominame termin ")
    pd.testing.assert_frame_equal(before, queue("reminder", db=database))

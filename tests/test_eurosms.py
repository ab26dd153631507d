"""EuroSMS against a faithful local fake: signatures, error mapping, a real campaign, DLRs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from fakes.eurosms_fake import EuroSmsFake, running_eurosms

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns import create_campaign, get_campaign, queue
from bulkmail_kernel.db import (
    Campaign,
    Contact,
    ContactPoint,
    Event,
    Message,
    MessageBody,
    SenderAccount,
    Suppression,
)
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.sending import RetryPolicy, send
from bulkmail_kernel.throttle import ManualClock
from bulkmail_kernel.transports.sms import (
    EuroSmsClient,
    EuroSmsError,
    EuroSmsTransport,
    add_eurosms_account,
    client_from_settings,
    poll_delivery_reports,
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
        ok = t.send(
            b"Date: Mon, 06 Jan 2025 09:00:00 +0000\r\nAhoj", mail_from="", rcpt_to=NUMBERS[0]
        )
        wrong = t.send(b"Ahoj", mail_from="", rcpt_to=NUMBERS[1])
        fake.outage = 1
        outage = t.send(b"Ahoj", mail_from="", rcpt_to=NUMBERS[2])
        fake.balance = 0
        broke = t.send(b"Ahoj", mail_from="", rcpt_to=NUMBERS[2])
    finally:
        t.close()
    assert ok.status == "sent"
    assert ok.provider_message_id == fake.sent[0].uuids[0]
    assert fake.sent[0].txt == "Ahoj"  # the engine's Date line is not part of the SMS
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
    assert (summary.sent, summary.deferred, summary.status) == (1, 2, "finished")
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

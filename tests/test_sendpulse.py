"""SendPulse against a faithful local fake: tokens, accounts, address books, campaigns, limits."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from fakes.sendpulse_fake import SendPulseFake, running_sendpulse

from bulkmail_kernel import (
    SendPulseError,
    add_sender_account,
    add_sendpulse_account,
    create_campaign,
    get_campaign,
    provider_status,
    queue,
    register,
    send_campaign_via_sendpulse,
    sendpulse_report,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.db import (
    Campaign,
    Contact,
    ContactPoint,
    Event,
    SenderAccount,
    UnsubscribeToken,
)
from bulkmail_kernel.display import ReadableFrame
from bulkmail_kernel.exceptions import ConfigError, SendError, TemplateError
from bulkmail_kernel.transports.sendpulse import SendPulseClient

SECRET = "sp-client-secret"
HTML = """<html><head><style>p { color: #333; }</style></head><body>
<p>Dobrý deň, {{ name }} {{surname}}!</p><p>Zľava 20 % len do nedele.</p></body></html>"""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=datetime(2025, 3, 3, 9, 0, tzinfo=UTC))


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[SendPulseFake]:
    with running_sendpulse(SendPulseFake(clock=clock)) as f:
        yield f


@pytest.fixture
def client(fake: SendPulseFake, clock: ManualClock) -> Iterator[SendPulseClient]:
    with SendPulseClient(fake.client_id, SECRET, base_url=fake.base_url, clock=clock) as c:
        yield c


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_SECRET", SECRET)
    monkeypatch.setenv("BULKMAIL_UNSUBSCRIBE_URL", "https://shop.sk/u?t={token}")


def _book(client: SendPulseClient, n: int = 1) -> int:
    book = client.create_address_book(f"book {datetime.now(UTC).timestamp()}")
    client.add_emails(book, [{"email": f"a{i}@example.sk", "variables": {}} for i in range(n)])
    client.wait_for_address_book(book)
    return book


# --------------------------------------------------------------------------- tokens


def test_token_is_cached_until_it_expires(
    client: SendPulseClient, fake: SendPulseFake, clock: ManualClock
) -> None:
    for _ in range(3):
        assert client.senders()[0]["email"] == "news@shop.sk"
    assert (client.tokens_fetched, fake.token_requests) == (1, 1)
    clock.advance(3600)
    client.senders()
    assert fake.token_requests == 2


def test_a_401_fetches_one_new_token_and_retries(
    client: SendPulseClient, fake: SendPulseFake
) -> None:
    client.senders()
    fake.revoke_tokens()
    assert client.senders()[0]["name"] == "Shop"
    assert fake.token_requests == 2
    # A token that is refused again is not chased in a loop: one refresh, then the error.
    fake.revoke_tokens()
    fake.token_lifetime_s = 0
    with pytest.raises(SendPulseError, match="Unauthorized") as info:
        client.senders()
    assert info.value.http_status == 401
    assert fake.token_requests == 3


def test_wrong_secret_gives_the_providers_message(fake: SendPulseFake, clock: ManualClock) -> None:
    with (
        SendPulseClient(fake.client_id, "wrong", base_url=fake.base_url, clock=clock) as c,
        pytest.raises(SendPulseError, match=r"Client authentication failed\.") as info,
    ):
        c.senders()
    assert (info.value.http_status, info.value.error_code) == (401, 1)


# --------------------------------------------------------------------------- accounts


def _accounts(database: dbmod.Database) -> list[SenderAccount]:
    with database.session() as s:
        return list(s.scalars(sa.select(SenderAccount)))


def test_account_is_saved_only_after_sendpulse_accepts_it(
    database: dbmod.Database,
    fake: SendPulseFake,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = {"client_id": fake.client_id, "base_url": fake.base_url, "clock": clock, "db": database}
    monkeypatch.setenv("SP_WRONG", "not-the-secret")
    with pytest.raises(SendPulseError, match="Client authentication failed"):
        add_sendpulse_account("sp", from_email="news@shop.sk", secret_env="SP_WRONG", **args)
    assert _accounts(database) == []
    with pytest.raises(ConfigError, match="not a sender address in SendPulse"):
        add_sendpulse_account("sp", from_email="other@shop.sk", secret_env="SP_SECRET", **args)
    assert _accounts(database) == []

    info = add_sendpulse_account(
        "sp", from_email="news@shop.sk", from_name="Shop", secret_env="SP_SECRET", **args
    )
    (row,) = _accounts(database)
    assert (row.id, row.kind, row.credential_ref) == (info["id"], "sendpulse", "SP_SECRET")
    assert SECRET not in repr(row.settings)
    # Editing re-checks the credentials; the sender address is fixed once saved.
    add_sendpulse_account(
        "sp", from_email="news@shop.sk", from_name="Shop s.r.o.", secret_env="SP_SECRET", **args
    )
    assert _accounts(database)[0].from_name == "Shop s.r.o."
    fake.senders.append({"email": "promo@shop.sk", "name": "Promo"})
    with pytest.raises(ConfigError, match="cannot be changed"):
        add_sendpulse_account("sp", from_email="promo@shop.sk", secret_env="SP_SECRET", **args)
    assert _accounts(database)[0].from_email == "news@shop.sk"


# --------------------------------------------------------------------------- address books


def test_address_book_is_filled_in_batches(client: SendPulseClient, fake: SendPulseFake) -> None:
    book = client.create_address_book("spring")
    contacts = [
        {"email": f"u{i}@example.sk", "variables": {"name": f"Meno{i}"}} for i in range(1234)
    ]
    assert client.add_emails(book, contacts, batch_size=500) == 3
    assert fake.books[book]["batches"] == [500, 500, 234]
    assert client.address_book(book)["status"] == 1  # still being processed
    info = client.wait_for_address_book(book)
    assert (info["status"], info["all_email_qty"]) == (0, 1234)
    assert fake.schema_errors == []


def test_missing_book_is_the_documented_error(client: SendPulseClient) -> None:
    with pytest.raises(SendPulseError, match="Book not found") as info:
        client.address_book(999999)
    assert (info.value.http_status, info.value.error_code) == (404, 213)


def test_fake_checks_bodies_against_the_openapi_schemas(
    client: SendPulseClient, fake: SendPulseFake
) -> None:
    headers = {"Authorization": f"Bearer {client.token()}"}
    with httpx.Client(base_url=fake.base_url, headers=headers) as raw:
        missing = raw.post("/addressbooks", json={})
        wrong_type = raw.post("/addressbooks", json={"bookName": 42})
        book = _book(client)
        bad_list = raw.post(
            "/campaigns",
            json={
                "sender_name": "S",
                "sender_email": "news@shop.sk",
                "subject": "x",
                "body": base64.b64encode(b"<p>x</p>").decode(),
                "list_id": "abc",
            },
        )
        not_base64 = raw.post(
            "/campaigns",
            json={
                "sender_name": "S",
                "sender_email": "news@shop.sk",
                "subject": "x",
                "body": "<p>raw html</p>",
                "list_id": book,
            },
        )
    assert missing.json() == {"message": "Argument bookName missing", "error_code": 422}
    assert wrong_type.status_code == 422
    assert bad_list.status_code == 422
    assert not_base64.json() == {"message": "Argument body is invalid string", "error_code": 422}
    assert any("list_id" in e for e in fake.schema_errors)
    assert any("bookName" in e for e in fake.schema_errors)


# --------------------------------------------------------------------------- limits


def test_ten_requests_per_second_are_honoured(
    client: SendPulseClient, fake: SendPulseFake, clock: ManualClock
) -> None:
    for _ in range(35):
        client.senders()
    times = [t for *_, t in fake.log]
    assert fake.rejected_for_rate == 0
    assert all(sum(1 for u in times if t <= u < t + 1.0) <= 10 for t in times)
    assert clock.slept  # the client waited on the clock, never for real
    assert clock.elapsed == pytest.approx(3.0)


def test_the_fake_refuses_an_eleventh_request_in_a_second(
    fake: SendPulseFake, clock: ManualClock
) -> None:
    with (
        SendPulseClient(
            fake.client_id, SECRET, base_url=fake.base_url, clock=clock, requests_per_s=100
        ) as greedy,
        pytest.raises(SendPulseError, match="Too Many Requests") as info,
    ):
        for _ in range(20):
            greedy.senders()
    assert info.value.http_status == 429


def test_a_fifth_campaign_in_an_hour_waits(
    client: SendPulseClient, fake: SendPulseFake, clock: ManualClock
) -> None:
    book = _book(client)
    args = {
        "sender_name": "Shop",
        "sender_email": "news@shop.sk",
        "subject": "Ahoj",
        "html": "<p>Ahoj {{name}}</p>",
        "list_id": book,
    }
    start = clock.elapsed
    for _ in range(4):
        client.create_campaign(**args)
    assert client.campaign_wait_s() == pytest.approx(3600 - (clock.elapsed - start), abs=1)
    client.create_campaign(**args)
    assert clock.elapsed - start >= 3600
    assert fake.rejected_for_rate == 0
    assert len(fake.campaigns) == 5


def test_past_send_date_is_refused_and_a_future_one_is_formatted(
    client: SendPulseClient, fake: SendPulseFake, clock: ManualClock
) -> None:
    book = _book(client)
    args = {
        "sender_name": "Shop",
        "sender_email": "news@shop.sk",
        "subject": "Ahoj",
        "html": "<p>Ahoj</p>",
        "list_id": book,
    }
    with pytest.raises(ConfigError, match="in the past"):
        client.create_campaign(**args, send_date=clock.now() - timedelta(minutes=1))
    answer = client.create_campaign(**args, send_date=datetime(2025, 3, 4, 10, 30, tzinfo=UTC))
    assert fake.campaigns[answer["id"]]["send_date"] == "2025-03-04 10:30:00"


# --------------------------------------------------------------------------- campaign mode


def _contacts(database: dbmod.Database, n: int) -> None:
    now = datetime.now(UTC)
    with database.session() as s:
        for i in range(n):
            c = Contact(
                first_name=f"Ľubica{i}", last_name="Nováková", patronymic=f"P{i}", registered_at=now
            )
            c.points.append(
                ContactPoint(
                    channel="email",
                    value=f"u{i}@example.sk",
                    normalized=f"u{i}@example.sk",
                    mailing_allowed=True,
                )
            )
            s.add(c)


def _campaign(
    database: dbmod.Database, fake: SendPulseFake, clock: ManualClock, html: str = HTML, n: int = 7
) -> int:
    if not _accounts(database):
        add_sendpulse_account(
            "sp",
            client_id=fake.client_id,
            from_email="news@shop.sk",
            from_name="Shop",
            secret_env="SP_SECRET",
            base_url=fake.base_url,
            clock=clock,
            db=database,
        )
        _contacts(database, n)
    tmpl = template_from_html(html, "Jarná zľava pre {{ name }}", name="spring")
    name = f"spring{len(fake.campaigns)}-{len(fake.books)}"
    # A campaign-wide value renders locally, but SendPulse could not substitute it.
    values = {"city": "Žilina"}
    info = create_campaign(name, sender="sp", template=tmpl, values=values, db=database)
    register(info.id, contacts_frame(database), db=database)
    return info.id


def test_campaign_goes_out_through_sendpulse(
    database: dbmod.Database, fake: SendPulseFake, clock: ManualClock
) -> None:
    cid = _campaign(database, fake, clock)
    result = send_campaign_via_sendpulse(
        cid, batch_size=3, clock=clock, progress=False, db=database
    )
    assert (result.recipients, result.batches, result.status_text) == (7, 3, "copying addresses")
    book = fake.books[result.book_id]
    assert book["batches"] == [3, 3, 1]
    assert book["emails"][0] == {
        "email": "u0@example.sk",
        "variables": {"name": "Ľubica0", "patronymic": "P0", "surname": "Nováková"},
    }
    sent = fake.campaigns[result.provider_campaign_id]
    # The fake decoded the base64 body: UTF-8 intact, SendPulse merge tags, CSS inlined.
    assert "Dobrý deň, {{name}} {{surname}}!" in sent["html"]
    assert 'style="color: #333' in sent["html"]
    assert sent["subject"] == "Jarná zľava pre {{name}}"
    assert (sent["list_id"], sent["sender_email"], "type" in sent) == (
        result.book_id,
        "news@shop.sk",
        False,
    )
    assert fake.schema_errors == []

    assert set(queue(cid, db=database)["status"].astype(str)) == {"sent"}
    assert get_campaign(cid, db=database).status == "finished"
    with database.session() as s:
        ref = s.get(Campaign, cid).provider_ref["sendpulse"]
        kinds = s.scalars(sa.select(Event.kind).where(Event.campaign_id == cid)).all()
    assert (ref["book_id"], ref["campaign_id"], ref["status"]) == (
        result.book_id,
        result.provider_campaign_id,
        13,
    )
    assert kinds.count("sent") == 7

    fake.complete(result.provider_campaign_id)
    report = sendpulse_report(cid, clock=clock, db=database)
    assert report.loc[0, "status_text"] == "sent"
    assert report.loc[0, "campaign_id"] == result.provider_campaign_id
    with pytest.raises(SendError, match="already handed to SendPulse"):
        send_campaign_via_sendpulse(cid, clock=clock, progress=False, db=database)


def test_draft_is_left_for_the_sendpulse_cabinet(
    database: dbmod.Database, fake: SendPulseFake, clock: ManualClock
) -> None:
    cid = _campaign(database, fake, clock)
    result = send_campaign_via_sendpulse(cid, draft=True, clock=clock, progress=False, db=database)
    assert (result.status, result.status_text, result.draft) == (26, "draft", True)
    assert fake.campaigns[result.provider_campaign_id]["type"] == "draft"
    frame = queue(cid, db=database)
    assert set(frame["status"].astype(str)) == {"removed"}
    assert frame["last_error"].str.contains(f"draft {result.provider_campaign_id}").all()
    with database.session() as s:
        assert (
            s.scalar(
                sa.select(sa.func.count()).where(
                    Event.kind == "handed_over", Event.campaign_id == cid
                )
            )
            == 7
        )


@pytest.mark.parametrize(
    ("html", "match"),
    [
        ("<p>Hello {{ city }}</p>", "'city' would be sent literally"),
        ("<p>Hello {{ name|upper }}</p>", "no filters or expressions"),
        ("<p>{% if name %}Hello{% endif %}</p>", "Jinja statements"),
    ],
)
def test_templates_with_other_variables_are_refused_before_anything_is_sent(
    database: dbmod.Database, fake: SendPulseFake, clock: ManualClock, html: str, match: str
) -> None:
    cid = _campaign(database, fake, clock, html=html)
    calls = len(fake.log)
    with pytest.raises(TemplateError, match=match):
        send_campaign_via_sendpulse(cid, clock=clock, progress=False, db=database)
    assert len(fake.log) == calls  # not even a token was asked for
    assert fake.books == {}
    assert set(queue(cid, db=database)["status"].astype(str)) == {"queued"}


def test_campaign_waits_for_the_hourly_limit_and_says_so(
    database: dbmod.Database,
    fake: SendPulseFake,
    clock: ManualClock,
    client: SendPulseClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    book = _book(client)
    for _ in range(4):
        client.create_campaign(
            sender_name="Shop",
            sender_email="news@shop.sk",
            subject="x",
            html="<p>x</p>",
            list_id=book,
        )
    cid = _campaign(database, fake, clock)
    with pytest.raises(SendError, match=r"4 campaigns per hour.*would wait"):
        send_campaign_via_sendpulse(
            cid, wait=False, client=client, clock=clock, progress=False, db=database
        )
    books = len(fake.books)
    before = clock.now()
    with caplog.at_level(logging.WARNING, logger="bulkmail"):
        result = send_campaign_via_sendpulse(
            cid, client=client, clock=clock, progress=False, db=database
        )
    assert len(fake.books) == books  # the book of the refused attempt was reused
    assert result.waited_s > 3000
    assert "waits" in result.notes[-1]
    # The time it waits until reads in the analyst's zone (default Europe/Bratislava).
    note = result.notes[-1]
    assert note.endswith("(Europe/Bratislava)")
    assert " UTC" not in note
    found = re.search(r"until (\d\d:\d\d:\d\d)", note)
    assert found
    local = ZoneInfo("Europe/Bratislava")
    until = datetime.combine(before.date(), time.fromisoformat(found.group(1)), local)
    assert before.astimezone(local) < until <= clock.now().astimezone(local)
    assert str(result).splitlines()[1:] == list(result.notes)
    assert "4 campaigns per hour" in caplog.text
    assert fake.rejected_for_rate == 0


def test_hourly_limit_is_remembered_across_processes(
    database: dbmod.Database, fake: SendPulseFake, clock: ManualClock
) -> None:
    # Four campaigns handed over by "other processes" (fresh clients each time)...
    for _ in range(4):
        cid = _campaign(database, fake, clock)
        send_campaign_via_sendpulse(cid, clock=clock, progress=False, db=database)
    # ...so a fifth, again with a fresh client, knows it must wait.
    cid = _campaign(database, fake, clock)
    with pytest.raises(SendError, match="would wait"):
        send_campaign_via_sendpulse(cid, wait=False, clock=clock, progress=False, db=database)
    assert fake.rejected_for_rate == 0


# --------------------------------------------------------------------------- through the engine


def test_add_sender_account_hands_sendpulse_to_its_checked_function(
    database: dbmod.Database, fake: SendPulseFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = {"kind": "sendpulse", "from_name": "Shop", "db": database}
    settings = {"client_id": fake.client_id, "base_url": fake.base_url}
    monkeypatch.setenv("SP_WRONG", "not-the-secret")
    with pytest.raises(SendPulseError, match="Client authentication failed"):
        add_sender_account(
            "sp", from_email="news@shop.sk", settings=settings, credential_ref="SP_WRONG", **args
        )
    with pytest.raises(ConfigError, match=r"lacks 'client_id'.*add_sendpulse_account"):
        add_sender_account("sp", from_email="news@shop.sk", credential_ref="SP_SECRET", **args)
    with pytest.raises(ConfigError, match=r"'host' are not used.*add_sendpulse_account"):
        add_sender_account(
            "sp",
            from_email="news@shop.sk",
            settings={**settings, "host": "smtp-pulse.com"},
            credential_ref="SP_SECRET",
            **args,
        )
    assert _accounts(database) == []
    info = add_sender_account(
        "sp", from_email="news@shop.sk", settings=settings, credential_ref="SP_SECRET", **args
    )
    assert (info.kind, info.from_email, info.settings["mode"]) == (
        "sendpulse",
        "news@shop.sk",
        "campaign",
    )
    fake.senders.append({"email": "promo@shop.sk", "name": "Promo"})
    with pytest.raises(ConfigError, match="cannot be changed"):
        add_sender_account(
            "sp", from_email="promo@shop.sk", settings=settings, credential_ref="SP_SECRET", **args
        )
    with pytest.raises(ConfigError, match="edit it with add_sendpulse_account"):
        add_sender_account(
            "sp", kind="smtp", from_email="promo@shop.sk", settings={"host": "h"}, db=database
        )
    assert [(a.kind, a.from_email) for a in _accounts(database)] == [("sendpulse", "news@shop.sk")]


def test_sendpulse_campaign_needs_no_unsubscribe_pattern_and_reports_its_ids(
    database: dbmod.Database,
    fake: SendPulseFake,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SendPulse puts its own unsubscribe link in every campaign: no pattern of ours is needed.
    monkeypatch.delenv("BULKMAIL_UNSUBSCRIBE_URL")
    cid = _campaign(database, fake, clock)
    assert len(queue(cid, db=database)) == 7
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(UnsubscribeToken)) == 0
    assert provider_status(cid, db=database).empty  # nothing handed over yet
    result = send_campaign_via_sendpulse(cid, clock=clock, progress=False, db=database)
    status = provider_status(cid, db=database)
    assert status.loc[
        0, ["provider", "book_id", "campaign_id", "status", "status_text"]
    ].tolist() == [
        "sendpulse",
        result.book_id,
        result.provider_campaign_id,
        13,
        "copying addresses",
    ]
    fake.complete(result.provider_campaign_id)
    sendpulse_report(cid, clock=clock, db=database)  # asks SendPulse, stores what it says
    assert provider_status(cid, db=database).loc[0, "status_text"] == "sent"


def test_the_sendpulse_report_reads_as_a_report(
    database: dbmod.Database,
    fake: SendPulseFake,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BULKMAIL_TZ", "Europe/Bratislava")
    cid = _campaign(database, fake, clock)
    start = clock.now()
    result = send_campaign_via_sendpulse(cid, clock=clock, progress=False, db=database)
    handed = clock.now()
    fake.complete(result.provider_campaign_id)
    clock.sleep(75.25)
    report = sendpulse_report(cid, clock=clock, db=database)
    status = provider_status(cid, db=database)
    for frame in (report, status):
        assert isinstance(frame, ReadableFrame)
        # Times are times, in the local zone (UTC+1 in March), shown to the second.
        created, checked = frame["created_at"].iloc[0], frame["checked_at"].iloc[0]
        assert str(frame["created_at"].dt.tz) == "Europe/Bratislava"
        assert start <= created <= handed
        assert checked == clock.now()
        assert checked.microsecond == 250000
        html = frame._repr_html_()
        assert f"<td>{created.astimezone(UTC) + timedelta(hours=1):%Y-%m-%d %H:%M:%S}</td>" in html
        assert f"<td>{clock.now() + timedelta(hours=1):%Y-%m-%d %H:%M:%S}</td>" in html
        assert "+00:00" not in html
        assert ".25" not in html
        for missing in ("NaT", "None", "nan", "&lt;NA&gt;"):
            assert missing not in html  # no send date: a blank cell
        assert "<td>sent</td>" in html


def test_a_printed_result_says_what_happened_in_words(
    database: dbmod.Database, fake: SendPulseFake, clock: ManualClock
) -> None:
    cid = _campaign(database, fake, clock)
    result = send_campaign_via_sendpulse(cid, draft=True, clock=clock, progress=False, db=database)
    text = str(result)
    assert text == (
        f"campaign {get_campaign(cid, db=database).name!r} handed to SendPulse as a draft, to "
        f"review and send from your SendPulse account: 7 recipients in address book "
        f"{result.book_id} (1 batch), SendPulse campaign {result.provider_campaign_id}, "
        "status: draft"
    )
    assert "SendPulseResult(" not in text

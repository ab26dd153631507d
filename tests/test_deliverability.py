"""Deliverability: golden messages of every predefined template, header integrity, verified TLS."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import logging
import math
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import dkim as dkimpy
import pandas as pd
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bulkmail_kernel import (
    SenderInfo,
    add_sender_account,
    create_campaign,
    get_campaign,
    queue,
    register,
    run_worker,
    send,
)
from bulkmail_kernel.campaigns.samples import send_samples
from bulkmail_kernel.clock import ManualClock
from bulkmail_kernel.compose.headers import list_id, unsubscribe_mailto
from bulkmail_kernel.compose.mime import build_mime
from bulkmail_kernel.compose.render import Mailbox, render
from bulkmail_kernel.compose.templates import list_templates, load_template
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.db import (
    Database,
    Message,
    MessageBody,
    Suppression,
    UnsubscribeToken,
)
from bulkmail_kernel.deliverability.dkim import (
    DkimSigner,
    check_header_set,
    generate_dkim_key,
    prepare_outgoing,
)
from bulkmail_kernel.exceptions import ConfigError, SendError, TemplateError
from bulkmail_kernel.outbox.suppressions import hash_token
from bulkmail_kernel.servers.sink import Sink, start_sink
from bulkmail_kernel.transports.smtp import SmtpTransport

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
SENDER = Mailbox("Obchod Danubius", "news@shop.sk")
WHEN = dt.datetime(2025, 9, 1, 8, 30, tzinfo=dt.UTC)
TOKEN = "Zx8Qm3T0kenOpaque_abcDEF12"
UNSUB = f"https://shop.sk/u/{TOKEN}"
ACCOUNT = SenderInfo(
    1,
    "newsletter",
    "smtp",
    SENDER.name,
    SENDER.address,
    {"unsubscribe_url": "https://shop.sk/u/{token}", "unsubscribe_mailto": "unsubscribe@shop.sk"},
    "",
)
EXPECTED_HEADERS = [
    "DKIM-Signature",
    "Date",
    "From",
    "To",
    "Subject",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "MIME-Version",
    "Content-Type",
]


def _email_templates() -> list[str]:
    frame = list_templates(TEMPLATES)
    return sorted(frame.loc[frame["channel"] == "email", "name"])


def _row(**over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "contact_point_id": 7,
        "first_name": "Ján",
        "last_name": "Novák",
        "patronymic": "",
        "gender": "m",
        "language": "sk",
        "address": "jan.novak@example.sk",
    }
    row.update(over)
    return row


def _build(name: str, row: dict[str, object], values: dict[str, object] | None = None) -> bytes:
    """Render, build and store a message the way registration does (without Date)."""
    template = load_template(TEMPLATES / name)
    rendered = render(
        template,
        row,
        values={**template.sample, **(values or {})},
        unsubscribe_url=UNSUB,
        sender=SENDER,
        unsubscribe_mailto=unsubscribe_mailto(ACCOUNT, TOKEN),
    )
    # What registration adds: the campaign's List-Id (RFC 2919) on the sender's domain.
    rendered = dataclasses.replace(
        rendered, headers=(*rendered.headers, ("List-Id", list_id("Jar 2025", 7, ACCOUNT)))
    )
    data = build_mime(rendered, message_id="<golden.1@shop.sk>", date=WHEN)
    return re.sub(rb"^Date: [^\r\n]*\r\n", b"", data, count=1, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[DkimSigner, str]:
    path = tmp_path_factory.mktemp("dkim") / "shop.pem"
    record = generate_dkim_key(path)
    return DkimSigner("shop.sk", "bm2025", path.read_bytes()), record


def _dns(record: str):
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record.encode() if name.rstrip(b".") == b"bm2025._domainkey.shop.sk" else None

    return lookup


@pytest.mark.parametrize("name", _email_templates())
def test_golden_message_of_each_template(name: str, signer: tuple[DkimSigner, str]) -> None:
    dkim_signer, record = signer
    stored = _build(name, _row())
    data = prepare_outgoing(stored, when=WHEN, signer=dkim_signer, allowed=EXPECTED_HEADERS)
    names = check_header_set(data, allowed=EXPECTED_HEADERS)
    # Exactly the expected headers, each once (Content-Transfer-Encoding only on leaves).
    assert sorted(n.lower() for n in names) == sorted(n.lower() for n in EXPECTED_HEADERS)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert len(msg.get_all("From")) == 1
    assert msg["From"].addresses[0].addr_spec == "news@shop.sk"
    assert msg["Message-ID"].endswith("@shop.sk>")
    assert msg["Date"].datetime == WHEN
    assert msg["List-Id"] == "Jar 2025 <jar-2025.c7.shop.sk>"
    targets = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert targets == [UNSUB, f"mailto:unsubscribe@shop.sk?subject=unsubscribe%20{TOKEN}"]
    assert targets[0].startswith("https://")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = msg.get_body(("html",))
    text = msg.get_body(("plain",))
    assert html is not None
    assert text is not None, "a real text/plain alternative is required"
    assert f'href="{UNSUB}"' in html.get_content()
    assert UNSUB in text.get_content()
    assert dkimpy.verify(data, dnsfunc=_dns(record))
    h = re.search(r"\bh=([^;]+);", msg["DKIM-Signature"].replace(" ", "")).group(1).split(":")
    for required in (
        "from",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ):
        assert required in h


PAYLOADS = [
    "\r",
    "\n",
    "\x00",
    "\r\nBcc: evil@x.sk",
    "x\nBcc: evil@x.sk",
    "=?UTF-8?Q?=0A?=",
    "=?UTF-8?Q?=0D?=",
    "=?UTF-8?Q?a=0ABcc:_evil@x.sk?=",
    "=?utf-8?b?YQpCY2M6IGV2aWxAeC5zaw==?=",
    "Ján\u2028Bcc: evil@x.sk",
    "=0A",
    "=0D",
]
FIELDS = ["first_name", "last_name", "patronymic"]


def _assert_no_extra_header(data: bytes) -> None:
    allowed = [n for n in EXPECTED_HEADERS if n != "DKIM-Signature"]
    names = check_header_set(data, allowed=allowed)
    assert "bcc" not in {n.lower() for n in names}
    for policy in (email.policy.default, email.policy.compat32):
        parsed = email.message_from_bytes(data, policy=policy)
        assert "Bcc" not in parsed
        # What a Python relay would do: re-serialise; the CVE-2024-6923 family bites here.
        again = email.message_from_bytes(parsed.as_bytes(), policy=email.policy.compat32)
        assert "Bcc" not in again
        assert sorted(k.lower() for k in again) == sorted(k.lower() for k in parsed)


def _refused_or_clean(build) -> None:
    """Require a clear refusal for encoded words, else a message with no extra header."""
    error: BaseException | None = None
    data = b""
    try:
        data = prepare_outgoing(build(), when=WHEN)
    except (TemplateError, SendError) as exc:
        error = exc
    if error is not None:
        assert "encoded-word" in str(error)
        assert "fix the value" in str(error)
    else:
        _assert_no_extra_header(data)
        subject = email.message_from_bytes(data, policy=email.policy.default)["Subject"]
        assert "\n" not in subject
        assert "\r" not in subject


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("field", FIELDS)
def test_contact_fields_never_produce_an_extra_header(field: str, payload: str) -> None:
    _refused_or_clean(lambda: _build("vet_reminder_en", _row(**{field: f"Ján{payload}Novák"})))


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(
    ("template", "variable"),
    [
        ("vet_reminder_en", "pet_name"),
        ("newsletter_en", "newsletter_title"),
        ("invitation_ru", "event_name"),
    ],
)
def test_subject_values_never_produce_an_extra_header(
    template: str, variable: str, payload: str
) -> None:
    _refused_or_clean(lambda: _build(template, _row(), {variable: f"Rex{payload}x"}))


def test_address_with_a_line_break_is_refused_or_cleaned() -> None:
    for address in ("jan@example.sk\r\nBcc: evil@x.sk", "jan@example.sk\x00", "jan@ex\nample.sk"):
        try:
            data = prepare_outgoing(_build("newsletter_sk", _row(address=address)), when=WHEN)
        except (TemplateError, SendError):
            continue
        _assert_no_extra_header(data)


# --------------------------------------------------------------------------- TLS


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "relay.crt", tmp / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Recorder:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append(envelope.content)
        return "250 OK"


@pytest.fixture
def tls_relay(tmp_path: Path) -> Iterator[tuple[int, _Recorder, Path]]:
    """An aiosmtpd relay on loopback offering STARTTLS with a self-signed certificate."""
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recorder = _Recorder()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
    )
    controller.start()
    yield port, recorder, cert
    controller.stop()


MESSAGE = (
    b"From: news@shop.sk\r\nTo: jan@a.sk\r\nSubject: t\r\nMessage-ID: <t@shop.sk>\r\n"
    b"Date: Mon, 01 Sep 2025 08:30:00 +0000\r\n\r\nhello\r\n"
)


def test_the_test_relay_only_verifies_against_its_own_certificate(
    tls_relay: tuple[int, _Recorder, Path],
) -> None:
    port, recorder, cert = tls_relay
    with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=10) as smtp:
        smtp.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError):
            smtp.starttls(context=ssl.create_default_context())
    with smtplib.SMTP("localhost", port, timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(cert)))
        smtp.sendmail("news@shop.sk", ["jan@a.sk"], MESSAGE)
    assert len(recorder.received) == 1


def test_smtp_transport_refuses_an_unverified_certificate(
    tls_relay: tuple[int, _Recorder, Path],
) -> None:
    port, recorder, _ = tls_relay
    transport = SmtpTransport.from_settings(
        {"host": "localhost", "port": port, "security": "starttls"}
    )
    result = transport.send(MESSAGE, mail_from="news@shop.sk", rcpt_to="jan@a.sk")
    transport.close()
    assert result.status == "fatal"  # stops the campaign: retrying cannot fix a certificate
    assert "certificate does not verify" in result.detail
    assert recorder.received == []


def test_allow_self_signed_lets_a_test_relay_through_loudly(
    tls_relay: tuple[int, _Recorder, Path], caplog: pytest.LogCaptureFixture
) -> None:
    port, recorder, _ = tls_relay
    with caplog.at_level(logging.WARNING, logger="bulkmail"):
        transport = SmtpTransport.from_settings(
            {"host": "localhost", "port": port, "security": "starttls", "allow_self_signed": True}
        )
        result = transport.send(MESSAGE, mail_from="news@shop.sk", rcpt_to="jan@a.sk")
        transport.close()
    assert result.status == "sent"
    assert len(recorder.received) == 1
    assert "allow_self_signed" in caplog.text


def test_relay_without_starttls_is_refused(tmp_path: Path) -> None:
    """An account that asks for STARTTLS never falls back to clear text."""
    from bulkmail_kernel.servers.sink import start_sink

    sink = start_sink(tmp_path / "sink")  # plain SMTP, offers no STARTTLS
    try:
        transport = SmtpTransport.from_settings(
            {"host": "127.0.0.1", "port": sink.port, "security": "starttls"}
        )
        result = transport.send(MESSAGE, mail_from="news@shop.sk", rcpt_to="jan@a.sk")
        transport.close()
    finally:
        sink.stop()
    assert result.status == "fatal"
    assert "offers no STARTTLS" in result.detail
    assert sink.messages == []


# --------------------------------------------------------------------------- the real engine

PEOPLE = {
    "first_name": ["Ján", "Eva", "Olga"],
    "last_name": ["Novák", "Malá", "Ivanova"],
    "email": ["jan@a.sk", "eva@a.sk", "olga@b.sk"],
    "mailing_allowed": ["yes", "yes", "yes"],
    "language": ["sk", "sk", "sk"],
}
ENGINE_HEADERS = [n for n in EXPECTED_HEADERS if n != "DKIM-Signature"]


@pytest.fixture
def engine_sink(tmp_path: Path) -> Iterator[Sink]:
    s = start_sink(tmp_path / "sink")
    yield s
    s.stop()


def _firm(database: Database, port: int, key: Path | None, **extra: object) -> None:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "unsubscribe_url": "https://shop.sk/u/{token}",
        "unsubscribe_mailto": "unsubscribe@shop.sk",
        **extra,
    }
    if key is not None:
        settings["dkim"] = {"selector": "bm2025", "key_path": str(key)}
    add_sender_account(
        "firm",
        kind="smtp",
        from_email="news@shop.sk",
        from_name="Obchod Danubius",
        settings=settings,
        db=database,
        check=False,
    )


def _registered(
    database: Database,
    port: int,
    key: Path | None,
    *,
    name: str = "Jarná akcia 2025",
    scheduled_at: dt.datetime | None = None,
    **extra: object,
) -> int:
    import_contacts(pd.DataFrame(PEOPLE), db=database, progress=False)
    _firm(database, port, key, **extra)
    template = load_template(TEMPLATES / "newsletter_sk")
    info = create_campaign(
        name,
        sender="firm",
        template=template,
        values=dict(template.sample),
        scheduled_at=scheduled_at,
        db=database,
    )
    register(info.id, contacts_frame(database), db=database)
    return info.id


@pytest.fixture
def engine_key(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "dkim" / "shop.pem"
    return path, generate_dkim_key(path)


def _signed_headers(msg: email.message.EmailMessage) -> list[str]:
    signature = str(msg["DKIM-Signature"]).replace(" ", "").replace("\t", "")
    return re.search(r"\bh=([^;]+);", signature).group(1).lower().split(":")


def test_engine_signs_and_adds_list_headers(
    database: Database, engine_sink: Sink, engine_key: tuple[Path, str]
) -> None:
    key, record = engine_key
    cid = _registered(database, engine_sink.port, key)
    clock = ManualClock()
    summary = send(cid, rate_per_hour=math.inf, progress=False, db=database, clock=clock)
    assert summary.sent == 3
    ids = queue(cid, db=database).set_index("recipient")["message_id_header"]
    with database.session() as s:
        hashes = set(s.scalars(sa.select(UnsubscribeToken.token_hash)))
    tokens = set()
    for received in engine_sink.messages:
        data = received.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert dkimpy.verify(data, dnsfunc=_dns(record)), received.rcpt_tos
        names = check_header_set(data, allowed=EXPECTED_HEADERS)
        assert sorted(n.lower() for n in names) == sorted(n.lower() for n in EXPECTED_HEADERS)
        msg = email.message_from_bytes(data, policy=email.policy.default)
        h = _signed_headers(msg)
        for required in (
            "from",
            "subject",
            "date",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "list-id",
        ):
            assert required in h
        assert msg["Message-ID"] == ids[received.rcpt_tos[0]]
        assert msg["Date"].datetime == clock.now().replace(microsecond=0)
        assert msg["List-Id"] == f"Jarna akcia 2025 <jarna-akcia-2025.c{cid}.shop.sk>"
        https, mailto = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
        token = https.removeprefix("https://shop.sk/u/")
        assert mailto == f"mailto:unsubscribe@shop.sk?subject=unsubscribe%20{token}"
        assert hash_token(token) in hashes
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        tokens.add(token)
    assert len(tokens) == 3


def test_bad_dkim_settings_stop_before_anything_is_sent(
    database: Database, engine_sink: Sink, tmp_path: Path
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    cid = _registered(database, engine_sink.port, tmp_path / "missing.pem", scheduled_at=past)
    with pytest.raises(ConfigError, match=r"account 'firm': DKIM key file .* does not exist"):
        send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert engine_sink.messages == []
    assert set(queue(cid, db=database)["status"].astype(str)) == {"queued"}
    # The worker stops that campaign with the reason instead of dying or sending unsigned.
    assert run_worker(db=database, exit_when_idle=True, poll_interval_s=0.01) == 0
    info = get_campaign(cid, db=database)
    assert info.status == "stopped"
    assert "does not exist" in info.last_error
    assert engine_sink.messages == []


def test_message_failing_the_header_check_is_failed_and_never_sent(
    database: Database, engine_sink: Sink, engine_key: tuple[Path, str]
) -> None:
    cid = _registered(database, engine_sink.port, engine_key[0])
    with database.session() as s:
        row = s.scalars(
            sa.select(MessageBody)
            .join(Message, Message.id == MessageBody.message_id)
            .where(Message.recipient == "eva@a.sk")
        ).one()
        # What a stored body with a smuggled header (an older build, a hand edit) looks like.
        row.body = row.body.replace(b"\r\nSubject:", b"\r\nBcc: evil@x.sk\r\nSubject:", 1)
    summary = send(cid, rate_per_hour=math.inf, progress=False, db=database)
    assert (summary.sent, summary.failed) == (2, 1)
    assert engine_sink.received_by("eva@a.sk") == []
    assert all(b"evil@x.sk" not in m.data for m in engine_sink.messages)
    row = queue(cid, db=database).set_index("recipient").loc["eva@a.sk"]
    assert row["status"] == "failed"
    assert "unexpected headers ['Bcc']" in row["last_error"]
    assert "not sent" in row["last_error"]
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0


class _DataThenOk:
    """An SMTP server that answers the first DATA with 451 and records every content."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append(envelope.content)
        return "451 4.3.0 try again later" if len(self.received) == 1 else "250 OK"


def test_retry_keeps_the_message_id_with_a_new_date_and_signature(
    database: Database, engine_key: tuple[Path, str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = _DataThenOk()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        key, record = engine_key
        import_contacts(pd.DataFrame(PEOPLE).iloc[:1], db=database, progress=False)
        _firm(database, port, key)
        template = load_template(TEMPLATES / "vet_reminder_sk")
        info = create_campaign(
            "pripomienka", sender="firm", template=template, values=template.sample, db=database
        )
        register(info.id, contacts_frame(database), db=database)
        clock = ManualClock()
        first = send(info.id, rate_per_hour=math.inf, progress=False, db=database, clock=clock)
        assert first.deferred == 1
        clock.advance(300)
        second = send(info.id, progress=False, db=database, clock=clock)
        assert (second.sent, second.status) == (1, "finished")
    finally:
        controller.stop()
    assert len(handler.received) == 2
    tries = [email.message_from_bytes(d, policy=email.policy.default) for d in handler.received]
    assert tries[0]["Message-ID"] == tries[1]["Message-ID"]
    assert tries[1]["Date"].datetime - tries[0]["Date"].datetime == dt.timedelta(seconds=300)
    assert tries[0]["DKIM-Signature"] != tries[1]["DKIM-Signature"]  # it signs the new Date
    for data in handler.received:
        assert dkimpy.verify(data, dnsfunc=_dns(record))


def test_verp_return_path_carries_the_message_id(database: Database, engine_sink: Sink) -> None:
    cid = _registered(database, engine_sink.port, None, verp=True, envelope_from="bounces@shop.sk")
    send(cid, rate_per_hour=math.inf, progress=False, db=database)
    ids = queue(cid, db=database).set_index("recipient")["message_id_header"]
    for received in engine_sink.messages:
        tag = ids[received.rcpt_tos[0]].strip("<>").split("@")[0]
        assert received.mail_from == f"bounces+{tag}@shop.sk"


def test_send_samples_are_signed_like_the_real_messages(
    database: Database, engine_sink: Sink, engine_key: tuple[Path, str]
) -> None:
    key, record = engine_key
    cid = _registered(database, engine_sink.port, key)
    frame = send_samples(cid, ["qa@shop.sk"], db=database)
    assert list(frame["status"]) == ["sent"]
    (received,) = engine_sink.received_by("qa@shop.sk")
    assert dkimpy.verify(received.data, dnsfunc=_dns(record))
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    assert msg["Subject"].startswith("[TEST] ")
    assert msg["List-Id"].endswith(f".c{cid}.shop.sk>")


def test_worker_signs_scheduled_campaigns(
    database: Database, engine_sink: Sink, engine_key: tuple[Path, str]
) -> None:
    key, record = engine_key
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    cid = _registered(database, engine_sink.port, key, scheduled_at=past)
    assert run_worker(db=database, exit_when_idle=True, poll_interval_s=0.01) == 3
    assert get_campaign(cid, db=database).status == "finished"
    for received in engine_sink.messages:
        assert dkimpy.verify(received.data, dnsfunc=_dns(record))
        check_header_set(received.data, allowed=EXPECTED_HEADERS)

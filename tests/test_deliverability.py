"""Deliverability: golden messages of every predefined template, header integrity, verified TLS."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import logging
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import dkim as dkimpy
import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bulkmail_kernel.dkim import DkimSigner, check_header_set, generate_dkim_key, prepare_outgoing
from bulkmail_kernel.exceptions import SendError, TemplateError
from bulkmail_kernel.mime import build_mime
from bulkmail_kernel.templates import Mailbox, list_templates, load_template, render
from bulkmail_kernel.transports.smtp import SmtpTransport

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
SENDER = Mailbox("Obchod Danubius", "news@shop.sk")
WHEN = dt.datetime(2025, 9, 1, 8, 30, tzinfo=dt.UTC)
UNSUB = "https://shop.sk/u/Zx8Qm3T0kenOpaque_abcDEF12"
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
        unsubscribe_mailto="unsubscribe@shop.sk",
    )
    # What registration must add: the campaign's List-Id (RFC 2919) on the sender's domain.
    rendered = dataclasses.replace(
        rendered, headers=(*rendered.headers, ("List-Id", "Jar 2025 <jar-2025.shop.sk>"))
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
    assert msg["List-Id"] == "Jar 2025 <jar-2025.shop.sk>"
    targets = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert targets == [UNSUB, "mailto:unsubscribe@shop.sk"]
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
    from bulkmail_kernel.sink import start_sink

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

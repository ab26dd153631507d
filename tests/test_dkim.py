"""DKIM signing with dkimpy, verified against the public key without DNS."""

from __future__ import annotations

import datetime as dt
import logging
import re
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bulkmail_kernel.deliverability.dkim import (
    DkimSigner,
    check_header_set,
    dns_record,
    generate_dkim_key,
    load_private_key,
    prepare_outgoing,
    sign_message,
    signer_for,
)
from bulkmail_kernel.exceptions import ConfigError, SendError

WHEN = dt.datetime(2025, 9, 1, 8, 30, tzinfo=dt.UTC)
BODY = (
    b"From: Obchod <news@shop.sk>\r\nTo: jan@a.sk\r\nSubject: Novinky\r\n"
    b"Message-ID: <abc@shop.sk>\r\nList-Id: jar <jar.shop.sk>\r\n"
    b"List-Unsubscribe: <https://shop.sk/u/tok>, <mailto:unsubscribe@shop.sk>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nDobry den.\r\n"
)


def dnsfunc_for(records: dict[str, str]):
    """Return a dkimpy dnsfunc answering TXT queries from ``records`` (no network)."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode("ascii").rstrip("."))
        return value.encode("ascii") if value is not None else None

    return lookup


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys" / "dkim.pem"
    return path, generate_dkim_key(path)


def test_signature_covers_the_required_headers_and_verifies(key_file: tuple[Path, str]) -> None:
    path, record = key_file
    signed = prepare_outgoing(
        BODY, when=WHEN, signer=DkimSigner("shop.sk", "bm", path.read_bytes())
    )
    head = signed.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=shop.sk;")
    h = re.search(r"\bh=([^;]+);", head.replace("\r\n", "")).group(1)
    signed_names = [n.strip() for n in h.split(":")]
    for name in (
        "from",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "to",
        "list-id",
        "mime-version",
        "content-type",
    ):
        assert name in signed_names
    # From is oversigned: a second From added in transit breaks the signature.
    assert signed_names.count("from") == 2
    dns = dnsfunc_for({"bm._domainkey.shop.sk": record})
    assert dkimpy.verify(signed, dnsfunc=dns)
    tampered = signed.replace(b"Subject: Novinky", b"Subject: Vyhrali ste")
    assert not dkimpy.verify(tampered, dnsfunc=dns)
    added = signed.replace(b"\r\n\r\n", b"\r\nFrom: evil@x.sk\r\n\r\n", 1)
    assert not dkimpy.verify(added, dnsfunc=dns)
    assert dns_record(path.read_bytes()) == record
    direct = sign_message(
        b"Date: x\r\n" + BODY, domain="shop.sk", selector="bm", key=path.read_bytes()
    )
    assert dkimpy.verify(direct, dnsfunc=dns)
    # Another key under the same selector: the signature does not verify.
    other = generate_dkim_key(path.with_name("other.pem"))
    assert not dkimpy.verify(signed, dnsfunc=dnsfunc_for({"bm._domainkey.shop.sk": other}))


def test_non_rsa_keys_are_refused_clearly(tmp_path: Path) -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ed.pem").write_bytes(pem)
    with pytest.raises(ConfigError, match="bulkmail signs with RSA"):
        load_private_key(tmp_path / "ed.pem")


def test_signer_from_account_settings(key_file: tuple[Path, str]) -> None:
    path, _ = key_file
    assert signer_for({}, "news@shop.sk") is None
    signer = signer_for({"dkim": {"selector": "bm", "key_path": str(path)}}, "news@shop.sk")
    assert signer is not None
    assert (signer.domain, signer.selector) == ("shop.sk", "bm")
    assert "key" not in repr(signer).replace("key_", "")  # the key never shows in a repr
    # A parent domain aligns (DMARC relaxed); another domain does not.
    assert (
        signer_for(
            {"dkim": {"selector": "bm", "key_path": str(path), "domain": "shop.sk"}},
            "news@mail.shop.sk",
        )
        is not None
    )
    with pytest.raises(ConfigError, match="does not align"):
        signer_for(
            {"dkim": {"selector": "bm", "key_path": str(path), "domain": "other.sk"}},
            "news@shop.sk",
        )


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"selector": "bm"}, "exactly one of 'key_path' or 'keyring'"),
        ({"key_path": "/x"}, "no 'selector'"),
        ({"selector": "bm", "key_path": "/nonexistent/dkim.pem"}, "does not exist"),
        ({"selector": "bm", "key": "-----BEGIN..."}, "never the key itself"),
        ({"selector": "b m", "key_path": "KEY"}, "not a DNS label"),
        ("bm", "must be a table"),
    ],
)
def test_bad_dkim_settings_are_clear_errors(
    key_file: tuple[Path, str], conf: object, message: str
) -> None:
    if isinstance(conf, dict) and conf.get("key_path") == "KEY":
        conf = {**conf, "key_path": str(key_file[0])}
    with pytest.raises(ConfigError, match=re.escape(message)):
        signer_for({"dkim": conf}, "news@shop.sk")


def test_key_loading_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_private_key(not_pem)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_private_key(broken)
    shared = tmp_path / "shared.pem"
    generate_dkim_key(shared)
    shared.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="bulkmail"):
        load_private_key(shared)
    assert "readable by other users" in caplog.text
    generate_dkim_key(tmp_path / "fresh.pem")
    assert (tmp_path / "fresh.pem").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="already exists"):
        generate_dkim_key(shared)
    with pytest.raises(ConfigError, match="exactly one"):
        load_private_key()


def test_header_set_check_refuses_smuggled_and_duplicate_headers() -> None:
    assert check_header_set(b"Date: x\r\n" + BODY)[0] == "Date"
    with pytest.raises(SendError, match="occurs more than once"):
        prepare_outgoing(b"Date: y\r\n" + BODY, when=WHEN)
    with pytest.raises(SendError, match="bare CR, LF or NUL"):
        prepare_outgoing(BODY.replace(b"Novinky", b"Novinky\nBcc: x@y.sk"), when=WHEN)
    with pytest.raises(SendError, match="bare CR, LF or NUL"):
        prepare_outgoing(BODY.replace(b"Novinky", b"Nov\x00inky"), when=WHEN)
    smuggled = BODY.replace(b"Subject: Novinky\r\n", b"Subject: Novinky\r\nBcc: x@y.sk\r\n")
    with pytest.raises(SendError, match=r"unexpected headers \['Bcc'\]"):
        prepare_outgoing(
            smuggled, when=WHEN, allowed=[n for n in check_header_set(b"Date: x\r\n" + BODY)]
        )
    with pytest.raises(SendError, match="missing"):
        prepare_outgoing(BODY.replace(b"Message-ID: <abc@shop.sk>\r\n", b""), when=WHEN)
    with pytest.raises(SendError, match="time-zone aware"):
        prepare_outgoing(BODY, when=dt.datetime(2025, 1, 1))


def test_a_header_shape_that_passed_is_no_pass_for_a_message_that_differs() -> None:
    allowed = tuple(check_header_set(b"Date: x\r\n" + BODY))
    good = prepare_outgoing(BODY, when=WHEN, allowed=allowed)  # its shape is now known
    assert prepare_outgoing(BODY, when=WHEN, allowed=allowed) == good
    for bad in (
        BODY.replace(b"Novinky", b"Novinky\r\nBcc: x@y.sk"),  # a header smuggled in
        BODY.replace(b"To: jan@a.sk", b"To: jan@a.sk\nBcc: x@y.sk"),  # a bare LF
        BODY.replace(b"To: jan@a.sk", b"To: jan@a.sk\rBcc: x@y.sk"),  # a bare CR
        BODY.replace(b"Subject: Novinky", b"Subject: Novinky\r\nTo: eva@a.sk"),  # doubled
        BODY.replace(b"Subject:", b"Subject;"),  # a line that is no header
        BODY.replace(b"Message-ID: <abc@shop.sk>\r\n", b""),  # a required one missing
        BODY.replace(b"\r\n\r\n", b"\r\n"),  # no end to the headers
    ):
        with pytest.raises(SendError):
            prepare_outgoing(bad, when=WHEN, allowed=allowed)
    # A folded value is a continuation, not a header: the same shape, still sent.
    folded = BODY.replace(b"Subject: Novinky", b"Subject: Novinky\r\n a dalsie")
    assert b"Novinky\r\n a dalsie\r\n" in prepare_outgoing(folded, when=WHEN, allowed=allowed)


def test_date_is_formatted_once_a_second_in_the_time_zone_given() -> None:
    def date(when: dt.datetime) -> bytes:
        return prepare_outgoing(BODY, when=when).partition(b"\r\n")[0]

    first = date(WHEN)
    assert first == b"Date: " + format_datetime(WHEN).encode()
    assert date(WHEN + dt.timedelta(milliseconds=999)) == first
    assert date(WHEN + dt.timedelta(seconds=1)) == b"Date: Mon, 01 Sep 2025 08:30:01 +0000"
    local = WHEN.astimezone(ZoneInfo("Europe/Bratislava"))
    assert date(local) == b"Date: Mon, 01 Sep 2025 10:30:00 +0200"
    assert date(WHEN) == first

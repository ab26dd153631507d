"""DKIM signing of serialised messages, and the last header check before a message leaves.

A sender account signs when its ``settings["dkim"]`` names a selector and a private
key: ``{"selector": "bm2025", "key_path": "/etc/bulkmail/dkim.pem"}`` or
``{"selector": "bm2025", "keyring": "firm.sk"}`` (the PEM stored in the keyring under
service ``bulkmail-dkim``), optionally ``"domain"`` (default: the From domain). The key
itself never goes into the database.

The sending engine calls :func:`prepare_outgoing` on every message just before the
transport: it adds the Date header, re-parses the header block and refuses a message
whose header set is not exactly one of each expected header (a value that smuggled a
line break shows up here), then signs. Signing comes last because DKIM covers the
Date and any later change to a signed header breaks the signature.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bulkmail_kernel.exceptions import ConfigError, SendError

log = logging.getLogger("bulkmail")

#: Headers the signature covers when present, in this order (RFC 6376 5.4.1, plus the
#: RFC 8058 pair that Gmail and Yahoo require to be signed for one-click unsubscribe).
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)
#: Headers a message must carry to be signed at all.
REQUIRED_HEADERS = ("From", "Subject", "Date", "Message-ID")
#: Signed once more than present ("oversigned"): a header added on the way, e.g. a
#: second From or a forged unsubscribe target, then breaks the signature.
OVERSIGNED_HEADERS = ("From", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post")
#: Headers that may legitimately occur more than once in an outgoing message.
REPEATABLE_HEADERS = frozenset({"dkim-signature", "received", "comments", "keywords"})
KEYRING_SERVICE = "bulkmail-dkim"

#: Each header field's name (up to its first colon) and the colon itself: a field line
#: is one not starting with a space or tab (the block's lines end in CRLF, checked first).
_SHAPE = re.compile(rb"^(?![ \t])([^:\r\n]*)(:?)", re.MULTILINE)
#: Header-set verdicts already reached, by shape and the sets asked for (see check_header_set).
_CHECKED: dict[tuple[Any, ...], tuple[str, ...]] = {}
#: The last Date header made: (whole second, UTC offset) and its line (see _date_line).
_DATE: tuple[tuple[int, Any], bytes] = ((0, None), b"")

_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})+$")


@dataclass(frozen=True)
class DkimSigner:
    """A domain, a selector and a loaded private key: everything needed to sign."""

    domain: str
    selector: str
    key: bytes = field(repr=False)

    def sign(self, data: bytes) -> bytes:
        """Return ``data`` with a DKIM-Signature header prepended."""
        return sign_message(data, domain=self.domain, selector=self.selector, key=self.key)


def _validate_pem(key: bytes, where: str) -> bytes:
    """Return the key if it is an unencrypted PEM RSA private key of at least 1024 bits."""
    if b"-----BEGIN" not in key:
        raise ConfigError(
            f"{where}: not a PEM private key (no '-----BEGIN' line); create one with "
            "bulkmail.generate_dkim_key() or 'openssl genrsa -out dkim.pem 2048'",
            where=where,
        )
    try:
        loaded = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{where}: the private key cannot be read ({exc}); it must be an unencrypted "
            "PEM RSA key",
            where=where,
        ) from exc
    if not isinstance(loaded, rsa.RSAPrivateKey):
        # Ed25519 (RFC 8463) is not verified by every receiver yet and needs PyNaCl in dkimpy.
        raise ConfigError(
            f"{where}: a {type(loaded).__name__} key; bulkmail signs with RSA: generate one "
            "with bulkmail.generate_dkim_key()",
            where=where,
        )
    if loaded.key_size < 1024:
        raise ConfigError(
            f"{where}: RSA key of {loaded.key_size} bits: receivers ignore DKIM keys "
            "under 1024 bits; generate a 2048-bit key",
            where=where,
        )
    return key


def load_private_key(path: str | Path | None = None, *, keyring_name: str | None = None) -> bytes:
    """Return a PEM DKIM private key read from ``path`` or from the keyring entry ``keyring_name``.

    The keyring entry is service ``bulkmail-dkim``, user ``keyring_name``, holding the PEM text.
    """
    if (path is None) == (keyring_name is None):
        raise ConfigError("DKIM key: give exactly one of a key path or a keyring name")
    if path is not None:
        key_path = Path(path).expanduser()
        where = f"DKIM key file {key_path}"
        try:
            data = key_path.read_bytes()
            mode = key_path.stat().st_mode
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{where} does not exist: check settings['dkim']['key_path'] of the sender "
                "account, or generate a key with bulkmail.generate_dkim_key()",
                where=where,
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"{where} cannot be read ({exc.strerror}): give the user running bulkmail "
                "read access to it",
                where=where,
            ) from exc
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            # Not fatal (a shared group may be intended), but whoever reads it can sign as us.
            log.warning("%s is readable by other users: chmod 600 it", where)
        return _validate_pem(data, where)
    assert keyring_name is not None
    where = f"DKIM key in the keyring ({KEYRING_SERVICE}/{keyring_name})"
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError as exc:  # pragma: no cover - keyring comes with yagmail
        raise ConfigError(f"{where}: the keyring package is not installed") from exc
    try:
        text = keyring.get_password(KEYRING_SERVICE, keyring_name)
    except KeyringError as exc:
        raise ConfigError(
            f"{where}: the keyring failed ({exc}); use settings['dkim']['key_path'] instead",
            where=where,
        ) from exc
    if not text:
        raise ConfigError(
            f"{where} is empty: store the PEM with keyring.set_password({KEYRING_SERVICE!r}, "
            f"{keyring_name!r}, open('dkim.pem').read())",
            where=where,
        )
    return _validate_pem(text.encode("ascii", "replace"), where)


def dns_record(key: bytes) -> str:
    """Return the DNS TXT value (``v=DKIM1; k=rsa; p=...``) for a private key's public half."""
    loaded = serialization.load_pem_private_key(_validate_pem(key, "DKIM key"), password=None)
    der = loaded.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def generate_dkim_key(path: str | Path, *, bits: int = 2048, overwrite: bool = False) -> str:
    """Write a new RSA DKIM private key to ``path`` (mode 600) and return its DNS TXT value."""
    key_path = Path(path).expanduser()
    if key_path.exists() and not overwrite:
        raise ConfigError(
            f"DKIM key file {key_path} already exists: pass overwrite=True to replace it "
            "(the old DNS record then stops verifying)",
        )
    if bits < 2048:
        raise ConfigError(f"DKIM key size {bits}: use at least 2048 bits")
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return dns_record(pem)


def _header_block(data: bytes) -> bytes:
    """Return the header block of ``data``, refusing a missing separator or broken line ends."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise SendError("message has no header/body separator (CRLF CRLF): refused")
    block = data[:end]
    stripped = block.replace(b"\r\n", b"")
    if b"\x00" in block or b"\r" in stripped or b"\n" in stripped:
        raise SendError("a bare CR, LF or NUL is in the headers: message refused")
    return block


def _header_names(data: bytes) -> list[str]:
    """Return the field names of the header block, in order, refusing broken line ends."""
    block = _header_block(data)
    names = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not re.fullmatch(rb"[!-9;-~]+", name):
            raise SendError(f"header line {line[:60]!r} is not 'Name: value': message refused")
        names.append(name.decode("ascii"))
    return names


def check_header_set(
    data: bytes,
    *,
    required: Iterable[str] = REQUIRED_HEADERS,
    allowed: Iterable[str] | None = None,
) -> list[str]:
    """Return the header names of ``data`` after checking each occurs once and none is missing.

    ``allowed`` (case-insensitive), when given, is the complete set of names permitted:
    anything else means a value smuggled a header in, and the message is refused.

    The verdict depends only on each field's name and colon, in order, so it is kept
    per such shape (:data:`_SHAPE`, one C-level scan of the header block): the messages
    of a campaign share one shape, and each is still scanned whole for bare CR, LF and
    NUL, and for a header that is new, doubled or missing (issue 18: the per-line
    parse was 64 us of every message sent).
    """
    key: tuple[Any, ...] | None = None
    if isinstance(required, tuple) and (allowed is None or isinstance(allowed, tuple)):
        key = (tuple(_SHAPE.findall(_header_block(data))), required, allowed)
        known = _CHECKED.get(key)
        if known is not None:
            return list(known)
    names = _checked_names(data, required, allowed)
    if key is not None:
        if len(_CHECKED) >= 4096:  # shapes come from campaigns, not recipients: rare
            _CHECKED.clear()
        _CHECKED[key] = tuple(names)
    return names


def _checked_names(
    data: bytes, required: Iterable[str], allowed: Iterable[str] | None
) -> list[str]:
    """Return the header names of ``data`` after the full check (see :func:`check_header_set`)."""
    names = _header_names(data)
    lower = [n.lower() for n in names]
    seen: set[str] = set()
    for name in lower:
        if name in seen and name not in REPEATABLE_HEADERS:
            raise SendError(f"header {name!r} occurs more than once: message refused", header=name)
        seen.add(name)
    missing = [n for n in required if n.lower() not in seen]
    if missing:
        raise SendError(f"required headers {missing} are missing: message refused")
    if allowed is not None:
        permitted = {a.lower() for a in allowed} | REPEATABLE_HEADERS
        extra = [n for n in names if n.lower() not in permitted]
        if extra:
            raise SendError(
                f"unexpected headers {extra}: a value smuggled a header in; message refused",
                headers=extra,
            )
    return names


def sign_message(data: bytes, *, domain: str, selector: str, key: bytes) -> bytes:
    """Return ``data`` with a DKIM-Signature (rsa-sha256, relaxed/relaxed) prepended.

    ``h=`` lists every header of :data:`SIGNED_HEADERS` the message has, and oversigns
    From, Subject and the List-Unsubscribe pair so none can be added in transit.
    """
    if not _DOMAIN.match(domain):
        raise ConfigError(f"DKIM domain {domain!r} is not a domain name")
    if not _SELECTOR.match(selector):
        raise ConfigError(f"DKIM selector {selector!r} is not a DNS label (letters, digits, -)")
    names = {n.lower() for n in check_header_set(data)}
    include = [h for h in SIGNED_HEADERS if h.lower() in names]
    include += [h for h in OVERSIGNED_HEADERS if h.lower() in names]
    try:
        signature = dkim.sign(
            data,
            selector.encode("ascii"),
            domain.encode("ascii"),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256",
            include_headers=[h.encode("ascii") for h in include],
        )
    except dkim.DKIMException as exc:
        raise SendError(
            f"DKIM signing for {domain} (selector {selector}) failed: {exc}",
            domain=domain,
            selector=selector,
        ) from exc
    return signature + data


def signer_for(settings: Mapping[str, Any], from_email: str) -> DkimSigner | None:
    """Return the signer a sender account's ``settings["dkim"]`` describes, or None if unsigned."""
    conf = settings.get("dkim")
    if not conf:
        return None
    if not isinstance(conf, Mapping):
        raise ConfigError(
            "sender account settings['dkim'] must be a table like "
            "{'selector': 'bm2025', 'key_path': '/etc/bulkmail/dkim.pem'}"
        )
    unknown = set(conf) - {"selector", "key_path", "keyring", "domain"}
    if unknown:
        # Also catches a pasted key ('key', 'pem'): the key never goes into the database.
        raise ConfigError(
            f"sender account settings['dkim'] has unknown keys {sorted(unknown)}: "
            "use selector, key_path or keyring (never the key itself), and optionally domain"
        )
    selector = str(conf.get("selector") or "")
    if not selector:
        raise ConfigError("sender account settings['dkim'] has no 'selector'")
    if bool(conf.get("key_path")) == bool(conf.get("keyring")):
        raise ConfigError(
            "sender account settings['dkim'] needs exactly one of 'key_path' or 'keyring'"
        )
    domain = str(conf.get("domain") or from_email.rpartition("@")[2]).lower()
    if not from_email.lower().endswith("@" + domain) and not from_email.lower().endswith(
        "." + domain
    ):
        # DMARC alignment: d= must be the From domain or a parent of it.
        raise ConfigError(
            f"DKIM domain {domain!r} does not align with the From address {from_email!r}: "
            "DMARC would fail; sign with the From domain or its parent"
        )
    key = load_private_key(conf.get("key_path"), keyring_name=conf.get("keyring"))
    if not _SELECTOR.match(selector):
        raise ConfigError(f"DKIM selector {selector!r} is not a DNS label (letters, digits, -)")
    return DkimSigner(domain=domain, selector=selector, key=key)


def prepare_outgoing(
    body: bytes,
    *,
    when: datetime,
    signer: DkimSigner | None = None,
    allowed: Iterable[str] | None = None,
) -> bytes:
    """Return the bytes to hand to the transport: Date added, header set checked, DKIM-signed.

    ``body`` is a stored message without Date (as ``register`` keeps it). Raises
    SendError when the header set is wrong: mark that message failed with the reason,
    never send it.
    """
    if when.tzinfo is None:
        raise SendError("the sending time must be time-zone aware")
    data = _date_line(when) + body
    check_header_set(data, allowed=allowed)
    return signer.sign(data) if signer is not None else data


def _date_line(when: datetime) -> bytes:
    """Return the ``Date:`` line for ``when``, formatted once per second (not per message).

    The header carries whole seconds and the UTC offset, so every message of one
    second shares its line; ``format_datetime`` was 12 % of the sending thread's time.
    """
    global _DATE
    key = (math.floor(when.timestamp()), when.utcoffset())
    cached = _DATE  # one read: another sender thread may replace it meanwhile
    if cached[0] == key:
        return cached[1]
    line = b"Date: " + format_datetime(when).encode("ascii") + b"\r\n"
    _DATE = (key, line)
    return line

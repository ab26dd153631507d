"""Bounce parsing: what a delivery status notification says, read from its bytes alone.

:func:`parse_bounce` is pure: bytes in, :class:`BounceInfo` (or None for a message that
is not a delivery failure) out; no database, no IMAP. GNU Mailman's flufl.bounce finds
the failing recipients (it knows the formats of dozens of mail servers); the RFC 3464
``message/delivery-status`` part gives each one's Action and Status. Where a server
sends no such part (Exim, qmail, Gmail, Yahoo, Office 365 write prose) the status is
the first enhanced code (``5.1.1``) in the explanation above the returned message.
Also read here: the Message-IDs of the returned original, and the address or
Message-ID tag a VERP return path carries; :mod:`bulkmail_kernel.deliverability.mailbox`
matches them to our messages. :func:`parse_bounces` lists saved ``.eml`` files as a frame.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message as EmailMessage
from email.utils import getaddresses, parseaddr

import pandas as pd
from flufl.bounce import all_failures

from bulkmail_kernel.compose.headers import VERP_TAG

log = logging.getLogger("bulkmail")

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_BASIC = re.compile(r"(?<!\d)([45])\d\d(?:[ -])")
_MSGID = re.compile(r"(?im)^message-id:[ \t]*(<[^<>\s]+@[^<>\s]+>)")
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
#: Lines that start the returned copy of the original in prose bounces.
_COPY_STARTS = re.compile(
    r"(?im)^(?:-{2,}.*(?:copy|original|below this line|undelivered|returned).*"
    r"|original message headers:.*|-+ ?original message ?-+)$"
)
_VERP = re.compile(r"^[^+@]+\+(?P<local>[^=@]+)=(?P<domain>[^@]+)@", re.IGNORECASE)
#: ``bounces+<Message-ID's unique part>@firm.sk``: what ``envelope_from`` writes with verp on.
_VERP_MESSAGE = re.compile(rf"^[^+@]+\+(?P<tag>{VERP_TAG.pattern})@", re.IGNORECASE)
_DAEMON = re.compile(r"(?i)^(mailer-daemon|postmaster|mail-daemon|mdaemon)@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class BouncedRecipient:
    """One recipient a delivery status notification reports as failed or delayed."""

    recipient: str
    #: The enhanced status code, e.g. ``5.1.1``.
    status: str
    #: 5.x.x: the address will never work (suppress); 4.x.x: temporary (count).
    permanent: bool
    #: The DSN Action (failed, delayed) or ``failed`` for prose bounces.
    action: str
    diagnostic: str = ""


@dataclass(frozen=True)
class BounceInfo:
    """What a delivery failure notification says: who failed, why, and which message it was."""

    recipients: tuple[BouncedRecipient, ...]
    #: Message-IDs found in the returned original (headers part or quoted copy), in order.
    original_message_ids: tuple[str, ...]
    #: The address decoded from a VERP return path, if the bounce went to one.
    verp_recipient: str | None = None
    reporter: str = ""
    #: The Message-ID's unique part from a message-VERP return path (``bounces+<tag>@``).
    verp_tag: str | None = None

    @property
    def recipient(self) -> str:
        """Return the first failing recipient."""
        return self.recipients[0].recipient

    @property
    def status(self) -> str:
        """Return the first failing recipient's status code."""
        return self.recipients[0].status

    @property
    def permanent(self) -> bool:
        """Return whether the first failing recipient failed permanently."""
        return self.recipients[0].permanent


def _text_of(part: EmailMessage) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _explanation(msg: EmailMessage) -> str:
    """Return the human-readable explanation of a bounce, without the returned original."""
    if msg.is_multipart():
        for part in msg.walk():
            if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
                break
            if part.get_content_type() == "text/plain":
                text = _text_of(part)
                break
        else:
            return ""
    else:
        text = _text_of(msg)
    cut = _COPY_STARTS.search(text)
    return text[: cut.start()] if cut else text


def _dsn_fields(msg: EmailMessage) -> list[EmailMessage]:
    """Return the per-recipient field groups of every message/delivery-status part."""
    groups: list[EmailMessage] = []
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            if isinstance(payload, list):
                # The parser makes each field group a Message; the isinstance only narrows.
                groups += [
                    g
                    for g in payload
                    if isinstance(g, EmailMessage) and (g.get("Final-Recipient") or g.get("Status"))
                ]
    return groups


def _address_of(field: str | None) -> str:
    if not field:
        return ""
    # "rfc822; user@example.sk" (the address type is mandatory but often cased oddly).
    value = field.partition(";")[2] if ";" in field else field
    return parseaddr(value.strip())[1].strip().lower()


def _original_ids(msg: EmailMessage, raw: bytes) -> tuple[str, ...]:
    found: list[str] = []
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, EmailMessage) and inner.get("Message-ID"):
                found.append(str(inner["Message-ID"]).strip())
        elif kind == "text/rfc822-headers":
            found += _MSGID.findall(_text_of(part))
    if not msg.is_multipart() or not found:
        # Prose bounces quote the original below a separator line.
        bodies = [msg] if not msg.is_multipart() else list(msg.walk())
        for part in bodies:
            if part.get_content_maintype() == "text":
                found += _MSGID.findall(_text_of(part))
    if not found:
        # A broken MIME structure (a boundary that does not match) hides the returned
        # headers inside another part: look through the whole body as text.
        body = raw[raw.find(b"\n\n") + 2 :] if b"\n\n" in raw else b""
        found += _MSGID.findall(body.decode("utf-8", "replace"))
    own = str(msg.get("Message-ID", "")).strip()
    unique = []
    for mid in found:
        if mid != own and mid not in unique:
            unique.append(mid)
    return tuple(unique)


def _return_paths(msg: EmailMessage) -> Iterator[str]:
    """Yield the addresses a notification was delivered to: where a VERP tag would be."""
    for name in ("X-Original-To", "Delivered-To", "Envelope-To", "To"):
        for _, address in getaddresses([str(v) for v in msg.get_all(name, [])]):
            yield address


def _verp(msg: EmailMessage) -> str | None:
    for address in _return_paths(msg):
        match = _VERP.match(address)
        if match:
            return f"{match['local']}@{match['domain']}".lower()
    return None


def _verp_tag(msg: EmailMessage) -> str | None:
    for address in _return_paths(msg):
        match = _VERP_MESSAGE.match(address)
        if match:
            return match["tag"].lower()
    return None


def _looks_like_a_bounce(msg: EmailMessage) -> bool:
    sender = parseaddr(str(msg.get("From", "")))[1]
    return bool(
        msg.get_content_type() == "multipart/report"
        or msg.get("X-Failed-Recipients")
        or msg.get("X-MS-Exchange-Message-Is-Ndr") is not None
        or _DAEMON.match(sender)
        or str(msg.get("Return-Path", "")).strip() == "<>"
    )


def _status_in(text: str) -> str | None:
    match = _ENHANCED.search(text)
    if match:
        return ".".join(match.groups())
    basic = _BASIC.search(text)
    return f"{basic.group(1)}.0.0" if basic else None


def _flufl_failures(message: bytes) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """Return flufl.bounce's (temporary, permanent) recipients, robust to raw 8-bit headers."""
    end = message.find(b"\n\n")
    head, body = (message[:end], message[end:]) if end >= 0 else (message, b"")
    # Raw UTF-8 in a header (invalid, but Mail.ru and replies do it) makes compat32 return
    # Header objects, on which several flufl detectors call str methods and crash.
    head = bytes(b if b < 0x80 else 0x3F for b in head)
    try:
        return all_failures(email.message_from_bytes(head + body, policy=email.policy.compat32))
    except Exception as exc:  # a detector bug must not stop the mailbox run
        log.warning("flufl.bounce failed on a message (%s); using the DSN part only", exc)
        return frozenset(), frozenset()


def parse_bounce(message: bytes) -> BounceInfo | None:
    """Return what a delivery status notification reports, or None if ``message`` is not one."""
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    temporary, permanent = _flufl_failures(message)
    flufl = {a.decode("utf-8", "replace").lower(): False for a in temporary}
    flufl.update({a.decode("utf-8", "replace").lower(): True for a in permanent})
    explanation = _explanation(msg)
    found: dict[str, BouncedRecipient] = {}
    for group in _dsn_fields(msg):
        action = str(group.get("Action", "")).strip().lower()
        if action and action not in ("failed", "delayed"):
            continue  # delivered, relayed, expanded: not a failure
        address = _address_of(group.get("Final-Recipient")) or _address_of(
            group.get("Original-Recipient")
        )
        status = _status_in(str(group.get("Status", ""))) or _status_in(
            str(group.get("Diagnostic-Code", ""))
        )
        if not address or not status:
            continue
        found.setdefault(
            address,
            BouncedRecipient(
                address,
                status,
                status.startswith("5"),
                action or "failed",
                _clean(str(group.get("Diagnostic-Code", ""))),
            ),
        )
    if not flufl and not found:
        if not _looks_like_a_bounce(msg):
            return None
        # flufl.bounce knows no pattern for this server (Yahoo, Office 365): take the
        # addresses the notification names, and fall back to the first one it mentions.
        named = [a.strip().lower() for a in str(msg.get("X-Failed-Recipients", "")).split(",")]
        own = {parseaddr(str(msg.get(h, "")))[1].lower() for h in ("To", "From")}
        mentioned = [a.lower() for a in _ADDRESS.findall(explanation) if a.lower() not in own]
        candidates = [a for a in named if a] or mentioned[:1]
        flufl = dict.fromkeys(candidates, True)
    for address, is_permanent in flufl.items():
        if address in found:
            continue
        status = _status_in(explanation) or ("5.0.0" if is_permanent else "4.0.0")
        found[address] = BouncedRecipient(
            address,
            status,
            status.startswith("5"),
            "failed" if is_permanent else "delayed",
            _diagnostic(explanation, status),
        )
    if not found:
        return None
    reporter = _clean(parseaddr(str(msg.get("From", "")))[1])
    return BounceInfo(
        tuple(found.values()), _original_ids(msg, message), _verp(msg), reporter, _verp_tag(msg)
    )


def _clean(text: str) -> str:
    """Return text on one line without control characters (PostgreSQL refuses NUL)."""
    return " ".join(_CONTROL.sub(" ", text).split())[:500]


def _diagnostic(text: str, status: str) -> str:
    for line in text.splitlines():
        if status in line:
            return _clean(line)
    return ""


def parse_bounces(messages: Iterable[bytes]) -> pd.DataFrame:
    """Return one row per failing recipient of each message (for looking at saved .eml files)."""
    rows = []
    for index, raw in enumerate(messages):
        info = parse_bounce(raw)
        if info is None:
            continue
        for r in info.recipients:
            rows.append(
                {
                    "message": index,
                    "recipient": r.recipient,
                    "status": r.status,
                    "permanent": r.permanent,
                    "action": r.action,
                    "original_message_id": (info.original_message_ids or (None,))[0],
                    "diagnostic": r.diagnostic,
                }
            )
    columns = [
        "message",
        "recipient",
        "status",
        "permanent",
        "action",
        "original_message_id",
        "diagnostic",
    ]
    return pd.DataFrame(rows, columns=columns)

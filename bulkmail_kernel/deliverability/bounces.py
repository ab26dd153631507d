"""Bounces and mailto unsubscribes: read the sender account's IMAP box and act on what came back.

:func:`parse_bounce` is pure: bytes in, :class:`BounceInfo` (or None for a message that
is not a delivery failure) out. GNU Mailman's flufl.bounce finds the failing
recipients (it knows the formats of dozens of mail servers); the RFC 3464
``message/delivery-status`` part gives each one's Action and Status. Where a server
sends no such part (Exim, qmail, Gmail, Yahoo, Office 365 write prose) the status is
the first enhanced code (``5.1.1``) in the explanation above the returned message.

:func:`process_mailbox` matches each bounce to our message by the Message-ID in the
returned copy (fixed at registration, so retries keep it), else by a VERP return
path (``bounces+jan=example.sk@firm.sk``), else by the address among this account's
campaigns; 5.x.x marks the message failed and suppresses the address, 4.x.x counts
a soft bounce and suppresses after ``soft_bounce_limit``. Mail to the account's
unsubscribe mailto address unsubscribes. Processed mail is flagged, never deleted.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message as EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any
from urllib.parse import unquote

import pandas as pd
import sqlalchemy as sa
from flufl.bounce import all_failures
from sqlalchemy.orm import Session

from bulkmail_kernel.compose.headers import VERP_TAG
from bulkmail_kernel.db import (
    Campaign,
    ContactPoint,
    Database,
    Event,
    Message,
    MessageStatus,
    SenderAccount,
    Suppression,
    UnsubscribeToken,
    open_database,
)
from bulkmail_kernel.exceptions import ConfigError, ProviderError
from bulkmail_kernel.outbox.suppressions import hash_token, unsubscribe, unsubscribe_address

log = logging.getLogger("bulkmail")

DEFAULT_SOFT_BOUNCE_LIMIT = 3
#: The flag that marks a message as handled; searching UNFLAGGED finds the new ones.
PROCESSED_FLAG = r"\Flagged"
RESULT_COLUMNS = [
    "uid",
    "kind",
    "recipient",
    "status",
    "permanent",
    "message_id",
    "campaign_id",
    "matched_by",
    "detail",
]

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
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,64}")
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


# --------------------------------------------------------------------------- parsing


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


# --------------------------------------------------------------------------- IMAP


@dataclass(frozen=True)
class ImapSettings:
    """Where a sender account's bounce mailbox is and how to log in."""

    host: str
    port: int
    user: str
    security: str
    folder: str
    credential_ref: str
    allow_self_signed: bool
    soft_bounce_limit: int
    unsubscribe_address: str


def imap_settings(account: SenderAccount | Any) -> ImapSettings:
    """Return the IMAP settings of a sender account (``settings['imap']``), validated."""
    conf = dict((account.settings or {}).get("imap") or {})
    where = f"sender account {account.name!r}: settings['imap']"
    if not conf.get("host"):
        raise ConfigError(
            f"{where} has no 'host': add {{'host': 'imap.firm.sk', 'port': 993, "
            "'security': 'ssl', 'user': 'bounces@firm.sk'}}",
            account=account.name,
        )
    for secret in ("password", "pass", "secret"):
        if secret in conf:
            raise ConfigError(
                f"{where}[{secret!r}]: passwords are never stored in the database; set the "
                "environment variable named by credential_ref or use the keyring",
                account=account.name,
            )
    security = str(conf.get("security", "ssl"))
    if security not in ("ssl", "starttls", "none"):
        raise ConfigError(f"{where}: security={security!r}: use ssl, starttls or none")
    mailto = str(account.settings.get("unsubscribe_mailto") or "").removeprefix("mailto:")
    return ImapSettings(
        host=str(conf["host"]),
        port=int(conf.get("port", {"ssl": 993}.get(security, 143))),
        user=str(conf.get("user") or account.from_email),
        security=security,
        folder=str(conf.get("folder", "INBOX")),
        credential_ref=str(conf.get("credential_ref") or account.credential_ref or ""),
        allow_self_signed=bool(conf.get("allow_self_signed", False)),
        soft_bounce_limit=int(
            conf.get("soft_bounce_limit")
            or account.settings.get("soft_bounce_limit")
            or DEFAULT_SOFT_BOUNCE_LIMIT
        ),
        unsubscribe_address=mailto.partition("?")[0].lower(),
    )


def _password(imap: ImapSettings) -> str:
    if imap.credential_ref and os.environ.get(imap.credential_ref):
        return os.environ[imap.credential_ref]
    hint = imap.credential_ref or "an environment variable named in settings['imap']"
    try:
        import keyring
        from keyring.errors import KeyringError

        for service in ("bulkmail-imap", "yagmail"):
            password = keyring.get_password(service, imap.user)
            if password:
                return password
    except (ImportError, KeyringError) as exc:
        log.debug("keyring unavailable for IMAP %s: %s", imap.user, exc)
    raise ConfigError(
        f"IMAP {imap.user}@{imap.host}: no password: set {hint}, or store it with "
        f"keyring.set_password('bulkmail-imap', {imap.user!r}, ...)",
        user=imap.user,
    )


def _tls_context(imap: ImapSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if imap.allow_self_signed:
        log.warning(
            "IMAP %s:%d: certificate verification is OFF (allow_self_signed): anyone on the "
            "path can read the password; use this only for a test server",
            imap.host,
            imap.port,
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _connect(imap: ImapSettings) -> imaplib.IMAP4:
    where = f"IMAP {imap.host}:{imap.port}"
    password = _password(imap)
    conn: imaplib.IMAP4 | None = None
    try:
        if imap.security == "ssl":
            conn = imaplib.IMAP4_SSL(
                imap.host, imap.port, ssl_context=_tls_context(imap), timeout=60
            )
        else:
            conn = imaplib.IMAP4(imap.host, imap.port, timeout=60)
            if imap.security == "starttls":
                conn.starttls(ssl_context=_tls_context(imap))
            elif not _is_loopback(imap.host):
                log.warning("%s: no TLS: the password crosses the network in clear", where)
        conn.login(imap.user, password)
    except (ssl.SSLError, imaplib.IMAP4.error, OSError) as exc:
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown()
        if isinstance(exc, ssl.SSLCertVerificationError):
            what = (
                f"the server's certificate does not verify ({exc.verify_message}); fix the "
                "server's certificate, or for a test server set allow_self_signed"
            )
        elif isinstance(exc, imaplib.IMAP4.error):
            what = f"login as {imap.user!r} refused ({exc}): check the password"
        else:
            what = f"cannot connect ({exc}): check host, port and security in settings['imap']"
        raise ProviderError(f"{where}: {what}", host=imap.host) from exc
    return conn


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _fetch_new(conn: imaplib.IMAP4, folder: str) -> Iterator[tuple[str, bytes]]:
    typ, _ = conn.select(_quote(folder))
    if typ != "OK":
        raise ProviderError(f"IMAP folder {folder!r} cannot be opened", folder=folder)
    typ, data = conn.uid("SEARCH", "UNFLAGGED")
    uids = data[0].split() if typ == "OK" and data and data[0] else []
    for uid in uids:
        # BODY.PEEK leaves \Seen alone: a message we do not handle stays new for a human.
        typ, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
        for item in parts or []:
            if isinstance(item, tuple) and len(item) == 2:
                yield uid.decode("ascii"), item[1]


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- acting


def _account(s: Session, account: str | int | Any) -> SenderAccount:
    if isinstance(account, SenderAccount):
        return account
    if hasattr(account, "id") and hasattr(account, "settings"):
        account = account.id
    column = SenderAccount.id if isinstance(account, int) else SenderAccount.name
    row = s.scalars(sa.select(SenderAccount).where(column == account)).one_or_none()
    if row is None:
        known = ", ".join(s.scalars(sa.select(SenderAccount.name))) or "(none)"
        raise ConfigError(f"sender account {account!r} does not exist; accounts: {known}")
    return row


def _find_message(
    s: Session, account_id: int, info: BounceInfo
) -> tuple[Message | None, BouncedRecipient, str]:
    if info.original_message_ids:
        msg = s.scalars(
            sa.select(Message).where(Message.message_id_header.in_(info.original_message_ids))
        ).first()
        if msg is not None:
            own = [r for r in info.recipients if r.recipient == msg.recipient]
            ranked = own or sorted(info.recipients, key=lambda r: not r.permanent)
            return msg, ranked[0], "message-id"
    if info.verp_tag:
        # The tag is the random part of a Message-ID we wrote: unique, so no account filter.
        msg = s.scalars(
            sa.select(Message).where(Message.message_id_header.like(f"<{info.verp_tag}@%"))
        ).first()
        if msg is not None:
            bounced = next(
                (r for r in info.recipients if r.recipient == msg.recipient), info.recipients[0]
            )
            return msg, bounced, "verp"
    ours = (
        sa.select(Message)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .where(Campaign.sender_account_id == account_id, Message.channel == "email")
        .order_by(Message.sent_at.desc().nulls_last(), Message.id.desc())
    )
    if info.verp_recipient:
        msg = s.scalars(ours.where(Message.recipient == info.verp_recipient)).first()
        if msg is not None:
            bounced = next(
                (r for r in info.recipients if r.recipient == msg.recipient), info.recipients[0]
            )
            return msg, bounced, "verp"
    for bounced in info.recipients:
        msg = s.scalars(ours.where(Message.recipient == bounced.recipient)).first()
        if msg is not None:
            return msg, bounced, "recipient"
    return None, info.recipients[0], ""


def _suppress(s: Session, address: str, reason: str, detail: str, message: Message | None) -> bool:
    exists = s.scalars(
        sa.select(Suppression.id).where(
            Suppression.channel == "email", Suppression.normalized == address
        )
    ).first()
    if exists is not None:
        return False
    s.add(
        Suppression(
            channel="email",
            normalized=address,
            reason=reason,
            detail=detail,
            message_id=message.id if message is not None else None,
        )
    )
    return True


def _apply_bounce(
    s: Session, account: SenderAccount, info: BounceInfo, imap: ImapSettings
) -> dict[str, Any]:
    msg, bounced, matched_by = _find_message(s, account.id, info)
    address = msg.recipient if msg is not None else bounced.recipient
    point = (
        s.get(ContactPoint, msg.contact_point_id)
        if msg is not None and msg.contact_point_id
        else s.scalars(
            sa.select(ContactPoint).where(
                ContactPoint.channel == "email", ContactPoint.normalized == address
            )
        ).first()
    )
    row = {
        "recipient": address,
        "status": bounced.status,
        "permanent": bounced.permanent,
        "message_id": msg.id if msg is not None else None,
        "campaign_id": msg.campaign_id if msg is not None else None,
        "matched_by": matched_by or None,
    }
    if msg is None:
        # Not ours (or from before bulkmail): nothing to mark. Still flagged, and listed.
        return {**row, "kind": "unmatched", "detail": bounced.diagnostic}
    detail = f"{bounced.status} {bounced.diagnostic}".strip()
    data = {
        "status": bounced.status,
        "action": bounced.action,
        "permanent": bounced.permanent,
        "reporter": info.reporter,
        "matched_by": matched_by,
        "reported_recipient": bounced.recipient,
    }
    event = {
        "contact_id": msg.contact_id,
        "contact_point_id": msg.contact_point_id,
        "campaign_id": msg.campaign_id,
        "message_id": msg.id,
    }
    s.add(Event(kind="bounced", detail=detail, data=data, **event))
    msg.last_code = bounced.status
    msg.last_error = f"{'hard' if bounced.permanent else 'soft'} bounce: {detail}"[:2000]
    if bounced.permanent:
        msg.status = MessageStatus.FAILED.value
        if _suppress(s, address, "hard_bounce", detail, msg):
            s.add(Event(kind="suppressed", detail=f"hard bounce: {detail}", **event))
        return {**row, "kind": "hard_bounce", "detail": detail}
    count = 0
    if point is not None:
        point.soft_bounces = (point.soft_bounces or 0) + 1
        count = point.soft_bounces
    kind = "soft_bounce"
    if count >= imap.soft_bounce_limit:
        why = f"{count} soft bounces (limit {imap.soft_bounce_limit}), last {detail}"
        if _suppress(s, address, "soft_bounce_limit", why, msg):
            s.add(Event(kind="suppressed", detail=why, **event))
        kind = "soft_bounce_limit"
    return {**row, "kind": kind, "detail": f"{detail} (soft bounce {count})"}


def _unsubscribe_request(msg: EmailMessage, imap: ImapSettings) -> bool:
    if not imap.unsubscribe_address:
        return False
    to = [
        a.lower()
        for _, a in getaddresses(
            [str(v) for h in ("To", "Delivered-To", "X-Original-To") for v in msg.get_all(h, [])]
        )
    ]
    local, _, domain = imap.unsubscribe_address.partition("@")
    # unsubscribe@firm.sk, or unsubscribe+<token>@firm.sk when the link carries the token.
    return any(
        a == imap.unsubscribe_address or (a.startswith(local + "+") and a.endswith("@" + domain))
        for a in to
    )


def _unsubscribe_target(s: Session, msg: EmailMessage) -> dict[str, str]:
    # The List-Unsubscribe mailto says subject=unsubscribe%20TOKEN; a client that did not
    # decode the %20 must not glue "20" to the token.
    words = unquote(
        " ".join(
            [str(msg.get("Subject", ""))]
            + [str(v) for h in ("To", "Delivered-To") for v in msg.get_all(h, [])]
        )
    )
    for token in _TOKEN.findall(words):
        if s.get(UnsubscribeToken, hash_token(token)) is not None:
            return {"token": token}
    sender = parseaddr(str(msg.get("From", "")))[1].lower()
    return {"address": sender}


def process_mailbox(
    account: str | int | Any,
    *,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Read the account's bounce mailbox, act on bounces and unsubscribes, return what was done.

    Reads every message not yet flagged (``settings['imap']``: host, port, security,
    user, folder, soft_bounce_limit; the password from the environment variable
    ``credential_ref`` or the keyring). Hard bounces (5.x.x) fail the message and
    suppress the address; soft ones (4.x.x) count, and suppress after
    ``soft_bounce_limit`` (default 3). Mail to ``settings['unsubscribe_mailto']``
    unsubscribes its token or its sender. Handled mail is flagged, never deleted;
    anything else is left unread and unflagged for a human.
    """
    database = db if db is not None else open_database(url)
    with database.session() as s:
        acc = _account(s, account)
        imap = imap_settings(acc)
        account_id, account_name = acc.id, acc.name
    rows: list[dict[str, Any]] = []
    conn = _connect(imap)
    try:
        for uid, raw in _fetch_new(conn, imap.folder):
            row = _process_one(database, account_id, imap, raw)
            if row is None:
                continue
            rows.append({"uid": uid, **row})
            # Flag only after the database has committed: a crash re-reads, never loses.
            conn.uid("STORE", uid, "+FLAGS", rf"({PROCESSED_FLAG} \Seen)")
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError) as exc:
            log.debug("IMAP logout failed: %s", exc)
    log.info("bounce mailbox of %s: %d messages handled", account_name, len(rows))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _process_one(
    database: Database, account_id: int, imap: ImapSettings, raw: bytes
) -> dict[str, Any] | None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    if _unsubscribe_request(msg, imap):
        with database.session() as s:
            target = _unsubscribe_target(s, msg)
        if "token" in target:
            unsubscribe(target["token"], db=database)
            return {"kind": "unsubscribe", "matched_by": "token", "detail": "mailto unsubscribe"}
        address = target["address"]
        try:
            unsubscribe_address(address, channel="email", detail="mailto unsubscribe", db=database)
        except ConfigError as exc:
            # No token and a From we cannot read as an address: left unflagged for a human.
            log.warning("unsubscribe mail from %r not handled: %s", address, exc.message)
            return None
        return {
            "kind": "unsubscribe",
            "recipient": address,
            "matched_by": "sender",
            "detail": "mailto unsubscribe",
        }
    info = parse_bounce(raw)
    if info is None:
        return None
    with database.session() as s:
        acc = s.get(SenderAccount, account_id)
        assert acc is not None
        return _apply_bounce(s, acc, info, imap)


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

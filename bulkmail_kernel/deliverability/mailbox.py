"""The bounce mailbox: read the sender account's IMAP box and act on what came back.

:func:`process_mailbox` logs in (``settings['imap']``, the password from the
environment or the keyring), fetches every message not yet flagged, and matches each
bounce :func:`~bulkmail_kernel.deliverability.bounces.parse_bounce` reads to our
message: by the Message-ID in the returned copy (fixed at registration, so retries
keep it), else by a VERP return path (``bounces+<tag>@firm.sk`` or
``bounces+jan=example.sk@firm.sk``), else by the address among this account's
campaigns. The outbox records what that means (:mod:`bulkmail_kernel.outbox.bounces`):
5.x.x fails the message and suppresses the address, 4.x.x counts a soft bounce and
suppresses after ``soft_bounce_limit``. Mail to the account's unsubscribe mailto
address unsubscribes its token or its sender. Processed mail is flagged, never deleted.
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
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message as EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any
from urllib.parse import unquote

import pandas as pd
from sqlalchemy.orm import Session

from bulkmail_kernel.db import Database, resolve_database
from bulkmail_kernel.deliverability.bounces import BouncedRecipient, BounceInfo, parse_bounce
from bulkmail_kernel.exceptions import ConfigError, ProviderError
from bulkmail_kernel.outbox.bounces import (
    BouncedMessage,
    is_unsubscribe_token,
    last_message_to,
    mailbox_account,
    message_by_header,
    message_by_verp_tag,
    record_bounce,
)
from bulkmail_kernel.outbox.suppressions import unsubscribe, unsubscribe_address
from bulkmail_kernel.records import SenderInfo

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

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,64}")


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


def imap_settings(account: SenderInfo | Any) -> ImapSettings:
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


# --------------------------------------------------------------------------- matching


def _reported(info: BounceInfo, msg: BouncedMessage) -> BouncedRecipient:
    """Return what the bounce says of the message's recipient, else of its first recipient."""
    return next((r for r in info.recipients if r.recipient == msg.recipient), info.recipients[0])


def _match(
    s: Session, account_id: int, info: BounceInfo
) -> tuple[BouncedMessage | None, BouncedRecipient, str]:
    """Return our message a bounce is about, the recipient it reports, and how it was found."""
    if info.original_message_ids:
        msg = message_by_header(s, info.original_message_ids)
        if msg is not None:
            own = [r for r in info.recipients if r.recipient == msg.recipient]
            ranked = own or sorted(info.recipients, key=lambda r: not r.permanent)
            return msg, ranked[0], "message-id"
    if info.verp_tag:
        msg = message_by_verp_tag(s, info.verp_tag)
        if msg is not None:
            return msg, _reported(info, msg), "verp"
    if info.verp_recipient:
        msg = last_message_to(s, account_id, info.verp_recipient)
        if msg is not None:
            return msg, _reported(info, msg), "verp"
    for bounced in info.recipients:
        msg = last_message_to(s, account_id, bounced.recipient)
        if msg is not None:
            return msg, bounced, "recipient"
    return None, info.recipients[0], ""


def _apply_bounce(
    s: Session, account_id: int, info: BounceInfo, imap: ImapSettings
) -> dict[str, Any]:
    msg, bounced, matched_by = _match(s, account_id, info)
    row = {
        "recipient": msg.recipient if msg is not None else bounced.recipient,
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
    kind, count = record_bounce(
        s,
        msg.id,
        status=bounced.status,
        permanent=bounced.permanent,
        detail=detail,
        data={
            "status": bounced.status,
            "action": bounced.action,
            "permanent": bounced.permanent,
            "reporter": info.reporter,
            "matched_by": matched_by,
            "reported_recipient": bounced.recipient,
        },
        soft_bounce_limit=imap.soft_bounce_limit,
    )
    if bounced.permanent:
        return {**row, "kind": kind, "detail": detail}
    return {**row, "kind": kind, "detail": f"{detail} (soft bounce {count})"}


# --------------------------------------------------------------------------- acting


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
        if is_unsubscribe_token(s, token):
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
    database = resolve_database(db, url)
    with database.session() as s:
        acc = mailbox_account(s, account)
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
        return _apply_bounce(s, account_id, info, imap)

"""The bounce mailbox: read the sender account's IMAP box and act on each message by its kind.

:func:`process_mailbox` logs in (``settings['imap']``, the password from the
environment or the keyring), fetches every message not yet flagged, and classifies each
(:func:`~bulkmail_kernel.deliverability.classify.classify_message`). It matches a
notice to our message by the Message-ID it returns or answers (fixed at registration,
so retries keep it), else by a VERP return path (``bounces+<tag>@firm.sk`` or
``bounces+jan=example.sk@firm.sk``), else by the address among this account's
campaigns. The outbox records what that means (:mod:`bulkmail_kernel.outbox.bounces`):
5.x.x fails the message and suppresses the address, 4.x.x counts a soft bounce and
suppresses after ``soft_bounce_limit``; a complaint suppresses (reason ``complaint``)
and clears mailing-allowed; auto-replies and delivery reports only go into the history.
Mail to the account's unsubscribe mailto address unsubscribes its token or its sender.
Handled mail is flagged, never deleted; unknown mail is left for a person; a message
that raises is flagged ``$BulkmailUnreadable``, reported, and the run goes on.
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
from email.utils import parseaddr
from typing import Any
from urllib.parse import unquote

import pandas as pd
from sqlalchemy.orm import Session

from bulkmail_kernel.contacts.values import email_identity
from bulkmail_kernel.db import Database, resolve_database
from bulkmail_kernel.deliverability.bounces import BouncedRecipient, BounceInfo
from bulkmail_kernel.deliverability.classify import BOUNCE_KINDS, Classification, classify_message
from bulkmail_kernel.deliverability.mailparts import explanation
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import ConfigError, ProviderError
from bulkmail_kernel.outbox.bounces import (
    BouncedMessage,
    is_unsubscribe_token,
    last_message_to,
    mailbox_account,
    message_by_header,
    message_by_verp_tag,
    record_bounce,
    record_complaint,
    record_notice,
)
from bulkmail_kernel.outbox.suppressions import unsubscribe, unsubscribe_address
from bulkmail_kernel.records import SenderInfo
from bulkmail_kernel.transports.replies import ACTIONS, by_words, classify_reply

log = logging.getLogger("bulkmail")

DEFAULT_SOFT_BOUNCE_LIMIT = 3
#: The flag that marks a message as handled; searching UNFLAGGED finds the new ones.
PROCESSED_FLAG = r"\Flagged"
#: The keyword that marks a message bulkmail could not read (left unseen for a person).
UNREADABLE_FLAG = "$BulkmailUnreadable"
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


def _connect(imap: ImapSettings, *, timeout_s: float = 60.0) -> imaplib.IMAP4:
    where = f"IMAP {imap.host}:{imap.port}"
    password = _password(imap)
    conn: imaplib.IMAP4 | None = None
    try:
        if imap.security == "ssl":
            conn = imaplib.IMAP4_SSL(
                imap.host, imap.port, ssl_context=_tls_context(imap), timeout=timeout_s
            )
        else:
            conn = imaplib.IMAP4(imap.host, imap.port, timeout=timeout_s)
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


def same_address(reported: str, ours: str) -> bool:
    """Return whether a bounce's address is our recipient's (by identity: servers re-case)."""
    try:
        return email_identity(reported) == email_identity(ours)
    except ValueError:  # not an address at all: equal only as written
        return reported == ours


def _match(
    s: Session, account_id: int, info: BounceInfo
) -> tuple[BouncedMessage | None, BouncedRecipient | None, str]:
    """Return our message a notice is about, the recipient it reports, and how it was found."""
    if info.original_message_ids:
        msg = message_by_header(s, info.original_message_ids)
        if msg is not None:
            own = [r for r in info.recipients if same_address(r.recipient, msg.recipient)]
            ranked = own or sorted(info.recipients, key=lambda r: not r.permanent)
            return msg, (ranked[0] if ranked else None), "message-id"
    for how, found in (
        ("verp", message_by_verp_tag(s, info.verp_tag) if info.verp_tag else None),
        (
            "verp",
            last_message_to(s, account_id, info.verp_recipient) if info.verp_recipient else None,
        ),
    ):
        if found is not None:
            own = [r for r in info.recipients if same_address(r.recipient, found.recipient)]
            ranked = own or list(info.recipients)
            return found, (ranked[0] if ranked else None), how
    for bounced in info.recipients:
        msg = last_message_to(s, account_id, bounced.recipient)
        if msg is not None:
            return msg, bounced, "recipient"
    return None, (info.recipients[0] if info.recipients else None), ""


def _row(
    kind: str,
    msg: BouncedMessage | None,
    reported: BouncedRecipient | None,
    matched_by: str,
    detail: str,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "recipient": msg.recipient if msg is not None else (reported and reported.recipient),
        "status": reported.status if reported is not None and reported.status else None,
        "permanent": reported.permanent if reported is not None else None,
        "message_id": msg.id if msg is not None else None,
        "campaign_id": msg.campaign_id if msg is not None else None,
        "matched_by": matched_by or None,
        "detail": detail,
    }


def _apply(
    s: Session, account_id: int, found: Classification, imap: ImapSettings, raw: bytes
) -> dict[str, Any]:
    """Act on one classified notice; return its result row."""
    info = found.info
    assert info is not None
    msg, reported, matched_by = _match(s, account_id, info)
    if msg is None:
        # Not ours (or from before bulkmail): nothing to act on. Still flagged, and listed.
        what = "unmatched" if found.kind in BOUNCE_KINDS else found.kind
        return _row(what, None, reported, "", f"{found.detail} (no message of ours matched)")
    data = {
        "reporter": info.reporter,
        "matched_by": matched_by,
        "reported_recipient": reported.recipient if reported is not None else None,
    }
    if found.kind == "complaint":
        record_complaint(s, msg.id, detail=found.detail, data=data)
        return _row("complaint", msg, reported, matched_by, found.detail)
    if found.kind in ("auto_reply", "delivery_report"):
        if reported is not None and reported.status:
            data["status"] = reported.status
        record_notice(s, msg.id, kind=found.kind, detail=found.detail, data=data)
        return _row(found.kind, msg, reported, matched_by, found.detail)
    if reported is None:
        # A failure that names no readable address but returned our message: its recipient.
        reported = BouncedRecipient(
            msg.recipient,
            found.status or ("5.0.0" if found.kind == "hard_bounce" else "4.0.0"),
            found.kind == "hard_bounce",
            "failed",
            found.detail,
        )
    detail = f"{reported.status} {reported.diagnostic}".strip()
    permanent, suppress, category = _bounce_action(reported, raw)
    if permanent and not suppress:
        detail = f"{detail} (nobody suppressed: a {category} refusal is about the sender)"
    kind, count = record_bounce(
        s,
        msg.id,
        status=reported.status,
        permanent=permanent,
        detail=detail,
        data={
            **data,
            "status": reported.status,
            "action": reported.action,
            "category": category,
        },
        soft_bounce_limit=imap.soft_bounce_limit,
        suppress=suppress,
    )
    if not permanent:
        detail = f"{detail} (soft bounce {count})"
    return _row(kind, msg, reported, matched_by, detail)


def _bounce_action(reported: BouncedRecipient, raw: bytes) -> tuple[bool, bool, str]:
    """Return whether a bounce fails the message, suppresses the address, and its category.

    A bounce that arrives later is read like a refusal on the wire (one table,
    ``transports.replies``): only a bad mailbox suppresses; a full mailbox (x.2.2) counts
    as a soft bounce; a policy or system refusal (our IP on a blocklist, DMARC, 5.3-5.5)
    fails the message and suppresses nobody, since every recipient would get the same
    answer and suppressing on it would burn the list.
    """
    if not reported.permanent:
        return False, False, "temporary"
    code = 550 if reported.status.startswith("5") else 450
    category = classify_reply(code, f"{reported.status} {reported.diagnostic}")
    if reported.status.endswith(".0") and category in ("system", "content"):
        # An unspecific code (qmail's #5.5.0, a bare 5.0.0) says little: the remote
        # server's own words in the notification decide ("550 Unknown user" → mailbox).
        text = explanation(email.message_from_bytes(raw, policy=email.policy.compat32))
        category = by_words(text) or category
    if category == "mailbox_full":
        return False, False, category
    return True, ACTIONS[category][1], category


# --------------------------------------------------------------------------- acting


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
    """Read the account's bounce mailbox, act on each message by its kind, return what was done.

    Reads every message not yet flagged (``settings['imap']``: host, port, security,
    user, folder, soft_bounce_limit; the password from the environment variable
    ``credential_ref`` or the keyring) and lists each with its kind (see
    :func:`~bulkmail_kernel.deliverability.classify.classify_message`). Hard bounces
    (5.x.x) fail the message and suppress the address; soft ones (4.x.x) count, and
    suppress after ``soft_bounce_limit`` (default 3); complaints suppress (reason
    ``complaint``) and clear mailing-allowed; auto-replies and delivery reports go
    into the contact's history and change nothing else. Mail to
    ``settings['unsubscribe_mailto']`` unsubscribes its token or its sender. Handled
    mail is flagged, never deleted; ``unknown`` mail is left unread and unflagged for
    a person. A message that cannot be read is flagged ``$BulkmailUnreadable`` (and
    the IMAP Flagged flag, so it is not read again) but left unread, listed as ``unreadable`` with
    the error, and the run goes on.
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
            try:
                row = _process_one(database, account_id, imap, raw)
            except Exception as exc:  # one bad message must never stop the run
                log.warning("bounce mailbox uid %s could not be read: %r", uid, exc)
                _flag(conn, uid, rf"({UNREADABLE_FLAG} {PROCESSED_FLAG})")
                what = f"could not be read: {type(exc).__name__}: {exc}"
                rows.append({"uid": uid, "kind": "unreadable", "detail": what[:500]})
                continue
            rows.append({"uid": uid, **row})
            if row["kind"] != "unknown":
                # Flag only after the database has committed: a crash re-reads, never loses.
                _flag(conn, uid, rf"({PROCESSED_FLAG} \Seen)")
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError) as exc:
            log.debug("IMAP logout failed: %s", exc)
    log.info("bounce mailbox of %s: %d messages read", account_name, len(rows))
    return readable(pd.DataFrame(rows, columns=RESULT_COLUMNS))


def _flag(conn: imaplib.IMAP4, uid: str, flags: str) -> None:
    typ, data = conn.uid("STORE", uid, "+FLAGS", flags)
    if typ != "OK" and UNREADABLE_FLAG in flags:
        # A server without keywords: \Flagged alone still keeps it from being re-read.
        typ, data = conn.uid("STORE", uid, "+FLAGS", f"({PROCESSED_FLAG})")
    if typ != "OK":
        raise ProviderError(f"IMAP uid {uid}: cannot set flags {flags}: {data!r}", uid=uid)


def _process_one(
    database: Database, account_id: int, imap: ImapSettings, raw: bytes
) -> dict[str, Any]:
    found = classify_message(raw, unsubscribe_address=imap.unsubscribe_address)
    if found.kind == "unsubscribe":
        return _unsubscribe(database, raw)
    if found.info is None:
        return _row(found.kind, None, None, "", found.detail)
    with database.session() as s:
        return _apply(s, account_id, found, imap, raw)


def _unsubscribe(database: Database, raw: bytes) -> dict[str, Any]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    with database.session() as s:
        target = _unsubscribe_target(s, msg)
    if "token" in target:
        unsubscribe(target["token"], db=database)
        return {"kind": "unsubscribe", "matched_by": "token", "detail": "mailto unsubscribe"}
    address = target["address"]
    try:
        unsubscribe_address(address, channel="email", detail="mailto unsubscribe", db=database)
    except ConfigError as exc:
        # No token and a From we cannot read as an address: left for a person.
        log.warning("unsubscribe mail from %r not handled: %s", address, exc.message)
        return {"kind": "unknown", "detail": f"unsubscribe request not handled: {exc.message}"}
    return {
        "kind": "unsubscribe",
        "recipient": address,
        "matched_by": "sender",
        "detail": "mailto unsubscribe",
    }

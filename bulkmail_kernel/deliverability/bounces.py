"""Bounce parsing: what a delivery failure notification says, read from its bytes alone.

:func:`parse_bounce` is pure: bytes in, :class:`BounceInfo` (or None for a message that
is not a delivery failure, a delivery report included) out; no database, no IMAP. The
RFC 3464 ``message/delivery-status`` part comes first: each failed or delayed
recipient with its Status (an undefined ``x.0.0`` gives way to the remote server's
specific code in Diagnostic-Code). Where a server sends no such part (Exim, qmail,
Gmail, Yahoo, Office 365, DragonFly write prose) GNU Mailman's flufl.bounce names the
recipients, else the notification's own words do (X-Failed-Recipients, ``RCPT TO:``,
the addresses it mentions, the returned original's To), and the status is the enhanced
code stated near the address, else one derived from the basic code and its words.
Every recipient is a valid address (:func:`~.mailparts.valid_address`), never a path or
a Message-ID. :func:`~.classify.classify_message` decides what a message is before
asking here; :func:`parse_bounces` lists saved ``.eml`` files as a frame.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message as EmailMessage
from email.utils import getaddresses, parseaddr

import pandas as pd
from flufl.bounce import all_failures

from bulkmail_kernel.deliverability.mailparts import (
    ADDRESS,
    clean,
    derived_status,
    diagnostic_line,
    enhanced_status,
    explanation,
    from_a_daemon,
    header_text,
    original_ids,
    original_recipients,
    sender_address,
    text_of,
    valid_address,
    verp_recipient,
    verp_tag,
)
from bulkmail_kernel.display import readable

log = logging.getLogger("bulkmail")


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


#: Subjects of delivery-failure notifications, in the languages mail servers write them.
_FAILURE_SUBJECT = re.compile(
    r"(?i)undeliver|undelivered|non[- ]?deliver|not (be )?delivered|delivery (status )?"
    r"(notification|failure|failed|problem|has failed)|failure notice|mail delivery failed|"
    r"returned mail|returned to sender|delivery report|mail system error|could not send|"
    r"unzustellbar|non remis|no se puede entregar|non recapitabile|nedoru[cč]|"
    r"nie dostarczono|kézbesíthetetlen|не доставлено|bounce|rejected|message not sent|"
    r"delayed mail|warning: could not|delivery delayed|unable to deliver|problem delivering"
)


#: A notification's own words for a failed delivery (for senders that give no other sign).
_FAILURE_TEXT = re.compile(
    r"(?i)\b(?:could not|cannot|can't|couldn't|was not|wasn't|unable to|failed to)\s+"
    r"(?:be\s+)?deliver|\bdeliver(?:y|ing)\b.{0,40}\bfailed\b|\bundeliverable\b|"
    r"\bpermanent (?:fatal )?error|\bnot (?:be )?delivered\b"
)


def dsn_groups(msg: EmailMessage) -> list[EmailMessage]:
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
                    if isinstance(g, EmailMessage)
                    and (g.get("Final-Recipient") or g.get("Original-Recipient") or g.get("Status"))
                ]
            elif isinstance(payload, str):
                # A delivery-status part the parser left as text (a transfer encoding on it).
                groups += _groups_from_text(text_of(part))
    return groups


def _groups_from_text(text: str) -> list[EmailMessage]:
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    found = []
    for block in blocks:
        group = email.message_from_string(block.strip() + "\n\n", policy=email.policy.compat32)
        if group.get("Final-Recipient") or group.get("Original-Recipient") or group.get("Status"):
            found.append(group)
    return found


def dsn_action(group: EmailMessage) -> str:
    """Return a DSN field group's Action, lower-cased, read from its Status where absent."""
    action = str(group.get("Action", "")).strip().lower().split()[:1]
    if action:
        # "expired" is no RFC 3464 action, but SendGrid writes it for a delivery it gave
        # up on: a failure, whose Status (often empty) the words then decide.
        return "failed" if action[0] == "expired" else action[0]
    status = str(group.get("Status", "")).strip()
    return {"2": "delivered", "4": "delayed", "5": "failed"}.get(status[:1], "")


def dsn_recipient(group: EmailMessage) -> str | None:
    """Return the valid address a DSN field group names (Final-, else Original-Recipient)."""
    for name in ("Final-Recipient", "Original-Recipient", "X-Actual-Recipient"):
        field = group.get(name)
        if not field:
            continue
        # "rfc822; user@example.sk" (the address type is mandatory but often cased oddly).
        value = str(field).partition(";")[2] if ";" in str(field) else str(field)
        address = valid_address(parseaddr(value.strip())[1] or value)
        if address:
            return address
    return None


def _dsn_status(group: EmailMessage, text: str, address: str, permanent: bool) -> str:
    status = enhanced_status(str(group.get("Status", "")))
    diagnostic = str(group.get("Diagnostic-Code", ""))
    said = enhanced_status(diagnostic)
    # "Status: 5.0.0" (undefined) with "Diagnostic-Code: 550 5.1.1 ...": the remote
    # server's own code is the exact one; the reporting MTA only knew the class.
    if status and said and status.endswith(".0.0") and said[0] == status[0]:
        return said
    return (
        status
        or said
        or _status_near(text, address)
        or derived_status(f"{diagnostic}\n{text}", permanent=permanent)
        or ("5.0.0" if permanent else "4.0.0")
    )


def _status_near(text: str, address: str) -> str | None:
    """Return the enhanced code stated after ``address`` in ``text``, else the first one."""
    at = text.lower().find(address) if address else -1
    if at >= 0:
        near = enhanced_status(text[at : at + 600])
        if near:
            return near
    return enhanced_status(text)


def _flufl_failures(message: bytes) -> dict[str, bool]:
    """Return flufl.bounce's valid recipients, each True if permanent, robust to 8-bit headers."""
    end = message.find(b"\n\n")
    head, body = (message[:end], message[end:]) if end >= 0 else (message, b"")
    # Raw UTF-8 in a header (invalid, but Mail.ru and replies do it) makes compat32 return
    # Header objects, on which several flufl detectors call str methods and crash.
    head = bytes(b if b < 0x80 else 0x3F for b in head)
    try:
        temporary, permanent = all_failures(
            email.message_from_bytes(head + body, policy=email.policy.compat32)
        )
    except Exception as exc:  # a detector bug must not stop the mailbox run
        log.warning("flufl.bounce failed on a message (%s); using the DSN part only", exc)
        return {}
    found: dict[str, bool] = {}
    for raw, is_permanent in [(a, False) for a in temporary] + [(a, True) for a in permanent]:
        # flufl returns what its patterns caught: a JSON fragment, a path, a Message-ID.
        address = valid_address(raw.decode("utf-8", "replace"))
        if address:
            found[address] = is_permanent
    return found


def looks_like_a_bounce(msg: EmailMessage) -> bool:
    """Return whether the headers say delivery failed (a null Return-Path alone does not)."""
    return bool(
        (
            msg.get_content_type() == "multipart/report"
            and str(msg.get_param("report-type", "")).lower() == "delivery-status"
        )
        or msg.get("X-Failed-Recipients")
        or msg.get("X-MS-Exchange-Message-Is-Ndr") is not None
        or from_a_daemon(msg)
        or _FAILURE_SUBJECT.search(header_text(msg, "Subject"))
    )


def _says_it_failed(msg: EmailMessage, text: str) -> bool:
    """Return whether a null-sender message says in its own words that delivery failed."""
    # Some servers send a bounce with no daemon From, no failure subject and no DSN
    # (KDDI: "Could not be delivered to: <...>"). The null Return-Path says a system sent
    # it (RFC 5321 4.5.5); the words say what happened. Auto-replies were decided before.
    null = str(msg.get("Return-Path", "")).strip() in ("<>", "")
    return null and bool(_FAILURE_TEXT.search(text)) and bool(ADDRESS.search(text))


def _own_addresses(msg: EmailMessage) -> set[str]:
    """Return the addresses the notification itself was sent to (our return path)."""
    values = [str(v) for h in ("To", "Delivered-To", "X-Original-To") for v in msg.get_all(h, [])]
    return {a for a in (valid_address(v) for _, v in getaddresses(values)) if a}


def _in_context(addresses: Iterable[str], msg: EmailMessage, text: str) -> list[str]:
    """Order failed addresses as the notification names them, earliest in its words first.

    An address the explanation names comes before one found only in the returned copy
    or a header, and the notification's own addressee (our return path) comes last:
    flufl.bounce returns a set, so without this the "first" recipient changed from run to
    run, and an address the failure text names was lost behind the copy's To.
    """
    own = _own_addresses(msg)
    lowered = text.lower()

    def rank(item: tuple[int, str]) -> tuple[bool, bool, int, int]:
        index, address = item
        at = lowered.find(address.lower())
        return (address in own, at < 0, at, index)

    return [a for _, a in sorted(enumerate(addresses), key=rank)]


def _percent_hack(address: str, originals: list[str]) -> str:
    """Return the address ``local%domain@relay`` stands for, when our original went to it."""
    # Exim reports a forwarded delivery as "generated by nyaan%gol.com@relay" (the old
    # percent hack, RFC 1123 5.2.16): the recipient we wrote to is nyaan@gol.com.
    local, _, _ = address.rpartition("@")
    if "%" in local:
        user, _, domain = local.rpartition("%")
        meant = valid_address(f"{user}@{domain}")
        if meant and meant in originals:
            return meant
    return address


#: A line of a prose notification that labels its recipient: "Recipient: <a@b>".
_LABELLED_RECIPIENT = re.compile(
    r"(?im)^[ \t]*(?:failed |intended |original )?recipient(?:\(s\)| address)?:[ \t]*"
    r"<?([^\s<>@]+@[^\s<>]+?)>?[ \t\r]*$"
)
#: A line of a prose notification that labels the sender: "Sender: <a@b>".
_LABELLED_SENDER = re.compile(
    r"(?im)^[ \t]*(?:sender|from|envelope-from|return-path):[ \t]*"
    r"(?:[^<\n]*<)?([^\s<>@]+@[^\s<>]+?)>?[ \t\r]*$"
)


def _prose_recipients(msg: EmailMessage, text: str) -> list[str]:
    """Return the failed addresses a notification without a DSN part names, best first."""
    named = [
        a
        for a in (valid_address(v) for v in str(msg.get("X-Failed-Recipients", "")).split(","))
        if a
    ]
    if named:
        return named
    # "Recipient: <address>" on a line of its own names the failed recipient outright,
    # even when the notice went to the recipient too (a virus gateway writes to both).
    labelled = [a for a in (valid_address(m) for m in _LABELLED_RECIPIENT.findall(text)) if a]
    if labelled:
        return labelled[:1]
    own = {valid_address(a) for _, a in getaddresses([str(msg.get(h, "")) for h in ("To", "From")])}
    # An address on a "Sender:" or "From:" line of the explanation is who sent, not who failed.
    own |= {valid_address(m) for m in _LABELLED_SENDER.findall(text)}
    mentioned: list[str] = []
    for match in ADDRESS.finditer(text):
        address = valid_address(match.group())
        if address and address not in own and address not in mentioned:
            local = address.partition("@")[0]
            if not re.match(r"(?i)(mailer-daemon|postmaster)$", local):
                mentioned.append(address)
    # "RCPT TO: <address>" in the transcript names the refused recipient.
    refused = [
        a
        for a in (
            valid_address(m) for m in re.findall(r"(?i)rcpt to:\s*<?([^\s<>]+@[^\s<>]+)", text)
        )
        if a and a not in own
    ]
    if refused:
        return refused[:1]
    originals = original_recipients(msg)
    both = [a for a in mentioned if a in originals]
    if both:
        return both
    if mentioned:
        return mentioned[:1]
    return originals[:1]


def parse_bounce(message: bytes) -> BounceInfo | None:
    """Return what a delivery status notification reports, or None if ``message`` is not one."""
    return bounce_of(email.message_from_bytes(message, policy=email.policy.compat32), message)


def bounce_of(msg: EmailMessage, message: bytes) -> BounceInfo | None:
    """Return what the parsed notification ``msg`` (bytes ``message``) reports as failed."""
    text = explanation(msg)
    found: dict[str, BouncedRecipient] = {}
    groups = dsn_groups(msg)
    for group in groups:
        action = dsn_action(group)
        if action not in ("failed", "delayed"):
            continue  # delivered, relayed, expanded: a delivery report, not a failure
        address = dsn_recipient(group)
        if not address:
            continue
        permanent = action == "failed"
        status = _dsn_status(group, text, address, permanent)
        found.setdefault(
            address,
            BouncedRecipient(
                address,
                status,
                status.startswith("5"),
                action,
                clean(str(group.get("Diagnostic-Code", ""))) or diagnostic_line(text, status),
            ),
        )
    if groups and not found and all(dsn_recipient(g) for g in groups):
        return None  # every recipient delivered, relayed or expanded
    flufl = _flufl_failures(message)
    if not found and not flufl:
        if not looks_like_a_bounce(msg) and not _says_it_failed(msg, text):
            return None
        # flufl.bounce knows no pattern for this server: take what the notification names.
        flufl = dict.fromkeys(_prose_recipients(msg, text), True)
    # A failure the DSN states for a recipient it could not name as an address (Exim
    # delivering to a mailbox path): its Status is the stated one for the prose's address.
    unnamed = [
        enhanced_status(str(g.get("Status", "")))
        for g in groups
        if dsn_action(g) in ("failed", "delayed") and not dsn_recipient(g)
    ]
    stated = unnamed[0] if len(unnamed) == 1 and not found else None
    originals = original_recipients(msg)
    for reported in _in_context(flufl, msg, text):
        is_permanent = flufl[reported]
        address = _percent_hack(reported, originals)
        if address in found:
            continue
        status = (
            _status_near(text, reported)
            or stated
            or derived_status(text, permanent=is_permanent)
            or ("5.0.0" if is_permanent else "4.0.0")
        )
        found[address] = BouncedRecipient(
            address,
            status,
            status.startswith("5"),
            "failed" if status.startswith("5") else "delayed",
            diagnostic_line(text, status) or diagnostic_line(text, address),
        )
    # A Message-ID looks like an address: never report one as a recipient.
    ids = original_ids(msg, message)
    quoted = {m.strip("<>").lower() for m in ids} | {
        m.lower() for m in re.findall(r"(?i)message-id:\s*<([^<>\s]+)>", text)
    }
    found = {a: r for a, r in found.items() if a not in quoted}
    if not found:
        return None
    return BounceInfo(
        tuple(found.values()),
        ids,
        verp_recipient(msg),
        clean(sender_address(msg)),
        verp_tag(msg),
    )


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
    return readable(pd.DataFrame(rows, columns=columns))

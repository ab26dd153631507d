"""Notices that are not delivery failures: complaints, auto-replies, JSON notifications.

A complaint is an RFC 5965 abuse report (``multipart/report;
report-type=feedback-report``), also when a person or a provider forwards it as an
attachment, or Microsoft's JMRP report (the complained-of message attached, stamped
``X-HmXmrOriginalRecipient``). An auto-reply is what RFC 3834 marks
(``Auto-Submitted``), what older responders mark (``X-Autoreply``, ``Precedence:
auto_reply``) or what the subject says in the languages Exchange, Gmail, Zimbra and
vacation programs write. Amazon SES (through SNS) and SendGrid post JSON; mailed to
the bounce box, its events are read here as bounces, complaints and deliveries.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message as EmailMessage
from email.utils import getaddresses
from typing import Any

from bulkmail_kernel.deliverability.mailparts import (
    derived_status,
    enhanced_status,
    header_text,
    original_ids,
    reply_ids,
    returned_copy,
    text_of,
    valid_address,
)

#: Subjects of automatic replies: Exchange/Outlook, Gmail, Zimbra, vacation programs.
_AUTO_SUBJECT = re.compile(
    r"(?i)^\s*auto:|(?:"
    r"automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|automated response|"
    r"out of (the )?office|ooo\b|on vacation|away from (the )?office|vacation reply|"
    r"abwesenheitsnotiz|automatische antwort|abwesend|"
    r"réponse automatique|absence du bureau|absent du bureau|"
    r"automatická odpove[ďd]|automatická odpověď|mimo kancelárie|mimo kancelář|"
    r"odpowied[źz] automatyczna|automatyczna odpowied[źz]|poza biurem|"
    r"automatikus válasz|házon kívül|"
    r"respuesta automática|fuera de la oficina|"
    r"risposta automatica|fuori sede|fuori ufficio|"
    r"resposta automática|ausência|fora do escritório|"
    r"automatisch antwoord|afwezig|"
    r"automatiskt svar|automatisk svar|fraværende|frånvaro|"
    r"автоматический ответ|автоответ|вне офиса|в отпуске|"
    r"автоматична відповідь|"
    r"自動応答|自动回复|자동 응답"
    r")"
)
#: What an automatic reply's text says, for replies marked only weakly (``Precedence: bulk``).
_AUTO_BODY = re.compile(
    r"(?i)out of (the )?office|i am (currently )?(away|out|on (annual )?leave|on vacation)|"
    r"i('m| am) away|will be back|returning on|limited access to (my )?e-?mail|"
    r"this is an automat(ed|ic) (reply|response|message)|thank you for your (e-?mail|message)|"
    r"reply (to you )?as soon as possible|get back to you|"
    r"bin (bis|ab) .* (nicht|abwesend)|je suis absent|estoy fuera|sono assente|"
    r"som mimo|jsem mimo|jestem poza|nem vagyok|я в отпуске|нахожусь в отпуске"
)
_AUTO_VALUES = re.compile(r"(?i)^\s*auto[-_ ]?(replied|generated|notified)")


@dataclass(frozen=True)
class Notice:
    """What a notification that is not a delivery failure says."""

    #: complaint, auto_reply, delivery_report, hard_bounce, soft_bounce
    kind: str
    #: Valid addresses it is about (the complainant, the person who replied, the delivered).
    recipients: tuple[str, ...]
    #: Message-IDs of our original (returned copy, In-Reply-To, References).
    message_ids: tuple[str, ...]
    status: str = ""
    detail: str = ""


# --------------------------------------------------------------------------- complaints


def _feedback_reports(msg: EmailMessage) -> Iterator[EmailMessage]:
    """Yield every ``message/feedback-report`` part, however deeply forwarded."""
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            yield part


def _report_fields(part: EmailMessage) -> EmailMessage | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], EmailMessage):
        return payload[0]
    if isinstance(payload, str):
        return email.message_from_string(payload.strip() + "\n\n", policy=email.policy.compat32)
    return None


def _jmrp_complaint(msg: EmailMessage, raw: bytes) -> Notice | None:
    """Return the complaint of a Microsoft JMRP report (Outlook.com/Hotmail), if ``msg`` is one."""
    # Microsoft's Junk Mail Reporting Program sends no feedback-report part: the reported
    # message comes back attached, stamped by Outlook.com with the mailbox that
    # complained (X-HmXmrOriginalRecipient). A delivery report is never one.
    if msg.get_content_type() == "multipart/report":
        return None
    for part in msg.walk():
        if part.get_content_type() != "message/rfc822":
            continue
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, EmailMessage):
            continue
        address = valid_address(str(inner.get("X-HmXmrOriginalRecipient", "")))
        if address:
            ids = original_ids(msg, raw)
            return Notice("complaint", (address,), ids, "", "complaint (abuse) from Microsoft JMRP")
    return None


def complaint(msg: EmailMessage, raw: bytes) -> Notice | None:
    """Return the complaint an ARF report (also one forwarded as an attachment) makes."""
    reports = list(_feedback_reports(msg))
    if not reports:
        return _jmrp_complaint(msg, raw)
    fields = _report_fields(reports[0])
    feedback_type = str(fields.get("Feedback-Type", "abuse")).strip().lower() if fields else ""
    if feedback_type in ("not-spam", "auth-failure"):
        # "not-spam" says a message is wanted; "auth-failure" (RFC 6591, a DMARC/SPF/DKIM
        # failure report) is a machine's finding about the sending domain: nobody complained.
        return None
    recipients: list[str] = []
    if fields is not None:
        for name in ("Original-Rcpt-To", "Removal-Recipient"):
            for value in fields.get_all(name, []):
                address = valid_address(str(value))
                if address and address not in recipients:
                    recipients.append(address)
    copy = returned_copy(msg)
    if isinstance(copy, EmailMessage):
        for _, value in getaddresses([str(v) for v in copy.get_all("To", [])]):
            address = valid_address(value)
            if address and address not in recipients:
                recipients.append(address)
    elif isinstance(copy, str):
        for line in re.findall(r"(?im)^to:[ \t]*(.*)$", copy):
            for _, value in getaddresses([line]):
                address = valid_address(value)
                if address and address not in recipients:
                    recipients.append(address)
    agent = str(fields.get("User-Agent", "")).strip() if fields else ""
    detail = f"complaint ({feedback_type or 'abuse'})" + (f" from {agent}" if agent else "")
    return Notice("complaint", tuple(recipients), original_ids(msg, raw), "", detail)


# --------------------------------------------------------------------------- auto-replies


def auto_reply_signal(msg: EmailMessage) -> str:
    """Return why ``msg`` is an automatic reply ("" if nothing says so)."""
    auto = str(msg.get("Auto-Submitted", ""))
    if _AUTO_VALUES.match(auto):
        return f"Auto-Submitted: {auto.strip()}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Reply"):
        value = str(msg.get(name, "")).strip().lower()
        if value and value not in ("no", "false", "0"):
            return f"{name}: {value}"
    precedence = str(msg.get("Precedence", "")).strip().lower()
    if precedence == "auto_reply":
        return "Precedence: auto_reply"
    subject = header_text(msg, "Subject")
    if _AUTO_SUBJECT.search(subject):
        return f"subject {subject.strip()[:80]!r}"
    weak = (
        precedence in ("bulk", "junk", "list")
        or str(msg.get("Return-Path", "")).strip() == "<>"
        or msg.get("X-Auto-Response-Suppress") is not None
    )
    if weak and not msg.is_multipart() and _AUTO_BODY.search(subject + "\n" + text_of(msg)[:3000]):
        return "the text of an automatic reply"
    if str(msg.get("X-MS-Exchange-Inbox-Rules-Loop", "")).strip() or msg.get(
        "X-MS-Exchange-Generated-Message-Source"
    ):
        return "an Exchange inbox rule"
    return ""


def auto_reply(msg: EmailMessage, why: str) -> Notice:
    """Return the auto-reply notice: who replied and which of our messages they answer."""
    sender = [
        a for a in (valid_address(v) for _, v in getaddresses([str(msg.get("From", ""))])) if a
    ]
    return Notice("auto_reply", tuple(sender), reply_ids(msg), "", f"auto-reply ({why})")


# --------------------------------------------------------------------------- JSON


#: The break a relay puts into an over-long line: "!", a line end, one space.
_LONG_LINE_BREAK = re.compile(r"!\r?\n ")


def _json_bodies(msg: EmailMessage) -> Iterator[Any]:
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() not in ("text", "application"):
            continue
        text = text_of(part).strip()
        start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
        if start < 0:
            continue
        # SNS appends an unsubscribe footer after the JSON, and a relay may have broken
        # its one long line (RFC 5322 2.1.1: 998 characters) with Sendmail's "!" + newline
        # + space: read the first JSON value as it was sent, ignore what follows it.
        for candidate in (text, _LONG_LINE_BREAK.sub("", text)):
            try:
                yield json.JSONDecoder().raw_decode(candidate, start)[0]
                break
            except ValueError:
                continue


def _ses_event(data: dict[str, Any]) -> Notice | None:
    """Read an Amazon SES notification (possibly inside an SNS envelope)."""
    if isinstance(data.get("Message"), str) and data.get("Type") == "Notification":
        try:
            inner = json.loads(data["Message"])
        except ValueError:
            return None
        return _ses_event(inner) if isinstance(inner, dict) else None
    kind = str(data.get("notificationType") or data.get("eventType") or "")
    mail = data.get("mail") if isinstance(data.get("mail"), dict) else {}
    ids = []
    for header in (mail or {}).get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            ids.append(str(header.get("value", "")).strip())
    if kind == "Bounce":
        bounce = data.get("bounce") or {}
        permanent = str(bounce.get("bounceType", "")).lower() == "permanent"
        recipients, statuses = [], []
        for item in bounce.get("bouncedRecipients") or []:
            address = valid_address(str(item.get("emailAddress", "")))
            if address:
                recipients.append(address)
                diag = str(item.get("diagnosticCode", ""))
                statuses.append(
                    enhanced_status(str(item.get("status", "")))
                    or enhanced_status(diag)
                    or derived_status(diag, permanent=permanent)
                    or ("5.0.0" if permanent else "4.0.0")
                )
        status = statuses[0] if statuses else ("5.0.0" if permanent else "4.0.0")
        what = "hard_bounce" if status.startswith("5") else "soft_bounce"
        detail = f"Amazon SES {bounce.get('bounceType')}/{bounce.get('bounceSubType')}"
        return Notice(what, tuple(recipients), tuple(ids), status, detail)
    if kind == "Complaint":
        complaint_data = data.get("complaint") or {}
        recipients = [
            a
            for a in (
                valid_address(str(i.get("emailAddress", "")))
                for i in complaint_data.get("complainedRecipients") or []
            )
            if a
        ]
        why = complaint_data.get("complaintFeedbackType") or "abuse"
        return Notice("complaint", tuple(recipients), tuple(ids), "", f"Amazon SES ({why})")
    if kind == "Delivery":
        delivery = data.get("delivery") or {}
        recipients = [
            a for a in (valid_address(str(r)) for r in delivery.get("recipients") or []) if a
        ]
        status = enhanced_status(str(delivery.get("smtpResponse", ""))) or "2.0.0"
        return Notice("delivery_report", tuple(recipients), tuple(ids), status, "Amazon SES")
    return None


_SENDGRID = {
    "bounce": "hard_bounce",
    "dropped": "hard_bounce",
    "deferred": "soft_bounce",
    "spamreport": "complaint",
    "delivered": "delivery_report",
}


def _sendgrid_event(data: dict[str, Any]) -> Notice | None:
    """Read one SendGrid event webhook record."""
    kind = _SENDGRID.get(str(data.get("event", "")))
    address = valid_address(str(data.get("email", "")))
    if kind is None or address is None:
        return None
    text = f"{data.get('status', '')} {data.get('reason', '') or data.get('response', '')}"
    status = ""
    if kind in ("hard_bounce", "soft_bounce"):
        blocked = str(data.get("type", "")) == "blocked"
        permanent = kind == "hard_bounce" and not blocked
        status = (
            enhanced_status(text)
            or derived_status(text, permanent=permanent)
            or ("5.0.0" if permanent else "4.0.0")
        )
        kind = "hard_bounce" if status.startswith("5") else "soft_bounce"
    ids = []
    for key in ("smtp-id", "message_id"):
        if data.get(key):
            value = str(data[key]).strip()
            ids.append(value if value.startswith("<") else f"<{value}>")
    detail = f"SendGrid {data.get('event')}: {data.get('reason') or data.get('response') or ''}"
    return Notice(kind, (address,), tuple(ids), status, detail.strip())


def json_notice(msg: EmailMessage) -> Notice | None:
    """Return the first bounce, complaint or delivery event a JSON body in ``msg`` reports."""
    for data in _json_bodies(msg):
        records = data if isinstance(data, list) else [data]
        for record in records:
            if not isinstance(record, dict):
                continue
            notice = _ses_event(record) if "event" not in record else _sendgrid_event(record)
            if notice is not None and notice.recipients:
                return notice
    return None

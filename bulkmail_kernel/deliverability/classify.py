"""What each message in the bounce mailbox is: one kind, decided from its structure first.

:func:`classify_message` is pure (bytes in, :class:`Classification` out). The order
is the RFCs' first, then well-known patterns: an unsubscribe request (mail to the
account's mailto address); an RFC 5965 complaint, also forwarded; an RFC 3464 report
(failed or delayed → a bounce, delivered/relayed/expanded only → a delivery report);
a JSON notification (Amazon SES, SendGrid); an RFC 3834 auto-reply that carries no
failure; a failure in prose (flufl.bounce, then the notification's own words);
anything else is ``unknown``, left for a person.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import Message as EmailMessage
from email.utils import getaddresses

from bulkmail_kernel.deliverability.bounces import (
    BouncedRecipient,
    BounceInfo,
    bounce_of,
    dsn_action,
    dsn_groups,
    dsn_recipient,
    looks_like_a_bounce,
)
from bulkmail_kernel.deliverability.mailparts import (
    ENHANCED_ANY,
    clean,
    enhanced_status,
    original_ids,
    sender_address,
    valid_address,
    verp_recipient,
    verp_tag,
)
from bulkmail_kernel.deliverability.notices import (
    Notice,
    auto_reply,
    auto_reply_signal,
    complaint,
    json_notice,
)

#: Every kind a mailbox message can be, in the order a person would act on them.
KINDS = (
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "auto_reply",
    "delivery_report",
    "unsubscribe",
    "unknown",
    "unreadable",
)
#: Kinds that are delivery failures (and only these touch message status and suppressions,
#: with complaints).
BOUNCE_KINDS = ("hard_bounce", "soft_bounce")


@dataclass(frozen=True)
class Classification:
    """One mailbox message's kind, and what it says (recipients, our original's ids)."""

    kind: str
    #: Who it is about and which message it answers; None for unsubscribe and unknown.
    info: BounceInfo | None = None
    detail: str = ""
    #: The status stated where no recipient could be read (else the first recipient's).
    stated_status: str = ""

    @property
    def recipient(self) -> str | None:
        """Return the first address the message is about, if it names one."""
        return self.info.recipients[0].recipient if self.info and self.info.recipients else None

    @property
    def status(self) -> str | None:
        """Return the first recipient's status code, if one was given."""
        if self.info and self.info.recipients:
            return self.info.recipients[0].status or None
        return self.stated_status or None


def addressed_to(msg: EmailMessage, mailto: str) -> bool:
    """Return whether ``msg`` was sent to ``mailto`` (or ``local+token@domain``)."""
    if not mailto:
        return False
    to = [
        a.lower()
        for _, a in getaddresses(
            [str(v) for h in ("To", "Delivered-To", "X-Original-To") for v in msg.get_all(h, [])]
        )
    ]
    local, _, domain = mailto.lower().partition("@")
    return any(
        a == mailto.lower() or (a.startswith(local + "+") and a.endswith("@" + domain)) for a in to
    )


def _info(msg: EmailMessage, notice: Notice, permanent: bool = False) -> BounceInfo:
    action = {"hard_bounce": "failed", "soft_bounce": "delayed"}.get(notice.kind, notice.kind)
    recipients = tuple(
        BouncedRecipient(r, notice.status, permanent, action, clean(notice.detail))
        for r in notice.recipients
    )
    return BounceInfo(
        recipients,
        notice.message_ids,
        verp_recipient(msg),
        clean(sender_address(msg)),
        verp_tag(msg),
    )


def _delivery_report(msg: EmailMessage, raw: bytes) -> Classification:
    recipients: list[BouncedRecipient] = []
    for group in dsn_groups(msg):
        address = dsn_recipient(group)
        if address and address not in [r.recipient for r in recipients]:
            stated = ENHANCED_ANY.search(str(group.get("Status", "")))
            code = ".".join(stated.groups()) if stated else "2.0.0"
            recipients.append(BouncedRecipient(address, code, False, dsn_action(group), ""))
    info = BounceInfo(
        tuple(recipients),
        original_ids(msg, raw),
        verp_recipient(msg),
        clean(sender_address(msg)),
        verp_tag(msg),
    )
    actions = sorted({r.action for r in recipients})
    return Classification("delivery_report", info, f"delivery report ({', '.join(actions)})")


def _bounce(info: BounceInfo) -> Classification:
    first = info.recipients[0]
    kind = "hard_bounce" if first.permanent else "soft_bounce"
    return Classification(kind, info, f"{first.status} {first.diagnostic}".strip())


def classify_message(message: bytes, *, unsubscribe_address: str = "") -> Classification:
    """Return what one message in the bounce mailbox is (kind, recipients, original ids).

    ``unsubscribe_address`` is the account's mailto address: mail to it is an
    unsubscribe request. Raises whatever a message too broken to read raises; the
    mailbox run catches it and reports the message as ``unreadable``.
    """
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    if addressed_to(msg, unsubscribe_address):
        return Classification("unsubscribe", None, "mailto unsubscribe")
    found = complaint(msg, message)
    if found is not None:
        return Classification("complaint", _info(msg, found), found.detail)
    groups = dsn_groups(msg)
    if groups:
        info = bounce_of(msg, message)
        if info is not None:
            return _bounce(info)
        failed = [g for g in groups if dsn_action(g) in ("failed", "delayed")]
        if failed:
            # A failure whose recipient is no readable address: matched by the returned copy.
            code = enhanced_status(str(failed[0].get("Status", ""))) or (
                "5.0.0" if dsn_action(failed[0]) == "failed" else "4.0.0"
            )
            info = BounceInfo(
                (),
                original_ids(msg, message),
                verp_recipient(msg),
                clean(sender_address(msg)),
                verp_tag(msg),
            )
            kind = "hard_bounce" if code.startswith("5") else "soft_bounce"
            return Classification(kind, info, f"{code} (recipient not readable)", code)
        if any(dsn_action(g) in ("delivered", "relayed", "expanded") for g in groups):
            return _delivery_report(msg, message)
    notice = json_notice(msg)
    if notice is not None:
        permanent = notice.kind == "hard_bounce"
        return Classification(notice.kind, _info(msg, notice, permanent), notice.detail)
    why = auto_reply_signal(msg)
    if why and not looks_like_a_bounce(msg):
        reply = auto_reply(msg, why)
        return Classification("auto_reply", _info(msg, reply), reply.detail)
    info = bounce_of(msg, message)
    if info is not None:
        return _bounce(info)
    return Classification(
        "unknown", None, "not a bounce, complaint or auto-reply: left for a person"
    )


def is_valid_recipient(address: str) -> bool:
    """Return whether ``address`` is a syntactically valid e-mail address."""
    return valid_address(address) is not None

"""Transports: how a serialised message leaves, and what the answer means.

A transport takes pre-serialised bytes and an envelope and says what happened,
as a :class:`SendResult`. SMTP answers are classified once, here, so the send
loop only knows five outcomes:

- ``sent``: the server took responsibility for the message (2xx after DATA);
- ``deferred``: try again later (4xx, a dropped connection before DATA);
- ``failed``: this message or recipient will never go (5xx on RCPT or DATA);
  whether the address is suppressed, and why, follows from the reply's enhanced
  status code (:mod:`.replies`: 5.1.x suppresses, 5.7.x policy suppresses nobody);
- ``fatal``: nothing will go (authentication or the sender refused): stop the campaign;
- ``unknown``: the connection broke after the content was sent, so the server may
  have accepted it: never retried without the analyst deciding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.transports.replies import ACTIONS, classify_reply

Outcome = Literal["sent", "deferred", "failed", "fatal", "unknown"]
Stage = Literal["connect", "mail", "rcpt", "data", "content"]


@dataclass(frozen=True)
class SendResult:
    """What a transport says about one message."""

    status: Outcome
    code: int | None = None
    detail: str = ""
    #: Whether the recipient address should be suppressed (a hard bounce).
    suppress: bool = False
    provider_message_id: str | None = None
    #: Why a refusal happened (:data:`.replies.Category`: mailbox, mailbox_full, policy,
    #: system, content, size, sender; "auth" for a refused login); "" for the rest.
    category: str = ""


class Transport(Protocol):
    """Something that sends pre-serialised messages over one reused connection."""

    def send(self, message: bytes, *, mail_from: str, rcpt_to: str) -> SendResult:
        """Send ``message`` to ``rcpt_to`` and classify the answer."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def classify_smtp(code: int, reply: bytes | str, *, stage: Stage) -> SendResult:
    """Classify an SMTP reply ``code`` received at ``stage`` of one transaction."""
    text = _text(reply).strip()
    detail = f"{code} {text}".strip()
    if 200 <= code < 300:
        return SendResult("sent", code, detail)
    if code in (530, 534, 535, 538) or (stage == "connect" and code >= 500):
        # RFC 4954: 535 bad credentials, 530/534/538 auth required or too weak.
        return SendResult("fatal", code, f"authentication refused: {detail}", category="auth")
    category = classify_reply(code, text, after_data=stage in ("data", "content"))
    if 400 <= code < 500:
        return SendResult("deferred", code, detail, category=category)
    if stage == "mail":
        return SendResult(
            "fatal", code, f"the server refused the sender: {detail}", category="sender"
        )
    # The same reading at RCPT and after DATA (issue 14): only a bad mailbox suppresses.
    status, suppress = ACTIONS[category]
    return SendResult(status, code, detail, suppress=suppress, category=category)


def connection_lost(detail: str, *, stage: Stage) -> SendResult:
    """Classify a connection that broke at ``stage``: unknown once the content was sent."""
    if stage == "content":
        return SendResult("unknown", None, f"connection lost after the message was sent: {detail}")
    return SendResult("deferred", None, f"connection lost: {detail}")


def open_transport(kind: str, settings: dict[str, Any], credential_ref: str = "") -> Transport:
    """Return the (not yet connected) transport for a sender account of ``kind``."""
    if kind == "smtp":
        from bulkmail_kernel.transports.smtp import SmtpTransport

        return SmtpTransport.from_settings(settings, credential_ref)
    if kind == "file":
        from bulkmail_kernel.transports.file import FileTransport

        if not settings.get("folder"):
            raise ConfigError("file sender account: settings has no 'folder' for the .eml files")
        return FileTransport(settings["folder"])
    if kind == "eurosms":
        from bulkmail_kernel.transports.eurosms import EuroSmsTransport

        return EuroSmsTransport.from_settings(settings, credential_ref)
    if kind == "sendpulse":
        # Campaign mode hands the whole campaign over at once; there is no per-message send.
        raise ConfigError(
            "a sendpulse account sends whole campaigns: call send_campaign_via_sendpulse(), "
            "or use an smtp account on smtp-pulse.com for SMTP mode",
            kind=kind,
        )
    raise ConfigError(
        f"sender account kind {kind!r} cannot send here: use smtp, file or eurosms",
        kind=kind,
    )

"""Campaigns: creation, registration into the durable outbox, and queue operations.

``register(campaign)`` renders one message per recipient into ``messages`` (the
state) and ``message_bodies`` (the bytes), so what was previewed is what is
sent. The Message-ID is fixed here, on the sender's domain, so retries keep it;
each recipient gets an unsubscribe token stored only as its SHA-256.

A campaign is named by its name or id everywhere (``campaign: str | int``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from bulkmail_kernel.db import (
    Campaign,
    CampaignStatus,
    ContactPoint,
    Database,
    Event,
    Message,
    MessageBody,
    MessageStatus,
    SenderAccount,
    Suppression,
    UnsubscribeToken,
    open_database,
    utcnow,
)
from bulkmail_kernel.deliverability.dkim import SIGNED_HEADERS, prepare_outgoing, signer_for
from bulkmail_kernel.exceptions import BulkmailError, ConfigError, SendError

log = logging.getLogger("bulkmail")

CampaignRef = str | int

#: Statuses a message can be removed from the queue in (sent ones are history).
REMOVABLE = (MessageStatus.QUEUED, MessageStatus.DEFERRED, MessageStatus.UNKNOWN)

#: Campaign channel -> the contact-point channel its messages and suppressions use.
CAMPAIGN_CHANNELS = {"email": "email", "sms": "phone"}
#: Most segments one SMS may cost unless the campaign says otherwise (a typo can cost 10x).
DEFAULT_MAX_SMS_SEGMENTS = 6
#: Sender kinds that only the provider functions may save: they check the credentials first.
_PROVIDER_KINDS = {"sendpulse": "add_sendpulse_account", "eurosms": "add_eurosms_account"}
#: The unique part of our Message-IDs (``uuid4().hex``): what a VERP return path carries.
VERP_TAG = re.compile(r"[0-9a-f]{32}")
#: What ``settings["unsubscribe_mailto"]`` may hold: an ASCII address a header cannot break on.
_MAILTO = re.compile(r"[A-Za-z0-9.!#$&'*+/=^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def campaign_channel(channel: str) -> str:
    """Return the campaign channel, "email" or "sms", for ``channel`` ("phone" means "sms")."""
    value = "sms" if channel == "phone" else channel
    if value not in CAMPAIGN_CHANNELS:
        raise ConfigError(
            f"channel={channel!r}: a campaign goes out by 'email' or 'sms'", channel=channel
        )
    return value


def point_channel(channel: str) -> str:
    """Return the contact-point channel ("email" or "phone") a campaign ``channel`` writes to."""
    return CAMPAIGN_CHANNELS[campaign_channel(channel)]


@dataclass(frozen=True)
class CampaignInfo:
    """A campaign as stored."""

    id: int
    name: str
    channel: str
    status: str
    template_name: str
    segment_id: int | None
    sender_account_id: int | None
    rate_per_hour: int
    burst: int
    scheduled_at: datetime | None
    registered_at: datetime | None
    finished_at: datetime | None
    last_error: str


@dataclass(frozen=True)
class SenderInfo:
    """A sender account as stored (secrets are never stored, only where to find them)."""

    id: int
    name: str
    kind: str
    from_name: str
    from_email: str
    settings: dict[str, Any]
    credential_ref: str

    @property
    def envelope_from(self) -> str:
        """Return the MAIL FROM address (``settings['envelope_from']`` or ``from_email``)."""
        return str(self.settings.get("envelope_from") or self.from_email)


def _database(db: Database | None, url: str | None) -> Database:
    return db if db is not None else open_database(url)


def _info(c: Campaign) -> CampaignInfo:
    return CampaignInfo(
        id=c.id,
        name=c.name,
        channel=c.channel,
        status=c.status,
        template_name=c.template_name,
        segment_id=c.segment_id,
        sender_account_id=c.sender_account_id,
        rate_per_hour=c.rate_per_hour,
        burst=c.burst,
        scheduled_at=c.scheduled_at,
        registered_at=c.registered_at,
        finished_at=c.finished_at,
        last_error=c.last_error,
    )


def _sender_info(a: SenderAccount) -> SenderInfo:
    return SenderInfo(
        a.id, a.name, a.kind, a.from_name, a.from_email, dict(a.settings), a.credential_ref
    )


def get_campaign_row(s: Session, campaign: CampaignRef) -> Campaign:
    """Return the ORM row of ``campaign`` (name or id) or raise SendError naming it."""
    if isinstance(campaign, CampaignInfo):
        campaign = campaign.id
    column = Campaign.id if isinstance(campaign, int) else Campaign.name
    row = s.scalars(sa.select(Campaign).where(column == campaign)).one_or_none()
    if row is None:
        known = s.scalars(sa.select(Campaign.name).order_by(Campaign.name)).all()
        raise SendError(
            f"campaign {campaign!r} does not exist; campaigns: {', '.join(known) or '(none)'}",
            campaign=campaign,
        )
    return row


def get_campaign(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> CampaignInfo:
    """Return campaign ``campaign`` (name or id) as stored."""
    with _database(db, url).session() as s:
        return _info(get_campaign_row(s, campaign))


def sender_of(s: Session, c: Campaign) -> SenderInfo:
    """Return the sender account of campaign ``c`` or raise SendError saying how to set one."""
    account = s.get(SenderAccount, c.sender_account_id) if c.sender_account_id else None
    if account is None:
        raise SendError(
            f"campaign {c.name!r} has no sender account: create one with add_sender_account() "
            "and pass sender=... to create_campaign()",
            campaign=c.name,
        )
    return _sender_info(account)


def add_sender_account(
    name: str,
    *,
    kind: str,
    from_email: str,
    from_name: str = "",
    settings: dict[str, Any] | None = None,
    credential_ref: str = "",
    db: Database | None = None,
    url: str | None = None,
) -> SenderInfo:
    """Create or update the sender account ``name`` (smtp or file); secrets stay out of it.

    ``settings`` for smtp: host, port, security (ssl, starttls, none), user,
    unsubscribe_url (with ``{token}``), unsubscribe_mailto (the List-Unsubscribe
    mailto address), envelope_from, verp (True: tag the return path per message),
    dkim (``{"selector": ..., "key_path" or "keyring": ...}``), imap (the bounce
    mailbox); for file: folder.
    ``credential_ref`` names the environment variable holding the password; without
    one the password is looked up in the keyring that ``yagmail.register`` fills.

    Kinds sendpulse and eurosms are handed to ``add_sendpulse_account`` /
    ``add_eurosms_account``, which check the credentials with the provider (and keep
    a SendPulse address fixed) before anything is saved.
    """
    settings = dict(settings or {})
    if kind not in ("smtp", "file", "sendpulse", "eurosms"):
        raise ConfigError(
            f"sender account {name!r}: kind={kind!r}: use smtp, file, sendpulse or eurosms"
        )
    if kind in _PROVIDER_KINDS:
        return _add_provider_account(
            name, kind, from_email, from_name, settings, credential_ref, _database(db, url)
        )
    for key in ("password", "pass", "secret"):
        if key in settings:
            raise ConfigError(
                f"sender account {name!r}: settings[{key!r}]: passwords are never stored in the "
                "database; put it in the keyring (yagmail.register) or an environment variable "
                "and give its name as credential_ref",
                account=name,
            )
    if "@" not in from_email:
        raise ConfigError(f"sender account {name!r}: from_email={from_email!r} is not an address")
    with _database(db, url).session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
        if row is None:
            row = SenderAccount(name=name)
            s.add(row)
        elif row.kind in _PROVIDER_KINDS:
            # Re-saving it as smtp/file would bypass the provider's checks and fixed address.
            raise ConfigError(
                f"sender account {name!r} is a {row.kind} account: edit it with "
                f"{_PROVIDER_KINDS[row.kind]}(), or pick another name",
                account=name,
            )
        row.kind, row.from_email, row.from_name = kind, from_email, from_name
        row.settings, row.credential_ref = settings, credential_ref
        s.flush()
        return _sender_info(row)


_PROVIDER_SETTINGS = {
    "sendpulse": (("client_id",), ("base_url",)),
    "eurosms": (("integration_id", "sender_id"), ("base_url",)),
}


def _add_provider_account(
    name: str,
    kind: str,
    from_email: str,
    from_name: str,
    settings: dict[str, Any],
    credential_ref: str,
    database: Database,
) -> SenderInfo:
    """Save a sendpulse/eurosms account through its own checked function, never unchecked."""
    required, optional = _PROVIDER_SETTINGS[kind]
    helper = _PROVIDER_KINDS[kind]
    missing = [k for k in required if not settings.get(k)]
    unknown = sorted(set(settings) - set(required) - set(optional))
    if missing or unknown or not credential_ref:
        problem = (
            f"settings lacks {', '.join(repr(k) for k in missing)}"
            if missing
            else f"settings {', '.join(repr(k) for k in unknown)} are not used"
            if unknown
            else "credential_ref (the environment variable or keyring:SERVICE with the secret) "
            "is empty"
        )
        raise ConfigError(
            f"sender account {name!r} of kind {kind!r}: {problem}; give settings "
            f"{', '.join(required)} (optionally {', '.join(optional)}) and credential_ref, "
            f"or call {helper}() directly",
            account=name,
        )
    extra = {k: settings[k] for k in optional if settings.get(k)}
    if kind == "sendpulse":
        from bulkmail_kernel.providers.sendpulse import add_sendpulse_account

        add_sendpulse_account(
            name,
            client_id=str(settings["client_id"]),
            from_email=from_email,
            from_name=from_name,
            credential_ref=credential_ref,
            db=database,
            **extra,
        )
    else:
        from bulkmail_kernel.providers.eurosms import add_eurosms_account

        add_eurosms_account(
            name,
            integration_id=str(settings["integration_id"]),
            sender_id=str(settings["sender_id"]),
            credential_ref=credential_ref,
            from_name=from_name,
            db=database,
            **extra,
        )
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one()
        return _sender_info(row)


def create_campaign(
    name: str,
    *,
    sender: str,
    template: Any = None,
    segment: str | None = None,
    values: dict[str, Any] | None = None,
    rate_per_hour: int = 1000,
    burst: int = 10,
    scheduled_at: datetime | None = None,
    channel: str | None = None,
    exist_ok: bool = False,
    db: Database | None = None,
    url: str | None = None,
) -> CampaignInfo:
    """Create the campaign ``name``: a template, a segment (or a frame at registration), a sender.

    ``template`` is a templates ``Template`` (or its name); ``scheduled_at`` (aware)
    leaves the sending to ``bulkmail worker``; ``rate_per_hour`` is the throttle.
    ``exist_ok=True`` returns an existing campaign of that name unchanged, so a
    notebook can be run again from the top. ``channel`` is "email" or "sms"
    (default: the template's channel, or "sms" for a eurosms sender account).
    """
    if rate_per_hour <= 0:
        raise ConfigError(f"campaign {name!r}: rate_per_hour={rate_per_hour}: give a positive rate")
    if scheduled_at is not None and scheduled_at.tzinfo is None:
        raise ConfigError(f"campaign {name!r}: scheduled_at must be time-zone aware")
    database = _database(db, url)
    with database.session() as s:
        existing = s.scalars(sa.select(Campaign).where(Campaign.name == name)).first()
        if existing is not None and exist_ok:
            return _info(existing)
        if existing is not None:
            raise SendError(f"campaign {name!r} already exists: pick another name", campaign=name)
        account = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == sender)).first()
        if account is None:
            raise SendError(
                f"campaign {name!r}: sender account {sender!r} does not exist: "
                "create it with add_sender_account()",
                campaign=name,
            )
        chosen = _choose_channel(name, channel, template, account.kind)
        segment_id = None
        if segment is not None:
            from bulkmail_kernel.db import Segment

            segment_id = s.scalars(sa.select(Segment.id).where(Segment.name == segment)).first()
            if segment_id is None:
                raise SendError(f"campaign {name!r}: segment {segment!r} does not exist")
        template_name = template if isinstance(template, str) else getattr(template, "name", "")
        source: dict[str, Any] = {}
        if template is not None and not isinstance(template, str):
            source = {
                k: getattr(template, k, None)
                for k in ("subject", "html", "text", "sms", "language")
            }
            if getattr(template, "folder", None) is not None and template.html is None:
                source["folder"] = str(template.folder)
        row = Campaign(
            name=name,
            channel=chosen,
            status=CampaignStatus.DRAFT.value,
            template_name=template_name or "",
            template_source=source,
            values=dict(values or {}),
            segment_id=segment_id,
            sender_account_id=account.id,
            rate_per_hour=int(rate_per_hour),
            burst=int(burst),
            scheduled_at=scheduled_at,
        )
        s.add(row)
        s.flush()
        return _info(row)


def _choose_channel(name: str, channel: str | None, template: Any, kind: str) -> str:
    """Return the campaign's channel, refusing a template or account that cannot carry it."""
    tmpl_channel = getattr(template, "channel", None) if not isinstance(template, str) else None
    default = tmpl_channel or ("sms" if kind == "eurosms" else "email")
    chosen = campaign_channel(channel if channel is not None else default)
    if tmpl_channel is not None and tmpl_channel != chosen:
        raise ConfigError(
            f"campaign {name!r}: channel {chosen!r} but template {template.name!r} is an "
            f"{tmpl_channel} template: pick a matching template or channel",
            campaign=name,
        )
    allowed = ("eurosms", "file") if chosen == "sms" else ("smtp", "file", "sendpulse")
    if kind not in allowed:
        raise ConfigError(
            f"campaign {name!r}: a sender account of kind {kind!r} cannot send {chosen}: "
            f"use one of kind {', '.join(allowed)}",
            campaign=name,
        )
    return chosen


# --------------------------------------------------------------------------- queue


_QUEUE_COLUMNS = [
    "message_id",
    "contact_id",
    "contact_point_id",
    "recipient",
    "subject",
    "status",
    "attempts",
    "next_attempt_at",
    "sent_at",
    "last_code",
    "last_error",
    "message_id_header",
]


def queue(
    campaign: CampaignRef,
    *,
    status: str | Sequence[str] | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the campaign's messages (optionally only those in ``status``) as a DataFrame."""
    database = _database(db, url)
    with database.session() as s:
        c = get_campaign_row(s, campaign)
        q = (
            sa.select(
                Message.id,
                Message.contact_id,
                Message.contact_point_id,
                Message.recipient,
                MessageBody.subject,
                Message.status,
                Message.attempts,
                Message.next_attempt_at,
                Message.sent_at,
                Message.last_code,
                Message.last_error,
                Message.message_id_header,
            )
            .join(MessageBody, MessageBody.message_id == Message.id, isouter=True)
            .where(Message.campaign_id == c.id)
            .order_by(Message.id)
        )
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            q = q.where(Message.status.in_(wanted))
        rows = s.execute(q).all()
    frame = pd.DataFrame(rows, columns=_QUEUE_COLUMNS)
    frame["message_id"] = frame["message_id"].astype("int64")
    for col in ("contact_id", "contact_point_id", "attempts"):
        frame[col] = frame[col].astype("Int64")
    for col in ("next_attempt_at", "sent_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[us, UTC]")
    frame["status"] = frame["status"].astype(pd.CategoricalDtype([m.value for m in MessageStatus]))
    return frame


def _message_ids(messages: Iterable[int] | pd.DataFrame | pd.Series) -> list[int]:
    if isinstance(messages, pd.DataFrame):
        if "message_id" not in messages.columns:
            raise SendError(
                "remove_from_queue: the frame has no 'message_id' column: "
                "filter the frame that queue() returned"
            )
        messages = messages["message_id"]
    return [int(m) for m in messages]


def remove_from_queue(
    campaign: CampaignRef,
    messages: Iterable[int] | pd.DataFrame | pd.Series,
    *,
    reason: str = "removed by the analyst",
    db: Database | None = None,
    url: str | None = None,
) -> int:
    """Take messages (ids, or a frame filtered from ``queue()``) out of the queue; return how many.

    Only queued, deferred and unknown messages can be removed; sent and failed
    ones are history and stay.
    """
    ids = _message_ids(messages)
    database = _database(db, url)
    removed = 0
    with database.session() as s:
        c = get_campaign_row(s, campaign)
        for chunk in _chunks(ids, 500):
            rows = s.execute(
                sa.update(Message)
                .where(
                    Message.campaign_id == c.id,
                    Message.id.in_(chunk),
                    Message.status.in_([m.value for m in REMOVABLE]),
                )
                .values(status=MessageStatus.REMOVED.value, last_error=reason, updated_at=utcnow())
                .returning(Message.id, Message.contact_id, Message.contact_point_id)
            ).all()
            if rows:
                s.execute(
                    sa.insert(Event),
                    [
                        {
                            "kind": "removed",
                            "contact_id": r.contact_id,
                            "contact_point_id": r.contact_point_id,
                            "campaign_id": c.id,
                            "message_id": r.id,
                            "detail": reason,
                            "data": {},
                        }
                        for r in rows
                    ],
                )
            removed += len(rows)
    log.info("campaign %s: %d messages removed from the queue", campaign, removed)
    return removed


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _set_status(
    campaign: CampaignRef,
    new: CampaignStatus,
    allowed_from: Sequence[CampaignStatus],
    db: Database | None,
    url: str | None,
) -> CampaignInfo:
    with _database(db, url).session() as s:
        c = get_campaign_row(s, campaign)
        if c.status not in [a.value for a in allowed_from]:
            raise SendError(
                f"campaign {c.name!r} is {c.status}: cannot make it {new.value}",
                campaign=c.name,
                status=c.status,
            )
        c.status = new.value
        s.flush()
        return _info(c)


def pause(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> CampaignInfo:
    """Pause the campaign: senders stop after the message in hand; ``resume`` continues."""
    return _set_status(
        campaign,
        CampaignStatus.PAUSED,
        [
            CampaignStatus.REGISTERED,
            CampaignStatus.SCHEDULED,
            CampaignStatus.SENDING,
            CampaignStatus.STOPPED,
        ],
        db,
        url,
    )


def resume(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> CampaignInfo:
    """Resume a paused or stopped campaign (scheduled again if it has a send time)."""
    with _database(db, url).session() as s:
        c = get_campaign_row(s, campaign)
        if c.status not in (CampaignStatus.PAUSED.value, CampaignStatus.STOPPED.value):
            raise SendError(f"campaign {c.name!r} is {c.status}, not paused", campaign=c.name)
        c.status = (
            CampaignStatus.SCHEDULED.value if c.scheduled_at else CampaignStatus.REGISTERED.value
        )
        c.last_error = ""
        s.flush()
        return _info(c)


def cancel(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> CampaignInfo:
    """Cancel the campaign: every message not yet sent is removed from the queue."""
    database = _database(db, url)
    with database.session() as s:
        c = get_campaign_row(s, campaign)
        c.status = CampaignStatus.CANCELLED.value
        cid = c.id
    pending = queue(cid, status=[m.value for m in REMOVABLE], db=database)
    remove_from_queue(cid, pending, reason="campaign cancelled", db=database)
    return get_campaign(cid, db=database)


def unknown_messages(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """List the messages whose fate is unknown (a worker died or a connection broke mid-send)."""
    return queue(campaign, status=MessageStatus.UNKNOWN.value, db=db, url=url)


def requeue(
    campaign: CampaignRef,
    messages: Iterable[int] | pd.DataFrame | pd.Series,
    *,
    db: Database | None = None,
    url: str | None = None,
) -> int:
    """Queue unknown messages again, after checking they did not arrive; return how many."""
    ids = _message_ids(messages)
    with _database(db, url).session() as s:
        c = get_campaign_row(s, campaign)
        n = 0
        for chunk in _chunks(ids, 500):
            # Session.execute is typed as returning Result; an UPDATE returns a CursorResult.
            result = cast(
                CursorResult[Any],
                s.execute(
                    sa.update(Message)
                    .where(
                        Message.campaign_id == c.id,
                        Message.id.in_(chunk),
                        Message.status == MessageStatus.UNKNOWN.value,
                    )
                    .values(status=MessageStatus.QUEUED.value, next_attempt_at=None)
                ),
            )
            n += result.rowcount
        if n and c.status == CampaignStatus.FINISHED.value:
            c.status = CampaignStatus.REGISTERED.value
    return n


# --------------------------------------------------------------------------- unsubscribe


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest under which an unsubscribe token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """Return a fresh opaque unsubscribe token."""
    return secrets.token_urlsafe(24)


def unsubscribe_url(sender: SenderInfo, token: str) -> str:
    """Return the recipient's unsubscribe link from the account's (or the env's) URL pattern."""
    pattern = sender.settings.get("unsubscribe_url") or os.environ.get("BULKMAIL_UNSUBSCRIBE_URL")
    if not pattern or "{token}" not in pattern:
        raise ConfigError(
            f"sender account {sender.name!r}: no unsubscribe link pattern: set "
            "settings['unsubscribe_url'] (or BULKMAIL_UNSUBSCRIBE_URL) to an https URL "
            "containing {token}, e.g. https://sk.example.net/unsubscribe?t={token}",
            account=sender.name,
        )
    return str(pattern).replace("{token}", token)


def _has_unsubscribe_pattern(sender: SenderInfo) -> bool:
    pattern = sender.settings.get("unsubscribe_url") or os.environ.get("BULKMAIL_UNSUBSCRIBE_URL")
    return bool(pattern) and "{token}" in str(pattern)


def unsubscribe_mailto(sender: SenderInfo, token: str) -> str | None:
    """Return the List-Unsubscribe mailto target for ``token``, or None without a mailto address.

    The subject carries the token (``unsubscribe%20TOKEN``, RFC 6068 percent-encoding),
    so the bounce processor can tell whose unsubscribe it is even from a forwarding alias.
    """
    value = str(sender.settings.get("unsubscribe_mailto") or "").strip()
    if not value:
        return None
    address = value.removeprefix("mailto:").partition("?")[0]
    if not _MAILTO.fullmatch(address):
        raise ConfigError(
            f"sender account {sender.name!r}: settings['unsubscribe_mailto']={value!r} is not "
            "a plain ASCII address like unsubscribe@firm.sk",
            account=sender.name,
        )
    return f"{address}?subject=unsubscribe%20{token}"


def list_id(campaign_name: str, campaign_id: int, sender: SenderInfo) -> str:
    """Return the campaign's ``List-Id`` value (RFC 2919), e.g. ``Jar 2025 <jar-2025.c7.shop.sk>``.

    Both parts are plain ASCII made from the campaign name: the header must never be
    a way for an analyst-typed name to smuggle an encoded word or a line break in.
    """
    folded = unicodedata.normalize("NFKD", campaign_name).encode("ascii", "ignore").decode()
    phrase = " ".join(re.sub(r"[^A-Za-z0-9 _-]", " ", folded).split())[:60]
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")[:40].strip("-")
    domain = sender.from_email.rpartition("@")[2].lower() or "invalid"
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = "invalid"
    ident = f"{slug + '.' if slug else ''}c{campaign_id}.{domain}"
    return f"{phrase} <{ident}>" if phrase else f"<{ident}>"


def envelope_from(sender: SenderInfo, message_id: str = "") -> str:
    """Return one message's MAIL FROM: the account's, VERP-tagged when ``settings['verp']``.

    With VERP the return path carries the Message-ID's unique part
    (``bounces+3f2a...@shop.sk``), so a bounce that quotes nothing of the original
    still names the message it is about.
    """
    base = sender.envelope_from
    tag = message_id.strip().strip("<>").partition("@")[0]
    if not sender.settings.get("verp") or not VERP_TAG.fullmatch(tag) or "@" not in base:
        return base
    local, _, domain = base.rpartition("@")
    return f"{local}+{tag}@{domain}"


def new_message_id(sender: SenderInfo) -> str:
    """Return a globally unique Message-ID on the sender's domain."""
    # SMS accounts have no address; the id still has to be unique in the outbox.
    domain = sender.from_email.rsplit("@", 1)[-1] if "@" in sender.from_email else "sms.invalid"
    return f"<{uuid.uuid4().hex}@{domain}>"


def unsubscribe(token: str, *, db: Database | None = None, url: str | None = None) -> bool:
    """Honour an unsubscribe token: clear mailing-allowed and suppress the address.

    Returns False for an unknown token. Using a token twice is harmless (RFC 8058
    one-click senders may POST more than once).
    """
    database = _database(db, url)
    with database.session() as s:
        row = s.get(UnsubscribeToken, hash_token(token))
        if row is None:
            log.warning("unsubscribe: unknown token (ignored)")
            return False
        point = s.get(ContactPoint, row.contact_point_id)
        if point is None:
            return False
        if row.used_at is not None and not point.mailing_allowed:
            return True  # already honoured: a second POST records nothing new
        row.used_at = row.used_at or utcnow()
        _honour_unsubscribe(
            s, point, campaign_id=row.campaign_id, detail=f"campaign {row.campaign_id}"
        )
    return True


def unsubscribe_address(
    address: str,
    *,
    channel: str = "email",
    detail: str = "unsubscribed by the analyst",
    db: Database | None = None,
    url: str | None = None,
) -> bool:
    """Unsubscribe an address by hand (a phone call, a reply): clear opt-in and suppress it.

    ``channel`` is "email", or "phone" (also "sms") for a number. The address is
    normalised as at import, and every contact point holding it is unsubscribed.
    Returns False if no contact has it; the suppression is added anyway, so a later
    import of that address is not mailed.
    """
    from bulkmail_kernel.contacts.values import normalize_email, normalize_phone

    channel = point_channel(channel)
    try:
        norm = normalize_email(address) if channel == "email" else normalize_phone(address)
    except ValueError as exc:
        raise ConfigError(
            f"unsubscribe_address: {address!r} is not a valid {channel} ({exc}); give the "
            "address as the contact wrote it",
            address=address,
        ) from exc
    with _database(db, url).session() as s:
        points = s.scalars(
            sa.select(ContactPoint).where(
                ContactPoint.channel == channel, ContactPoint.normalized == norm
            )
        ).all()
        if not points:
            _add_suppression(s, channel, norm, detail)
            return False
        for point in points:
            _honour_unsubscribe(s, point, campaign_id=None, detail=detail)
    return True


def _add_suppression(s: Session, channel: str, normalized: str, detail: str) -> None:
    exists = s.scalars(
        sa.select(Suppression.id).where(
            Suppression.channel == channel, Suppression.normalized == normalized
        )
    ).first()
    if exists is None:
        s.add(
            Suppression(channel=channel, normalized=normalized, reason="unsubscribe", detail=detail)
        )


def _honour_unsubscribe(
    s: Session, point: ContactPoint, *, campaign_id: int | None, detail: str
) -> None:
    point.mailing_allowed = False
    _add_suppression(s, point.channel, point.normalized, detail)
    s.add(
        Event(
            kind="unsubscribed",
            contact_id=point.contact_id,
            contact_point_id=point.id,
            campaign_id=campaign_id,
            detail=point.normalized,
        )
    )


# --------------------------------------------------------------------------- registration

_DATE_LINE = re.compile(rb"^Date: [^\r\n]*\r\n", re.MULTILINE)


def _without_date(data: bytes) -> bytes:
    """Drop the Date header ``build_mime`` wrote: the sender adds the real one at sending."""
    end = data.find(b"\r\n\r\n")
    head, rest = data[: end + 2], data[end + 2 :]
    return _DATE_LINE.sub(b"", head, count=1) + rest


def _campaign_template(c: Campaign, template: Any) -> Any:
    from bulkmail_kernel.compose.templates import load_template, template_from_html

    if template is not None:
        return load_template(template) if isinstance(template, str) else template
    source = c.template_source or {}
    if source.get("folder"):
        return load_template(source["folder"])
    if source.get("html") or source.get("text"):
        return template_from_html(
            source.get("html") or "",
            source.get("subject") or "",
            source.get("text"),
            name=c.template_name or "pasted",
            language=source.get("language"),
        )
    if source.get("sms"):
        from bulkmail_kernel.compose.templates import Template

        return Template(
            name=c.template_name or "pasted",
            subject="",
            sms=source["sms"],
            language=source.get("language"),
            channel="sms",
        )
    if c.template_name:
        return load_template(c.template_name)
    raise SendError(
        f"campaign {c.name!r} has no template: pass template=... to create_campaign() "
        "or register()",
        campaign=c.name,
    )


def _recipients_of(c: Campaign, database: Database) -> pd.DataFrame:
    from bulkmail_kernel.contacts.frame import contacts_frame
    from bulkmail_kernel.segments.saved import segment_recipients

    if c.segment_id is None:
        raise SendError(
            f"campaign {c.name!r} has no segment: pass recipients=<a frame of contacts_frame() "
            "rows> to register()",
            campaign=c.name,
        )
    with database.session() as s:
        from bulkmail_kernel.db import Segment

        seg = s.get(Segment, c.segment_id)
        assert seg is not None
        name = seg.name
    return segment_recipients(name, contacts_frame(database), db=database)


def register(
    campaign: CampaignRef,
    recipients: pd.DataFrame | None = None,
    *,
    template: Any = None,
    fit_to_gsm7: bool | None = None,
    max_segments: int | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Render one message per recipient into the outbox and return the queue.

    ``recipients`` are rows of ``contacts_frame()`` (default: the campaign's
    segment). Registering again adds only recipients not yet in the campaign.
    Suppressed, not-allowed, duplicate and unrenderable recipients are skipped and
    listed by ``skipped(campaign)``. Bodies are rendered now, so what was previewed
    is what is sent; the Date header is added when each message is sent.

    An SMS campaign stores each recipient's text (UTF-8) for their E.164 number.
    ``fit_to_gsm7`` rewrites it into the GSM-7 alphabet first (default: the campaign
    value ``fit_to_gsm7``); a text longer than ``max_segments`` segments (default:
    the campaign value ``max_sms_segments``, else 6) stops the registration, naming
    the recipient. SendPulse accounts need no unsubscribe link pattern: SendPulse
    adds its own.
    """
    from dataclasses import replace as dc_replace

    from bulkmail_kernel.compose.mime import build_mime
    from bulkmail_kernel.compose.render import Mailbox, render
    from bulkmail_kernel.compose.sms import fit_to_gsm7 as fit_text

    database = _database(db, url)
    with database.session() as s:
        c = get_campaign_row(s, campaign)
        if c.status in (CampaignStatus.CANCELLED.value,):
            raise SendError(f"campaign {c.name!r} is cancelled: create a new one", campaign=c.name)
        sender = sender_of(s, c)
        tmpl = _campaign_template(c, template)
        if template is not None:
            c.template_name = getattr(tmpl, "name", "") or c.template_name
            c.template_source = {
                k: getattr(tmpl, k, None) for k in ("subject", "html", "text", "sms", "language")
            }
            if getattr(tmpl, "folder", None) is not None and tmpl.html is None:
                c.template_source["folder"] = str(tmpl.folder)
        cid, cname, channel, values = c.id, c.name, c.channel, dict(c.values or {})
    is_sms = campaign_channel(channel) == "sms"
    wanted = point_channel(channel)
    if is_sms and not getattr(tmpl, "sms", None):
        raise SendError(
            f"register {cname!r}: template {getattr(tmpl, 'name', '')!r} has no SMS text: "
            'use an SMS template (channel = "sms", an sms.txt)',
            campaign=cname,
        )
    fit = bool(values.get("fit_to_gsm7", False)) if fit_to_gsm7 is None else fit_to_gsm7
    limit = int(
        values.get("max_sms_segments", DEFAULT_MAX_SMS_SEGMENTS)
        if max_segments is None
        else max_segments
    )
    # E-mail needs a List-Unsubscribe link (RFC 8058); SendPulse adds its own link and an SMS
    # carries one only if its text asks for {{ unsubscribe_url }} (an opt-out text otherwise).
    if is_sms:
        link_needed = link_wanted = "unsubscribe_url" in tmpl.variables()
    else:
        link_needed = sender.kind != "sendpulse"
        link_wanted = link_needed or _has_unsubscribe_pattern(sender)
    frame = recipients if recipients is not None else _recipients_of(c, database)
    if "contact_point_id" not in frame.columns:
        raise SendError(
            f"register {cname!r}: the recipients frame has no 'contact_point_id' column: "
            "pass rows of contacts_frame() (or of filter_recipients())",
            campaign=cname,
        )
    point_ids = [int(x) for x in frame["contact_point_id"]]
    cp = ContactPoint.__table__
    with database.engine.connect() as conn:
        points = {
            r.id: r
            for chunk in _chunks(point_ids, 500)
            for r in conn.execute(
                sa.select(
                    cp.c.id, cp.c.contact_id, cp.c.channel, cp.c.normalized, cp.c.mailing_allowed
                ).where(cp.c.id.in_(chunk))
            )
        }
        suppressed = {
            (ch, n)
            for ch, n in conn.execute(sa.select(Suppression.channel, Suppression.normalized))
        }
        already = set(
            conn.execute(sa.select(Message.recipient).where(Message.campaign_id == cid)).scalars()
        )
    from_box = Mailbox(sender.from_name, sender.from_email)
    # RFC 2919: one List-Id per campaign, so receivers (and Gmail's filters) group its mail.
    list_header = None if is_sms else ("List-Id", list_id(cname, cid, sender))
    skipped: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    seen: set[str] = set()
    now = utcnow()
    for (_, row), pid in zip(frame.iterrows(), point_ids, strict=True):
        point = points.get(pid)
        reason = None
        if point is None:
            reason = "contact point no longer exists"
        elif point.channel != wanted:
            reason = f"not {'a phone' if is_sms else 'an email'} contact point ({point.channel})"
        elif is_sms and not re.fullmatch(r"\+[1-9]\d{6,14}", point.normalized):
            reason = f"{point.normalized!r} is not an E.164 phone number"
        elif (point.channel, point.normalized) in suppressed:
            reason = "suppressed"
        elif not point.mailing_allowed:
            reason = "mailing not allowed"
        elif point.normalized in already:
            continue  # registered before: idempotent, not a skip
        elif point.normalized in seen:
            reason = "duplicate address in this campaign"
        if reason is None:
            assert point is not None  # every branch without a point set a reason
            token = new_token() if link_wanted else None
            link = unsubscribe_url(sender, token) if token is not None else None
            try:
                rendered = render(
                    tmpl,
                    row,
                    values=values,
                    unsubscribe_url=link,
                    sender=from_box,
                    unsubscribe_mailto=(
                        unsubscribe_mailto(sender, token)
                        if token is not None and not is_sms
                        else None
                    ),
                )
                message_id = new_message_id(sender)
                if is_sms:
                    text = (rendered.sms or "").strip()
                    text = fit_text(text) if fit else text
                    subject, data = text, text.encode("utf-8")
                else:
                    subject = rendered.subject
                    assert list_header is not None
                    rendered = dc_replace(rendered, headers=(*rendered.headers, list_header))
                    data = _without_date(build_mime(rendered, message_id=message_id))
            except BulkmailError as exc:
                if isinstance(exc, ConfigError):
                    raise
                reason = f"cannot render: {exc.message}"
            else:
                if is_sms:
                    reason = _sms_problem(cname, point.normalized, rendered.recipient, text, limit)
            if reason is None:
                seen.add(point.normalized)
                messages.append(
                    {
                        "point": point,
                        "token": token,
                        "message_id": message_id,
                        "subject": subject,
                        "body": data,
                    }
                )
        if reason is not None:
            skipped.append(
                {
                    "kind": "skipped",
                    "contact_id": getattr(point, "contact_id", None),
                    "contact_point_id": pid if point is not None else None,
                    "campaign_id": cid,
                    "message_id": None,
                    "detail": reason,
                    "occurred_at": now,
                    "data": {"address": getattr(point, "normalized", None), "at": "registration"},
                }
            )
    _store_messages(database, cid, wanted, messages, skipped, now)
    with database.session() as s:
        c = get_campaign_row(s, cid)
        if c.status in (CampaignStatus.DRAFT.value, CampaignStatus.FINISHED.value):
            c.status = (
                CampaignStatus.SCHEDULED.value
                if c.scheduled_at
                else CampaignStatus.REGISTERED.value
            )
        c.registered_at = now
    log.info(
        "campaign %s: %d messages registered, %d recipients skipped (see skipped())",
        cname,
        len(messages),
        len(skipped),
    )
    return queue(cid, db=database)


def _sms_problem(campaign: str, number: str, who: str, text: str, max_segments: int) -> str | None:
    """Return why an SMS text cannot be registered (None: fine); raise when it is too long."""
    from bulkmail_kernel.compose.sms import sms_segments

    if not text:
        return "the SMS text is empty"
    info = sms_segments(text)
    if info.segments > max_segments:
        # Not a skip: every recipient would likely cost as much, so the analyst must decide.
        raise SendError(
            f"register {campaign!r}: the SMS for {who or number} ({number}) is {info.segments} "
            f"segments ({info.encoding}, {info.units} units), more than max_segments="
            f"{max_segments}: shorten the template, register with fit_to_gsm7=True, or raise "
            "max_segments",
            campaign=campaign,
            recipient=number,
            segments=info.segments,
        )
    return None


def _store_messages(
    database: Database,
    cid: int,
    channel: str,
    messages: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    now: datetime,
) -> None:
    with database.engine.begin() as conn:
        for chunk in _chunks(messages, 500):
            rows = conn.execute(
                sa.insert(Message).returning(Message.id, Message.recipient),
                [
                    {
                        "campaign_id": cid,
                        "contact_id": m["point"].contact_id,
                        "contact_point_id": m["point"].id,
                        "channel": channel,
                        "recipient": m["point"].normalized,
                        "status": MessageStatus.QUEUED.value,
                        "attempts": 0,
                        "message_id_header": m["message_id"],
                        "last_error": "",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for m in chunk
                ],
            ).all()
            ids = {r.recipient: r.id for r in rows}
            conn.execute(
                sa.insert(MessageBody),
                [
                    {
                        "message_id": ids[m["point"].normalized],
                        "subject": m["subject"],
                        "body": m["body"],
                    }
                    for m in chunk
                ],
            )
            tokens = [
                {
                    "token_hash": hash_token(m["token"]),
                    "contact_point_id": m["point"].id,
                    "campaign_id": cid,
                    "created_at": now,
                }
                for m in chunk
                if m["token"] is not None
            ]
            if tokens:
                conn.execute(sa.insert(UnsubscribeToken), tokens)
            conn.execute(
                sa.insert(Event),
                [
                    {
                        "kind": "registered",
                        "contact_id": m["point"].contact_id,
                        "contact_point_id": m["point"].id,
                        "campaign_id": cid,
                        "message_id": ids[m["point"].normalized],
                        "detail": m["subject"][:2000],
                        "data": {},
                        "occurred_at": now,
                    }
                    for m in chunk
                ],
            )
        if skipped:
            conn.execute(sa.insert(Event), skipped)


def skipped(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return who was skipped, when and why (at registration or, later, at send time)."""
    database = _database(db, url)
    with database.session() as s:
        cid = get_campaign_row(s, campaign).id
        rows = s.execute(
            sa.select(
                Event.occurred_at,
                Event.contact_id,
                Event.contact_point_id,
                ContactPoint.normalized,
                Event.detail,
                Event.data,
            )
            .join(ContactPoint, ContactPoint.id == Event.contact_point_id, isouter=True)
            .where(Event.campaign_id == cid, Event.kind == "skipped")
            .order_by(Event.id)
        ).all()
    frame = pd.DataFrame(
        [(r[0], r[1], r[2], r[3], r[4], (r[5] or {}).get("at", "")) for r in rows],
        columns=["occurred_at", "contact_id", "contact_point_id", "address", "reason", "at"],
    )
    for col in ("contact_id", "contact_point_id"):
        frame[col] = frame[col].astype("Int64")
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    return frame


__all__ = [
    "CampaignInfo",
    "SenderInfo",
    "add_sender_account",
    "cancel",
    "create_campaign",
    "get_campaign",
    "pause",
    "queue",
    "register",
    "remove_from_queue",
    "requeue",
    "resume",
    "send_samples",
    "skipped",
    "test_send",
    "unknown_messages",
    "unsubscribe",
    "unsubscribe_address",
]


def send_samples(
    campaign: CampaignRef,
    to: Sequence[str],
    *,
    recipients: pd.DataFrame | None = None,
    template: Any = None,
    transport: Any = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Send one rendered sample per address in ``to``, subject marked [TEST]; return the outcomes.

    Samples are rendered for the campaign's first recipients (registered ones, else
    ``recipients`` or the segment) and go only to the test addresses: the queue,
    the history and the unsubscribe tokens are not touched. For an SMS campaign
    ``to`` holds phone numbers and the text starts with "TEST: ".
    """
    from dataclasses import replace as dc_replace

    from bulkmail_kernel.compose.mime import build_mime
    from bulkmail_kernel.compose.render import Mailbox, render
    from bulkmail_kernel.contacts.frame import contacts_frame
    from bulkmail_kernel.transports import open_transport

    if not to:
        raise SendError("test_send: give at least one test address in to=[...]")
    database = _database(db, url)
    with database.session() as s:
        c = get_campaign_row(s, campaign)
        sender = sender_of(s, c)
        tmpl = _campaign_template(c, template)
        registered = s.scalars(
            sa.select(Message.contact_point_id)
            .where(Message.campaign_id == c.id, Message.contact_point_id.is_not(None))
            .order_by(Message.id)
            .limit(len(to))
        ).all()
        values = dict(c.values or {})
        is_sms = campaign_channel(c.channel) == "sms"
        list_header = ("List-Id", list_id(c.name, c.id, sender))
    # A sample is signed like the real message, so "Show original" in Gmail checks DKIM too.
    signer = None if is_sms else signer_for(sender.settings, sender.from_email)
    if recipients is None:
        frame = contacts_frame(database)
        if registered:
            frame = frame[frame["contact_point_id"].isin(registered)]
        else:
            frame = _recipients_of(c, database)
    else:
        frame = recipients
    if frame.empty:
        raise SendError(f"test_send {c.name!r}: no recipient to render a sample for")
    transport = transport or open_transport(sender.kind, sender.settings, sender.credential_ref)
    opener = getattr(transport, "open", None)
    if opener is not None:
        opener()
    results = []
    try:
        for i, address in enumerate(to):
            row = frame.iloc[i % len(frame)]
            link = None
            if not is_sms or _has_unsubscribe_pattern(sender):
                link = unsubscribe_url(sender, "test-send-not-a-token")
            rendered = render(
                tmpl,
                row,
                values=values,
                unsubscribe_url=link,
                sender=Mailbox(sender.from_name, sender.from_email),
                unsubscribe_mailto=(
                    unsubscribe_mailto(sender, "test-send-not-a-token") if link else None
                ),
            )
            if is_sms:
                results.append(_sms_sample(transport, rendered.sms, address, values))
                continue
            rendered = dc_replace(
                rendered,
                subject=f"[TEST] {rendered.subject}",
                to=Mailbox(rendered.to.name, address),
                headers=(*rendered.headers, list_header),
            )
            message_id = new_message_id(sender)
            data = _without_date(build_mime(rendered, message_id=message_id))
            try:
                data = prepare_outgoing(data, when=utcnow(), signer=signer, allowed=SIGNED_HEADERS)
            except SendError as exc:
                results.append((address, rendered.subject, "failed", f"not sent: {exc.message}"))
                continue
            r = transport.send(data, mail_from=envelope_from(sender, message_id), rcpt_to=address)
            results.append((address, rendered.subject, r.status, r.detail))
    finally:
        transport.close()
    return pd.DataFrame(results, columns=["to", "subject", "status", "detail"])


def _sms_sample(
    transport: Any, text: str | None, number: str, values: dict[str, Any]
) -> tuple[str, str, str, str]:
    from bulkmail_kernel.compose.sms import fit_to_gsm7
    from bulkmail_kernel.providers.eurosms import e164

    body = (text or "").strip()
    body = "TEST: " + (fit_to_gsm7(body) if values.get("fit_to_gsm7") else body)
    r = transport.send(body.encode("utf-8"), mail_from="", rcpt_to=e164(number))
    return (number, body, r.status, r.detail)


#: The issue's name for ``send_samples``; pytest must not collect it as a test.
test_send = send_samples
send_samples.__test__ = False  # type: ignore[attr-defined]

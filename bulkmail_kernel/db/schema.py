"""The schema: typed SQLAlchemy 2 models for the whole mission, one for SQLite and PostgreSQL.

Every timestamp is stored in UTC (``UTCDateTime``) and comes back time-zone aware; JSON
columns are JSONB on PostgreSQL. Changes to these models come with an Alembic migration
in ``bulkmail_kernel/migrations``.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
)

from bulkmail_kernel import config


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Store datetimes in UTC on every backend and hand them back aware.

    SQLite has no time-zone type: a naive value would silently mean "whatever
    the writer's clock was", so naive input is refused instead of guessed.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Convert an aware datetime to UTC (naive UTC on SQLite); refuse naive ones."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give bulkmail time-zone aware values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Attach UTC to what the database hands back."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with constraint names Alembic can rely on."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
    }


class Channel(enum.StrEnum):
    """How a contact point is reached."""

    EMAIL = "email"
    PHONE = "phone"


class Kind(enum.StrEnum):
    """Whether a contact point is the person's own or their employer's."""

    PERSONAL = "personal"
    WORK = "work"


class MessageStatus(enum.StrEnum):
    """Delivery state of one outbox message (see the sending module for transitions)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    UNKNOWN = "unknown"
    REMOVED = "removed"


class CampaignStatus(enum.StrEnum):
    """Life cycle of a campaign."""

    DRAFT = "draft"
    REGISTERED = "registered"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    FINISHED = "finished"
    #: Its scheduled time passed long ago (``BULKMAIL_MAX_LATENESS_S``): waits for ``resume``.
    LATE = "late"


def _enum_values(e: type[enum.StrEnum]) -> str:
    return ", ".join(f"'{m.value}'" for m in e)


class Contact(Base):
    """A person (or firm) we may write to; reached through one or more contact points."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The identifier in the system the contact was imported from (customer number, ...).
    external_id: Mapped[str | None] = mapped_column(sa.String(100), unique=True)
    first_name: Mapped[str] = mapped_column(sa.String(200), default="")
    last_name: Mapped[str] = mapped_column(sa.String(200), default="")
    patronymic: Mapped[str] = mapped_column(sa.String(200), default="")
    #: "m", "f" or None; only used to pick a salutation.
    gender: Mapped[str | None] = mapped_column(sa.String(1))
    language: Mapped[str] = mapped_column(sa.String(8), default=config.DEFAULT_LANGUAGE)
    registered_at: Mapped[datetime] = mapped_column(index=True)
    #: Custom fields of the firm: customer type, treatment result, pet's name, ...
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(sa.String(300), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    points: Mapped[list[ContactPoint]] = relationship(
        back_populates="contact", cascade="all, delete-orphan", order_by="ContactPoint.id"
    )

    __table_args__ = (sa.CheckConstraint("gender IN ('m', 'f')", name="gender"),)


class ContactPoint(Base):
    """One e-mail address or phone number of a contact, with its own opt-in."""

    __tablename__ = "contact_points"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(sa.String(10))
    #: As it stood in the source, for the analyst's eyes.
    value: Mapped[str] = mapped_column(sa.String(320))
    #: The identity the address is matched by: ``contacts.values.email_identity`` for an
    #: e-mail (case-blind, IDN domain as A-labels), the phone in E.164.
    normalized: Mapped[str] = mapped_column(sa.String(320))
    #: The firm's own label: main, billing, newsletter, mobile, landline, ...
    type: Mapped[str] = mapped_column(sa.String(50), default="main")
    kind: Mapped[str] = mapped_column(sa.String(10), default=Kind.PERSONAL.value)
    mailing_allowed: Mapped[bool] = mapped_column(default=False)
    #: The point to use when a contact has several of the same channel and kind.
    is_preferred: Mapped[bool] = mapped_column(default=False)
    soft_bounces: Mapped[int] = mapped_column(default=0)
    source: Mapped[str] = mapped_column(sa.String(300), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    contact: Mapped[Contact] = relationship(back_populates="points")

    __table_args__ = (
        sa.UniqueConstraint("channel", "normalized"),
        sa.CheckConstraint(f"channel IN ({_enum_values(Channel)})", name="channel"),
        sa.CheckConstraint(f"kind IN ({_enum_values(Kind)})", name="kind"),
    )


class Suppression(Base):
    """An address that must not be written to again (unsubscribe, hard bounce, manual)."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(10))
    normalized: Mapped[str] = mapped_column(sa.String(320))
    #: unsubscribe, hard_bounce, soft_bounce_limit, complaint, manual
    reason: Mapped[str] = mapped_column(sa.String(30))
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    message_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("messages.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (sa.UniqueConstraint("channel", "normalized"),)


class Segment(Base):
    """A saved mailing group: a filter spec and the members it had when saved."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    snapshot_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SegmentMember(Base):
    """One contact point frozen into a segment's snapshot."""

    __tablename__ = "segment_members"

    segment_id: Mapped[int] = mapped_column(
        sa.ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    contact_point_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contact_points.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class SenderAccount(Base):
    """How a campaign leaves: an SMTP relay, SendPulse, EuroSMS or a folder of .eml files.

    Secrets are never stored here: ``credential_ref`` names the keyring entry or
    environment variable that holds them.
    """

    __tablename__ = "sender_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    #: smtp, sendpulse, eurosms, file
    kind: Mapped[str] = mapped_column(sa.String(20))
    from_name: Mapped[str] = mapped_column(sa.String(200), default="")
    from_email: Mapped[str] = mapped_column(sa.String(320), default="")
    #: Host, port, security, user name, DKIM selector and key path, IMAP box, sender id, ...
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    credential_ref: Mapped[str] = mapped_column(sa.String(300), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Campaign(Base):
    """A mailing: what (template), to whom (segment or frame), from which account, how fast."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    channel: Mapped[str] = mapped_column(sa.String(10), default=Channel.EMAIL.value)
    status: Mapped[str] = mapped_column(
        sa.String(20), default=CampaignStatus.DRAFT.value, index=True
    )
    template_name: Mapped[str] = mapped_column(sa.String(200), default="")
    #: The template as it was at registration (subject, html, text, sms), for the record.
    template_source: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Campaign-wide template values (event date, venue, ...).
    values: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attachments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    send_as_is: Mapped[bool] = mapped_column(default=False)
    segment_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("segments.id", ondelete="SET NULL")
    )
    sender_account_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("sender_accounts.id", ondelete="RESTRICT")
    )
    rate_per_hour: Mapped[int] = mapped_column(default=1000)
    burst: Mapped[int] = mapped_column(default=10)
    scheduled_at: Mapped[datetime | None] = mapped_column()
    #: Provider-side ids and status (SendPulse address book and campaign, ...).
    provider_ref: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_error: Mapped[str] = mapped_column(sa.Text, default="")
    #: Policy or system refusals in a row that pause it (None: ``BULKMAIL_BREAKER_AFTER``).
    breaker_after: Mapped[int | None] = mapped_column()
    #: Policy or system refusals in a row so far (the circuit breaker's count, see
    #: ``outbox.breaker``); a sent message or a bad mailbox sets it back to 0, so does resume.
    refusals_in_row: Mapped[int] = mapped_column(server_default="0")
    #: The FilterSpec (JSON) the registered recipients were chosen by, if they carried one.
    audience: Mapped[dict[str, Any] | None] = mapped_column()
    #: When messages may go on each recipient's wall clock (``outbox.windows``; None: any time).
    send_window: Mapped[str | None] = mapped_column(sa.String(200))
    #: Its own frequency cap, "2/7" (messages/days) or "none"; None: the global one
    #: (``campaigns.caps``). A transactional campaign is never capped and never counts.
    frequency_cap: Mapped[str | None] = mapped_column(sa.String(20))
    transactional: Mapped[bool] = mapped_column(server_default="0")
    #: The campaign this one follows up (a resend to non-clickers, ``campaigns.resend``).
    #: No foreign key: SQLite could add one only by copying the table (migration 0010).
    parent_id: Mapped[int | None] = mapped_column()
    #: An A/B test's set-up and decision (variants, sample, holdout, wait, metric, seed,
    #: winner); None for an ordinary campaign (``campaigns.abtests``).
    ab_test: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    registered_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (sa.CheckConstraint("rate_per_hour > 0", name="rate_per_hour"),)


class Setting(Base):
    """A setting every notebook and worker on the database shares (the frequency cap, ...)."""

    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Message(Base):
    """One recipient's message in the durable outbox; its body lives in ``message_bodies``."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    contact_point_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("contact_points.id", ondelete="SET NULL"), index=True
    )
    channel: Mapped[str] = mapped_column(sa.String(10))
    #: Normalised address or E.164 number the message goes to.
    recipient: Mapped[str] = mapped_column(sa.String(320))
    status: Mapped[str] = mapped_column(sa.String(12), default=MessageStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    #: The recipient's IANA zone (None: ``BULKMAIL_TZ``) and, while their send window is
    #: closed, when it opens: the claim takes no message before it (``outbox.parking``).
    timezone: Mapped[str | None] = mapped_column(sa.String(64))
    not_before: Mapped[datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(sa.String(200))
    claimed_at: Mapped[datetime | None] = mapped_column()
    #: Set (a few messages ahead) before a claimed message goes to the transport: after a
    #: crash, a message in 'sending' without it was never handed over and is requeued.
    handed_at: Mapped[datetime | None] = mapped_column()
    sent_at: Mapped[datetime | None] = mapped_column()
    #: The Message-ID header; fixed at registration so retries keep it.
    message_id_header: Mapped[str] = mapped_column(sa.String(300), unique=True)
    provider_message_id: Mapped[str | None] = mapped_column(sa.String(300))
    last_code: Mapped[str | None] = mapped_column(sa.String(20))
    last_error: Mapped[str] = mapped_column(sa.Text, default="")
    #: The recipient's mailbox provider, whose per-hour limit it counts against (outbox.domains).
    domain_group: Mapped[str] = mapped_column(sa.String(20), server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("campaign_id", "channel", "recipient"),
        sa.Index("ix_messages_claim", "campaign_id", "status", "next_attempt_at"),
        sa.Index("ix_messages_domain_claim", "campaign_id", "domain_group", "status"),
        sa.CheckConstraint(f"status IN ({_enum_values(MessageStatus)})", name="status"),
    )


class MessageBody(Base):
    """The rendered message, kept apart so status updates stay small and fast."""

    __tablename__ = "message_bodies"

    message_id: Mapped[int] = mapped_column(
        sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(sa.Text, default="")
    #: Serialised MIME (without Date, added at sending) or the SMS text as UTF-8.
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)


class UnsubscribeToken(Base):
    """An opaque per-recipient unsubscribe token, stored only as its hash."""

    __tablename__ = "unsubscribe_tokens"

    token_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    contact_point_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contact_points.id", ondelete="CASCADE"), index=True
    )
    campaign_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column()


class Event(Base):
    """Something that happened to a contact or message: the history the analyst reads."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    #: imported, updated, registered, sent, deferred, failed, unknown, removed,
    #: bounced, delivered, unsubscribed, suppressed, ...
    kind: Mapped[str] = mapped_column(sa.String(30))
    contact_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    contact_point_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("contact_points.id", ondelete="SET NULL")
    )
    campaign_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="SET NULL"), index=True
    )
    message_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Consent(Base):
    """One consent given or withdrawn: who, for what, when, how and in which words.

    The current consent of a contact for a purpose is its latest row (``contacts.consents``).
    """

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    contact_point_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("contact_points.id", ondelete="SET NULL")
    )
    #: "marketing" or "tracking".
    purpose: Mapped[str] = mapped_column(sa.String(20))
    granted: Mapped[bool] = mapped_column()
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: "import", "form", "analyst" or "unsubscribe".
    method: Mapped[str] = mapped_column(sa.String(20))
    #: The import run, the form's URL, or the analyst's OS and database user.
    source: Mapped[str] = mapped_column(sa.String(500), default="")
    #: The consent wording the person was shown.
    text: Mapped[str] = mapped_column(sa.Text, default="")

    __table_args__ = (sa.Index("ix_consents_contact_purpose", "contact_id", "purpose", "id"),)


class MessageLink(Base):
    """An original link of a tracked message: a click token's redirect goes only here."""

    __tablename__ = "message_links"

    message_id: Mapped[int] = mapped_column(
        sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    #: The link's index in the message's HTML part, from 0.
    link: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    url: Mapped[str] = mapped_column(sa.Text)


class ImportRun(Base):
    """One import of a contact source, with its counts (the report is returned, not stored)."""

    __tablename__ = "import_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(sa.String(500))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    rows: Mapped[int] = mapped_column(default=0)
    inserted: Mapped[int] = mapped_column(default=0)
    updated: Mapped[int] = mapped_column(default=0)
    merged: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    committed: Mapped[bool] = mapped_column(default=False)


class RateBucket(Base):
    """A token bucket shared by every worker (row-locked on PostgreSQL)."""

    __tablename__ = "rate_buckets"

    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    tokens: Mapped[float] = mapped_column(sa.Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A running sender process, so a crashed one's claimed messages can be found."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(sa.String(200))
    pid: Mapped[int] = mapped_column()
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class ForgottenAddress(Base):
    """An address erased on request (GDPR art. 17), kept only as a salted hash.

    A later import of the same address is refused (``contacts.forgotten``); the address
    itself is not stored anywhere, and the salt (``settings``) keeps the hash from being
    reversed with a dictionary of known addresses.
    """

    __tablename__ = "forgotten_addresses"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(10))
    #: HMAC-SHA-256 (hex) of "channel:identity" under the database's salt.
    address_hash: Mapped[str] = mapped_column(sa.String(64))
    forgotten_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (sa.UniqueConstraint("channel", "address_hash"),)


class ExportLogEntry(Base):
    """One export of contact data (or a refused attempt): who, when, what, how many, where.

    Written by ``segments.audit`` for every export path (segment export, GDPR export);
    read with ``export_log()``. ``who`` is the database user on PostgreSQL, the OS user
    on SQLite.
    """

    __tablename__ = "export_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    exported_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    who: Mapped[str] = mapped_column(sa.String(200))
    #: "segment" (export_recipients) or "contact" (export_contact_data).
    kind: Mapped[str] = mapped_column(sa.String(20))
    segment: Mapped[str | None] = mapped_column(sa.String(200))
    contact_id: Mapped[int | None] = mapped_column()
    #: The contact-data columns written (comma-separated, in order).
    columns: Mapped[str] = mapped_column(sa.Text, default="")
    rows: Mapped[int] = mapped_column(default=0)
    path: Mapped[str] = mapped_column(sa.Text, default="")
    #: "exported" or "refused".
    outcome: Mapped[str] = mapped_column(sa.String(10), default="exported")
    detail: Mapped[str] = mapped_column(sa.Text, default="")


class AbAssignment(Base):
    """Which arm of a campaign's A/B test a recipient fell in: a variant, the holdout, the rest.

    The holdout is recorded here and nowhere else (it gets no message), so its outcome can
    be compared with the variants'.
    """

    __tablename__ = "ab_assignments"

    campaign_id: Mapped[int] = mapped_column(
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    contact_point_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contact_points.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    #: A variant's name, "holdout" or "rest".
    arm: Mapped[str] = mapped_column(sa.String(50))

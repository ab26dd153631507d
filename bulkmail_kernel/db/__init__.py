"""The database: the schema (:mod:`.schema`) and how to open it (:mod:`.connection`).

One schema serves the embedded SQLite file and PostgreSQL alike. ``open_database``
applies the Alembic migrations on open, so an older file is upgraded in place and
never rebuilt. Every timestamp is stored in UTC and comes back time-zone aware.
"""

from __future__ import annotations

from bulkmail_kernel.db.connection import (
    Database,
    chunks,
    close_all,
    connect,
    create_db_engine,
    current_revision,
    open_database,
    resolve_database,
    upgrade,
)
from bulkmail_kernel.db.schema import (
    NAMING_CONVENTION,
    Base,
    Campaign,
    CampaignStatus,
    Channel,
    Contact,
    ContactPoint,
    Event,
    ForgottenAddress,
    ImportRun,
    JSONType,
    Kind,
    Message,
    MessageBody,
    MessageStatus,
    RateBucket,
    Segment,
    SegmentMember,
    SenderAccount,
    Setting,
    Suppression,
    UnsubscribeToken,
    UTCDateTime,
    Worker,
    utcnow,
)

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "Campaign",
    "CampaignStatus",
    "Channel",
    "Contact",
    "ContactPoint",
    "Database",
    "Event",
    "ForgottenAddress",
    "ImportRun",
    "JSONType",
    "Kind",
    "Message",
    "MessageBody",
    "MessageStatus",
    "RateBucket",
    "Segment",
    "SegmentMember",
    "SenderAccount",
    "Setting",
    "Suppression",
    "UTCDateTime",
    "UnsubscribeToken",
    "Worker",
    "chunks",
    "close_all",
    "connect",
    "create_db_engine",
    "current_revision",
    "open_database",
    "resolve_database",
    "upgrade",
    "utcnow",
]

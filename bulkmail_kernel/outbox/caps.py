"""Frequency caps in the outbox: which messages count for a contact, judged under one lock.

A cap ("no contact gets more than 2 marketing messages in 7 days") counts a contact's
messages on every channel and contact point together: e-mail, SMS and SendPulse
hand-overs alike, since they are all rows of ``messages``. What counts:

- a message **sent** (or handed over) within the last ``days`` days;
- a message still **to be sent** (queued, sending, deferred, unknown): bulkmail cannot
  know yet when it leaves (a schedule, a pause, the throttle), so it counts as if it
  left now; an unknown one may have arrived.

Failed and removed messages never reached the person and do not count; nor does any
message of a transactional campaign (a service message such as an appointment reminder).

:func:`CapCheck.hold` is called by ``queue.store_messages`` inside the transaction that
stores the campaign's messages, after taking one lock every registration shares
(:func:`lock_caps`): two campaigns registered at once for the same person are judged one
after the other, the second seeing the first's queued messages.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bulkmail_kernel.config import as_local
from bulkmail_kernel.db import Campaign, Message, MessageStatus, Setting, chunks
from bulkmail_kernel.exceptions import ConfigError

#: Statuses of a message still to be sent (or perhaps sent): each counts toward a cap.
PENDING = (
    MessageStatus.QUEUED.value,
    MessageStatus.SENDING.value,
    MessageStatus.DEFERRED.value,
    MessageStatus.UNKNOWN.value,
)
#: The name of the global rule in ``settings``.
SETTING = "frequency_cap"
#: PostgreSQL's advisory lock every registration that caps or counts takes (any bigint
#: would do; this one is derived from a name so it means something in pg_locks).
_LOCK_KEY = zlib.crc32(b"bulkmail.frequency_cap")
#: How many of the messages that count a skip reason names (its data holds them all).
_LISTED = 5


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``max_messages`` marketing messages per contact in ``days`` days."""

    max_messages: int
    days: int

    def __post_init__(self) -> None:
        """Refuse a cap that cannot be meant: no messages at all, or no days."""
        for name, value in (("max_messages", self.max_messages), ("days", self.days)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"frequency cap: {name}={value!r}: give a whole number, 1 or more "
                    "(e.g. 2 messages in 7 days)",
                    field=name,
                )

    def __str__(self) -> str:
        """Return the rule as a person reads it."""
        return f"{self.max_messages} in {self.days} days"

    @property
    def text(self) -> str:
        """Return the rule as stored and typed in the CLI: ``"2/7"``."""
        return f"{self.max_messages}/{self.days}"

    @classmethod
    def parse(cls, value: str) -> FrequencyCap:
        """Return the cap written as ``"2/7"`` (messages/days), naming what is wrong."""
        parts = value.strip().split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(
                f"frequency cap {value!r}: write messages/days, e.g. '2/7' for at most 2 "
                "marketing messages in 7 days, or 'none'",
                value=value,
            )
        return cls(int(parts[0]), int(parts[1]))


def read_setting(conn: sa.Connection) -> FrequencyCap | None:
    """Return the global cap stored in ``settings`` (None: no global cap)."""
    value = conn.execute(sa.select(Setting.value).where(Setting.name == SETTING)).scalar()
    if not value:
        return None
    return FrequencyCap(int(value["max_messages"]), int(value["days"]))


def lock_caps(conn: sa.Connection) -> None:
    """Serialise registrations that cap or count until this transaction ends.

    PostgreSQL: one transaction-scoped advisory lock, released by the commit. SQLite lets
    one writer in at a time: a first write takes its lock for the whole transaction, so
    the counting that follows sees every registration committed before it.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
    else:
        conn.execute(
            sa.update(Setting)
            .where(Setting.name == SETTING)
            .values(updated_at=Setting.updated_at)  # a write that changes nothing
        )


@dataclass(frozen=True)
class Counted:
    """One message that counts toward a contact's cap."""

    message_id: int | None
    campaign: str
    status: str
    at: datetime

    def describe(self) -> str:
        """Return e.g. ``'spring' sent 2026-12-01 10:05`` (local time)."""
        local = as_local(self.at)
        when = local.strftime("%Y-%m-%d %H:%M") if local is not None else ""
        verb = "sent" if self.status == MessageStatus.SENT.value else f"{self.status} since"
        return f"{self.campaign!r} {verb} {when}"

    def record(self) -> dict[str, Any]:
        """Return it as stored in the skip event's data."""
        return {
            "message_id": self.message_id,
            "campaign": self.campaign,
            "status": self.status,
            "at": self.at.isoformat(),
        }


def _counting(chunk: Sequence[int], since: datetime) -> list[sa.ColumnElement[bool]]:
    """Return the conditions of the messages that count, for the contacts of ``chunk``."""
    m = Message.__table__
    sent_at = sa.func.coalesce(m.c.sent_at, m.c.updated_at)
    return [
        m.c.contact_id.in_(chunk),
        Campaign.__table__.c.transactional.is_(False),
        sa.or_(
            sa.and_(m.c.status == MessageStatus.SENT.value, sent_at >= since),
            m.c.status.in_(PENDING),
        ),
    ]


def count_messages(
    conn: sa.Connection, contact_ids: Iterable[int], days: int, now: datetime
) -> dict[int, int]:
    """Return, per contact, how many messages count toward a cap of ``days`` days at ``now``."""
    since = now - timedelta(days=days)
    m, c = Message.__table__, Campaign.__table__
    found: dict[int, int] = {}
    for chunk in chunks(sorted(set(contact_ids)), 500):
        # Counted in the database: a registration of many people with long histories
        # fetches one row per person, the details only for those it turns away.
        rows = conn.execute(
            sa.select(m.c.contact_id, sa.func.count())
            .join(c, c.c.id == m.c.campaign_id)
            .where(*_counting(chunk, since))
            .group_by(m.c.contact_id)
        )
        found.update({int(contact_id): int(n) for contact_id, n in rows})
    return found


def counted_messages(
    conn: sa.Connection, contact_ids: Iterable[int], days: int, now: datetime
) -> dict[int, list[Counted]]:
    """Return, per contact, the messages that count toward a cap of ``days`` days at ``now``."""
    since = now - timedelta(days=days)
    m, c = Message.__table__, Campaign.__table__
    sent_at = sa.func.coalesce(m.c.sent_at, m.c.updated_at)
    found: dict[int, list[Counted]] = defaultdict(list)
    for chunk in chunks(sorted(set(contact_ids)), 500):
        rows = conn.execute(
            sa.select(m.c.contact_id, m.c.id, c.c.name, m.c.status, sent_at, m.c.created_at)
            .join(c, c.c.id == m.c.campaign_id)
            .where(*_counting(chunk, since))
            .order_by(m.c.contact_id, m.c.id)
        )
        for contact_id, mid, name, status, sent, created in rows:
            at = sent if status == MessageStatus.SENT.value else created
            found[contact_id].append(Counted(mid, name, status, at))
    return found


@dataclass
class CapCheck:
    """The cap one registration is judged by, and who it turned away.

    ``rule`` None: the campaign is not capped (``frequency_cap="none"``, or no global
    cap), but its messages count toward other campaigns' caps, so it still takes the lock.
    """

    campaign_id: int
    campaign: str
    rule: FrequencyCap | None
    #: Skip events of the recipients the cap turned away (filled by :meth:`hold`).
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: The campaigns whose messages made someone capped, for the one-line summary.
    counted_campaigns: set[str] = field(default_factory=set)

    def hold(
        self, conn: sa.Connection, channel: str, messages: list[dict[str, Any]], now: datetime
    ) -> list[dict[str, Any]]:
        """Take the caps' lock, then return the messages within the cap; record the rest."""
        lock_caps(conn)
        if self.rule is None or not messages:
            return messages
        rule = self.rule
        # A recipient this campaign already has (another registration of it stored them
        # meanwhile) is left to the INSERT's conflict handling: not a cap, not a skip.
        mine: set[str] = set()
        for chunk in chunks([m["point"].normalized for m in messages], 500):
            mine |= set(
                conn.execute(
                    sa.select(Message.recipient).where(
                        Message.campaign_id == self.campaign_id,
                        Message.channel == channel,
                        Message.recipient.in_(chunk),
                    )
                ).scalars()
            )
        counts = count_messages(conn, [m["point"].contact_id for m in messages], rule.days, now)
        kept: list[dict[str, Any]] = []
        turned_away: list[Any] = []
        # This registration's own messages, as they are let through: they count toward the
        # contact's next one in the same frame (a second address or phone of the person).
        added: dict[int, int] = defaultdict(int)
        for m in messages:
            point = m["point"]
            if point.normalized in mine:
                kept.append(m)
            elif counts.get(point.contact_id, 0) + added[point.contact_id] < rule.max_messages:
                kept.append(m)
                added[point.contact_id] += 1
            else:
                turned_away.append(point)
        if turned_away:
            details = counted_messages(conn, [p.contact_id for p in turned_away], rule.days, now)
            for point in turned_away:
                these = (
                    details[point.contact_id]
                    + [Counted(None, self.campaign, MessageStatus.QUEUED.value, now)]
                    * added[point.contact_id]
                )
                self.counted_campaigns |= {c.campaign for c in these}
                self.skipped.append(self._skip(point, these, now))
        return kept

    def _skip(self, point: Any, these: list[Counted], now: datetime) -> dict[str, Any]:
        rule = self.rule
        assert rule is not None
        # The newest few in the line a person reads; the data keeps every one.
        listed = ", ".join(c.describe() for c in these[-_LISTED:])
        if len(these) > _LISTED:
            listed = f"{len(these) - _LISTED} earlier and " + listed
        many = "messages already count" if len(these) != 1 else "message already counts"
        return {
            "kind": "skipped",
            "contact_id": point.contact_id,
            "contact_point_id": point.id,
            "campaign_id": self.campaign_id,
            "message_id": None,
            "detail": f"frequency cap {rule}: {len(these)} marketing {many} ({listed})",
            "occurred_at": now,
            "data": {
                "address": point.normalized,
                "at": "registration",
                "frequency_cap": rule.text,
                "counted": [c.record() for c in these],
            },
        }

    def summary_reason(self) -> str:
        """Return the reason the one-line summary counts every capped recipient under."""
        assert self.rule is not None
        names = sorted(self.counted_campaigns)
        shown = ", ".join(repr(n) for n in names[:3])
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        return f"over the frequency cap of {self.rule} (counting {shown}{more})"

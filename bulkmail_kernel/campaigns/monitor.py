"""How a campaign is going right now: counts, actual against set rate, ETA, the last errors.

What the outbox monitor shows and ``bulkmail campaign-progress`` prints. It reads the
database only, so it shows what any worker on any machine is doing, and it is cheap
enough to run every few seconds on a 100,000-message campaign (``bench/bench_monitor.py``):
one GROUP BY over the ``(campaign_id, status, ...)`` index for the counts and two reads
through the same index for the sent times and the errors. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.complaints import ComplaintRate, complaints_of
from bulkmail_kernel.campaigns.preflight import short_reason, skipped_line
from bulkmail_kernel.db import (
    Campaign,
    CampaignStatus,
    Database,
    Message,
    MessageStatus,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.db.roles import MASKED_VIEW, hidden_contact_columns, readable_events
from bulkmail_kernel.display import readable
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.outbox.parking import waiting_for_window
from bulkmail_kernel.outbox.queue import REMOVABLE
from bulkmail_kernel.records import CampaignRef

# Declarative models' __table__ is a Table; SQLAlchemy's stubs only say FromClause.
_M = cast(sa.Table, Message.__table__)

#: Statuses still to go out: the ETA is how long these take at the expected rate.
REMAINING = (MessageStatus.QUEUED, MessageStatus.DEFERRED, MessageStatus.SENDING)
#: Statuses whose message carries the error it ended (or waits) with.
ERRORED = (MessageStatus.DEFERRED, MessageStatus.FAILED, MessageStatus.UNKNOWN)
#: Campaigns the monitor no longer offers by default: nothing will change in them.
CLOSED = (CampaignStatus.FINISHED, CampaignStatus.CANCELLED)

_ERROR_COLUMNS = ["message_id", "recipient", "status", "code", "error", "at"]
_OPEN_COLUMNS = ["message_id", "recipient", "status", "attempts", "error"]


@dataclass(frozen=True)
class CampaignProgress:
    """One look at a campaign: what the monitor widget shows, every time in the analyst's zone.

    A record rather than a one-row frame: the widget and scripts read single fields
    (``p.eta``, ``p.counts["sent"]``), and the last errors are a frame of their own.
    """

    campaign_id: int
    name: str
    #: The campaign's status (registered, scheduled, sending, paused, finished, ...).
    status: str
    #: Messages per status, every status present (zeros included).
    counts: dict[str, int]
    #: The throttle the campaign was set to.
    rate_per_hour: int
    #: Messages sent per hour over the last ``window_s`` (or since the first send, if later);
    #: None before anything was sent.
    actual_rate_per_hour: float | None
    #: Queued, deferred and sending messages: what still goes out.
    remaining: int
    #: Seconds until the remaining messages are out at the lower of the actual and the set
    #: rate; None when nothing remains or no rate is known yet (nothing sent recently).
    eta_s: float | None
    #: When that is, local time.
    eta: datetime | None
    scheduled_at: datetime | None
    #: When the first message went out (None before).
    started_at: datetime | None
    last_sent_at: datetime | None
    finished_at: datetime | None
    #: Why the campaign stopped, if it did ("" otherwise).
    last_error: str
    #: The moment of this look, local time.
    as_of: datetime
    #: The latest messages that failed, were deferred or are in doubt, newest first.
    errors: pd.DataFrame = field(repr=False)
    #: Messages that drew a complaint (an abuse report) so far.
    complaints: int = 0
    #: When messages may go on each recipient's wall clock (None: any time).
    send_window: str | None = None
    #: Open messages held back until their window opens.
    waiting_for_window: int = 0

    @property
    def complaint_rate(self) -> ComplaintRate:
        """Return complaints ÷ sent, with its warning from 0.1 %."""
        return ComplaintRate(self.complaints, self.sent)

    @property
    def total(self) -> int:
        """Return how many messages the campaign has in all."""
        return sum(self.counts.values())

    @property
    def sent(self) -> int:
        """Return how many messages were sent."""
        return self.counts[MessageStatus.SENT.value]

    def summary(self) -> str:
        """Return the progress in one line: sent/total, rate against the set rate, ETA."""
        rate = (
            "no rate yet"
            if self.actual_rate_per_hour is None
            else f"{self.actual_rate_per_hour:,.0f}/h"
        )
        eta = (
            "—" if self.eta is None else f"{duration_text(self.eta_s)} ({self.eta:%Y-%m-%d %H:%M})"
        )
        others = ", ".join(
            f"{n:,} {k}" for k, n in self.counts.items() if n and k != MessageStatus.SENT.value
        )
        return (
            f"{self.name} [{self.status}]: {self.sent:,}/{self.total:,} sent"
            + (f" ({others})" if others else "")
            + f"; rate {rate} of {self.rate_per_hour:,}/h set; ETA {eta}"
        )

    def window_line(self) -> str:
        """Return the send window and how many wait for it in one line ("" without a window)."""
        if self.send_window is None:
            return ""
        return (
            f"window {self.send_window} recipient's local time; "
            f"{self.waiting_for_window:,} waiting for their window"
        )

    def progress_line(self) -> str:
        """Return the line ``bulkmail run-worker`` logs: sent/total, actual (set) rate, ETA."""
        rate = (
            "no rate yet"
            if self.actual_rate_per_hour is None
            else f"{self.actual_rate_per_hour:,.0f}/h"
        )
        return (
            f"campaign {self.name!r}: {self.sent:,}/{self.total:,} sent, {rate} "
            f"(set {self.rate_per_hour:,}/h), ETA {duration_text(self.eta_s)}"
        )


def duration_text(seconds: float | None) -> str:
    """Return ``seconds`` as "2 h 05 min", "4 min 10 s" or "12 s"."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _local(when: datetime | None, zone: ZoneInfo) -> datetime | None:
    return None if when is None else when.astimezone(zone)


def campaign_progress(
    campaign: CampaignRef,
    *,
    errors: int = 10,
    window_s: float = 600.0,
    now: datetime | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> CampaignProgress:
    """Return how campaign ``campaign`` is going: counts, actual and set rate, ETA, last errors.

    Args:
        campaign: name or id.
        errors: how many of the latest errors to list.
        window_s: the actual rate counts the messages sent in this many last seconds.
        now: the moment to look from (default: now); aware.
        db: the database (default: the notebook's, or ``BULKMAIL_DB_URL``).
        url: or its URL.

    """
    database = resolve_database(db, url)
    now = utcnow() if now is None else now
    zone = ZoneInfo(config.local_timezone())
    since = now - timedelta(seconds=window_s)
    recipient, last_error_, errors_from = _error_columns(database)
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid = c.id
        head = (
            c.name,
            c.status,
            c.rate_per_hour,
            c.scheduled_at,
            c.finished_at,
            c.last_error or "",
        )
        window = c.send_window
        by_status: dict[str, int] = dict(
            s.execute(
                sa.select(_M.c.status, sa.func.count())
                .where(_M.c.campaign_id == cid)
                .group_by(_M.c.status)
            ).all()
        )
        # Through the (campaign_id, status) prefix of the claim index: the sent rows only.
        first, last, recent = s.execute(
            sa.select(
                sa.func.min(_M.c.sent_at),
                sa.func.max(_M.c.sent_at),
                sa.func.count().filter(_M.c.sent_at >= since),
            ).where(_M.c.campaign_id == cid, _M.c.status == MessageStatus.SENT.value)
        ).one()
        bad = s.execute(
            sa.select(
                _M.c.id,
                recipient,
                _M.c.status,
                _M.c.last_code,
                last_error_,
                _M.c.updated_at,
            )
            .select_from(errors_from)
            .where(_M.c.campaign_id == cid, _M.c.status.in_([m.value for m in ERRORED]))
            .order_by(_M.c.updated_at.desc(), _M.c.id.desc())
            .limit(errors)
        ).all()
        complaints = complaints_of(s, cid)
    name, status, rate, scheduled_at, finished_at, last_error = head
    counts = {m.value: int(by_status.get(m.value, 0)) for m in MessageStatus}
    remaining = sum(counts[m.value] for m in REMAINING)
    first, last = (_as_utc(first), _as_utc(last))
    actual = _actual_rate(int(recent or 0), first, since, now)
    eta_s = None
    if remaining and actual:
        eta_s = remaining / min(actual, float(rate)) * 3600.0
    frame = pd.DataFrame(bad, columns=_ERROR_COLUMNS)
    frame["message_id"] = frame["message_id"].astype("int64")
    frame["at"] = pd.to_datetime(frame["at"], utc=True).dt.tz_convert(str(zone))
    return CampaignProgress(
        campaign_id=cid,
        name=name,
        status=status,
        counts=counts,
        rate_per_hour=int(rate),
        actual_rate_per_hour=actual,
        remaining=remaining,
        eta_s=eta_s,
        eta=None if eta_s is None else (now + timedelta(seconds=eta_s)).astimezone(zone),
        scheduled_at=_local(scheduled_at, zone),
        started_at=_local(first, zone),
        last_sent_at=_local(last, zone),
        finished_at=_local(finished_at, zone),
        last_error=last_error,
        as_of=now.astimezone(zone),
        errors=readable(frame),
        complaints=complaints,
        send_window=window,
        waiting_for_window=waiting_for_window(database, [cid], now).get(cid, 0) if window else 0,
    )


def _error_columns(database: Database) -> tuple[Any, Any, sa.FromClause]:
    """Return (recipient, last_error, FROM) for the errors list: masked for the analyst role.

    A role that may not read ``messages.recipient`` and ``last_error`` (a bounce's text
    quotes the address) sees the masked address of ``contact_points_masked`` and a
    blank reason; the code (``last_code``) stays.
    """
    if "messages.recipient" not in hidden_contact_columns(database):
        return _M.c.recipient, _M.c.last_error, _M
    masked = sa.table(MASKED_VIEW, sa.column("id"), sa.column("masked_address"))
    joined = _M.outerjoin(masked, masked.c.id == _M.c.contact_point_id)
    recipient = sa.func.coalesce(masked.c.masked_address, "***").label("recipient")
    return recipient, sa.literal("").label("last_error"), joined


def _as_utc(value: datetime | str | None) -> datetime | None:
    """Return an aggregate's time as aware UTC (SQLite gives MIN/MAX back as naive or text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _actual_rate(
    recent: int, first: datetime | None, since: datetime, now: datetime
) -> float | None:
    """Return messages per hour over the window, which starts no earlier than the first send."""
    if first is None:
        return None
    start = max(since, first)
    elapsed = (now - start).total_seconds()
    if elapsed <= 0:
        return None
    return recent / elapsed * 3600.0


def watched_campaigns(
    *, db: Database | None = None, url: str | None = None
) -> list[tuple[int, str, str]]:
    """Return (id, name, status) of every campaign not finished or cancelled, newest first."""
    database = resolve_database(db, url)
    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.select(Campaign.id, Campaign.name, Campaign.status)
            .where(Campaign.status.not_in([c.value for c in CLOSED]))
            .order_by(Campaign.id.desc())
        ).all()
    return [(int(r.id), str(r.name), str(r.status)) for r in rows]


def open_messages(
    campaign: CampaignRef,
    *,
    limit: int = 200,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return up to ``limit`` messages that can still be removed (queued, deferred, unknown).

    Unknown and deferred first (those are what an analyst takes out), then the queue in order.
    """
    database = resolve_database(db, url)
    removable = [m.value for m in REMOVABLE]
    with database.session() as s:
        cid = campaign_row(s, campaign).id
        query = sa.select(
            _M.c.id, _M.c.recipient, _M.c.status, _M.c.attempts, _M.c.last_error
        ).where(_M.c.campaign_id == cid)
        rows: list[Any] = []
        # One indexed read per status, so a long queue never sorts as a whole.
        for status in sorted(removable, key=lambda v: v == MessageStatus.QUEUED.value):
            if len(rows) >= limit:
                break
            rows += s.execute(
                query.where(_M.c.status == status).order_by(_M.c.id).limit(limit - len(rows))
            ).all()
    frame = pd.DataFrame(rows, columns=_OPEN_COLUMNS)
    frame["message_id"] = frame["message_id"].astype("int64")
    return frame


def registration_skips(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> str:
    """Return how many recipients registration skipped and why, in one line ("": none).

    Read from the stored skip events, so the monitor says it after a kernel restart too.
    Not part of ``campaign_progress``: it reads events, so the monitor asks only when
    the campaign shown or its message count changes.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        ev = readable_events(database)  # the analyst's: data["why"], without the address
        rows = s.execute(
            sa.select(ev.c.detail, ev.c.data).where(
                ev.c.campaign_id == c.id, ev.c.kind == "skipped"
            )
        ).all()
        name = c.name
    reasons = [
        str(data.get("why") or short_reason(detail or ""))
        for detail, data in ((r[0], r[1] or {}) for r in rows)
        if data.get("at") == "registration"
    ]
    return skipped_line(name, reasons)

"""Holding back the messages whose send window is closed on their recipient's wall clock.

Each message keeps its recipient's zone (``messages.timezone``, None for the firm's
zone ``BULKMAIL_TZ``). Parking is one UPDATE per zone of the campaign whose window is
closed now: its open messages get ``not_before`` = the moment the window next opens
there, and the claim (:mod:`.store`) takes no message before its ``not_before``. Zones
are few, so a campaign of a million messages parks in a handful of statements, and a
send loop parks again only when some zone's window opens or closes (or once a minute,
for messages registered meanwhile): :class:`Parker`. Opening needs no statement at all:
the time written is the opening itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.db import Campaign, Database, Message, MessageStatus
from bulkmail_kernel.outbox.reconnect import retrying
from bulkmail_kernel.outbox.windows import SendWindow, parse_window

_M = cast(sa.Table, Message.__table__)
#: Statuses of a message still to be claimed (the store's CLAIMABLE; the store imports us).
_WAITING = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)
#: How often a running loop looks for zones registered since it last parked.
REFRESH_S = 60.0


def not_parked(now: datetime) -> sa.ColumnElement[bool]:
    """Return the claim's condition: the message's window is open (or it has none)."""
    return sa.or_(_M.c.not_before.is_(None), _M.c.not_before <= now)


def _zone(name: str | None) -> ZoneInfo:
    # The firm's zone through config: a wrong BULKMAIL_TZ is a ConfigError saying so.
    return ZoneInfo(name) if name else config.local_zone()


def park(
    conn: sa.Connection,
    campaign_id: int,
    window: SendWindow,
    now: datetime,
    *,
    settle: bool = False,
) -> datetime:
    """Park the campaign's open messages in zones whose window is closed; return when to again.

    The answer is the next moment some zone's window opens or closes. ``settle`` also
    frees what waits for a later opening than the window says now (parked by another
    clock, or under another window): a loop's first park does it, later ones only add.
    """
    if conn.dialect.name == "postgresql":
        # Workers whose windows close at the same moment park one after the other: two
        # UPDATEs of the same rows in different orders could deadlock. (SQLite: one writer.)
        conn.execute(sa.select(Campaign.id).where(Campaign.id == campaign_id).with_for_update())
    zones = conn.execute(
        sa.select(_M.c.timezone)
        .where(_M.c.campaign_id == campaign_id, _M.c.status.in_(_WAITING))
        .distinct()
    ).scalars()
    again = now + timedelta(days=8)
    for name in list(zones):
        zone = _zone(name)
        again = min(again, window.next_change(now, zone))
        opens = window.next_open(now, zone)
        if opens <= now and not settle:
            continue
        stale = _M.c.not_before > opens if settle else sa.false()
        conn.execute(
            sa.update(_M)
            .where(
                _M.c.campaign_id == campaign_id,
                _M.c.status.in_(_WAITING),
                _M.c.timezone.is_(None) if name is None else _M.c.timezone == name,
                sa.or_(_M.c.not_before.is_(None), _M.c.not_before < opens, stale)
                if opens > now
                else stale,
            )
            .values(not_before=opens if opens > now else None)
        )
    return again


def window_of(conn: sa.Connection, campaign_id: int) -> str | None:
    """Return the campaign's send window as stored (None: it may send at any time)."""
    return cast(
        "str | None",
        conn.execute(
            sa.select(Campaign.send_window).where(Campaign.id == campaign_id)
        ).scalar_one_or_none(),
    )


def park_campaign(database: Database, campaign_id: int, now: datetime) -> None:
    """Park the campaign's messages now (after registration: new ones may be outside)."""

    def run(_attempt: int) -> None:
        with database.engine.begin() as conn:
            text = window_of(conn, campaign_id)
            if text is not None:
                park(conn, campaign_id, parse_window(text), now)

    retrying(database, "park", run)


def set_window(database: Database, campaign_id: int, text: str | None, now: datetime) -> None:
    """Store the campaign's window and park its open messages by it, in one transaction."""
    with database.engine.begin() as conn:
        conn.execute(sa.update(Campaign).where(Campaign.id == campaign_id).values(send_window=text))
        # What the old window held back is free again; the new one parks what it closes.
        conn.execute(
            sa.update(_M)
            .where(
                _M.c.campaign_id == campaign_id,
                _M.c.status.in_(_WAITING),
                _M.c.not_before.is_not(None),
            )
            .values(not_before=None)
        )
        if text is not None:
            park(conn, campaign_id, parse_window(text), now)


def waiting_for_window(
    database: Database, campaign_ids: Iterable[int], now: datetime
) -> dict[int, int]:
    """Return per campaign how many open messages wait for their window to open."""
    ids = list(campaign_ids)
    if not ids:
        return {}
    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.select(_M.c.campaign_id, sa.func.count())
            .where(_M.c.campaign_id.in_(ids), _M.c.status.in_(_WAITING), _M.c.not_before > now)
            .group_by(_M.c.campaign_id)
        ).all()
    return {int(c): int(n) for c, n in rows}


class Parker:
    """Parks one campaign's messages before each claim, with a statement only when needed.

    Shared by the threads of one send; each asks before it claims. The window is read
    every time (one small row), so one changed by ``set_send_window`` applies at once.
    """

    def __init__(self, database: Database, campaign_id: int) -> None:
        self.db = database
        self.campaign_id = campaign_id
        self._lock = threading.Lock()
        self._text: str | None = None
        self._again: datetime | None = None

    def park(self, now: datetime) -> None:
        """Park what the window closes now, unless nothing opened or closed since last time."""
        with self._lock:
            retrying(self.db, "park", lambda _attempt: self._park(now))

    def _park(self, now: datetime) -> None:
        with self.db.engine.begin() as conn:
            text = window_of(conn, self.campaign_id)
            if text is None:
                self._text = self._again = None
                return
            if text == self._text and self._again is not None and now < self._again:
                return
            window = parse_window(text)
            again = park(conn, self.campaign_id, window, now, settle=text != self._text)
        self._text = text
        self._again = min(again, now + timedelta(seconds=REFRESH_S))

    def next_due(self, due: datetime | None, now: datetime) -> datetime | None:
        """Return the earlier of ``due`` and the next window opening of a parked message."""
        with self.db.engine.connect() as conn:
            opens = conn.execute(
                sa.select(sa.func.min(_M.c.not_before)).where(
                    _M.c.campaign_id == self.campaign_id,
                    _M.c.status.in_(_WAITING),
                    _M.c.not_before > now,
                )
            ).scalar()
        if opens is None:
            return due
        return opens if due is None else min(due, opens)

"""Scheduled campaigns that are too late: set ``late`` rather than sent hours after their time.

A campaign scheduled for Friday 9:00 on a machine that was off over the weekend must
not go out on Monday as if nothing happened (issue 13). A worker finding a scheduled
campaign overdue by more than ``BULKMAIL_MAX_LATENESS_S`` sets it ``late``, with an
event, and leaves it; ``resume`` sends it, ``cancel`` drops it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast

import sqlalchemy as sa

from bulkmail_kernel.db import Campaign, CampaignStatus, Database, Event

# Declarative models' __table__ is a Table; SQLAlchemy's stubs only say FromClause.
_C = cast(sa.Table, Campaign.__table__)


def mark_late(
    database: Database, now: datetime, max_lateness_s: float
) -> list[tuple[str, datetime]]:
    """Set ``late`` every scheduled campaign due more than ``max_lateness_s`` before ``now``.

    One guarded UPDATE, so two workers never both report the same one. Returns the
    name and due time of each campaign set late.
    """
    cutoff = now - timedelta(seconds=max_lateness_s)
    with database.engine.begin() as conn:
        rows = conn.execute(
            sa.update(_C)
            .where(
                _C.c.status == CampaignStatus.SCHEDULED.value,
                _C.c.scheduled_at.is_not(None),
                _C.c.scheduled_at < cutoff,
            )
            .values(
                status=CampaignStatus.LATE.value,
                last_error=f"not started: more than {max_lateness_s:g} s late when a worker "
                "found it; resume() sends it now",
                updated_at=now,
            )
            .returning(_C.c.id, _C.c.name, _C.c.scheduled_at)
        ).all()
        if rows:
            conn.execute(
                sa.insert(Event),
                [
                    {
                        "kind": "late",
                        "campaign_id": r.id,
                        "detail": f"due at {r.scheduled_at:%Y-%m-%d %H:%M} UTC, found "
                        f"{(now - r.scheduled_at).total_seconds() / 3600:.1f} h later "
                        f"(BULKMAIL_MAX_LATENESS_S={max_lateness_s:g}): waits for resume()",
                        "data": {"max_lateness_s": max_lateness_s},
                        "occurred_at": now,
                    }
                    for r in rows
                ],
            )
    return [(str(r.name), r.scheduled_at) for r in rows]

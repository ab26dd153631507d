"""Events written for others: one insert of ready-made rows into the events table.

The outbox owns the events table; a stage above that has something to record (a
counted click from the tracking endpoint, an A/B test's decision) hands the rows here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from bulkmail_kernel.db import Database, Event, utcnow

#: The columns an event row may carry (the rest take their defaults).
_COLUMNS = (
    "kind",
    "occurred_at",
    "contact_id",
    "contact_point_id",
    "campaign_id",
    "message_id",
    "detail",
    "data",
)


def add_events(database: Database, rows: Sequence[dict[str, Any]]) -> int:
    """Insert event rows (kind, campaign_id, message_id, ..., data); return how many."""
    if not rows:
        return 0
    now = utcnow()
    clean = []
    for row in rows:
        unknown = set(row) - set(_COLUMNS)
        if unknown or not row.get("kind"):
            raise ValueError(f"add_events: row {row!r}: give a kind and only {', '.join(_COLUMNS)}")
        clean.append(
            {"occurred_at": now, "detail": "", "data": {}}
            | {k: row.get(k) for k in _COLUMNS if k in row}
        )
    with database.engine.begin() as conn:
        conn.execute(sa.insert(Event), clean)
    return len(clean)

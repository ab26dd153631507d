"""The rate each run of a campaign sends at, kept as a ``sending started`` event.

``send(rate_per_hour=3000)`` may run a campaign created at 1,000/h; the campaign list
shows the rate really used (issue 15), so every run records it when it starts: the
send loop, and a worker when it picks a campaign up (at the campaign's own rate).
"""

from __future__ import annotations

from datetime import datetime

from bulkmail_kernel.db import Database, Event

#: The event kind a run records its rate in; ``data["rate_per_hour"]`` is null when unthrottled.
RUN_STARTED = "sending started"


def run_started(campaign_id: int, rate_per_hour: float | None, at: datetime) -> Event:
    """Return the event recording a run's rate (None: unthrottled, JSON has no infinity)."""
    data = {"rate_per_hour": rate_per_hour}
    return Event(kind=RUN_STARTED, campaign_id=campaign_id, data=data, occurred_at=at)


def record_run(database: Database, campaign_id: int, rate_per_hour: float, at: datetime) -> None:
    """Record that a run of the campaign starts at ``rate_per_hour``."""
    with database.session() as s:
        s.add(run_started(campaign_id, rate_per_hour, at))

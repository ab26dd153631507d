"""Send without holding the notebook: hand the campaign to a worker, or to a kernel thread.

``send_in_background(campaign)`` returns at once with a :class:`BackgroundSend`.
When a ``bulkmail run-worker`` is alive on this database (``live_workers``; ``bulkmail
lab`` starts one) the campaign is simply made due now and the worker takes it, so it
goes on even if the notebook is closed. Otherwise ``send()`` runs in a daemon thread of
this kernel with a stop event: ``.stop()`` ends it after the message in hand, every
message recorded, the rest back in the queue (nothing ``unknown``), exactly as Ctrl-C
does in a blocking ``send()``. Either way ``.status()`` reads the campaign's progress
from the database (``campaign_progress``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any, Literal

from bulkmail_kernel.campaigns.campaigns import get_campaign, pause, schedule
from bulkmail_kernel.campaigns.monitor import CampaignProgress, campaign_progress
from bulkmail_kernel.db import CampaignStatus, Database, resolve_database, utcnow
from bulkmail_kernel.engine.loop import SendSummary, send
from bulkmail_kernel.exceptions import SendError
from bulkmail_kernel.outbox.workers import live_workers
from bulkmail_kernel.records import CampaignRef

log = logging.getLogger("bulkmail")

#: Campaign statuses in which nothing more happens until someone acts.
_AT_REST = (
    CampaignStatus.FINISHED.value,
    CampaignStatus.CANCELLED.value,
    CampaignStatus.PAUSED.value,
    CampaignStatus.STOPPED.value,
    "late",  # its time passed long ago with no worker: waits for resume()
)


class BackgroundSend:
    """A campaign going out in the background: look at it, wait for it, stop it.

    ``by`` is ``"worker"`` (a ``bulkmail run-worker`` sends it) or ``"kernel"`` (a
    thread of this kernel does). Built by :func:`send_in_background`.
    """

    def __init__(
        self,
        campaign_id: int,
        name: str,
        by: Literal["worker", "kernel"],
        database: Database,
        started_at: datetime,
    ) -> None:
        self.campaign_id = campaign_id
        self.name = name
        self.by = by
        self.database = database
        self.started_at = started_at
        #: What the kernel thread's ``send()`` returned (None while it runs, or by a worker).
        self.summary: SendSummary | None = None
        #: What ended the kernel thread, if it failed (its message is logged too).
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self, options: dict[str, Any]) -> None:
        try:
            self.summary = send(
                self.campaign_id, stop=self._stop, progress=False, db=self.database, **options
            )
            log.info("background send: %s", self.summary)
        except BaseException as exc:  # the thread must say why it ended, not die silently
            self.error = exc
            log.error("background send of %r ended: %s", self.name, exc)
        finally:
            self._done.set()

    def _start(self, options: dict[str, Any]) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(options,), name=f"bulkmail-send-{self.campaign_id}", daemon=True
        )
        self._thread.start()

    # -- looking ---------------------------------------------------------------

    def status(self, *, errors: int = 5) -> CampaignProgress:
        """Return the campaign's progress as stored now (counts, rate, ETA, last errors)."""
        return campaign_progress(self.campaign_id, errors=errors, db=self.database)

    def progress(self) -> str:
        """Return the progress in one line (sent/total, rate, ETA)."""
        return self.status(errors=0).summary()

    @property
    def running(self) -> bool:
        """Return whether the campaign is still going out (thread alive, or worker busy)."""
        if self.by == "kernel":
            return not self._done.is_set()
        return get_campaign(self.campaign_id, db=self.database).status not in _AT_REST

    # -- acting ----------------------------------------------------------------

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop after the message in hand; return whether it has stopped within ``timeout`` s.

        In the kernel the thread records what it sent and puts the rest back in the
        queue (``send()`` again, or ``send_in_background`` again, goes on). With a
        worker the campaign is paused (``resume()`` to continue): the worker stops
        after the message in hand.
        """
        if self.by == "kernel":
            self._stop.set()
            return self._done.wait(timeout)
        if get_campaign(self.campaign_id, db=self.database).status not in _AT_REST:
            pause(self.campaign_id, db=self.database)
        return True

    def wait(self, timeout: float | None = None, *, poll_s: float = 1.0) -> bool:
        """Wait until the sending ends (finished, paused, stopped); False if ``timeout`` passed.

        In the kernel this waits for the thread; with a worker it looks at the campaign
        every ``poll_s`` seconds. It blocks the cell: use it in scripts and tests.
        """
        if self.by == "kernel":
            return self._done.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._stop.wait(poll_s if left is None else min(poll_s, left))
        return True

    def __repr__(self) -> str:
        try:
            look = self.status(errors=0)
            state = f"{look.status}, {look.sent:,}/{look.total:,} sent"
            if look.remaining:
                state += f", {look.remaining:,} to go"
        except Exception as exc:  # a repr must not raise (a lost connection, a deleted campaign)
            state = f"status unreadable: {type(exc).__name__}"
        where = "a bulkmail worker" if self.by == "worker" else "this kernel's thread"
        ended = ""
        if self.by == "kernel" and self._done.is_set():
            ended = "; thread ended" + (f" with {type(self.error).__name__}" if self.error else "")
        return f"<BackgroundSend {self.name!r} by {where}: {state}{ended}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def send_in_background(
    campaign: CampaignRef,
    *,
    use_worker: bool | None = None,
    rate_per_hour: float | None = None,
    burst: int | None = None,
    connections: int = 1,
    db: Database | None = None,
    url: str | None = None,
    **options: Any,
) -> BackgroundSend:
    """Start sending the campaign and return at once; the notebook stays usable.

    Args:
        campaign: name or id of a registered campaign.
        use_worker: None (default) hands the campaign to a live ``bulkmail run-worker``
            if one is registered on this database (``live_workers()``), else sends from
            a thread of this kernel; True requires a worker (SendError if none is
            alive); False always uses the kernel thread.
        rate_per_hour: for the kernel thread (default: the campaign's); a worker sends
            at the campaign's rate.
        burst: for the kernel thread (default: the campaign's).
        connections: SMTP connections of the kernel thread (see ``send``).
        db: the database (default: the notebook's, or ``BULKMAIL_DB_URL``).
        url: or its URL.
        options: further keyword arguments of ``send()`` for the kernel thread
            (``transport_factory``, ``retry``, ``wait_for_retries``, ``batch_size``).

    Returns:
        A :class:`BackgroundSend`: ``.status()``, ``.progress()``, ``.stop()``,
        ``.wait(timeout)``; ``outbox_monitor(campaign)`` shows the same live.

    """
    database = resolve_database(db, url)
    info = get_campaign(campaign, db=database)
    if info.status in (CampaignStatus.PAUSED.value, CampaignStatus.STOPPED.value):
        raise SendError(
            f"campaign {info.name!r} is {info.status}: resume() it first", campaign=info.name
        )
    if info.status in (CampaignStatus.DRAFT.value, CampaignStatus.CANCELLED.value):
        raise SendError(
            f"campaign {info.name!r} is {info.status}: "
            + ("register() it first" if info.status == "draft" else "it cannot be sent"),
            campaign=info.name,
        )
    if use_worker is not False:
        workers = live_workers(db=database)
        workers = workers[workers["runs_worker"]]
        if len(workers):
            if info.status != CampaignStatus.SENDING.value:
                schedule(info.id, utcnow(), db=database)  # due now: the worker's next look
            log.info("campaign %r handed to worker %s", info.name, workers["worker_id"].iloc[0])
            return BackgroundSend(info.id, info.name, "worker", database, utcnow())
        if use_worker:
            raise SendError(
                f"campaign {info.name!r}: no live worker on {database.url}: start "
                "`python -m bulkmail_kernel.cli run-worker` (bulkmail lab starts one), or "
                "leave use_worker=None to send from this kernel",
                campaign=info.name,
            )
    handle = BackgroundSend(info.id, info.name, "kernel", database, utcnow())
    handle._start(
        {"rate_per_hour": rate_per_hour, "burst": burst, "connections": connections, **options}
    )
    return handle

"""The outbox monitor: a campaign's live counts, rate, ETA and errors, with its queue controls.

Thin over tested functions: what it shows is ``campaign_progress``, ``open_messages``
and ``registration_skips`` (who registration skipped and why, in one line) from
campaigns/monitor.py; its buttons call ``pause``, ``resume``, ``cancel`` and
``remove_from_queue``. It reads the database, so it shows what any worker on any
machine is doing. The date-time picker and its Schedule button call ``schedule`` with the
wall-clock time picked, which is local time (``BULKMAIL_TZ``). A background thread
re-reads every ``refresh_s`` seconds and updates the widgets in place (ipywidgets may be
updated from a thread), so the kernel stays free; closing the widget, or ``.stop()``,
ends that thread.
"""

from __future__ import annotations

import html as htmlmod
import itertools
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import ipywidgets as widgets
import pandas as pd

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.campaigns import (
    cancel,
    get_campaign,
    pause,
    resume,
    schedule,
    set_send_window,
)
from bulkmail_kernel.campaigns.caps import frequency_cap, set_campaign_cap
from bulkmail_kernel.campaigns.explain import explain
from bulkmail_kernel.campaigns.monitor import (
    CampaignProgress,
    campaign_progress,
    duration_text,
    open_messages,
    registration_skips,
    watched_campaigns,
)
from bulkmail_kernel.campaigns.plan import send_plan
from bulkmail_kernel.campaigns.plan_views import plot_plan
from bulkmail_kernel.db import Database, resolve_database
from bulkmail_kernel.display import display_cells
from bulkmail_kernel.exceptions import BulkmailError
from bulkmail_kernel.outbox.queue import remove_from_queue
from bulkmail_kernel.outbox.workers import live_workers
from bulkmail_kernel.records import CampaignRef

#: How many removable messages the queue list offers (the first ones; `queue()` has them all).
QUEUE_ROWS = 200
_COUNTER = itertools.count(1)


def _next_minute() -> datetime:
    """Return the start of the next local minute, naive (what the picker offers first)."""
    now = datetime.now(config.local_zone()).replace(second=0, microsecond=0, tzinfo=None)
    return now + timedelta(minutes=1)


def _when(value: datetime | None) -> str:
    return "—" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def counts_html(p: CampaignProgress) -> str:
    """Return the counts per status as a one-row HTML table."""
    head = "".join(f"<th style='padding: 0 8px'>{k}</th>" for k in p.counts)
    cells = "".join(
        f"<td style='padding: 0 8px; text-align: right'>{n:,}</td>" for n in p.counts.values()
    )
    return (
        f"<table><tr>{head}<th style='padding: 0 8px'>total</th></tr>"
        f"<tr>{cells}<td style='padding: 0 8px; text-align: right'><b>{p.total:,}</b></td></tr>"
        "</table>"
    )


def schedule_note(p: CampaignProgress, workers: int | None = None) -> str:
    """Return when a scheduled campaign goes out, and whether a worker is there to send it.

    ``workers`` is how many run-workers are alive (None: not looked up). "" for a
    campaign that is not waiting for its time.
    """
    if p.status != "scheduled" or p.scheduled_at is None:
        return ""
    wait_s = (p.scheduled_at - p.as_of).total_seconds()
    if wait_s > 0:
        note = f"due in {duration_text(wait_s)}"
        if workers == 0:
            note += " · no worker is running to send it"
        return note
    if workers == 0:
        return (
            f"due {duration_text(-wait_s)} ago, but no worker is running: bulkmail lab starts "
            "one, or run .venv/bin/python -m bulkmail_kernel.cli run-worker"
        )
    return f"due {duration_text(-wait_s)} ago: a worker takes it at its next look"


def rate_html(p: CampaignProgress, workers: int | None = None) -> str:
    """Return status, rate against the set rate, ETA and the campaign's times as HTML."""
    rate = "no rate yet" if p.actual_rate_per_hour is None else f"{p.actual_rate_per_hour:,.0f}/h"
    eta = "—" if p.eta is None else f"{duration_text(p.eta_s)} (at {_when(p.eta)})"
    lines = [
        f"<b>{htmlmod.escape(p.name)}</b> — {htmlmod.escape(p.status)}",
        f"rate {rate} of {p.rate_per_hour:,}/h set · remaining {p.remaining:,} · ETA {eta}",
        f"scheduled {_when(p.scheduled_at)} · first sent {_when(p.started_at)} · "
        f"last sent {_when(p.last_sent_at)} · finished {_when(p.finished_at)} "
        f"<span style='color: #888'>({htmlmod.escape(config.local_timezone())}, "
        f"as of {p.as_of:%H:%M:%S})</span>",
    ]
    note = schedule_note(p, workers)
    if note:
        color = "#b00" if "no worker" in note else "#555"
        lines.append(f"<span style='color: {color}'>{htmlmod.escape(note)}</span>")
    if p.send_window:
        lines.append(f"<span style='color: #555'>{htmlmod.escape(p.window_line())}</span>")
    if p.last_error:
        lines.append(f"<span style='color: #b00'>{htmlmod.escape(p.last_error)}</span>")
    complaints = p.complaint_rate
    if complaints.complaints:
        color = "#b00" if complaints.warning else "#555"
        lines.append(f"<span style='color: {color}'>{htmlmod.escape(complaints.line())}</span>")
    return "<br>".join(lines)


def errors_html(errors: pd.DataFrame) -> str:
    """Return the last errors as an HTML table (or a line saying there are none)."""
    if errors.empty:
        return "<i>no errors</i>"
    head = "".join(f"<th style='text-align: left; padding-right: 8px'>{c}</th>" for c in errors)
    # Local time to the second, status labels, blanks, and each reason in full.
    body = "".join(
        "<tr>"
        + "".join(f"<td style='padding-right: 8px'>{htmlmod.escape(v)}</td>" for v in row)
        + "</tr>"
        for row in display_cells(errors).itertuples(index=False)
    )
    return f"<b>last errors</b><table>{head and f'<tr>{head}</tr>'}{body}</table>"


def skips_html(line: str) -> str:
    """Return the registration's skip line in the monitor's colours ("" when none was skipped)."""
    return f"<span style='color: #a60'>{htmlmod.escape(line)}</span>" if line else ""


def queue_options(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """Return (label, message id) per removable message for the selection list."""
    return [
        (f"#{r.message_id} {r.recipient} ({r.status})", int(r.message_id))
        for r in frame.itertuples(index=False)
    ]


class OutboxMonitor(widgets.VBox):
    """The monitor panel; every button calls a public function, a thread keeps it current."""

    def __init__(
        self,
        campaign: CampaignRef | None = None,
        *,
        refresh_s: float = 2.0,
        db: Database | None = None,
        url: str | None = None,
    ) -> None:
        self.database = resolve_database(db, url)
        self.refresh_s = float(refresh_s)
        self.picker = widgets.Dropdown(description="campaign", options=[])
        self.progress_bar = widgets.IntProgress(min=0, max=1, value=0, description="sent")
        self.progress_label = widgets.Label()
        self.counts = widgets.HTML()
        self.rate = widgets.HTML()
        # Who registration skipped and why (from the stored events: survives a restart).
        self.skips = widgets.HTML()
        self._skips_of: tuple[int, int] | None = None
        self.errors = widgets.HTML()
        self.queue = widgets.SelectMultiple(
            options=[], rows=8, description="queue", layout=widgets.Layout(width="60%")
        )
        self.pause_button = widgets.Button(description="Pause", icon="pause")
        self.resume_button = widgets.Button(description="Resume", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", icon="ban", button_style="danger")
        self.remove_button = widgets.Button(description="Remove selected", icon="trash")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        # Naive on purpose: what the analyst picks is wall-clock time in BULKMAIL_TZ.
        self.when = widgets.NaiveDatetimePicker(description="send at", value=_next_minute())
        self.when_zone = widgets.Label(config.local_timezone())
        self.schedule_button = widgets.Button(description="Schedule", icon="clock-o")
        self.status = widgets.Label()
        # Why a person gets the campaign or not: picking one message of the queue is the
        # click; anyone else by address, customer number or contact id.
        self.why = widgets.Text(
            description="why is",
            placeholder="pick a message above, or type an address or customer number",
            layout=widgets.Layout(width="60%"),
        )
        self.why_button = widgets.Button(description="in or out?", icon="question")
        self.why_result = widgets.HTML()
        self._recipients: dict[int, str] = {}
        # Who gets what, and when: the window and the cap where the campaign is run, and
        # the plan's chart beside the progress.
        self.window = widgets.Text(
            description="send window",
            placeholder="e.g. Mon-Fri 09:00-18:00, at 10:00 local; empty: any time",
            layout=widgets.Layout(width="60%"),
        )
        self.window_button = widgets.Button(description="Set window", icon="clock-o")
        self.cap = widgets.Text(
            description="frequency cap",
            placeholder="e.g. 2/7; none; empty: the global rule",
        )
        self.transactional = widgets.Checkbox(description="transactional (never capped)")
        self.cap_button = widgets.Button(description="Set cap", icon="filter")
        self.plan_button = widgets.Button(description="Plan", icon="line-chart")
        self.plan_note = widgets.HTML()
        self.plan_chart = widgets.Output()
        self._rules_of: int | None = None
        self.last: CampaignProgress | None = None
        self._cancel_armed: int | None = None
        self._busy = threading.Lock()
        self._again = threading.Event()
        self._stop = threading.Event()
        self._fixed = campaign
        if campaign is not None:
            with_name = campaign_progress(campaign, errors=0, db=self.database)
            self.picker.options = [(with_name.name, with_name.campaign_id)]
            self.picker.value = with_name.campaign_id
            self.picker.layout.display = "none"
        else:
            self._update_picker()
        self.picker.observe(lambda _c: self.refresh(), names="value")
        self.queue.observe(self._picked, names="value")
        for button, action in (
            (self.pause_button, self.pause),
            (self.resume_button, self.resume),
            (self.cancel_button, self.cancel),
            (self.remove_button, self.remove_selected),
            (self.refresh_button, self._refresh_all),
            (self.schedule_button, self.schedule),
            (self.why_button, self.explain_person),
            (self.window_button, self.set_window),
            (self.cap_button, self.set_cap),
            (self.plan_button, self.show_plan),
        ):
            button.on_click(lambda _b, act=action: act())
        super().__init__(
            [
                self.picker,
                widgets.HBox([self.progress_bar, self.progress_label]),
                self.rate,
                self.skips,
                self.counts,
                self.errors,
                self.queue,
                widgets.HBox(
                    [
                        self.pause_button,
                        self.resume_button,
                        self.cancel_button,
                        self.remove_button,
                        self.refresh_button,
                    ]
                ),
                widgets.HBox([self.when, self.when_zone, self.schedule_button]),
                self.status,
                widgets.HBox([self.window, self.window_button]),
                widgets.HBox([self.cap, self.transactional, self.cap_button]),
                widgets.HBox([self.plan_button, self.plan_note]),
                self.plan_chart,
                widgets.HBox([self.why, self.why_button]),
                self.why_result,
            ]
        )
        # Names for the page: the browser test (and a stylesheet) find the parts by them.
        self.add_class("bm-monitor")
        for part, name in (
            (self.progress_label, "progress"),
            (self.rate, "rate"),
            (self.skips, "skipped"),
            (self.counts, "counts"),
            (self.status, "status"),
            (self.why_result, "why"),
            (self.plan_note, "plan"),
        ):
            part.add_class(f"bm-monitor-{name}")
        self.refresh()
        self._thread: threading.Thread | None = None
        if self.refresh_s > 0:
            self._thread = threading.Thread(
                target=self._loop, name=f"bulkmail-monitor-{next(_COUNTER)}", daemon=True
            )
            self._thread.start()

    @property
    def campaign_id(self) -> int | None:
        """Return the id of the campaign shown (None when there is none to show)."""
        value = self.picker.value
        return None if value is None else int(value)

    # -- reading ---------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the database and update every widget; False if a refresh was already running.

        A refresh asked for during another one (a button pressed while the thread reads)
        is not piled up: the running one reads once more when it is done.
        """
        if not self._busy.acquire(blocking=False):
            self._again.set()
            return False
        try:
            self._again.set()
            while self._again.is_set():
                self._again.clear()
                self._read_and_show()
        finally:
            self._busy.release()
        return True

    def _read_and_show(self) -> None:
        try:
            if self._fixed is None:
                self._update_picker()
            cid = self.campaign_id
            if cid is None:
                self.rate.value = "<i>no campaign to watch: all are finished or cancelled</i>"
                return
            p = campaign_progress(cid, db=self.database)
            pending = open_messages(cid, limit=QUEUE_ROWS, db=self.database)
            self._show(p, pending)
        except BulkmailError as exc:
            self.status.value = f"refresh failed: {exc.message}"
        except Exception as exc:  # a lost connection must not kill the thread: say it, go on
            first = (str(exc).splitlines() or [""])[0]
            self.status.value = f"refresh failed: {type(exc).__name__}: {first}"

    def _show(self, p: CampaignProgress, pending: pd.DataFrame) -> None:
        if p.scheduled_at is not None and (
            self.last is None or self.last.campaign_id != p.campaign_id
        ):
            # Another campaign shown: the picker starts from its send time (local, naive).
            self.when.value = p.scheduled_at.replace(tzinfo=None, microsecond=0)
        self.last = p
        self._show_rules(p.campaign_id)
        self.progress_bar.max = max(p.total, 1)
        self.progress_bar.value = p.sent
        self.progress_bar.bar_style = "success" if p.status == "finished" else ""
        self.progress_label.value = f"{p.sent:,} / {p.total:,}"
        self.counts.value = counts_html(p)
        workers = None
        if p.status == "scheduled":
            # Only then: whether anyone will send it (the workers table is a few rows).
            alive = live_workers(db=self.database)
            workers = int(alive["runs_worker"].sum())
        self.rate.value = rate_html(p, workers)
        if self._skips_of != (p.campaign_id, p.total):
            # Registering (again) changes the total: only then can the line change.
            self._skips_of = (p.campaign_id, p.total)
            line = registration_skips(p.campaign_id, db=self.database)
            self.skips.value = skips_html(line)
        self.errors.value = errors_html(p.errors)
        self._recipients = {
            int(r.message_id): str(r.recipient) for r in pending.itertuples(index=False)
        }
        options = queue_options(pending)
        if tuple(options) != tuple(self.queue.options):
            kept = set(self.queue.value)
            self.queue.options = options
            # A refresh must not drop what the analyst selected and is about to remove.
            self.queue.value = tuple(v for _label, v in options if v in kept)

    def _refresh_all(self) -> None:
        """Re-read everything, the skip line included (the Refresh button)."""
        self._skips_of = None
        self.refresh()

    def _update_picker(self) -> None:
        current = self.picker.value
        options = [
            (f"{name} ({status})", cid) for cid, name, status in watched_campaigns(db=self.database)
        ]
        if current is not None and current not in [v for _l, v in options]:
            # The campaign being watched finished: it stays until another one is chosen.
            p = self.last
            label = (
                f"{p.name} ({p.status})"
                if p is not None and p.campaign_id == current
                else str(current)
            )
            options.append((label, current))
        if options != list(self.picker.options):
            self.picker.options = options
            # New options may leave nothing chosen: keep the campaign shown, or take the newest.
            if current is None and options:
                current = options[0][1]
            self.picker.value = current

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    # -- the buttons -----------------------------------------------------------

    def _act(self, what: Callable[[int], str]) -> None:
        """Run one button's action on the campaign shown, say what happened, refresh."""
        cid = self.campaign_id
        if cid is None:
            self.status.value = "no campaign chosen"
            return
        try:
            self.status.value = what(cid)
        except BulkmailError as exc:
            self.status.value = f"not done: {exc.message}"
        self.refresh()

    def pause(self) -> None:
        """Pause the campaign shown (the Pause button)."""
        self._cancel_armed = None
        self._act(lambda cid: f"paused: now {pause(cid, db=self.database).status}")

    def resume(self) -> None:
        """Resume the campaign shown (the Resume button)."""
        self._cancel_armed = None
        self._act(lambda cid: f"resumed: now {resume(cid, db=self.database).status}")

    def cancel(self) -> None:
        """Cancel the campaign shown; the first press asks, the second does it (Cancel)."""
        cid = self.campaign_id
        if cid is not None and self._cancel_armed != cid:
            self._cancel_armed = cid
            self.status.value = "press Cancel again to cancel: every unsent message is removed"
            return
        self._cancel_armed = None
        self._act(lambda cid: f"cancelled: now {cancel(cid, db=self.database).status}")

    def schedule(self) -> None:
        """Have the worker send the campaign shown at the picked local time (Schedule)."""
        self._cancel_armed = None
        when = self.when.value
        if when is None:
            self.status.value = "pick a date and time first"
            return
        self._act(
            lambda cid: (
                f"scheduled for {when:%Y-%m-%d %H:%M} ({config.local_timezone()}): now "
                f"{schedule(cid, when, db=self.database).status}"
            )
        )

    def remove_selected(self) -> None:
        """Remove the messages selected in the queue list (the Remove selected button)."""
        self._cancel_armed = None
        chosen = [int(v) for v in self.queue.value]
        if not chosen:
            self.status.value = "select messages in the queue list first"
            return
        self._act(
            lambda cid: (
                f"{remove_from_queue(cid, chosen, db=self.database)} of "
                f"{len(chosen)} selected messages removed"
            )
        )

    def _show_rules(self, campaign_id: int) -> None:
        """Fill the window and cap boxes from the campaign, once per campaign shown."""
        if self._rules_of == campaign_id:
            return
        self._rules_of = campaign_id
        info = get_campaign(campaign_id, db=self.database)
        self.window.value = info.send_window or ""
        self.cap.value = info.frequency_cap or ""
        self.transactional.value = bool(info.transactional)

    def set_window(self) -> None:
        """Set the campaign's send window from the box (empty: any time)."""
        text = self.window.value.strip()
        self._act(
            lambda cid: (
                "send window: "
                + (set_send_window(cid, text or None, db=self.database).send_window or "any time")
            )
        )

    def set_cap(self) -> None:
        """Set the rule the campaign is judged by from the box and the checkbox."""
        text = self.cap.value.strip() or None
        transactional = bool(self.transactional.value)

        def apply(cid: int) -> str:
            info = set_campaign_cap(cid, text, transactional=transactional, db=self.database)
            if info.transactional:
                return "transactional: never capped, never counted"
            rule = frequency_cap(cid, db=self.database)
            return f"frequency cap: {rule or 'none'}" + ("" if info.frequency_cap else " (global)")

        self._act(apply)

    def show_plan(self) -> pd.DataFrame | None:
        """Show when the queued messages will go: the finish and a chart per hour and group."""
        cid = self.campaign_id
        if cid is None:
            return None
        try:
            plan = send_plan(cid, db=self.database)
        except BulkmailError as exc:
            self.plan_note.value = f"<span style='color:#b00'>{htmlmod.escape(str(exc))}</span>"
            return None
        self.plan_chart.clear_output()
        if plan.empty:
            self.plan_note.value = "nothing queued: nothing to plan"
            return plan
        finish = plan.attrs["finish"]
        self.plan_note.value = htmlmod.escape(
            f"{len(plan):,} queued; the last planned at {_when(finish)}"
        )
        import matplotlib.pyplot as plt
        from IPython.display import display

        axes = plot_plan(plan)
        with self.plan_chart:
            display(axes.figure)
        plt.close(axes.figure)  # shown once, in the panel, not again under the cell
        return plan

    def _picked(self, change: Any) -> None:
        chosen = list(change["new"])
        if len(chosen) == 1 and int(chosen[0]) in self._recipients:
            self.explain_person(self._recipients[int(chosen[0])])

    def explain_person(self, who: int | str | None = None) -> pd.DataFrame | None:
        """Show (and return) ``explain`` for ``who`` (default: the box, else the selection)."""
        if who is None:
            who = self.why.value.strip()
        if who == "" and len(self.queue.value) == 1:
            who = self._recipients.get(int(self.queue.value[0]), "")
        cid = self.campaign_id
        if who == "" or cid is None:
            self.why_result.value = "<i>pick a message in the queue or type an address</i>"
            return None
        try:
            table = explain(cid, who, db=self.database)
        except BulkmailError as exc:
            self.why_result.value = f"<span style='color:#b00'>{htmlmod.escape(str(exc))}</span>"
            return None
        body = display_cells(table).to_html(index=False, escape=True, border=0)
        verdict = htmlmod.escape(table.attrs["verdict"])
        self.why_result.value = (
            f"<b>{verdict}</b><div style='overflow-x:auto;max-width:100%'>{body}</div>"
        )
        return table

    # -- the thread ------------------------------------------------------------

    def stop(self) -> None:
        """Stop refreshing (the panel stays as it was last shown)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def close(self) -> None:
        """Stop the refresh thread and close the panel."""
        self.stop()
        super().close()


def outbox_monitor(
    campaign: CampaignRef | None = None,
    *,
    refresh_s: float = 2.0,
    db: Database | None = None,
    url: str | None = None,
) -> OutboxMonitor:
    """Return a live outbox monitor of ``campaign`` (None: a list of the unfinished ones).

    It shows the counts per status, the actual against the set rate, the ETA and the last
    errors, re-read every ``refresh_s`` seconds in a background thread (0: only on
    Refresh), with Pause, Resume, Cancel and Remove selected buttons, and a date-time
    picker whose Schedule button has the worker send the campaign then (local time,
    ``BULKMAIL_TZ``). Close it (or call ``.stop()``) to end the thread.
    """
    return OutboxMonitor(campaign, refresh_s=refresh_s, db=db, url=url)

"""Commands of the sending stage and its reports: send, run-worker, campaign-report, history.

``send`` and ``run-worker`` are what ``systemctl stop``, ``docker stop`` and ``kill``
stop: SIGTERM and SIGINT drain them (the message on the wire finishes and is recorded,
the rest of the claim goes back, the worker row goes) instead of killing them with
messages in doubt (issue 13). ``run-worker`` logs each change of state and a progress
line per sending campaign to stderr, with timestamps, as it happens.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from bulkmail_kernel.cli.common import (
    CommandParser,
    Commands,
    add_campaign,
    add_csv,
    add_db,
    given,
    print_frame,
)

log = logging.getLogger("bulkmail")

#: Exit status of a second SIGTERM/SIGINT (the shell's 128 + SIGINT).
HARD_STOP = 130

WORKER_EXIT_CODES = """\
signals:
  SIGTERM or SIGINT (systemctl stop, docker stop, kill, Ctrl-C) stops it cleanly: the
  message on the wire finishes and is recorded, the rest goes back to the queue, and
  it exits within seconds with nothing left 'unknown'. A second signal ends it as
  soon as each sender has recorded its message in hand (exit 130).

exit codes:
  0    stopped cleanly (a signal, or --exit-when-idle found nothing left to send)
  1    stopped, but something went wrong while it ran: a campaign stopped with an
       error (a login refused, a DKIM key missing: see list-campaigns) or paused by the
       circuit breaker (the relay refused us N times in a row), or any other
       error logged (or a crash, with its traceback); or the database did not come
       up within BULKMAIL_DB_RETRY_S (started before it, the worker waits that long)
  2    usage or settings error, nothing was sent: a bad option, a bad
       BULKMAIL_DEAD_WORKER_S / BULKMAIL_MAX_LATENESS_S / BULKMAIL_BREAKER_AFTER /
       database URL
  130  ended by a second signal

settings (environment):
  BULKMAIL_DB_URL           the database (or --db)
  BULKMAIL_DEAD_WORKER_S    a worker silent this long is taken for dead (default 120)
  BULKMAIL_MAX_LATENESS_S   a scheduled campaign later than this waits as 'late'
                            until resumed (default 21600, 6 h)
  BULKMAIL_BREAKER_AFTER    policy or system refusals in a row (a blocklisting, DMARC)
                            that pause a campaign (default 10; create-campaign
                            --breaker-after for one campaign)
"""


#: Code a KeyboardInterrupt must not land in: raised inside a database call or its
#: bookkeeping, it can leave a connection holding SQLite's write lock, and everything
#: after it (recording, releasing, unregistering) waits for that lock.
_NOT_HERE = (
    "sqlalchemy.",
    "psycopg",
    "sqlite3",
    "logging",
    "tqdm",
    "bulkmail_kernel.outbox.",
    "bulkmail_kernel.db",
    "bulkmail_kernel.engine.heartbeat",
)


SEND_EXIT_CODES = """\
signals:
  SIGTERM or SIGINT (kill, docker stop, Ctrl-C) stops it cleanly: the message on the
  wire finishes and is recorded, the rest goes back to the queue, the summary is
  printed; `bulkmail send` again goes on. A second signal ends it as soon as each
  connection has recorded its message in hand (exit 130).

exit codes:
  0    done, or stopped cleanly by a signal (the summary says what is left)
  2    the campaign cannot be sent (paused, cancelled, stopped by the server's answer),
       or was paused by the circuit breaker (BULKMAIL_BREAKER_AFTER policy or system
       refusals in a row: the reason says what to check), a bad option or setting
  130  ended by a second signal
"""


def _in_critical_code(frame: FrameType | None) -> bool:
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(_NOT_HERE):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def stop_on_signals(what: str) -> Iterator[threading.Event]:
    """Yield an event that SIGTERM or SIGINT sets; a second signal raises KeyboardInterrupt.

    Installed only in the main thread (where Python runs signal handlers) and put back
    on exit. The handler does not set the event itself: ``Event.set`` takes a lock the
    interrupted main thread may hold, so a helper thread does it. The second signal's
    KeyboardInterrupt waits until the main thread is out of the database (a helper
    watches it), so what the hard stop records is recorded.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    received: list[str] = []
    hard = {"raised": False, "watching": False}
    closed = threading.Event()

    def drain(name: str) -> None:
        log.warning(
            "%s: %s received: stopping after the message in hand (again: stop harder)",
            what,
            name,
        )
        stop.set()

    def watch() -> None:
        # Interrupt the main thread again once it is out of the database.
        main = threading.main_thread().ident
        while not closed.wait(0.01):
            if not _in_critical_code(sys._current_frames().get(main or 0)):
                if not closed.is_set():
                    _thread.interrupt_main(signal.SIGINT)
                break
        hard["watching"] = False

    def handle(signum: int, frame: FrameType | None) -> None:
        if len(received) == 0:
            name = signal.Signals(signum).name
            received.append(name)
            threading.Thread(target=drain, args=(name,), name="bulkmail-stop").start()
            return
        received.append(signal.Signals(signum).name)
        if hard["raised"]:
            return  # the hard stop is already recording what it has
        if _in_critical_code(frame):
            if not hard["watching"]:
                hard["watching"] = True
                threading.Thread(target=watch, name="bulkmail-hard-stop", daemon=True).start()
            return
        # Stop harder: the wait is cut short (sender threads still record their message).
        hard["raised"] = True
        raise KeyboardInterrupt(f"second signal ({received[-1]})")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        closed.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_send(args: argparse.Namespace) -> int:
    """Send the campaign's due messages now, throttled, and print what happened."""
    from bulkmail_kernel import send

    with stop_on_signals("send") as stop:
        summary = send(
            args.campaign,
            rate_per_hour=args.rate_per_hour,
            burst=args.burst,
            progress=not args.quiet,
            connections=args.connections,
            wait_for_retries=args.wait_for_retries,
            stop=stop,
            url=args.db,
            **given(args, "batch_size", "dead_worker_s"),
        )
    print(summary)
    return HARD_STOP if summary.interrupted else 0


class _Errors(logging.Handler):
    """Counts the errors logged while the worker runs: exit code 1."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _report_progress(url: str | None, every_s: float, done: threading.Event) -> None:
    """Log a progress line per sending campaign every ``every_s`` until ``done``."""
    from bulkmail_kernel import campaign_progress, list_campaigns

    failing = False
    while not done.wait(every_s):
        try:
            frame = list_campaigns(url=url)
            for cid in frame.loc[frame["status"] == "sending", "campaign_id"]:
                log.info("%s", campaign_progress(int(cid), errors=0, url=url).progress_line())
            failing = False
        except Exception as exc:  # the database is away: the worker says so too; go on
            if not failing:
                log.warning("progress: cannot read the campaigns (%s)", type(exc).__name__)
            failing = True


def cmd_run_worker(args: argparse.Namespace) -> int:
    """Send scheduled and running campaigns until stopped (SIGTERM, Ctrl-C)."""
    from bulkmail_kernel import ab_test_step, run_worker

    logger = logging.getLogger("bulkmail")
    level = logger.level
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    errors = _Errors()
    logger.addHandler(errors)
    done = threading.Event()
    reporter = None
    if not args.quiet and args.progress_every_s > 0:
        reporter = threading.Thread(
            target=_report_progress,
            args=(args.db, args.progress_every_s, done),
            name="bulkmail-progress",
            daemon=True,
        )
        reporter.start()
    try:
        with stop_on_signals("run-worker") as stop:
            sent = run_worker(
                url=args.db,
                poll_interval_s=args.poll_interval_s,
                exit_when_idle=args.exit_when_idle,
                connections=args.connections,
                stop=stop,
                steps=[ab_test_step],  # A/B tests whose wait is over are decided by the worker
                **given(args, "dead_worker_s", "max_lateness_s"),
            )
    finally:
        done.set()
        if reporter is not None:
            reporter.join(30)
        logger.removeHandler(errors)
        logger.setLevel(level)
    print(f"worker stopped after {sent} messages")
    return 1 if errors.count else 0


def cmd_campaign_report(args: argparse.Namespace) -> int:
    """Print the campaign's message count per status, then its failures."""
    from bulkmail_kernel import campaign_failures, campaign_report

    report = campaign_report(args.campaign, url=args.db)
    print_frame(report, args)
    if "complaints" in report.attrs and not args.csv:
        print(report.attrs["complaints"].line())
    failures = campaign_failures(args.campaign, url=args.db)
    if len(failures) and not args.csv:
        print()
        print_frame(failures)
    return 0


def cmd_campaign_failures(args: argparse.Namespace) -> int:
    """List the failed, removed and unknown messages with their code and reason."""
    from bulkmail_kernel import campaign_failures

    print_frame(campaign_failures(args.campaign, url=args.db), args)
    return 0


def cmd_campaign_timeline(args: argparse.Namespace) -> int:
    """Print the campaign's attempts per interval and outcome."""
    from bulkmail_kernel import campaign_timeline

    print_frame(campaign_timeline(args.campaign, freq=args.freq, url=args.db), args)
    return 0


def cmd_provider_status(args: argparse.Namespace) -> int:
    """Show the provider-side ids and status stored on a campaign."""
    from bulkmail_kernel import provider_status

    print_frame(provider_status(args.campaign, url=args.db), args)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Print everything that happened to a contact, oldest first."""
    from bulkmail_kernel import history

    print_frame(history(args.contact_id, url=args.db), args)
    return 0


def cmd_send_plan(args: argparse.Namespace) -> int:
    """Print when the campaign's queued messages will go: the finish time and sends per hour."""
    from bulkmail_kernel import plan_per_hour, send_plan

    plan = send_plan(
        args.campaign,
        rate_per_hour=args.rate_per_hour,
        sms_price_per_segment=args.sms_price,
        url=args.db,
    )
    finish = plan.attrs["finish"]
    when = "nothing queued" if len(plan) == 0 else f"finish {finish:%Y-%m-%d %H:%M:%S %Z}"
    print(
        f"{plan.attrs['campaign']}: {len(plan):,} queued, {when}",
        file=sys.stderr if args.csv else sys.stdout,
    )
    print_frame(plan if args.messages else plan_per_hour(plan), args)
    return 0


def cmd_plan_overlap(args: argparse.Namespace) -> int:
    """List who is planned to get both campaigns within --days (default 7)."""
    from bulkmail_kernel import plan_overlap

    print_frame(plan_overlap(args.campaign, args.other, days=args.days, url=args.db), args)
    return 0


def add_commands(commands: Commands) -> None:
    """Add the sending and report commands."""
    p = commands.add(
        "send-plan", cmd_send_plan, "when a campaign's queued messages will go, per hour"
    )
    add_campaign(p)
    p.add_argument(
        "--rate-per-hour", type=float, help="plan at this rate (default: the campaign's)"
    )
    p.add_argument("--sms-price", type=float, help="price of one SMS segment, for the cost")
    p.add_argument("--messages", action="store_true", help="one row per message, not per hour")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "plan-overlap", cmd_plan_overlap, "who is planned to get both campaigns this week"
    )
    add_campaign(p)
    p.add_argument("other", help="the other campaign (name or id)")
    p.add_argument("--days", type=float, default=7.0, help="within this many days (default 7)")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "send",
        cmd_send,
        "send a campaign now, throttled, with a progress bar",
        epilog=SEND_EXIT_CODES,
    )
    add_campaign(p)
    p.add_argument("--rate-per-hour", type=float, help="messages per hour (default: campaign's)")
    p.add_argument("--burst", type=int, help="messages allowed at once (default: campaign's)")
    p.add_argument("--quiet", "--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--connections", type=int, default=1, help="SMTP connections in parallel (default 1)"
    )
    p.add_argument(
        "--wait-for-retries",
        action="store_true",
        help="wait for deferred messages' retries instead of returning",
    )
    p.add_argument(
        "--batch-size", type=int, help="messages claimed at a time, unthrottled (default 200)"
    )
    _add_dead_worker_s(p)
    add_db(p)

    p = commands.add(
        "run-worker",
        cmd_run_worker,
        "send scheduled campaigns until stopped (SIGTERM, Ctrl-C)",
        old=["worker"],
        epilog=WORKER_EXIT_CODES,
    )
    p.add_argument(
        "--poll-interval-s", type=float, default=5.0, help="seconds between looks for work"
    )
    p.add_argument("--exit-when-idle", action="store_true", help="stop when nothing is due")
    p.add_argument("--connections", type=int, default=1, help="sender threads, one connection each")
    p.add_argument(
        "--progress-every-s",
        type=float,
        default=60.0,
        metavar="S",
        help="log a progress line per sending campaign every S seconds (default 60; 0: never)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="log warnings and errors only (no progress lines)"
    )
    _add_dead_worker_s(p)
    p.add_argument(
        "--max-lateness-s",
        type=float,
        metavar="S",
        help="a scheduled campaign more than S seconds late waits as 'late' until resumed "
        "(default BULKMAIL_MAX_LATENESS_S or 21600)",
    )
    add_db(p)

    p = commands.add(
        "campaign-report",
        cmd_campaign_report,
        "a campaign's status counts and failures",
        old=["report"],
    )
    add_campaign(p)
    add_csv(p)
    add_db(p)

    p = commands.add(
        "campaign-failures", cmd_campaign_failures, "a campaign's failed, removed, unknown messages"
    )
    add_campaign(p)
    add_csv(p)
    add_db(p)

    p = commands.add("campaign-timeline", cmd_campaign_timeline, "a campaign's attempts over time")
    add_campaign(p)
    p.add_argument("--freq", default="1min", help="interval, a pandas frequency (default 1min)")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "provider-status", cmd_provider_status, "provider-side ids and status of a campaign"
    )
    add_campaign(p)
    add_csv(p)
    add_db(p)

    p = commands.add("history", cmd_history, "everything that happened to a contact")
    p.add_argument("contact_id", type=int, help="the contact's id")
    add_csv(p)
    add_db(p)


def _add_dead_worker_s(p: CommandParser) -> None:
    p.add_argument(
        "--dead-worker-s",
        type=float,
        metavar="S",
        help="a worker silent for S seconds is taken for dead (default "
        "BULKMAIL_DEAD_WORKER_S or 120)",
    )

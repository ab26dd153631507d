"""Commands of the sending stage and its reports: send, run-worker, campaign-report, history."""

from __future__ import annotations

import argparse

from bulkmail_kernel.cli.common import Commands, add_campaign, add_csv, add_db, given, print_frame


def cmd_send(args: argparse.Namespace) -> int:
    """Send the campaign's due messages now, throttled, and print what happened."""
    from bulkmail_kernel import send

    summary = send(
        args.campaign,
        rate_per_hour=args.rate_per_hour,
        burst=args.burst,
        progress=not args.quiet,
        connections=args.connections,
        wait_for_retries=args.wait_for_retries,
        url=args.db,
        **given(args, "batch_size"),
    )
    print(summary)
    return 0


def cmd_run_worker(args: argparse.Namespace) -> int:
    """Send scheduled and running campaigns until stopped (Ctrl-C)."""
    from bulkmail_kernel import run_worker

    sent = run_worker(
        url=args.db,
        poll_interval_s=args.poll_interval_s,
        exit_when_idle=args.exit_when_idle,
        connections=args.connections,
    )
    print(f"worker stopped after {sent} messages")
    return 0


def cmd_campaign_report(args: argparse.Namespace) -> int:
    """Print the campaign's message count per status, then its failures."""
    from bulkmail_kernel import campaign_failures, campaign_report

    print_frame(campaign_report(args.campaign, url=args.db), args)
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


def add_commands(commands: Commands) -> None:
    """Add the sending and report commands."""
    p = commands.add("send", cmd_send, "send a campaign now, throttled, with a progress bar")
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
    add_db(p)

    p = commands.add(
        "run-worker",
        cmd_run_worker,
        "send scheduled campaigns until stopped (Ctrl-C)",
        old=["worker"],
    )
    p.add_argument(
        "--poll-interval-s", type=float, default=5.0, help="seconds between looks for work"
    )
    p.add_argument("--exit-when-idle", action="store_true", help="stop when nothing is due")
    p.add_argument("--connections", type=int, default=1, help="sender threads, one connection each")
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

"""Commands of the campaigns stage: sender accounts, campaigns, the queue, unsubscribes.

Message ids for ``remove-from-queue`` and ``requeue`` are the ``message_id`` column
that ``queue`` and ``unknown-messages`` print (``--csv`` for scripts), or every
message in a status with ``--status``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bulkmail_kernel.cli.common import (
    Commands,
    add_campaign,
    add_csv,
    add_db,
    add_values,
    given,
    json_object,
    print_frame,
    values_of,
)
from bulkmail_kernel.exceptions import ConfigError


def cmd_add_sender_account(args: argparse.Namespace) -> int:
    """Create or update a sender account; the password stays in the keyring or an env variable.

    --settings for smtp: host, port, security (ssl, starttls, none), user, unsubscribe_url
    (with {token}), unsubscribe_mailto, envelope_from, verp, dkim, imap; for file: folder.
    --credential-ref names the environment variable (or keyring:NAME) holding the password.
    An smtp account is saved only after it logs in; --no-check saves it unchecked.
    """
    from bulkmail_kernel import add_sender_account

    info = add_sender_account(
        args.name,
        kind=args.kind,
        from_email=args.from_email,
        from_name=args.from_name,
        settings=args.settings,
        credential_ref=args.credential_ref,
        url=args.db,
        check=not args.no_check,
    )
    print(info)
    return 0


def cmd_create_campaign(args: argparse.Namespace) -> int:
    """Create a campaign: a sender account, a template, a segment, values, a rate and a time."""
    from bulkmail_kernel import create_campaign

    info = create_campaign(
        args.name,
        sender=args.sender,
        template=args.template,
        segment=args.segment,
        values=values_of(args),
        scheduled_at=args.scheduled_at,
        channel=args.channel,
        send_window=args.send_window,
        exist_ok=args.exist_ok,
        url=args.db,
        **given(args, "rate_per_hour", "burst", "breaker_after"),
    )
    print(info)
    return 0


def cmd_get_campaign(args: argparse.Namespace) -> int:
    """Print a campaign as stored."""
    from bulkmail_kernel import get_campaign

    print(get_campaign(args.campaign, url=args.db))
    return 0


def cmd_list_campaigns(args: argparse.Namespace) -> int:
    """List every campaign with its status, schedule and message count per status."""
    from bulkmail_kernel import list_campaigns

    print_frame(list_campaigns(url=args.db), args)
    return 0


def _recipients(args: argparse.Namespace) -> Any:
    """Return the recipients of ``--segment`` among the database's contacts, or None."""
    if not args.segment:
        return None
    from bulkmail_kernel import contacts_frame, segment_recipients

    return segment_recipients(args.segment, contacts_frame(url=args.db), url=args.db)


def cmd_register(args: argparse.Namespace) -> int:
    """Render one message per recipient of the campaign into the outbox, list who was skipped."""
    import warnings

    from bulkmail_kernel import RecipientsSkippedWarning, register, skipped

    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", RecipientsSkippedWarning)
        queue_frame = register(
            args.campaign,
            _recipients(args),
            template=args.template,
            fit_to_gsm7=args.fit_to_gsm7,
            max_segments=args.max_segments,
            url=args.db,
        )
    print(f"{len(queue_frame)} messages in the queue of {args.campaign!r}")
    for note in notes:
        # The notebook's one line, printed as it is rather than as a Python warning.
        print(str(note.message))
    gone = skipped(args.campaign, url=args.db)
    if len(gone):
        print(f"{len(gone)} recipients skipped:")
        print_frame(gone)
    return 0


def cmd_campaign_preview(args: argparse.Namespace) -> int:
    """Show one recipient's message as the campaign sends it; write its bytes with --out."""
    from pathlib import Path

    from bulkmail_kernel import campaign_preview

    shown = campaign_preview(
        args.campaign, _recipients(args), args.index, template=args.template, url=args.db
    )
    rendered = shown.rendered
    print(f"From: {rendered.sender}")
    print(f"To: {rendered.to}")
    print(f"Subject: {shown.subject}")
    print(f"Size: {len(shown.data) / 1024:.1f} KB")
    for image in rendered.inline_images:
        print(f"Image: {image.filename} ({image.content_type}, cid:{image.cid})")
    for attachment in rendered.attachments:
        print(f"Attachment: {attachment.filename} ({attachment.content_type})")
    print("the stored message (registered)" if shown.registered else "rendered now, not stored")
    if args.out:
        Path(args.out).write_bytes(shown.data)
        print(f"written to {args.out}")
    return 0


def cmd_check_campaign(args: argparse.Namespace) -> int:
    """Render every recipient as the campaign sends it and list the failures (exit 1 if any)."""
    from bulkmail_kernel import check_campaign

    failures = check_campaign(args.campaign, _recipients(args), url=args.db)
    print_frame(failures, args)
    out = sys.stderr if args.csv else sys.stdout
    print(f"{len(failures)} problems", file=out)
    return 1 if len(failures) else 0


def cmd_skipped(args: argparse.Namespace) -> int:
    """List who was skipped, when and why (at registration or at send time)."""
    from bulkmail_kernel import skipped

    print_frame(skipped(args.campaign, url=args.db), args)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Say why one person gets the campaign or not: message, skips, filter rules, consent."""
    from bulkmail_kernel import explain

    table = explain(args.campaign, args.contact, url=args.db)
    print(table.attrs["verdict"], file=sys.stderr if args.csv else sys.stdout)
    print_frame(table, args)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    """List the campaign's messages (the message_id column names them for other commands)."""
    from bulkmail_kernel import queue

    print_frame(queue(args.campaign, status=args.status or None, url=args.db), args)
    return 0


def _chosen(args: argparse.Namespace) -> Any:
    """Return the message ids given, or the frame of the messages in ``--status``."""
    if bool(args.messages) == bool(args.status):
        raise ConfigError("give message ids or --status, not both and not neither")
    if args.messages:
        return args.messages
    from bulkmail_kernel import queue

    return queue(args.campaign, status=args.status, url=args.db)


def cmd_remove_from_queue(args: argparse.Namespace) -> int:
    """Take messages out of the queue (queued, deferred or unknown ones; sent ones stay)."""
    from bulkmail_kernel import remove_from_queue

    n = remove_from_queue(args.campaign, _chosen(args), reason=args.reason, url=args.db)
    print(f"{n} messages removed from the queue of {args.campaign!r}")
    return 0


def cmd_unknown_messages(args: argparse.Namespace) -> int:
    """List the messages whose fate is unknown (a worker died or a connection broke mid-send)."""
    from bulkmail_kernel import unknown_messages

    print_frame(unknown_messages(args.campaign, url=args.db), args)
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    """Queue unknown messages again (once checked they did not arrive), or failed ones.

    After a circuit breaker's pause, `requeue CAMPAIGN --status failed` once the cause is
    fixed sends the refused ones again; suppressed addresses are removed, never sent.
    """
    from bulkmail_kernel import requeue

    n = requeue(args.campaign, _chosen(args), url=args.db)
    print(f"{n} messages queued again in {args.campaign!r}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a campaign: senders stop after the message in hand."""
    from bulkmail_kernel import pause

    print(pause(args.campaign, url=args.db))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused, stopped or late campaign (a late one is sent now)."""
    from bulkmail_kernel import resume

    print(resume(args.campaign, url=args.db))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a campaign: every message not yet sent is removed from the queue."""
    from bulkmail_kernel import cancel

    print(cancel(args.campaign, url=args.db))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Set when the worker sends a campaign: local time (BULKMAIL_TZ) unless it has an offset."""
    from bulkmail_kernel import schedule

    print(schedule(args.campaign, args.at, url=args.db))
    return 0


def cmd_set_send_window(args: argparse.Namespace) -> int:
    """Set when a campaign's messages may go on each recipient's wall clock ('none': any time)."""
    from bulkmail_kernel import set_send_window

    window = None if args.window.strip().lower() in ("none", "") else args.window
    print(set_send_window(args.campaign, window, url=args.db))
    return 0


def cmd_campaign_progress(args: argparse.Namespace) -> int:
    """Print how a campaign is going: counts, actual against set rate, ETA, the last errors.

    Times are in the analyst's zone (BULKMAIL_TZ). Run it under `watch` for a live view.
    """
    from bulkmail_kernel import campaign_progress

    p = campaign_progress(args.campaign, errors=args.errors, window_s=args.window_s, url=args.db)
    print(p.summary())
    print(
        f"scheduled {p.scheduled_at or '-'}; first sent {p.started_at or '-'}; "
        f"last sent {p.last_sent_at or '-'}; finished {p.finished_at or '-'}"
    )
    if p.send_window:
        print(p.window_line())
    if p.last_error:
        print(p.last_error)  # why it stopped, paused or is late: a sentence of its own
    if len(p.errors):
        print("last errors:")
        print_frame(p.errors, args)
    return 0


def cmd_test_send(args: argparse.Namespace) -> int:
    """Send one sample per --to address, subject marked [TEST] (exit 1 if one was not sent).

    Without --to the samples go to the sender account's settings test_addresses.
    The queue, the history and the unsubscribe tokens are not touched.
    """
    from bulkmail_kernel import test_send

    outcomes = test_send(
        args.campaign, args.to, recipients=_recipients(args), template=args.template, url=args.db
    )
    print_frame(outcomes, args)
    return 0 if (outcomes["status"] == "sent").all() else 1


def cmd_unsubscribe(args: argparse.Namespace) -> int:
    """Honour an unsubscribe token (exit 1 if it is unknown)."""
    from bulkmail_kernel import unsubscribe

    if unsubscribe(args.token, url=args.db):
        print("unsubscribed")
        return 0
    print("unknown token", file=sys.stderr)
    return 1


def cmd_unsubscribe_address(args: argparse.Namespace) -> int:
    """Unsubscribe an address by hand (a phone call, a reply): clear opt-in and suppress it."""
    from bulkmail_kernel import unsubscribe_address

    found = unsubscribe_address(args.address, channel=args.channel, detail=args.detail, url=args.db)
    print(f"{args.address} unsubscribed" + ("" if found else " (not a contact: suppressed only)"))
    return 0


def cmd_list_suppressions(args: argparse.Namespace) -> int:
    """List the suppressed addresses (unsubscribes, hard bounces, ...), newest first."""
    from bulkmail_kernel import list_suppressions

    print_frame(list_suppressions(reason=args.reason, url=args.db), args)
    return 0


def _add_selection(p: Any, statuses: list[str]) -> None:
    p.add_argument(
        "messages", nargs="*", type=int, metavar="MESSAGE_ID", help="messages (their message_id)"
    )
    p.add_argument(
        "--status",
        action="append",
        choices=statuses,
        help="instead of ids: every message in this status (repeat for more)",
    )


def add_commands(commands: Commands) -> None:
    """Add the campaign commands."""
    p = commands.add(
        "add-sender-account", cmd_add_sender_account, "create or update an smtp or file sender"
    )
    p.add_argument("name", help="account name")
    p.add_argument(
        "--kind", required=True, choices=["smtp", "file", "sendpulse", "eurosms"], help="kind"
    )
    p.add_argument("--from-email", required=True, help="the From address")
    p.add_argument("--from-name", default="", help="the From display name")
    p.add_argument(
        "--settings", type=json_object, metavar="JSON", help='e.g. \'{"host": "smtp.x.sk"}\''
    )
    p.add_argument(
        "--credential-ref",
        default="",
        help="env variable (or keyring:NAME) holding the password; never the password",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="save an smtp account without logging in first (set up offline; "
        "check later with `bulkmail check-account NAME`)",
    )
    add_db(p)

    p = commands.add("create-campaign", cmd_create_campaign, "create a campaign")
    p.add_argument("name", help="campaign name")
    p.add_argument("--sender", required=True, help="sender account name")
    p.add_argument("--template", help="template name (folder under templates/) or path")
    p.add_argument("--segment", help="saved segment whose members get the campaign")
    add_values(p)
    p.add_argument(
        "--rate-per-hour", type=int, help="messages per hour, the throttle (default 1000)"
    )
    p.add_argument("--burst", type=int, help="messages allowed at once (default 10)")
    p.add_argument(
        "--breaker-after",
        type=int,
        metavar="N",
        help="pause the campaign after N policy or system refusals in a row, e.g. a "
        "blocklisting (default BULKMAIL_BREAKER_AFTER or 10)",
    )
    p.add_argument(
        "--scheduled-at",
        metavar="TIME",
        help="send time, local (BULKMAIL_TZ) unless it has an offset, e.g. '2026-12-01 09:00' "
        "(bulkmail run-worker sends)",
    )
    p.add_argument("--channel", choices=["email", "sms"], help="default: the template's")
    p.add_argument(
        "--send-window",
        metavar="WINDOW",
        help="when messages may go on each recipient's wall clock, e.g. 'Mon-Fri 09:00-18:00' "
        "or 'at 10:00 local' (default: any time)",
    )
    p.add_argument("--exist-ok", action="store_true", help="return an existing one unchanged")
    add_db(p)

    p = commands.add("get-campaign", cmd_get_campaign, "show a campaign as stored")
    add_campaign(p)
    add_db(p)

    p = commands.add("list-campaigns", cmd_list_campaigns, "list the campaigns and their counts")
    add_csv(p)
    add_db(p)

    p = commands.add("register", cmd_register, "materialise a campaign's messages into the outbox")
    add_campaign(p)
    p.add_argument("--segment", help="register this segment's members (default: the campaign's)")
    p.add_argument("--template", help="template to use instead of the campaign's")
    p.add_argument(
        "--fit-to-gsm7",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite SMS texts into GSM-7 (default: the campaign value)",
    )
    p.add_argument("--max-segments", type=int, help="most SMS segments one text may cost")
    add_db(p)

    p = commands.add(
        "campaign-preview",
        cmd_campaign_preview,
        "one recipient's message as the campaign sends it (the stored one once registered)",
    )
    add_campaign(p)
    p.add_argument("--segment", help="preview this segment's members (default: the registered)")
    p.add_argument("--index", type=int, default=0, help="which recipient, from 0 (default 0)")
    p.add_argument("--template", help="template to try instead of the campaign's")
    p.add_argument("--out", help="write the message's bytes (an .eml file) here")
    add_db(p)

    p = commands.add(
        "check-campaign",
        cmd_check_campaign,
        "render every recipient as the campaign sends it; list who fails and why",
    )
    add_campaign(p)
    p.add_argument("--segment", help="check this segment's members (default: the registered)")
    add_csv(p)
    add_db(p)

    p = commands.add("skipped", cmd_skipped, "who was skipped, when and why")
    add_campaign(p)
    add_csv(p)
    add_db(p)

    p = commands.add("explain", cmd_explain, "why one person gets a campaign, or why not")
    add_campaign(p)
    p.add_argument(
        "contact",
        help="the person: contact id (a number), customer number, e-mail address or phone",
    )
    add_csv(p)
    add_db(p)

    p = commands.add("queue", cmd_queue, "list a campaign's queue")
    add_campaign(p)
    p.add_argument(
        "--status",
        action="append",
        help="only messages in this status (queued, sent, failed, ...; repeat for more)",
    )
    add_csv(p)
    add_db(p)

    p = commands.add("remove-from-queue", cmd_remove_from_queue, "take messages out of the queue")
    add_campaign(p)
    _add_selection(p, ["queued", "deferred", "unknown"])
    p.add_argument("--reason", default="removed by the analyst", help="recorded in the history")
    add_db(p)

    p = commands.add(
        "unknown-messages", cmd_unknown_messages, "list the messages whose fate is unknown"
    )
    add_campaign(p)
    add_csv(p)
    add_db(p)

    p = commands.add("requeue", cmd_requeue, "queue unknown or failed messages again")
    add_campaign(p)
    _add_selection(p, ["unknown", "failed"])
    add_db(p)

    for verb, func in (("pause", cmd_pause), ("resume", cmd_resume), ("cancel", cmd_cancel)):
        p = commands.add(verb, func, f"{verb} a campaign")
        add_campaign(p)
        add_db(p)

    p = commands.add("schedule", cmd_schedule, "set when the worker sends a campaign")
    add_campaign(p)
    p.add_argument(
        "at",
        help="e.g. '2026-12-03 09:00' (local time, BULKMAIL_TZ) or 2026-12-03T09:00+01:00",
    )
    add_db(p)

    p = commands.add(
        "set-send-window", cmd_set_send_window, "set when messages may go, recipient's local time"
    )
    add_campaign(p)
    p.add_argument(
        "window",
        help="e.g. 'Mon-Fri 09:00-18:00', 'Mon-Fri 9:00-18:00; Sat 10:00-14:00', 'at 10:00 "
        "local'; 'none' removes it",
    )
    add_db(p)

    p = commands.add(
        "campaign-progress", cmd_campaign_progress, "counts, rate against the set rate, ETA"
    )
    add_campaign(p)
    p.add_argument("--errors", type=int, default=10, help="how many of the last errors to list")
    p.add_argument(
        "--window-s",
        type=float,
        default=600.0,
        help="the actual rate counts what was sent in this many last seconds (default 600)",
    )
    add_csv(p)
    add_db(p)

    p = commands.add("test-send", cmd_test_send, "send [TEST] samples of a campaign")
    add_campaign(p)
    p.add_argument(
        "--to",
        action="append",
        help="test address or phone (repeat for more; default: the sender account's "
        "settings test_addresses)",
    )
    p.add_argument("--segment", help="render for this segment's members (default: the campaign's)")
    p.add_argument("--template", help="template to try instead of the campaign's")
    add_csv(p)
    add_db(p)

    p = commands.add("unsubscribe", cmd_unsubscribe, "honour an unsubscribe token")
    p.add_argument("token", help="the token from the unsubscribe link")
    add_db(p)

    p = commands.add(
        "unsubscribe-address", cmd_unsubscribe_address, "unsubscribe an address by hand"
    )
    p.add_argument("address", help="e-mail address or phone number")
    p.add_argument("--channel", default="email", help="email (default) or phone")
    p.add_argument("--detail", default="unsubscribed by the analyst", help="recorded reason")
    add_db(p)

    p = commands.add("list-suppressions", cmd_list_suppressions, "list the suppressed addresses")
    p.add_argument("--reason", help="only this reason (unsubscribe, hard_bounce, ...)")
    add_csv(p)
    add_db(p)

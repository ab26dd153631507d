"""The ``bulkmail`` command: a thin 1:1 layer over the Python API for work outside a notebook.

Every sub-command calls one public function with the same words and options
(``bulkmail import FILE`` calls ``import_contacts(FILE)``) and prints a DataFrame
or a one-line summary. Errors of bulkmail are printed as one clear line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

from bulkmail_kernel import config
from bulkmail_kernel.exceptions import BulkmailError

log = logging.getLogger("bulkmail")

Handler = Callable[[argparse.Namespace], int]


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="SQLAlchemy URL of the database (default: BULKMAIL_DB_URL or data/bulkmail.db)",
    )


def _print_frame(frame: object) -> None:
    import pandas as pd

    if isinstance(frame, pd.DataFrame):
        with pd.option_context("display.max_rows", 50, "display.width", 160):
            print(frame.to_string(index=False) if len(frame) else "(nothing)")
    else:
        print(frame)


# --------------------------------------------------------------------------- commands


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the database migrations."""
    from bulkmail_kernel.db import current_revision, open_database

    db = open_database(args.db)
    print(f"{db.url}: at revision {current_revision(db.engine)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo database and the dirty sample files."""
    from bulkmail_kernel.demo.generate import generate_demo

    today = date.fromisoformat(args.today) if args.today else None
    summary = generate_demo(
        args.contacts, url=args.db, seed=args.seed, today=today, replace=args.replace
    )
    _print_frame(summary)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import contacts from a file or a SQL source and print the report."""
    from bulkmail_kernel.contacts.importer import import_contacts

    result = import_contacts(
        args.source,
        url=args.db,
        encoding=args.encoding,
        delimiter=args.delimiter,
        region=args.region,
        on_error=args.on_error,
        table=args.table,
        query=args.query,
        sheet=args.sheet,
    )
    print(repr(result))
    if len(result.report):
        _print_frame(result.report)
        if args.report:
            result.report.to_csv(args.report, index=False, encoding="utf-8-sig")
            print(f"report written to {args.report}")
    return 0 if result.committed else 1


def cmd_templates(args: argparse.Namespace) -> int:
    """List the predefined templates."""
    from bulkmail_kernel.compose.templates import list_templates

    _print_frame(list_templates(args.directory))
    return 0


def cmd_check_template(args: argparse.Namespace) -> int:
    """Render a template for every recipient of a segment and list the failures."""
    from bulkmail_kernel.compose.checks import check_template
    from bulkmail_kernel.compose.templates import load_template
    from bulkmail_kernel.contacts.frame import contacts_frame
    from bulkmail_kernel.segments.saved import segment_recipients

    frame = contacts_frame(url=args.db)
    if args.segment:
        frame = segment_recipients(args.segment, frame, url=args.db)
    failures = check_template(load_template(args.template), frame, provider=args.provider)
    _print_frame(failures)
    print(f"{len(failures)} failing of {len(frame)} recipients")
    return 1 if len(failures) else 0


def cmd_segments(args: argparse.Namespace) -> int:
    """List, show, rename or delete saved segments."""
    from bulkmail_kernel.segments import saved as segments

    if args.action == "list":
        _print_frame(segments.list_segments(url=args.db))
    elif args.action == "show":
        loaded = segments.load_segment(args.name, url=args.db)
        print(loaded.info)
        print(loaded.spec.to_json())
    elif args.action == "rename":
        print(segments.rename_segment(args.name, args.new_name, url=args.db))
    elif args.action == "delete":
        segments.delete_segment(args.name, url=args.db)
        print(f"segment {args.name!r} deleted")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a saved segment's recipients to .xlsx or .csv."""
    from bulkmail_kernel.contacts.frame import contacts_frame
    from bulkmail_kernel.segments.export import export_recipients
    from bulkmail_kernel.segments.saved import segment_recipients

    frame = contacts_frame(url=args.db)
    chosen = segment_recipients(
        args.segment, frame, mode="reevaluate" if args.reevaluate else "snapshot", url=args.db
    )
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    path = export_recipients(
        chosen, args.path, columns, include_contact_data=args.include_contact_data
    )
    print(f"{len(chosen)} recipients written to {path}")
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    """Run the local SMTP sink that stores every message as an .eml file."""
    from bulkmail_kernel.servers.sink import serve_sink

    folder = args.folder or config.data_dir() / "sink"
    serve_sink(folder, args.port, host=args.host)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """Materialise one message per recipient of the campaign into the outbox."""
    from bulkmail_kernel.campaigns.registration import register, skipped

    queue_frame = register(args.campaign, url=args.db)
    print(f"{len(queue_frame)} messages in the queue of {args.campaign!r}")
    gone = skipped(args.campaign, url=args.db)
    if len(gone):
        print(f"{len(gone)} recipients skipped:")
        _print_frame(gone)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    """List the campaign's queue."""
    from bulkmail_kernel.outbox.queue import queue

    _print_frame(queue(args.campaign, status=args.status, url=args.db))
    return 0


def cmd_campaign_state(args: argparse.Namespace) -> int:
    """Pause, resume or cancel a campaign."""
    from bulkmail_kernel.campaigns import campaigns

    info = getattr(campaigns, args.command)(args.campaign, url=args.db)
    print(info)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """Send the campaign's due messages now, throttled."""
    from bulkmail_kernel.engine.loop import send

    summary = send(
        args.campaign,
        rate_per_hour=args.rate_per_hour,
        connections=args.connections,
        progress=not args.quiet,
        url=args.db,
    )
    print(summary)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Send scheduled and running campaigns until stopped."""
    from bulkmail_kernel.engine.worker import run_worker

    sent = run_worker(
        url=args.db,
        poll_interval_s=args.poll_interval_s,
        exit_when_idle=args.exit_when_idle,
        connections=args.connections,
    )
    print(f"worker stopped after {sent} messages")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the campaign's status counts and failures."""
    from bulkmail_kernel.campaigns.reports import campaign_failures, campaign_report

    _print_frame(campaign_report(args.campaign, url=args.db))
    failures = campaign_failures(args.campaign, url=args.db)
    if len(failures):
        print()
        _print_frame(failures)
    return 0


def cmd_unsubscribe(args: argparse.Namespace) -> int:
    """Honour an unsubscribe token."""
    from bulkmail_kernel.outbox.suppressions import unsubscribe

    if unsubscribe(args.token, url=args.db):
        print("unsubscribed")
        return 0
    print("unknown token", file=sys.stderr)
    return 1


def cmd_unsubscribe_server(args: argparse.Namespace) -> int:
    """Run the one-click unsubscribe endpoint (put it behind the firm's https site)."""
    from bulkmail_kernel.servers.web import serve

    serve(args.host, args.port, url=args.db)
    return 0


def cmd_bounces(args: argparse.Namespace) -> int:
    """Process the account's bounce mailbox over IMAP and print what was done."""
    from bulkmail_kernel.deliverability.mailbox import process_mailbox

    _print_frame(process_mailbox(args.account, url=args.db))
    return 0


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    """Generate a DKIM private key file and print the DNS TXT record to publish."""
    from bulkmail_kernel.deliverability.dkim import generate_dkim_key

    record = generate_dkim_key(args.path, bits=args.bits, overwrite=args.overwrite)
    print(f"private key written to {args.path} (keep it secret; mode 600)")
    print("publish this TXT record at <selector>._domainkey.<your domain>:")
    print(record)
    return 0


def cmd_eurosms_account(args: argparse.Namespace) -> int:
    """Create or update a EuroSMS sender account (the key stays in env/keyring)."""
    from bulkmail_kernel.providers.eurosms import DEFAULT_BASE_URL, add_eurosms_account

    info = add_eurosms_account(
        args.name,
        integration_id=args.integration_id,
        sender_id=args.sender_id,
        credential_ref=args.credential_ref,
        base_url=args.base_url or DEFAULT_BASE_URL,
        url=args.db,
    )
    print(info)
    return 0


def cmd_sms_dlr(args: argparse.Namespace) -> int:
    """Poll EuroSMS delivery reports of an SMS campaign into the history."""
    from bulkmail_kernel.providers.eurosms import poll_delivery_reports

    _print_frame(poll_delivery_reports(args.campaign, url=args.db))
    return 0


def cmd_sendpulse_account(args: argparse.Namespace) -> int:
    """Create or update a SendPulse account after SendPulse accepts its ID and Secret."""
    from bulkmail_kernel.providers.sendpulse import DEFAULT_BASE_URL, add_sendpulse_account

    info = add_sendpulse_account(
        args.name,
        client_id=args.client_id,
        from_email=args.from_email,
        from_name=args.from_name,
        secret_env=args.secret_env,
        base_url=args.base_url or DEFAULT_BASE_URL,
        url=args.db,
    )
    print(info)
    return 0


def cmd_sendpulse_send(args: argparse.Namespace) -> int:
    """Hand a registered campaign to SendPulse as an address book and a campaign or draft."""
    from bulkmail_kernel.providers.sendpulse import send_campaign_via_sendpulse

    print(send_campaign_via_sendpulse(args.campaign, draft=args.draft, url=args.db))
    return 0


def cmd_provider_status(args: argparse.Namespace) -> int:
    """Show the provider-side ids and status stored on a campaign."""
    from bulkmail_kernel.campaigns.reports import provider_status

    _print_frame(provider_status(args.campaign, url=args.db))
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    """Create the demo database if missing and open JupyterLab on notebooks/."""
    import sqlalchemy as sa

    from bulkmail_kernel.db import Contact, open_database

    if args.db:
        os.environ["BULKMAIL_DB_URL"] = args.db
    db = open_database(args.db)
    with db.session() as s:
        empty = s.scalar(sa.select(Contact.id).limit(1)) is None
    if empty:
        from bulkmail_kernel.demo.generate import generate_demo

        print(f"{db.url} is empty: generating the demo data set (5,000 contacts) ...")
        generate_demo(5000, db=db)
    db.dispose()
    sink = None
    if not args.no_sink:
        from bulkmail_kernel.servers.sink import start_sink

        try:
            sink = start_sink(config.data_dir() / "sink", args.sink_port)
            print(f"local SMTP sink on 127.0.0.1:{sink.port}: messages land in {sink.folder}")
        except OSError as exc:
            print(f"sink not started ({exc}); is `bulkmail sink` already running?")
    unsub = None
    if not args.no_unsubscribe_server:
        from bulkmail_kernel.servers.web import start_in_background

        try:
            unsub = start_in_background("127.0.0.1", args.unsubscribe_port, url=args.db)
            print(f"unsubscribe links answer on http://127.0.0.1:{unsub.port}/u/...")
        except OSError as exc:
            print(f"unsubscribe endpoint not started ({exc}); is it already running?")
    notebooks = config.project_dir() / "notebooks"
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        f"--notebook-dir={notebooks}",
        f"--ServerApp.port={args.port}",
        "--ServerApp.ip=127.0.0.1",
    ]
    if args.no_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and fresh VMs often run as root
    print("starting JupyterLab:", " ".join(cmd[2:]))
    lab = None

    def stop_on_sigterm(signum: int, frame: object) -> None:
        # systemctl stop and docker stop send SIGTERM (docker to this process alone, its PID 1):
        # leave the wait as Ctrl-C does, so the finally below stops everything (issue 12).
        raise SystemExit(0)  # JupyterLab too exits 0 when SIGTERM stops it

    previous_term = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        lab = subprocess.Popen(cmd)  # noqa: S603 - our own interpreter, fixed arguments
        return lab.wait()
    finally:
        # A second signal must not cut this short and leave JupyterLab unreaped.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        if lab is not None and lab.poll() is None:
            lab.terminate()  # JupyterLab shuts its kernels down on SIGTERM
            try:
                lab.wait(10)
            except subprocess.TimeoutExpired:
                lab.kill()
                lab.wait()
        if sink is not None:
            sink.stop()
        if unsub is not None:
            unsub.stop()
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (one sub-command per public function)."""
    parser = argparse.ArgumentParser(
        prog="bulkmail",
        description="bulkmail: contacts, segments, templates and throttled sending.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply database migrations (also done on every open)")
    _add_db(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("demo", help="generate the deterministic demo data set and sample files")
    p.add_argument("--contacts", type=int, default=5000, help="how many contacts (default 5000)")
    p.add_argument("--seed", type=int, default=20261123, help="random seed (same seed, same data)")
    p.add_argument("--today", default=None, help="anchor date YYYY-MM-DD (default: today)")
    p.add_argument("--replace", action="store_true", help="replace existing demo data")
    _add_db(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("import", help="import contacts from CSV, .xlsx, XML or a SQL URL")
    p.add_argument("source", help="file path, or a SQLAlchemy URL with --table or --query")
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="raise: import nothing if any row is bad (default); skip: import the good rows",
    )
    p.add_argument("--encoding", help="force the CSV encoding (default: detected)")
    p.add_argument("--delimiter", help="force the CSV delimiter (default: detected)")
    p.add_argument("--region", help="phone region for numbers without +code (default SK)")
    p.add_argument("--table", help="table to read when SOURCE is a database URL")
    p.add_argument("--query", help="SQL query to read when SOURCE is a database URL")
    p.add_argument("--sheet", help="worksheet name of an .xlsx file (default: the first)")
    p.add_argument("--report", type=Path, help="also write the import report to this CSV file")
    _add_db(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("templates", help="list the predefined templates")
    p.add_argument("--directory", help="templates folder (default: templates/)")
    p.set_defaults(func=cmd_templates)

    p = sub.add_parser(
        "check-template", help="render a template for every recipient and list failures"
    )
    p.add_argument("template", help="template name (folder under templates/) or path")
    p.add_argument("--segment", help="saved segment to check (default: every contact point)")
    p.add_argument(
        "--provider", choices=["sendpulse"], help="also apply a provider's merge-tag rules"
    )
    _add_db(p)
    p.set_defaults(func=cmd_check_template)

    p = sub.add_parser("segments", help="list, show, rename or delete saved segments")
    p.add_argument("action", choices=["list", "show", "rename", "delete"], help="what to do")
    p.add_argument("name", nargs="?", help="segment name (show, rename, delete)")
    p.add_argument("new_name", nargs="?", help="new name (rename)")
    _add_db(p)
    p.set_defaults(func=cmd_segments)

    p = sub.add_parser("export", help="export a saved segment to .xlsx or .csv")
    p.add_argument("segment", help="saved segment name")
    p.add_argument("path", type=Path, help="target file: .xlsx or .csv")
    p.add_argument("--columns", help="comma-separated columns in order (default: all safe ones)")
    p.add_argument(
        "--include-contact-data",
        action="store_true",
        help="allow addresses and phone numbers in the export",
    )
    p.add_argument(
        "--reevaluate", action="store_true", help="apply the saved filter to today's data"
    )
    _add_db(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sink", help="run a local SMTP server that stores messages as .eml files")
    p.add_argument("folder", nargs="?", type=Path, help="where to store (default: data/sink)")
    p.add_argument("--port", type=int, default=2525, help="port to listen on (default 2525)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.set_defaults(func=cmd_sink)

    p = sub.add_parser("register", help="materialise a campaign's messages into the outbox")
    p.add_argument("campaign", help="campaign name or id")
    _add_db(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("queue", help="list a campaign's queue")
    p.add_argument("campaign", help="campaign name or id")
    p.add_argument("--status", help="only messages in this status (queued, sent, failed, ...)")
    _add_db(p)
    p.set_defaults(func=cmd_queue)

    for verb, text in (("pause", "pause"), ("resume", "resume"), ("cancel", "cancel")):
        p = sub.add_parser(verb, help=f"{text} a campaign")
        p.add_argument("campaign", help="campaign name or id")
        _add_db(p)
        p.set_defaults(func=cmd_campaign_state)

    p = sub.add_parser("send", help="send a campaign now, throttled, with a progress bar")
    p.add_argument("campaign", help="campaign name or id")
    p.add_argument("--rate-per-hour", type=float, help="messages per hour (default: campaign's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--connections", type=int, default=1, help="SMTP connections in parallel (default 1)"
    )
    _add_db(p)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("worker", help="send scheduled campaigns until stopped (Ctrl-C)")
    p.add_argument(
        "--poll-interval-s", type=float, default=5.0, help="seconds between looks for work"
    )
    p.add_argument("--exit-when-idle", action="store_true", help="stop when nothing is due")
    p.add_argument("--connections", type=int, default=1, help="sender threads, one connection each")
    _add_db(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("report", help="a campaign's status counts and failures")
    p.add_argument("campaign", help="campaign name or id")
    _add_db(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("unsubscribe", help="honour an unsubscribe token")
    p.add_argument("token", help="the token from the unsubscribe link")
    _add_db(p)
    p.set_defaults(func=cmd_unsubscribe)

    p = sub.add_parser("unsubscribe-server", help="run the one-click unsubscribe endpoint")
    p.add_argument("--host", default="127.0.0.1", help="address (default loopback, behind a proxy)")
    p.add_argument("--port", type=int, default=8025, help="port (default 8025)")
    _add_db(p)
    p.set_defaults(func=cmd_unsubscribe_server)

    p = sub.add_parser("bounces", help="process a sender account's bounce mailbox (IMAP)")
    p.add_argument("account", help="sender account name")
    _add_db(p)
    p.set_defaults(func=cmd_bounces)

    p = sub.add_parser("dkim-keygen", help="generate a DKIM key and print its DNS record")
    p.add_argument("path", type=Path, help="where to write the private key (PEM)")
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing key file")
    p.set_defaults(func=cmd_dkim_keygen)

    p = sub.add_parser("eurosms-account", help="create or update a EuroSMS sender account")
    p.add_argument("name", help="account name")
    p.add_argument("--integration-id", required=True, help="EuroSMS integration id (1-XXXXXX)")
    p.add_argument("--sender-id", required=True, help="sender id shown on phones (<= 11 chars)")
    p.add_argument(
        "--credential-ref", required=True, help="env variable (or keyring:NAME) holding the key"
    )
    p.add_argument("--base-url", help="API base URL (default: EuroSMS's v3 API)")
    _add_db(p)
    p.set_defaults(func=cmd_eurosms_account)

    p = sub.add_parser("sms-dlr", help="poll EuroSMS delivery reports into the history")
    p.add_argument("campaign", help="campaign name or id")
    _add_db(p)
    p.set_defaults(func=cmd_sms_dlr)

    p = sub.add_parser("sendpulse-account", help="create or update a SendPulse account")
    p.add_argument("name", help="account name")
    p.add_argument("--client-id", required=True, help="SendPulse API ID")
    p.add_argument("--secret-env", required=True, help="environment variable holding the Secret")
    p.add_argument("--from-email", required=True, help="a sender confirmed in SendPulse")
    p.add_argument("--from-name", default="", help="sender display name")
    p.add_argument("--base-url", help="API base URL (default: https://api.sendpulse.com)")
    _add_db(p)
    p.set_defaults(func=cmd_sendpulse_account)

    p = sub.add_parser("sendpulse-send", help="hand a registered campaign to SendPulse")
    p.add_argument("campaign", help="campaign name or id")
    p.add_argument("--draft", action="store_true", help="create a draft to send from SendPulse")
    _add_db(p)
    p.set_defaults(func=cmd_sendpulse_send)

    p = sub.add_parser("provider-status", help="provider-side ids and status of a campaign")
    p.add_argument("campaign", help="campaign name or id")
    _add_db(p)
    p.set_defaults(func=cmd_provider_status)

    p = sub.add_parser("lab", help="create the demo database if needed and open JupyterLab")
    p.add_argument("--port", type=int, default=8888, help="JupyterLab port (default 8888)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--no-sink", action="store_true", help="do not start the local SMTP sink")
    p.add_argument("--sink-port", type=int, default=2525, help="sink port (default 2525)")
    p.add_argument(
        "--no-unsubscribe-server",
        action="store_true",
        help="do not start the local unsubscribe endpoint",
    )
    p.add_argument(
        "--unsubscribe-port", type=int, default=8025, help="unsubscribe endpoint port (8025)"
    )
    _add_db(p)
    p.set_defaults(func=cmd_lab)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bulkmail`` command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        return int(args.func(args))
    except BulkmailError as exc:
        print(f"bulkmail {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

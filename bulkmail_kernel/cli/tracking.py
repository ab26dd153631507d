"""Consent records and click tracking: record-consent, consents, set-tracking, clicks."""

from __future__ import annotations

import argparse

from bulkmail_kernel.cli.common import Commands, add_campaign, add_csv, add_db, print_frame


def cmd_record_consent(args: argparse.Namespace) -> int:
    """Record consent given (or with --withdrawn withdrawn) by contacts, with its wording."""
    from bulkmail_kernel import record_consent

    n = record_consent(
        args.contacts,
        args.purpose,
        granted=not args.withdrawn,
        method=args.method,
        text=args.text,
        source=args.source,
        url=args.db,
    )
    what = "withdrawal" if args.withdrawn else "consent"
    print(f"{n} {args.purpose} {what} rows recorded ({args.method})")
    return 0


def cmd_consents(args: argparse.Namespace) -> int:
    """Print the consent history (of one contact with CONTACT)."""
    from bulkmail_kernel import consents

    print_frame(consents(args.contact, url=args.db), args)
    return 0


def cmd_set_tracking(args: argparse.Namespace) -> int:
    """Turn a campaign's click (and open-pixel) tracking on or off."""
    from bulkmail_kernel import set_tracking

    print(set_tracking(args.campaign, clicks=not args.no_clicks, opens=args.opens, url=args.db))
    return 0


def cmd_clicks(args: argparse.Namespace) -> int:
    """Print a campaign's counted clicks (scanner traffic left out)."""
    from bulkmail_kernel import clicks

    print_frame(clicks(args.campaign, url=args.db), args)
    return 0


def add_commands(commands: Commands) -> None:
    """Add the consent and tracking commands."""
    p = commands.add(
        "record-consent", cmd_record_consent, "record consent given or withdrawn, with its wording"
    )
    p.add_argument("contacts", nargs="+", type=int, help="contact ids")
    p.add_argument(
        "--purpose", required=True, choices=["marketing", "tracking"], help="what it is for"
    )
    p.add_argument("--withdrawn", action="store_true", help="record a withdrawal (granted=False)")
    p.add_argument(
        "--method",
        required=True,
        choices=["form", "analyst", "import", "unsubscribe"],
        help="how it was given",
    )
    p.add_argument("--text", required=True, help="the consent wording the person was shown")
    p.add_argument(
        "--source",
        help="the form URL or import run (default for analyst: the OS and database user)",
    )
    add_db(p)

    p = commands.add("consents", cmd_consents, "the consent history, or one contact's")
    p.add_argument(
        "contact", nargs="?", help="contact id, customer number or address (default: everyone)"
    )
    add_csv(p)
    add_db(p)

    p = commands.add(
        "set-tracking", cmd_set_tracking, "turn click/open tracking on or off (default off)"
    )
    add_campaign(p)
    p.add_argument("--no-clicks", action="store_true", help="turn tracking off (clicks=False)")
    p.add_argument("--opens", action="store_true", help="also add the open pixel (weak: Apple MPP)")
    add_db(p)

    p = commands.add("clicks", cmd_clicks, "a campaign's counted clicks (scanners left out)")
    add_campaign(p)
    add_csv(p)
    add_db(p)

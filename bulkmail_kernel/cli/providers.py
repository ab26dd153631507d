"""Commands of the providers stage: SendPulse and EuroSMS accounts, hand-overs, reports.

Secrets are never arguments: ``--secret-env`` and ``--credential-ref`` name the
environment variable (or ``keyring:NAME``) that holds them.
"""

from __future__ import annotations

import argparse

from bulkmail_kernel.cli.common import (
    Commands,
    add_campaign,
    add_csv,
    add_db,
    aware_datetime,
    given,
    print_frame,
)


def cmd_add_sendpulse_account(args: argparse.Namespace) -> int:
    """Create or update a SendPulse account after SendPulse accepts its ID and Secret."""
    from bulkmail_kernel import add_sendpulse_account

    info = add_sendpulse_account(
        args.name,
        client_id=args.client_id,
        from_email=args.from_email,
        from_name=args.from_name,
        secret_env=args.secret_env,
        credential_ref=args.credential_ref,
        url=args.db,
        **given(args, "base_url"),
    )
    print(info)
    return 0


def cmd_send_campaign_via_sendpulse(args: argparse.Namespace) -> int:
    """Hand a registered campaign to SendPulse as an address book and a campaign or draft."""
    from bulkmail_kernel import send_campaign_via_sendpulse

    result = send_campaign_via_sendpulse(
        args.campaign,
        draft=args.draft,
        send_date=args.send_date,
        wait=not args.no_wait,
        progress=not args.quiet,
        url=args.db,
        **given(args, "batch_size", "book_timeout_s"),
    )
    print(result)
    return 0


def cmd_sendpulse_report(args: argparse.Namespace) -> int:
    """Print the campaign's SendPulse ids and status, asking SendPulse first."""
    from bulkmail_kernel import sendpulse_report

    print_frame(sendpulse_report(args.campaign, refresh=not args.no_refresh, url=args.db), args)
    return 0


def cmd_add_eurosms_account(args: argparse.Namespace) -> int:
    """Create or update a EuroSMS sender account (the key stays in env/keyring)."""
    from bulkmail_kernel import add_eurosms_account

    info = add_eurosms_account(
        args.name,
        integration_id=args.integration_id,
        sender_id=args.sender_id,
        credential_ref=args.credential_ref,
        from_name=args.from_name,
        url=args.db,
        **given(args, "base_url"),
    )
    print(info)
    return 0


def cmd_poll_delivery_reports(args: argparse.Namespace) -> int:
    """Poll EuroSMS delivery reports of an SMS campaign into the history."""
    from bulkmail_kernel import poll_delivery_reports

    print_frame(poll_delivery_reports(args.campaign, url=args.db), args)
    return 0


def cmd_check_account(args: argparse.Namespace) -> int:
    """Log in with a stored sender account now (SMTP, and IMAP for bounces); exit 1 if refused."""
    from bulkmail_kernel import check_account

    checks = check_account(args.name, url=args.db)
    print_frame(checks, args)
    return 0 if bool(checks["ok"].all()) else 1


def cmd_suggest_account_settings(args: argparse.Namespace) -> int:
    """Print SMTP/IMAP settings for an address (table, autoconfig, SRV) as JSON, with sources."""
    import json

    from bulkmail_kernel import suggest_account_settings

    found = suggest_account_settings(args.address, network=not args.no_network)
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return 0


def cmd_domain_limits(args: argparse.Namespace) -> int:
    """Print each sender account's per-hour limit per domain group (or one account's)."""
    from bulkmail_kernel import domain_limits

    print_frame(domain_limits(args.account, url=args.db), args)
    return 0


def _group_limit(text: str) -> tuple[str, float | str | None]:
    """Parse GROUP=N, GROUP=none or GROUP=default."""
    group, sep, value = text.partition("=")
    if not sep or not group.strip() or not value.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r}: give GROUP=MESSAGES_PER_HOUR, GROUP=none or GROUP=default"
        )
    value = value.strip().lower()
    if value in ("none", "default"):
        return group.strip(), None if value == "none" else "default"
    try:
        return group.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {value!r} is not a number of messages per hour, none or default"
        ) from None


def cmd_set_domain_limits(args: argparse.Namespace) -> int:
    """Set a sender account's own per-hour limits per domain group; print its limits now."""
    from bulkmail_kernel import set_domain_limits

    print_frame(set_domain_limits(args.account, dict(args.limits), url=args.db), args)
    return 0


def cmd_domain_group(args: argparse.Namespace) -> int:
    """Print the domain group of each address (empty: no per-domain limit applies)."""
    from bulkmail_kernel import domain_group

    for address in args.addresses:
        print(f"{address}\t{domain_group(address)}")
    return 0


def add_commands(commands: Commands) -> None:
    """Add the provider commands."""
    p = commands.add(
        "domain-limits", cmd_domain_limits, "per-hour limits per mailbox provider, per account"
    )
    p.add_argument("account", nargs="?", help="sender account name (default: every account)")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "set-domain-limits",
        cmd_set_domain_limits,
        "set a sender account's own per-hour limits per mailbox provider",
    )
    p.add_argument("account", help="sender account name")
    p.add_argument(
        "limits",
        nargs="+",
        type=_group_limit,
        metavar="GROUP=N",
        help="e.g. gmail=300 (messages per hour), yahoo=none (no limit), outlook=default; "
        "groups: gmail, outlook, yahoo, seznam, centrum, mailru",
    )
    add_csv(p)
    add_db(p)

    p = commands.add("domain-group", cmd_domain_group, "which domain group an address is in")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS", help="e-mail addresses")

    p = commands.add(
        "check-account",
        cmd_check_account,
        "log in with a sender account now and show what the servers answered",
    )
    p.add_argument("name", help="sender account name")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "suggest-account-settings",
        cmd_suggest_account_settings,
        "suggest SMTP and IMAP settings for an e-mail address",
    )
    p.add_argument("address", help="the sender address, e.g. news@firm.sk")
    p.add_argument(
        "--no-network",
        action="store_true",
        help="ask only the built-in provider table (no autoconfig or DNS look-ups)",
    )

    p = commands.add(
        "add-sendpulse-account",
        cmd_add_sendpulse_account,
        "create or update a SendPulse account",
        old=["sendpulse-account"],
    )
    p.add_argument("name", help="account name")
    p.add_argument("--client-id", required=True, help="SendPulse API ID")
    p.add_argument("--from-email", required=True, help="a sender confirmed in SendPulse")
    p.add_argument("--from-name", default="", help="sender display name")
    p.add_argument("--secret-env", help="environment variable holding the Secret")
    p.add_argument("--credential-ref", help="or where the Secret is, e.g. keyring:sendpulse")
    p.add_argument("--base-url", help="API base URL (default: https://api.sendpulse.com)")
    add_db(p)

    p = commands.add(
        "send-campaign-via-sendpulse",
        cmd_send_campaign_via_sendpulse,
        "hand a registered campaign to SendPulse",
        old=["sendpulse-send"],
    )
    add_campaign(p)
    p.add_argument("--draft", action="store_true", help="create a draft to send from SendPulse")
    p.add_argument(
        "--send-date",
        type=aware_datetime,
        metavar="ISO8601",
        help="when SendPulse sends, with offset, e.g. 2026-12-01T09:00+01:00 (default: now)",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="fail instead of waiting when SendPulse's 4 campaigns an hour are used up",
    )
    p.add_argument("--batch-size", type=int, help="addresses per request (default 500)")
    p.add_argument(
        "--book-timeout-s", type=float, help="seconds SendPulse may take to process the book (900)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_db(p)

    p = commands.add("sendpulse-report", cmd_sendpulse_report, "a campaign's SendPulse status")
    add_campaign(p)
    p.add_argument(
        "--no-refresh", action="store_true", help="print what is stored, without asking SendPulse"
    )
    add_csv(p)
    add_db(p)

    p = commands.add(
        "add-eurosms-account",
        cmd_add_eurosms_account,
        "create or update a EuroSMS sender account",
        old=["eurosms-account"],
    )
    p.add_argument("name", help="account name")
    p.add_argument("--integration-id", required=True, help="EuroSMS integration id (1-XXXXXX)")
    p.add_argument("--sender-id", required=True, help="sender id shown on phones (<= 11 chars)")
    p.add_argument(
        "--credential-ref", required=True, help="env variable (or keyring:NAME) holding the key"
    )
    p.add_argument("--from-name", default="", help="display name kept with the account")
    p.add_argument("--base-url", help="API base URL (default: EuroSMS's v3 API)")
    add_db(p)

    p = commands.add(
        "poll-delivery-reports",
        cmd_poll_delivery_reports,
        "poll EuroSMS delivery reports into the history",
        old=["sms-dlr"],
    )
    add_campaign(p)
    add_csv(p)
    add_db(p)

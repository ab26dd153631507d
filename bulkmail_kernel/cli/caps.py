"""Commands of the frequency caps: the global rule, and the rule a campaign is judged by.

A campaign's own rule is set where it is created: ``bulkmail create-campaign NAME
--frequency-cap 3/7`` (or ``none``), ``--transactional`` for a service message.
"""

from __future__ import annotations

import argparse

from bulkmail_kernel.cli.common import Commands, add_db


def _say(rule: object, whose: str) -> str:
    if rule is None:
        return f"{whose}: no frequency cap"
    return f"{whose}: at most {rule} per contact (e-mail, SMS and SendPulse together)"


def cmd_set_frequency_cap(args: argparse.Namespace) -> int:
    """Set the global frequency cap (at most MAX_MESSAGES in DAYS days), or 'none' to remove it."""
    from bulkmail_kernel import ConfigError, set_frequency_cap

    text = args.max_messages.strip().lower()
    if text == "none":
        rule = set_frequency_cap(None, url=args.db)
    elif text.isdigit():
        rule = set_frequency_cap(int(text), args.days, url=args.db)
    else:
        raise ConfigError(
            f"set-frequency-cap {args.max_messages!r}: give the most messages and the days, "
            "e.g. `bulkmail set-frequency-cap 2 7`, or `none` to remove the cap"
        )
    print(_say(rule, "global rule"))
    return 0


def cmd_frequency_cap(args: argparse.Namespace) -> int:
    """Print the global frequency cap, or the one a campaign is judged by."""
    from bulkmail_kernel import frequency_cap, get_campaign

    rule = frequency_cap(args.campaign, url=args.db)
    if args.campaign is None:
        print(_say(rule, "global rule"))
        return 0
    info = get_campaign(args.campaign, url=args.db)
    if info.transactional:
        print(f"campaign {info.name!r}: transactional, never capped and never counted")
    else:
        own = "its own rule" if info.frequency_cap else "the global rule"
        print(_say(rule, f"campaign {info.name!r} ({own})"))
    return 0


def cmd_set_campaign_cap(args: argparse.Namespace) -> int:
    """Set the rule a campaign is judged by: N/D, none (not capped) or global."""
    from bulkmail_kernel import frequency_cap, set_campaign_cap

    text = args.frequency_cap.strip().lower()
    value = None if text == "global" else text
    info = set_campaign_cap(args.campaign, value, transactional=args.transactional, url=args.db)
    if info.transactional:
        print(f"campaign {info.name!r}: transactional, never capped and never counted")
    else:
        own = "its own rule" if info.frequency_cap else "the global rule"
        rule = frequency_cap(info.name, url=args.db)
        print(_say(rule, f"campaign {info.name!r} ({own})"))
    return 0


def add_commands(commands: Commands) -> None:
    """Add the frequency-cap commands."""
    p = commands.add(
        "set-frequency-cap",
        cmd_set_frequency_cap,
        "at most N marketing messages per contact in D days, every channel together",
    )
    p.add_argument(
        "max_messages", help="most marketing messages per contact, e.g. 2; none removes the cap"
    )
    p.add_argument("days", nargs="?", type=int, help="in how many days, e.g. 7")
    add_db(p)

    p = commands.add(
        "frequency-cap", cmd_frequency_cap, "show the global frequency cap or a campaign's"
    )
    p.add_argument("--campaign", help="the rule this campaign is judged by (default: the global)")
    add_db(p)

    p = commands.add(
        "set-campaign-cap", cmd_set_campaign_cap, "set the frequency cap a campaign is judged by"
    )
    p.add_argument("campaign", help="campaign name or id")
    p.add_argument(
        "frequency_cap",
        help="N/D (at most N in D days), none (not capped) or global (the global rule)",
    )
    p.add_argument(
        "--transactional",
        action="store_true",
        help="a service message (a reminder): never capped, never counted (rule: global)",
    )
    add_db(p)

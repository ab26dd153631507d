"""Commands of A/B tests and resends: set a test up, read it, decide it, resend to non-clickers.

``bulkmail run-worker`` decides click-rate tests by itself once their wait is over;
``pick-winner --conversions orders.csv`` decides a conversion test.
"""

from __future__ import annotations

import argparse
from typing import Any

from bulkmail_kernel.cli.common import (
    CommandParser,
    Commands,
    add_campaign,
    add_csv,
    add_db,
    print_frame,
)


def _conversions(path: str | None) -> Any:
    if path is None:
        return None
    import pandas as pd

    return pd.read_csv(path)


def cmd_create_ab_test(args: argparse.Namespace) -> int:
    """Split a draft campaign into subject variants, a holdout and the rest; register the test."""
    from bulkmail_kernel import create_ab_test

    arms = create_ab_test(
        args.campaign,
        [{"subject": s} for s in args.variants],
        sample=args.sample,
        holdout=args.holdout,
        wait=args.wait,
        metric=args.metric,
        seed=args.seed,
        url=args.db,
    )
    print_frame(arms, args)
    return 0


def cmd_ab_report(args: argparse.Namespace) -> int:
    """Print each arm's rates with intervals, uplift over the holdout and p-values."""
    from bulkmail_kernel import ab_report

    report = ab_report(
        args.campaign,
        conversions=_conversions(args.conversions),
        url=args.db,
    )
    print_frame(report, args)
    return 0


def cmd_pick_winner(args: argparse.Namespace) -> int:
    """Choose the A/B test's winner and queue the rest of the audience with it."""
    from bulkmail_kernel import pick_winner

    report = pick_winner(
        args.campaign,
        conversions=_conversions(args.conversions),
        winner=args.winner,
        url=args.db,
    )
    print(f"winner: {report.attrs.get('winner')}")
    print_frame(report, args)
    return 0


def cmd_non_clickers(args: argparse.Namespace) -> int:
    """Print who got the campaign's message and did not click."""
    from bulkmail_kernel import non_clickers

    print_frame(non_clickers(args.campaign, url=args.db), args)
    return 0


def cmd_resend_to_non_clickers(args: argparse.Namespace) -> int:
    """Create and register NAME: the campaign with a new subject, to its non-clickers."""
    from bulkmail_kernel import resend_to_non_clickers

    info = resend_to_non_clickers(
        args.campaign, args.name, subject=args.subject, days=args.days, url=args.db
    )
    print(f"campaign {info.name!r} ({info.status}) follows up {args.campaign!r}")
    return 0


def _add_conversions(p: CommandParser) -> None:
    p.add_argument(
        "--conversions",
        metavar="CSV",
        help="a CSV of conversions: contact_id and converted (true/false) or amount",
    )


def add_commands(commands: Commands) -> None:
    """Add the A/B test and resend commands."""
    p = commands.add(
        "create-ab-test", cmd_create_ab_test, "A/B test a draft campaign's subject with a holdout"
    )
    add_campaign(p)
    p.add_argument("variants", nargs="+", help="one subject per variant (A, B, ...)")
    p.add_argument("--sample", type=float, default=0.2, help="share that gets a variant (0.2)")
    p.add_argument("--holdout", type=float, default=0.1, help="share that gets nothing (0.1)")
    p.add_argument("--wait", default="4h", help="wait after the last variant message (4h)")
    p.add_argument(
        "--metric", choices=("clicks", "conversions"), default="clicks", help="what wins"
    )
    p.add_argument("--seed", type=int, help="seed of the split (default: random, stored)")
    add_csv(p)
    add_db(p)

    p = commands.add("ab-report", cmd_ab_report, "an A/B test's rates, intervals and tests")
    add_campaign(p)
    _add_conversions(p)
    add_csv(p)
    add_db(p)

    p = commands.add("pick-winner", cmd_pick_winner, "decide an A/B test and queue the rest")
    add_campaign(p)
    _add_conversions(p)
    p.add_argument("--winner", help="the variant to send the rest (default: the best rate)")
    add_csv(p)
    add_db(p)

    p = commands.add("non-clickers", cmd_non_clickers, "who got the campaign and did not click")
    add_campaign(p)
    add_csv(p)
    add_db(p)

    p = commands.add(
        "resend-to-non-clickers",
        cmd_resend_to_non_clickers,
        "a new campaign, linked to the first, to its non-clickers with a new subject",
    )
    add_campaign(p)
    p.add_argument("name", help="name of the new campaign")
    p.add_argument("--subject", required=True, help="the new subject")
    p.add_argument("--days", type=float, default=3, help="days after the last send (3)")
    add_db(p)

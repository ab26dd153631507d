"""Commands of the compose stage: list-templates, load-template, check-template."""

from __future__ import annotations

import argparse
import sys

from bulkmail_kernel.cli.common import (
    Commands,
    add_csv,
    add_db,
    add_values,
    print_frame,
    values_of,
)


def cmd_list_templates(args: argparse.Namespace) -> int:
    """List the predefined templates."""
    from bulkmail_kernel import list_templates

    print_frame(list_templates(args.directory), args)
    return 0


def cmd_load_template(args: argparse.Namespace) -> int:
    """Load a template (a folder under templates/ or a path) and print what it holds."""
    from bulkmail_kernel import load_template

    t = load_template(args.name_or_path)
    print(f"name: {t.name}")
    print(f"channel: {t.channel}")
    print(f"language: {t.language or ''}")
    print(f"folder: {t.folder or ''}")
    print(f"subject: {t.subject}")
    print(f"bodies: {', '.join(b for b in ('html', 'text', 'sms') if getattr(t, b))}")
    print(f"required values: {', '.join(t.required) or '(none)'}")
    print(f"variables: {', '.join(sorted(t.variables())) or '(none)'}")
    print(f"attachments: {', '.join(str(a) for a in t.attachments) or '(none)'}")
    if t.description:
        print(f"description: {t.description}")
    return 0


def cmd_check_template(args: argparse.Namespace) -> int:
    """Render a template for every recipient and list the failures (exit 1 if any).

    The frame checked is the database's contacts (contacts-frame), or the recipients
    of --segment.
    """
    from bulkmail_kernel import check_template, contacts_frame, load_template, segment_recipients

    frame = contacts_frame(url=args.db)
    if args.segment:
        frame = segment_recipients(args.segment, frame, url=args.db)
    failures = check_template(
        load_template(args.template), frame, values=values_of(args), provider=args.provider
    )
    print_frame(failures, args)
    # With --csv the count goes to stderr, so stdout stays one CSV table.
    out = sys.stderr if args.csv else sys.stdout
    print(f"{len(failures)} failing of {len(frame)} recipients", file=out)
    return 1 if len(failures) else 0


def add_commands(commands: Commands) -> None:
    """Add the template commands."""
    p = commands.add(
        "list-templates", cmd_list_templates, "list the predefined templates", old=["templates"]
    )
    p.add_argument("--directory", help="templates folder (default: templates/)")
    add_csv(p)

    p = commands.add("load-template", cmd_load_template, "show what a template holds")
    p.add_argument("name_or_path", help="template name (folder under templates/) or path")

    p = commands.add(
        "check-template", cmd_check_template, "render a template for every recipient, list failures"
    )
    p.add_argument("template", help="template name (folder under templates/) or path")
    p.add_argument("--segment", help="saved segment to check (default: every contact point)")
    add_values(p)
    p.add_argument(
        "--provider", choices=["sendpulse"], help="also apply a provider's merge-tag rules"
    )
    add_csv(p)
    add_db(p)

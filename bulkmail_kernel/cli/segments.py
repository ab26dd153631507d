"""Commands of the segments stage: save, list, load, rename, delete, recipients, export.

The functions that take a recipients ``frame`` get the database's contacts (what
``bulkmail contacts-frame`` prints): a DataFrame cannot be typed on a command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bulkmail_kernel.cli.common import Commands, add_csv, add_db, print_frame


def cmd_save_segment(args: argparse.Namespace) -> int:
    """Save a filter as a segment with a snapshot of who it selects now.

    The frame it filters is the database's contacts (contacts-frame); --spec is the
    filter as JSON, as FilterSpec.to_json() writes it (or any subset of its fields).
    """
    from bulkmail_kernel import FilterSpec, contacts_frame, save_segment

    spec = FilterSpec.from_json(args.spec)
    info = save_segment(
        args.name,
        spec,
        contacts_frame(url=args.db),
        url=args.db,
        description=args.description,
        today=args.today,
        replace=args.replace,
    )
    print(info)
    return 0


def cmd_list_segments(args: argparse.Namespace) -> int:
    """List the saved segments."""
    from bulkmail_kernel import list_segments

    print_frame(list_segments(url=args.db), args)
    return 0


def cmd_load_segment(args: argparse.Namespace) -> int:
    """Print a saved segment's stored info and its filter as JSON."""
    from bulkmail_kernel import load_segment

    loaded = load_segment(args.name, url=args.db)
    print(loaded.info)
    print(loaded.spec.to_json())
    return 0


def cmd_rename_segment(args: argparse.Namespace) -> int:
    """Rename a saved segment."""
    from bulkmail_kernel import rename_segment

    print(rename_segment(args.name, args.new_name, url=args.db))
    return 0


def cmd_delete_segment(args: argparse.Namespace) -> int:
    """Delete a saved segment and its snapshot (the contacts stay)."""
    from bulkmail_kernel import delete_segment

    delete_segment(args.name, url=args.db)
    print(f"segment {args.name!r} deleted")
    return 0


def cmd_segments(args: argparse.Namespace) -> int:
    """List, show, rename or delete saved segments (one command for the four functions)."""
    if args.action == "list":
        return cmd_list_segments(args)
    if args.action == "show":
        return cmd_load_segment(args)
    if args.action == "rename":
        return cmd_rename_segment(args)
    return cmd_delete_segment(args)


def cmd_segment_recipients(args: argparse.Namespace) -> int:
    """Print the recipients of a saved segment: its snapshot, or its filter on today's contacts.

    The frame is the database's contacts (contacts-frame).
    """
    from bulkmail_kernel import contacts_frame, segment_recipients

    chosen = segment_recipients(
        args.name, contacts_frame(url=args.db), mode=args.mode, today=args.today, url=args.db
    )
    print_frame(chosen, args)
    return 0


def cmd_export_recipients(args: argparse.Namespace) -> int:
    """Export a saved segment's recipients to .xlsx or .csv.

    The frame written is the segment's recipients among the database's contacts
    (contacts-frame); addresses and phone numbers only with --include-contact-data.
    """
    from bulkmail_kernel import contacts_frame, export_recipients, segment_recipients

    chosen = segment_recipients(
        args.segment,
        contacts_frame(url=args.db),
        mode="reevaluate" if args.reevaluate else "snapshot",
        url=args.db,
    )
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    # A shell user means the current folder; with no path the export goes to data/exports/.
    path = export_recipients(
        chosen,
        None if args.path is None else Path.cwd() / args.path,
        columns,
        include_contact_data=args.include_contact_data,
        progress=not args.quiet,
        segment=args.segment,
        url=args.db,
    )
    print(f"{len(chosen)} recipients written to {path}")
    return 0


def add_commands(commands: Commands) -> None:
    """Add the segment commands."""
    p = commands.add("save-segment", cmd_save_segment, "save a filter as a segment with a snapshot")
    p.add_argument("name", help="segment name")
    p.add_argument(
        "--spec",
        required=True,
        metavar="JSON",
        help='the filter, e.g. \'{"mailing_allowed": true, "channel": "email"}\'',
    )
    p.add_argument("--description", default="", help="what the segment is for")
    p.add_argument("--today", help="anchor date YYYY-MM-DD for relative day filters")
    p.add_argument("--replace", action="store_true", help="replace a segment of that name")
    add_db(p)

    p = commands.add("list-segments", cmd_list_segments, "list the saved segments")
    add_csv(p)
    add_db(p)

    p = commands.add("load-segment", cmd_load_segment, "show a saved segment and its filter")
    p.add_argument("name", help="segment name")
    add_db(p)

    p = commands.add("rename-segment", cmd_rename_segment, "rename a saved segment")
    p.add_argument("name", help="segment name")
    p.add_argument("new_name", help="its new name")
    add_db(p)

    p = commands.add("delete-segment", cmd_delete_segment, "delete a saved segment")
    p.add_argument("name", help="segment name")
    add_db(p)

    p = commands.add(
        "segments", cmd_segments, "list, show, rename or delete saved segments (one command)"
    )
    p.add_argument("action", choices=["list", "show", "rename", "delete"], help="what to do")
    p.add_argument("name", nargs="?", help="segment name (show, rename, delete)")
    p.add_argument("new_name", nargs="?", help="new name (rename)")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "segment-recipients", cmd_segment_recipients, "print the recipients of a saved segment"
    )
    p.add_argument("name", help="segment name")
    p.add_argument(
        "--mode",
        choices=["snapshot", "reevaluate"],
        default="snapshot",
        help="snapshot: the members saved (default); reevaluate: the filter on today's data",
    )
    p.add_argument("--today", help="anchor date YYYY-MM-DD when reevaluating")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "export-recipients",
        cmd_export_recipients,
        "export a saved segment to .xlsx or .csv",
        old=["export"],
    )
    p.add_argument("segment", help="saved segment name")
    p.add_argument(
        "path",
        type=Path,
        nargs="?",
        help="target file: .xlsx or .csv (default: data/exports/recipients-<date-time>.xlsx)",
    )
    p.add_argument("--columns", help="comma-separated columns in order (default: all safe ones)")
    p.add_argument(
        "--include-contact-data",
        action="store_true",
        help="allow addresses and phone numbers in the export",
    )
    p.add_argument(
        "--reevaluate", action="store_true", help="apply the saved filter to today's data"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_db(p)

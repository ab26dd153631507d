"""Commands of the export permission: create-roles (db-roles), allow-contact-export, export-log."""

from __future__ import annotations

import argparse

from bulkmail_kernel.cli.common import Commands, add_csv, add_db, print_frame


def cmd_create_roles(args: argparse.Namespace) -> int:
    """Create (or re-grant) PostgreSQL's analyst and exporter roles on the bulkmail schema.

    Run it as the schema's owner (who migrates it and runs the worker). The analyst
    (--analyst) cannot read names, addresses, phone numbers, message recipients or bodies;
    the exporter (--exporter) can, and may export them. See docs/permissions.md.
    """
    from bulkmail_kernel import create_roles

    print_frame(create_roles(analyst=args.analyst, exporter=args.exporter, url=args.db), args)
    return 0


def cmd_allow_contact_export(args: argparse.Namespace) -> int:
    """Allow (yes) or refuse (no) contact-data exports from this database (SQLite's permission)."""
    from bulkmail_kernel import allow_contact_export

    now = allow_contact_export(args.allowed == "yes", url=args.db)
    print(f"contact-data export {'allowed' if now else 'refused'}")
    return 0


def cmd_export_log(args: argparse.Namespace) -> int:
    """Print every export of contact data and every refused attempt, newest first."""
    from bulkmail_kernel import export_log

    print_frame(export_log(url=args.db), args)
    return 0


def add_commands(commands: Commands) -> None:
    """Add the permission commands."""
    p = commands.add(
        "create-roles",
        cmd_create_roles,
        "create PostgreSQL's analyst and exporter roles (contact-data permission)",
        old=["db-roles"],
    )
    p.add_argument("--analyst", metavar="NAME", help="role that cannot read or export contact data")
    p.add_argument("--exporter", metavar="NAME", help="role that may read and export contact data")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "allow-contact-export",
        cmd_allow_contact_export,
        "allow or refuse contact-data exports from this database (SQLite's permission)",
    )
    p.add_argument("allowed", choices=["yes", "no"], help="allowed: yes or no")
    add_db(p)

    p = commands.add(
        "export-log", cmd_export_log, "print every contact-data export and refused attempt"
    )
    add_csv(p)
    add_db(p)

"""Commands of the database and contacts stage: open-database, import-contacts, GDPR requests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bulkmail_kernel.cli.common import (
    Commands,
    add_csv,
    add_db,
    aware_datetime,
    json_object,
    print_frame,
)


def cmd_open_database(args: argparse.Namespace) -> int:
    """Open the database, apply its migrations and print the revision it is at.

    An upgrade that merged contacts, contact points or suppressions because two spellings
    are one address (DUP.SAME@ and dup.same@) prints what it merged.
    """
    from datetime import UTC, datetime

    from bulkmail_kernel import identity_merges, open_database
    from bulkmail_kernel.db import current_revision

    started = datetime.now(UTC)
    db = open_database(args.db, migrate=not args.no_migrate)
    print(f"{db.url}: at revision {current_revision(db.engine)}")
    merged = identity_merges(since=started, db=db) if not args.no_migrate else None
    if merged is not None and len(merged):
        print(f"{len(merged)} merges of one address spelled differently (see identity-merges):")
        print_frame(merged, args)
    return 0


def cmd_identity_merges(args: argparse.Namespace) -> int:
    """Print what was merged because two spellings are one address, and what was kept."""
    from bulkmail_kernel import identity_merges

    print_frame(identity_merges(since=args.since, url=args.db), args)
    return 0


def cmd_generate_demo(args: argparse.Namespace) -> int:
    """Generate the deterministic demo data set and the dirty sample files."""
    from datetime import date

    from bulkmail_kernel import generate_demo

    today = date.fromisoformat(args.today) if args.today else None
    samples_dir: Path | bool = False if args.no_samples else (args.samples_dir or True)
    summary = generate_demo(
        args.contacts,
        url=args.db,
        seed=args.seed,
        today=today,
        replace=args.replace,
        progress=not args.quiet,
        samples_dir=samples_dir,
    )
    print_frame(summary, args)
    return 0


def cmd_import_contacts(args: argparse.Namespace) -> int:
    """Import contacts from a file or a SQL source and print the report (exit 1: nothing imported).

    The whole file is refused when a row is bad, unless --on-error skip imports the good rows.
    """
    from bulkmail_kernel import import_contacts

    result = import_contacts(
        args.source,
        url=args.db,
        mapping=args.mapping,
        encoding=args.encoding,
        delimiter=args.delimiter,
        region=args.region,
        on_error=args.on_error,
        table=args.table,
        query=args.query,
        sheet=args.sheet,
        source_name=args.source_name,
        progress=not args.quiet,
        consent_text=args.consent_text,
    )
    print(repr(result))
    if len(result.report):
        print_frame(result.report, args, kind="import report")
        if args.report:
            print(f"report written to {result.save_report(args.report)}")
    return 0 if result.committed else 1


def cmd_contacts_frame(args: argparse.Namespace) -> int:
    """Print one row per contact point with its contact's fields and custom attributes."""
    from bulkmail_kernel import contacts_frame

    print_frame(contacts_frame(url=args.db), args)
    return 0


def cmd_export_contact_data(args: argparse.Namespace) -> int:
    """Write everything held about one person as JSON and a readable page (GDPR art. 15/20)."""
    from bulkmail_kernel import export_contact_data

    out = export_contact_data(args.contact, folder=args.folder, url=args.db)
    print(f"contact {out.contact_id}: {out.json_path}")
    print(f"contact {out.contact_id}: {out.html_path}")
    return 0


def cmd_forget_contact(args: argparse.Namespace) -> int:
    """Erase one person's data on request (GDPR art. 17); keeps anonymous counts."""
    from bulkmail_kernel import forget_contact

    if not args.yes:
        print(
            f"bulkmail forget-contact: this erases {args.contact!r} for good; "
            "add --yes to do it (export-contact-data first if they asked for a copy)",
            file=sys.stderr,
        )
        return 2
    done = forget_contact(args.contact, url=args.db)
    print(
        f"contact {done.contact_id} forgotten: {done.addresses} addresses kept as salted hashes, "
        f"{done.messages} messages and {done.events} events anonymised, "
        f"{done.suppressions} suppressions deleted"
    )
    return 0


def add_commands(commands: Commands) -> None:
    """Add the database and contacts commands."""
    p = commands.add(
        "open-database",
        cmd_open_database,
        "apply database migrations (also done on every open)",
        old=["migrate"],
    )
    p.add_argument("--no-migrate", action="store_true", help="only open it and print its revision")
    add_db(p)
    add_csv(p)

    p = commands.add(
        "identity-merges",
        cmd_identity_merges,
        "what was merged because two spellings are one address",
    )
    p.add_argument(
        "--since",
        type=aware_datetime,
        help="only merges at or after this ISO 8601 time with its offset (2026-12-01T09:00+01:00)",
    )
    add_db(p)
    add_csv(p)

    p = commands.add(
        "generate-demo",
        cmd_generate_demo,
        "generate the deterministic demo data set and sample files",
        old=["demo"],
    )
    p.add_argument("--contacts", type=int, default=5000, help="how many contacts (default 5000)")
    p.add_argument("--seed", type=int, default=20261123, help="random seed (same seed, same data)")
    p.add_argument("--today", default=None, help="anchor date YYYY-MM-DD (default: today)")
    p.add_argument("--replace", action="store_true", help="replace existing demo data")
    p.add_argument(
        "--samples-dir", type=Path, help="where to write the dirty sample files (data/samples)"
    )
    p.add_argument("--no-samples", action="store_true", help="do not write the sample files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "import-contacts",
        cmd_import_contacts,
        "import contacts from CSV, .xlsx, XML or a SQL URL",
        old=["import"],
    )
    p.add_argument("source", help="file path, or a SQLAlchemy URL with --table or --query")
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="raise: import nothing if any row is bad (default); skip: import the good rows",
    )
    p.add_argument(
        "--mapping",
        type=json_object,
        metavar="JSON",
        help='source column -> field, e.g. \'{"E-mail": "email", "Note": null}\'',
    )
    p.add_argument("--encoding", help="force the CSV encoding (default: detected)")
    p.add_argument("--delimiter", help="force the CSV delimiter (default: detected)")
    p.add_argument("--region", help="phone region for numbers without +code (default SK)")
    p.add_argument("--table", help="table to read when SOURCE is a database URL")
    p.add_argument("--query", help="SQL query to read when SOURCE is a database URL")
    p.add_argument("--sheet", help="worksheet name of an .xlsx file (default: the first)")
    p.add_argument("--source-name", help="name the import is recorded under (default: the file)")
    p.add_argument(
        "--consent-text", help="the consent wording the imported people agreed to (kept as proof)"
    )
    p.add_argument("--report", type=Path, help="also write the import report to this CSV file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "contacts-frame",
        cmd_contacts_frame,
        "print every contact point with its contact's fields (the frame segments filter)",
    )
    add_csv(p)
    add_db(p)

    p = commands.add(
        "export-contact-data",
        cmd_export_contact_data,
        "write everything held about one person as JSON and HTML (GDPR art. 15/20)",
    )
    p.add_argument("contact", help="contact id, customer number, e-mail address or phone")
    p.add_argument("--folder", type=Path, help="where to write the files (default data/exports)")
    add_db(p)

    p = commands.add(
        "forget-contact",
        cmd_forget_contact,
        "erase one person's data on request, keeping anonymous counts (GDPR art. 17)",
    )
    p.add_argument("contact", help="contact id, customer number, e-mail address or phone")
    p.add_argument("--yes", action="store_true", help="really erase (it cannot be undone)")
    add_db(p)

"""Commands of the deliverability stage: process-mailbox (bounces) and generate-dkim-key."""

from __future__ import annotations

import argparse
from pathlib import Path

from bulkmail_kernel.cli.common import Commands, add_csv, add_db, print_frame


def cmd_process_mailbox(args: argparse.Namespace) -> int:
    """Process the account's bounce mailbox over IMAP and print what was done."""
    from bulkmail_kernel import process_mailbox

    print_frame(process_mailbox(args.account, url=args.db), args)
    return 0


def cmd_generate_dkim_key(args: argparse.Namespace) -> int:
    """Generate a DKIM private key file and print the DNS TXT record to publish."""
    from bulkmail_kernel import generate_dkim_key

    record = generate_dkim_key(args.path, bits=args.bits, overwrite=args.overwrite)
    print(f"private key written to {args.path} (keep it secret; mode 600)")
    print("publish this TXT record at <selector>._domainkey.<your domain>:")
    print(record)
    return 0


def add_commands(commands: Commands) -> None:
    """Add the deliverability commands."""
    p = commands.add(
        "process-mailbox",
        cmd_process_mailbox,
        "process a sender account's bounce mailbox (IMAP)",
        old=["bounces"],
    )
    p.add_argument("account", help="sender account name")
    add_csv(p)
    add_db(p)

    p = commands.add(
        "generate-dkim-key",
        cmd_generate_dkim_key,
        "generate a DKIM key and print its DNS record",
        old=["dkim-keygen"],
    )
    p.add_argument("path", type=Path, help="where to write the private key (PEM)")
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing key file")

"""The ``bulkmail`` command: the Python API, name for name, for shell scripts and terminals.

Every public function that makes sense on a command line is a sub-command of the
same name with ``_`` as ``-`` (``create_campaign`` is ``bulkmail create-campaign``),
its keyword arguments are options (``rate_per_hour=`` is ``--rate-per-hour``) and
``url=`` is ``--db``. A command prints the DataFrame (``--csv`` for scripts) or a
one-line summary the function returns; an error of bulkmail is one line on stderr and
exit 2. Secrets are never arguments: options such as ``--credential-ref`` name the
environment variable that holds them.

The commands import the public names of ``bulkmail_kernel`` when they run, never its
stages, so ``bulkmail --help`` loads no data stack and the stages can move freely.
The names used before the mirror (``import``, ``demo``, ``bounces``, ...) still work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bulkmail_kernel.cli import (
    abtests,
    campaigns,
    caps,
    compose,
    contacts,
    deliverability,
    permissions,
    providers,
    segments,
    sending,
    servers,
    tracking,
)
from bulkmail_kernel.cli.common import Commands
from bulkmail_kernel.exceptions import BulkmailError

#: The command modules in the order of the analyst's path (and of ``bulkmail --help``).
STAGES = (
    contacts,
    segments,
    permissions,
    compose,
    campaigns,
    caps,
    tracking,
    sending,
    abtests,
    providers,
    deliverability,
    servers,
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser (one sub-command per public function).

    ``only`` names the one command whose options are needed; the others keep their
    name and help line only (``main`` passes the command it was given, or ``""``).
    """
    parser = argparse.ArgumentParser(
        prog="bulkmail",
        description="bulkmail: contacts, segments, templates and throttled sending.",
        epilog="Each command is a function of the Python API: `bulkmail COMMAND --help`.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = Commands(sub, only)
    for stage in STAGES:
        stage.add_commands(commands)
    commands.add_old_names()
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bulkmail`` command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # The global options (-v, -h) take no value: the first other word is the command.
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    # -v is for bulkmail's own lines: Alembic's plugin list at every start is noise in a log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except BulkmailError as exc:
        print(f"bulkmail {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`bulkmail queue jar | head`): stop quietly, as Unix tools do,
        # and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

"""What every command module shares: the table of sub-commands and the common options.

Each command is named after the public function it calls (``create_campaign`` is
``bulkmail create-campaign``). The names scripts used before the mirror (``import``,
``demo``, ``bounces``, ...) stay as parsers of their own with the same options, so
``bulkmail --help`` lists them and each has its own help.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

Handler = Callable[[argparse.Namespace], int]


class CommandParser:
    """A sub-command's parser that remembers its options, so its old names get the same ones.

    An inactive one only remembers them: ``bulkmail send ...`` needs the options of
    ``send`` alone, and adding the few hundred of the others would double its start.
    """

    # A plain class, not a dataclass: dataclasses imports inspect, and `bulkmail --help`
    # should load little more than argparse.
    def __init__(self, parser: argparse.ArgumentParser, *, active: bool = True) -> None:
        self.parser = parser
        self.active = active
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        """Add an option to the command (and, later, to each of its old names)."""
        self.calls.append((args, kwargs))
        if self.active:
            self.parser.add_argument(*args, **kwargs)


class Commands:
    """The sub-commands of ``bulkmail``, added stage by stage, old names last.

    ``only`` names the command being run: the others get their name and help line but
    no options (None: every command gets its options, as ``build_parser()`` does).
    """

    def __init__(
        self, sub: argparse._SubParsersAction[argparse.ArgumentParser], only: str | None = None
    ) -> None:
        self._sub = sub
        self._only = only
        self._old: list[tuple[str, str, Handler, CommandParser, str | None]] = []

    def _active(self, name: str) -> bool:
        return self._only is None or self._only == name

    def add(
        self,
        name: str,
        func: Handler,
        help: str,
        *,
        old: Sequence[str] = (),
        epilog: str | None = None,
    ) -> CommandParser:
        """Add command ``name`` running ``func``; ``old`` are names it had before the mirror.

        ``epilog`` is printed as written after the options (exit codes, examples).
        """
        parser = self._sub.add_parser(name, help=help, description=func.__doc__, **_epilog(epilog))
        parser.set_defaults(func=func)
        command = CommandParser(parser, active=self._active(name))
        self._old.extend((alias, name, func, command, epilog) for alias in old)
        return command

    def add_old_names(self) -> None:
        """Add each old name as a parser with the same options as the command it stands for."""
        for alias, name, func, command, epilog in self._old:
            parser = self._sub.add_parser(
                alias,
                help=f"old name of {name}",
                description=f"{func.__doc__} (`bulkmail {alias}` is the old name of {name}.)",
                **_epilog(epilog),
            )
            parser.set_defaults(func=func)
            if self._active(alias):
                for args, kwargs in command.calls:
                    parser.add_argument(*args, **kwargs)


def _epilog(epilog: str | None) -> dict[str, Any]:
    if epilog is None:
        return {}
    # Raw: the epilog's own line breaks stay (a table of exit codes), the rest wraps as usual.
    return {"epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}


# --------------------------------------------------------------------------- common options


def add_db(p: CommandParser) -> None:
    """Add ``--db URL`` (the functions' ``url=``)."""
    p.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="SQLAlchemy URL of the database (default: BULKMAIL_DB_URL or data/bulkmail.db)",
    )


def add_csv(p: CommandParser) -> None:
    """Add ``--csv`` to a command that prints a DataFrame."""
    p.add_argument(
        "--csv", action="store_true", help="print the frame as CSV (for scripts) instead of a table"
    )


def add_campaign(p: CommandParser) -> None:
    """Add the positional ``campaign`` every campaign function takes first."""
    p.add_argument("campaign", help="campaign name")


def add_values(p: CommandParser) -> None:
    """Add ``--values JSON`` and repeated ``--value KEY=TEXT`` (the functions' ``values=``)."""
    p.add_argument(
        "--values",
        type=json_object,
        metavar="JSON",
        help="campaign values as a JSON object, e.g. '{\"articles\": [...]}'",
    )
    p.add_argument(
        "--value",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=TEXT",
        help="one text value (repeat it); overrides the same key of --values",
    )


def values_of(args: argparse.Namespace) -> dict[str, Any] | None:
    """Return ``--values`` merged with the ``--value`` pairs, or None when neither was given."""
    if args.values is None and not args.value:
        return None
    return {**(args.values or {}), **dict(args.value)}


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Return the options among ``names`` that were given, so the functions' defaults apply."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


# --------------------------------------------------------------------------- argument types


def json_object(text: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


def key_value(text: str) -> tuple[str, str]:
    """Parse ``KEY=TEXT``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=TEXT, got {text!r}")
    return key.strip(), value


def aware_datetime(text: str) -> datetime:
    """Parse an ISO 8601 time that carries its UTC offset (a bare local time is ambiguous)."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-12-01T09:00+01:00"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset: add one, e.g. {text}+01:00 (or Z for UTC)"
        )
    return when


# --------------------------------------------------------------------------- output


def print_frame(frame: object, args: argparse.Namespace | None = None, kind: str = "csv") -> None:
    """Print a DataFrame as a table (or CSV with ``--csv``); anything else as it prints.

    ``--csv`` of a frame with contact columns is an export (a script keeps what it
    prints): ``frame_csv`` checks and logs it (``kind`` "csv", or "import report").
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        print(frame)
        return
    table = frame
    if any(name is not None for name in frame.index.names):
        # A named index (campaign_report's status) is data: print it as a column.
        table = frame.reset_index()
    if args is not None and getattr(args, "csv", False):
        from bulkmail_kernel import frame_csv

        print(frame_csv(table, kind=kind, url=getattr(args, "db", None)), end="")
    else:
        with pd.option_context("display.max_rows", 50, "display.width", 160):
            print(table.to_string(index=False) if len(table) else "(nothing)")

"""bulkmail's own errors in a notebook: one short box, the traceback folded away.

A :class:`~bulkmail_kernel.exceptions.BulkmailError` is raised on purpose and its
message already says where, what and what to do; thirty lines of stack above it only
hide that from an analyst. In an IPython kernel, importing ``bulkmail_kernel`` asks
IPython to show these errors (and only these) as their kind, the message wrapped to
the width of a cell, and their structured fields, with one line saying how to unfold
the traceback (``%tb``). The cell still fails, so "Run all" stops there as before;
every other exception keeps IPython's usual traceback. bulkmail's own warnings (who
``register()`` skipped and why) show as their one line, without Python's file, line
number and class name; every other warning looks as usual.
"""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from bulkmail_kernel.exceptions import BulkmailError, RecipientsSkippedWarning

#: What each error means to the person reading it, by class name.
_KINDS = {
    "ConfigError": "A setting is missing or wrong",
    "ContactImportError": "The contacts cannot be imported",
    "FilterError": "The filter cannot be applied",
    "SegmentError": "The segment cannot be used",
    "ExportError": "The export cannot be written",
    "TemplateError": "The template cannot be used",
    "SendError": "The campaign cannot be sent",
    "ProviderError": "The provider said no",
}
_RED, _BOLD, _DIM, _RESET = "\x1b[31m", "\x1b[1m", "\x1b[2m", "\x1b[0m"
_WIDTH = 96


def error_lines(error: BulkmailError) -> list[str]:
    """Return the lines that show ``error`` to a person: its kind, message, fields, and %tb."""
    kind = type(error).__name__
    heading = _KINDS.get(kind, "bulkmail stopped")
    lines = [f"{_RED}{_BOLD}{heading}{_RESET} {_DIM}({kind}){_RESET}"]
    message = error.message if isinstance(error.message, str) else str(error)
    for paragraph in message.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, _WIDTH, break_on_hyphens=False) or [""]
    shown = {k: v for k, v in error.fields.items() if v is not None and str(v) != ""}
    if shown:
        lines.append(_DIM + "  ·  ".join(f"{k}: {v}" for k, v in shown.items()) + _RESET)
    lines.append(f"{_DIM}(the traceback is folded away: run %tb in a cell to see it){_RESET}")
    return lines


def _show(
    shell: Any,
    etype: type[BaseException],
    value: BaseException,
    tb: TracebackType | None,
    tb_offset: int | None = None,
) -> list[str]:
    """Show a bulkmail error as the short box, keeping its traceback for ``%tb``."""
    if isinstance(value, BulkmailError):
        stb = error_lines(value)
    else:  # not ours (set_custom_exc is given only BulkmailError): the usual traceback
        stb = list(shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset))
    # IPython hands a custom handler the error and shows nothing itself: keep the error
    # where %tb and %debug look for it, then send it as the cell's error output (the
    # kernel's _showtraceback marks the cell failed, so "Run all" stops as before).
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
    shell._showtraceback(etype, value, stb)
    return stb


def _one_line_warnings(previous: Callable[..., None]) -> Callable[..., None]:
    """Return a ``warnings.showwarning`` that prints bulkmail's warnings as their message only."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not issubclass(category, RecipientsSkippedWarning):
            previous(message, category, filename, lineno, file, line)
            return
        out = file if file is not None else sys.stderr
        if out is not None:
            out.write(f"{message}\n")

    show.bulkmail = True  # type: ignore[attr-defined]
    return show


def install_error_display(shell: Any = None) -> bool:
    """Show bulkmail's errors in this IPython shell as one short box; True if installed.

    Does nothing outside IPython, or where another custom exception handler is already
    set (it is left alone: a tool that set one has its reasons).
    """
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    current = tuple(getattr(shell, "custom_exceptions", ()) or ())
    if current and current != (BulkmailError,):
        return False
    shell.set_custom_exc((BulkmailError,), _show)
    if not getattr(warnings.showwarning, "bulkmail", False):
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
    return True

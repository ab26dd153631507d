"""The Jinja sandbox templates run in: its filters, recipient values, and error messages.

Every template part compiles in one of two sandboxed environments (HTML with
autoescaping, plain text without) that know the ``default``, ``salutation`` and
``date`` filters, look up dict keys before attributes, and print None as nothing.
``row_to_context`` turns a pandas row into plain Python values for them, and
``_template_error`` turns any Jinja error into a ``TemplateError`` that names the
template, part, line, variable and recipient. Compiling
(:mod:`~bulkmail_kernel.compose.templates`) and rendering
(:mod:`~bulkmail_kernel.compose.render`) both use what is here.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import numpy as np
import pandas as pd
from jinja2 import nodes, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError, safe_range

from bulkmail_kernel.compose import limits
from bulkmail_kernel.config import DEFAULT_LANGUAGE, SUPPORTED_LANGUAGES, local_timezone
from bulkmail_kernel.exceptions import TemplateError

_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


# --------------------------------------------------------------------------- filters


def _plain(value: Any) -> Any:
    """Turn a pandas/numpy cell into a plain Python value (NaN/NA/NaT become None)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.datetime64):
        stamp = pd.Timestamp(value)
        return None if stamp is pd.NaT else stamp.to_pydatetime()
    if isinstance(value, pd.Timedelta):
        return value.to_pytimedelta()
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def row_to_context(row: Mapping[str, Any] | pd.Series) -> dict[str, Any]:
    """Return a recipient row as a plain dict, with pandas NaN/NA/Timestamp made None/datetime."""
    items = row.items()
    return {str(k): _plain(v) for k, v in items}


def _is_empty(value: Any) -> bool:
    if value is None or isinstance(value, jinja2.Undefined):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    return value is pd.NA or value is pd.NaT


def default_filter(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Return ``default_value`` when the value is undefined, None, NaN or an empty string."""
    if _is_empty(value) or (boolean and not value):
        return default_value
    return value


def _language(ctx: Context | None, explicit: str | None) -> str:
    if explicit:
        return explicit
    if ctx is not None:
        for key in ("template_language", "language"):
            value = ctx.get(key)
            if isinstance(value, str) and value in SUPPORTED_LANGUAGES:
                return value
    return DEFAULT_LANGUAGE


def salutation(
    row: Mapping[str, Any], language: str | None = None, gender: str | None = None
) -> str:
    """Return a formal greeting for a recipient by language and gender, neutral when unknown."""
    if not isinstance(row, Mapping):
        raise TypeError("salutation expects the recipient row: write {{ recipient | salutation }}")
    lang = language or DEFAULT_LANGUAGE
    first = (row.get("first_name") or "").strip() if not _is_empty(row.get("first_name")) else ""
    last = (row.get("last_name") or "").strip() if not _is_empty(row.get("last_name")) else ""
    patr = (row.get("patronymic") or "").strip() if not _is_empty(row.get("patronymic")) else ""
    sex = gender or row.get("gender")
    sex = sex if sex in ("m", "f") else None
    full = " ".join(p for p in (first, last) if p)
    if lang == "ru":
        given = " ".join(p for p in (first, patr) if p) or full
        if sex == "m" and given:
            return f"Уважаемый {given}"
        if sex == "f" and given:
            return f"Уважаемая {given}"
        return f"Здравствуйте, {given}" if given else "Здравствуйте"
    if lang == "en":
        if sex and last:
            return f"Dear {'Mr' if sex == 'm' else 'Ms'} {last}"
        return f"Dear {full}" if full else "Dear customer"
    if lang == "cs":
        # The Czech vocative (Nováku) needs a morphology table; the nominative is accepted.
        if sex and last:
            return f"Vážený pane {last}" if sex == "m" else f"Vážená paní {last}"
        return f"Vážená/ý {full}" if full else "Dobrý den"
    if sex and last:
        return f"Vážený pán {last}" if sex == "m" else f"Vážená pani {last}"
    return f"Vážená/ý {full}" if full else "Dobrý deň"


@pass_context
def _salutation_filter(
    ctx: Context, row: Mapping[str, Any], language: str | None = None, gender: str | None = None
) -> str:
    return salutation(row, _language(ctx, language), gender)


_MONTHS_EN = (
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
)


def format_date(value: Any, language: str | None = None, fmt: str | None = None) -> str:
    """Return a date as the language writes it: sk/cs 1. 7. 2025, ru 01.07.2025, en 1 July 2025."""
    value = _plain(value)
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        # Stored times are UTC; the reader lives in the analyst's zone.
        value = value.astimezone(ZoneInfo(local_timezone()))
    if not isinstance(value, dt.date):
        raise TypeError(f"date filter got {type(value).__name__} {value!r}, not a date")
    if fmt:
        return value.strftime(fmt)
    lang = language or DEFAULT_LANGUAGE
    if lang == "ru":
        return f"{value.day:02d}.{value.month:02d}.{value.year}"
    if lang == "en":
        return f"{value.day} {_MONTHS_EN[value.month - 1]} {value.year}"
    return f"{value.day}. {value.month}. {value.year}"


@pass_context
def _date_filter(
    ctx: Context, value: Any, fmt: str | None = None, language: str | None = None
) -> str:
    return format_date(value, _language(ctx, language), fmt)


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with dict keys looked up first and the render limits of :mod:`.limits`.

    Every call, filter, loop step, ``~`` and ``*``/``**``/``%``/``+`` goes through a hook
    that checks the current recipient's time and size budget.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        tree = limits.LimitTransformer().visit(tree)
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Apply ``left <operator> right``, refusing results past the render limits."""
        budget = limits.current()
        if budget is not None:
            limits.check_binop(budget, operator, left, right)
        result = super().call_binop(context, operator, left, right)
        if budget is not None:
            limits.check_result(budget, result, f"the {operator} operator")
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``obj`` from a template within the time, size and nesting limits."""
        budget = limits.current()
        if budget is None:
            return super().call(context, obj, *args, **kwargs)
        limits.check_call(budget, obj, args, kwargs)
        budget.depth += 1
        try:
            if budget.depth > limits.MAX_CALL_DEPTH:
                raise limits.RenderLimitExceeded(
                    "depth",
                    f"macros call each other more than {limits.MAX_CALL_DEPTH} deep "
                    "(a macro that calls itself without end?)",
                )
            result = super().call(context, obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        limits.check_result(budget, result, "a call")
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        # The stock lookup tries getattr first and pays for an AttributeError on every
        # dict access in a loop; a dict key is data, never an attribute, so it is safe.
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _make_env(autoescape: bool) -> SandboxedEnvironment:
    env = _Sandbox(
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        # None (from NaN cells) prints as nothing; every printed value counts on the budget.
        finalize=limits.finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["default"] = default_filter
    env.filters["d"] = default_filter
    env.filters["salutation"] = _salutation_filter
    env.filters["date"] = _date_filter
    for name, func in list(env.filters.items()):
        if name not in limits.UNLIMITED_FILTERS:
            env.filters[name] = limits.limited_filter(name, func)
    env.filters["_bm_loop"] = limits.loop_filter
    env.filters["_bm_concat"] = limits.concat_filter
    env.globals["range"] = _range
    env.globals["lipsum"] = limits.lipsum
    return env


def _range(*args: int) -> range:
    # The sandbox's range refuses more than 100,000 items; loops over it step the budget.
    budget = limits.current()
    if budget is not None:
        budget.tick("the template runs too long")
    return safe_range(*args)


_HTML_ENV = _make_env(autoescape=True)
_PLAIN_ENV = _make_env(autoescape=False)


# --------------------------------------------------------------------------- errors


def _error_line(exc: BaseException, filename: str) -> int | None:
    line = getattr(exc, "lineno", None)
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _template_error(
    exc: Exception, template: str, part: str, *, recipient: str = "", line: int | None = None
) -> TemplateError:
    variable = None
    if isinstance(exc, jinja2.UndefinedError):
        match = _UNDEFINED_NAME.search(str(exc))
        variable = (match.group(1) or match.group(2)) if match else None
        what = f"variable {variable!r} is undefined"
        todo = (
            f"add a {variable!r} column to the recipients or pass it in values=..., "
            f"or write {{{{ {variable} | default('') }}}}"
        )
    elif isinstance(exc, SecurityError):
        what = f"sandbox violation: {exc}"
        todo = "templates may only use plain values, filters and loops"
    elif isinstance(exc, jinja2.TemplateSyntaxError):
        what = f"syntax error: {exc.message}"
        todo = "fix the template text"
    else:
        what = f"{type(exc).__name__}: {exc}"
        todo = "check the values this line uses"
    where = f"template {template!r}, {part}" + (f", line {line}" if line else "")
    who = f" (recipient {recipient})" if recipient else ""
    return TemplateError(
        f"{where}: {what}{who}: {todo}",
        template=template,
        part=part,
        line=line,
        variable=variable,
        recipient=recipient or None,
        reason=what,
    )

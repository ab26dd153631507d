"""Render limits: how long one message may take to render and how large it may grow.

Templates and pasted HTML come from anywhere, and Jinja is a small programming
language: nested ``range`` loops can run for minutes and ``'x' * 10**9`` allocates a
gigabyte in one step. The sandbox of :mod:`~bulkmail_kernel.compose.sandbox` calls the
hooks here on every loop step, call, ``~``, ``*``/``**``/``%``/``+``, printed value and
filter that can grow its input (``default``, ``date``, ``upper``... are left alone),
with a :class:`RenderBudget` for the message being rendered (set by
:func:`~bulkmail_kernel.compose.render.render` for each recipient):

- time: every hook compares the clock with the deadline, so a render stops within one
  step of the limit (``BULKMAIL_RENDER_TIMEOUT_S``);
- size: an operation that would build a value larger than the message may be is
  refused *before* it runs (a repeat count, a width, a power, a format width), every
  result is measured after, and all printed output, in macros and ``{% set %}`` blocks
  too, counts as it is made against a work allowance of ``WORK_FACTOR`` times
  ``BULKMAIL_RENDER_MAX_BYTES``; each finished part is then held to the limit exactly,
  all parts of the message together.

A breach raises :class:`RenderLimitExceeded`, which ``render`` turns into a
``TemplateError`` naming the recipient, the template and the limit.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from functools import update_wrapper
from typing import Any

from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.utils import _PassArg, generate_lorem_ipsum, pass_context
from jinja2.visitor import NodeTransformer
from markupsafe import Markup, soft_str

#: Printed output, counted wherever it is produced (macros, set blocks, loops), may reach
#: this many times the message limit: values are built and then printed, macros nest.
WORK_FACTOR = 8
#: Printed values check the deadline each time this many more bytes (and values) are out.
CHECK_EVERY = 1 << 16
#: A loop over a list or tuple this short is checked once, not on every step.
SHORT_LOOP = 1000
#: Macro calls nested deeper than this are a runaway recursion, not a layout.
MAX_CALL_DEPTH = 64
#: What one item of a list is counted as: its pointer, and more than one character when
#: printed ("1, "). A list may therefore hold an eighth of the limit in items.
ITEM_BYTES = 8
#: Filters that work word by word in Python (slow on long text, whatever they return)
#: and how many bytes of budget each input character costs.
SLOW_FILTERS = {"urlize": 40, "title": 4, "striptags": 4, "wordcount": 4}
#: Integers wider than this many bits are refused (they cannot be printed anyway).
MAX_INT_BITS = 1 << 16

_CURRENT: ContextVar[RenderBudget | None] = ContextVar("bulkmail_render_budget", default=None)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


class RenderLimitExceeded(Exception):
    """A render ran past its time limit or would have grown past its size limit."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(detail)
        #: ``"time"``, ``"size"`` or ``"depth"``.
        self.limit = limit
        self.detail = detail


class RenderBudget:
    """What one message may still spend: a deadline and a number of bytes."""

    __slots__ = (
        "checkpoint",
        "clock",
        "deadline",
        "depth",
        "max_bytes",
        "max_work",
        "output",
        "parts",
        "timeout_s",
        "work",
    )

    def __init__(
        self, timeout_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_work = max_bytes * WORK_FACTOR
        self.clock = clock
        self.deadline = clock() + timeout_s
        #: Bytes printed anywhere so far, plus one per printed value.
        self.work = 0
        #: When work passes this, the hot paths call checkpoint_reached().
        self.checkpoint = min(CHECK_EVERY, self.max_work)
        #: Bytes of the message rendered so far, all parts together (at most: see stream).
        self.output = 0
        self.parts: list[str] = []
        #: How deep calls from the template are nested now.
        self.depth = 0

    def tick(self, what: str) -> None:
        """Stop the render when the deadline has passed; ``what`` says what was running."""
        if self.clock() > self.deadline:
            raise RenderLimitExceeded("time", what)

    def need(self, size: int, what: str) -> None:
        """Refuse a value of ``size`` bytes or items when it exceeds the message limit."""
        if size > self.max_bytes:
            raise RenderLimitExceeded("size", f"{what} would make {size:,} characters")

    def spend(self, size: int) -> None:
        """Count ``size`` printed bytes against the work allowance."""
        self.work += size
        if self.work > self.max_work:
            raise RenderLimitExceeded(
                "size", f"the template prints more than {self.max_work:,} bytes"
            )

    def checkpoint_reached(self) -> None:
        """Check the work allowance and the deadline; set the next checkpoint."""
        self.spend(0)
        self.tick("the template prints for too long")
        self.checkpoint = min(self.work + CHECK_EVERY, self.max_work)

    def stream(self, part: str) -> None:
        """Count one rendered part (subject, HTML, text, SMS) against the message size."""
        self.parts.append(part)
        # UTF-8 takes at most 4 bytes a character: encode to count exactly only when
        # that bound says the message may be over the limit.
        self.output += len(part) if part.isascii() else 4 * len(part)
        if self.output > self.max_bytes:
            self.output = sum(len(p.encode("utf-8", "surrogatepass")) for p in self.parts)
            if self.output > self.max_bytes:
                raise RenderLimitExceeded(
                    "size", f"the message grows past {self.max_bytes:,} bytes"
                )


def current() -> RenderBudget | None:
    """Return the budget of the message being rendered in this context, if any."""
    return _CURRENT.get()


def activate(budget: RenderBudget) -> Any:
    """Make ``budget`` the current one; pass the returned token to :func:`deactivate`."""
    return _CURRENT.set(budget)


def deactivate(token: Any) -> None:
    """Restore the budget that was current before :func:`activate`."""
    _CURRENT.reset(token)


def measure(value: Any, limit: int) -> int:
    """Return about how many characters ``value`` prints as, counting no further than ``limit``.

    Lists may share members (``[a, a]`` nested 30 times prints a gigabyte from a few
    bytes of memory), so containers are walked item by item, not trusted by length.
    """
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, _CONTAINERS):
        return 8
    total = 0
    stack: list[Any] = [value]
    while stack and total <= limit:
        item = stack.pop()
        # Each item prints at least its quotes or brackets and a ", " separator.
        if isinstance(item, str):
            total += len(item) + 4
        elif isinstance(item, dict):
            total += 4 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            total += 4 + 2 * len(item)
            stack.extend(item)
        else:
            total += 8
    return total


def _sized(value: Any) -> int:
    return (
        len(value) if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) else 0
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --------------------------------------------------------------------------- operators


def check_binop(budget: RenderBudget, operator: str, left: Any, right: Any) -> None:
    """Refuse ``left <operator> right`` before it runs when its result would be too large."""
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise RenderLimitExceeded("size", "multiplying such large numbers")
            return
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, str | bytes | list | tuple) and isinstance(count, int):
                weight = 1 if isinstance(seq, str | bytes) else ITEM_BYTES
                budget.need(len(seq) * max(count, 0) * weight, f"repeating a value {count:,} times")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        if right > 0 and abs(left) > 1 and left.bit_length() * right > MAX_INT_BITS:
            raise RenderLimitExceeded(
                "size", f"a power with exponent {right:,} would have too many digits"
            )
    elif operator == "%" and isinstance(left, str):
        check_percent(budget, left, right)
    elif operator == "+":
        budget.need(_sized(left) + _sized(right), "joining two values")


def check_percent(budget: RenderBudget, fmt: str, args: Any) -> None:
    """Refuse ``fmt % args`` when a width or precision, or the arguments, are too large."""
    values = args if isinstance(args, tuple) else (args,)
    fields = 0
    for match in _PERCENT_SPEC.finditer(fmt):
        fields += 1
        for number in match.groups():
            if number == "*":
                for value in values:
                    budget.need(_int(value), "a '*' width in a % format")
            elif number:
                budget.need(int(number), f"the width {number} in a % format")
    biggest = max((measure(v, budget.max_bytes) for v in _values(args)), default=0)
    budget.need(len(fmt) + fields * biggest, "a % format")


def _values(args: Any) -> Iterable[Any]:
    if isinstance(args, tuple):
        return args
    if isinstance(args, dict):
        return args.values()
    return (args,)


def check_format(budget: RenderBudget, fmt: str, args: tuple[Any, ...], kwargs: Any) -> None:
    """Refuse ``fmt.format(...)`` when a width or precision, or the arguments, are too large."""
    fields = 0
    nested = False
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # the call itself reports the bad format
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        fields += 1
        for number in _NUMBER.findall(spec or ""):
            budget.need(int(number), f"the width {number} in a format")
        nested = nested or "{" in (spec or "")
    values = [*args, *(kwargs.values() if isinstance(kwargs, dict) else ())]
    if len(args) == 1 and isinstance(args[0], dict):
        values += list(args[0].values())  # format_map
    if nested:
        for value in values:
            budget.need(_int(value), "a width given as an argument of format")
    biggest = max((measure(v, budget.max_bytes) for v in values), default=0)
    budget.need(len(fmt) + fields * biggest, "a format")


# --------------------------------------------------------------------------- calls


def _replace_size(text: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(len(new) - len(old), 0)


def check_str_method(
    budget: RenderBudget, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Refuse a string method call (``'x'.center(10**9)``) whose result would be too large."""
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        budget.need(_int(first if first is not None else kwargs.get("width")), f"{name}()")
    elif name == "expandtabs":
        tab = _int(first if first is not None else kwargs.get("tabsize", 8))
        budget.need(len(text) + text.count("\t") * tab, "expandtabs()")
    elif name == "replace":
        budget.need(_replace_size(text, *args[:3]), "replace()")
    elif name == "join" and first is not None:
        size = measure(first, budget.max_bytes) + len(text) * _sized(first)
        budget.need(size, "join()")
    elif name in ("format", "format_map"):
        check_format(budget, text, args, kwargs)
    elif name in ("split", "rsplit", "splitlines"):
        # The list is made in one step: count its items from the separators first.
        sep = first if isinstance(first, str) and first else None
        breaks = "\n\r" if name == "splitlines" else " \t\n\r\x0b\x0c"
        items = text.count(sep) if sep else sum(map(text.count, breaks))
        budget.need((items + 1) * ITEM_BYTES, f"{name}() (a list of {items + 1:,} items)")
    elif name == "translate" and isinstance(first, dict):
        widest = max((_sized(v) for v in first.values()), default=1)
        budget.need(len(text) * max(widest, 1), "translate()")


def check_container_method(
    budget: RenderBudget, owner: Any, name: str, args: tuple[Any, ...]
) -> None:
    """Refuse list/dict/set growth (``l.extend(l)`` in a loop) past the limit; count additions."""
    if name not in ("append", "extend", "insert", "update", "add", "setdefault"):
        return
    added = args[-1] if args else None
    count = _sized(added) if name in ("extend", "update") else 1
    budget.need((len(owner) + count) * ITEM_BYTES, f"{type(owner).__name__}.{name}()")
    # Walking a long list on every extend would itself be the slow loop: count its pointers.
    budget.spend(measure(added, budget.max_bytes) if count < 10_000 else count * 8)


def check_call(
    budget: RenderBudget, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Check one call from a template before it runs."""
    budget.tick("the template calls functions or macros for too long")
    # The sandbox wraps str.format; the wrapper keeps the bound method as __wrapped__.
    inner = getattr(obj, "__wrapped__", obj)
    owner = getattr(inner, "__self__", None)
    name = getattr(inner, "__name__", "")
    if isinstance(owner, str):
        check_str_method(budget, owner, name, args, kwargs)
    elif isinstance(owner, bytes) and name in ("center", "ljust", "rjust", "zfill"):
        budget.need(_int(args[0] if args else kwargs.get("width")), f"bytes.{name}()")
    elif isinstance(owner, list | dict | set):
        check_container_method(budget, owner, name, args)


def check_result(budget: RenderBudget, result: Any, what: str) -> None:
    """Refuse a result larger than the message may be."""
    if isinstance(result, str | bytes):
        budget.need(len(result), what)
    elif isinstance(result, list | tuple):
        budget.need(len(result) * ITEM_BYTES, f"{what} (a list of {len(result):,} items)")


# --------------------------------------------------------------------------- filters


def _filter_growth(budget: RenderBudget, name: str, args: tuple[Any, ...], kwargs: Any) -> None:
    """Refuse a filter call whose width, count or arguments would make too large a result."""
    value = args[0] if args else None
    rest = args[1:]

    def arg(index: int, key: str, default: Any) -> Any:
        return rest[index] if len(rest) > index else kwargs.get(key, default)

    if name in _SERIALISING and isinstance(value, _CONTAINERS):
        budget.need(measure(value, budget.max_bytes), f"the {name} filter")
    text = value if isinstance(value, str) else ""
    if name == "center":
        budget.need(_int(arg(0, "width", 80)), "the center filter's width")
    elif name == "indent":
        width = arg(0, "width", 4)
        per_line = len(width) if isinstance(width, str) else _int(width)
        budget.need(len(text) + per_line * (text.count("\n") + 1), "the indent filter's width")
    elif name == "wordwrap":
        width = max(_int(arg(0, "width", 79)), 1)
        wrap = arg(2, "wrapstring", None)
        lines = len(text) // width + text.count(" ") + text.count("\n") + 1
        budget.need(len(text) + lines * len(wrap or "\n"), "the wordwrap filter")
    elif name == "batch":
        budget.need(_int(arg(0, "linecount", 0)), "the batch filter's count")
    elif name == "slice":
        budget.need(_int(arg(0, "slices", 0)), "the slice filter's count")
    elif name == "replace":
        budget.need(
            _replace_size(text, arg(0, "old", ""), arg(1, "new", ""), arg(2, "count", -1)),
            "the replace filter",
        )
    elif name == "format":
        check_percent(budget, text, tuple(rest) or kwargs)
    elif name == "tojson":
        indent = _int(arg(0, "indent", 0))
        budget.need(measure(value, budget.max_bytes) * (1 + indent), "the tojson filter")
    elif name == "join" and isinstance(value, list | tuple):
        separator = arg(0, "d", "")
        budget.need(
            measure(value, budget.max_bytes) + _sized(separator) * len(value), "the join filter"
        )
    elif name == "truncate":
        budget.need(len(text) + _sized(arg(2, "end", "...")), "the truncate filter")
    elif name in SLOW_FILTERS:
        budget.need(len(text) * SLOW_FILTERS[name], f"the {name} filter on long text")


#: Filters that print their whole input: a container is measured before they run.
_SERIALISING = frozenset(
    {
        "string",
        "pprint",
        "tojson",
        "join",
        "format",
        "xmlattr",
        "urlencode",
        "e",
        "escape",
        "forceescape",
        "safe",
        "list",
        "unique",
        "sum",
        "sort",
        "indent",
        "center",
        "wordwrap",
    }
)
#: Filters whose result is never much larger than their input and that take no count
#: or width: left unwrapped, so the ones every template uses (default, date,
#: salutation) cost nothing extra. Jinja may run them while compiling, on literals only.
UNLIMITED_FILTERS = frozenset(
    {
        *("abs", "attr", "capitalize", "count", "d", "date", "default", "filesizeformat"),
        *("first", "float", "int", "items", "last", "length", "lower", "max", "min"),
        *("random", "reverse", "round", "salutation", "trim", "upper"),
    }
)


def limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Return ``func`` wrapped to check the budget before and after each call.

    The wrapper takes the context, so Jinja never runs it while compiling (constant
    folding would otherwise evaluate ``'x'|center(1000000000)`` with no budget at all).
    """
    pass_arg = _PassArg.from_obj(func)

    def run(context: Context, *args: Any, **kwargs: Any) -> Any:
        budget = _CURRENT.get()
        if budget is not None:
            budget.tick("the template runs too long")
            _filter_growth(budget, name, args, kwargs)
        if pass_arg is _PassArg.context:
            result = func(context, *args, **kwargs)
        elif pass_arg is _PassArg.eval_context:
            result = func(context.eval_ctx, *args, **kwargs)
        elif pass_arg is _PassArg.environment:
            result = func(context.environment, *args, **kwargs)
        else:
            result = func(*args, **kwargs)
        if budget is not None:
            check_result(budget, result, f"the {name} filter")
        return result

    wrapper = update_wrapper(run, func)
    wrapper.__dict__.pop("__wrapped__", None)
    return pass_context(wrapper)


@pass_context
def loop_filter(context: Context, iterable: Any, static_bytes: int = 0) -> Any:
    """Return ``iterable`` stepping through the budget (the ``{% for %}`` hook)."""
    budget = _CURRENT.get()
    if budget is None:
        return iterable
    budget.tick("a loop in the template runs too long")
    if type(iterable) in (list, tuple) and len(iterable) <= SHORT_LOOP:
        # The common loop (a recipient's items) is paid for once, up front: a step costs
        # nothing then, and the steps' own calls, filters and printed values still check.
        budget.work += (static_bytes + 1) * len(iterable)
        if budget.work > budget.checkpoint:
            budget.checkpoint_reached()
        return iterable
    return _budgeted(budget, iterable, static_bytes)


def _budgeted(budget: RenderBudget, iterable: Iterable[Any], static_bytes: int) -> Iterator[Any]:
    # tick() and spend() inlined: this runs for every step of a long loop.
    clock = budget.clock
    deadline = budget.deadline
    for item in iterable:
        if clock() > deadline:
            budget.tick("a loop in the template runs too long")
        # The text between a loop's tags is printed on every step, with no hook of its own.
        budget.work += static_bytes
        if budget.work > budget.max_work:
            budget.spend(0)
        yield item


@pass_context
def concat_filter(context: Context, items: list[Any]) -> str:
    """Join ``a ~ b`` as Jinja does, refusing results past the limit (the ``~`` hook)."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.tick("the template runs too long")
        size = sum(measure(item, budget.max_bytes) for item in items)
        budget.need(size, "joining values with ~")
    # Jinja's markup_join: with autoescape, one Markup item makes the rest escaped.
    if context.eval_ctx.autoescape and any(hasattr(item, "__html__") for item in items):
        return Markup("").join(map(soft_str, items))
    return "".join(map(str, items))


def finalize(value: Any) -> Any:
    """Print None as nothing and count every printed value against the budget."""
    if value is None:
        return ""
    budget = _CURRENT.get()
    if budget is not None:
        cls = type(value)
        if cls is int or cls is float:
            return value
        if cls is str or isinstance(value, str):
            # Inlined: this runs for every printed value. The one per value makes even
            # empty output reach the next checkpoint, where the deadline is checked.
            budget.work += len(value) + 1
            if budget.work > budget.checkpoint:
                budget.checkpoint_reached()
        elif isinstance(value, _CONTAINERS):
            size = measure(value, budget.max_bytes)
            budget.need(size, "printing a list")
            budget.spend(size)
    return value


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Return placeholder text as Jinja's ``lipsum`` does, within the budget."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.need(_int(n) * _int(max) * 12, "lipsum()")
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))


# --------------------------------------------------------------------------- the AST


class LimitTransformer(NodeTransformer):
    """Route every ``{% for %}`` and ``~`` of a parsed template through the budget hooks."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        """Wrap the loop's iterable in the loop hook, telling it the text printed per step."""
        self.generic_visit(node)
        static = 0
        for child in node.body:
            found = [child] if isinstance(child, nodes.TemplateData) else []
            found += list(child.find_all(nodes.TemplateData))
            static += sum(len(data.data) for data in found)
        node.iter = nodes.Filter(
            node.iter, "_bm_loop", [nodes.Const(static)], [], None, None, lineno=node.lineno
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        """Replace ``a ~ b`` by the concat hook."""
        self.generic_visit(node)
        items = nodes.List(list(node.nodes), lineno=node.lineno)
        return nodes.Filter(items, "_bm_concat", [], [], None, None, lineno=node.lineno)

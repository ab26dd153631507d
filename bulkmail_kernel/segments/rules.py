"""Segment rules as data: ``Rule`` (field · operator · value) and ``RuleGroup`` (AND/OR, NOT).

A rule names a column of the recipient frame, one of ``OPERATORS`` and a value of the
shape that operator takes. A group combines rules and groups with ``all`` (AND) or
``any`` (OR) and may be negated (NOT). Both are frozen and round-trip through JSON::

    {"all": [{"field": "language", "op": "one_of", "value": ["sk", "cs"]},
             {"not": {"any": [{"field": "visits", "op": "at_least", "value": 10}]}}]}

Only the shape of a value is checked here, where the rule is built; whether it fits
its column (a number for a number column, a date for a date column) is checked where
the rule meets the frame, in :mod:`bulkmail_kernel.segments.rule_masks`, because only
the frame knows the column's type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from bulkmail_kernel.exceptions import FilterError

#: How an operator takes its value.
Shape = Literal["one", "many", "pair", "days", "none"]
#: A column's kind, as the builder and the masks see it.
Kind = Literal["text", "choice", "number", "date", "bool"]


@dataclass(frozen=True)
class Operator:
    """One operator: its label, the shape of its value and the column kinds it fits."""

    label: str
    shape: Shape
    kinds: tuple[Kind, ...]


_TEXT: tuple[Kind, ...] = ("text", "choice")
OPERATORS: dict[str, Operator] = {
    "is": Operator("is", "one", ("text", "choice", "number", "date", "bool")),
    "is_not": Operator("is not", "one", ("text", "choice", "number", "date", "bool")),
    "one_of": Operator("is one of", "many", ("text", "choice", "number")),
    "not_one_of": Operator("is none of", "many", ("text", "choice", "number")),
    "contains": Operator("contains", "one", _TEXT),
    "starts_with": Operator("starts with", "one", _TEXT),
    "ends_with": Operator("ends with", "one", _TEXT),
    "at_least": Operator("is at least", "one", ("number",)),
    "at_most": Operator("is at most", "one", ("number",)),
    "between": Operator("is between", "pair", ("number", "date")),
    "in_last_days": Operator("is in the last … days", "days", ("date",)),
    "more_than_days_ago": Operator("is more than … days ago", "days", ("date",)),
    "before": Operator("is before", "one", ("date",)),
    "after": Operator("is after", "one", ("date",)),
    "empty": Operator("is empty", "none", ("text", "choice", "number", "date", "bool")),
    "not_empty": Operator("is not empty", "none", ("text", "choice", "number", "date", "bool")),
}
#: Group combinations: "all" is AND, "any" is OR.
MATCHES = ("all", "any")

Scalar = str | int | float | bool | date


def operators_for(kind: Kind) -> list[str]:
    """Return the operator names that fit a column of ``kind``, in the order a menu shows them."""
    return [name for name, op in OPERATORS.items() if kind in op.kinds]


@dataclass(frozen=True)
class Rule:
    """One condition: ``field`` (a frame column) ``op`` (an ``OPERATORS`` key) ``value``.

    The value's shape follows the operator: a scalar (``is``, ``contains``, ``before`` …),
    a tuple (``one_of``), a ``(low, high)`` pair with either end None (``between``), a whole
    number of days (``in_last_days``), or None (``empty``). Dates are ``date`` objects.
    """

    field: str
    op: str
    value: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field.strip():
            raise FilterError(f"rule: {self.field!r} is not a field name", field="rules")
        if self.op not in OPERATORS:
            raise FilterError(
                f"rule on {self.field!r}: unknown operator {self.op!r}; known: "
                f"{', '.join(OPERATORS)}",
                field="rules",
                column=self.field,
            )
        object.__setattr__(self, "value", _value(self, OPERATORS[self.op].shape, self.value))

    def describe(self) -> str:
        """Return the rule in words, e.g. ``language is one of sk, cs``."""
        op = OPERATORS[self.op]
        value = self.value
        if op.shape == "none":
            return f"{self.field} {op.label}"
        if op.shape == "days":
            return f"{self.field} {op.label.replace('…', str(value))}"
        if op.shape == "many":
            return f"{self.field} {op.label} {', '.join(map(str, value))}"
        if op.shape == "pair":
            low, high = value
            return f"{self.field} {op.label} {_word(low)} and {_word(high)}"
        return f"{self.field} {op.label} {_word(value)}"

    def to_dict(self) -> dict[str, Any]:
        """Return the rule as plain JSON types."""
        value = self.value
        value = [_json(v) for v in value] if isinstance(value, tuple) else _json(value)
        out: dict[str, Any] = {"field": self.field, "op": self.op}
        if OPERATORS[self.op].shape != "none":
            out["value"] = value
        return out


@dataclass(frozen=True)
class RuleGroup:
    """Rules and groups combined by ``match`` (``"all"`` = AND, ``"any"`` = OR), NOT if ``negate``.

    A group without rules is no condition at all, whatever its match or negation.
    """

    match: str = "all"
    rules: tuple[Rule | RuleGroup, ...] = ()
    negate: bool = False

    def __post_init__(self) -> None:
        if self.match not in MATCHES:
            raise FilterError(
                f"rule group: match {self.match!r} is neither 'all' (AND) nor 'any' (OR)",
                field="rules",
            )
        if not isinstance(self.negate, bool):
            raise FilterError(f"rule group: negate must be True or False, got {self.negate!r}")
        items = tuple(self.rules) if isinstance(self.rules, list | tuple) else None
        if items is None or not all(isinstance(r, Rule | RuleGroup) for r in items):
            raise FilterError(
                f"rule group: rules must be Rule or RuleGroup items, got {self.rules!r}",
                field="rules",
            )
        object.__setattr__(self, "rules", tuple(r for r in items if not _is_empty(r)))

    @property
    def empty(self) -> bool:
        """Return True when the group holds no rule (it selects everyone)."""
        return not self.rules

    def walk(self) -> list[Rule]:
        """Return every rule in the group and its subgroups, depth first."""
        out: list[Rule] = []
        for item in self.rules:
            out.extend(item.walk() if isinstance(item, RuleGroup) else [item])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"all"|"any": [...]}``, wrapped in ``{"not": ...}`` when negated."""
        body = {self.match: [r.to_dict() for r in self.rules]}
        return {"not": body} if self.negate else body

    @classmethod
    def from_dict(cls, data: Any) -> RuleGroup:
        """Build a group from ``to_dict`` output; a lone rule becomes a group of one."""
        item = _item(data, "rules")
        return item if isinstance(item, RuleGroup) else cls("all", (item,))


def _is_empty(item: Rule | RuleGroup) -> bool:
    return isinstance(item, RuleGroup) and item.empty


def _item(data: Any, where: str) -> Rule | RuleGroup:
    """Build a rule or a group from its JSON form; ``where`` says where it sits, for errors."""
    if isinstance(data, Rule | RuleGroup):
        return data
    if not isinstance(data, Mapping):
        raise FilterError(f"{where}: expected a rule or a group (a mapping), got {data!r}")
    keys = set(data)
    if keys == {"not"}:
        inner = _item(data["not"], f"{where}.not")
        if isinstance(inner, Rule):
            return RuleGroup("all", (inner,), negate=True)
        return RuleGroup(inner.match, inner.rules, negate=not inner.negate)
    if len(keys) == 1 and keys <= set(MATCHES):
        (match,) = keys
        raw = data[match]
        if not isinstance(raw, list | tuple):
            raise FilterError(f"{where}.{match}: expected a list of rules, got {raw!r}")
        items = tuple(_item(r, f"{where}.{match}[{i}]") for i, r in enumerate(raw))
        return RuleGroup(match, items)
    if "field" in keys and "op" in keys and keys <= {"field", "op", "value"}:
        return Rule(data["field"], data["op"], data.get("value"))
    raise FilterError(
        f"{where}: {dict(data)!r} is neither a rule ({{'field', 'op', 'value'}}) nor a group "
        "({'all': [...]}, {'any': [...]}, {'not': ...})",
        field="rules",
    )


def _value(rule: Rule, shape: Shape, value: Any) -> Any:
    where = f"rule {rule.field!r} {OPERATORS[rule.op].label}"
    if shape == "none":
        return None
    if shape == "days":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FilterError(
                f"{where}: give a whole number of days >= 0, got {value!r}",
                field="rules",
                column=rule.field,
            )
        return value
    if shape == "many":
        items = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
        out = tuple(dict.fromkeys(_scalar(where, v, rule) for v in items))
        if not out:
            raise FilterError(
                f"{where}: choose at least one value", field="rules", column=rule.field
            )
        return out
    if shape == "pair":
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise FilterError(
                f"{where}: give two values, the first and the last (either may be empty)",
                field="rules",
                column=rule.field,
            )
        low, high = (None if v in (None, "") else _bound(where, v, rule) for v in value)
        if low is None and high is None:
            raise FilterError(f"{where}: give a first value, a last value or both", field="rules")
        if low is not None and high is not None:
            if isinstance(low, date) != isinstance(high, date):
                raise FilterError(f"{where}: give two dates or two numbers", field="rules")
            if low > high:  # type: ignore[operator]  # both dates or both numbers, checked above
                raise FilterError(
                    f"{where}: the first value {_word(low)} is after the last {_word(high)}",
                    field="rules",
                    column=rule.field,
                )
        return (low, high)
    return _scalar(where, value, rule)


def _bound(where: str, value: Any, rule: Rule) -> float | int | date:
    """Return one end of a range: a number or a date."""
    out = _scalar(where, value, rule)
    if isinstance(out, bool | str):
        raise FilterError(
            f"{where}: {value!r} is neither a number nor a date (YYYY-MM-DD)",
            field="rules",
            column=rule.field,
        )
    return out


def _scalar(where: str, value: Any, rule: Rule) -> Scalar:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, str):
        try:
            # JSON keeps dates as ISO text; a text that is exactly a date is read back as one.
            return date.fromisoformat(value) if _looks_like_date(value) else value
        except ValueError:
            return value
    if isinstance(value, bool | int | float | date):
        return value
    raise FilterError(
        f"{where}: {value!r} is not a text, number, yes/no or date value",
        field="rules",
        column=rule.field,
    )


def _looks_like_date(text: str) -> bool:
    return len(text) == 10 and text[4] == "-" and text[7] == "-" and text[:4].isdigit()


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _word(value: Any) -> str:
    if value is None:
        return "(open)"
    return value.isoformat() if isinstance(value, date) else str(value)

"""The segment spec: ``FilterSpec``, who to write to, as frozen, JSON-serialisable data.

A ``FilterSpec`` lists conditions on the recipient frame (registration days, opt-in,
channel, kind, language, gender, custom attributes as ``AttributeCondition``); every
set field must hold (AND) and a list in one field means any of (OR); ``rules`` adds a
tree of field · operator · value rules with AND/OR groups and NOT
(:mod:`bulkmail_kernel.segments.rules`), which is what the segment builder writes. It is validated
once, where it is built, with the field named in the ``FilterError``, and round-trips
through ``to_json``/``from_json`` unchanged, which is how saved segments store it. This
module only describes a filter; applying it to a frame is
:mod:`bulkmail_kernel.segments.filters`.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

from bulkmail_kernel import config
from bulkmail_kernel.exceptions import FilterError
from bulkmail_kernel.segments.rules import Rule, RuleGroup

CHANNELS = ("email", "phone")
#: Words analysts use for a channel, mapped to the stored value.
CHANNEL_ALIASES = {
    "email": "email",
    "e-mail": "email",
    "mail": "email",
    "phone": "phone",
    "sms": "phone",
}
KINDS = ("personal", "work")
GENDERS = ("m", "f")

# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class AttributeCondition:
    """One condition on a custom attribute: a set of ``values`` or a range ``low``..``high``.

    Ranges are inclusive; an open end is ``None``. Dates in ``values`` are kept as ISO
    strings and range bounds as ``date`` objects, so a spec survives JSON unchanged.
    """

    name: str
    values: tuple[str | int | float | bool, ...] | None = None
    low: float | int | date | None = None
    high: float | int | date | None = None

    @property
    def is_range(self) -> bool:
        """Return True for a range condition, False for a set of values."""
        return self.values is None

    def to_json_value(self) -> Any:
        """Return the condition in the JSON form ``from_json_value`` reads."""
        if self.values is not None:
            return list(self.values)
        return {"min": _json_scalar(self.low), "max": _json_scalar(self.high)}

    @classmethod
    def from_json_value(cls, name: str, raw: Any) -> AttributeCondition:
        """Build a condition from a scalar (equals), a list (in) or ``{"min":, "max":}`` (range)."""
        where = f"attributes.{name}"
        if not isinstance(name, str) or not name:
            raise FilterError(f"attributes: {name!r} is not an attribute name", field="attributes")
        if isinstance(raw, AttributeCondition):
            return raw
        if isinstance(raw, Mapping):
            unknown = set(raw) - {"min", "max"}
            if unknown or not raw:
                raise FilterError(
                    f"{where}: a range is written {{'min': ..., 'max': ...}}, got keys "
                    f"{sorted(map(str, raw))}",
                    field="attributes",
                    attribute=name,
                )
            low = _range_bound(where, raw.get("min"))
            high = _range_bound(where, raw.get("max"))
            if low is None and high is None:
                raise FilterError(
                    f"{where}: a range needs 'min', 'max' or both", field="attributes"
                )
            if low is not None and high is not None:
                if isinstance(low, date) != isinstance(high, date):
                    raise FilterError(
                        f"{where}: 'min' and 'max' must both be numbers or both dates"
                    )
                if low > high:  # type: ignore[operator]
                    raise FilterError(f"{where}: 'min' {low!r} is greater than 'max' {high!r}")
            return cls(name=name, low=low, high=high)
        items = list(raw) if isinstance(raw, list | tuple | set | frozenset) else [raw]
        if not items:
            raise FilterError(
                f"{where}: give at least one value", field="attributes", attribute=name
            )
        values: list[str | int | float | bool] = []
        for item in items:
            if isinstance(item, datetime | date):
                values.append(item.isoformat())
            elif isinstance(item, str | int | float | bool) and item is not None:
                values.append(item)
            else:
                raise FilterError(
                    f"{where}: {item!r} is not a text, number, bool or date value",
                    field="attributes",
                    attribute=name,
                )
        return cls(name=name, values=tuple(values))


def _json_scalar(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _range_bound(where: str, value: Any) -> float | int | date | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FilterError(f"{where}: a range bound must be a number or a date, not {value!r}")
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, int | float | date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise FilterError(
        f"{where}: range bound {value!r} is neither a number nor an ISO date (YYYY-MM-DD)",
        field="attributes",
    )


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _reject_unknown_fields(cls: type[FilterSpec]) -> type[FilterSpec]:
    """Make the generated ``__init__`` raise FilterError, not TypeError, for an unknown field."""
    generated: Callable[..., None] = cls.__init__
    names = {f.name for f in fields(cls)}

    @functools.wraps(generated)
    def __init__(self: FilterSpec, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in names:
                raise FilterError(
                    f"FilterSpec: unknown field {key!r}{_did_you_mean(key, names)}; "
                    f"known fields: {', '.join(sorted(names))}",
                    field=key,
                )
        generated(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_reject_unknown_fields
@dataclass(frozen=True, kw_only=True)
class FilterSpec:
    """Who to write to, as data: every set field must hold (AND), a list means any of (OR).

    Attributes:
        registered_within_days: registered on one of the last N days, today included
            (days counted in the analyst's time zone).
        registered_more_than_days_ago: registered before the day N days ago.
        registered_between: ``(first_day, last_day)``, both inclusive; an open end is None.
        mailing_allowed: True (default) keeps only opted-in points, False only the others,
            None ignores the opt-in. Judged per contact point.
        channel: ``"email"`` or ``"phone"`` (``"sms"`` is accepted and stored as ``"phone"``).
        point_type, kind, language, gender: lists of accepted values.
        attributes: ``{name: condition}`` on custom attributes: a scalar (equals), a list
            (in) or ``{"min": a, "max": b}`` (inclusive range of numbers or dates).
        has_valid_address: True keeps only well-formed addresses, False only broken ones.
        exclude_suppressed: drop addresses on the suppression list (default True).
        one_per_contact: keep one point per contact and channel (default True): the
            preferred one if it passes the filter, else the lowest contact_point_id.
        rules: a ``RuleGroup`` (or its JSON form, ``{"all": [...]}``) of field · operator ·
            value rules with AND/OR groups and NOT, as the segment builder makes them;
            it must hold too (AND with the fields above).

    An empty list is the same as None (no condition).

    """

    registered_within_days: int | None = None
    registered_more_than_days_ago: int | None = None
    registered_between: tuple[date | None, date | None] | None = None
    mailing_allowed: bool | None = True
    channel: str | None = None
    point_type: tuple[str, ...] | None = None
    kind: tuple[str, ...] | None = None
    language: tuple[str, ...] | None = None
    gender: tuple[str, ...] | None = None
    #: Given as a mapping; stored as a tuple of conditions sorted by name (hashable, frozen).
    attributes: Mapping[str, Any] | tuple[AttributeCondition, ...] = ()
    has_valid_address: bool | None = None
    exclude_suppressed: bool = True
    one_per_contact: bool = True
    #: Given as a RuleGroup or its JSON mapping; stored as a RuleGroup, or None when empty.
    rules: RuleGroup | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("registered_within_days", "registered_more_than_days_ago"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise FilterError(
                    f"{name}: expected a whole number of days >= 0 or None, got {value!r}",
                    field=name,
                )
        put("registered_between", _between(self.registered_between))
        for name in ("mailing_allowed", "has_valid_address"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise FilterError(
                    f"{name}: expected True, False or None, got {getattr(self, name)!r}", field=name
                )
        for name in ("exclude_suppressed", "one_per_contact"):
            if not isinstance(getattr(self, name), bool):
                raise FilterError(
                    f"{name}: expected True or False, got {getattr(self, name)!r}", field=name
                )
        if self.channel is not None:
            key = self.channel.strip().lower() if isinstance(self.channel, str) else None
            if key not in CHANNEL_ALIASES:
                raise FilterError(
                    "channel: expected 'email' or 'phone' ('sms' means phone), "
                    f"got {self.channel!r}",
                    field="channel",
                )
            put("channel", CHANNEL_ALIASES[key])
        put("point_type", _str_list("point_type", self.point_type, None))
        put("kind", _str_list("kind", self.kind, KINDS))
        put("language", _str_list("language", self.language, config.SUPPORTED_LANGUAGES))
        put("gender", _str_list("gender", self.gender, GENDERS))
        put("attributes", _attributes(self.attributes))
        if self.rules is not None:
            group = RuleGroup.from_dict(self.rules)
            put("rules", None if group.empty else group)

    # ------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain JSON types (dates as ISO strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "attributes":
                value = {c.name: c.to_json_value() for c in value}
            elif f.name == "rules":
                value = None if value is None else _group(self).to_dict()
            elif f.name == "registered_between" and value is not None:
                value = [_json_scalar(v) for v in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FilterSpec:
        """Build a spec from ``to_dict`` output (or a hand-written subset of it)."""
        if not isinstance(data, Mapping):
            raise FilterError(
                f"FilterSpec: expected a mapping of fields, got {type(data).__name__}"
            )
        return cls(**dict(data))

    def to_json(self) -> str:
        """Return the spec as a JSON string."""
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FilterSpec:
        """Build a spec from ``to_json`` output."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise FilterError(f"FilterSpec JSON: {exc}; pass the output of to_json()") from exc
        return cls.from_dict(data)

    def as_rules(self) -> FilterSpec:
        """Return the same filter with every condition on a column written as rules.

        The registration days, channel, point type, kind, language, gender and custom
        attributes become rules of one ``all`` group (with ``rules``, if any, inside it);
        opt-in, address validity, suppression and one-per-contact stay settings. This is
        how the segment builder opens a segment saved before rules existed.
        """
        items: list[Rule | RuleGroup] = []
        if self.registered_within_days is not None:
            items.append(Rule("registered_at", "in_last_days", self.registered_within_days))
        if self.registered_more_than_days_ago is not None:
            days = self.registered_more_than_days_ago
            items.append(Rule("registered_at", "more_than_days_ago", days))
        if self.registered_between is not None:
            items.append(Rule("registered_at", "between", self.registered_between))
        if self.channel is not None:
            items.append(Rule("channel", "is", self.channel))
        for name in ("point_type", "kind", "language", "gender"):
            values = getattr(self, name)
            if values is not None:
                items.append(Rule(name, "one_of", values))
        for cond in _conditions(self):
            if cond.values is not None:
                items.append(Rule(cond.name, "one_of", cond.values))
            else:
                items.append(Rule(cond.name, "between", (cond.low, cond.high)))
        if self.rules is not None:
            group = _group(self)
            if not items:
                items = [group]
            else:
                items.extend(group.rules if group.match == "all" and not group.negate else [group])
        top = items[0] if len(items) == 1 and isinstance(items[0], RuleGroup) else None
        return FilterSpec(
            mailing_allowed=self.mailing_allowed,
            has_valid_address=self.has_valid_address,
            exclude_suppressed=self.exclude_suppressed,
            one_per_contact=self.one_per_contact,
            rules=top or RuleGroup("all", tuple(items)),
        )

    def attribute(self, name: str) -> AttributeCondition | None:
        """Return the condition on attribute ``name``, if any."""
        for cond in _conditions(self):
            if cond.name == name:
                return cond
        return None


def _conditions(spec: FilterSpec) -> tuple[AttributeCondition, ...]:
    """Return ``spec.attributes`` as the tuple of conditions ``__post_init__`` stored."""
    attrs = spec.attributes
    # The field also accepts a mapping on input; after __post_init__ it is always a tuple.
    assert isinstance(attrs, tuple)
    return attrs


def _group(spec: FilterSpec) -> RuleGroup:
    """Return ``spec.rules`` as the RuleGroup ``__post_init__`` stored (only call when set)."""
    rules = spec.rules
    assert isinstance(rules, RuleGroup)
    return rules


def _between(value: Any) -> tuple[date | None, date | None] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise FilterError(
            f"registered_between: expected (first_day, last_day), got {value!r}",
            field="registered_between",
        )
    out: list[date | None] = []
    for item in value:
        if item is None or (isinstance(item, date) and not isinstance(item, datetime)):
            out.append(item)
        elif isinstance(item, datetime):
            out.append(item.date())
        elif isinstance(item, str):
            try:
                out.append(date.fromisoformat(item))
            except ValueError as exc:
                raise FilterError(
                    f"registered_between: {item!r} is not an ISO date (YYYY-MM-DD)",
                    field="registered_between",
                ) from exc
        else:
            raise FilterError(
                f"registered_between: {item!r} is not a date", field="registered_between"
            )
    if out[0] is None and out[1] is None:
        return None
    if out[0] is not None and out[1] is not None and out[0] > out[1]:
        raise FilterError(
            f"registered_between: first day {out[0]} is after last day {out[1]}",
            field="registered_between",
        )
    return (out[0], out[1])


def _str_list(name: str, value: Any, allowed: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset):
        raise FilterError(f"{name}: expected a list of text values, got {value!r}", field=name)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise FilterError(f"{name}: {item!r} is not a text value", field=name)
        if allowed is not None and item not in allowed:
            raise FilterError(
                f"{name}: {item!r} is not one of {', '.join(allowed)}", field=name, value=item
            )
        if item not in out:
            out.append(item)
    return tuple(out) or None


def _attributes(value: Any) -> tuple[AttributeCondition, ...]:
    if value is None:
        return ()
    if isinstance(value, tuple) and all(isinstance(c, AttributeCondition) for c in value):
        conds = list(value)
    elif isinstance(value, Mapping):
        conds = [AttributeCondition.from_json_value(k, v) for k, v in value.items()]
    else:
        raise FilterError(
            f"attributes: expected {{name: condition}}, got {value!r}", field="attributes"
        )
    names = [c.name for c in conds]
    if len(set(names)) != len(names):
        raise FilterError("attributes: an attribute is given twice", field="attributes")
    return tuple(sorted(conds, key=lambda c: c.name))

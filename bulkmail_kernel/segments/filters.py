"""Segments: a declarative filter over the recipient frame, and saved mailing groups.

A ``FilterSpec`` is a frozen, JSON-serialisable description of who to write to.
``filter_recipients`` turns it into vectorised boolean masks over the frame that
``contacts.contacts_frame()`` returns (no ``eval``, no ``DataFrame.query``: the
spec is data, never code). Conditions are combined with AND; a list in one field
means OR within that field.

Saved segments live in the ``segments``/``segment_members`` tables: the spec as
JSON plus a snapshot of the contact point ids it matched when saved, so a group
can be mailed again exactly as it was, or re-evaluated on today's data.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, Literal, NamedTuple, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.contacts.frame import FRAME_COLUMNS
from bulkmail_kernel.db import Database, Segment, SegmentMember, open_database, utcnow
from bulkmail_kernel.exceptions import FilterError, SegmentError

log = logging.getLogger("bulkmail")

#: The columns of ``contacts_frame()``; any other column is a custom attribute.
BUILTIN_COLUMNS = FRAME_COLUMNS

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

_EMAIL_RE = r"[^@\s]+@[^@\s]+\.[^@\s.]+"
_E164_RE = r"\+[1-9][0-9]{6,14}"


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

    # ------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain JSON types (dates as ISO strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "attributes":
                value = {c.name: c.to_json_value() for c in value}
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


# --------------------------------------------------------------------------- filtering


def _require(frame: pd.DataFrame, column: str, why: str) -> pd.Series:
    if column not in frame.columns:
        raise FilterError(
            f"the recipient frame has no column {column!r}, needed for {why}: "
            "pass the frame contacts_frame() returns",
            field=why,
            column=column,
        )
    return frame[column]


def _isin(col: pd.Series, values: Iterable[Any]) -> np.ndarray:
    """Return where ``col`` is one of ``values``; on categories, look up the codes (fast)."""
    values = list(values)
    if isinstance(col.dtype, pd.CategoricalDtype):
        wanted = np.flatnonzero(col.dtype.categories.isin(values))
        codes = col.array.codes
        if len(wanted) <= 4:
            # A few integer comparisons beat a gather over the whole column.
            mask = np.zeros(len(col), dtype=bool)
            for code in wanted:
                mask |= codes == code
            return mask
        # One extra False slot at the end: code -1 (missing) indexes it.
        lookup = np.zeros(len(col.dtype.categories) + 1, dtype=bool)
        lookup[wanted] = True
        return lookup[codes]
    return col.isin(values).to_numpy(dtype=bool, na_value=False)


def _bool(col: pd.Series) -> np.ndarray:
    return col.to_numpy(dtype=bool, na_value=False)


def resolve_today(today: date | datetime | str | None = None, tz: str | None = None) -> date:
    """Return ``today`` as a date in the analyst's time zone (the clock's date when None)."""
    zone = _zone(tz)
    if isinstance(today, str):
        # Notebook parameters arrive as text ("2026-11-23").
        try:
            return date.fromisoformat(today)
        except ValueError:
            raise FilterError(
                f"today: {today!r} is not a date; write it as YYYY-MM-DD", field="today"
            ) from None
    if today is None:
        return datetime.now(zone).date()
    if isinstance(today, datetime):
        return today.astimezone(zone).date() if today.tzinfo else today.date()
    if isinstance(today, date):
        return today
    raise FilterError(f"today: expected a date, got {today!r}", field="today")


def _zone(tz: str | None) -> ZoneInfo:
    name = tz or config.local_timezone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise FilterError(
            f"time zone {name!r} is unknown: set BULKMAIL_TZ to an IANA name such as "
            "Europe/Bratislava",
            field="tz",
        ) from exc


def _day_start(day: date, zone: ZoneInfo, col: pd.Series) -> pd.Timestamp:
    """Return local midnight of ``day`` in the column's time zone (UTC) or naive UTC."""
    start = pd.Timestamp(datetime(day.year, day.month, day.day, tzinfo=zone)).tz_convert("UTC")
    return start if getattr(col.dtype, "tz", None) is not None else start.tz_localize(None)


def _attribute_mask(frame: pd.DataFrame, cond: AttributeCondition, zone: ZoneInfo) -> np.ndarray:
    col = frame[cond.name]
    where = f"attributes.{cond.name}"
    dtype = col.dtype
    is_dt = pd.api.types.is_datetime64_any_dtype(dtype)
    is_num = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if cond.values is not None:
        values = list(cond.values)
        if is_dt:
            try:
                days = [date.fromisoformat(str(v)) for v in values]
            except ValueError as exc:
                raise FilterError(
                    f"{where} holds dates: give ISO dates (YYYY-MM-DD), got {values!r}",
                    field="attributes",
                    attribute=cond.name,
                ) from exc
            local = col.dt.tz_convert(zone) if col.dt.tz is not None else col
            return _bool(local.dt.normalize().dt.tz_localize(None).isin(pd.to_datetime(days)))
        if pd.api.types.is_bool_dtype(dtype):
            if not all(isinstance(v, bool) for v in values):
                raise FilterError(f"{where} is yes/no: give True or False, got {values!r}")
            return _isin(col, values)
        if is_num:
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise FilterError(
                    f"{where} holds numbers: give numbers, got {values!r}",
                    field="attributes",
                    attribute=cond.name,
                )
            return _isin(col, values)
        if not all(isinstance(v, str) for v in values):
            raise FilterError(
                f"{where} holds text: give text values, got {values!r}",
                field="attributes",
                attribute=cond.name,
            )
        return _isin(col, values)
    bounds = [b for b in (cond.low, cond.high) if b is not None]
    if is_dt:
        if not all(isinstance(b, date) for b in bounds):
            raise FilterError(f"{where} holds dates: give a range of dates", field="attributes")
        mask = col.notna().to_numpy(copy=True)
        if cond.low is not None:
            mask &= _bool(col >= _day_start(cond.low, zone, col))  # type: ignore[arg-type]
        if cond.high is not None:
            end = _day_start(cond.high, zone, col) + pd.Timedelta(days=1)  # type: ignore[arg-type]
            mask &= _bool(col < end)
        return mask
    if is_num:
        if any(isinstance(b, date) for b in bounds):
            raise FilterError(f"{where} holds numbers: give a range of numbers", field="attributes")
        mask = col.notna().to_numpy(copy=True)
        if cond.low is not None:
            mask &= _bool(col >= cond.low)
        if cond.high is not None:
            mask &= _bool(col <= cond.high)
        return mask
    raise FilterError(
        f"{where} holds {dtype}: a range (min/max) needs numbers or dates; "
        "give a list of values instead",
        field="attributes",
        attribute=cond.name,
    )


def recipient_mask(
    frame: pd.DataFrame,
    spec: FilterSpec,
    *,
    today: date | datetime | str | None = None,
    tz: str | None = None,
) -> np.ndarray:
    """Return the boolean mask of the rows of ``frame`` that ``spec`` selects."""
    mask = np.zeros(len(frame), dtype=bool)
    mask[_selected_rows(frame, spec, today=today, tz=tz)] = True
    return mask


def _selected_rows(
    frame: pd.DataFrame,
    spec: FilterSpec,
    *,
    today: date | datetime | str | None,
    tz: str | None,
) -> np.ndarray:
    """Return the positions (ascending) of the rows ``spec`` selects."""
    if not isinstance(spec, FilterSpec):
        raise FilterError(f"expected a FilterSpec, got {type(spec).__name__}")
    zone = _zone(tz)
    mask = np.ones(len(frame), dtype=bool)

    if spec.attributes:
        available = [c for c in frame.columns if c not in BUILTIN_COLUMNS]
        for cond in _conditions(spec):
            if cond.name not in available:
                raise FilterError(
                    f"attributes: {cond.name!r} is not an attribute of these contacts"
                    f"{_did_you_mean(cond.name, available)}; available attributes: "
                    f"{', '.join(map(str, available)) or '(none)'}",
                    field="attributes",
                    attribute=cond.name,
                    available=available,
                )

    if spec.channel is not None:
        mask &= _isin(_require(frame, "channel", "channel"), [spec.channel])
    for name in ("point_type", "kind", "language", "gender"):
        values = getattr(spec, name)
        if values is not None:
            mask &= _isin(_require(frame, name, name), values)
    if spec.mailing_allowed is not None:
        allowed = _bool(_require(frame, "mailing_allowed", "mailing_allowed"))
        mask &= allowed if spec.mailing_allowed else ~allowed
    if spec.exclude_suppressed:
        mask &= ~_bool(_require(frame, "suppressed", "exclude_suppressed"))

    dates = (
        spec.registered_within_days,
        spec.registered_more_than_days_ago,
        spec.registered_between,
    )
    if any(d is not None for d in dates):
        col = _require(frame, "registered_at", "registered_*")
        day = resolve_today(today, tz)
        if spec.registered_within_days is not None:
            first = day - pd.Timedelta(days=spec.registered_within_days)
            mask &= _bool(col >= _day_start(first, zone, col))
        if spec.registered_more_than_days_ago is not None:
            cutoff = day - pd.Timedelta(days=spec.registered_more_than_days_ago)
            mask &= _bool(col < _day_start(cutoff, zone, col))
        if spec.registered_between is not None:
            lo, hi = spec.registered_between
            if lo is not None:
                mask &= _bool(col >= _day_start(lo, zone, col))
            if hi is not None:
                mask &= _bool(col < _day_start(hi, zone, col) + pd.Timedelta(days=1))

    if spec.has_valid_address is not None:
        valid = _valid_addresses(frame)
        mask &= valid if spec.has_valid_address else ~valid

    for cond in _conditions(spec):
        mask &= _attribute_mask(frame, cond, zone)

    rows = np.flatnonzero(mask)
    return _one_per_contact(frame, rows) if spec.one_per_contact else rows


def _valid_addresses(frame: pd.DataFrame) -> np.ndarray:
    address = _require(frame, "address", "has_valid_address")
    channel = _require(frame, "channel", "has_valid_address")
    is_email = _isin(channel, ["email"])
    is_phone = _isin(channel, ["phone"])
    email_ok = address.str.fullmatch(_EMAIL_RE).to_numpy(dtype=bool, na_value=False)
    phone_ok = address.str.fullmatch(_E164_RE).to_numpy(dtype=bool, na_value=False)
    return (is_email & email_ok) | (is_phone & phone_ok)


def _one_per_contact(frame: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Keep one selected row per (contact, channel): preferred first, else the lowest point id.

    Only rows that passed the filter compete, so a contact whose preferred point is
    not allowed is still reached through an allowed one.
    """
    if rows.size == 0:
        return rows
    contact = _require(frame, "contact_id", "one_per_contact").to_numpy()[rows].astype(np.int64)
    channel = _require(frame, "channel", "one_per_contact")
    if isinstance(channel.dtype, pd.CategoricalDtype):
        chan_codes = channel.array.codes[rows].astype(np.int64) + 1
        n_chan = len(channel.cat.categories) + 1
    else:
        codes, uniques = pd.factorize(channel.to_numpy()[rows], use_na_sentinel=True)
        chan_codes = codes.astype(np.int64) + 1
        n_chan = len(uniques) + 1
    point = _require(frame, "contact_point_id", "one_per_contact").to_numpy()[rows]
    point = point.astype(np.int64)
    preferred = _bool(_require(frame, "is_preferred", "one_per_contact"))[rows]

    if rows.size > 1 and bool(np.all(contact[1:] >= contact[:-1])):
        # contacts_frame() is ordered by contact: number the runs instead of hashing.
        rank = np.empty(rows.size, dtype=np.int64)
        rank[0] = 0
        np.cumsum(contact[1:] != contact[:-1], out=rank[1:])
        group = rank * n_chan + chan_codes
        n_groups = (int(rank[-1]) + 1) * n_chan
    else:
        group, uniques = pd.factorize(contact * n_chan + chan_codes)
        n_groups = len(uniques)
    # Preferred points win, then the lowest id: shift preferred ids far below every other.
    offset = int(point.max()) - int(point.min()) + 1
    score = np.where(preferred, point - offset, point)
    best = np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, group, score)
    return rows[score == best[group]]


def filter_recipients(
    frame: pd.DataFrame,
    spec: FilterSpec,
    *,
    today: date | datetime | str | None = None,
    tz: str | None = None,
) -> pd.DataFrame:
    """Return the rows of the recipient frame that ``spec`` selects, with the same columns.

    Args:
        frame: the recipient frame (``contacts_frame()``), one row per contact point.
        spec: the filter.
        today: the day that relative day counts start from (default: today in ``tz``).
        tz: IANA time zone days are counted in (default ``config.local_timezone()``).

    Raises:
        FilterError: a condition names an unknown attribute or does not fit its column.

    """
    return frame.take(_selected_rows(frame, spec, today=today, tz=tz))


# --------------------------------------------------------------------------- saved segments


@dataclass(frozen=True)
class SegmentInfo:
    """A saved segment as stored: its spec and the size and time of its snapshot."""

    id: int
    name: str
    description: str
    spec: FilterSpec
    members: int
    snapshot_at: datetime | None
    created_at: datetime
    updated_at: datetime


class LoadedSegment(NamedTuple):
    """What ``load_segment`` returns: ``spec, info, member_ids = load_segment(name)``."""

    spec: FilterSpec
    info: SegmentInfo
    member_ids: pd.Index


def _database(db: Database | None, url: str | None) -> Database:
    return db if db is not None else open_database(url)


def _check_name(name: Any, what: str = "segment name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise SegmentError(f"{what}: give a non-empty text, got {name!r}", segment=name)
    name = name.strip()
    if len(name) > 200:
        raise SegmentError(f"{what}: {name[:40]!r}... is longer than 200 characters")
    return name


def _get(session: sa.orm.Session, name: str) -> Segment:
    seg = session.scalars(sa.select(Segment).where(Segment.name == name)).one_or_none()
    if seg is None:
        known = session.scalars(sa.select(Segment.name).order_by(Segment.name)).all()
        raise SegmentError(
            f"segment {name!r} does not exist{_did_you_mean(name, known)}; "
            f"saved segments: {', '.join(known) or '(none)'}; see list_segments()",
            segment=name,
        )
    return seg


def _info(session: sa.orm.Session, seg: Segment) -> SegmentInfo:
    count = session.scalar(
        sa.select(sa.func.count())
        .select_from(SegmentMember)
        .where(SegmentMember.segment_id == seg.id)
    )
    return SegmentInfo(
        id=seg.id,
        name=seg.name,
        description=seg.description,
        spec=FilterSpec.from_dict(seg.spec),
        members=int(count or 0),
        snapshot_at=seg.snapshot_at,
        created_at=seg.created_at,
        updated_at=seg.updated_at,
    )


_CHUNK = 50_000


def _insert_members(session: sa.orm.Session, segment_id: int, ids: np.ndarray) -> None:
    """Store the snapshot in bulk: COPY on PostgreSQL, chunked executemany elsewhere."""
    conn = session.connection()
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        import psycopg

        raw = conn.connection.driver_connection
        try:
            with raw.cursor() as cur:  # type: ignore[union-attr]
                copy_sql = "COPY segment_members (segment_id, contact_point_id) FROM STDIN"
                with cur.copy(copy_sql) as copy:
                    for start in range(0, len(ids), _CHUNK):
                        chunk = ids[start : start + _CHUNK].tolist()
                        copy.write("".join(f"{segment_id}\t{p}\n" for p in chunk))
        except psycopg.errors.IntegrityError as exc:
            # Raw COPY bypasses SQLAlchemy's wrapping; wrap it the same way for the caller.
            raise sa.exc.IntegrityError("COPY segment_members", None, exc) from exc
        return
    # DeclarativeBase types __table__ as FromClause; a declarative model's is a Table.
    table = cast(sa.Table, SegmentMember.__table__)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK].tolist()
        conn.execute(
            sa.insert(table), [{"segment_id": segment_id, "contact_point_id": p} for p in chunk]
        )


def save_segment(
    name: str,
    spec: FilterSpec,
    frame: pd.DataFrame,
    *,
    db: Database | None = None,
    url: str | None = None,
    description: str = "",
    today: date | datetime | str | None = None,
    replace: bool = False,
) -> SegmentInfo:
    """Save ``spec`` as segment ``name`` with a snapshot of the contact points it selects now.

    Raises:
        SegmentError: the name is taken (pass ``replace=True`` to overwrite) or the
            frame holds contact points that are not in this database.

    """
    name = _check_name(name)
    members = filter_recipients(frame, spec, today=today)
    ids = np.unique(members["contact_point_id"].to_numpy(dtype=np.int64))
    database = _database(db, url)
    try:
        with database.session() as s:
            seg = s.scalars(sa.select(Segment).where(Segment.name == name)).one_or_none()
            if seg is not None and not replace:
                raise SegmentError(
                    f"segment {name!r} already exists: choose another name, pass replace=True "
                    "to overwrite it, or rename_segment()/delete_segment() it first",
                    segment=name,
                )
            now = utcnow()
            if seg is None:
                seg = Segment(name=name, created_at=now)
                s.add(seg)
            else:
                s.execute(sa.delete(SegmentMember).where(SegmentMember.segment_id == seg.id))
            seg.description = description
            seg.spec = spec.to_dict()
            seg.snapshot_at = now
            seg.updated_at = now
            s.flush()
            _insert_members(s, seg.id, ids)
            info = _info(s, seg)
    except sa.exc.IntegrityError as exc:
        raise SegmentError(
            f"segment {name!r}: cannot store its {len(ids)} members in {database.url}: "
            f"{exc.orig}; was the frame read from this database (contacts_frame(db))? "
            "If the name was taken meanwhile, choose another",
            segment=name,
        ) from exc
    log.info("saved segment %r with %d members", name, info.members)
    return info


def list_segments(*, db: Database | None = None, url: str | None = None) -> pd.DataFrame:
    """Return the saved segments: name, description, members, snapshot and change times, spec."""
    database = _database(db, url)
    counts = (
        sa.select(SegmentMember.segment_id, sa.func.count().label("members"))
        .group_by(SegmentMember.segment_id)
        .subquery()
    )
    query = (
        sa.select(Segment, sa.func.coalesce(counts.c.members, 0))
        .outerjoin(counts, counts.c.segment_id == Segment.id)
        .order_by(Segment.name)
    )
    with database.session() as s:
        rows = [
            {
                "id": seg.id,
                "name": seg.name,
                "description": seg.description,
                "members": int(n),
                "snapshot_at": seg.snapshot_at,
                "created_at": seg.created_at,
                "updated_at": seg.updated_at,
                "spec": json.dumps(seg.spec, ensure_ascii=False, sort_keys=True),
            }
            for seg, n in s.execute(query)
        ]
    out = pd.DataFrame(
        rows,
        columns=[
            "id",
            "name",
            "description",
            "members",
            "snapshot_at",
            "created_at",
            "updated_at",
            "spec",
        ],
    )
    for col in ("snapshot_at", "created_at", "updated_at"):
        out[col] = pd.to_datetime(out[col], utc=True)
    return out.astype({"id": "int64", "members": "int64"})


def load_segment(name: str, *, db: Database | None = None, url: str | None = None) -> LoadedSegment:
    """Return the spec, the stored info and the snapshot's contact point ids of segment ``name``."""
    database = _database(db, url)
    with database.session() as s:
        seg = _get(s, _check_name(name))
        ids = s.scalars(
            sa.select(SegmentMember.contact_point_id)
            .where(SegmentMember.segment_id == seg.id)
            .order_by(SegmentMember.contact_point_id)
        ).all()
        info = _info(s, seg)
    member_ids = pd.Index(np.asarray(ids, dtype=np.int64), name="contact_point_id")
    return LoadedSegment(info.spec, info, member_ids)


def segment_recipients(
    name: str,
    frame: pd.DataFrame,
    *,
    mode: Literal["snapshot", "reevaluate"] = "snapshot",
    today: date | datetime | str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the recipients of segment ``name``: its frozen members or its spec on ``frame``.

    ``mode="snapshot"`` returns the rows of ``frame`` whose contact point was a member
    when the segment was saved (members deleted since are missing, and logged);
    ``mode="reevaluate"`` applies the saved spec to ``frame`` as of ``today``.
    """
    if mode not in ("snapshot", "reevaluate"):
        raise SegmentError(f"mode: expected 'snapshot' or 'reevaluate', got {mode!r}", segment=name)
    spec, info, member_ids = load_segment(name, db=db, url=url)
    if mode == "reevaluate":
        return filter_recipients(frame, spec, today=today)
    points = _require(frame, "contact_point_id", "segment_recipients")
    mask = points.isin(member_ids).to_numpy()
    missing = len(member_ids) - int(mask.sum())
    if missing > 0:
        log.warning(
            "segment %r: %d of its %d members are not in the frame (deleted since %s?)",
            name,
            missing,
            len(member_ids),
            info.snapshot_at,
        )
    return frame.take(np.flatnonzero(mask))


def rename_segment(
    name: str, new_name: str, *, db: Database | None = None, url: str | None = None
) -> SegmentInfo:
    """Rename segment ``name`` to ``new_name``."""
    name, new_name = _check_name(name), _check_name(new_name, "new segment name")
    database = _database(db, url)
    with database.session() as s:
        seg = _get(s, name)
        if new_name != name:
            taken = s.scalar(sa.select(Segment.id).where(Segment.name == new_name))
            if taken is not None:
                raise SegmentError(
                    f"cannot rename segment {name!r}: {new_name!r} already exists; "
                    "choose another name or delete_segment() that one first",
                    segment=new_name,
                )
            seg.name = new_name
            seg.updated_at = utcnow()
            s.flush()
        return _info(s, seg)


def delete_segment(name: str, *, db: Database | None = None, url: str | None = None) -> None:
    """Delete segment ``name`` and its snapshot (the contacts themselves stay)."""
    database = _database(db, url)
    with database.session() as s:
        seg = _get(s, _check_name(name))
        # Explicit, so it does not depend on SQLite's foreign_keys pragma being on.
        s.execute(sa.delete(SegmentMember).where(SegmentMember.segment_id == seg.id))
        s.delete(seg)
    log.info("deleted segment %r", name)

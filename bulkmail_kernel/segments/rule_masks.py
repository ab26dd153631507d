"""Rules meet the frame: a ``RuleGroup`` becomes one numpy boolean mask, column by column.

Each rule is judged against its column's kind (``column_kind``): text and choice
(category) columns compare text, number columns numbers, date columns local calendar
days in the analyst's time zone. On a category column the text operators run over the
few categories and then look the codes up, so a million rows cost one gather. A rule
that does not fit its column (``contains`` on a number, a date for a number) raises a
``FilterError`` naming the rule, the column's kind and what to give instead.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bulkmail_kernel.exceptions import FilterError
from bulkmail_kernel.segments.column_masks import at_or_after, codes_mask
from bulkmail_kernel.segments.column_masks import before as stamps_before
from bulkmail_kernel.segments.rules import OPERATORS, Kind, Rule, RuleGroup

_KIND_WORDS = {
    "text": "text",
    "choice": "a list of choices",
    "number": "numbers",
    "date": "dates",
    "bool": "yes/no",
}


def column_kind(col: pd.Series) -> Kind:
    """Return how rules read ``col``: text, choice (category), number, date or bool."""
    dtype = col.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "date"
    if isinstance(dtype, pd.CategoricalDtype):
        return "choice"
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    return "text"


def group_mask(frame: pd.DataFrame, group: RuleGroup, *, zone: ZoneInfo, today: date) -> np.ndarray:
    """Return the rows ``group`` selects, as a boolean array over ``frame``."""
    if group.empty:
        return np.ones(len(frame), dtype=bool)
    masks = (
        group_mask(frame, item, zone=zone, today=today)
        if isinstance(item, RuleGroup)
        else rule_mask(frame, item, zone=zone, today=today)
        for item in group.rules
    )
    combined = next(masks).copy()
    for mask in masks:
        if group.match == "all":
            combined &= mask
        else:
            combined |= mask
    return ~combined if group.negate else combined


def rule_mask(frame: pd.DataFrame, rule: Rule, *, zone: ZoneInfo, today: date) -> np.ndarray:
    """Return the rows ``rule`` selects, as a boolean array over ``frame``."""
    if rule.field not in frame.columns:
        import difflib

        close = difflib.get_close_matches(rule.field, [str(c) for c in frame.columns], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FilterError(
            f"rule {rule.describe()!r}: these contacts have no field {rule.field!r}{hint}",
            field="rules",
            column=rule.field,
        )
    col = frame[rule.field]
    kind = column_kind(col)
    op = OPERATORS[rule.op]
    if kind not in op.kinds:
        fits = ", ".join(
            OPERATORS[name].label for name in OPERATORS if kind in OPERATORS[name].kinds
        )
        raise FilterError(
            f"rule {rule.describe()!r}: {rule.field!r} holds {_KIND_WORDS[kind]}, and "
            f"{op.label!r} does not apply to it; use one of: {fits}",
            field="rules",
            column=rule.field,
        )
    if rule.op == "empty":
        return _missing(col, kind)
    if rule.op == "not_empty":
        return ~_missing(col, kind)
    if kind == "date":
        return _date_mask(col, rule, zone, today)
    if kind == "number":
        return _number_mask(col, rule)
    if kind == "bool":
        value = _typed(rule, rule.value, bool)
        # A numpy bool column has no missing values: compare its own memory, no conversion.
        values = (
            col.to_numpy()
            if col.dtype == np.bool_
            else col.to_numpy(dtype=bool, na_value=not value)
        )
        is_value = values == value
        return is_value if rule.op == "is" else ~is_value
    return _text_mask(col, rule, kind)


# --------------------------------------------------------------------------- per kind


def _missing(col: pd.Series, kind: Kind) -> np.ndarray:
    missing = col.isna().to_numpy(dtype=bool, copy=True)
    if kind == "text":
        missing |= (col == "").to_numpy(dtype=bool, na_value=False)
    elif kind == "choice":
        categories = col.cat.categories
        if (categories == "").any():
            missing |= _codes_in(col, np.asarray(categories == ""))
    return missing


def _codes_in(col: pd.Series, hits: np.ndarray) -> np.ndarray:
    """Return where a category column's value is one of the categories ``hits`` marks."""
    return codes_mask(col, hits)


def _text(rule: Rule, value: Any) -> str:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise FilterError(f"rule {rule.describe()!r}: give text", field="rules", column=rule.field)
    return str(value)


def _text_mask(col: pd.Series, rule: Rule, kind: Kind) -> np.ndarray:
    if rule.op in ("is", "is_not", "one_of", "not_one_of"):
        values = rule.value if isinstance(rule.value, tuple) else (rule.value,)
        wanted = [_text(rule, v) for v in values]
        if kind == "choice":
            hit = _codes_in(col, np.asarray(col.cat.categories.isin(wanted)))
        else:
            hit = col.isin(wanted).to_numpy(dtype=bool, na_value=False)
        return hit if rule.op in ("is", "one_of") else ~hit
    needle = _text(rule, rule.value)
    if kind == "choice":
        categories = pd.Series(col.cat.categories.astype(str), dtype="str")
        return _codes_in(col, _text_test(categories, rule.op, needle))
    return _text_test(col, rule.op, needle)


def _text_test(values: pd.Series, op: str, needle: str) -> np.ndarray:
    """Return where ``values`` contain / start with / end with ``needle``, ignoring case.

    On Arrow-backed text (pandas 3's ``str``) this runs in Arrow: lower-casing and a
    plain substring test there is twice as fast as Arrow's case-insensitive (RE2) match
    and ten times pandas' ``str.lower`` on a million names.
    """
    needle = needle.lower()
    try:
        arrow = pa.array(values.array)
    except (TypeError, ValueError, pa.ArrowException):
        arrow = None
    if arrow is not None and (
        pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)
    ):
        lowered = pc.utf8_lower(arrow)
        test = {"contains": pc.match_substring, "starts_with": pc.starts_with}.get(op, pc.ends_with)
        hits = test(lowered, needle)
        return pc.fill_null(hits, False).to_numpy(zero_copy_only=False)
    lowered_py = values.astype(object).str.lower()
    if op == "contains":
        out = lowered_py.str.contains(needle, regex=False)
    elif op == "starts_with":
        out = lowered_py.str.startswith(needle)
    else:
        out = lowered_py.str.endswith(needle)
    return out.to_numpy(dtype=bool, na_value=False)


_NEEDS: dict[type, tuple[str, str]] = {
    bool: ("yes/no", "yes or no"),
    float: ("numbers", "a number"),
    date: ("dates", "a date"),
}


def _typed(rule: Rule, value: Any, kind: type) -> Any:
    """Return ``value`` if it is of ``kind`` (float: any number), else say what to give."""
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is date:
        ok = isinstance(value, date)
    else:
        ok = isinstance(value, bool)
    if not ok:
        holds, give = _NEEDS[kind]
        raise FilterError(
            f"rule {rule.describe()!r}: {rule.field!r} holds {holds}: give {give}, got {value!r}",
            field="rules",
            column=rule.field,
        )
    return value


def _number_mask(col: pd.Series, rule: Rule) -> np.ndarray:
    value = rule.value
    numbers = col.to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        if rule.op in ("is", "is_not", "one_of", "not_one_of"):
            values = value if isinstance(value, tuple) else (value,)
            wanted = [_typed(rule, v, float) for v in values]
            hit = np.isin(numbers, np.asarray(wanted, dtype=float))
            return hit if rule.op in ("is", "one_of") else ~hit
        if rule.op == "at_least":
            return numbers >= _typed(rule, value, float)
        if rule.op == "at_most":
            return numbers <= _typed(rule, value, float)
        low, high = value
        mask = ~np.isnan(numbers)
        if low is not None:
            mask &= numbers >= _typed(rule, low, float)
        if high is not None:
            mask &= numbers <= _typed(rule, high, float)
        return mask


def _day_start(day: date, zone: ZoneInfo, col: pd.Series) -> pd.Timestamp:
    """Return local midnight of ``day`` in the column's time zone (UTC) or naive UTC."""
    start = pd.Timestamp(day.year, day.month, day.day, tzinfo=zone).tz_convert("UTC")
    return start if getattr(col.dtype, "tz", None) is not None else start.tz_localize(None)


def _date_mask(col: pd.Series, rule: Rule, zone: ZoneInfo, today: date) -> np.ndarray:
    def on_or_after(day: date) -> np.ndarray:
        return at_or_after(col, _day_start(day, zone, col))

    def before(day: date) -> np.ndarray:
        return stamps_before(col, _day_start(day, zone, col))

    value = rule.value
    if rule.op == "in_last_days":
        return on_or_after(today - timedelta(days=value))
    if rule.op == "more_than_days_ago":
        return before(today - timedelta(days=value))
    if rule.op == "between":
        low, high = (None if v is None else _typed(rule, v, date) for v in value)
        mask = col.notna().to_numpy(dtype=bool, copy=True)
        if low is not None:
            mask &= on_or_after(low)
        if high is not None:
            mask &= before(high + timedelta(days=1))
        return mask
    day = _typed(rule, value, date)
    if rule.op == "before":
        return before(day)
    if rule.op == "after":
        return on_or_after(day + timedelta(days=1))
    on_day = on_or_after(day) & before(day + timedelta(days=1))
    return on_day if rule.op == "is" else ~on_day

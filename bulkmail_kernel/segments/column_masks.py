"""Column masks read straight from the frame's own memory: category codes, datetime ticks, flags.

The filter and the rule masks both ask "which rows hold one of these categories", "which
rows fall on or after this instant" and "which rows are flagged". pandas answers through
its general machinery (a datetime comparison checks units, zones and NaT; a scalar
compared with int8 codes widens the whole column to int64 first). These helpers answer
on numpy views of the arrays the frame already holds (``Categorical.codes``,
``DatetimeArray.asi8``, a numpy ``bool`` column), so nothing is converted or cached:
a frame edited in place is read as it is now, and a million rows cost a few
integer comparisons each.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: Above this many codes to compare, one gather through a lookup table is cheaper.
_MAX_COMPARES = 4
#: Nanoseconds in one tick of each datetime64 unit pandas stores.
_NS_PER_TICK = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_NAT = np.iinfo(np.int64).min


def codes_mask(col: pd.Series, hits: np.ndarray) -> np.ndarray:
    """Return where a category column holds one of the categories ``hits`` marks.

    ``hits`` is a boolean array over ``col.cat.categories``; a missing value (code -1)
    is never a hit. A few wanted (or a few unwanted) categories are compared as
    integers of the codes' own type; more go through one lookup-table gather.
    """
    codes = col.array.codes
    hits = np.asarray(hits, dtype=bool)
    wanted = np.flatnonzero(hits)
    # Comparing against not-wanted codes needs one more test for missing (-1).
    unwanted = np.flatnonzero(~hits)
    if len(wanted) <= _MAX_COMPARES and len(wanted) <= len(unwanted) + 1:
        return _any_equal(codes, wanted)
    if len(unwanted) + 1 <= _MAX_COMPARES:
        out = np.greater_equal(codes, codes.dtype.type(0))
        scratch = np.empty(len(codes), dtype=bool)
        for code in unwanted:
            np.not_equal(codes, codes.dtype.type(code), out=scratch)
            np.logical_and(out, scratch, out=out)
        return out
    lookup = np.zeros(len(hits) + 1, dtype=bool)  # code -1 (missing) reads the last slot
    lookup[: len(hits)] = hits
    return lookup[codes]


def _any_equal(codes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    out = np.zeros(len(codes), dtype=bool)
    if len(wanted) == 0:
        return out
    # A scalar of the codes' own type: an np.intp would widen int8 codes to int64 first.
    np.equal(codes, codes.dtype.type(wanted[0]), out=out)
    if len(wanted) > 1:
        scratch = np.empty(len(codes), dtype=bool)
        for code in wanted[1:]:
            np.equal(codes, codes.dtype.type(code), out=scratch)
            np.logical_or(out, scratch, out=out)
    return out


def flags(col: pd.Series) -> np.ndarray:
    """Return a yes/no column as a numpy bool array, missing as False (a view when it can)."""
    if col.dtype == np.bool_:
        return col.to_numpy()
    return col.to_numpy(dtype=bool, na_value=False)


def at_or_after(col: pd.Series, start: pd.Timestamp) -> np.ndarray:
    """Return where a datetime column is ``>= start`` (missing: False), as ``col >= start``."""
    ticks = _ticks(col, start)
    if ticks is None:
        return (col >= start).to_numpy(dtype=bool, na_value=False)
    values, limit = ticks
    # NaT is the smallest int64, below every limit: it is never at or after one.
    return np.greater_equal(values, limit)


def before(col: pd.Series, end: pd.Timestamp) -> np.ndarray:
    """Return where a datetime column is ``< end`` (missing: False), as ``col < end``."""
    ticks = _ticks(col, end)
    if ticks is None:
        return (col < end).to_numpy(dtype=bool, na_value=False)
    values, limit = ticks
    out = np.less(values, limit)
    # NaT is the smallest int64: below every limit, yet not a date before it.
    np.logical_and(out, np.not_equal(values, _NAT), out=out)
    return out


def _ticks(col: pd.Series, stamp: pd.Timestamp) -> tuple[np.ndarray, Any] | None:
    """Return the column's int64 ticks and ``stamp`` rounded up to a tick, or None.

    Rounding up keeps both comparisons exact: ``t >= s`` and ``t < s`` hold for a
    whole tick ``t`` exactly when they hold against ``ceil(s)``. None (any other
    dtype, a zone mismatch, a stamp beyond nanoseconds) leaves the answer to pandas.
    """
    dtype = col.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        unit, aware = dtype.unit, True
    elif isinstance(dtype, np.dtype) and dtype.kind == "M":
        unit, aware = np.datetime_data(dtype)[0], False
    else:
        return None
    if unit not in _NS_PER_TICK or aware != (stamp.tz is not None):
        return None
    try:
        ns = stamp.as_unit("ns").value
    except (OverflowError, ValueError):
        return None
    values = col.array.asi8
    return values, values.dtype.type(-(-ns // _NS_PER_TICK[unit]))

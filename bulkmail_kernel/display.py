"""Frames an analyst reads: the data as it is, shown the way a person reads it.

``ReadableFrame`` is a DataFrame (same values, same dtypes: datetimes stay datetimes
for analysis) whose notebook display differs from pandas' default: times in the local
zone to the second, reasons in full (pandas cuts text at 50 characters), status
labels, a share as a percentage, an unthrottled rate (``inf``) as "unlimited", and
blank cells where pandas writes ``NaT``, ``None`` or ``<NA>``. Only the display
changes, and pandas' global options are left alone.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

import pandas as pd

from bulkmail_kernel import config

#: How a status reads in a table; a value not listed is shown as it is.
STATUS_LABELS = {
    # messages
    "queued": "queued",
    "sending": "sending now",
    "sent": "sent",
    "deferred": "deferred (will retry)",
    "failed": "failed",
    "unknown": "unknown (check before resending)",
    "removed": "removed from the queue",
    # campaigns
    "draft": "draft",
    "registered": "registered",
    "scheduled": "scheduled",
    "paused": "paused",
    "stopped": "stopped",
    "cancelled": "cancelled",
    "finished": "finished",
    "late": "late (waits for resume)",
}
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Columns holding a fraction of a whole, shown as a percentage (campaign_report's share).
PERCENT_COLUMNS = frozenset({"share"})
#: Longer frames show their first and last rows, as pandas does.
_MAX_ROWS = 60
_EDGE_ROWS = 10


class ReadableFrame(pd.DataFrame):
    """A DataFrame shown in local time to the second, text in full, labels, blanks for missing."""

    @property
    def _constructor(self) -> type[ReadableFrame]:
        # A filtered or sorted report (frame[frame.status == "failed"]) reads the same way.
        return ReadableFrame

    def shown(self) -> pd.DataFrame:
        """Return the text a person reads for every cell, as a plain DataFrame of strings."""
        return display_cells(self)

    def _edges(self) -> tuple[pd.DataFrame, str]:
        """Return the rows to show (all, or the first and last) and a note on what is left out."""
        if len(self) <= _MAX_ROWS:
            return display_cells(self), ""
        half = _EDGE_ROWS // 2
        part = pd.concat([pd.DataFrame(self.head(half)), pd.DataFrame(self.tail(half))])
        note = f"{len(self):,} rows × {self.shape[1]} columns (the first and last {half} shown)"
        return display_cells(part), note

    def _repr_html_(self) -> str | None:
        cells, note = self._edges()
        with pd.option_context("display.max_colwidth", None):
            table = cells.to_html(escape=True, na_rep="", max_rows=None, max_cols=None)
        return table + (f"<p>{html.escape(note)}</p>" if note else "")

    def __repr__(self) -> str:
        cells, note = self._edges()
        with pd.option_context("display.max_colwidth", None, "display.width", None):
            text = cells.to_string(na_rep="")
        return text + (f"\n\n[{note}]" if note else "")


def readable(frame: pd.DataFrame) -> ReadableFrame:
    """Return ``frame`` as a ``ReadableFrame`` (same values, dtypes and attrs)."""
    out = ReadableFrame(frame)
    out.attrs.update(frame.attrs)
    return out


def display_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Return each cell of ``frame`` as the text a person reads (blank when missing)."""
    shown = pd.DataFrame(index=_index_text(frame.index))
    for position, name in enumerate(frame.columns):
        shown.insert(
            position, name, _column_text(frame.iloc[:, position], str(name)), allow_duplicates=True
        )
    return shown


def _index_text(index: pd.Index) -> pd.Index:
    """Return a time index (a timeline's bins) as local text, a status index as its labels."""
    if isinstance(index, pd.DatetimeIndex):
        return pd.Index(_column_text(index.to_series(), ""), name=index.name)
    if index.name == "status" and not isinstance(index, pd.MultiIndex):
        return pd.Index(_column_text(index.to_series(), "status"), name=index.name)
    return index


def _column_text(col: pd.Series, name: str) -> list[str]:
    """Return one column's cells as text."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        local = col.dt.tz_convert(config.local_zone())
        return local.dt.strftime(_TIME_FORMAT).fillna("").tolist()
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        return col.dt.strftime(_TIME_FORMAT).fillna("").tolist()
    if name in PERCENT_COLUMNS and pd.api.types.is_float_dtype(col.dtype):
        return ["" if pd.isna(v) else f"{v * 100:.1f} %" for v in col.tolist()]
    labels = STATUS_LABELS if name == "status" else {}
    return [_cell_text(v, labels) for v in col.astype(object).tolist()]


def _cell_text(value: Any, labels: dict[str, str]) -> str:
    """Return one cell as text: blank when missing, a label for a status."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, datetime):
        stamp = value.astimezone(config.local_zone()) if value.tzinfo else value
        return stamp.strftime(_TIME_FORMAT)
    if isinstance(value, float):
        if value == float("inf"):
            return "unlimited"  # a rate of inf: sent unthrottled
        return format(value, ".6g")  # 0.1 * 3 reads 0.3, not 0.30000000000000004
    text = str(value)
    return labels.get(text, text)

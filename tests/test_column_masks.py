"""Column masks on the frame's own memory: same answers as pandas, and no stale answers."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from test_segments import make_frame

from bulkmail_kernel.segments.column_masks import at_or_after, before, codes_mask
from bulkmail_kernel.segments.filters import filter_recipients
from bulkmail_kernel.segments.spec import FilterSpec

TODAY = date(2025, 6, 30)
TZ = "Europe/Bratislava"
SPEC = FilterSpec(
    channel="email",
    language=["sk", "cs"],
    registered_within_days=365,
    attributes={"customer_type": ["retail", "vip"]},
    one_per_contact=False,
)


def _by_pandas(frame: pd.DataFrame) -> list[int]:
    """The SPEC written as plain pandas, independently of the package's masks."""
    start = pd.Timestamp("2024-06-30", tz=TZ).tz_convert("UTC")  # 365 days before TODAY
    keep = (
        (frame["channel"] == "email")
        & frame["language"].isin(["sk", "cs"])
        & (frame["registered_at"] >= start)
        & frame["customer_type"].isin(["retail", "vip"])
        & frame["mailing_allowed"]
        & ~frame["suppressed"]
    )
    return frame.loc[keep.to_numpy(dtype=bool, na_value=False), "contact_point_id"].tolist()


def _ids(frame: pd.DataFrame, spec: FilterSpec = SPEC) -> list[int]:
    return filter_recipients(frame, spec, today=TODAY, tz=TZ)["contact_point_id"].tolist()


def test_a_frame_edited_in_place_is_read_as_it_is_now() -> None:
    frame = make_frame(3_000, seed=5)
    assert _ids(frame) == _by_pandas(frame)
    rows = frame.index[:40]
    frame.loc[rows, "language"] = "ru"
    frame.loc[frame.index[40:80], "suppressed"] = True
    frame.loc[frame.index[80:120], "mailing_allowed"] = False
    frame.loc[frame.index[120:160], "registered_at"] = pd.Timestamp("2020-01-01", tz="UTC")
    frame.loc[frame.index[160:200], "customer_type"] = "wholesale"
    frame.loc[frame.index[200:240], "channel"] = "phone"
    frame.loc[frame.index[240:260], "registered_at"] = pd.NaT
    edited = _ids(frame)
    assert edited == _by_pandas(frame)
    assert not set(edited) & set(frame["contact_point_id"].iloc[:260])
    # And back: rows the edits had left out come back in.
    frame.loc[frame.index[:260], "language"] = "sk"
    frame.loc[frame.index[:260], "suppressed"] = False
    frame.loc[frame.index[:260], "mailing_allowed"] = True
    frame.loc[frame.index[:260], "registered_at"] = pd.Timestamp("2025-06-01", tz="UTC")
    frame.loc[frame.index[:260], "customer_type"] = "vip"
    frame.loc[frame.index[:260], "channel"] = "email"
    again = _ids(frame)
    assert again == _by_pandas(frame)
    assert set(frame["contact_point_id"].iloc[:260]) <= set(again)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("aware", [True, False])
def test_datetime_limits_match_pandas_with_missing_values(unit: str, aware: bool) -> None:
    rng = np.random.default_rng(3)
    seconds = rng.integers(1_600_000_000, 1_800_000_000, 2_000)
    stamps = pd.Series(pd.to_datetime(seconds, unit="s") + pd.to_timedelta(seconds % 997, "ms"))
    stamps = stamps.dt.as_unit(unit)
    stamps[rng.random(2_000) < 0.1] = pd.NaT
    if aware:
        stamps = stamps.dt.tz_localize("UTC")
    for text in ("2022-03-27 01:00", "2024-01-01 00:00:00.000001", "2023-06-15 12:34:56.5"):
        limit = pd.Timestamp(text, tz="UTC" if aware else None)
        want_on_or_after = (stamps >= limit).to_numpy(dtype=bool, na_value=False)
        want_before = (stamps < limit).to_numpy(dtype=bool, na_value=False)
        assert np.array_equal(at_or_after(stamps, limit), want_on_or_after)
        assert np.array_equal(before(stamps, limit), want_before)
    # Beyond what nanoseconds hold: pandas answers, the same way.
    beyond = pd.Timestamp("3000-01-01", tz="UTC" if aware else None).as_unit("s")
    want = (stamps < beyond).to_numpy(dtype=bool, na_value=False)
    assert np.array_equal(before(stamps, beyond), want)
    assert not at_or_after(stamps, beyond).any()


@pytest.mark.parametrize("wanted", [[], ["b"], ["a", "c"], ["a", "b", "c", "d"], list("abcdefg")])
def test_category_codes_match_isin(wanted: list[str]) -> None:
    rng = np.random.default_rng(len(wanted))
    categories = list("abcdefgh")
    codes = rng.integers(-1, len(categories), 5_000)
    col = pd.Series(pd.Categorical.from_codes(codes, categories=categories))
    hits = np.asarray(col.cat.categories.isin(wanted))
    assert np.array_equal(codes_mask(col, hits), col.isin(wanted).to_numpy())

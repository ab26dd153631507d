"""The segment builder driven without a browser: set widget values, click buttons."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from test_segments import TODAY, make_frame, store_frame

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.segments.filters import filter_recipients
from bulkmail_kernel.segments.saved import list_segments, load_segment
from bulkmail_kernel.segments.spec import FilterSpec
from bulkmail_kernel.widgets.segments import SegmentBuilder, segment_builder


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame(800, seed=11)


def test_controls_map_to_the_spec_and_refresh_the_count(frame: pd.DataFrame) -> None:
    b = segment_builder(frame, today=TODAY)
    assert b.spec == FilterSpec()
    assert f"<b>{len(filter_recipients(frame, FilterSpec())):,}</b>" in b.count.value

    b.channel.value = "phone"
    b.language.value = ("sk", "cs")
    b.within_on.value = True
    b.within_days.value = 400
    b.attributes["customer_type"].values.value = ("vip",)
    b.attributes["visits"].low.value = "5"
    b.apply_now()
    expected = FilterSpec(
        channel="phone",
        language=["sk", "cs"],
        registered_within_days=400,
        attributes={"customer_type": ["vip"], "visits": {"min": 5}},
    )
    assert b.spec == expected
    want = filter_recipients(frame, expected, today=TODAY)
    assert 0 < len(want) < len(frame)
    assert b.result["contact_point_id"].tolist() == want["contact_point_id"].tolist()
    assert f"<b>{len(want):,}</b> recipients" in b.count.value
    # The sample is the first 10 rows, as an escaped HTML table.
    assert b.sample.value.count("<tr") == 1 + min(10, len(want))
    assert str(want.iloc[0]["contact_point_id"]) in b.sample.value


def test_set_spec_round_trips(frame: pd.DataFrame) -> None:
    b = segment_builder(frame, today=TODAY)
    spec = FilterSpec(
        registered_within_days=90,
        registered_more_than_days_ago=7,
        registered_between=(date(2023, 1, 1), None),
        mailing_allowed=None,
        channel="sms",
        point_type=["mobile", "landline"],
        kind=["work"],
        language=["ru"],
        gender=["f"],
        attributes={
            "treatment_result": ["still in treatment", "not started"],
            "spend": {"min": 10.5, "max": 200},
            "visits": {"max": 3},
        },
        has_valid_address=True,
        exclude_suppressed=False,
        one_per_contact=False,
    )
    b.set_spec(spec)
    assert b.spec == spec
    assert b.within_days.value == 90
    assert b.channel.value == "phone"
    assert b.attributes["spend"].low.value == "10.5"
    assert len(b.result) == len(filter_recipients(frame, spec, today=TODAY))
    # And back to the defaults.
    b.set_spec(FilterSpec())
    assert b.spec == FilterSpec()
    # A value the frame lacks still shows (as an extra option) and round-trips.
    odd = FilterSpec(point_type=["fax"], attributes={"city": ["Brno"]})
    b.set_spec(odd)
    assert b.spec == odd
    assert len(b.result) == 0


def test_set_spec_rejects_what_the_controls_cannot_show(frame: pd.DataFrame) -> None:
    b = segment_builder(frame)
    with pytest.raises(Exception, match="not in this frame"):
        b.set_spec(FilterSpec(attributes={"colour": ["red"]}))
    with pytest.raises(Exception, match="min/max range"):
        b.set_spec(FilterSpec(attributes={"visits": [1, 2]}))


def test_bad_input_shows_an_error_instead_of_raising(frame: pd.DataFrame) -> None:
    b = segment_builder(frame)
    before = len(b.result)
    b.attributes["visits"].low.value = "lots"
    b.apply_now()
    assert b.last_error is not None
    assert "'lots' is not a number" in str(b.last_error)
    assert "'lots' is not a number" in b.status.value
    assert len(b.result) == before  # the last good result stays
    b.attributes["visits"].low.value = ""
    b.apply_now()
    assert b.last_error is None
    assert b.status.value == ""


def test_refresh_is_debounced(frame: pd.DataFrame) -> None:
    b = segment_builder(frame, debounce_s=0.05)
    done = threading.Event()
    b.count.observe(lambda _c: done.set(), names="value")
    b.channel.value = "email"
    b.language.value = ("sk",)
    assert b.pending  # nothing refiltered yet: typing does not refilter per keystroke
    assert done.wait(5)
    assert not b.pending
    assert b.result["channel"].eq("email").all()
    assert b.result["language"].eq("sk").all()


def test_save_button_stores_the_segment(db_url: str, frame: pd.DataFrame) -> None:
    database = dbmod.open_database(db_url)
    store_frame(database, frame)
    b = segment_builder(frame, db=database, today=TODAY)
    b.channel.value = "email"
    b.kind.value = ("work",)
    b.segment_name.value = "Work e-mails"
    b.segment_description.value = "for the B2B newsletter"
    b.save_button.click()
    assert "saved segment 'Work e-mails'" in b.status.value
    spec, info, members = load_segment("Work e-mails", db=database)
    assert spec == b.spec
    assert info.description == "for the B2B newsletter"
    assert sorted(members) == sorted(b.apply_now()["contact_point_id"])
    # Saving again under the same name is refused, visibly, until "replace" is ticked.
    b.save_button.click()
    assert "already exists" in b.status.value
    b.replace.value = True
    b.kind.value = ()
    b.save_button.click()
    assert "saved segment" in b.status.value
    assert load_segment("Work e-mails", db=database).spec == FilterSpec(channel="email")
    assert list_segments(db=database)["name"].tolist() == ["Work e-mails"]


def test_export_button_writes_the_chosen_columns(frame: pd.DataFrame, tmp_path: Path) -> None:
    b = SegmentBuilder(frame, today=TODAY)
    b.language.value = ("cs",)
    target = tmp_path / "cz.xlsx"
    b.export_path.value = str(target)
    assert "address" not in b.export_columns.value  # contact data is opt-in
    b.export_columns.value = ("last_name", "first_name", "address")
    b.export_button.click()
    assert "identify people" in b.status.value
    assert not target.exists()
    b.include_contact_data.value = True
    b.export_button.click()
    assert "exported" in b.status.value
    ws = openpyxl.load_workbook(target).active
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0] == ("last_name", "first_name", "address")  # the chosen order
    want = filter_recipients(frame, FilterSpec(language=["cs"]), today=TODAY)
    assert len(rows) == len(want) + 1
    assert rows[1][1] == want.iloc[0]["first_name"]


def test_nullable_attribute_dtypes_of_the_real_frame(frame: pd.DataFrame) -> None:
    """contacts_frame() types int attributes as Int64 and yes/no ones as boolean (nullable)."""
    frame = frame.assign(
        visits=frame["visits"].astype("Int64").mask(frame.index % 7 == 0),
        vip=pd.array(
            [True, False, None] * (len(frame) // 3) + [True] * (len(frame) % 3), dtype="boolean"
        ),
    )
    b = segment_builder(frame, today=TODAY)
    spec = FilterSpec(attributes={"vip": [True], "visits": {"min": 3}})
    b.set_spec(spec)
    assert b.spec == spec
    want = filter_recipients(frame, spec, today=TODAY)
    assert len(want) > 0
    assert want["vip"].eq(True).all()
    assert (want["visits"] >= 3).all()
    assert b.result["contact_point_id"].tolist() == want["contact_point_id"].tolist()

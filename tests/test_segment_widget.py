"""The segment builder driven without a browser: set widget values, click buttons."""

from __future__ import annotations

import html
import threading
from datetime import date
from pathlib import Path

import ipywidgets as w
import openpyxl
import pandas as pd
import pytest
from test_segments import TODAY, make_frame, store_frame

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.segments.filters import filter_recipients
from bulkmail_kernel.segments.rules import Rule, RuleGroup
from bulkmail_kernel.segments.saved import list_segments, load_segment, save_segment
from bulkmail_kernel.segments.spec import FilterSpec
from bulkmail_kernel.widgets.segments import SegmentBuilder, segment_builder


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame(800, seed=11)


def _ids(frame: pd.DataFrame) -> list[int]:
    return frame["contact_point_id"].tolist()


def test_rows_map_to_rules_and_refresh_the_count(sqlite_url: str, frame: pd.DataFrame) -> None:
    b = segment_builder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    assert b.spec == FilterSpec()
    assert f"<b>{len(filter_recipients(frame, FilterSpec())):,}</b>" in b.count.value

    row = b.rules.add()
    # A new row starts on the registration date with "in the last … days" and a day count.
    assert (row.field.value, row.op.value) == ("registered_at", "in_last_days")
    assert isinstance(row.inputs[0], w.BoundedIntText)
    row.field.value = "language"
    # Operators follow the field: a choice column offers "is one of", not "in the last".
    ops = [name for _label, name in row.op.options]
    assert "one_of" in ops
    assert "in_last_days" not in ops
    picker = row.inputs[0]
    assert isinstance(picker, w.TagsInput)
    assert picker.allowed_tags == ["sk", "cs", "ru", "en"]  # the searchable picker's choices
    assert "rule is not filled in yet" in b.count.value
    picker.value = ["sk", "cs"]
    second = b.rules.add()
    second.field.value = "visits"
    second.op.value = "at_least"
    second.inputs[0].value = "5"

    rules = RuleGroup(
        "all", (Rule("language", "one_of", ["sk", "cs"]), Rule("visits", "at_least", 5))
    )
    assert b.spec == FilterSpec(rules=rules)
    want = filter_recipients(frame, FilterSpec(rules=rules), today=TODAY)
    assert 0 < len(want) < len(frame)
    assert _ids(b.result) == _ids(want)
    assert f"<b>{len(want):,}</b> recipients" in b.count.value

    # Switching AND to OR widens the segment; NOT turns it around.
    b.rules.match.value = "any"
    any_of = filter_recipients(frame, FilterSpec(rules=RuleGroup("any", rules.rules)), today=TODAY)
    assert len(any_of) > len(want)
    assert _ids(b.result) == _ids(any_of)
    b.rules.match.value = "none"
    assert b.spec.rules == RuleGroup("any", rules.rules, negate=True)
    # Removing a row removes its rule.
    b.rules.match.value = "all"
    second.remove.click()
    assert b.spec == FilterSpec(
        rules={"all": [{"field": "language", "op": "one_of", "value": ["sk", "cs"]}]}
    )


def test_labels_read_as_words_and_the_sample_is_compact(
    sqlite_url: str, frame: pd.DataFrame
) -> None:
    b = segment_builder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    row = b.rules.add()
    labels = [label for label, _name in row.field.options]
    assert "Registered" in labels
    assert "Type of address" in labels
    assert "Treatment result (custom field)" in labels
    assert not any("_" in label for label in labels)
    assert "contact_point_id" not in [name for _l, name in row.field.options]
    row.field.value = "channel"
    row.op.value = "is"
    assert row.inputs[0].options == (("e-mail", "email"), ("phone / SMS", "phone"))
    # The sample shows five chosen columns by default, as words, ten rows, local time.
    assert b.sample.value.count("<th>") == 5
    assert "<th>First name</th>" in b.sample.value
    assert "contact_point_id" not in b.sample.value
    assert b.sample.value.count("<tr") == 11  # the header row and ten rows
    assert "overflow-x:auto" in b.sample.value
    assert "+00:00" not in b.sample.value
    b.sample_columns.value = ["last_name", "city"]
    assert "<th>City</th>" in b.sample.value
    assert b.sample.value.count("<th>") == 2
    # No button label is cut short.
    for button in (b.save_button, b.export_button, b.open_button):
        assert button.layout.width == "auto"


def test_set_spec_round_trips_rules_and_opens_old_specs(
    sqlite_url: str, frame: pd.DataFrame
) -> None:
    b = segment_builder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    spec = FilterSpec(
        mailing_allowed=None,
        has_valid_address=True,
        exclude_suppressed=False,
        one_per_contact=False,
        rules={
            "any": [
                {"field": "registered_at", "op": "between", "value": ["2024-01-01", "2024-12-31"]},
                {"field": "city", "op": "is", "value": "Praha"},
                {"not": {"all": [
                    {"field": "spend", "op": "at_most", "value": 10.5},
                    {"field": "treatment_result", "op": "empty"},
                    {"field": "registered_at", "op": "more_than_days_ago", "value": 90},
                ]}},
            ]
        },
    )  # fmt: skip
    b.set_spec(spec)
    assert b.spec == spec
    assert b.rules.match.value == "any"
    sub = b.rules.items[2]
    assert sub.match.value == "not_all"  # type: ignore[union-attr]
    assert _ids(b.result) == _ids(filter_recipients(frame, spec, today=TODAY))

    legacy = FilterSpec(
        channel="sms",
        language=["ru"],
        registered_within_days=900,
        attributes={"customer_type": ["vip"], "visits": {"max": 3}},
    )
    b.set_spec(legacy)
    assert b.spec == legacy.as_rules()
    assert len(b.rules.items) == 5
    assert _ids(b.result) == _ids(filter_recipients(frame, legacy, today=TODAY))
    b.set_spec(FilterSpec())
    assert b.spec == FilterSpec()
    assert b.rules.items == []


def test_a_rule_that_does_not_fit_is_said_in_the_panel(
    sqlite_url: str, frame: pd.DataFrame
) -> None:
    b = segment_builder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    before = len(b.result)
    row = b.rules.add()
    row.field.value = "visits"
    row.op.value = "at_least"
    row.inputs[0].value = "lots"
    assert b.last_error is not None
    assert "'lots' is not a number" in b.status.value
    assert len(b.result) == before  # the last good result stays
    row.inputs[0].value = ""
    assert b.last_error is None
    assert b.status.value == ""
    with pytest.raises(Exception, match="no field 'colour'"):
        b.set_spec(FilterSpec(rules={"field": "colour", "op": "is", "value": "red"}))


def test_refresh_is_debounced(sqlite_url: str, frame: pd.DataFrame) -> None:
    b = segment_builder(frame, url=sqlite_url, debounce_s=0.05)
    done = threading.Event()
    b.count.observe(lambda _c: done.set(), names="value")
    b.mailing_allowed.value = "any"
    b.exclude_suppressed.value = False
    assert b.pending  # nothing refiltered yet: typing does not refilter per keystroke
    assert done.wait(5)
    assert not b.pending
    assert len(b.result) == len(
        filter_recipients(frame, FilterSpec(mailing_allowed=None, exclude_suppressed=False))
    )


def test_save_and_open_mailing_groups(db_url: str, frame: pd.DataFrame) -> None:
    database = dbmod.open_database(db_url)
    store_frame(database, frame)
    save_segment("Old style", FilterSpec(channel="email", kind=["work"]), frame, db=database)
    b = segment_builder(frame, db=database, today=TODAY, debounce_s=0)
    assert b.saved.options[0][1] == "Old style"

    row = b.rules.add()
    row.field.value = "city"
    row.op.value = "one_of"
    row.inputs[0].value = ["Praha"]
    b.segment_name.value = "Prague"
    b.segment_description.value = "for the Czech newsletter"
    b.save_button.click()
    assert "saved group 'Prague'" in b.status.value
    spec, info, members = load_segment("Prague", db=database)
    assert spec == b.spec
    assert info.description == "for the Czech newsletter"
    assert sorted(members) == sorted(b.apply_now()["contact_point_id"])
    assert [name for _label, name in b.saved.options] == ["Old style", "Prague"]

    # A taken name is answered in the panel's words, until "overwrite" is ticked.
    b.save_button.click()
    assert "already exists: tick “Overwrite if it exists”" in b.status.value
    assert "replace=True" not in b.status.value
    b.replace.value = True
    b.rules.match.value = "none"
    b.save_button.click()
    assert "saved group 'Prague'" in b.status.value
    assert load_segment("Prague", db=database).spec.rules.negate  # type: ignore[union-attr]

    # Opening a saved group (one saved before rules existed) brings it back into the rows.
    b.saved.value = "Old style"
    b.open_button.click()
    assert "opened 'Old style'" in b.status.value
    assert [(r.field.value, r.op.value) for r in b.rules.items] == [  # type: ignore[union-attr]
        ("channel", "is"),
        ("kind", "one_of"),
    ]
    assert _ids(b.result) == _ids(
        filter_recipients(frame, FilterSpec(channel="email", kind=["work"]), today=TODAY)
    )
    assert b.segment_name.value == "Old style"
    assert list_segments(db=database)["name"].tolist() == ["Old style", "Prague"]


def test_empty_segments_are_neither_saved_nor_exported(
    sqlite_url: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    b = segment_builder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    row = b.rules.add()
    row.field.value = "city"
    row.op.value = "is"
    row.inputs[0].value = "Praha"
    other = b.rules.add()
    other.field.value = "city"
    other.op.value = "is"
    other.inputs[0].value = "Košice"
    assert len(b.result) == 0
    assert "no one matches" in b.count.value
    b.segment_name.value = "Nobody"
    b.save_button.click()
    assert "no group to save" in b.status.value
    assert list_segments(url=sqlite_url).empty
    b.export_path.value = str(tmp_path / "nobody.xlsx")
    b.export_button.click()
    assert "nothing to export" in b.status.value
    assert not (tmp_path / "nobody.xlsx").exists()
    b.segment_name.value = ""
    b.rules.match.value = "any"
    b.save_button.click()
    assert "Give the group a name first" in b.status.value


def test_export_button_writes_the_chosen_columns(
    sqlite_url: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    b = SegmentBuilder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    row = b.rules.add()
    row.field.value = "language"
    row.inputs[0].value = ["cs"]
    target = tmp_path / "cz.xlsx"
    b.export_path.value = str(target)
    assert "address" not in b.export_columns.value  # contact data is opt-in
    b.export_columns.value = ["last_name", "first_name", "address"]
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


def test_nullable_attribute_dtypes_of_the_real_frame(sqlite_url: str, frame: pd.DataFrame) -> None:
    """contacts_frame() types int attributes as Int64 and yes/no ones as boolean (nullable)."""
    frame = frame.assign(
        visits=frame["visits"].astype("Int64").mask(frame.index % 7 == 0),
        vip=pd.array(
            [True, False, None] * (len(frame) // 3) + [True] * (len(frame) % 3), dtype="boolean"
        ),
        last_visit=pd.to_datetime("2025-06-01T12:00:00Z")
        - pd.to_timedelta(frame.index.to_numpy() % 90, unit="D"),
    )
    b = segment_builder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    row = b.rules.add()
    row.field.value = "vip"
    assert row.op.value == "is"
    assert row.inputs[0].value is True
    visits = b.rules.add()
    visits.field.value = "visits"
    visits.op.value = "at_least"
    visits.inputs[0].value = "3"
    when = b.rules.add()
    when.field.value = "last_visit"
    when.op.value = "after"
    when.inputs[0].value = date(2025, 5, 1)
    spec = b.spec
    assert spec.rules == RuleGroup(
        "all",
        (
            Rule("vip", "is", True),
            Rule("visits", "at_least", 3),
            Rule("last_visit", "after", date(2025, 5, 1)),
        ),
    )
    want = filter_recipients(frame, spec, today=TODAY)
    assert len(want) > 0
    assert want["vip"].eq(True).all()
    assert (want["visits"] >= 3).all()
    assert (want["last_visit"] >= pd.Timestamp("2025-05-01T22:00:00Z")).all()
    assert _ids(b.result) == _ids(want)
    b2 = segment_builder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    b2.set_spec(spec)
    assert b2.spec == spec


def test_picking_a_person_says_why_they_are_in_or_out(sqlite_url: str, frame: pd.DataFrame) -> None:
    b = segment_builder(frame, url=sqlite_url, today=TODAY, debounce_s=0)
    row = b.rules.add()
    row.field.value = "language"
    row.inputs[0].value = ["sk"]
    # The box offers the sample's people; picking one is the click.
    assert b.why.options == tuple(b.result.head(10)["address"])
    first = b.why.options[0]
    b.why.value = first
    assert b.why_result.value.startswith(f"<b>in: {first}")
    assert "rule 'Language is one of sk'" in html.unescape(b.why_result.value)
    assert "✔" in b.why_result.value
    # Anyone else by address or customer number: out, with the rule and their value.
    outsider = frame[frame["language"] == "cs"].iloc[0]
    b.why.value = str(outsider["address"])
    b.why_button.click()
    said = html.unescape(b.why_result.value)
    assert f"out: {outsider['address']}: rule 'Language is one of sk'" in said
    assert "<td>cs</td>" in b.why_result.value
    assert "✘" in b.why_result.value
    b.why.value = "nobody@nowhere.sk"
    b.why_button.click()
    assert "nobody in these contacts is" in b.why_result.value

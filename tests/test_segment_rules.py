"""Segment rules: every operator against a hand-written pandas mask, groups, NOT, JSON, errors."""

from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from test_segments import TODAY, make_frame

from bulkmail_kernel.exceptions import FilterError
from bulkmail_kernel.segments.filters import filter_recipients, recipient_mask
from bulkmail_kernel.segments.rules import Rule, RuleGroup
from bulkmail_kernel.segments.spec import FilterSpec

ZONE = ZoneInfo("Europe/Bratislava")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    f = make_frame(3000, seed=5)
    # A text column with blanks and missing values, and a date attribute.
    f["note"] = pd.array(
        np.where(f.index % 5 == 0, "", np.where(f.index % 7 == 0, None, "Call " + f["last_name"])),
        dtype="str",
    )
    f["last_visit"] = pd.to_datetime("2025-06-30T10:00:00Z") - pd.to_timedelta(
        f.index.to_numpy() % 400, unit="D"
    )
    f.loc[f.index % 11 == 0, "last_visit"] = pd.NaT
    return f


def _local_day(col: pd.Series) -> pd.Series:
    return col.dt.tz_convert(ZONE).dt.date


def _expected(frame: pd.DataFrame, rule: Rule) -> np.ndarray:
    """Say independently, in plain pandas, which rows a rule selects."""
    col = frame[rule.field]
    v = rule.value
    op = rule.op
    if rule.field in ("registered_at", "last_visit"):
        day = _local_day(col)
        known = col.notna()
        if op == "in_last_days":
            return (known & (day >= TODAY - timedelta(days=v))).to_numpy()
        if op == "more_than_days_ago":
            return (known & (day < TODAY - timedelta(days=v))).to_numpy()
        if op == "before":
            return (known & (day < v)).to_numpy()
        if op == "after":
            return (known & (day > v)).to_numpy()
        if op == "between":
            return (known & (day >= v[0]) & (day <= v[1])).to_numpy()
        if op == "is":
            return (known & (day == v)).to_numpy()
        if op == "is_not":
            return ~(known & (day == v)).to_numpy()
        if op == "empty":
            return (~known).to_numpy()
        return known.to_numpy()
    text = col.astype(object)
    blank = text.isna() | (text == "")
    lower = text.where(~text.isna(), "").astype(str).str.lower()
    if op == "is":
        return (text == v).fillna(False).to_numpy(dtype=bool)
    if op == "is_not":
        return ~(text == v).fillna(False).to_numpy(dtype=bool)
    if op == "one_of":
        return text.isin(v).to_numpy()
    if op == "not_one_of":
        return ~text.isin(v).to_numpy()
    if op == "contains":
        return lower.map(lambda s: v.lower() in s).to_numpy(dtype=bool)
    if op == "starts_with":
        return lower.map(lambda s: s.startswith(v.lower())).to_numpy(dtype=bool)
    if op == "ends_with":
        return lower.map(lambda s: s.endswith(v.lower())).to_numpy(dtype=bool)
    if op == "at_least":
        return (col >= v).fillna(False).to_numpy(dtype=bool)
    if op == "at_most":
        return (col <= v).fillna(False).to_numpy(dtype=bool)
    if op == "empty":
        return blank.to_numpy()
    if op == "not_empty":
        return ~blank.to_numpy()
    raise AssertionError(op)


RULES = [
    Rule("language", "is", "cs"),
    Rule("language", "is_not", "cs"),
    Rule("language", "one_of", ["sk", "ru"]),
    Rule("language", "not_one_of", ["sk", "ru"]),
    Rule("city", "contains", "IC"),
    Rule("city", "starts_with", "ko"),
    Rule("city", "ends_with", "A"),
    Rule("treatment_result", "empty"),
    Rule("treatment_result", "not_empty"),
    Rule("first_name", "contains", "an"),
    Rule("last_name", "starts_with", "no"),
    Rule("address", "ends_with", "@SK.example.net"),
    Rule("first_name", "one_of", ["Zuzana", "Peter"]),
    Rule("note", "empty"),
    Rule("note", "not_empty"),
    Rule("note", "is", "Call Novák"),
    Rule("visits", "at_least", 20),
    Rule("visits", "at_most", 3),
    Rule("spend", "at_least", 99.5),
    Rule("registered_at", "in_last_days", 30),
    Rule("registered_at", "in_last_days", 0),
    Rule("registered_at", "more_than_days_ago", 700),
    Rule("registered_at", "before", date(2023, 3, 26)),
    Rule("registered_at", "after", date(2025, 3, 30)),
    Rule("registered_at", "between", (date(2024, 10, 27), date(2024, 12, 31))),
    Rule("last_visit", "is", date(2025, 6, 1)),
    Rule("last_visit", "is_not", date(2025, 6, 1)),
    Rule("last_visit", "empty"),
    Rule("last_visit", "between", (date(2025, 1, 1), date(2025, 2, 1))),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.field}-{r.op}")
def test_each_operator_selects_what_plain_pandas_selects(frame: pd.DataFrame, rule: Rule) -> None:
    spec = FilterSpec(
        rules=RuleGroup("all", (rule,)),
        mailing_allowed=None,
        exclude_suppressed=False,
        one_per_contact=False,
    )
    got = recipient_mask(frame, spec, today=TODAY, tz="Europe/Bratislava")
    want = _expected(frame, rule)
    assert 0 < want.sum() < len(frame), f"{rule.describe()} should select some rows, not all"
    assert np.array_equal(got, want), rule.describe()


def test_number_between_and_one_of(frame: pd.DataFrame) -> None:
    base = {"mailing_allowed": None, "exclude_suppressed": False, "one_per_contact": False}
    got = recipient_mask(frame, FilterSpec(rules={"all": [
        {"field": "visits", "op": "between", "value": [5, 9]}]}, **base))  # fmt: skip
    assert np.array_equal(got, frame["visits"].between(5, 9).to_numpy())
    got = recipient_mask(frame, FilterSpec(rules={"all": [
        {"field": "visits", "op": "one_of", "value": [1, 2, 3]}]}, **base))  # fmt: skip
    assert np.array_equal(got, frame["visits"].isin([1, 2, 3]).to_numpy())
    # An open end: "at least 25" written as a range.
    got = recipient_mask(frame, FilterSpec(rules={"all": [
        {"field": "visits", "op": "between", "value": [25, None]}]}, **base))  # fmt: skip
    assert np.array_equal(got, (frame["visits"] >= 25).to_numpy())


def test_and_or_not_groups_combine_as_logic_says(frame: pd.DataFrame) -> None:
    base = {"mailing_allowed": None, "exclude_suppressed": False, "one_per_contact": False}
    a = Rule("language", "is", "sk")
    b = Rule("visits", "at_least", 15)
    c = Rule("city", "is", "Praha")
    ma, mb, mc = (_expected(frame, r) for r in (a, b, c))

    def mask(group: RuleGroup) -> np.ndarray:
        return recipient_mask(frame, FilterSpec(rules=group, **base), today=TODAY)

    assert np.array_equal(mask(RuleGroup("all", (a, b))), ma & mb)
    assert np.array_equal(mask(RuleGroup("any", (a, b))), ma | mb)
    assert np.array_equal(mask(RuleGroup("any", (a, b), negate=True)), ~(ma | mb))
    assert np.array_equal(mask(RuleGroup("all", (a, b), negate=True)), ~(ma & mb))
    nested = RuleGroup("all", (a, RuleGroup("any", (b, c), negate=True)))
    assert np.array_equal(mask(nested), ma & ~(mb | mc))
    # An empty group is no condition; the settings still apply on top of the rules.
    assert mask(RuleGroup("any", ())).all()
    opted = recipient_mask(frame, FilterSpec(rules=RuleGroup("all", (a,))), today=TODAY)
    assert not (opted & ~frame["mailing_allowed"].to_numpy()).any()


def test_rules_round_trip_through_json() -> None:
    spec = FilterSpec(
        rules={
            "all": [
                {"field": "language", "op": "one_of", "value": ["sk", "cs"]},
                {"field": "registered_at", "op": "between", "value": ["2024-01-01", None]},
                {"not": {"any": [
                    {"field": "visits", "op": "at_least", "value": 10},
                    {"field": "note", "op": "empty"},
                ]}},
            ]
        },
        mailing_allowed=None,
    )  # fmt: skip
    again = FilterSpec.from_json(spec.to_json())
    assert again == spec
    assert again.rules.rules[1].value == (date(2024, 1, 1), None)  # type: ignore[union-attr]
    assert spec.to_dict()["rules"]["all"][2] == {
        "not": {"any": [
            {"field": "visits", "op": "at_least", "value": 10},
            {"field": "note", "op": "empty"},
        ]}
    }  # fmt: skip
    # A lone rule and a NOT around a rule are accepted and normalised into groups.
    lone = FilterSpec(rules={"field": "city", "op": "is", "value": "Praha"})
    assert lone.rules == RuleGroup("all", (Rule("city", "is", "Praha"),))
    negated = FilterSpec(rules={"not": {"field": "city", "op": "is", "value": "Praha"}})
    assert negated.rules == RuleGroup("all", (Rule("city", "is", "Praha"),), negate=True)
    assert FilterSpec(rules={"all": []}).rules is None


def test_old_specs_read_the_same_as_rules(frame: pd.DataFrame) -> None:
    legacy = FilterSpec(
        registered_within_days=600,
        registered_more_than_days_ago=10,
        registered_between=(date(2023, 1, 1), None),
        channel="email",
        point_type=["main", "newsletter"],
        language=["sk", "cs"],
        gender=["f"],
        attributes={"customer_type": ["vip", "retail"], "spend": {"min": 20, "max": 400}},
    )
    as_rules = legacy.as_rules()
    assert as_rules.channel is None
    assert as_rules.language is None
    assert as_rules.attributes == ()
    want = filter_recipients(frame, legacy, today=TODAY)
    assert len(want) > 0
    got = filter_recipients(frame, as_rules, today=TODAY)
    assert got["contact_point_id"].tolist() == want["contact_point_id"].tolist()
    # A rules-only spec is left as it is.
    only = FilterSpec(rules={"any": [{"field": "city", "op": "is", "value": "Praha"}]})
    assert only.as_rules() == only


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"field": "colour", "op": "is", "value": "red"}, "no field 'colour'"),
        ({"field": "citty", "op": "is", "value": "Praha"}, "did you mean 'city'"),
        ({"field": "visits", "op": "contains", "value": "1"}, "holds numbers"),
        ({"field": "visits", "op": "is", "value": "five"}, "give a number"),
        ({"field": "registered_at", "op": "before", "value": 5}, "give a date"),
        ({"field": "city", "op": "in_last_days", "value": 3}, "does not apply"),
    ],
)
def test_a_rule_that_does_not_fit_names_itself(
    frame: pd.DataFrame, rules: dict[str, object], message: str
) -> None:
    with pytest.raises(FilterError, match=message) as info:
        filter_recipients(frame, FilterSpec(rules=rules), today=TODAY)
    assert info.value.fields["column"] == rules["field"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"field": "city", "op": "like", "value": "x"}, "unknown operator 'like'"),
        ({"field": "city", "op": "one_of", "value": []}, "at least one value"),
        ({"field": "visits", "op": "between", "value": [9, 2]}, "after the last"),
        ({"field": "visits", "op": "between", "value": [None, None]}, "first value, a last"),
        ({"field": "registered_at", "op": "in_last_days", "value": -1}, "whole number of days"),
        ({"every": []}, "neither a rule"),
        ({"any": {"field": "city"}}, "a list of rules"),
    ],
)
def test_a_malformed_rule_is_refused_where_it_is_built(
    rules: dict[str, object], message: str
) -> None:
    with pytest.raises(FilterError, match=message):
        FilterSpec(rules=rules)

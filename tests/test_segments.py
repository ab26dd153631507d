"""Segments: FilterSpec validation and JSON, vectorised filtering, saved segments on both DBs."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.exceptions import FilterError, SegmentError
from bulkmail_kernel.segments.filters import filter_recipients
from bulkmail_kernel.segments.saved import (
    delete_segment,
    list_segments,
    load_segment,
    rename_segment,
    save_segment,
    segment_recipients,
)
from bulkmail_kernel.segments.spec import FilterSpec

TODAY = date(2025, 6, 30)
TZ = "Europe/Bratislava"

FIRST = np.array(["Ľubica", "Ján", "Šimon", "Zuzana", "Андрей", "Mária", "Peter", "Éva"])
LAST = np.array(["Šťastná", "Novák", "Kováč", "Horváth", "Иванов", "Tóth", "Varga", "Čierny"])
POINT_TYPES = ["main", "billing", "newsletter", "mobile", "landline"]


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Build a recipient frame with the contacts_frame() contract's columns and dtypes.

    Vectorised, so it also builds 1,000,000 rows for the benchmark. Contacts have
    one to several points; contact and point ids ascend like the real frame's.
    """
    rng = np.random.default_rng(seed)
    n_contacts = max(1, int(n / 1.5))
    contact_of = np.sort(rng.integers(0, n_contacts, n))  # index into per-contact arrays
    contact_id = contact_of.astype(np.int64) + 1
    point_id = np.arange(1, n + 1, dtype=np.int64)

    def per_contact(values: np.ndarray) -> np.ndarray:
        return values[contact_of]

    ext_num = pd.Series(per_contact(np.arange(n_contacts)), dtype="int64").astype("str")
    external_id = ("C" + ext_num.str.zfill(7)).astype("str")
    external_id[per_contact(rng.random(n_contacts) < 0.1)] = np.nan

    lang_codes = per_contact(rng.choice(4, n_contacts, p=[0.6, 0.2, 0.1, 0.1]))
    language = pd.Categorical.from_codes(lang_codes, categories=["sk", "cs", "ru", "en"])
    gender_codes = per_contact(rng.choice([-1, 0, 1], n_contacts, p=[0.1, 0.45, 0.45]))
    gender = pd.Categorical.from_codes(gender_codes, categories=["m", "f"])
    first = pd.array(per_contact(FIRST[rng.integers(0, len(FIRST), n_contacts)]), dtype="str")
    last = pd.array(per_contact(LAST[rng.integers(0, len(LAST), n_contacts)]), dtype="str")
    patronymic = pd.array(np.where(lang_codes == 2, "Петрович", ""), dtype="str")

    base = np.datetime64("2025-06-30T22:00:00", "us")  # end of TODAY in Bratislava
    ago_us = per_contact(rng.integers(0, 3 * 365 * 86_400, n_contacts)) * 1_000_000
    registered = pd.DatetimeIndex(base - ago_us.astype("timedelta64[us]")).tz_localize("UTC")

    is_phone = rng.random(n) < 0.35
    channel = pd.Categorical.from_codes(is_phone.astype(np.int8), categories=["email", "phone"])
    pid = pd.Series(point_id).astype("str")
    email = "u" + pid + "@sk.example.net"
    phone = "+42190" + pid.str.zfill(7)
    address = pd.Series(np.where(is_phone, phone, email), dtype="str")
    type_codes = np.where(is_phone, rng.integers(3, 5, n), rng.integers(0, 3, n))
    point_type = pd.Categorical.from_codes(type_codes, categories=POINT_TYPES)
    kind_codes = (rng.random(n) < 0.25).astype(np.int8)
    kind = pd.Categorical.from_codes(kind_codes, categories=["personal", "work"])
    mailing_allowed = rng.random(n) < 0.7
    suppressed = rng.random(n) < 0.03
    # The first point of each contact, channel and kind is usually the preferred one.
    group = (contact_id * 2 + is_phone) * 2 + kind_codes
    first_of_group = ~pd.Series(group).duplicated().to_numpy()
    is_preferred = first_of_group & (rng.random(n) < 0.8)

    customer_type = pd.Categorical.from_codes(
        per_contact(rng.integers(0, 3, n_contacts)), categories=["retail", "wholesale", "vip"]
    )
    treatment = pd.Categorical.from_codes(
        per_contact(rng.choice([-1, 0, 1, 2], n_contacts)),
        categories=["cured", "still in treatment", "not started"],
    )
    city = pd.Categorical.from_codes(
        per_contact(rng.integers(0, 4, n_contacts)),
        categories=["Bratislava", "Košice", "Žilina", "Praha"],
    )
    visits = per_contact(rng.integers(0, 30, n_contacts)).astype(np.int64)
    spend = per_contact(np.round(rng.gamma(2.0, 50.0, n_contacts), 2))
    spend[per_contact(rng.random(n_contacts) < 0.05)] = np.nan
    return pd.DataFrame(
        {
            "contact_point_id": point_id,
            "contact_id": contact_id,
            "external_id": external_id,
            "first_name": first,
            "last_name": last,
            "patronymic": patronymic,
            "gender": gender,
            "language": language,
            "registered_at": registered,
            "channel": channel,
            "address": address,
            "point_type": point_type,
            "kind": kind,
            "mailing_allowed": mailing_allowed,
            "is_preferred": is_preferred,
            "suppressed": suppressed,
            "customer_type": customer_type,
            "treatment_result": treatment,
            "city": city,
            "visits": visits,
            "spend": spend,
        }
    )


def tiny_frame(rows: list[dict]) -> pd.DataFrame:
    """Build a contract-typed frame from a few hand-written rows (defaults fill the rest)."""
    defaults = {
        "external_id": np.nan,
        "first_name": "Ján",
        "last_name": "Novák",
        "patronymic": "",
        "gender": "m",
        "language": "sk",
        "registered_at": datetime(2025, 1, 1, 12, tzinfo=UTC),
        "channel": "email",
        "point_type": "main",
        "kind": "personal",
        "mailing_allowed": True,
        "is_preferred": False,
        "suppressed": False,
        "treatment_result": "cured",
        "visits": 1,
    }
    full = [{**defaults, **r} for r in rows]
    for r in full:
        r.setdefault("address", f"p{r['contact_point_id']}@sk.example.net")
    frame = pd.DataFrame(full)
    frame = frame.astype(
        {
            "contact_point_id": "int64",
            "contact_id": "int64",
            "external_id": "str",
            "first_name": "str",
            "last_name": "str",
            "patronymic": "str",
            "gender": pd.CategoricalDtype(["m", "f"]),
            "language": pd.CategoricalDtype(["sk", "cs", "ru", "en"]),
            "channel": pd.CategoricalDtype(["email", "phone"]),
            "address": "str",
            "point_type": "category",
            "kind": pd.CategoricalDtype(["personal", "work"]),
            "mailing_allowed": "bool",
            "is_preferred": "bool",
            "suppressed": "bool",
            "treatment_result": "category",
            "visits": "int64",
        }
    )
    frame["registered_at"] = pd.to_datetime(frame["registered_at"], utc=True).dt.as_unit("us")
    return frame


# --------------------------------------------------------------------------- the fixture


def test_make_frame_follows_the_contract() -> None:
    frame = make_frame(2000, seed=1)
    assert list(frame.columns[:16]) == [
        "contact_point_id",
        "contact_id",
        "external_id",
        "first_name",
        "last_name",
        "patronymic",
        "gender",
        "language",
        "registered_at",
        "channel",
        "address",
        "point_type",
        "kind",
        "mailing_allowed",
        "is_preferred",
        "suppressed",
    ]
    assert str(frame["registered_at"].dtype) == "datetime64[us, UTC]"
    assert frame["external_id"].dtype == "str"
    assert frame["external_id"].isna().any()
    assert frame["channel"].dtype == "category"
    assert frame["mailing_allowed"].dtype == bool
    assert frame["contact_point_id"].is_unique
    assert frame.groupby("contact_id").size().max() > 1


# --------------------------------------------------------------------------- FilterSpec


def test_spec_round_trips_through_json_and_dict() -> None:
    spec = FilterSpec(
        registered_within_days=30,
        registered_more_than_days_ago=2,
        registered_between=("2024-01-01", date(2025, 6, 1)),
        mailing_allowed=None,
        channel="sms",
        point_type=["mobile"],
        kind=["personal", "work"],
        language=["sk", "cs"],
        gender="f",
        attributes={
            "treatment_result": ["still in treatment"],
            "customer_type": "vip",
            "visits": {"min": 3, "max": 10},
            "last_visit": {"min": date(2025, 1, 1)},
        },
        has_valid_address=True,
        exclude_suppressed=False,
        one_per_contact=False,
    )
    assert spec.channel == "phone"  # "sms" means the phone channel
    assert spec.registered_between == (date(2024, 1, 1), date(2025, 6, 1))
    assert spec.gender == ("f",)
    assert FilterSpec.from_json(spec.to_json()) == spec
    assert FilterSpec.from_dict(spec.to_dict()) == spec
    data = json.loads(spec.to_json())
    assert data["attributes"] == {
        "customer_type": ["vip"],
        "last_visit": {"min": "2025-01-01", "max": None},
        "treatment_result": ["still in treatment"],
        "visits": {"min": 3, "max": 10},
    }
    assert data["registered_between"] == ["2024-01-01", "2025-06-01"]
    assert hash(spec) == hash(FilterSpec.from_json(spec.to_json()))


def test_spec_defaults_are_safe() -> None:
    spec = FilterSpec()
    assert spec.mailing_allowed is True
    assert spec.exclude_suppressed is True
    assert spec.one_per_contact is True
    assert FilterSpec(language=[]) == spec  # an empty list is no condition


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"registered_within_days": "7"}, "registered_within_days"),
        ({"registered_within_days": True}, "registered_within_days"),
        ({"registered_more_than_days_ago": -1}, "registered_more_than_days_ago"),
        ({"registered_between": ("2025-13-01", None)}, "registered_between"),
        ({"registered_between": ("2025-06-01", "2025-01-01")}, "registered_between"),
        ({"mailing_allowed": "yes"}, "mailing_allowed"),
        ({"channel": "fax"}, "channel"),
        ({"kind": ["private"]}, "kind"),
        ({"language": ["de"]}, "language"),
        ({"point_type": [1]}, "point_type"),
        ({"exclude_suppressed": None}, "exclude_suppressed"),
        ({"attributes": ["visits"]}, "attributes"),
    ],
)
def test_spec_rejects_bad_fields_naming_them(kwargs: dict, field: str) -> None:
    with pytest.raises(FilterError, match=field) as info:
        FilterSpec(**kwargs)
    assert info.value.fields.get("field") == field


def test_spec_rejects_bad_attribute_conditions() -> None:
    with pytest.raises(FilterError, match=r"attributes\.visits"):
        FilterSpec(attributes={"visits": {"min": 5, "max": 1}})
    with pytest.raises(FilterError, match=r"attributes\.visits"):
        FilterSpec(attributes={"visits": {"from": 5}})
    with pytest.raises(FilterError, match=r"attributes\.city"):
        FilterSpec(attributes={"city": [None]})


def test_from_dict_and_from_json_reject_unknown_keys() -> None:
    with pytest.raises(FilterError, match=r"'languages'.*did you mean 'language'") as info:
        FilterSpec.from_dict({"languages": ["sk"]})
    assert info.value.fields["field"] == "languages"
    with pytest.raises(FilterError, match="JSON"):
        FilterSpec.from_json("{not json")


@settings(max_examples=50, deadline=None)
@given(
    days=st.none() | st.integers(0, 5000),
    langs=st.none() | st.lists(st.sampled_from(["sk", "cs", "ru", "en"]), unique=True),
    channel=st.sampled_from([None, "email", "phone"]),
    words=st.lists(st.text(min_size=1, max_size=12), max_size=3, unique=True),
    low=st.none() | st.floats(-1e6, 1e6, allow_nan=False),
)
def test_spec_json_round_trip_property(days, langs, channel, words, low) -> None:
    attrs = {"city": words} if words else {}
    if low is not None:
        attrs["spend"] = {"min": low}
    spec = FilterSpec(
        registered_within_days=days, language=langs, channel=channel, attributes=attrs
    )
    assert FilterSpec.from_json(spec.to_json()) == spec


# --------------------------------------------------------------------------- filtering


def test_filter_combines_conditions_with_and_and_lists_with_or() -> None:
    frame = make_frame(5000, seed=2)
    spec = FilterSpec(
        channel="email",
        language=["sk", "cs"],
        registered_within_days=365,
        attributes={"treatment_result": ["still in treatment"], "visits": {"min": 5, "max": 9}},
        one_per_contact=False,
    )
    got = filter_recipients(frame, spec, today=TODAY, tz=TZ)
    assert list(got.columns) == list(frame.columns)
    assert got.dtypes.equals(frame.dtypes)
    local_day = frame["registered_at"].dt.tz_convert(TZ).dt.date
    expected = frame[
        (frame["channel"] == "email")
        & frame["language"].isin(["sk", "cs"])
        & (local_day >= date(2024, 6, 30))
        & (frame["treatment_result"] == "still in treatment")
        & frame["visits"].between(5, 9)
        & frame["mailing_allowed"]
        & ~frame["suppressed"]
    ]
    assert len(expected) > 20
    assert got["contact_point_id"].tolist() == expected["contact_point_id"].tolist()


def test_registration_days_are_counted_in_the_local_time_zone() -> None:
    # 23:30 UTC on 29 June is already 30 June in Bratislava (UTC+2 in summer).
    frame = tiny_frame(
        [
            {
                "contact_point_id": 1,
                "contact_id": 1,
                "registered_at": datetime(2025, 6, 29, 21, 59, tzinfo=UTC),
            },
            {
                "contact_point_id": 2,
                "contact_id": 2,
                "registered_at": datetime(2025, 6, 29, 22, 0, tzinfo=UTC),
            },
            {
                "contact_point_id": 3,
                "contact_id": 3,
                "registered_at": datetime(2025, 6, 23, 12, 0, tzinfo=UTC),
            },
        ]
    )
    ids = lambda spec, **kw: filter_recipients(frame, spec, **kw)["contact_point_id"].tolist()  # noqa: E731
    assert ids(FilterSpec(registered_within_days=0), today=TODAY, tz=TZ) == [2]
    assert ids(FilterSpec(registered_within_days=0), today=TODAY, tz="UTC") == []
    assert ids(FilterSpec(registered_within_days=7), today=TODAY, tz=TZ) == [1, 2, 3]
    assert ids(FilterSpec(registered_within_days=6), today=TODAY, tz=TZ) == [1, 2]
    assert ids(FilterSpec(registered_more_than_days_ago=0), today=TODAY, tz=TZ) == [1, 3]
    assert ids(FilterSpec(registered_more_than_days_ago=6), today=TODAY, tz=TZ) == [3]
    between = FilterSpec(registered_between=(date(2025, 6, 23), date(2025, 6, 29)))
    assert ids(between, tz=TZ) == [1, 3]
    assert ids(FilterSpec(registered_between=(None, date(2025, 6, 29))), tz=TZ) == [1, 3]


def test_default_today_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    from bulkmail_kernel.segments import filters as segments

    frame = tiny_frame(
        [
            {
                "contact_point_id": 1,
                "contact_id": 1,
                "registered_at": datetime(2025, 6, 30, 8, tzinfo=UTC),
            }
        ]
    )

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2025, 7, 1, 9, tzinfo=UTC).astimezone(tz)

    monkeypatch.setattr(segments, "datetime", Clock)
    monkeypatch.setenv("BULKMAIL_TZ", TZ)
    assert len(filter_recipients(frame, FilterSpec(registered_within_days=1))) == 1
    assert len(filter_recipients(frame, FilterSpec(registered_within_days=0))) == 0


def test_one_recipient_per_contact_and_channel() -> None:
    frame = tiny_frame(
        [
            # contact 1: preferred point 11 is not allowed, so allowed point 12 is used
            {"contact_point_id": 10, "contact_id": 1, "mailing_allowed": False},
            {
                "contact_point_id": 11,
                "contact_id": 1,
                "is_preferred": True,
                "mailing_allowed": False,
            },
            {"contact_point_id": 13, "contact_id": 1},
            {"contact_point_id": 12, "contact_id": 1},
            # contact 2: preferred point wins over a lower id
            {"contact_point_id": 20, "contact_id": 2},
            {"contact_point_id": 21, "contact_id": 2, "is_preferred": True},
            # contact 2 also has a phone: one per channel
            {
                "contact_point_id": 22,
                "contact_id": 2,
                "channel": "phone",
                "address": "+421903123456",
                "point_type": "mobile",
            },
            # contact 3: only a suppressed address
            {"contact_point_id": 30, "contact_id": 3, "suppressed": True},
        ]
    )
    got = filter_recipients(frame, FilterSpec())
    assert got["contact_point_id"].tolist() == [12, 21, 22]
    assert filter_recipients(frame, FilterSpec(channel="sms"))["contact_point_id"].tolist() == [22]
    everyone = FilterSpec(mailing_allowed=None, exclude_suppressed=False, one_per_contact=False)
    assert len(filter_recipients(frame, everyone)) == len(frame)
    no_opt_in = FilterSpec(mailing_allowed=False)
    assert filter_recipients(frame, no_opt_in)["contact_point_id"].tolist() == [11]


def test_one_per_contact_on_a_large_frame_keeps_exactly_one() -> None:
    frame = make_frame(20_000, seed=3)
    got = filter_recipients(frame, FilterSpec(mailing_allowed=None, exclude_suppressed=False))
    assert not got.duplicated(["contact_id", "channel"]).any()
    assert len(got) == frame.groupby(["contact_id", "channel"], observed=True).ngroups
    # Reference: preferred first, then the lowest id, by sorting.
    ref = frame.sort_values(
        ["contact_id", "channel", "is_preferred", "contact_point_id"],
        ascending=[True, True, False, True],
    )
    ref = ref.drop_duplicates(["contact_id", "channel"])
    assert sorted(got["contact_point_id"]) == sorted(ref["contact_point_id"])
    # Rows out of contact order take the hashing path and must agree.
    shuffled = frame.sample(frac=1.0, random_state=1)
    got2 = filter_recipients(shuffled, FilterSpec(mailing_allowed=None, exclude_suppressed=False))
    assert sorted(got2["contact_point_id"]) == sorted(ref["contact_point_id"])


def test_sparse_contact_ids_use_the_hashing_path() -> None:
    frame = tiny_frame(
        [
            {"contact_point_id": 1, "contact_id": 10**12},
            {"contact_point_id": 2, "contact_id": 10**12, "is_preferred": True},
            {"contact_point_id": 3, "contact_id": 5},
        ]
    )
    assert filter_recipients(frame, FilterSpec())["contact_point_id"].tolist() == [2, 3]


def test_has_valid_address() -> None:
    frame = tiny_frame(
        [
            {"contact_point_id": 1, "contact_id": 1, "address": "a@b.sk"},
            {"contact_point_id": 2, "contact_id": 2, "address": "not-an-address"},
            {
                "contact_point_id": 3,
                "contact_id": 3,
                "channel": "phone",
                "address": "+421903123456",
            },
            {"contact_point_id": 4, "contact_id": 4, "channel": "phone", "address": "0903 123"},
        ]
    )
    ids = lambda v: filter_recipients(frame, FilterSpec(has_valid_address=v))[  # noqa: E731
        "contact_point_id"
    ].tolist()
    assert ids(True) == [1, 3]
    assert ids(False) == [2, 4]


def test_attribute_equals_in_range_and_dates() -> None:
    frame = tiny_frame(
        [
            {"contact_point_id": 1, "contact_id": 1, "treatment_result": "cured", "visits": 1},
            {
                "contact_point_id": 2,
                "contact_id": 2,
                "treatment_result": "still in treatment",
                "visits": 5,
            },
            {"contact_point_id": 3, "contact_id": 3, "treatment_result": None, "visits": 9},
        ]
    )
    frame["last_visit"] = pd.to_datetime(["2025-01-05 00:00", "2025-03-01 10:00", None])
    ids = lambda **a: filter_recipients(frame, FilterSpec(attributes=a))[  # noqa: E731
        "contact_point_id"
    ].tolist()
    assert ids(treatment_result="cured") == [1]
    assert ids(treatment_result=["cured", "still in treatment"]) == [1, 2]
    assert ids(visits={"min": 5}) == [2, 3]
    assert ids(visits={"max": 5}) == [1, 2]
    assert ids(visits=[1, 9]) == [1, 3]
    assert ids(last_visit={"min": "2025-02-01", "max": "2025-03-01"}) == [2]
    assert ids(last_visit=["2025-01-05"]) == [1]


def test_unknown_attribute_names_the_available_ones() -> None:
    frame = make_frame(100)
    spec = FilterSpec(attributes={"treatment": ["cured"]})
    with pytest.raises(FilterError, match="'treatment'") as info:
        filter_recipients(frame, spec)
    msg = str(info.value)
    assert "did you mean 'treatment_result'" in msg
    for name in ("customer_type", "treatment_result", "city", "visits", "spend"):
        assert name in msg
    assert info.value.fields["attribute"] == "treatment"


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"visits": ["many"]}, "holds numbers"),
        ({"city": {"min": 1}}, "range"),
        ({"city": [3]}, "holds text"),
        ({"visits": {"min": "2025-01-01"}}, "holds numbers"),
    ],
)
def test_attribute_condition_must_fit_the_column(attrs: dict, match: str) -> None:
    with pytest.raises(FilterError, match=match):
        filter_recipients(make_frame(50), FilterSpec(attributes=attrs))


def test_missing_builtin_column_is_named() -> None:
    frame = make_frame(20).drop(columns=["suppressed"])
    with pytest.raises(FilterError, match="'suppressed'"):
        filter_recipients(frame, FilterSpec())


# --------------------------------------------------------------------------- saved segments


def store_frame(database: dbmod.Database, frame: pd.DataFrame) -> None:
    """Insert the frame's contacts and points so snapshots can reference them."""
    contacts = frame.drop_duplicates("contact_id")
    with database.session() as s:
        s.execute(
            sa.insert(dbmod.Contact),
            [
                {
                    "id": int(r.contact_id),
                    "first_name": r.first_name,
                    "last_name": r.last_name,
                    "registered_at": r.registered_at.to_pydatetime(),
                }
                for r in contacts.itertuples()
            ],
        )
        s.execute(
            sa.insert(dbmod.ContactPoint),
            [
                {
                    "id": int(r.contact_point_id),
                    "contact_id": int(r.contact_id),
                    "channel": str(r.channel),
                    "value": r.address,
                    "normalized": r.address,
                    "mailing_allowed": bool(r.mailing_allowed),
                    "is_preferred": bool(r.is_preferred),
                }
                for r in frame.itertuples()
            ],
        )


def test_save_list_load_and_snapshot(database: dbmod.Database) -> None:
    frame = make_frame(600, seed=4)
    store_frame(database, frame)
    spec = FilterSpec(channel="email", language=["sk"], attributes={"visits": {"min": 10}})
    expected = filter_recipients(frame, spec, today=TODAY)
    info = save_segment(
        "Slovak regulars", spec, frame, db=database, description="Ľudia", today=TODAY
    )
    assert info.members == len(expected) > 0
    assert info.spec == spec
    assert info.snapshot_at is not None
    assert info.snapshot_at.tzinfo is not None

    listed = list_segments(db=database)
    assert listed["name"].tolist() == ["Slovak regulars"]
    assert listed.loc[0, "members"] == len(expected)
    assert listed.loc[0, "description"] == "Ľudia"
    assert FilterSpec.from_json(listed.loc[0, "spec"]) == spec

    loaded_spec, loaded_info, member_ids = load_segment("Slovak regulars", db=database)
    assert loaded_spec == spec
    assert loaded_info.members == info.members
    assert member_ids.tolist() == sorted(expected["contact_point_id"])

    # Tomorrow some members stop qualifying; the snapshot still has them.
    changed = frame.copy()
    changed.loc[changed["contact_point_id"].isin(member_ids[:3]), "visits"] = 0
    snap = segment_recipients("Slovak regulars", changed, db=database)
    assert sorted(snap["contact_point_id"]) == member_ids.tolist()
    again = segment_recipients(
        "Slovak regulars", changed, mode="reevaluate", db=database, today=TODAY
    )
    assert len(again) == len(expected) - 3
    # A member that left the frame is simply missing from the snapshot's recipients.
    fewer = changed[changed["contact_point_id"] != member_ids[0]]
    assert len(segment_recipients("Slovak regulars", fewer, db=database)) == len(expected) - 1


def test_segment_errors(database: dbmod.Database) -> None:
    frame = make_frame(100, seed=5)
    store_frame(database, frame)
    save_segment("a", FilterSpec(), frame, db=database)
    with pytest.raises(SegmentError, match="'a' already exists"):
        save_segment("a", FilterSpec(), frame, db=database)
    with pytest.raises(SegmentError, match=r"'b' does not exist.*saved segments: a"):
        load_segment("b", db=database)
    with pytest.raises(SegmentError, match="does not exist"):
        segment_recipients("b", frame, db=database)
    with pytest.raises(SegmentError, match="mode"):
        segment_recipients("a", frame, mode="live", db=database)  # type: ignore[arg-type]
    with pytest.raises(SegmentError, match="non-empty"):
        save_segment("  ", FilterSpec(), frame, db=database)
    save_segment("c", FilterSpec(), frame, db=database)
    with pytest.raises(SegmentError, match="'c' already exists"):
        rename_segment("a", "c", db=database)
    with pytest.raises(SegmentError, match="does not exist"):
        delete_segment("zzz", db=database)
    # Points the database does not know (a frame from elsewhere) cannot be frozen in.
    foreign = make_frame(100, seed=5).assign(
        contact_point_id=lambda f: f["contact_point_id"] + 10**6
    )
    with pytest.raises(SegmentError, match="was the frame read from this database"):
        save_segment("foreign", FilterSpec(), foreign, db=database)
    assert list_segments(db=database)["name"].tolist() == ["a", "c"]


def test_replace_rename_and_delete(db_url: str) -> None:
    database = dbmod.open_database(db_url)
    frame = make_frame(300, seed=6)
    store_frame(database, frame)
    first = save_segment("group", FilterSpec(channel="email"), frame, url=db_url)
    second = save_segment("group", FilterSpec(channel="phone"), frame, url=db_url, replace=True)
    assert second.id == first.id
    assert second.spec.channel == "phone"
    assert second.members == len(filter_recipients(frame, FilterSpec(channel="phone")))
    renamed = rename_segment("group", "Skupina Žilina", url=db_url)
    assert renamed.name == "Skupina Žilina"
    assert renamed.members == second.members
    assert list_segments(url=db_url)["name"].tolist() == ["Skupina Žilina"]
    delete_segment("Skupina Žilina", url=db_url)
    assert list_segments(url=db_url).empty
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(dbmod.SegmentMember)) == 0


def test_bulk_snapshot(database: dbmod.Database) -> None:
    frame = make_frame(30_000, seed=7)
    store_frame(database, frame)
    spec = FilterSpec(mailing_allowed=None, exclude_suppressed=False, one_per_contact=False)
    info = save_segment("everyone", spec, frame, db=database)
    assert info.members == 30_000
    assert len(segment_recipients("everyone", frame, db=database)) == 30_000

"""The demo data set itself: every column of contacts, points and suppressions from one seed.

``_generate`` draws the rows of the three demo tables with numpy, vectorised, from
the pools of :mod:`bulkmail_kernel.demo.pools`: languages and genders, names with
diacritics and Cyrillic, registrations over five years, custom attributes as JSON
text, one to three contact points per contact (unique name-based e-mail addresses,
valid E.164 phone numbers written as people write them) and a few suppressions. The
same seed and day always give identical arrays, already in the form the database
driver stores, which :mod:`bulkmail_kernel.demo.generate` then loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from bulkmail_kernel.demo.pools import (
    _CITIES,
    _CUSTOMER_TYPES,
    _FIRST,
    _LANGUAGE_SHARE,
    _LAST,
    _NEW_CUSTOMER_DAYS,
    _PATRONYMICS,
    _PERSONAL_DOMAIN,
    _PET_NAMES,
    _PET_SPECIES,
    _PHONE_PLANS,
    _TREATMENT,
    _VET_SHARE,
    _WORK_DOMAINS,
    LANGUAGES,
    ascii_name,
)

#: The ``source`` of every demo contact and contact point; ``replace`` deletes by it.
DEMO_SOURCE = "demo"
#: The ``detail`` of every demo suppression (the table has no source column).
DEMO_SUPPRESSION_DETAIL = "demo data set"

# --------------------------------------------------------------------------- generation


def _five_years_before(today: date) -> date:
    try:
        return today.replace(year=today.year - 5)
    except ValueError:  # 29 February
        return today.replace(year=today.year - 5, day=28)


def _choice(rng: np.random.Generator, options: Sequence[tuple[Any, ...]], n: int) -> np.ndarray:
    """Draw ``n`` indices into ``options`` weighted by each option's second field."""
    p = np.array([o[1] for o in options], dtype=float)
    return rng.choice(len(options), size=n, p=p / p.sum())


def _obj(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _json_frag(values: Sequence[str]) -> np.ndarray:
    # json.dumps with its defaults, exactly as SQLAlchemy's JSON type serialises on SQLite.
    return _obj([json.dumps(v) for v in values])


def _iso(us: np.ndarray, unit: Literal["s", "ms", "us"] = "us") -> np.ndarray:
    stamps: npt.NDArray[np.datetime64] = us.astype(f"datetime64[{unit}]")
    return np.datetime_as_string(stamps, unit=unit)


def _group_digits(nsn: np.ndarray) -> np.ndarray:
    """Group a national number as people write it: 903 123 456, 912 345 6789."""
    head, mid, tail = (np.strings.slice(nsn, a, b) for a, b in ((0, 3), (3, 6), (6, None)))
    return np.strings.add(np.strings.add(head, " "), np.strings.add(np.strings.add(mid, " "), tail))


@dataclass
class _Tables:
    """Generated columns, in insertion order, ready for the driver."""

    contacts: dict[str, np.ndarray]
    points: dict[str, np.ndarray]
    suppressions: dict[str, np.ndarray]


def _unique_suffix(keys: np.ndarray) -> np.ndarray:
    """Return "", "2", "3", ... per occurrence of each key, so appended keys are unique."""
    codes, _ = pd.factorize(keys)
    k = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    out = np.full(len(keys), "", dtype=object)
    dup = np.flatnonzero(k > 0)
    out[dup] = [str(x + 1) for x in k[dup].tolist()]
    return out


def _draw_phones(
    rng: np.random.Generator, lang_idx: np.ndarray, landline: np.ndarray
) -> np.ndarray:
    """Draw unique E.164 numbers (as int64, without the plus), one per language row."""
    n = len(lang_idx)
    e164 = np.zeros(n, dtype=np.int64)

    def draw(rows: np.ndarray) -> None:
        for li, lang in enumerate(LANGUAGES):
            plan = _PHONE_PLANS[lang]
            for is_land, prefixes in (
                (False, plan.mobile_prefixes),
                (True, plan.landline_prefixes),
            ):
                sel = rows[(lang_idx[rows] == li) & (landline[rows] == is_land)]
                if not len(sel):
                    continue
                pre = np.array([int(p) for p in prefixes], dtype=np.int64)
                plen = np.array([len(p) for p in prefixes], dtype=np.int64)
                pick = rng.integers(0, len(prefixes), len(sel))
                rest = plan.length - plen[pick]
                scale = 10**rest
                nsn = pre[pick] * scale + rng.integers(0, scale)
                e164[sel] = plan.country_code * 10**plan.length + nsn

    rows = np.arange(n)
    draw(rows)
    # Redraw the (rare) repeats until every number is unique; deterministic per seed.
    while True:
        dup = pd.Series(e164).duplicated().to_numpy()
        if not dup.any():
            return e164
        draw(np.flatnonzero(dup))


def _generate(n: int, seed: int, today: date) -> _Tables:
    """Generate every column of the demo set; same arguments, same arrays."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1, dtype=np.int64)

    lang_idx = rng.choice(len(LANGUAGES), size=n, p=_LANGUAGE_SHARE)
    female = rng.random(n) < 0.52
    gender = np.where(female, "f", "m").astype(object)
    language = _obj(LANGUAGES)[lang_idx]

    first = np.empty(n, dtype=object)
    last = np.empty(n, dtype=object)
    patronymic = np.full(n, "", dtype=object)
    first_a = np.empty(n, dtype=object)
    last_a = np.empty(n, dtype=object)
    for li, lang in enumerate(LANGUAGES):
        for g in (0, 1):
            rows = np.flatnonzero((lang_idx == li) & (female == bool(g)))
            pool = _FIRST[lang][g]
            pick = rng.integers(0, len(pool), len(rows))
            first[rows] = _obj(pool)[pick]
            first_a[rows] = _obj([ascii_name(x) for x in pool])[pick]
            surnames = [pair[g] for pair in _LAST[lang]]
            pick = rng.integers(0, len(surnames), len(rows))
            last[rows] = _obj(surnames)[pick]
            last_a[rows] = _obj([ascii_name(x) for x in surnames])[pick]
            if lang == "ru":
                pats = [pair[g] for pair in _PATRONYMICS]
                patronymic[rows] = _obj(pats)[rng.integers(0, len(pats), len(rows))]

    # Registrations over the five years before today, denser recently (the firm grew);
    # ids follow registration order as they would in a real CRM.
    day0 = datetime(today.year, today.month, today.day, tzinfo=UTC)
    lower = datetime.combine(_five_years_before(today), datetime.min.time(), tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    lower_us = (lower - epoch) // timedelta(microseconds=1)
    span_us = (day0 - lower) // timedelta(microseconds=1)
    reg_us = np.sort(lower_us + (np.sqrt(rng.random(n)) * span_us).astype(np.int64))
    reg_text = np.strings.replace(_iso(reg_us), "T", " ")
    age_days = (day0 - epoch) // timedelta(days=1) - reg_us // 86_400_000_000

    external_id = np.full(n, None, dtype=object)
    has_ext = rng.random(n) < 0.9
    external_id[has_ext] = np.strings.add("DEMO-", np.strings.zfill(ids[has_ext].astype(str), 7))

    attributes = _attributes(rng, n, lang_idx, age_days, today)
    contacts = {
        "id": ids,
        "external_id": external_id,
        "first_name": first,
        "last_name": last,
        "patronymic": patronymic,
        "gender": gender,
        "language": language,
        "registered_at": reg_text,
        "attributes": attributes,
        "source": np.full(n, DEMO_SOURCE, dtype=object),
        "created_at": reg_text,
        "updated_at": reg_text,
    }
    points = _points(rng, n, ids, lang_idx, first_a, last_a, reg_text)
    suppressions = _suppressions(rng, points, reg_text)
    return _Tables(contacts, points, suppressions)


def _attributes(
    rng: np.random.Generator, n: int, lang_idx: np.ndarray, age_days: np.ndarray, today: date
) -> np.ndarray:
    """Build each contact's attributes as JSON text, by concatenating pre-serialised parts."""
    ctype = _json_frag([c[0] for c in _CUSTOMER_TYPES])[_choice(rng, _CUSTOMER_TYPES, n)]
    ctype[age_days <= _NEW_CUSTOMER_DAYS] = json.dumps("new")
    city = np.empty(n, dtype=object)
    pet_name = np.empty(n, dtype=object)
    for li, lang in enumerate(LANGUAGES):
        rows = np.flatnonzero(lang_idx == li)
        city[rows] = _json_frag(_CITIES[lang])[rng.integers(0, len(_CITIES[lang]), len(rows))]
        pets = _PET_NAMES[lang]
        pet_name[rows] = _json_frag(pets)[rng.integers(0, len(pets), len(rows))]
    loyalty = rng.gamma(2.0, 400.0, n).astype(np.int64).astype(str).astype(object)
    attrs = '{"customer_type": ' + ctype + ', "city": ' + city + ', "loyalty_points": ' + loyalty

    vet = np.flatnonzero(rng.random(n) < _VET_SHARE)
    species = _json_frag([s[0] for s in _PET_SPECIES])[_choice(rng, _PET_SPECIES, len(vet))]
    result_idx = _choice(rng, _TREATMENT, len(vet))
    low = np.array([t[2] for t in _TREATMENT])[result_idx]
    high = np.array([t[3] for t in _TREATMENT])[result_idx]
    due = np.datetime64(today, "D") + rng.integers(low, high + 1)
    attrs[vet] = (
        attrs[vet]
        + ', "pet_name": '
        + pet_name[vet]
        + ', "pet_species": '
        + species
        + ', "treatment_result": '
        + _json_frag([t[0] for t in _TREATMENT])[result_idx]
        + ', "next_checkup": "'
        + np.datetime_as_string(due, unit="D").astype(object)
        + '"'
    )
    return attrs + "}"


# Contact-point slots, in the order a contact's points get their ids.
_SLOT_EMAIL, _SLOT_EMAIL2, _SLOT_WORK, _SLOT_MOBILE, _SLOT_LANDLINE = range(5)


def _points(
    rng: np.random.Generator,
    n: int,
    ids: np.ndarray,
    lang_idx: np.ndarray,
    first_a: np.ndarray,
    last_a: np.ndarray,
    reg_text: np.ndarray,
) -> dict[str, np.ndarray]:
    """Give every contact one to three contact points (e-mails and phones)."""
    has = np.zeros((5, n), dtype=bool)
    has[_SLOT_EMAIL] = rng.random(n) < 0.88
    has[_SLOT_EMAIL2] = has[_SLOT_EMAIL] & (rng.random(n) < 0.08)
    has[_SLOT_WORK] = rng.random(n) < 0.22
    has[_SLOT_MOBILE] = rng.random(n) < 0.65
    has[_SLOT_LANDLINE] = rng.random(n) < 0.08
    has[_SLOT_EMAIL] |= ~has.any(axis=0)  # everyone is reachable somehow
    for slot in (_SLOT_LANDLINE, _SLOT_EMAIL2):  # at most three points each
        has[slot] &= has.sum(axis=0) <= 3
    landline_work = rng.random(n) < 0.5
    email2_preferred = rng.random(n) < 0.15

    slot_of, row_of = np.nonzero(has)
    order = np.lexsort((slot_of, row_of))
    slot_of, row_of = slot_of[order], row_of[order]
    m = len(row_of)
    lang = lang_idx[row_of]

    channel = np.where(slot_of <= _SLOT_WORK, "email", "phone").astype(object)
    kind = np.where(
        (slot_of == _SLOT_WORK) | ((slot_of == _SLOT_LANDLINE) & landline_work[row_of]),
        "work",
        "personal",
    ).astype(object)
    ptype = _obj(["main", "newsletter", "main", "mobile", "landline"])[slot_of]
    ptype[(slot_of == _SLOT_EMAIL2) & (rng.random(m) < 0.4)] = "billing"
    ptype[(slot_of == _SLOT_WORK) & (rng.random(m) < 0.25)] = "billing"
    preferred = np.where(slot_of == _SLOT_EMAIL2, email2_preferred[row_of], True)
    preferred[slot_of == _SLOT_EMAIL] = (
        ~email2_preferred[row_of[slot_of == _SLOT_EMAIL]]
        | ~(has[_SLOT_EMAIL2][row_of[slot_of == _SLOT_EMAIL]])
    )
    # A personal landline beside a personal mobile is the fallback, not the first choice.
    preferred[(slot_of == _SLOT_LANDLINE) & (kind == "personal") & has[_SLOT_MOBILE][row_of]] = (
        False
    )
    allowed_share = np.array([0.82, 0.6, 0.55, 0.5, 0.2])[slot_of]
    mailing_allowed = rng.random(m) < allowed_share

    normalized = np.empty(m, dtype=object)
    value = np.empty(m, dtype=object)

    # E-mail: name-based local parts, made unique with a number as people do (jan.novak2).
    em = np.flatnonzero(channel == "email")
    f, s = first_a[row_of[em]], last_a[row_of[em]]
    initial = _obj([x[0] for x in f.tolist()])
    pattern = rng.choice(6, size=len(em), p=[0.42, 0.15, 0.17, 0.1, 0.08, 0.08])
    local = np.empty(len(em), dtype=object)
    for k, (a, sep, b) in enumerate(
        ((f, ".", s), (f, "", s), (initial, ".", s), (s, ".", f), (f, "-", s), (s, ".", initial))
    ):
        rows = pattern == k  # build each pattern only for its own rows
        local[rows] = a[rows] + sep + b[rows]
    domain = np.empty(len(em), dtype=object)
    em_lang = lang[em]
    em_slot = slot_of[em]
    for li, code in enumerate(LANGUAGES):
        here = em_lang == li
        domain[here] = _PERSONAL_DOMAIN[code]
        work = np.flatnonzero(here & (em_slot == _SLOT_WORK))
        wd = _WORK_DOMAINS[code]
        domain[work] = _obj(wd)[rng.integers(0, len(wd), len(work))]
    # A second personal mailbox lives at the other provider, or an international one.
    alt = (em_slot == _SLOT_EMAIL2) | ((em_slot == _SLOT_EMAIL) & (rng.random(len(em)) < 0.15))
    domain[alt & (em_lang != LANGUAGES.index("en"))] = "example.com"
    domain[alt & (em_lang == LANGUAGES.index("en"))] = "sk.example.net"
    # Local parts end in a letter, so appending digits can never recreate another base.
    address = local + "@" + domain
    suffix = _unique_suffix(address)
    dup = suffix != ""
    address[dup] = local[dup] + suffix[dup] + "@" + domain[dup]
    normalized[em] = address
    value[em] = normalized[em]

    # Phones: valid E.164 by construction; the source spelling varies as in real files.
    ph = np.flatnonzero(channel == "phone")
    e164 = _draw_phones(rng, lang[ph], slot_of[ph] == _SLOT_LANDLINE)
    digits = e164.astype(str)
    normalized[ph] = np.strings.add("+", digits).astype(object)
    cc = np.array([_PHONE_PLANS[c].country_code for c in LANGUAGES])[lang[ph]]
    cc_text = cc.astype(str)
    nsn = np.strings.slice(digits, np.strings.str_len(cc_text), None)
    grouped = _group_digits(nsn)
    trunk = np.array([_PHONE_PLANS[c].trunk for c in LANGUAGES])[lang[ph]]
    style = rng.choice(3, size=len(ph), p=[0.5, 0.3, 0.2])
    # Czech numbers have no trunk prefix: a bare national number would read as Slovak.
    style[(style == 2) & (trunk == "")] = 1
    intl = np.strings.add(np.strings.add("+", cc_text), np.strings.add(" ", grouped))
    national = np.strings.add(trunk, grouped)
    value[ph] = np.where(style == 0, normalized[ph], np.where(style == 1, intl, national))

    return {
        "id": np.arange(1, m + 1, dtype=np.int64),
        "contact_id": ids[row_of],
        "channel": channel,
        "value": value,
        "normalized": normalized,
        "type": ptype,
        "kind": kind,
        "mailing_allowed": mailing_allowed,
        "is_preferred": preferred.astype(bool),
        "soft_bounces": np.zeros(m, dtype=np.int64),
        "source": np.full(m, DEMO_SOURCE, dtype=object),
        "created_at": reg_text[row_of],
        "updated_at": reg_text[row_of],
    }


def _suppressions(
    rng: np.random.Generator, points: dict[str, np.ndarray], reg_text: np.ndarray
) -> dict[str, np.ndarray]:
    """Suppress a few addresses (unsubscribed, bounced), as every real list has."""
    m = len(points["id"])
    pick = np.flatnonzero(rng.random(m) < 0.012)
    email = points["channel"][pick] == "email"
    reason = np.where(
        email,
        np.where(rng.random(len(pick)) < 0.6, "unsubscribe", "hard_bounce"),
        "unsubscribe",
    ).astype(object)
    # Someone who unsubscribed no longer allows mailing at that address.
    points["mailing_allowed"][pick[reason == "unsubscribe"]] = False
    when = reg_text[points["contact_id"][pick] - 1]
    return {
        "channel": points["channel"][pick],
        "normalized": points["normalized"][pick],
        "reason": reason,
        "detail": np.full(len(pick), DEMO_SUPPRESSION_DETAIL, dtype=object),
        "created_at": when,
    }

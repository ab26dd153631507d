"""The demo data set: deterministic, realistic, and loaded exactly as the ORM stores rows."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import sqlalchemy as sa
from email_validator import validate_email

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts.values import email_identity
from bulkmail_kernel.db import Contact, ContactPoint, Suppression, open_database
from bulkmail_kernel.demo.dataset import DEMO_SOURCE
from bulkmail_kernel.demo.generate import generate_demo
from bulkmail_kernel.demo.pools import _LAST, _PHONE_PLANS, ascii_name
from bulkmail_kernel.exceptions import ConfigError

TODAY = date(2026, 11, 23)
N = 300
REGION = {"sk": "SK", "cs": "CZ", "ru": "RU", "en": "GB"}
DOMAINS = ("example.com", "sk.example.net", "cz.example.net", "ru.example.net")
CYRILLIC = re.compile(r"^[А-Яа-яЁё-]+$")


def _generate(db: dbmod.Database, **kw: Any) -> Any:
    kw.setdefault("today", TODAY)
    kw.setdefault("progress", False)
    kw.setdefault("samples_dir", None)
    return generate_demo(kw.pop("contacts", N), db=db, **kw)


def _dump(db: dbmod.Database) -> dict[str, list[tuple[Any, ...]]]:
    """Read every demo table back through the ORM, in id order."""
    out = {}
    with db.session() as s:
        for model in (Contact, ContactPoint, Suppression):
            cols = [c.key for c in sa.inspect(model).column_attrs]
            if model is Suppression:
                # Not given by the demo: PostgreSQL's sequence keeps counting after a replace.
                cols.remove("id")
            rows = s.scalars(sa.select(model).order_by(model.id)).all()
            out[model.__tablename__] = [tuple(getattr(r, c) for c in cols) for r in rows]
    return out


def _load(db: dbmod.Database) -> tuple[list[Contact], list[ContactPoint]]:
    with db.session() as s:
        contacts = s.scalars(sa.select(Contact).order_by(Contact.id)).all()
        points = s.scalars(sa.select(ContactPoint).order_by(ContactPoint.id)).all()
    return list(contacts), list(points)


def test_same_seed_gives_identical_data(db_url: str, tmp_path: Path) -> None:
    """Same seed into two databases (this backend and a second SQLite file): same rows."""
    first = open_database(db_url)
    summary = _generate(first)
    other = open_database(f"sqlite:///{tmp_path / 'second.db'}")
    _generate(other)
    a, b = _dump(first), _dump(other)
    assert len(a["contacts"]) == N
    assert len(a["contact_points"]) > N
    assert a == b
    assert dict(zip(summary["table"], summary["rows"], strict=True)) == {
        "contacts": N,
        "contact_points": len(a["contact_points"]),
        "suppressions": len(a["suppressions"]),
    }


def test_other_seed_gives_other_data(sqlite_url: str, tmp_path: Path) -> None:
    first = open_database(sqlite_url)
    _generate(first)
    other = open_database(f"sqlite:///{tmp_path / 'other.db'}")
    _generate(other, seed=7)
    assert _dump(first)["contacts"] != _dump(other)["contacts"]


def test_content_is_realistic(database: dbmod.Database) -> None:
    _generate(database)
    contacts, points = _load(database)
    by_lang = Counter(c.language for c in contacts)
    assert set(by_lang) == {"sk", "cs", "ru", "en"}
    assert all(c.gender in ("m", "f") for c in contacts)
    assert all(c.source == DEMO_SOURCE for c in contacts)

    for c in contacts:
        if c.language == "ru":
            for part in (c.first_name, c.last_name, c.patronymic):
                assert CYRILLIC.match(part), (c.id, part)
            assert c.patronymic.endswith("вич" if c.gender == "m" else "вна"), c.patronymic
            if c.gender == "f":
                assert c.last_name.endswith(("а", "ая")), c.last_name
        else:
            assert c.patronymic == "", (c.id, c.patronymic)
        if c.language in ("sk", "cs"):
            forms = {pair[c.gender == "f"] for pair in _LAST[c.language]}
            assert c.last_name in forms, (c.id, c.gender, c.last_name)
    female_sk_cs = [c.last_name for c in contacts if c.language in ("sk", "cs") and c.gender == "f"]
    assert sum(n.endswith("ová") for n in female_sk_cs) > len(female_sk_cs) // 2
    for lang in ("sk", "cs"):
        names = [c.first_name + c.last_name for c in contacts if c.language == lang]
        assert sum(not n.isascii() for n in names) > len(names) // 5, lang

    lower = datetime(2021, 11, 23, tzinfo=UTC)
    day0 = datetime(2026, 11, 23, tzinfo=UTC)
    assert all(lower <= c.registered_at < day0 for c in contacts)
    # Spread over the whole span, not bunched at one end.
    years = {c.registered_at.year for c in contacts}
    assert len(years) >= 5

    types = Counter(c.attributes["customer_type"] for c in contacts)
    assert set(types) <= {"regular", "VIP", "inactive", "wholesale", "new"}
    assert {"regular", "VIP", "new"} <= set(types)
    assert all(isinstance(c.attributes["city"], str) for c in contacts)
    vets = [c.attributes for c in contacts if "pet_name" in c.attributes]
    assert 0.25 * N < len(vets) < 0.55 * N
    assert {"still in treatment", "healed"} <= {a["treatment_result"] for a in vets}
    assert all(date.fromisoformat(a["next_checkup"]) > TODAY for a in vets)

    per_contact = Counter(p.contact_id for p in points)
    assert set(per_contact) == {c.id for c in contacts}
    assert set(per_contact.values()) <= {1, 2, 3}
    assert max(per_contact.values()) == 3
    preferred = Counter()
    for p in points:
        preferred[(p.contact_id, p.channel, p.kind)] += p.is_preferred
    assert set(preferred.values()) == {1}
    assert {p.mailing_allowed for p in points} == {True, False}
    assert {p.channel for p in points} == {"email", "phone"}
    assert {p.kind for p in points} == {"personal", "work"}
    assert {"main", "billing", "newsletter", "mobile", "landline"} <= {p.type for p in points}
    assert all(p.source == DEMO_SOURCE for p in points)
    assert len({(p.channel, p.normalized) for p in points}) == len(points)

    lang_of = {c.id: c.language for c in contacts}
    for p in points:
        if p.channel == "email":
            assert validate_email(p.normalized, check_deliverability=False).normalized == (
                p.normalized
            )
            assert email_identity(p.normalized) == p.normalized  # stored as its identity
            local, domain = p.normalized.split("@")
            assert local.isascii(), p.normalized
            assert local.islower(), p.normalized
            assert domain in DOMAINS or domain.endswith(tuple("." + d for d in DOMAINS)), domain
            assert p.value == p.normalized
        else:
            num = phonenumbers.parse(p.normalized, None)
            assert phonenumbers.is_valid_number(num), p.normalized
            e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
            assert e164 == p.normalized
            assert phonenumbers.region_code_for_number(num) == REGION[lang_of[p.contact_id]]
            # The source spelling parses back to the same number in the contact's country.
            again = phonenumbers.parse(p.value, REGION[lang_of[p.contact_id]])
            assert phonenumbers.format_number(again, phonenumbers.PhoneNumberFormat.E164) == e164


def test_orm_reads_aware_utc_datetimes_and_dict_attributes(database: dbmod.Database) -> None:
    _generate(database, contacts=50)
    with database.session() as s:
        contact = s.get(Contact, 1)
        assert contact is not None
        for when in (contact.registered_at, contact.created_at, contact.updated_at):
            assert when.tzinfo is not None
            assert when.utcoffset() == timedelta(0)
        assert isinstance(contact.attributes, dict)
        assert contact.points, "contact 1 has points"
        for p in contact.points:
            assert p.created_at == contact.registered_at
        supp = s.scalars(sa.select(Suppression)).first()
        if supp is not None:
            assert supp.created_at.utcoffset() == timedelta(0)
        # The ORM filters on the stored timestamps (same text format on SQLite).
        cutoff = contact.registered_at
        assert (
            s.scalar(
                sa.select(sa.func.count())
                .select_from(Contact)
                .where(Contact.registered_at <= cutoff)
            )
            == 1
        )


def test_ids_continue_after_demo(database: dbmod.Database) -> None:
    """Explicit ids must leave the sequences (PostgreSQL) past the demo rows."""
    _generate(database, contacts=20)
    with database.session() as s:
        c = Contact(first_name="Nový", registered_at=datetime.now(UTC), source="manual")
        c.points.append(
            ContactPoint(channel="email", value="n@sk.example.net", normalized="n@sk.example.net")
        )
        s.add(c)
        s.flush()
        assert c.id == 21
        assert c.points[0].id > 20


def test_existing_contacts_need_replace(database: dbmod.Database) -> None:
    _generate(database)
    before = _dump(database)
    with pytest.raises(ConfigError, match=r"replace=True.*--replace"):
        _generate(database)
    assert _dump(database) == before
    _generate(database, replace=True, seed=99)
    after = _dump(database)
    assert len(after["contacts"]) == N
    assert after["contacts"] != before["contacts"]
    # Replacing with the original seed restores the original set exactly.
    _generate(database, replace=True)
    assert _dump(database) == before


def test_real_contacts_are_never_mixed_with_demo(database: dbmod.Database) -> None:
    with database.session() as s:
        s.add(Contact(first_name="Skutočná", registered_at=datetime.now(UTC), source="crm.csv"))
    for replace in (False, True):
        with pytest.raises(ConfigError, match="not demo data"):
            _generate(database, replace=replace)
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Contact)) == 1


def test_contacts_must_be_positive(sqlite_url: str) -> None:
    with pytest.raises(ConfigError, match="contacts=0"):
        generate_demo(0, url=sqlite_url, progress=False)


def test_default_samples_dir_and_url(tmp_path: Path) -> None:
    """With no db/url it fills the default SQLite file; samples go under the data dir."""
    summary = generate_demo(30, today=TODAY, progress=False)
    assert summary["rows"].iloc[0] == 30
    assert (tmp_path / "data" / "bulkmail.db").exists()
    if importlib.util.find_spec("bulkmail_kernel.demo.samples") is not None:
        assert any((tmp_path / "data" / "samples").iterdir())
    dbmod.close_all()


@pytest.mark.parametrize("lang", sorted(_PHONE_PLANS))
def test_phone_ranges_are_valid_at_both_ends(lang: str) -> None:
    plan = _PHONE_PLANS[lang]
    for prefix in plan.mobile_prefixes + plan.landline_prefixes:
        for fill in "09":
            nsn = prefix + fill * (plan.length - len(prefix))
            num = phonenumbers.parse(f"+{plan.country_code}{nsn}", None)
            assert phonenumbers.is_valid_number(num), (lang, nsn)
            assert phonenumbers.region_code_for_number(num) == REGION[lang]


def test_ascii_name_transliterates() -> None:
    assert ascii_name("Šťastná") == "stastna"
    assert ascii_name("Фёдоров") == "fedorov"
    assert ascii_name("Щукина") == "shchukina"
    assert ascii_name("O'Brien") == "obrien"
    assert ascii_name("Zoë") == "zoe"


def test_frame_shows_demo_data(database: dbmod.Database) -> None:
    contacts_mod = pytest.importorskip("bulkmail_kernel.contacts.frame")
    _generate(database)
    frame = contacts_mod.contacts_frame(database)
    assert frame["contact_id"].nunique() == N
    assert set(frame["language"].cat.categories) == {"sk", "cs", "ru", "en"}
    assert {"customer_type", "city", "pet_name", "treatment_result"} <= set(frame.columns)
    assert str(frame["registered_at"].dtype) == "datetime64[us, UTC]"

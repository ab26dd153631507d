"""One identity per e-mail address: the key, import merges, suppressions, unsubscribes, bounces."""

from __future__ import annotations

import math
import textwrap
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import assume, given
from hypothesis import strategies as st

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts.values import email_identity
from bulkmail_kernel.db import Contact, ContactPoint, Message, Suppression
from bulkmail_kernel.outbox.bounces import last_message_to
from bulkmail_kernel.outbox.suppressions import add_suppression

# --------------------------------------------------------------------------- the key


@pytest.mark.parametrize(
    ("typed", "identity"),
    [
        ("DUP.SAME@x.sk", "dup.same@x.sk"),
        ("  Dup.Same@X.SK ", "dup.same@x.sk"),
        ("ivan@BÜCHER.de", "ivan@xn--bcher-kva.de"),
        ("Ivan@xn--BCHER-kva.de", "ivan@xn--bcher-kva.de"),
        ("Ľubica@Pošta.sk", "ľubica@xn--pota-h6a.sk"),
        ("ОЛЬГА@почта.рф", "ольга@xn--80a1acny.xn--p1ai"),
    ],
)
def test_the_identity_is_case_blind_with_the_domain_in_a_labels(typed: str, identity: str) -> None:
    assert email_identity(typed) == identity


def test_the_identity_folds_nothing_provider_specific() -> None:
    # Gmail ignores dots and +tags in its own local parts; other providers do not.
    assert email_identity("jan.novak@gmail.com") != email_identity("jannovak@gmail.com")
    assert email_identity("jan+news@gmail.com") != email_identity("jan@gmail.com")


def test_an_invalid_address_says_why() -> None:
    with pytest.raises(ValueError, match="invalid e-mail address"):
        email_identity("not an address")


_LOCAL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+áÁäÄčČßŽžЖжΣσς"
_DOMAINS = ["x.sk", "Example.COM", "bücher.de", "xn--bcher-kva.de", "ŽLTÝ.sk", "почта.рф"]
locals_ = st.text(alphabet=_LOCAL_CHARS, min_size=1, max_size=24)
domains = st.sampled_from(_DOMAINS)


def _identity_or_none(address: str) -> str | None:
    try:
        return email_identity(address)
    except ValueError:
        return None


@given(locals_, domains)
def test_the_identity_is_idempotent(local: str, domain: str) -> None:
    key = _identity_or_none(f"{local}@{domain}")
    assume(key is not None)
    assert email_identity(key) == key


@given(locals_, domains)
def test_the_identity_is_case_blind(local: str, domain: str) -> None:
    key = _identity_or_none(f"{local}@{domain}")
    for other in (f"{local.upper()}@{domain.upper()}", f"{local.swapcase()}@{domain.lower()}"):
        other_key = _identity_or_none(other)
        assume(key is not None and other_key is not None)
        assert other_key == key


@given(locals_, locals_, domains)
def test_the_identity_never_merges_different_local_parts(a: str, b: str, domain: str) -> None:
    key_a, key_b = _identity_or_none(f"{a}@{domain}"), _identity_or_none(f"{b}@{domain}")
    assume(key_a is not None and key_b is not None)

    def caseless(text: str) -> str:
        return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())

    assert (key_a == key_b) == (caseless(a) == caseless(b))


@given(locals_)
def test_an_idn_domain_in_either_form_is_one_identity(local: str) -> None:
    unicode_form = _identity_or_none(f"{local}@Bücher.de")
    assume(unicode_form is not None)
    assert _identity_or_none(f"{local}@xn--bcher-kva.de") == unicode_form


# --------------------------------------------------------------------------- import


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_case_duplicates_in_one_file_are_one_contact_and_reported(
    database: dbmod.Database, tmp_path: Path
) -> None:
    source = _csv(
        tmp_path,
        """
        first_name,last_name,email,mailing_allowed
        Dana,Dupová,dup.same@x.sk,yes
        Eva,Malá,eva@x.sk,yes
        ,Dupová,DUP.SAME@x.sk,yes
        Ivan,Petrov,ivan@BÜCHER.de,no
        Ivan,,Ivan@xn--bcher-kva.de,
        """,
    )
    result = bm.import_contacts(source, db=database, progress=False)
    assert (result.inserted, result.merged, result.rejected) == (3, 2, 0)
    report = result.report
    lines = report[report.action == "merged"][["row", "column", "value", "reason"]]
    assert lines.values.tolist() == [
        [
            4,
            "email",
            "DUP.SAME@x.sk",
            "DUP.SAME@x.sk is the same address as dup.same@x.sk (row 2): merged into one contact",
        ],
        [
            6,
            "email",
            "Ivan@xn--bcher-kva.de",
            "Ivan@xn--bcher-kva.de is the same address as ivan@BÜCHER.de (row 5): "
            "merged into one contact",
        ],
    ]
    with database.session() as s:
        points = s.execute(
            sa.select(ContactPoint.normalized, ContactPoint.value).where(
                ContactPoint.channel == "email"
            )
        ).all()
    # One point per identity, shown as first typed.
    assert sorted(points) == [
        ("dup.same@x.sk", "dup.same@x.sk"),
        ("eva@x.sk", "eva@x.sk"),
        ("ivan@xn--bcher-kva.de", "ivan@BÜCHER.de"),
    ]


def test_another_spelling_of_an_address_in_the_database_is_that_contact(
    database: dbmod.Database, tmp_path: Path
) -> None:
    first = pd.DataFrame(
        {"first_name": ["Dana"], "email": ["dup.same@x.sk"], "mailing_allowed": ["yes"]}
    )
    bm.import_contacts(first, db=database, progress=False)
    again = _csv(
        tmp_path,
        """
        first_name,last_name,email
        Dana,Dupová,DUP.SAME@X.SK
        """,
    )
    result = bm.import_contacts(again, db=database, progress=False)
    assert (result.inserted, result.updated, result.rejected) == (0, 1, 0)
    matched = result.report[result.report.action == "matched"]
    assert matched[["row", "column", "value"]].values.tolist() == [[2, "email", "DUP.SAME@X.SK"]]
    assert matched.reason.iloc[0] == (
        "DUP.SAME@X.SK is the same address as dup.same@x.sk of contact 1 in the database: "
        "merged into that contact"
    )
    with database.session() as s:
        contact = s.scalars(sa.select(Contact)).one()
        assert (contact.first_name, contact.last_name) == ("Dana", "Dupová")
        [point] = contact.points
        # The spelling first stored stays; consent the file did not state stays too.
        assert (point.normalized, point.value, point.mailing_allowed) == (
            "dup.same@x.sk",
            "dup.same@x.sk",
            True,
        )
    # Importing the other spelling again changes nothing.
    assert bm.import_contacts(again, db=database, progress=False).unchanged == 1


# --------------------------------------------------------------------------- suppressions


def _two_people(database: dbmod.Database) -> None:
    frame = pd.DataFrame(
        {
            "first_name": ["Dana", "Eva"],
            "email": ["Dup.Same@x.sk", "eva@x.sk"],
            "mailing_allowed": ["yes", "yes"],
        }
    )
    bm.import_contacts(frame, db=database, progress=False)


def _campaign(database: dbmod.Database, tmp_path: Path, name: str) -> str:
    bm.add_sender_account(
        "files",
        kind="file",
        from_email="news@shop.sk",
        settings={
            "folder": str(tmp_path / "out"),
            "unsubscribe_url": "https://shop.sk/u?t={token}",
        },
        db=database,
    )
    template = bm.template_from_html(
        '<p>Dobrý deň {{ first_name }}</p><p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p>',
        "Pre {{ first_name }}",
        name="short",
    )
    return bm.create_campaign(name, sender="files", template=template, db=database).name


def test_unsubscribing_one_spelling_stops_mail_to_the_other(
    database: dbmod.Database, tmp_path: Path
) -> None:
    _two_people(database)
    assert bm.unsubscribe_address("DUP.SAME@X.SK", db=database) is True
    campaign = _campaign(database, tmp_path, "spring")
    queue = bm.register(campaign, bm.contacts_frame(database), db=database)
    assert list(queue["recipient"]) == ["eva@x.sk"]
    skipped = bm.skipped(campaign, db=database)
    assert skipped[["address", "reason"]].values.tolist() == [["dup.same@x.sk", "suppressed"]]


def test_a_suppression_in_any_spelling_matches_the_address(
    database: dbmod.Database, tmp_path: Path
) -> None:
    _two_people(database)
    campaign = _campaign(database, tmp_path, "summer")
    bm.register(campaign, bm.contacts_frame(database), db=database)
    with database.session() as s:
        assert add_suppression(s, "email", "EVA@X.SK", reason="manual", detail="asked by phone")
        # The same person again, spelled another way: already suppressed.
        assert not add_suppression(s, "email", "Eva@x.sk", reason="manual", detail="again")
        assert s.scalars(sa.select(Suppression.normalized)).all() == ["eva@x.sk"]
    frame = bm.contacts_frame(database)
    # The frame shows each address as it was typed; the suppression matched its identity.
    assert frame.set_index("address").suppressed.to_dict() == {
        "Dup.Same@x.sk": False,
        "eva@x.sk": True,
    }
    # A message registered before the suppression is not sent (checked at every claim).
    summary = bm.send(campaign, rate_per_hour=math.inf, progress=False, db=database)
    assert summary.sent == 1
    with database.session() as s:
        statuses = dict(s.execute(sa.select(Message.recipient, Message.status)).all())
    assert statuses == {"dup.same@x.sk": "sent", "eva@x.sk": "removed"}


def test_a_bounce_naming_the_address_in_capitals_finds_the_message(
    database: dbmod.Database, tmp_path: Path
) -> None:
    _two_people(database)
    campaign = _campaign(database, tmp_path, "autumn")
    bm.register(campaign, bm.contacts_frame(database), db=database)
    with database.session() as s:
        account_id = s.scalars(sa.select(dbmod.SenderAccount.id)).one()
        found = last_message_to(s, account_id, "DUP.SAME@X.SK")
    assert found is not None
    assert found.recipient == "dup.same@x.sk"

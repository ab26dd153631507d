"""The import's fast cell readers (contacts.cells) answer exactly what the rules of values do.

Each case runs the same input through ``CellReader`` and through the function of
``values`` it stands for, twice (the second answer comes from the cache), and demands
the same value, or a ValueError with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail_kernel.contacts.cells import CellReader
from bulkmail_kernel.contacts.values import (
    _GENDER,
    _KIND,
    _LANGUAGE,
    _lookup,
    _needs_cleaning,
    clean_text,
    email_identity,
    normalize_phone,
    parse_date,
    parse_yes_no,
)

EMAILS = [
    "eva@example.sk", "Eva.Mala@Example.SK", "  eva@example.sk  ", "user+news@gmail.com",
    "user+tag+more@sub.domain.co.uk", "UPPER+Plus@GMAIL.COM", "o'brien@firma.ie",
    "a!#$%&'*+/=?^_`{|}~-z@x.io", "first.last@x.org", "user@bücher.de", "user@BÜCHER.de",
    "user@xn--bcher-kva.de", "user@XN--BCHER-KVA.DE", "ü@bücher.de", "Ölaf@firma.sk",
    "иван@пример.рф", "user@пример.рф", "user@xn--e1afmkfd.xn--p1ai", "日本@日本.jp",
    '"quoted"@x.com', '"a b"@x.com', "Eva <eva@x.sk>", "eva@x.sk>", "eva @x.sk", "eva@ x.sk",
    "eva@x .sk", "a..b@x.sk", ".a@x.sk", "a.@x.sk", "a@x..sk", "a@.x.sk", "a@x.sk.", "@x.sk",
    "a@", "a", "", "a@b", "a@localhost", "a@x.local", "a@x.test", "a@x.invalid", "a@x.onion",
    "a@example.com", "a@x.123", "a@-x.sk", "a@x-.sk", "a@x_y.sk", "a@ab--cd.sk",
    "a@xn--zz.com", "a@xn--.com", "a@[1.2.3.4]", "a@[IPv6:::1]", "a@b@c.sk", "a@x.sk\n",
    "a\u200b@x.sk", "a@x\u200b.sk", "a@ｘ.sk", "ｅva@x.sk", "a@x.c",
    "x" * 64 + "@x.sk", "x" * 65 + "@x.sk", "x" * 200 + "@" + "d" * 50 + ".sk",
    "a@" + "d" * 63 + ".sk", "a@" + "d" * 64 + ".sk",
    "x" * 60 + "@" + ".".join(["d" * 60] * 3) + ".sk",
    "x" * 64 + "@" + ".".join(["d" * 61] * 3) + ".sk",
    "x" * 40 + "@" + ".".join(["bücher" * 9] * 3) + ".de",
    "x" * 10 + "@" + ".".join(["bücher" * 9] * 3) + ".de",
    "postmaster@x.sk", "POSTMASTER@x.sk", "a@x.sk;b@y.sk", "a,b@x.sk", "a@x.sk,",
]  # fmt: skip

PHONES = [
    "+421905123456", "+421 905 123 456", "0905 123 456", "0905123456", "905123456",
    "421905123456", "00421905123456", "(0905) 123-456", "+421 2 1234 5678", "0212345678",
    "+1 650 253 0000", "16502530000", "+44 20 7946 0958", "+420 601 123 456", "+7 912 345 67 89",
    "12345", "+4219051234567", "+42190512345", "abc", "", "  ", "+", "+0", "0", "905-123-456 ext 5",
    "+421905123456;ext=1", "tel:+421905123456", "+421 905 123 456 // mobil", "9051234560000000000",
    "+421905 12 34 56", "+421９０５123456",
]  # fmt: skip

DATES = [
    "1.2.2020", "01.02.2020", "31.1.2024 10:00", "31.1.2024 10:00:05", "2024-01-31",
    "2024-01-31T10:00:00Z", "2024-01-31 10:00+02:00", "2024-02-30", "30.2.2024", "bad", "",
    "  ", "31. 1. 2024", "2024/01/31", 45000, 45000.5, 0, None, float("nan"),
]  # fmt: skip

WORDS = ["yes", "no", "Áno", "nie", "да", "нет", "x", "", "maybe", "1", "0", "TRUE", "ok.", 1, 0,
         2, True, None, "m", "F", "žena", "muž", "sk", "Slovenčina", "cz", "en", "xx", "work",
         "Pracovný", "home", "other"]  # fmt: skip


def _same(fast: Callable[[], Any], slow: Callable[[], Any]) -> None:
    try:
        expected: Any = slow()
    except ValueError as exc:
        expected = ("error", str(exc))
    for _ in range(2):  # the second answer comes from the cache
        try:
            got: Any = fast()
        except ValueError as exc:
            got = ("error", str(exc))
        assert got == expected


@pytest.mark.parametrize("address", EMAILS)
def test_email_agrees_with_email_identity(address: str) -> None:
    read = CellReader("SK")
    _same(lambda: read.email(address), lambda: email_identity(address))


def test_email_corpus_takes_both_paths() -> None:
    """The corpus holds accepted and refused addresses, IDN ones among both."""
    outcomes = []
    for address in EMAILS:
        try:
            outcomes.append(email_identity(address))
        except ValueError:
            outcomes.append(None)
    assert sum(o is None for o in outcomes) > 20
    assert "user@xn--bcher-kva.de" in outcomes
    assert "user+news@gmail.com" in outcomes


@pytest.mark.parametrize("region", ["SK", "CZ", "US", "GB"])
@pytest.mark.parametrize("number", PHONES)
def test_phone_agrees_with_normalize_phone(number: str, region: str) -> None:
    read = CellReader(region)
    _same(lambda: read.phone(number), lambda: normalize_phone(number, region))


def test_phone_agrees_on_every_region_example() -> None:
    """Example numbers of every region, as E.164, national text and with a digit dropped."""
    read = CellReader("SK")
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        example = phonenumbers.example_number(region)
        if example is None:
            continue
        e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
        national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
        for text in (e164, national, e164[:-1], e164[1:]):
            _same(lambda t=text: read.phone(t), lambda t=text: normalize_phone(t, "SK"))


@pytest.mark.parametrize("value", DATES)
def test_date_agrees_with_parse_date(value: Any) -> None:
    read = CellReader("SK")
    _same(lambda: read.date(value), lambda: parse_date(value))


@pytest.mark.parametrize("value", WORDS)
def test_words_agree_with_lookups(value: Any) -> None:
    read = CellReader("SK")
    _same(lambda: read.yes_no(value), lambda: parse_yes_no(value))
    for table, what in ((_GENDER, "gender"), (_LANGUAGE, "language"), (_KIND, "kind")):
        _same(lambda t=table, w=what: read.word(t, value, w, "hint"),
              lambda t=table, w=what: _lookup(t, value, w, "hint"))  # fmt: skip


_TEXT = st.text(
    st.sampled_from(list("aZ ščťž\u0416\t\n\r\u00a0\u200b\u202e\u2028\ue000\x00\x85 .@+-=")),
    max_size=20,
)


@given(_TEXT)
@settings(max_examples=300, deadline=None)
def test_clean_agrees_with_clean_text(text: str) -> None:
    assert CellReader("SK").clean(text) == (clean_text(text), _needs_cleaning(text))


_LOCAL = st.text(st.sampled_from(list("aZ09.+-_'ü\" ")), min_size=0, max_size=12)
_DOMAIN = st.sampled_from(["x.sk", "bücher.de", "XN--BCHER-KVA.de", "x..sk", "-x.sk", "localhost",
                           "x.test", "a.b.c.museum", "x.s", "ｘ.sk", ""])  # fmt: skip


@given(_LOCAL, _DOMAIN)
@settings(max_examples=300, deadline=None)
def test_email_agrees_on_generated_addresses(local: str, domain: str) -> None:
    read = CellReader("SK")
    address = f"{local}@{domain}"
    _same(lambda: read.email(address), lambda: email_identity(address))


@given(st.text(st.sampled_from("0123456789 "), min_size=1, max_size=16),
       st.sampled_from(["SK", "US", "DE"]))  # fmt: skip
@settings(max_examples=400, deadline=None)
def test_phone_agrees_on_generated_plus_numbers(digits: str, region: str) -> None:
    read = CellReader(region)
    number = "+" + digits
    _same(lambda: read.phone(number), lambda: normalize_phone(number, region))


def test_phone_agrees_on_country_codes_with_every_length() -> None:
    """Every calling code followed by 4 to 14 digits: valid, too short and too long ones."""
    read = CellReader("SK")
    for cc in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        for n in range(4, 15):
            number = f"+{cc}{'9' * (n % 3)}{str(10**n + 7 * n)[1:]}"
            _same(lambda t=number: read.phone(t), lambda t=number: normalize_phone(t, "SK"))

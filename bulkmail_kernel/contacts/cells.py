"""Fast cell readers for one import: the rules of ``values``, with caches and quick paths.

The import spends most of its time reading cells (issue 18: ``email_validator``,
``phonenumbers``, ``clean_text`` and ``parse_date`` were 65 % of it). ``CellReader``
answers exactly what the functions of :mod:`bulkmail_kernel.contacts.values` answer,
value for value and message for message (``tests/test_cells.py`` checks them against
each other on a varied corpus), but:

- an e-mail whose local part is plain dot-atom ASCII (what almost every address is)
  has only its domain checked by ``email_validator``, once per domain: the local part
  passes that library's own dot-atom expression, and the three lengths it checks
  are checked here; anything else goes through ``email_identity`` itself;
- a phone number written "+<digits>" (spaces allowed) is read by the steps
  ``phonenumbers.parse`` takes for such text, called one by one (without the search for
  extensions, letters and second numbers such text cannot hold), and its validity is one
  match against the region's number types joined into one expression per length,
  which is what ``is_valid_number`` asks of them one by one; other text, and a country
  code shared by several regions, goes through ``normalize_phone`` itself;
- a phone number, a date and the small words (gender, language, kind, yes/no) are
  remembered by their text, since a file repeats them;
- text that holds no control, format or line-break character (``str.isprintable``) is
  cleaned by collapsing its spaces, which is all ``clean_text`` would do to it.

A reader lives for one import, so its caches never outlive the settings (time zone,
region) they were filled under.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import email_validator
import phonenumbers
from email_validator.rfc_constants import DOT_ATOM_TEXT, EMAIL_MAX_LENGTH
from phonenumbers import phonenumberutil as pnu

from bulkmail_kernel.contacts.values import (
    _lookup,
    _needs_cleaning,
    clean_text,
    email_identity,
    normalize_phone,
    parse_date,
    parse_yes_no,
)

#: Characters that make an address take the full path (quotes, display names, literals).
_SPECIAL = frozenset('"<>()[]\\,;: \t')
#: Text the quick phone path reads: "+", a country code's first digit, digits and spaces.
_PLUS_DIGITS = re.compile(r"\+[1-9][0-9 ]{2,40}")
#: phonenumbers' region code of non-geographic numbers (+800, +882, ...).
_NON_GEO = "001"
#: What parse() refuses as a national number that long or longer (_MAX_LENGTH_FOR_NSN + 1).
_NSN_TOO_LONG = 18
_REFUSED_LENGTHS = (
    pnu.ValidationResult.TOO_SHORT,
    pnu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    pnu.ValidationResult.INVALID_LENGTH,
)
#: Entries kept per cache before it is emptied (bounds memory on a file of unique values).
_CACHE_MAX = 50_000


class CellReader:
    """Read cells by the rules of ``values`` for one import, remembering repeated answers."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._domains: dict[str, tuple[str, int, int] | None] = {}
        self._phones: dict[str, str | ValueError] = {}
        self._dates: dict[str, datetime | ValueError | None] = {}
        self._words: dict[tuple[int, str], Any] = {}
        self._texts: dict[str, str] = {}

    # ------------------------------------------------------------------ text

    def clean(self, text: str) -> tuple[str, bool]:
        """Return ``clean_text(text)`` and whether it needed cleaning (``_needs_cleaning``).

        Short text is remembered, so the names and towns a file repeats are held once.
        """
        if not text.isprintable():  # Cc, Cf, Cs, Co, line or paragraph separators
            return clean_text(text), _needs_cleaning(text)
        if len(text) > 40:
            return " ".join(text.split()), False
        got = self._texts.get(text)
        if got is None:
            if len(self._texts) >= _CACHE_MAX:
                self._texts.clear()
            got = self._texts[text] = " ".join(text.split())
        return got, False

    # ------------------------------------------------------------------ e-mail

    def email(self, text: str) -> str:
        """Return ``email_identity(text)``; raise its ValueError for an invalid address."""
        text = text.strip()
        local, at, domain = text.rpartition("@")
        if (
            at
            and domain.isascii()
            and "@" not in local
            and DOT_ATOM_TEXT.match(local)
            and not _SPECIAL.intersection(domain)
        ):
            known = self._domain(domain)
            if known is not None:
                ascii_domain, utf8_len, ascii_len = known
                # The three lengths email_validator checks: as given, normalised, ASCII.
                if len(local) + 1 + max(len(domain), utf8_len, ascii_len) <= EMAIL_MAX_LENGTH:
                    return f"{local.lower()}@{ascii_domain}"
        return email_identity(text)

    def _domain(self, domain: str) -> tuple[str, int, int] | None:
        """Return (ASCII domain, normalised UTF-8 length, ASCII length), None if refused."""
        if domain in self._domains:
            return self._domains[domain]
        try:
            parts = email_validator.validate_email(f"a@{domain}", check_deliverability=False)
        except email_validator.EmailNotValidError:
            known = None  # the full path gives the message
        else:
            known = (parts.ascii_domain, len(parts.domain.encode()), len(parts.ascii_domain))
        if len(self._domains) >= _CACHE_MAX:
            self._domains.clear()
        self._domains[domain] = known
        return known

    # ------------------------------------------------------------------ phone, date, words

    def phone(self, text: str) -> str:
        """Return ``normalize_phone(text, region)``; raise its ValueError if invalid."""
        got = self._phones.get(text)
        if got is None:
            try:
                got = _plus_number(text) or normalize_phone(text, self.region)
            except ValueError as exc:
                got = exc
            if len(self._phones) >= _CACHE_MAX:
                self._phones.clear()
            self._phones[text] = got
        if isinstance(got, ValueError):
            raise ValueError(str(got))
        return got

    def date(self, value: Any) -> datetime | None:
        """Return ``parse_date(value)``; text is remembered, other values parsed each time."""
        if not isinstance(value, str):
            return parse_date(value)
        got = self._dates.get(value, self)
        if got is self:
            try:
                got = parse_date(value)
            except ValueError as exc:
                got = exc
            if len(self._dates) >= _CACHE_MAX:
                self._dates.clear()
            self._dates[value] = got
        if isinstance(got, ValueError):
            raise ValueError(str(got))
        return got  # type: ignore[return-value]

    def word(self, table: Mapping[str, str], value: Any, what: str, hint: str) -> str | None:
        """Return ``_lookup(table, value, what, hint)``, remembered for text cells."""
        return self._remember(id(table), value, lambda v: _lookup(table, v, what, hint))

    def yes_no(self, value: Any) -> bool | None:
        """Return ``parse_yes_no(value)``, remembered for text cells."""
        return self._remember(0, value, parse_yes_no)

    def _remember(self, kind: int, value: Any, read: Callable[[Any], Any]) -> Any:
        if not isinstance(value, str):
            return read(value)
        key = (kind, value)
        got = self._words.get(key, self)
        if got is self:
            try:
                got = read(value)
            except ValueError as exc:
                got = exc
            if len(self._words) >= _CACHE_MAX:
                self._words.clear()
            self._words[key] = got
        if isinstance(got, ValueError):
            raise ValueError(str(got))
        return got


def _plus_number(text: str) -> str | None:
    """Return the E.164 form of "+<digits>" text, or None to take ``normalize_phone``'s path.

    Step for step what ``phonenumbers.parse`` does with such text (see the module
    docstring); any step that would refuse the number, or that this path does not
    copy, answers None, and the full path then gives the answer and its message.
    """
    text = text.strip()
    if not _PLUS_DIGITS.fullmatch(text):
        return None
    cc, rest = pnu._extract_country_code(text[1:].replace(" ", ""))
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(cc, ())
    if len(regions) != 1 or regions[0] == _NON_GEO or len(rest) < 2:
        return None
    region = regions[0]
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
    if metadata is None:
        return None
    _, stripped, _ = pnu._maybe_strip_national_prefix_carrier_code(rest, metadata)
    if pnu._test_number_length(stripped, metadata) not in _REFUSED_LENGTHS:
        rest = stripped
    if not 2 <= len(rest) < _NSN_TOO_LONG:
        return None
    number = phonenumbers.PhoneNumber(country_code=cc)
    pnu._set_italian_leading_zeros_for_phone_number(rest, number)
    number.national_number = int(rest)
    if not _valid_in(region, metadata, pnu.national_significant_number(number)):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


#: Per region: the general lengths and pattern, and per length one pattern of every type.
_TYPE_PATTERNS: dict[str, tuple[frozenset[int], re.Pattern[str] | None, dict[int, Any]]] = {}


def _valid_in(region: str, metadata: Any, nsn: str) -> bool:
    """Answer ``_number_type_helper(nsn, metadata) != UNKNOWN`` with two matches."""
    known = _TYPE_PATTERNS.get(region)
    if known is None:
        general = metadata.general_desc
        pattern = general.national_number_pattern if general is not None else None
        known = (
            frozenset(general.possible_length if general is not None else ()),
            re.compile(pattern) if pattern else None,
            {},
        )
        _TYPE_PATTERNS[region] = known
    lengths, general_pattern, by_length = known
    if (lengths and len(nsn) not in lengths) or general_pattern is None:
        return False
    if not general_pattern.fullmatch(nsn):
        return False
    combined = by_length.get(len(nsn), False)
    if combined is False:
        combined = by_length[len(nsn)] = _types_pattern(metadata, len(nsn))
    return combined is not None and combined.fullmatch(nsn) is not None


def _types_pattern(metadata: Any, length: int) -> re.Pattern[str] | None:
    """Join the patterns of the number types a number of ``length`` digits may match."""
    descs = [metadata.premium_rate, metadata.toll_free, metadata.shared_cost, metadata.voip,
             metadata.personal_number, metadata.pager, metadata.uan, metadata.voicemail,
             metadata.fixed_line]  # fmt: skip
    if not metadata.same_mobile_and_fixed_line_pattern:
        descs.append(metadata.mobile)  # else a number fixed_line refused is UNKNOWN
    patterns = [
        d.national_number_pattern
        for d in descs
        if d is not None
        and d.national_number_pattern
        and (not d.possible_length or length in d.possible_length)
    ]
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None

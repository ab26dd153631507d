"""Cell values: clean text, normalise e-mail and phone, read yes/no, dates and lookup words.

Every function here turns one spreadsheet, XML or SQL cell into the value a contact
field stores, or raises ValueError saying how to write it; the import pipeline
(:mod:`bulkmail_kernel.contacts.importer`) reports that message against the row. They
are kept apart from the pipeline because they are pure and useful on their own
(``email_identity`` is what every part of bulkmail compares addresses by), and so are
the lookup tables of words accepted for yes/no, gender, language and kind in English, Slovak,
Czech and Russian.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import email_validator
import phonenumbers

from bulkmail_kernel import config
from bulkmail_kernel.contacts.sources import excel_serial_to_date, fold

_YES = {"yes", "y", "true", "t", "1", "x", "ano", "a", "da", "да", "д", "ok", "+", "✓", "✔"}
_NO = {"no", "n", "false", "f", "0", "nie", "ne", "нет", "н", "-", "—"}
_GENDER = {
    "m": "m", "male": "m", "man": "m", "mr": "m", "muz": "m", "muzske": "m", "muzsky": "m",
    "м": "m", "муж": "m", "мужской": "m", "мужчина": "m",
    "f": "f", "female": "f", "woman": "f", "w": "f", "z": "f", "zena": "f", "zenske": "f",
    "zensky": "f", "ж": "f", "жен": "f", "женский": "f", "женщина": "f", "mrs": "f", "ms": "f",
}  # fmt: skip
_LANGUAGE = {
    "sk": "sk", "slovak": "sk", "slovencina": "sk", "slovensky": "sk", "slk": "sk",
    "cs": "cs", "cz": "cs", "czech": "cs", "cestina": "cs", "cesky": "cs", "ces": "cs",
    "ru": "ru", "russian": "ru", "rustina": "ru", "rusky": "ru", "русский": "ru", "rus": "ru",
    "en": "en", "english": "en", "anglictina": "en", "anglicky": "en", "eng": "en",
}  # fmt: skip
_KIND = {
    "personal": "personal", "private": "personal", "home": "personal", "osobny": "personal",
    "osobni": "personal", "sukromny": "personal", "soukromy": "personal", "личный": "personal",
    "work": "work", "business": "work", "office": "work", "job": "work", "pracovny": "work",
    "pracovni": "work", "firemny": "work", "firemni": "work", "рабочий": "work",
}  # fmt: skip

_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\u0085\u2028\u2029]+")
_DMY = re.compile(r"^(\d{1,2})\.\s*(\d{1,2})\.\s*(\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_PLAIN_NUMBER = re.compile(r"^-?(0|[1-9]\d{0,14})(\.\d+)?$")


#: What Excel reads as the start of a formula in a .csv (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """Return ``text`` with an apostrophe in front if Excel would run it as a formula in a .csv."""
    return "'" + text if text.startswith(FORMULA_START) else text


def clean_text(value: str) -> str:
    """Return ``value`` with line breaks and tabs as single spaces and control characters gone.

    Control (Cc), format (Cf: bidi overrides, zero-width marks), surrogate and
    private-use characters are dropped; runs of whitespace collapse to one space.
    """
    text = _LINE_BREAKS.sub(" ", value)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))
    return " ".join(text.split())


def _needs_cleaning(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in value) or bool(
        _LINE_BREAKS.search(value)
    )


def email_identity(value: str) -> str:
    """Return the one identity of an e-mail address; raise ValueError if it is invalid.

    Two spellings are one address when their identities are equal. The domain is
    lower-cased and written in its ASCII form (IDNA A-labels, ``xn--...``): it is the
    form every relay accepts in RCPT TO without SMTPUTF8 (RFC 6531 asks for A-labels
    there), it is canonical, and "bücher.de" and "xn--bcher-kva.de" meet in it. The
    local part is NFC-normalised and case-folded (``str.casefold``): RFC 5321 lets a
    server treat case as meaningful, but no mailbox provider we mail does, and two
    contacts for DUP.SAME@ and dup.same@ mail one person twice and let one spelling's
    unsubscribe miss the other. Nothing provider-specific is folded (Gmail's dots and
    +tags): that would merge different people elsewhere. The identity is idempotent, so
    it may be applied to a stored identity again. The spelling a person typed is kept
    apart, in ``contact_points.value``. Import, registration, suppressions,
    unsubscribes and bounce matching all compare this; phones keep their E.164
    identity (:func:`normalize_phone`).
    """
    try:
        parts = email_validator.validate_email(value.strip(), check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"invalid e-mail address: {exc}") from exc
    local = unicodedata.normalize("NFC", parts.local_part.casefold())
    return f"{local}@{parts.ascii_domain}"


#: The name the importer used before identities; the same function.
normalize_email = email_identity


def address_identity(channel: str, value: str, region: str | None = None) -> str:
    """Return the identity of an address on ``channel`` ("email", else a phone in E.164)."""
    return email_identity(value) if channel == "email" else normalize_phone(value, region)


def normalize_phone(value: str, region: str | None = None) -> str:
    """Return the number in E.164 ("+421903123456"); raise ValueError if it is not valid.

    Numbers without a country code are read in ``region`` (default
    ``config.default_region()``); a bare run of digits that is not valid there is
    retried with a leading "+", because spreadsheets drop it.
    """
    region = (region or config.default_region()).upper()
    text = value.strip()
    candidates = [text]
    if text.isdigit():
        candidates.append("+" + text)
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    raise ValueError(f"invalid phone number for region {region}")


def parse_yes_no(value: Any) -> bool | None:
    """Return True/False for yes/no in English, Slovak, Czech or Russian; None when empty."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        if value in (0, 1):
            return bool(value)
        raise ValueError(f"cannot read {value!r} as yes or no")
    text = fold(str(value)).strip().rstrip(".")
    if not text:
        return None
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise ValueError(f"cannot read {value!r} as yes or no: write yes/no, áno/nie, ano/ne or да/нет")


def parse_date(value: Any) -> datetime | None:
    """Return an aware UTC datetime from ISO, d.m.yyyy, an Excel date or serial; None if empty.

    A date without a time zone is taken in ``config.local_timezone()``.
    """
    tz = ZoneInfo(config.local_timezone())
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not 1 <= value < 2958466:  # Excel serials run from 1900-01-01 to 9999-12-31
            raise ValueError(f"cannot read {value!r} as a date")
        dt = excel_serial_to_date(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        m = _DMY.match(text)
        try:
            if m:
                d, mo, y, hh, mm, ss = m.groups()
                dt = datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0))
            else:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(
                f"cannot read {text!r} as a date: write 2024-01-31 or 31.1.2024"
            ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(UTC)


def _lookup(table: Mapping[str, str], value: Any, what: str, hint: str) -> str | None:
    text = _cell_text(value)
    if not text:
        return None
    key = fold(text).strip().rstrip(".")
    if key in table:
        return table[key]
    raise ValueError(f"unknown {what} {text!r}: {hint}")


def _cell_text(value: Any) -> str:
    """Return a cell as text: integers without ".0", dates in ISO form, None as ""."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _attribute_value(value: Any, infer_numbers: bool) -> Any:
    """Return a JSON-ready attribute value, or None to leave the attribute unset."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return (
            value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
        )
    if isinstance(value, date):
        return value.isoformat()
    text = clean_text(str(value))
    if not text:
        return None
    # CSV cells are all text; "3" becomes a number but "00123" (a post code) stays text.
    if infer_numbers and _PLAIN_NUMBER.match(text):
        return float(text) if "." in text else int(text)
    return text

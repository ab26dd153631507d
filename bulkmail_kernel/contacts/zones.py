"""The recipient's time zone: from a column, else the country of the number or the address.

A send window is kept on the recipient's wall clock, so registration asks this module
which zone each recipient lives in: an IANA name in a custom attribute (``timezone``,
``time_zone``, ``tz``) wins; else the zone of a phone number's prefix (from
``phonenumbers``); else the country of the address's top-level domain (``.sk`` →
Europe/Bratislava); else None, which means the firm's zone (``BULKMAIL_TZ``). Generic
domains (``.com``, ``.org``, ``.eu``) say nothing about where someone lives.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_zones

from bulkmail_kernel.exceptions import SendError

#: Attribute columns read as the recipient's zone, the first one filled wins.
ZONE_COLUMNS = ("timezone", "time_zone", "tz")

#: A country's zone where one zone covers (nearly) everyone; countries spanning several
#: zones with no clear main one (US, Canada, Brazil, Australia) are not guessed.
COUNTRY_ZONES = {
    "SK": "Europe/Bratislava", "CZ": "Europe/Prague", "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv", "BY": "Europe/Minsk", "PL": "Europe/Warsaw", "HU": "Europe/Budapest",
    "AT": "Europe/Vienna", "DE": "Europe/Berlin", "CH": "Europe/Zurich", "FR": "Europe/Paris",
    "IT": "Europe/Rome", "ES": "Europe/Madrid", "PT": "Europe/Lisbon", "NL": "Europe/Amsterdam",
    "BE": "Europe/Brussels", "LU": "Europe/Luxembourg", "GB": "Europe/London",
    "IE": "Europe/Dublin", "DK": "Europe/Copenhagen", "SE": "Europe/Stockholm",
    "NO": "Europe/Oslo", "FI": "Europe/Helsinki", "EE": "Europe/Tallinn", "LV": "Europe/Riga",
    "LT": "Europe/Vilnius", "RO": "Europe/Bucharest", "MD": "Europe/Chisinau",
    "BG": "Europe/Sofia", "GR": "Europe/Athens", "SI": "Europe/Ljubljana",
    "HR": "Europe/Zagreb", "RS": "Europe/Belgrade", "BA": "Europe/Sarajevo",
    "ME": "Europe/Podgorica", "MK": "Europe/Skopje", "AL": "Europe/Tirane",
    "TR": "Europe/Istanbul", "IL": "Asia/Jerusalem", "GE": "Asia/Tbilisi",
    "AM": "Asia/Yerevan", "AZ": "Asia/Baku", "KZ": "Asia/Almaty", "UZ": "Asia/Tashkent",
    "KG": "Asia/Bishkek", "IN": "Asia/Kolkata", "CN": "Asia/Shanghai", "JP": "Asia/Tokyo",
    "KR": "Asia/Seoul", "SG": "Asia/Singapore", "AE": "Asia/Dubai", "NZ": "Pacific/Auckland",
    "ZA": "Africa/Johannesburg", "EG": "Africa/Cairo", "IS": "Atlantic/Reykjavik",
}  # fmt: skip
#: Top-level domains that are not their country's ISO code.
_TLD_COUNTRY = {"uk": "GB"}


@lru_cache(maxsize=1024)
def _valid(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def zone_of_address(address: str) -> str | None:
    """Return the zone of the country an e-mail address's top-level domain names, or None."""
    tld = address.rsplit(".", 1)[-1].lower() if "@" in address else ""
    if len(tld) != 2:
        return None
    return COUNTRY_ZONES.get(_TLD_COUNTRY.get(tld, tld.upper()))


def zone_of_number(number: str) -> str | None:
    """Return the zone of an E.164 number (its prefix, else its country), or None."""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return None
    zones = [z for z in phone_zones.time_zones_for_number(parsed) if _valid(z)]
    if len(zones) == 1:
        return zones[0]
    return COUNTRY_ZONES.get(phonenumbers.region_code_for_number(parsed) or "")


def recipient_zone(row: Any, channel: str, normalized: str) -> str | None:
    """Return the IANA zone of one recipient (None: the firm's zone, ``BULKMAIL_TZ``).

    ``row`` is the recipient's row of ``contacts_frame()``; a zone column holding what
    is no IANA name is a SendError (nothing is registered) naming the recipient and the value.
    """
    for col in ZONE_COLUMNS:
        value = row.get(col) if hasattr(row, "get") else None
        if value is None or not isinstance(value, str) or not value.strip():
            continue
        name = value.strip()
        if not _valid(name):
            raise SendError(
                f"recipient {normalized}: {col} {name!r} is no IANA time zone: write e.g. "
                "Europe/Bratislava or America/New_York, or leave it empty for a guess from "
                "the address or number",
                recipient=normalized,
                field=col,
                value=name,
            )
        return name
    return zone_of_number(normalized) if channel == "phone" else zone_of_address(normalized)

"""SMS length: GSM 03.38 7-bit or UCS-2, and how many segments a text costs.

GSM-7 holds 160 septets in one SMS and 153 per part of a concatenated one (the user
data header takes the rest); the extension table characters cost an escape plus the
character. Anything outside GSM-7 switches the whole text to UCS-2: 70 UTF-16 units,
67 per part. Parts never split an escape pair or a surrogate pair, so the greedy
count can need more parts than ``ceil(units / per_part)``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from bulkmail_kernel.display import readable

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: Characters reached through the escape (0x1B): two septets each.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


@dataclass(frozen=True)
class SmsInfo:
    """How an SMS text is encoded and what it costs."""

    encoding: str  # "GSM-7" or "UCS-2"
    segments: int
    #: Septets (GSM-7) or UTF-16 code units (UCS-2) of the whole text.
    units: int
    #: Capacity of each segment: 160/70 for a single SMS, 153/67 when split.
    per_segment: int
    #: Units actually used in each segment.
    parts: tuple[int, ...] = ()


def is_gsm7(text: str) -> bool:
    """Return whether every character of the text is in the GSM 03.38 alphabet."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _greedy(costs: list[int], capacity: int) -> tuple[int, ...]:
    parts: list[int] = []
    used = 0
    for cost in costs:
        # A character's units stay together: an escape pair or a surrogate pair is atomic.
        if used + cost > capacity:
            parts.append(used)
            used = 0
        used += cost
    parts.append(used)
    return tuple(parts)


def sms_segments(text: str) -> SmsInfo:
    """Return the encoding, segment count and units of an SMS text."""
    if is_gsm7(text):
        encoding, single, split = "GSM-7", 160, 153
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    else:
        encoding, single, split = "UCS-2", 70, 67
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    units = sum(costs)
    if units == 0:
        return SmsInfo(encoding, 0, 0, single, ())
    if units <= single:
        return SmsInfo(encoding, 1, units, single, (units,))
    parts = _greedy(costs, split)
    return SmsInfo(encoding, len(parts), units, split, parts)


# --------------------------------------------------------------------------- fit to GSM-7

#: Russian, Ukrainian and Belarusian letters, ISO 9 / passport-style Latin (lower case).
_CYRILLIC = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh",
    "з": "z", "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu",
    "я": "ya", "є": "ye", "і": "i", "ї": "yi", "ґ": "g", "ў": "u",
}  # fmt: skip
#: Letters and punctuation that Unicode decomposition does not reduce to GSM-7.
_SPECIAL = {
    "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "œ": "oe", "Œ": "OE", "ı": "i",
    "„": '"', "“": '"', "”": '"', "«": '"', "»": '"', "‚": "'", "‘": "'", "’": "'",
    "–": "-", "—": "-", "‑": "-", "…": "...", "\u00a0": " ", "\u202f": " ", "\t": " ",
    "•": "-", "·": ".", "×": "x", "`": "'", "´": "'",
}  # fmt: skip


def _translit(ch: str) -> str | None:
    lower = ch.lower()
    if lower not in _CYRILLIC:
        return None
    latin = _CYRILLIC[lower]
    # Upper-case Ж becomes "Zh" (not "ZH"): reads right at the start of a capitalised word.
    return latin.capitalize() if ch != lower else latin


def fit_to_gsm7(text: str, *, replacement: str = "?") -> str:
    """Return ``text`` rewritten into the GSM-7 alphabet (diacritics stripped, Cyrillic Latin).

    Characters GSM-7 already has (ä, é, ü, ...) are kept; Slovak and Czech letters lose
    their accents (ž → z, ô → o), Cyrillic is transliterated (Жанна → Zhanna), typographic
    quotes and dashes become ASCII, and anything else (emoji) becomes ``replacement``.
    """
    out: list[str] = []
    for ch in text:
        if ch in GSM7_BASIC or ch in GSM7_EXTENSION:
            out.append(ch)
            continue
        latin = _translit(ch)
        if latin is None:
            latin = _SPECIAL.get(ch)
        if latin is None:
            stripped = "".join(
                c for c in unicodedata.normalize("NFD", ch) if not unicodedata.combining(c)
            )
            latin = stripped if stripped and is_gsm7(stripped) else replacement
        out.append(latin)
    return "".join(out)


# --------------------------------------------------------------------------- cost


def sms_cost(text: str, price_per_segment: float, recipients: int = 1) -> float:
    """Return what sending ``text`` to ``recipients`` numbers costs at ``price_per_segment``."""
    if price_per_segment < 0 or recipients < 0:
        raise ValueError(
            f"sms_cost: price_per_segment={price_per_segment}, recipients={recipients}: "
            "give non-negative numbers"
        )
    return round(sms_segments(text).segments * price_per_segment * recipients, 6)


def first_non_gsm7(text: str) -> str:
    """Return where the first character outside GSM-7 is ('"„" (U+201E) at 12'; "" if none).

    One such character makes the whole text UCS-2 (70 characters a segment instead of
    160), so the cost table names it: often a typographic quote or dash pasted from Word.
    """
    for position, ch in enumerate(text, start=1):
        if ch not in GSM7_BASIC and ch not in GSM7_EXTENSION:
            return f'"{ch}" (U+{ord(ch):04X}) at {position}'
    return ""


_PREVIEW_COLUMNS = [
    "text",
    "encoding",
    "ucs2_because",
    "segments",
    "cost",
    "fitted_text",
    "fitted_encoding",
    "fitted_segments",
    "fitted_cost",
    "saving",
]


def sms_fit_preview(
    texts: str | Iterable[str] | pd.Series, price_per_segment: float
) -> pd.DataFrame:
    """Return, per text, the segments and cost as written and after ``fit_to_gsm7``.

    This is what the preview shows before the analyst ticks "fit to GSM-7": the
    encoding, segment count and price of each text both ways, and the saving;
    ``ucs2_because`` names the first character that makes a text UCS-2 and where it is
    (1 = the first character).
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    rows = []
    for text in items:
        before = sms_segments(text)
        fitted = fit_to_gsm7(text)
        after = sms_segments(fitted)
        cost = before.segments * price_per_segment
        fitted_cost = after.segments * price_per_segment
        rows.append(
            [
                text,
                before.encoding,
                first_non_gsm7(text),
                before.segments,
                cost,
                fitted,
                after.encoding,
                after.segments,
                fitted_cost,
                cost - fitted_cost,
            ]
        )
    frame = pd.DataFrame(rows, columns=_PREVIEW_COLUMNS)
    for col in ("segments", "fitted_segments"):
        frame[col] = frame[col].astype("int64")
    for col in ("cost", "fitted_cost", "saving"):
        frame[col] = frame[col].astype("float64")
    # Shown whole: the one character that forces UCS-2 may sit past pandas' 50.
    return readable(frame)

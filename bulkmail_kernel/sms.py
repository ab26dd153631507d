"""SMS length: GSM 03.38 7-bit or UCS-2, and how many segments a text costs.

GSM-7 holds 160 septets in one SMS and 153 per part of a concatenated one (the user
data header takes the rest); the extension table characters cost an escape plus the
character. Anything outside GSM-7 switches the whole text to UCS-2: 70 UTF-16 units,
67 per part. Parts never split an escape pair or a surrogate pair, so the greedy
count can need more parts than ``ceil(units / per_part)``.
"""

from __future__ import annotations

from dataclasses import dataclass

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

"""Send windows: when, on the recipient's own wall clock, a campaign's messages may go.

A window is written the way a marketer says it, ``"Mon–Fri 09:00–18:00"`` or
``"at 10:00 local"``, or given as a structured form (a dict or a list of dicts, see
:func:`parse_window`). It is pure time arithmetic: given a moment and a zone it says
whether the window is open, when it next opens and when it next opens or closes, with
``zoneinfo`` doing the daylight-saving changes. Which zone a recipient is in is decided
at registration (:mod:`bulkmail_kernel.contacts.zones`); holding the closed ones back
is :mod:`.parking`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bulkmail_kernel.exceptions import ConfigError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES = {
    **{d.lower(): i for i, d in enumerate(DAYS)},
    **{
        n: i
        for i, n in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
}
_DAY_SETS = {
    "daily": frozenset(range(7)),
    "every day": frozenset(range(7)),
    "weekdays": frozenset(range(5)),
    "weekends": frozenset((5, 6)),
}
#: How long an ``at HH:MM`` window stays open: a message the rate could not send within
#: the hour waits for the next day's HH:MM rather than arriving in the afternoon.
AT_LENGTH = timedelta(hours=1)
_DASH = r"\s*(?:-|–|—|\bto\b)\s*"
_TIME = r"\d{1,2}:\d{2}"
_RULE = re.compile(
    rf"^(?P<days>.*?)\s*(?:(?P<start>{_TIME}){_DASH}(?P<end>{_TIME})|\bat\s+(?P<at>{_TIME}))"
    r"(?:\s+local)?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class WindowRule:
    """One part of a window: on ``days`` (0 = Monday), from ``start`` until ``end``.

    ``end`` is None for 24:00; an ``end`` before ``start`` runs over midnight into the
    next day. ``at`` marks a rule written ``at HH:MM`` (it lasts :data:`AT_LENGTH`).
    """

    days: frozenset[int]
    start: time
    end: time | None
    at: bool = False

    def __str__(self) -> str:
        days = _days_text(self.days)
        if self.at:
            return f"{days} at {self.start:%H:%M}".strip()
        end = "24:00" if self.end is None else f"{self.end:%H:%M}"
        return f"{days} {self.start:%H:%M}–{end}".strip()


@dataclass(frozen=True)
class SendWindow:
    """When messages may go, on the recipient's wall clock: one or more :class:`WindowRule`."""

    rules: tuple[WindowRule, ...]

    def __str__(self) -> str:
        return "; ".join(str(r) for r in self.rules)

    def intervals(self, now: datetime, zone: ZoneInfo) -> list[tuple[datetime, datetime]]:
        """Return the open spans (UTC) from the day before ``now`` to eight days after it."""
        today = now.astimezone(zone).date()
        spans = []
        for k in range(-1, 9):
            d = today + timedelta(days=k)
            for r in self.rules:
                if d.weekday() not in r.days:
                    continue
                start = _wall(d, r.start, zone)
                if r.at:
                    end = start + AT_LENGTH
                elif r.end is None or r.end <= r.start:
                    end = _wall(d + timedelta(days=1), r.end or time(0), zone)
                else:
                    end = _wall(d, r.end, zone)
                spans.append((start, end))
        return sorted(spans)

    def is_open(self, now: datetime, zone: ZoneInfo) -> bool:
        """Return whether the window is open at ``now`` in ``zone``."""
        return any(s <= now < e for s, e in self.intervals(now, zone))

    def next_open(self, now: datetime, zone: ZoneInfo) -> datetime:
        """Return ``now`` if the window is open, else when it next opens (UTC)."""
        spans = self.intervals(now, zone)
        if any(s <= now < e for s, e in spans):
            return now
        return min(s for s, _ in spans if s > now)

    def next_change(self, now: datetime, zone: ZoneInfo) -> datetime:
        """Return the next moment after ``now`` the window opens or closes in ``zone`` (UTC)."""
        return min(t for span in self.intervals(now, zone) for t in span if t > now)


def _wall(d: date, t: time, zone: ZoneInfo) -> datetime:
    """Return wall-clock ``t`` on ``d`` in ``zone`` as UTC.

    A time the clocks skip (02:30 on the spring-forward night) is read with the offset
    before the change, i.e. an hour later by the new wall clock; a doubled one is the
    first of the two (``fold=0``), as everywhere in bulkmail.
    """
    return datetime.combine(d, t, tzinfo=zone).astimezone(UTC)


def _days_text(days: frozenset[int]) -> str:
    if days == frozenset(range(7)):
        return "daily"
    runs: list[list[int]] = []
    for d in sorted(days):
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    return ",".join(
        DAYS[r[0]] if len(r) == 1 else f"{DAYS[r[0]]}{'–' if len(r) > 2 else ','}{DAYS[r[-1]]}"
        for r in runs
    )


def _bad(text: str, part: str, what: str) -> ConfigError:
    return ConfigError(f"send window {text!r}: {part!r} {what}", field="send_window", part=part)


def _parse_days(text: str, part: str) -> frozenset[int]:
    part = part.strip().rstrip(":").strip()
    if not part:
        return frozenset(range(7))
    if part.lower() in _DAY_SETS:
        return _DAY_SETS[part.lower()]
    days: set[int] = set()
    for item in re.split(r"\s*,\s*", part):
        ends = re.split(_DASH, item, maxsplit=1)
        try:
            first, last = (_DAY_NAMES[e.strip().lower()] for e in (ends[0], ends[-1]))
        except KeyError:
            raise _bad(
                text,
                item,
                "is not a day: write Mon, Tue, Wed, Thu, Fri, Sat, Sun, a range such as "
                "Mon–Fri, or daily",
            ) from None
        days.update((first + k) % 7 for k in range((last - first) % 7 + 1))
    return frozenset(days)


def _parse_time(text: str, part: str, *, end: bool = False) -> time | None:
    h, m = (int(x) for x in part.split(":"))
    if end and (h, m) == (24, 0):
        return None
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise _bad(text, part, "is not a time of day: write HH:MM from 00:00 to 23:59 (or 24:00)")
    return time(h, m)


def _parse_rule(text: str, part: str) -> WindowRule:
    found = _RULE.match(part.strip())
    if found is None:
        raise _bad(
            text,
            part.strip(),
            "is not a window: write days and hours such as 'Mon–Fri 09:00–18:00' or "
            "'at 10:00 local'",
        )
    days = _parse_days(text, found["days"])
    if found["at"]:
        start = _parse_time(text, found["at"])
        assert start is not None
        return WindowRule(days, start, None, at=True)
    start = _parse_time(text, found["start"])
    assert start is not None
    stop = _parse_time(text, found["end"], end=True)
    if stop == start:
        raise _bad(text, part.strip(), "opens and closes at the same time: give two times")
    return WindowRule(days, start, stop)


def _from_mapping(text: str, form: Mapping[str, Any]) -> WindowRule:
    unknown = set(form) - {"days", "start", "end", "at"}
    if unknown:
        raise _bad(text, ", ".join(sorted(unknown)), "is not a key: use days, start, end or at")
    days = form.get("days", "daily")
    if not isinstance(days, str):
        days = ",".join(DAYS[d] if isinstance(d, int) and 0 <= d < 7 else str(d) for d in days)
    if "at" in form:
        return _parse_rule(text, f"{days} at {form['at']}")
    if "start" not in form or "end" not in form:
        raise _bad(text, "start/end", "is missing: give both start and end, or at")
    return _parse_rule(text, f"{days} {form['start']}-{form['end']}")


#: What a send window may be given as: text, a dict, a list of either, or a SendWindow.
WindowSpec = str | SendWindow | Mapping[str, Any] | Sequence[Any]


def parse_window(value: WindowSpec) -> SendWindow:
    """Return the send window ``value`` describes (ConfigError naming the bad part).

    Text: one or more rules separated by ``;``, each optional days then hours:
    ``"Mon–Fri 09:00–18:00"``, ``"Mon-Fri 9:00-18:00; Sat 10:00-14:00"``,
    ``"daily 20:00-08:00"`` (over midnight), ``"at 10:00 local"`` (every day, for an
    hour), ``"Mon,Wed at 10:00"``. Days: Mon … Sun (or full names), ranges, ``daily``,
    ``weekdays``, ``weekends``; none given is every day. Structured: a dict
    ``{"days": "Mon-Fri", "start": "09:00", "end": "18:00"}`` or ``{"at": "10:00"}``
    (days as text or a list of names or numbers, 0 = Monday), or a list of such dicts.
    """
    if isinstance(value, SendWindow):
        return value
    if isinstance(value, str):
        text = value
        parts = [p for p in value.split(";") if p.strip()]
        if not parts:
            raise _bad(text, value, "is empty: write e.g. 'Mon–Fri 09:00–18:00', or pass None")
        return SendWindow(tuple(_parse_rule(text, p) for p in parts))
    forms: Iterable[Any] = [value] if isinstance(value, Mapping) else value
    text = repr(value)
    rules: list[WindowRule] = []
    for form in forms:
        if isinstance(form, str):
            rules.extend(parse_window(form).rules)
        elif isinstance(form, Mapping):
            rules.append(_from_mapping(text, form))
        else:
            raise _bad(text, repr(form), "is not a window: give text or a dict")
    if not rules:
        raise _bad(text, text, "is empty: give at least one rule, or pass None")
    return SendWindow(tuple(rules))


def window_text(value: WindowSpec | None) -> str | None:
    """Return the window in its one written form (what is stored), None for no window."""
    return None if value is None else str(parse_window(value))

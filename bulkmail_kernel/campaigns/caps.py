"""Frequency caps: the global rule, a campaign's own, and the check registration runs.

"No contact gets more than 2 marketing messages in 7 days", counting e-mail, SMS and
SendPulse hand-overs together, sent and still queued (what counts, and the lock:
:mod:`bulkmail_kernel.outbox.caps`).

- The global rule lives in the database (``settings``), not in an environment
  variable: every notebook, CLI and worker sharing the database judges by the same one.
  ``set_frequency_cap(2, 7)`` sets it, ``set_frequency_cap(None)`` removes it; none is
  set until someone does.
- A campaign may have its own (``create_campaign(..., frequency_cap="3/7")``) or none
  (``frequency_cap="none"``: not capped, its messages still count toward other
  campaigns' caps).
- A transactional campaign (``transactional=True``: an appointment reminder, an order
  confirmation) is never capped and its messages never count: a service message must
  reach the person, and must not use up their marketing allowance.

The cap is judged once, at registration, where the queued messages are known: the
analyst sees who was turned away (``skipped()``) before anything is sent, and a message
that was registered and previewed is never dropped silently later. Not at sending:
registration already counted every queued message of the contact, so by the time a
message is sent it was within the cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bulkmail_kernel.db import Campaign, Database, Setting, resolve_database, utcnow
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.caps import (
    SETTING,
    CapCheck,
    Counted,
    FrequencyCap,
    counted_messages,
    read_setting,
)
from bulkmail_kernel.outbox.lookup import campaign_info, campaign_row
from bulkmail_kernel.records import CampaignInfo, CampaignRef

#: What ``create_campaign(frequency_cap=...)`` takes.
CapValue = FrequencyCap | tuple[int, int] | str | None
#: A campaign's ``frequency_cap`` that means "not capped".
NO_CAP = "none"


def set_frequency_cap(
    max_messages: int | None,
    days: int | None = None,
    *,
    db: Database | None = None,
    url: str | None = None,
) -> FrequencyCap | None:
    """Set the global frequency cap: at most ``max_messages`` marketing messages in ``days``.

    ``set_frequency_cap(2, 7)``: no contact gets more than 2 marketing messages in 7 days,
    e-mail, SMS and SendPulse together, sent and queued; registration skips the rest.
    ``set_frequency_cap(None)`` removes it. Campaigns with their own ``frequency_cap``
    and transactional ones are judged by their own rule. Returns the rule now in force.
    """
    rule = None
    if max_messages is not None:
        if days is None:
            raise ConfigError(
                f"set_frequency_cap({max_messages!r}): give the days too, e.g. "
                f"set_frequency_cap({max_messages!r}, 7)",
                field="days",
            )
        rule = FrequencyCap(max_messages, days)
    with resolve_database(db, url).session() as s:
        row = s.get(Setting, SETTING)
        value = {} if rule is None else {"max_messages": rule.max_messages, "days": rule.days}
        if row is None:
            s.add(Setting(name=SETTING, value=value))
        else:
            row.value = value
    return rule


def set_campaign_cap(
    campaign: CampaignRef,
    frequency_cap: CapValue,
    *,
    transactional: bool = False,
    db: Database | None = None,
    url: str | None = None,
) -> CampaignInfo:
    """Set the rule ``campaign`` is judged by: its own cap, ``"none"``, None (the global one).

    ``transactional=True`` makes it a service message, never capped and never counted.
    A cap is judged when recipients are registered: messages already queued stay.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        c.frequency_cap = campaign_cap(c.name, frequency_cap, transactional)
        c.transactional = transactional
        s.flush()
        return campaign_info(c)


def frequency_cap(
    campaign: CampaignRef | None = None, *, db: Database | None = None, url: str | None = None
) -> FrequencyCap | None:
    """Return the global frequency cap, or the one ``campaign`` is judged by (None: no cap)."""
    database = resolve_database(db, url)
    if campaign is None:
        with database.engine.connect() as conn:
            return read_setting(conn)
    with database.session() as s:
        c = campaign_row(s, campaign)
        check = cap_check(database, c)
    return None if check is None else check.rule


def cap_check(database: Database, c: Campaign) -> CapCheck | None:
    """Return the check registering ``c`` runs (None: transactional, neither capped nor counted)."""
    if c.transactional:
        return None
    if c.frequency_cap == NO_CAP:
        rule = None
    elif c.frequency_cap:
        rule = FrequencyCap.parse(c.frequency_cap)
    else:
        with database.engine.connect() as conn:
            rule = read_setting(conn)
    return CapCheck(c.id, c.name, rule)


def campaign_cap(name: str, value: Any, transactional: bool) -> str | None:
    """Return a campaign's ``frequency_cap`` as stored ("2/7", "none" or None: the global one)."""
    if not isinstance(transactional, bool):
        raise ConfigError(
            f"campaign {name!r}: transactional={transactional!r}: give True (a service "
            "message, never capped or counted) or False",
            campaign=name,
        )
    if transactional and value not in (None, NO_CAP):
        raise ConfigError(
            f"campaign {name!r}: a transactional campaign is never capped: leave out "
            f"frequency_cap={value!r}, or make it a marketing campaign (transactional=False)",
            campaign=name,
        )
    if value is None:
        return None
    try:
        if isinstance(value, FrequencyCap):
            return value.text
        if isinstance(value, tuple) and len(value) == 2:
            return FrequencyCap(*value).text
        if isinstance(value, str):
            text = value.strip().lower()
            return NO_CAP if text == NO_CAP else FrequencyCap.parse(text).text
    except ConfigError as exc:
        raise ConfigError(f"campaign {name!r}: {exc.message}", campaign=name) from None
    raise ConfigError(
        f"campaign {name!r}: frequency_cap={value!r}: give (messages, days) such as (2, 7), "
        "'2/7', 'none' (not capped) or None (the global cap)",
        campaign=name,
    )


@dataclass(frozen=True)
class CapStanding:
    """Where one contact stands against the cap a campaign is judged by."""

    #: The rule (None: the campaign is not capped, or is transactional).
    rule: FrequencyCap | None
    transactional: bool
    #: The contact's messages of other campaigns that count toward it, oldest first.
    counted: tuple[Counted, ...]

    @property
    def capped(self) -> bool:
        """Say whether registering the campaign now would skip the contact for its cap."""
        return self.rule is not None and len(self.counted) >= self.rule.max_messages


def cap_standing(
    campaign: CampaignRef,
    contact_id: int,
    *,
    now: datetime | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> CapStanding:
    """Return whether ``contact_id`` is over ``campaign``'s cap, and the messages that count.

    The campaign's own messages are left out: the answer is the one registering it for
    this contact would give (what an explanation of "why is this person out" needs).
    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        check = cap_check(database, c)
        name, transactional = c.name, bool(c.transactional)
    rule = None if check is None else check.rule
    if rule is None:
        return CapStanding(rule, transactional, ())
    with database.engine.connect() as conn:
        found = counted_messages(conn, [contact_id], rule.days, now or utcnow())
    return CapStanding(
        rule, transactional, tuple(m for m in found[contact_id] if m.campaign != name)
    )

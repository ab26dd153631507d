"""Per-domain limits: how many messages an hour each mailbox provider gets from one account.

A recipient's *domain group* (gmail.com and googlemail.com are one mailbox provider,
so one group) is decided once, at registration, and stored on the message
(``messages.domain_group``), so a claim filters in SQL. Each sender account has a
per-hour limit per group: the defaults below, or its own
(``settings["domain_limits"]``, set with ``set_domain_limits``). The limit is a token
bucket in ``rate_buckets`` (``domain:<account id>:<group>``), shared by every worker,
connection and campaign of the account, like the campaign throttle.

The claim takes a group's tokens in its own commit, with the bucket rows locked: a
group without a token is skipped, not claimed and slept on, so a provider at its
limit waits while the others go on (no head-of-line blocking). When nothing else is
due, the loop sleeps until the next token of a group that holds messages back
(:func:`wait_s`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from bulkmail_kernel.db import (
    Campaign,
    Database,
    Message,
    MessageStatus,
    RateBucket,
    SenderAccount,
)
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.parking import not_parked
from bulkmail_kernel.outbox.reconnect import retrying

_M = cast(sa.Table, Message.__table__)
_B = cast(sa.Table, RateBucket.__table__)

#: The domain groups: exact domains, and names whose country or ``co.uk`` part varies.
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gmail": (("gmail.com", "googlemail.com"), ()),
    "outlook": (("outlook.com", "msn.com"), ("hotmail", "live", "outlook")),
    "yahoo": (("ymail.com", "rocketmail.com"), ("yahoo",)),
    "seznam": (("seznam.cz", "email.cz", "post.cz"), ()),
    "centrum": (("centrum.sk", "azet.sk", "atlas.sk"), ()),
    "mailru": (("mail.ru", "bk.ru", "inbox.ru", "list.ru", "ya.ru"), ("yandex",)),
}

#: Messages per hour per sender account when the account sets nothing (see docs/worker.md
#: "Per-domain limits" for where each figure comes from).
DEFAULT_LIMITS: dict[str, float] = {
    "gmail": 600.0,
    "outlook": 600.0,
    "yahoo": 600.0,
    "seznam": 300.0,
    "centrum": 200.0,
    "mailru": 300.0,
}

#: Which account kinds the limits apply to: the others do not deliver to the providers.
LIMITED_KINDS = ("smtp",)

_EXACT = {d: g for g, (exact, _) in GROUPS.items() for d in exact}
_PREFIX = {p: g for g, (_, prefixes) in GROUPS.items() for p in prefixes}
# What may follow "yahoo." and the like: a top-level domain, or one under co/com (co.uk).
_SUFFIX = re.compile(r"(?:com|net|org|co|[a-z]{2})(?:\.[a-z]{2})?")
#: Seconds' worth of tokens a group's bucket holds: a claim every few seconds (a batch is
#: about five seconds of the campaign rate) still takes every token that came meanwhile.
BURST_S = 10.0
# A token is whole a thousandth early: times are stored to the microsecond, and a level of
# 0.9999995 must not send the loop back to sleep for half a microsecond.
_EPS = 1e-3


def domain_group(address: str) -> str:
    """Return the domain group of an e-mail address ("gmail", ...), or "" for any other."""
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    if domain in _EXACT:
        return _EXACT[domain]
    head, _, rest = domain.partition(".")
    if head in _PREFIX and _SUFFIX.fullmatch(rest):
        return _PREFIX[head]
    return ""


def burst(limit_per_hour: float) -> int:
    """Return how many tokens a group's bucket holds at most: ten seconds' worth, at least 1."""
    return max(1, math.ceil(limit_per_hour * BURST_S / 3600.0))


def check_limits(overrides: Any, account: str) -> dict[str, float | None]:
    """Return ``overrides`` checked: known groups, a positive number or None (no limit)."""
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"sender account {account!r}: domain_limits={overrides!r}: give a mapping of "
            f"domain group to messages per hour ({', '.join(GROUPS)})",
            account=account,
        )
    checked: dict[str, float | None] = {}
    for group, value in overrides.items():
        if group not in GROUPS:
            raise ConfigError(
                f"sender account {account!r}: domain group {group!r} is not known: "
                f"use one of {', '.join(GROUPS)}",
                account=account,
            )
        if value is None:
            checked[group] = None
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not (number > 0 and math.isfinite(number)):
            raise ConfigError(
                f"sender account {account!r}: domain group {group!r}: {value!r} is not a "
                "positive number of messages per hour; give one, or none for no limit "
                "(pause the campaign to stop it)",
                account=account,
            )
        checked[group] = number
    return checked


def account_limits(kind: str, settings: dict[str, Any], account: str) -> dict[str, float]:
    """Return the per-hour limit of each limited group for an account (defaults + its own)."""
    if kind not in LIMITED_KINDS:
        return {}
    limits: dict[str, float | None] = {**DEFAULT_LIMITS}
    limits.update(check_limits(settings.get("domain_limits") or {}, account))
    return {g: v for g, v in limits.items() if v is not None}


def bucket_name(account_id: int, group: str) -> str:
    """Return the ``rate_buckets`` row of an account's domain group."""
    return f"domain:{account_id}:{group}"


@dataclass
class Pick:
    """What a claim may take: the message ids (or a subquery) and the groups' buckets."""

    ids: Any
    account_id: int | None = None
    #: The level of each limited group's bucket at the claim, and its rate per second.
    levels: dict[str, tuple[float, float]] = field(default_factory=dict)


def campaign_domain_limits(conn: sa.Connection, campaign_id: int) -> dict[str, float]:
    """Return the per-hour limit the campaign's account puts on each group ({}: none)."""
    return _limits_of(conn, campaign_id)[1]


def _limits_of(conn: sa.Connection, campaign_id: int) -> tuple[int | None, dict[str, float]]:
    """Return the campaign's account id and its limits ({} for SMS and unlimited kinds)."""
    row = conn.execute(
        sa.select(Campaign.channel, SenderAccount.id, SenderAccount.name)
        .add_columns(SenderAccount.kind, SenderAccount.settings)
        .join(SenderAccount, SenderAccount.id == Campaign.sender_account_id)
        .where(Campaign.id == campaign_id)
    ).first()
    if row is None or row.channel != "email":
        return None, {}
    return row.id, account_limits(row.kind, row.settings or {}, row.name)


def _levels(
    conn: sa.Connection, account_id: int, limits: dict[str, float], now: datetime
) -> dict[str, tuple[float, float]]:
    """Lock the account's group buckets (made at first use) and return each one's level now."""
    names = {bucket_name(account_id, g): g for g in limits}
    have = set(conn.execute(sa.select(_B.c.name).where(_B.c.name.in_(names))).scalars())
    for name in sorted(set(names) - have):
        try:
            with conn.begin_nested():
                conn.execute(
                    _B.insert().values(
                        name=name, tokens=float(burst(limits[names[name]])), updated_at=now
                    )
                )
        except sa.exc.IntegrityError:
            pass  # another worker made it first: the same bucket
    query = sa.select(_B.c.name, _B.c.tokens, _B.c.updated_at).where(_B.c.name.in_(names))
    if conn.dialect.name == "sqlite":
        # No row locks: a no-op write takes the database write lock before the read.
        conn.execute(_B.update().where(_B.c.name.in_(names)).values(tokens=_B.c.tokens))
    else:
        query = query.order_by(_B.c.name).with_for_update()  # one order: no deadlock
    levels = {}
    for row in conn.execute(query):
        group = names[row.name]
        rate_s = limits[group] / 3600.0
        elapsed = max(0.0, (now - row.updated_at).total_seconds())
        level = min(float(burst(limits[group])), row.tokens + elapsed * rate_s)
        levels[group] = (level, rate_s)
    return levels


def pick(conn: sa.Connection, campaign_id: int, due: Any, limit: int, now: datetime) -> Pick:
    """Choose up to ``limit`` due messages, no more of a limited group than its tokens now.

    The chosen rows are locked (``SKIP LOCKED``) and so are the group buckets, until the
    claim commits; :func:`spend` then takes the tokens of what was claimed.
    """
    base = sa.select(_M.c.id).where(_M.c.campaign_id == campaign_id, due).order_by(_M.c.id)
    account_id, limits = _limits_of(conn, campaign_id)
    if account_id is not None and limits:
        # None due at a limited provider (a firm's own list): no bucket to read or lock.
        held = (
            sa.select(_M.c.id)  # unordered: ix_messages_domain_claim answers it
            .where(_M.c.campaign_id == campaign_id, _M.c.domain_group.in_(list(limits)), due)
            .limit(1)
        )
        limits = limits if conn.execute(held).first() is not None else {}
    if account_id is None or not limits:
        return Pick(base.limit(limit).with_for_update(skip_locked=True).scalar_subquery())
    levels = _levels(conn, account_id, limits, now)
    free = base.where(_M.c.domain_group.not_in(list(limits))).limit(limit)
    ids = list(conn.execute(free.with_for_update(skip_locked=True)).scalars())
    for group, (level, _) in sorted(levels.items()):
        n = min(limit, int(level + _EPS))
        if n >= 1:
            some = base.where(_M.c.domain_group == group).limit(n)
            ids += conn.execute(some.with_for_update(skip_locked=True)).scalars()
    return Pick(sorted(ids)[:limit], account_id, levels)


def spend(conn: sa.Connection, chosen: Pick, claimed: list[Any], now: datetime) -> None:
    """Take one token of its group's bucket for each claimed message (rows with domain_group)."""
    if chosen.account_id is None:
        return
    taken: dict[str, int] = {}
    for r in claimed:
        if r.domain_group in chosen.levels:
            taken[r.domain_group] = taken.get(r.domain_group, 0) + 1
    for group, n in taken.items():
        conn.execute(
            _B.update()
            .where(_B.c.name == bucket_name(chosen.account_id, group))
            .values(tokens=chosen.levels[group][0] - n, updated_at=now)
        )


def held_back_s(database: Database, campaign_id: int, now: datetime) -> float | None:
    """Return the seconds until a limited group holding due messages back has a token again.

    None when no due message of the campaign waits for a group's token: the claim found
    nothing because there is nothing to send now. A lost connection is waited out.
    """

    def look(_attempt: int) -> float | None:
        with database.engine.connect() as conn:
            return wait_s(conn, campaign_id, now)

    return retrying(database, "claim", look)


def wait_s(conn: sa.Connection, campaign_id: int, now: datetime) -> float | None:
    """Return :func:`held_back_s` on an open connection."""
    account_id, limits = _limits_of(conn, campaign_id)
    if account_id is None or not limits:
        return None
    names = {bucket_name(account_id, g): g for g in limits}
    rows = conn.execute(
        sa.select(_B.c.name, _B.c.tokens, _B.c.updated_at).where(_B.c.name.in_(names))
    ).all()
    waits = {}
    for row in rows:
        group = names[row.name]
        rate_s = limits[group] / 3600.0
        level = row.tokens + max(0.0, (now - row.updated_at).total_seconds()) * rate_s
        if level + _EPS < 1.0:
            waits[group] = (1.0 - level) / rate_s
    if not waits:
        return None
    due = sa.and_(
        sa.or_(
            _M.c.status == MessageStatus.QUEUED.value,
            sa.and_(_M.c.status == MessageStatus.DEFERRED.value, _M.c.next_attempt_at <= now),
        ),
        not_parked(now),  # the claim's own condition: a message waiting for its window is not due
    )
    # One indexed look-up per waiting group (ix_messages_domain_claim), not a scan of the queue.
    held = [
        w
        for g, w in waits.items()
        if conn.execute(
            sa.select(_M.c.id)
            .where(_M.c.campaign_id == campaign_id, _M.c.domain_group == g, due)
            .limit(1)
        ).first()
        is not None
    ]
    return min(held) if held else None

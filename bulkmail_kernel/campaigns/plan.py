"""The send plan: when each queued message of a campaign will go, before anything is sent.

:func:`send_plan` replays what the engine will do, without sending: the claim takes due
messages in id order (:mod:`bulkmail_kernel.outbox.store`), a message waits for its
``scheduled_at``, ``not_before`` and (deferred) ``next_attempt_at``, and for its zone's
send window to open (:mod:`bulkmail_kernel.outbox.windows`) while the others go on; each
message then takes a token of the campaign's bucket (``rate_per_hour`` with ``burst``,
one bucket shared by every worker and connection: :mod:`bulkmail_kernel.engine.throttle`),
starting from the bucket's stored level. Per-domain-group hourly limits, when given, hold
a group's messages to its own bucket while the other groups go on.

It is fast because it is done in epochs: between two window openings or closings (or
release times) the set of open zones is constant, so one numpy selection per epoch picks
the eligible messages and one tight loop gives them the bucket's times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.compose.sms import sms_segments
from bulkmail_kernel.db import (
    Database,
    Message,
    MessageBody,
    MessageStatus,
    RateBucket,
    resolve_database,
)
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.domains import campaign_domain_limits
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.outbox.windows import SendWindow, parse_window
from bulkmail_kernel.records import CampaignRef

_M = cast(sa.Table, Message.__table__)
_WAITING = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)
#: Set once the per-domain limits are in the outbox: the group stored at registration.
_GROUP_COLUMN = _M.c.get("domain_group")
COLUMNS = [
    "message_id",
    "contact_id",
    "recipient",
    "channel",
    "domain_group",
    "zone",
    "status",
    "planned_at",
    "segments",
    "cost",
]


def _epoch_s(values: Any) -> np.ndarray:
    """Return UTC datetimes (or None) as float seconds since 1970, NaN for none."""
    stamps = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
    # total_seconds, not int64: pandas 3 keeps microseconds, not always nanoseconds.
    seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.to_numpy(dtype="float64", na_value=np.nan)


def _default_group(recipient: pd.Series, channel: pd.Series) -> pd.Series:
    """Return the recipient's domain (``sms`` for a phone number) when no group is stored."""
    found = pc.extract_regex(pa.array(recipient, type=pa.string()), r"@(?P<d>[^@]*)$")
    domain = pd.Series(pc.utf8_lower(found.field("d")), index=recipient.index, dtype="str")
    return domain.where(channel == "email", "sms")


def _read(conn: sa.Connection, query: sa.Select[Any], names: list[str]) -> pd.DataFrame:
    """Return the query's rows as a frame, through the driver's own cursor.

    A million rows through SQLAlchemy's result objects take seconds; the plan reads
    nothing a user wrote into the statement (ids and status names), so it is compiled
    with its values inline and run on the raw cursor.
    """
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return pd.DataFrame.from_records(rows, columns=names, coerce_float=False)


def _backlog_times(
    m: int, t: float, end: float, state: list[float], rate_s: float, burst: float
) -> np.ndarray:
    """Give ``m`` messages, all ready at ``t``, the campaign bucket's times, claimed before ``end``.

    ``state`` is [level, time of the level, time the sender is free] and is updated. The
    arithmetic is the throttle's: take a token (the level may go negative: reserve it)
    and wait until it has arrived; with no pause between them the k-th leaves at
    x0 + max(0, k + 1 - level)/rate. Each is claimed when the one before has left, and
    the claim comes before the token, so one claimed just before its window closes
    still goes, as in the send loop.
    """
    level, last, free = state
    x0 = max(t, free)
    if x0 >= end:
        return np.empty(0)
    start_level = min(burst, level + (x0 - last) * rate_s)
    k = np.arange(m, dtype=float)
    sent = x0 + np.maximum(0.0, k + 1.0 - start_level) / rate_s
    claimed = np.concatenate(([x0], sent[:-1]))
    n = int(np.searchsorted(claimed, end, side="left"))
    sent = sent[:n]
    state[:] = [start_level - n + (claimed[n - 1] - x0) * rate_s, claimed[n - 1], sent[-1]]
    return sent


def _limited_times(
    eligible: np.ndarray,
    group_idx: np.ndarray,
    t: float,
    end: float,
    state: list[float],
    bucket: tuple[float, float, float],
    groups_at: dict[int, list[float]],
) -> tuple[np.ndarray, np.ndarray]:
    """Send ``eligible`` (id order) as the claim does under per-group limits, until ``end``.

    Each time the sender is free it takes the lowest id among the groups with a token (a
    group at its limit is skipped, the others go on); when none has one it waits for the
    first group's next token. Returns the chosen messages and their send times.
    """
    rate_s, burst, _ = bucket
    codes = group_idx[eligible]
    by_key: dict[int, list[np.ndarray]] = {}
    for k in np.unique(codes):
        key = int(k) if int(k) in groups_at else -1  # every unlimited group: one pool
        by_key.setdefault(key, []).append(eligible[codes == k])
    keys = list(by_key)
    pools = [np.sort(np.concatenate(by_key[k])).tolist() for k in keys]
    sizes = [len(p) for p in pools]
    heads = [0] * len(keys)
    # When each pool may next take a message: its group's first whole token (level g[0]
    # at time g[1], g[2] tokens a second); the unlimited pool at any time.
    ready_at = [
        groups_at[k][1] + max(0.0, 1.0 - groups_at[k][0]) / groups_at[k][2] if k >= 0 else -1.0
        for k in keys
    ]
    level, last, free = state
    chosen: list[int] = []
    sent: list[float] = []
    x = max(free, t)
    while x < end:
        best, best_id, wake = -1, math.inf, math.inf
        for p in range(len(keys)):
            if heads[p] >= sizes[p]:
                continue
            if ready_at[p] > x + 1e-9:
                wake = min(wake, ready_at[p])
                continue
            if pools[p][heads[p]] < best_id:
                best, best_id = p, pools[p][heads[p]]
        if best < 0:
            if not math.isfinite(wake):
                break  # every pool is empty
            x = wake  # nothing may go: wait for the first group's next token
            continue
        if keys[best] >= 0:
            g = groups_at[keys[best]]
            g[0], g[1] = min(g[3], g[0] + (x - g[1]) * g[2]) - 1.0, x
            ready_at[best] = x + max(0.0, 1.0 - g[0]) / g[2]
        lv = min(burst, level + (x - last) * rate_s) - 1.0
        s = x - lv / rate_s if lv < 0 else x
        level, last, free = lv, x, s
        chosen.append(int(best_id))
        heads[best] += 1
        sent.append(s)
        x = s
    state[:] = [level, last, free]
    return np.asarray(chosen, dtype=np.int64), np.asarray(sent)


def _simulate(
    ready: np.ndarray,
    zone_idx: np.ndarray,
    zones: list[ZoneInfo],
    group_idx: np.ndarray,
    groups: list[str],
    window: SendWindow | None,
    start: float,
    bucket: tuple[float, float, float],
    limits: Mapping[str, float],
) -> np.ndarray:
    """Return every message's planned send time (seconds since 1970, UTC)."""
    rate_s, burst, level0 = bucket
    n = len(ready)
    planned = np.full(n, np.nan)
    pending = np.ones(n, dtype=bool)
    state = [level0, start, start]
    limited = {groups.index(g): (v / 3600.0) for g, v in limits.items() if g in groups}
    # Each group's bucket [level, its time, rate per s, cap]: ten seconds' worth, full at start.
    groups_at = {k: [float(max(1, math.ceil(r * 10.0))), start, r, 0.0] for k, r in limited.items()}
    for g in groups_at.values():
        g[3] = g[0]
    t = start
    while pending.any():
        now = datetime.fromtimestamp(t, UTC)
        is_open = np.ones(len(zones), dtype=bool)
        end = math.inf
        if window is not None:
            live = np.unique(zone_idx[pending])
            for k in live:
                is_open[k] = window.is_open(now, zones[k])
                end = min(end, window.next_change(now, zones[k]).timestamp())
        later = ready[pending & (ready > t)]
        if later.size:
            end = min(end, float(later.min()))
        eligible = np.flatnonzero(pending & (ready <= t) & is_open[zone_idx])
        if eligible.size:
            if limited:
                chosen, sent = _limited_times(eligible, group_idx, t, end, state, bucket, groups_at)
            else:
                sent = _backlog_times(eligible.size, t, end, state, rate_s, burst)
                chosen = eligible[: len(sent)]
            planned[chosen] = sent
            pending[chosen] = False
        elif not math.isfinite(end):
            raise ConfigError("send_plan: messages wait for a window that never opens")
        if pending.any() and not math.isfinite(end):
            raise ConfigError("send_plan: the simulation stalled; report this as a bug")
        t = end
    return planned


def _bucket_level(
    conn: sa.Connection, campaign_id: int, burst: int, rate_s: float, at: datetime
) -> float:
    """Return the campaign bucket's level at ``at`` (full when it was never used)."""
    table = cast(sa.Table, RateBucket.__table__)
    row = conn.execute(
        sa.select(table.c.tokens, table.c.updated_at).where(
            table.c.name == f"campaign:{campaign_id}"
        )
    ).first()
    if row is None:
        return float(burst)
    return min(float(burst), row.tokens + max(0.0, (at - row.updated_at).total_seconds()) * rate_s)


def send_plan(
    campaign: CampaignRef,
    *,
    rate_per_hour: float | None = None,
    domain_limits: Mapping[str, float] | None = None,
    sms_price_per_segment: float | None = None,
    group_of: Callable[[str], str] | None = None,
    now: datetime | None = None,
    clock: Clock = SYSTEM_CLOCK,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return when each queued message of the campaign will be sent, as the engine would.

    One row per queued or deferred message, in claim order: its planned send time
    (``planned_at``, in the analyst's zone ``BULKMAIL_TZ``), channel, domain group, the
    recipient's zone and, for SMS, the segments and cost. ``attrs`` hold ``finish`` (the
    last planned send), ``start``, ``rate_per_hour``, ``burst``, ``window`` and ``cost``.

    Args:
        campaign: name or id.
        rate_per_hour: the rate the send will use (default: the campaign's).
        domain_limits: messages per hour per domain group (e.g. ``{"gmail": 600}``);
            each group waits for its own tokens while the others go on (default: the
            limits of the campaign's sender account, ``domain_limits(account)``).
        sms_price_per_segment: price of one SMS segment (EuroSMS's price list); the
            ``cost`` column is NaN without it.
        group_of: the domain group of a recipient; default: the group stored with the
            message when the outbox has one, else the recipient's domain.
        now: plan from this moment (default: the clock's now).
        clock: time source (tests pass a ``ManualClock``).
        db: an open database (default: ``open_database(url)``).
        url: the database URL when ``db`` is not given.

    """
    database = resolve_database(db, url)
    at = now or clock.now()
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid, name, burst = c.id, c.name, int(c.burst)
        rate = float(rate_per_hour if rate_per_hour is not None else c.rate_per_hour)
        scheduled, window_text = c.scheduled_at, c.send_window
    if not rate > 0:
        raise ConfigError(f"send_plan: rate_per_hour={rate!r}: give a positive rate")
    for group, limit in (domain_limits or {}).items():
        if isinstance(limit, bool) or not (isinstance(limit, int | float) and 0 < limit < math.inf):
            raise ConfigError(
                f"send_plan: domain_limits[{group!r}]={limit!r}: give a positive number of "
                "messages per hour (leave the group out for no limit)"
            )
    start = max(at, scheduled) if scheduled is not None else at
    cols: list[Any] = [_M.c.id, _M.c.contact_id, _M.c.recipient, _M.c.channel, _M.c.status]
    cols += [_M.c.timezone, _M.c.not_before, _M.c.next_attempt_at]
    if _GROUP_COLUMN is not None:
        cols.append(_GROUP_COLUMN.label("stored_group"))
    query = sa.select(*cols).where(_M.c.campaign_id == cid, _M.c.status.in_(_WAITING))
    with database.engine.connect() as conn:
        if domain_limits is None:
            domain_limits = campaign_domain_limits(conn, cid)
        frame = _read(conn, query.order_by(_M.c.id), [c.name for c in query.selected_columns])
        rate_s = rate / 3600.0 if math.isfinite(rate) else 1e12
        level = _bucket_level(conn, cid, burst, rate_s, start)
        sms = frame["channel"].to_numpy() != "email"
        bodies: dict[int, bytes] = {}
        if sms.any():
            bodies = dict(
                conn.execute(
                    sa.select(MessageBody.message_id, MessageBody.body)
                    .join(Message, Message.id == MessageBody.message_id)
                    .where(Message.campaign_id == cid, Message.status.in_(_WAITING))
                    .where(Message.channel != "email")
                ).all()
            )
    local = config.local_zone()
    out = pd.DataFrame({"message_id": frame["id"].astype("int64")})
    out["contact_id"] = frame["contact_id"].astype("Int64")
    out["recipient"] = frame["recipient"].astype("str")
    out["channel"] = frame["channel"].astype("str").replace({"phone": "sms"})
    if group_of is not None:
        group = frame["recipient"].map(group_of).astype("str")
    elif "stored_group" in frame:
        group = frame["stored_group"].fillna("").astype("str")
    else:
        group = _default_group(out["recipient"], out["channel"])
    # An SMS has no mailbox provider: its own group, as the per-hour chart shows it.
    out["domain_group"] = group.replace({"": "other"}).where(out["channel"] != "sms", "sms")
    out["zone"] = frame["timezone"].fillna(local.key).astype("str")
    out["status"] = frame["status"].astype("str")
    # Under a window the send loop parks afresh from the window (settling what another
    # clock parked), so only a window's openings hold a message back, not the stored time.
    held = _epoch_s(frame["not_before"]) if not window_text else np.full(len(frame), np.nan)
    ready = np.fmax(held, start.timestamp())
    deferred = out["status"].to_numpy() == MessageStatus.DEFERRED.value
    ready[deferred] = np.fmax(ready[deferred], _epoch_s(frame["next_attempt_at"])[deferred])
    zone_codes, zone_names = pd.factorize(out["zone"])
    group_codes, group_names = pd.factorize(out["domain_group"])
    planned = _simulate(
        ready,
        np.asarray(zone_codes),
        [ZoneInfo(z) for z in zone_names],
        np.asarray(group_codes),
        [str(g) for g in group_names],
        parse_window(window_text) if window_text else None,
        start.timestamp(),
        (rate_s, float(burst), level),
        domain_limits or {},
    )
    # To the microsecond, as the database keeps sent_at.
    micros = np.round(planned * 1e6).astype("int64")
    out["planned_at"] = pd.to_datetime(micros, unit="us", utc=True).tz_convert(local)
    segments = (
        [
            sms_segments(bodies.get(int(i), b"").decode("utf-8", "replace")).segments if m else 0
            for i, m in zip(out["message_id"], sms, strict=True)
        ]
        if sms.any()
        else [0] * len(out)
    )
    out["segments"] = pd.array(segments, dtype="Int64")
    out["segments"] = out["segments"].where(sms, pd.NA)
    price = math.nan if sms_price_per_segment is None else float(sms_price_per_segment)
    out["cost"] = out["segments"].astype("float64") * price
    out = out[COLUMNS].reset_index(drop=True)
    finish = out["planned_at"].max() if len(out) else pd.NaT
    out.attrs.update(
        campaign=name,
        start=pd.Timestamp(start).tz_convert(local),
        finish=finish,
        rate_per_hour=rate,
        burst=burst,
        window=window_text,
        cost=float(out["cost"].sum()) if sms.any() and sms_price_per_segment is not None else 0.0,
    )
    return out

"""Campaigns: create one, look it up, pause, resume or cancel it; its template and recipients.

A campaign is named by its name or id everywhere (``campaign: str | int``).
Registration is in :mod:`.registration`, test sends in :mod:`.samples`; the queue
itself belongs to the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.caps import CapValue, campaign_cap
from bulkmail_kernel.campaigns.preflight import check_campaign_template, recipient_columns

# template_of is re-exported: the providers' hand-over renders the stored template with it.
from bulkmail_kernel.campaigns.rendering import template_of as template_of
from bulkmail_kernel.campaigns.rendering import template_source
from bulkmail_kernel.compose.templates import Template, load_template
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.db import (
    Campaign,
    CampaignStatus,
    Database,
    Segment,
    SenderAccount,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.lookup import campaign_info, campaign_row
from bulkmail_kernel.outbox.parking import set_window
from bulkmail_kernel.outbox.queue import REMOVABLE, queue, remove_from_queue
from bulkmail_kernel.outbox.windows import WindowSpec, window_text
from bulkmail_kernel.records import CampaignInfo, CampaignRef, campaign_channel
from bulkmail_kernel.segments.saved import segment_recipients


def get_campaign(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> CampaignInfo:
    """Return campaign ``campaign`` (name or id) as stored."""
    with resolve_database(db, url).session() as s:
        return campaign_info(campaign_row(s, campaign))


def create_campaign(
    name: str,
    *,
    sender: str,
    template: Any = None,
    segment: str | None = None,
    values: dict[str, Any] | None = None,
    rate_per_hour: int = 1000,
    burst: int = 10,
    scheduled_at: datetime | str | None = None,
    channel: str | None = None,
    breaker_after: int | None = None,
    send_window: WindowSpec | None = None,
    frequency_cap: CapValue = None,
    transactional: bool = False,
    exist_ok: bool = False,
    db: Database | None = None,
    url: str | None = None,
) -> CampaignInfo:
    """Create the campaign ``name``: a template, a segment (or a frame at registration), a sender.

    ``template`` is a templates ``Template`` (or its name); ``scheduled_at`` leaves the
    sending to the worker (``bulkmail run-worker``, started by ``bulkmail lab``): text
    such as ``"2026-12-03 09:00"`` or a naive datetime is local time in ``BULKMAIL_TZ``
    (see :func:`~bulkmail_kernel.config.to_utc` for daylight-saving changes), an aware
    datetime is taken as it is. ``rate_per_hour`` is the throttle.
    ``exist_ok=True`` returns an existing campaign of that name unchanged, so a
    notebook can be run again from the top. ``channel`` is "email" or "sms"
    (default: the template's channel, or "sms" for a eurosms sender account).
    ``breaker_after`` policy or system refusals in a row (a blocklisting, DMARC) pause
    the campaign before the whole list is refused (default ``BULKMAIL_BREAKER_AFTER``, 10).
    ``send_window`` (``"Mon–Fri 09:00–18:00"``, ``"at 10:00 local"``, see
    :func:`~bulkmail_kernel.outbox.windows.parse_window`) holds each message until the
    window is open on its recipient's wall clock; :func:`set_send_window` changes it.
    ``frequency_cap`` is its own cap, ``(2, 7)`` or ``"2/7"`` for at most 2 marketing
    messages per contact in 7 days, or ``"none"`` (default None: the global cap of
    ``set_frequency_cap``); ``transactional=True`` marks a service message (a reminder):
    never capped, never counted toward a cap.
    """
    if rate_per_hour <= 0:
        raise ConfigError(f"campaign {name!r}: rate_per_hour={rate_per_hour}: give a positive rate")
    if breaker_after is not None and (
        isinstance(breaker_after, bool) or not isinstance(breaker_after, int) or breaker_after < 1
    ):
        raise ConfigError(
            f"campaign {name!r}: breaker_after={breaker_after!r}: give how many refusals in a "
            "row pause the campaign, a whole number, 1 or more (default 10)",
            campaign=name,
        )
    when = None if scheduled_at is None else _when(name, scheduled_at)
    window = _window(name, send_window)
    cap = campaign_cap(name, frequency_cap, transactional)
    database = resolve_database(db, url)
    with database.session() as s:
        existing = s.scalars(sa.select(Campaign).where(Campaign.name == name)).first()
        if existing is not None and exist_ok:
            return campaign_info(existing)
        if existing is not None:
            raise SendError(f"campaign {name!r} already exists: pick another name", campaign=name)
        account = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == sender)).first()
        if account is None:
            raise SendError(
                f"campaign {name!r}: sender account {sender!r} does not exist: "
                "create it with add_sender_account()",
                campaign=name,
            )
        chosen = _choose_channel(name, channel, template, account.kind)
        segment_id = None
        if segment is not None:
            from bulkmail_kernel.db import Segment

            segment_id = s.scalars(sa.select(Segment.id).where(Segment.name == segment)).first()
            if segment_id is None:
                raise SendError(f"campaign {name!r}: segment {segment!r} does not exist")
        template_name = template if isinstance(template, str) else getattr(template, "name", "")
        source: dict[str, Any] = {}
        if template is not None and not isinstance(template, str):
            source = template_source(template)
        if template is not None:
            # Checked now, not at the first send: a typo in a value, a missing image.
            check_campaign_template(
                name, template_of_name(template), dict(values or {}), recipient_columns(database)
            )
        row = Campaign(
            name=name,
            channel=chosen,
            status=CampaignStatus.DRAFT.value,
            template_name=template_name or "",
            template_source=source,
            values=dict(values or {}),
            segment_id=segment_id,
            sender_account_id=account.id,
            rate_per_hour=int(rate_per_hour),
            burst=int(burst),
            scheduled_at=when,
            breaker_after=breaker_after,
            send_window=window,
            frequency_cap=cap,
            transactional=transactional,
        )
        s.add(row)
        s.flush()
        return campaign_info(row)


def _window(name: str, value: WindowSpec | None) -> str | None:
    """Return the window as stored, the campaign named in the error."""
    try:
        return window_text(value)
    except ConfigError as exc:
        fields = {**exc.fields, "campaign": name}
        raise ConfigError(f"campaign {name!r}: {exc.message}", **fields) from None


def set_send_window(
    campaign: CampaignRef,
    window: WindowSpec | None,
    *,
    db: Database | None = None,
    url: str | None = None,
) -> CampaignInfo:
    """Set (or with None remove) the campaign's send window; its queued messages follow at once.

    The window is on each recipient's wall clock: their zone was decided at
    registration (a ``timezone`` column, else their number's or address's country,
    else ``BULKMAIL_TZ``). Messages whose window is closed wait, and go when it opens.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid, name = c.id, c.name
    set_window(database, cid, _window(name, window), utcnow())
    with database.session() as s:
        return campaign_info(campaign_row(s, cid))


def _when(name: str, value: datetime | str) -> datetime:
    """Return a send time as aware UTC, the campaign named in the error."""
    try:
        return config.to_utc(value, what="scheduled_at")
    except ConfigError as exc:
        raise ConfigError(
            f"campaign {name!r}: {exc.message}", campaign=name, **exc.fields
        ) from None


#: Statuses ``schedule`` moves to ``scheduled``; a draft stays one until it is registered, a
#: paused or stopped campaign keeps its status until ``resume`` (which then schedules it).
_SCHEDULABLE = ("registered", "scheduled", "late")
_KEEPS_STATUS = (
    CampaignStatus.DRAFT.value,
    CampaignStatus.PAUSED.value,
    CampaignStatus.STOPPED.value,
)


def schedule(
    campaign: CampaignRef,
    at: datetime | str,
    *,
    db: Database | None = None,
    url: str | None = None,
) -> CampaignInfo:
    """Set when the worker sends the campaign: ``at`` is local time unless it is aware.

    ``"2026-12-03 09:00"`` or a naive datetime is wall-clock time in ``BULKMAIL_TZ``
    (default Europe/Bratislava); an aware datetime or text with an offset is taken as it
    is; a time that does not exist (the spring daylight-saving jump) is a ConfigError,
    one that exists twice (the autumn one) is the first. A registered (or late)
    campaign becomes ``scheduled``; a draft is scheduled once registered; a paused or
    stopped one keeps its status until ``resume``. The worker (``bulkmail run-worker``,
    which ``bulkmail lab`` starts) sends it when the time comes.
    """
    with resolve_database(db, url).session() as s:
        c = campaign_row(s, campaign)
        if c.status not in _SCHEDULABLE and c.status not in _KEEPS_STATUS:
            raise SendError(
                f"campaign {c.name!r} is {c.status}: "
                + ("pause() it first" if c.status == "sending" else "it cannot be scheduled"),
                campaign=c.name,
                status=c.status,
            )
        c.scheduled_at = _when(c.name, at)
        if c.status in _SCHEDULABLE:
            c.status = CampaignStatus.SCHEDULED.value
            c.last_error = ""
        s.flush()
        return campaign_info(c)


def _choose_channel(name: str, channel: str | None, template: Any, kind: str) -> str:
    """Return the campaign's channel, refusing a template or account that cannot carry it."""
    tmpl_channel = getattr(template, "channel", None) if not isinstance(template, str) else None
    default = tmpl_channel or ("sms" if kind == "eurosms" else "email")
    chosen = campaign_channel(channel if channel is not None else default)
    if tmpl_channel is not None and tmpl_channel != chosen:
        raise ConfigError(
            f"campaign {name!r}: channel {chosen!r} but template {template.name!r} is an "
            f"{tmpl_channel} template: pick a matching template or channel",
            campaign=name,
        )
    allowed = ("eurosms", "file") if chosen == "sms" else ("smtp", "file", "sendpulse")
    if kind not in allowed:
        raise ConfigError(
            f"campaign {name!r}: a sender account of kind {kind!r} cannot send {chosen}: "
            f"use one of kind {', '.join(allowed)}",
            campaign=name,
        )
    return chosen


def _set_status(
    campaign: CampaignRef,
    new: CampaignStatus,
    allowed_from: Sequence[CampaignStatus],
    db: Database | None,
    url: str | None,
) -> CampaignInfo:
    with resolve_database(db, url).session() as s:
        c = campaign_row(s, campaign)
        if c.status not in [a.value for a in allowed_from]:
            raise SendError(
                f"campaign {c.name!r} is {c.status}: cannot make it {new.value}",
                campaign=c.name,
                status=c.status,
            )
        c.status = new.value
        s.flush()
        return campaign_info(c)


def pause(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> CampaignInfo:
    """Pause the campaign: senders stop after the message in hand; ``resume`` continues."""
    return _set_status(
        campaign,
        CampaignStatus.PAUSED,
        [
            CampaignStatus.REGISTERED,
            CampaignStatus.SCHEDULED,
            CampaignStatus.SENDING,
            CampaignStatus.STOPPED,
            CampaignStatus.LATE,
        ],
        db,
        url,
    )


def resume(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> CampaignInfo:
    """Resume a paused, stopped or late campaign.

    One paused by the circuit breaker (policy or system refusals in a row) starts its
    count again: resume once the reason in its ``last_error`` is dealt with.

    A late one (its send time passed long ago while no worker ran), and any whose send
    time has passed, becomes ``sending``: a worker picks it up now (or ``send`` it). One
    with a send time ahead is scheduled again; one without is registered.
    """
    resumable = (
        CampaignStatus.PAUSED.value,
        CampaignStatus.STOPPED.value,
        CampaignStatus.LATE.value,
    )
    with resolve_database(db, url).session() as s:
        c = campaign_row(s, campaign)
        if c.status not in resumable:
            raise SendError(
                f"campaign {c.name!r} is {c.status}, not paused, stopped or late",
                campaign=c.name,
            )
        if c.status == CampaignStatus.LATE.value or (
            c.scheduled_at is not None and c.scheduled_at <= utcnow()
        ):
            # Its time has passed: back to 'scheduled' a worker could find it late again at
            # once, though the person just said go. A worker takes a sending one as it is.
            c.status = CampaignStatus.SENDING.value
        elif c.scheduled_at is not None:
            c.status = CampaignStatus.SCHEDULED.value
        else:
            c.status = CampaignStatus.REGISTERED.value
        c.last_error = ""
        c.refusals_in_row = 0  # a circuit breaker's count starts again (outbox.breaker)
        s.flush()
        return campaign_info(c)


def cancel(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> CampaignInfo:
    """Cancel the campaign: every message not yet sent is removed from the queue."""
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        c.status = CampaignStatus.CANCELLED.value
        cid = c.id
    pending = queue(cid, status=[m.value for m in REMOVABLE], db=database)
    remove_from_queue(cid, pending, reason="campaign cancelled", db=database)
    return get_campaign(cid, db=database)


def template_of_name(template: Template | str) -> Template:
    """Return ``template`` loaded when it is given by name."""
    return load_template(template) if isinstance(template, str) else template


def recipients_of(c: Campaign, database: Database) -> pd.DataFrame:
    """Return the recipients of ``c``'s segment, or raise saying to pass a frame."""
    if c.segment_id is None:
        raise SendError(
            f"campaign {c.name!r} has no segment: pass recipients=<a frame of contacts_frame() "
            "rows> to register()",
            campaign=c.name,
        )
    with database.session() as s:
        seg = s.get(Segment, c.segment_id)
        assert seg is not None
        name = seg.name
    return segment_recipients(name, contacts_frame(database), db=database)

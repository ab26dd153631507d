"""Registration: one rendered message per recipient into the outbox, and who was skipped and why.

``register(campaign)`` renders every recipient's message now and stores the bytes
(without Date, which is added at sending), so what was previewed is what is sent.
The Message-ID is fixed here, on the sender's domain, so retries keep it; each
recipient gets an unsubscribe token stored only as its SHA-256.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.campaigns import recipients_of
from bulkmail_kernel.campaigns.caps import cap_check
from bulkmail_kernel.campaigns.preflight import (
    check_campaign_template,
    same_failure,
    short_reason,
    skip_summary,
)
from bulkmail_kernel.campaigns.rendering import campaign_renderer, template_source
from bulkmail_kernel.campaigns.tracking import tracking_for
from bulkmail_kernel.compose.headers import new_message_id, new_token
from bulkmail_kernel.compose.render import RunawayGuard
from bulkmail_kernel.compose.sms import sms_segments
from bulkmail_kernel.contacts.zones import recipient_zone
from bulkmail_kernel.db import (
    CampaignStatus,
    ContactPoint,
    Database,
    Event,
    Message,
    Suppression,
    chunks,
    resolve_database,
    utcnow,
)
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import (
    BulkmailError,
    ConfigError,
    RecipientsSkippedWarning,
    SendError,
    TemplateError,
)
from bulkmail_kernel.outbox.lookup import campaign_row, sender_of
from bulkmail_kernel.outbox.parking import park_campaign
from bulkmail_kernel.outbox.queue import queue, store_messages
from bulkmail_kernel.records import CampaignRef, point_channel

log = logging.getLogger("bulkmail")

#: Most segments one SMS may cost unless the campaign says otherwise (a typo can cost 10x).
DEFAULT_MAX_SMS_SEGMENTS = 6


def register(
    campaign: CampaignRef,
    recipients: pd.DataFrame | None = None,
    *,
    template: Any = None,
    fit_to_gsm7: bool | None = None,
    max_segments: int | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Render one message per recipient into the outbox and return the queue.

    ``recipients`` are rows of ``contacts_frame()`` (default: the campaign's
    segment). Registering again adds only recipients not yet in the campaign.
    Suppressed, not-allowed, duplicate and unrenderable recipients are skipped and
    listed by ``skipped(campaign)``, and so is a contact over the campaign's frequency
    cap, with the messages that count (``set_frequency_cap``; transactional campaigns are
    never capped). Bodies are rendered now, so what was previewed is what is sent; the
    Date header is added when each message is sent.

    An SMS campaign stores each recipient's text (UTF-8) for their E.164 number.
    ``fit_to_gsm7`` rewrites it into the GSM-7 alphabet first (default: the campaign
    value ``fit_to_gsm7``); a text longer than ``max_segments`` segments (default:
    the campaign value ``max_sms_segments``, else 6) stops the registration, naming
    the recipient. SendPulse accounts need no unsubscribe link pattern: SendPulse
    adds its own.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        if c.status in (CampaignStatus.CANCELLED.value,):
            raise SendError(f"campaign {c.name!r} is cancelled: create a new one", campaign=c.name)
        sender = sender_of(s, c)
        renderer = campaign_renderer(c, sender, template)
        tmpl = renderer.template
        if template is not None:
            c.template_name = getattr(tmpl, "name", "") or c.template_name
            c.template_source = template_source(tmpl)
        cid, cname, channel, values = c.id, c.name, c.channel, dict(c.values or {})
        cap = cap_check(database, c)
    is_sms = renderer.is_sms
    wanted = point_channel(channel)
    if is_sms and not getattr(tmpl, "sms", None):
        raise SendError(
            f"register {cname!r}: template {getattr(tmpl, 'name', '')!r} has no SMS text: "
            'use an SMS template (channel = "sms", an sms.txt)',
            campaign=cname,
        )
    fit = renderer.fit if fit_to_gsm7 is None else fit_to_gsm7
    limit = int(
        values.get("max_sms_segments", DEFAULT_MAX_SMS_SEGMENTS)
        if max_segments is None
        else max_segments
    )
    link_wanted = renderer.link_wanted
    frame = recipients if recipients is not None else recipients_of(c, database)
    if frame.attrs.get("hidden_columns"):
        # Names would be rendered as "***": the analyst's frame never reaches the outbox.
        raise SendError(
            f"register {cname!r}: the recipients were read by a database role that cannot see "
            f"contact data ({', '.join(frame.attrs['hidden_columns'])}), so names and "
            "addresses are masked; the owner registers with the campaign's segment "
            "(register(campaign) without recipients), see docs/permissions.md",
            campaign=cname,
        )
    # Before anything is queued: a value missing for everyone, an image not found. The
    # frame's columns are what these recipients have (no scan of every contact).
    check_campaign_template(cname, tmpl, values, [str(c) for c in frame.columns])
    if "contact_point_id" not in frame.columns:
        raise SendError(
            f"register {cname!r}: the recipients frame has no 'contact_point_id' column: "
            "pass rows of contacts_frame() (or of filter_recipients())",
            campaign=cname,
        )
    point_ids = [int(x) for x in frame["contact_point_id"]]
    cp = ContactPoint.__table__
    with database.engine.connect() as conn:
        points = {
            r.id: r
            for chunk in chunks(point_ids, 500)
            for r in conn.execute(
                sa.select(
                    cp.c.id, cp.c.contact_id, cp.c.channel, cp.c.normalized, cp.c.mailing_allowed
                ).where(cp.c.id.in_(chunk))
            )
        }
        suppressed = {
            (ch, n)
            for ch, n in conn.execute(sa.select(Suppression.channel, Suppression.normalized))
        }
        already = set(
            conn.execute(sa.select(Message.recipient).where(Message.campaign_id == cid)).scalars()
        )
    renderer = tracking_for(renderer, database, {p.contact_id for p in points.values()})
    skipped: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    seen: set[str] = set()
    now = utcnow()
    failures: list[BulkmailError] = []
    why: list[str] = []
    tried = 0
    runaway = RunawayGuard("registration stopped, nothing was registered")
    for (_, row), pid in zip(frame.iterrows(), point_ids, strict=True):
        point = points.get(pid)
        reason = None
        short = None  # the reason without the recipient, for the one-line summary
        if point is None:
            reason = "contact point no longer exists"
        elif point.channel != wanted:
            reason = f"not {'a phone' if is_sms else 'an email'} contact point ({point.channel})"
        elif is_sms and not re.fullmatch(r"\+[1-9]\d{6,14}", point.normalized):
            reason = f"{point.normalized!r} is not an E.164 phone number"
        elif (point.channel, point.normalized) in suppressed:
            reason = "suppressed"
        elif not point.mailing_allowed:
            reason = "mailing not allowed"
        elif point.normalized in already:
            continue  # registered before: idempotent, not a skip
        elif point.normalized in seen:
            reason = "duplicate address in this campaign"
        if reason is None:
            assert point is not None  # every branch without a point set a reason
            token = new_token() if link_wanted else None
            tried += 1
            try:
                message_id = new_message_id(sender)
                made = renderer.message(row, token=token, message_id=message_id, fit=fit)
                subject, data, rendered = made.subject, made.data, made.rendered
                if not is_sms and not subject:
                    raise TemplateError(
                        f"the subject renders empty for {rendered.recipient}",
                        reason="the subject renders empty",
                        field="subject",
                    )
            except BulkmailError as exc:
                if isinstance(exc, ConfigError):
                    raise
                runaway.failed(exc)
                failures.append(exc)
                reason = f"cannot render: {exc.message}"
                short = f"cannot render: {exc.fields.get('reason') or exc.message}"
            else:
                runaway.rendered()
                if is_sms:
                    reason = _sms_problem(
                        cname, point.normalized, rendered.recipient, subject, limit
                    )
            if reason is None:
                seen.add(point.normalized)
                messages.append(
                    {
                        "point": point,
                        "token": token,
                        "message_id": message_id,
                        "subject": subject,
                        "body": data,
                        "timezone": recipient_zone(row, point.channel, point.normalized),
                        "links": made.links,  # tracked links (docs/tracking.md)
                    }
                )
        if reason is not None:
            why.append(short or short_reason(reason))
            skipped.append(
                {
                    "kind": "skipped",
                    "contact_id": getattr(point, "contact_id", None),
                    "contact_point_id": pid if point is not None else None,
                    "campaign_id": cid,
                    "message_id": None,
                    "detail": reason,
                    "occurred_at": now,
                    "data": {
                        "address": getattr(point, "normalized", None),
                        "at": "registration",
                        # The reason without the recipient: the monitor's skip line counts it.
                        "why": why[-1],
                    },
                }
            )
    everyone = same_failure(cname, failures, tried)
    if everyone is not None and not messages:
        raise everyone
    # Two registrations of one campaign at once both end well: the first to store a
    # recipient owns its message, the other leaves it out and says so. Both succeeding,
    # rather than the second refusing, is what a user who pressed register twice wants:
    # the queue is whole either way and nothing is left half-done or locked after a crash.
    try:
        stored = store_messages(database, cid, wanted, messages, skipped, now, cap)
    except sa.exc.OperationalError as exc:
        if "database is locked" not in str(exc):
            raise
        # SQLite lets one writer in at a time and waits busy_timeout (30 s) for it.
        raise SendError(
            f"register {cname!r}: the database {database.url} stayed locked by another "
            "process for 30 s (perhaps registering or sending this campaign): wait for it "
            "to finish and run register again",
            campaign=cname,
        ) from None
    # Recipients whose send window is closed now wait for it (the send loop parks too).
    park_campaign(database, cid, now)
    capped = cap.skipped if cap is not None else []
    if capped:
        assert cap is not None
        why += [cap.summary_reason()] * len(capped)
    if stored < len(messages) - len(capped):
        log.warning(
            "campaign %s: %d of %d recipients were registered meanwhile by another "
            "registration of this campaign; each has one message",
            cname,
            len(messages) - len(capped) - stored,
            len(messages) - len(capped),
        )
    with database.session() as s:
        c = campaign_row(s, cid)
        if c.status in (CampaignStatus.DRAFT.value, CampaignStatus.FINISHED.value):
            c.status = (
                CampaignStatus.SCHEDULED.value
                if c.scheduled_at
                else CampaignStatus.REGISTERED.value
            )
        c.registered_at = now
        # The filter these recipients were chosen by (filter_recipients attaches it), for
        # explain(); the latest registration's, and none for a hand-made list.
        spec = frame.attrs.get("filter_spec")
        c.audience = dict(spec) if isinstance(spec, dict) else None
    summary = skip_summary(cname, why, stored)
    if summary is not None:
        # A warning, not a log line: a notebook shows it under the cell, and the CLI prints it.
        warnings.warn(summary, RecipientsSkippedWarning, stacklevel=2)
    else:
        log.info("campaign %s: %d messages registered", cname, stored)
    return queue(cid, db=database)


def _sms_problem(campaign: str, number: str, who: str, text: str, max_segments: int) -> str | None:
    """Return why an SMS text cannot be registered (None: fine); raise when it is too long."""
    if not text:
        return "the SMS text is empty"
    info = sms_segments(text)
    if info.segments > max_segments:
        # Not a skip: every recipient would likely cost as much, so the analyst must decide.
        raise SendError(
            f"register {campaign!r}: the SMS for {who or number} ({number}) is {info.segments} "
            f"segments ({info.encoding}, {info.units} units), more than max_segments="
            f"{max_segments}: shorten the template, register with fit_to_gsm7=True, or raise "
            "max_segments",
            campaign=campaign,
            recipient=number,
            segments=info.segments,
        )
    return None


def skipped(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return who was skipped, when and why (at registration or, later, at send time)."""
    database = resolve_database(db, url)
    with database.session() as s:
        cid = campaign_row(s, campaign).id
        rows = s.execute(
            sa.select(
                Event.occurred_at,
                Event.contact_id,
                Event.contact_point_id,
                ContactPoint.normalized,
                Event.detail,
                Event.data,
            )
            .join(ContactPoint, ContactPoint.id == Event.contact_point_id, isouter=True)
            .where(Event.campaign_id == cid, Event.kind == "skipped")
            .order_by(Event.id)
        ).all()
    frame = pd.DataFrame(
        [(r[0], r[1], r[2], r[3], r[4], (r[5] or {}).get("at", "")) for r in rows],
        columns=["occurred_at", "contact_id", "contact_point_id", "address", "reason", "at"],
    )
    for col in ("contact_id", "contact_point_id"):
        frame[col] = frame[col].astype("Int64")
    frame["occurred_at"] = (
        pd.to_datetime(frame["occurred_at"], utc=True)
        .astype("datetime64[us, UTC]")
        .dt.tz_convert(config.local_timezone())  # what a person reads: the local zone
    )
    return readable(frame)

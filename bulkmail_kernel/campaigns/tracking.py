"""Click and open tracking, off by default: a campaign opts in, a contact consents.

``set_tracking(campaign, clicks=True)`` turns it on for a campaign's next registration.
Then only recipients whose current "tracking" consent is a grant (``record_consent``)
get their HTML links rewritten to the web app's ``/c/{token}`` (and, with
``opens=True``, a 1x1 pixel ``/o/{token}``); everyone else gets the links as written.
``clicks(campaign)`` lists the counted clicks. See docs/tracking.md.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.rendering import CampaignRenderer, Tracking
from bulkmail_kernel.contacts.consents import consented
from bulkmail_kernel.db import ContactPoint, Database, Event, resolve_database
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.clicks import tracking_secret
from bulkmail_kernel.outbox.lookup import campaign_row
from bulkmail_kernel.records import CampaignRef, SenderInfo


def set_tracking(
    campaign: CampaignRef,
    clicks: bool = True,
    opens: bool = False,
    *,
    db: Database | None = None,
    url: str | None = None,
) -> dict[str, bool]:
    """Turn click (and open-pixel) tracking on or off for a campaign; return its setting.

    Applies to messages registered afterwards; only contacts with a current "tracking"
    consent are tracked. ``opens`` needs ``clicks`` (the pixel goes to the same endpoint)
    and is weak evidence: Apple Mail Privacy Protection fetches every image.
    """
    if opens and not clicks:
        raise ConfigError("set_tracking: opens=True needs clicks=True (one tracking endpoint)")
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        if c.channel != "email" and clicks:
            raise ConfigError(
                f"campaign {c.name!r}: tracking is for e-mail campaigns (an SMS has no HTML)",
                campaign=c.name,
            )
        # Kept beside fit_to_gsm7 and max_sms_segments: how this campaign renders.
        c.values = {
            **dict(c.values or {}),
            "track_clicks": bool(clicks),
            "track_opens": bool(opens),
        }
    return {"clicks": bool(clicks), "opens": bool(opens)}


def tracking_urls(sender: SenderInfo) -> tuple[str, str]:
    """Return the click and open URL patterns: the account's, the env's, or next to /u/."""
    click = sender.settings.get("click_url") or os.environ.get("BULKMAIL_CLICK_URL")
    if not click:
        unsub = sender.settings.get("unsubscribe_url") or os.environ.get("BULKMAIL_UNSUBSCRIBE_URL")
        if unsub and str(unsub).endswith("/u/{token}"):
            click = str(unsub)[: -len("/u/{token}")] + "/c/{token}"
    if not click or "{token}" not in str(click) or not str(click).endswith("/c/{token}"):
        raise ConfigError(
            f"sender account {sender.name!r}: no click URL for tracking: set "
            "settings['click_url'] (or BULKMAIL_CLICK_URL) to the web app's "
            "https://.../c/{token}, or use an unsubscribe_url ending in /u/{token}",
            account=sender.name,
        )
    click = str(click)
    return click, click[: -len("/c/{token}")] + "/o/{token}"


def tracking_for(
    renderer: CampaignRenderer, database: Database, contact_ids: Collection[int]
) -> CampaignRenderer:
    """Return ``renderer`` tracking the consenting ``contact_ids`` if its campaign opted in."""
    values = renderer.values
    if renderer.is_sms or not values.get("track_clicks"):
        return renderer
    click, opened = tracking_urls(renderer.sender)
    with database.session() as s:
        secret = tracking_secret(s)
        assert secret is not None  # made on first use
        who = consented(s, contact_ids, "tracking")
    tracking = Tracking(secret, click, opened, bool(values.get("track_opens")), frozenset(who))
    return replace(renderer, tracking=tracking)


def clicks(
    campaign: CampaignRef, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return the campaign's counted clicks, one row each (scanner traffic left out), local time."""
    database = resolve_database(db, url)
    with database.session() as s:
        cid = campaign_row(s, campaign).id
        rows = s.execute(
            sa.select(
                Event.occurred_at,
                Event.message_id,
                Event.contact_id,
                Event.contact_point_id,
                ContactPoint.normalized,
                Event.data,
            )
            .join(ContactPoint, ContactPoint.id == Event.contact_point_id, isouter=True)
            .where(Event.campaign_id == cid, Event.kind == "clicked")
            .order_by(Event.id)
        ).all()
    data: list[tuple[Any, ...]] = [
        (r[0], r[1], r[2], r[3], r[4], (r[5] or {}).get("link"), (r[5] or {}).get("url"))
        for r in rows
    ]
    frame = pd.DataFrame(
        data,
        columns=["clicked_at", "message_id", "contact_id", "contact_point_id", "address",
                 "link", "url"],
    )  # fmt: skip
    for col in ("message_id", "contact_id", "contact_point_id", "link"):
        frame[col] = frame[col].astype("Int64")
    frame["clicked_at"] = (
        pd.to_datetime(frame["clicked_at"], utc=True)
        .astype("datetime64[us, UTC]")
        .dt.tz_convert(config.local_timezone())
    )
    return readable(frame)

"""What is stored, as frozen values: a campaign and a sender account, handed between stages.

The stages below the outbox (compose, transports) never see ORM rows or the
database; they get these. Also the two channel vocabularies: a campaign goes out
by "email" or "sms", its messages and suppressions speak of contact points,
"email" or "phone".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bulkmail_kernel.exceptions import ConfigError

#: A campaign is named by its name or id everywhere.
CampaignRef = str | int

#: Campaign channel -> the contact-point channel its messages and suppressions use.
CAMPAIGN_CHANNELS = {"email": "email", "sms": "phone"}


def campaign_channel(channel: str) -> str:
    """Return the campaign channel, "email" or "sms", for ``channel`` ("phone" means "sms")."""
    value = "sms" if channel == "phone" else channel
    if value not in CAMPAIGN_CHANNELS:
        raise ConfigError(
            f"channel={channel!r}: a campaign goes out by 'email' or 'sms'", channel=channel
        )
    return value


def point_channel(channel: str) -> str:
    """Return the contact-point channel ("email" or "phone") a campaign ``channel`` writes to."""
    return CAMPAIGN_CHANNELS[campaign_channel(channel)]


@dataclass(frozen=True)
class CampaignInfo:
    """A campaign as stored."""

    id: int
    name: str
    channel: str
    status: str
    template_name: str
    segment_id: int | None
    sender_account_id: int | None
    rate_per_hour: int
    burst: int
    scheduled_at: datetime | None
    registered_at: datetime | None
    finished_at: datetime | None
    last_error: str
    #: Policy or system refusals in a row that pause it (None: ``BULKMAIL_BREAKER_AFTER``).
    breaker_after: int | None = None
    #: When messages may go on each recipient's wall clock, e.g. "Mon–Fri 09:00–18:00".
    send_window: str | None = None
    #: Its own frequency cap, "2/7" or "none" (None: the global one, ``frequency_cap()``).
    frequency_cap: str | None = None
    #: A service message: never capped, never counted toward a cap.
    transactional: bool = False


@dataclass(frozen=True)
class SenderInfo:
    """A sender account as stored (secrets are never stored, only where to find them)."""

    id: int
    name: str
    kind: str
    from_name: str
    from_email: str
    settings: dict[str, Any]
    credential_ref: str

    @property
    def envelope_from(self) -> str:
        """Return the MAIL FROM address (``settings['envelope_from']`` or ``from_email``)."""
        return str(self.settings.get("envelope_from") or self.from_email)

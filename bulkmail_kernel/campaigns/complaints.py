"""A campaign's complaint rate: complaints ÷ messages sent, and when it warrants a warning.

Gmail and Yahoo require bulk senders to stay below 0.3 % spam complaints (their 2024
sender requirements) and recommend below 0.1 %: the report and the outbox monitor warn
from 0.1 %, before the mailbox providers start blocking. Complaints are the
``complained`` events the bounce mailbox records (ARF reports, SES and SendGrid
notifications). Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel.db import Event

#: From this share of complaints the report and the monitor warn.
COMPLAINT_WARNING_RATE = 0.001
#: Where Gmail and Yahoo start blocking bulk senders.
COMPLAINT_BLOCK_RATE = 0.003


@dataclass(frozen=True)
class ComplaintRate:
    """How many sent messages drew a complaint."""

    complaints: int
    sent: int

    @property
    def rate(self) -> float:
        """Return complaints ÷ sent (0.0 before anything was sent)."""
        return self.complaints / self.sent if self.sent else 0.0

    @property
    def warning(self) -> str:
        """Return the warning a person should read ("" below 0.1 %)."""
        if not self.complaints or self.rate < COMPLAINT_WARNING_RATE:
            return ""
        level = "above" if self.rate >= COMPLAINT_BLOCK_RATE else "near"
        return (
            f"complaint rate {self.rate:.2%} ({self.complaints:,} of {self.sent:,} sent) is "
            f"{level} the limit: Gmail and Yahoo block bulk senders above 0.3 %; check who "
            "is on the list and how they agreed to it before sending more"
        )

    def line(self) -> str:
        """Return the rate in one line, with the warning if there is one."""
        return self.warning or (
            f"complaints: {self.complaints:,} of {self.sent:,} sent ({self.rate:.2%})"
        )


def complaints_of(s: Session, campaign_id: int) -> int:
    """Return how many messages of the campaign drew a complaint."""
    return int(
        s.scalar(
            sa.select(sa.func.count(sa.distinct(Event.message_id))).where(
                Event.campaign_id == campaign_id, Event.kind == "complained"
            )
        )
        or 0
    )

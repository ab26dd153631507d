"""The circuit breaker: a campaign pauses after N policy or system refusals in a row.

When a relay starts refusing *us* (our IP on a blocklist, DMARC failing, relaying
denied), every recipient gets the same answer. Those refusals suppress nobody (see
:mod:`bulkmail_kernel.transports.replies`), but sending on would still fail the whole
list in minutes and hurt the sender's reputation further. So each commit of outcomes
adds its refusals to one count on the campaign row (``campaigns.refusals_in_row``), in
the same transaction: every connection and every worker of the campaign adds to the
same number, whatever machine it runs on. A message the relay took, or one refused for
its own bad mailbox, shows the relay is talking to us and sets the count back to 0.
Once it reaches the campaign's ``breaker_after`` (default ``BULKMAIL_BREAKER_AFTER``,
10) the campaign is ``paused`` with a reason a person can act on; what is left stays
queued, and ``resume`` sets the count back to 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from bulkmail_kernel.db import Campaign, CampaignStatus, Event
from bulkmail_kernel.transports import SendResult
from bulkmail_kernel.transports.replies import BREAKER_CATEGORIES

#: What to check before resuming, by the category of the refusals that paused a campaign.
ADVICE = {
    "policy": (
        "the relay refuses us",
        "check your server's reputation (is its IP on a blocklist such as Spamhaus? do SPF, "
        "DKIM and DMARC of the sender domain pass?) before resuming",
    ),
    "system": (
        "the relay cannot take our messages",
        "check the relay (its logs, its limits, its network) before resuming",
    ),
    "content": (
        "the relay refuses the message content",
        "check the template (links, attachments, wording) with the relay's postmaster "
        "before resuming",
    ),
    "size": (
        "the relay refuses the message as too big",
        "make the message smaller (attachments, images) before resuming",
    ),
    "sender": (
        "the relay refuses our sender address",
        "check from_email and envelope_from of the sender account (does the domain "
        "resolve?) before resuming",
    ),
}


def is_refusal(result: SendResult) -> bool:
    """Return whether ``result`` is a refusal about us or our message, which the breaker counts."""
    return result.status == "failed" and result.category in BREAKER_CATEGORIES


def _resets(result: SendResult) -> bool:
    # Taken, or refused for its own mailbox: the relay is talking to us.
    return result.status == "sent" or (result.status == "failed" and result.category == "mailbox")


def streak(results: Iterable[SendResult]) -> tuple[bool, int, SendResult | None]:
    """Return whether ``results`` reset the count, the refusals after the last reset, the last.

    Deferrals, unknowns and failures without a reply (a header refused before sending)
    neither count nor reset.
    """
    reset, run, last = False, 0, None
    for r in results:
        if is_refusal(r):
            run, last = run + 1, r
        elif _resets(r):
            reset, run = True, 0
    return reset, run, last


def reason(n: int, last: SendResult) -> str:
    """Return why a campaign paused after ``n`` refusals in a row, the last being ``last``."""
    what, advice = ADVICE.get(last.category, ADVICE["system"])
    return (
        f"paused after {n} refusals in a row: {what}: {last.detail} — {advice}. Nobody was "
        "suppressed and the rest stays queued: resume() it (bulkmail resume) to go on"
    )


def count_refusals(
    conn: sa.Connection,
    campaign_id: int,
    results: list[SendResult],
    limit: int,
    now: datetime,
) -> int | None:
    """Add ``results`` to the campaign's refusals in a row; pause it at ``limit``; return the count.

    None when ``results`` neither count nor reset (nothing was written). Run in the
    transaction that records ``results``, so the count and the outcomes agree.
    """
    reset, run, last = streak(results)
    table: Any = Campaign.__table__
    if run == 0:
        if not reset:
            return None
        # A plain success: one indexed look at the row, written only if a count was running.
        conn.execute(
            sa.update(table)
            .where(table.c.id == campaign_id, table.c.refusals_in_row != 0)
            .values(refusals_in_row=0)
        )
        return 0
    new = sa.literal(run) if reset else table.c.refusals_in_row + run
    count = int(
        conn.execute(
            sa.update(table)
            .where(table.c.id == campaign_id)
            .values(refusals_in_row=new)
            .returning(table.c.refusals_in_row)
        ).scalar_one()
    )
    if count >= limit and last is not None:
        why = reason(count, last)
        paused = conn.execute(
            sa.update(table)
            .where(table.c.id == campaign_id, table.c.status == CampaignStatus.SENDING.value)
            .values(status=CampaignStatus.PAUSED.value, last_error=why, updated_at=now)
        ).rowcount
        if paused:  # one writer wins; the others find it paused already
            conn.execute(
                sa.insert(Event).values(
                    kind="paused",
                    campaign_id=campaign_id,
                    detail=why,
                    data={"breaker": count, "code": last.code, "category": last.category},
                    occurred_at=now,
                )
            )
    return count


def refusals_in_row(conn: sa.Connection, campaign_id: int) -> int:
    """Return the campaign's refusals in a row as stored."""
    table: Any = Campaign.__table__
    return int(
        conn.execute(
            sa.select(table.c.refusals_in_row).where(table.c.id == campaign_id)
        ).scalar_one()
    )

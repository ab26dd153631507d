"""Test sends: marked samples to test addresses, outside the campaign's queue and history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.campaigns.campaigns import recipients_of
from bulkmail_kernel.campaigns.rendering import campaign_renderer
from bulkmail_kernel.compose.headers import (
    envelope_from,
    new_message_id,
)
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.db import Database, Message, resolve_database, utcnow
from bulkmail_kernel.deliverability.dkim import SIGNED_HEADERS, prepare_outgoing, signer_for
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import SendError
from bulkmail_kernel.outbox.lookup import campaign_row, sender_of
from bulkmail_kernel.records import CampaignRef
from bulkmail_kernel.transports import open_transport
from bulkmail_kernel.transports.eurosms import e164


def send_samples(
    campaign: CampaignRef,
    to: Sequence[str] | None = None,
    *,
    recipients: pd.DataFrame | None = None,
    template: Any = None,
    transport: Any = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Send one rendered sample per address in ``to``, subject marked [TEST]; return the outcomes.

    Samples are rendered for the campaign's first recipients (registered ones, else
    ``recipients`` or the segment) and go only to the test addresses: the queue,
    the history and the unsubscribe tokens are not touched. For an SMS campaign
    ``to`` holds phone numbers and the text starts with "TEST: ". Without ``to`` the
    samples go to the sender account's ``settings['test_addresses']``.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        sender = sender_of(s, c)
        to = list(to) if to else account_test_addresses(sender.settings)
        if not to:
            raise SendError(
                f"test_send {c.name!r}: no test address: give to=[...] or add "
                f"settings['test_addresses'] to sender account {sender.name!r}",
                campaign=c.name,
                account=sender.name,
            )
        renderer = campaign_renderer(c, sender, template)
        registered = s.scalars(
            sa.select(Message.contact_point_id)
            .where(Message.campaign_id == c.id, Message.contact_point_id.is_not(None))
            .order_by(Message.id)
            .limit(len(to))
        ).all()
        is_sms = renderer.is_sms
    # A sample is signed like the real message, so "Show original" in Gmail checks DKIM too.
    signer = None if is_sms else signer_for(sender.settings, sender.from_email)
    if recipients is None:
        frame = contacts_frame(database)
        if registered:
            frame = frame[frame["contact_point_id"].isin(registered)]
        else:
            frame = recipients_of(c, database)
    else:
        frame = recipients
    if frame.empty:
        raise SendError(f"test_send {c.name!r}: no recipient to render a sample for")
    transport = transport or open_transport(sender.kind, sender.settings, sender.credential_ref)
    opener = getattr(transport, "open", None)
    if opener is not None:
        opener()
    results = []
    try:
        for i, address in enumerate(to):
            row = frame.iloc[i % len(frame)]
            # The campaign's own path to bytes, with a placeholder token and a test address.
            token = "test-send-not-a-token" if renderer.link_wanted else None
            message_id = new_message_id(sender)
            if is_sms:
                made = renderer.message(row, token=token, message_id=message_id)
                results.append(_sms_sample(transport, made.subject, address))
                continue
            made = renderer.message(
                row, token=token, message_id=message_id, to=address, subject_prefix="[TEST] "
            )
            data = made.data
            try:
                data = prepare_outgoing(data, when=utcnow(), signer=signer, allowed=SIGNED_HEADERS)
            except SendError as exc:
                results.append((address, made.subject, "failed", f"not sent: {exc.message}"))
                continue
            r = transport.send(data, mail_from=envelope_from(sender, message_id), rcpt_to=address)
            results.append((address, made.subject, r.status, r.detail))
    finally:
        transport.close()
    return readable(pd.DataFrame(results, columns=["to", "subject", "status", "detail"]))


def account_test_addresses(settings: Mapping[str, Any]) -> list[str]:
    """Return the account's test addresses: a list, or one comma-separated string."""
    given = settings.get("test_addresses") or []
    # A hand-edited account may hold "a@x.sk, b@x.sk"; both shapes mean the same list.
    items = given.split(",") if isinstance(given, str) else list(given)
    return [str(item).strip() for item in items if str(item).strip()]


def _sms_sample(transport: Any, text: str, number: str) -> tuple[str, str, str, str]:
    """Send one SMS sample, marked as a test, and return its outcome."""
    body = "TEST: " + text
    r = transport.send(body.encode("utf-8"), mail_from="", rcpt_to=e164(number))
    return (number, body, r.status, r.detail)


#: The issue's name for ``send_samples``; pytest must not collect it as a test.
test_send = send_samples
send_samples.__test__ = False  # type: ignore[attr-defined]

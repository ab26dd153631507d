"""EuroSMS workflows: save an account, and fetch delivery reports for a campaign's sent SMS.

Sending is the engine's, through :mod:`bulkmail_kernel.transports.eurosms`'s transport.
Delivery reports are asked per segment uuid (kept as the message's provider id); a
message is ``delivered`` when every segment is DELIVRD and ``bounced`` when any ends
UNDELIV, EXPIRED, REJECTD, DELETED or UNKNOWN, and :mod:`bulkmail_kernel.outbox.handover`
stores that event: nothing here writes a message or an event.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.db import Database, SenderAccount, resolve_database
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.handover import (
    DeliveryReport,
    awaiting_reports,
    record_delivery_reports,
)
from bulkmail_kernel.outbox.lookup import campaign_row, sender_info
from bulkmail_kernel.transports.credentials import check_credential_ref, resolve_secret
from bulkmail_kernel.transports.eurosms import (
    DEFAULT_BASE_URL,
    EuroSmsClient,
    check_sender_id,
    client_from_settings,
)

log = logging.getLogger("bulkmail")

#: Delivery report states after which nothing more will happen.
DELIVERED = frozenset({"DELIVRD"})
UNDELIVERED = frozenset({"UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN"})

_IID = re.compile(r"^\d+-[A-Za-z0-9]{4,}$")


# --------------------------------------------------------------------------- accounts


def add_eurosms_account(
    name: str,
    *,
    integration_id: str,
    sender_id: str,
    credential_ref: str,
    from_name: str = "",
    base_url: str = DEFAULT_BASE_URL,
    db: Database | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Create or update the EuroSMS sender account ``name``; the key stays in env/keyring.

    ``credential_ref`` names the environment variable (or ``keyring:SERVICE``) holding
    the integration key; it must resolve now, so a typo shows here and not mid-campaign.
    """
    if not _IID.match(integration_id):
        raise ConfigError(
            f"EuroSMS account {name!r}: integration_id={integration_id!r}: give the id EuroSMS "
            "shows for the integration, like 1-AB12CD",
            account=name,
        )
    check_sender_id(sender_id)
    check_credential_ref(credential_ref, account=name)
    resolve_secret(credential_ref, user=integration_id, account=name)
    database = resolve_database(db, url)
    settings = {"integration_id": integration_id, "sender_id": sender_id, "base_url": base_url}
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
        if row is None:
            row = SenderAccount(name=name, kind="eurosms")
            s.add(row)
        elif row.kind != "eurosms":
            raise ConfigError(
                f"sender account {name!r} exists as kind {row.kind!r}: pick another name",
                account=name,
            )
        row.from_name, row.settings, row.credential_ref = from_name, settings, credential_ref
        s.flush()
        return {"id": row.id, "name": row.name, "kind": row.kind, **settings}


# --------------------------------------------------------------------------- delivery reports

_DLR_COLUMNS = ["message_id", "recipient", "uuids", "dlr", "event"]


def _dlr_outcome(states: list[str]) -> tuple[str, str | None]:
    """Return the message's overall state and the event to store (None: still pending)."""
    if states and all(s in DELIVERED for s in states):
        return "DELIVRD", "delivered"
    final_bad = [s for s in states if s in UNDELIVERED]
    if final_bad:
        return final_bad[0], "bounced"
    return (states[0] if states else "PENDING"), None


def poll_delivery_reports(
    campaign: str | int,
    *,
    client: EuroSmsClient | None = None,
    clock: Clock = SYSTEM_CLOCK,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Fetch delivery reports for the campaign's sent SMS and store final ones as events.

    A message is ``delivered`` when every segment is DELIVRD and ``bounced`` when any
    segment ends UNDELIV/EXPIRED/REJECTD; messages still en route are listed with
    event None and asked again next time. Returns one row per message polled.
    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid, cname = c.id, c.name
        row = s.get(SenderAccount, c.sender_account_id) if c.sender_account_id else None
        account = sender_info(row) if row is not None else None
    waiting = awaiting_reports(database, cid)
    own = client is None
    if client is None:
        if account is None or account.kind != "eurosms":
            raise SendError(
                f"campaign {cname!r} is not sent through a EuroSMS account: nothing to poll",
                campaign=cname,
            )
        client = client_from_settings(
            account.settings, account.credential_ref, account=account.name
        )
    out: list[list[Any]] = []
    final: list[DeliveryReport] = []
    now = clock.now()
    try:
        for m in waiting:
            uuids = [u for u in m.provider_message_id.split(",") if u]
            reports = {u: client.delivery_reports(u) for u in uuids}
            states = [str((r[-1] if r else {}).get("dlr", "PENDING")) for r in reports.values()]
            state, kind = _dlr_outcome(states)
            out.append([m.message_id, m.recipient, ",".join(uuids), state, kind])
            if kind is not None:
                final.append(DeliveryReport(m, kind, state, reports))
    finally:
        if own:
            client.close()
    record_delivery_reports(database, cid, final, now=now)
    log.info(
        "campaign %s: %d delivery reports stored, %d pending",
        cname,
        len(final),
        len(out) - len(final),
    )
    frame = pd.DataFrame(out, columns=_DLR_COLUMNS)
    frame["message_id"] = frame["message_id"].astype("int64")
    return readable(frame)

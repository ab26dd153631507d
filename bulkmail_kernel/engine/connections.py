"""Opening a campaign's way out: its account's transport, N connections, its DKIM signer.

A relay that refuses the later connections of N ("421 too many connections") leaves
the send going over the ones it accepted; a fatal answer while opening stops the
campaign with the reason, so the monitor shows why nothing went.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from bulkmail_kernel.deliverability.dkim import DkimSigner, signer_for
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.store import OutboxStore
from bulkmail_kernel.records import SenderInfo, campaign_channel
from bulkmail_kernel.transports import Transport, open_transport

log = logging.getLogger("bulkmail")


def account_signer(sender: SenderInfo, channel: str) -> DkimSigner | None:
    """Return the DKIM signer of an e-mail campaign's account (ConfigError for bad settings)."""
    if campaign_channel(channel) != "email":
        return None
    try:
        return signer_for(sender.settings, sender.from_email)
    except ConfigError as exc:
        raise ConfigError(
            f"sender account {sender.name!r}: {exc.message}; nothing was sent",
            **{**exc.fields, "account": sender.name},
        ) from exc


def account_transport(sender: SenderInfo) -> Transport:
    """Return a new transport of the sender account's kind (not yet connected)."""
    return open_transport(sender.kind, sender.settings, sender.credential_ref)


def open_transports(
    factory: Callable[[], Transport], n: int, store: OutboxStore, campaign_id: int, name: str
) -> list[Transport]:
    """Open ``n`` connections one after the other; fewer if the server refuses the later ones."""
    opened: list[Transport] = []
    try:
        for k in range(n):
            t = factory()
            try:
                open_connection(t, store, campaign_id, name)
            except SendError as exc:
                with contextlib.suppress(Exception):
                    t.close()
                if exc.fields.get("fatal") or not opened:
                    raise
                # Relays cap connections per client ("421 too many connections"): go on with
                # the ones we have rather than not at all.
                log.warning(
                    "campaign %r: connection %d of %d refused (%s): sending over %d",
                    name,
                    k + 1,
                    n,
                    exc.message,
                    len(opened),
                )
                break
            opened.append(t)
    except BaseException:
        for t in opened:
            with contextlib.suppress(Exception):
                t.close()
        raise
    return opened


def open_connection(transport: Transport, store: OutboxStore, campaign_id: int, name: str) -> None:
    """Connect ``transport`` if it connects; a fatal answer stops the campaign, saying why."""
    opener = getattr(transport, "open", None)
    if opener is None:
        return
    try:
        opener()
    except SendError as exc:
        if exc.fields.get("fatal"):
            error = f"campaign {name!r} stopped: {exc.message}"
            store.stop_campaign(campaign_id, error)
            raise SendError(error, campaign=name, **exc.fields) from exc
        raise

"""SendPulse campaign mode: save an account, hand a registered campaign over, read its status.

A registered campaign's recipients go into a new address book with the variables
name, patronymic and surname; once SendPulse has processed the book, a campaign (or
a draft to send from SendPulse's cabinet) is created with the template's HTML. The
talking is done by :mod:`bulkmail_kernel.transports.sendpulse`'s client; what SendPulse
took over (messages, events, ids and status in ``campaigns.provider_ref``) is
recorded by :mod:`bulkmail_kernel.outbox.handover`. SMTP mode needs nothing here: it
is an ordinary smtp sender account on smtp-pulse.com.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.campaigns.campaigns import template_of
from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.db import CampaignStatus, Database, SenderAccount, resolve_database
from bulkmail_kernel.exceptions import ConfigError, SendError, TemplateError
from bulkmail_kernel.outbox.handover import (
    REF_FIELDS,
    handover_recipients,
    recent_handover_ages,
    record_handover,
    record_handover_error,
    ref_frame,
    update_provider_ref,
)
from bulkmail_kernel.outbox.lookup import campaign_row, sender_of
from bulkmail_kernel.transports.credentials import check_credential_ref
from bulkmail_kernel.transports.sendpulse import (
    DEFAULT_BASE_URL,
    SendPulseClient,
    client_for_account,
    status_text,
)

log = logging.getLogger("bulkmail")

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_STATEMENT = re.compile(r"\{%|\{#")


def add_sendpulse_account(
    name: str,
    *,
    client_id: str,
    from_email: str,
    from_name: str = "",
    secret_env: str | None = None,
    credential_ref: str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    clock: Clock = SYSTEM_CLOCK,
    db: Database | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Create or edit the SendPulse account ``name`` after SendPulse accepts its ID and Secret.

    The Secret is read from the environment variable ``secret_env`` (or the place
    ``credential_ref`` names, e.g. ``keyring:sendpulse``) and is never stored. Wrong
    credentials are refused with SendPulse's own message and nothing is saved. The
    sender address must be one registered in SendPulse and cannot be changed later.
    """
    if (secret_env is None) == (credential_ref is None):
        raise ConfigError(
            f"SendPulse account {name!r}: give either secret_env (an environment variable name) "
            "or credential_ref (e.g. 'keyring:sendpulse')",
            account=name,
        )
    ref = secret_env if secret_env is not None else str(credential_ref)
    check_credential_ref(ref, account=name)
    if "@" not in from_email:
        raise ConfigError(
            f"SendPulse account {name!r}: from_email={from_email!r} is not an address"
        )
    database = resolve_database(db, url)
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
        if row is not None and row.kind != "sendpulse":
            raise ConfigError(
                f"sender account {name!r} exists as kind {row.kind!r}: pick another name",
                account=name,
            )
        if row is not None and row.from_email.lower() != from_email.lower():
            raise ConfigError(
                f"SendPulse account {name!r}: the sender address {row.from_email} cannot be "
                f"changed to {from_email}: create a new account for the new address",
                account=name,
            )
    settings = {"client_id": client_id, "base_url": base_url, "mode": "campaign"}
    with client_for_account(settings, ref, account=name, clock=clock) as client:
        client.token()  # refuses wrong credentials with SendPulse's message
        known = {str(x.get("email", "")).lower() for x in client.senders()}
    if from_email.lower() not in known:
        raise ConfigError(
            f"SendPulse account {name!r}: {from_email} is not a sender address in SendPulse "
            f"(it has: {', '.join(sorted(known)) or 'none'}); add and confirm it there first",
            account=name,
        )
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
        if row is None:
            row = SenderAccount(name=name, kind="sendpulse", from_email=from_email)
            s.add(row)
        row.from_name, row.settings, row.credential_ref = from_name, settings, ref
        s.flush()
        return {"id": row.id, "name": name, "kind": "sendpulse", "from_email": row.from_email}


# --------------------------------------------------------------------------- campaign mode


@dataclass(frozen=True)
class SendPulseResult:
    """What ``send_campaign_via_sendpulse`` did."""

    campaign: str
    book_id: int
    provider_campaign_id: int
    status: int
    status_text: str
    recipients: int
    batches: int
    draft: bool
    #: Seconds spent waiting for the 4-campaigns-per-hour limit.
    waited_s: float
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        """Return what happened in the analyst's words (what ``print(result)`` shows)."""
        what = (
            "a draft, to review and send from your SendPulse account"
            if self.draft
            else "a campaign"
        )
        lines = [
            f"campaign {self.campaign!r} handed to SendPulse as {what}: {self.recipients:,} "
            f"recipients in address book {self.book_id} ({self.batches} "
            f"batch{'' if self.batches == 1 else 'es'}), SendPulse "
            f"campaign {self.provider_campaign_id}, status: {self.status_text or self.status}",
            *self.notes,
        ]
        return "\n".join(lines)


def _refuse_statements(text: str, part: str, template: str) -> None:
    """Refuse Jinja statements and comments: SendPulse would send them literally."""
    if _STATEMENT.search(text):
        raise TemplateError(
            f"template {template!r}, {part}: SendPulse bodies cannot contain Jinja statements "
            "or comments ({% ... %}, {# ... #}); keep only {{name}}, {{patronymic}}, {{surname}}",
            template=template,
            part=part,
        )


def _check_placeholders(text: str, part: str, template: str) -> None:
    from bulkmail_kernel.compose.checks import SENDPULSE_VARIABLES

    for match in _PLACEHOLDER.finditer(text):
        inner = match.group(1).strip()
        if inner not in SENDPULSE_VARIABLES:
            raise TemplateError(
                f"template {template!r}, {part}: {match.group(0)!r}: SendPulse substitutes only "
                "plain {{name}}, {{patronymic}} and {{surname}} (no filters or expressions)",
                template=template,
                part=part,
                variable=inner,
            )


def _body(tmpl: Any, values: dict[str, Any], frame: pd.DataFrame, name: str) -> tuple[str, str]:
    """Check the template for SendPulse and return (subject, html) with SendPulse merge tags."""
    from bulkmail_kernel.compose.checks import check_template
    from bulkmail_kernel.compose.render import render

    problems = check_template(tmpl, frame, values=values, provider="sendpulse")
    if not problems.empty:
        listed = "; ".join(
            f"{p.part} {p.variable or ''}: {p.error}".strip() for p in problems.head(5).itertuples()
        )
        raise TemplateError(
            f"campaign {name!r}: the template cannot go through SendPulse: {listed}"
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            + "; use only {{name}}, {{patronymic}}, {{surname}} or send in SMTP mode",
            campaign=name,
        )
    for part in ("subject", "html"):
        source = getattr(tmpl, part) or ""
        _refuse_statements(source, part, tmpl.name)
        _check_placeholders(source, part, tmpl.name)
    if not tmpl.html:
        raise TemplateError(f"campaign {name!r}: SendPulse campaigns need an HTML body")
    # Rendering with the merge tags as values runs the same CSS inlining as SMTP mode
    # while leaving {{name}} etc. for SendPulse to fill per address-book entry.
    tags = {v: "{{" + v + "}}" for v in ("name", "patronymic", "surname")}
    row = {**tags, "first_name": tags["name"], "last_name": tags["surname"], "address": ""}
    rendered = render(tmpl, row, values=values)
    if rendered.inline_images or rendered.attachments:
        raise TemplateError(
            f"campaign {name!r}: SendPulse campaign bodies cannot carry embedded images or "
            "attachments: link images by https URL, or send in SMTP mode",
            campaign=name,
        )
    return rendered.subject, rendered.html or ""


def send_campaign_via_sendpulse(
    campaign: str | int,
    *,
    draft: bool = False,
    send_date: datetime | None = None,
    wait: bool = True,
    client: SendPulseClient | None = None,
    clock: Clock = SYSTEM_CLOCK,
    batch_size: int = 500,
    book_timeout_s: float = 900.0,
    progress: bool = True,
    db: Database | None = None,
    url: str | None = None,
) -> SendPulseResult:
    """Hand a registered campaign to SendPulse as an address book plus a campaign (or draft).

    Args:
        campaign: name or id of a registered campaign whose sender account is of kind sendpulse.
        draft: create only a draft, to be sent later from SendPulse's cabinet.
        send_date: schedule the SendPulse campaign (aware, not in the past).
        wait: when four campaigns went out in the last hour, wait for the next slot
            (saying so in the log and the result); False raises SendError instead.
        client: a SendPulse client (default: built from the sender account).
        clock: time source for the limits and the polling (tests pass a ManualClock).
        batch_size: addresses per request when filling the address book.
        book_timeout_s: how long to wait for SendPulse to process the address book.
        progress: show a progress bar while the address book is filled.
        db: an open database (default: ``open_database(url)``).
        url: the database URL when ``db`` is not given.

    The queued messages are marked ``sent`` (campaign) or ``removed`` with the draft's id
    (draft), each with an event; the provider ids and status go into ``provider_ref``.

    """
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        sender = sender_of(s, c)
        cid, cname, values = c.id, c.name, dict(c.values or {})
        ref = dict((c.provider_ref or {}).get("sendpulse") or {})
        if sender.kind != "sendpulse":
            raise SendError(
                f"campaign {cname!r}: sender account {sender.name!r} is of kind {sender.kind!r}; "
                "campaign mode needs a sendpulse account (add_sendpulse_account)",
                campaign=cname,
            )
        if ref.get("campaign_id"):
            raise SendError(
                f"campaign {cname!r} was already handed to SendPulse as campaign "
                f"{ref['campaign_id']}; see sendpulse_report()",
                campaign=cname,
            )
        if c.status not in (
            CampaignStatus.REGISTERED.value,
            CampaignStatus.SCHEDULED.value,
            CampaignStatus.STOPPED.value,
        ):
            raise SendError(
                f"campaign {cname!r} is {c.status}: register() it first", campaign=cname
            )
        tmpl = template_of(c, None)
    frame = handover_recipients(database, cid)
    if frame.empty:
        raise SendError(f"campaign {cname!r} has no queued messages to hand over", campaign=cname)
    subject, html = _body(tmpl, values, frame, cname)
    own = client is None
    if client is None:
        client = client_for_account(
            sender.settings, sender.credential_ref, account=sender.name, clock=clock
        )
    notes: list[str] = []
    try:
        client.campaigns.seed(recent_handover_ages(database, sender.id, clock.now()))
        book_id = ref.get("book_id")
        batches = int(ref.get("batches") or 0)
        if not (book_id and ref.get("emails_added") == len(frame)):
            book_id = client.create_address_book(f"bulkmail {cname} #{cid}")
            update_provider_ref(database, cid, "sendpulse", book_id=book_id, emails_added=0)
            contacts = [
                {
                    "email": r.address,
                    "variables": {
                        "name": r.first_name,
                        "patronymic": r.patronymic,
                        "surname": r.last_name,
                    },
                }
                for r in frame.itertuples()
            ]
            batches = client.add_emails(book_id, contacts, batch_size=batch_size, progress=progress)
            update_provider_ref(
                database, cid, "sendpulse", emails_added=len(frame), batches=batches
            )
        else:
            notes.append(f"reused address book {book_id} from an earlier attempt")
        client.wait_for_address_book(book_id, timeout_s=book_timeout_s)
        wait_s = client.campaign_wait_s()
        if wait_s > 0:
            until = clock.now() + timedelta(seconds=wait_s)
            note = (
                f"SendPulse allows {client.campaigns.limit} campaigns per hour: campaign "
                f"{cname!r} waits {wait_s:.0f} s, until "
                f"{until.astimezone(config.local_zone()):%H:%M:%S} ({config.local_timezone()})"
            )
            if not wait:
                raise SendError(
                    note.replace("waits", "would wait")
                    + "; call again then (the address book is kept)",
                    campaign=cname,
                    wait_s=wait_s,
                )
            log.warning(note)
            notes.append(note)
        answer = client.create_campaign(
            sender_name=sender.from_name,
            sender_email=sender.from_email,
            subject=subject,
            html=html,
            list_id=book_id,
            name=cname,
            send_date=send_date,
            draft=draft,
        )
    except Exception as exc:
        record_handover_error(database, cid, getattr(exc, "message", str(exc)))
        raise
    finally:
        if own:
            client.close()
    status = int(answer.get("status", 0))
    now = clock.now()
    update_provider_ref(
        database,
        cid,
        "sendpulse",
        campaign_id=int(answer["id"]),
        status=status,
        status_text=status_text(status),
        count=answer.get("count"),
        draft=draft,
        created_at=now.isoformat(),
        send_date=send_date.isoformat() if send_date else None,
    )
    record_handover(
        database, cid, frame, provider_id=int(answer["id"]), book_id=book_id, draft=draft, now=now
    )
    log.info(
        "campaign %s: SendPulse %s %s (%s)",
        cname,
        "draft" if draft else "campaign",
        answer["id"],
        status_text(status),
    )
    return SendPulseResult(
        cname,
        int(book_id),
        int(answer["id"]),
        status,
        status_text(status),
        len(frame),
        batches,
        draft,
        wait_s,
        tuple(notes),
    )


def sendpulse_report(
    campaign: str | int,
    *,
    refresh: bool = True,
    client: SendPulseClient | None = None,
    clock: Clock = SYSTEM_CLOCK,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the campaign's SendPulse ids and status (asking SendPulse first when ``refresh``)."""
    database = resolve_database(db, url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid, cname = c.id, c.name
        ref = dict((c.provider_ref or {}).get("sendpulse") or {})
        sender = sender_of(s, c)
    if not ref.get("campaign_id"):
        raise SendError(
            f"campaign {cname!r} was not handed to SendPulse: send_campaign_via_sendpulse() first",
            campaign=cname,
        )
    if refresh:
        own = client is None
        if client is None:
            client = client_for_account(
                sender.settings, sender.credential_ref, account=sender.name, clock=clock
            )
        try:
            info = client.campaign(int(ref["campaign_id"]))
        finally:
            if own:
                client.close()
        ref = update_provider_ref(
            database,
            cid,
            "sendpulse",
            status=info.get("status"),
            status_text=status_text(info.get("status")),
            checked_at=clock.now().isoformat(),
        )
    return ref_frame("campaign", [[cname] + [ref.get(k) for k in REF_FIELDS]])

"""Preview a campaign's message for one recipient: the stored one once registered.

``campaign_preview`` goes through the campaign's one path to bytes
(:class:`~bulkmail_kernel.campaigns.rendering.CampaignRenderer`), with a placeholder
unsubscribe token and Message-ID, so the preview is byte for byte what registration
stores apart from those two. A recipient already registered shows the stored message
itself, read back from its bytes.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.campaigns.campaigns import recipients_of
from bulkmail_kernel.campaigns.preflight import check_campaign_template
from bulkmail_kernel.campaigns.rendering import campaign_renderer
from bulkmail_kernel.campaigns.tracking import tracking_for
from bulkmail_kernel.compose.checks import check_template
from bulkmail_kernel.compose.render import Mailbox, RenderedMessage
from bulkmail_kernel.compose.templates import Attachment, InlineImage
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.db import Database, Message, MessageBody, resolve_database
from bulkmail_kernel.db.roles import hidden_contact_columns
from bulkmail_kernel.exceptions import SendError
from bulkmail_kernel.outbox.lookup import campaign_row, sender_of
from bulkmail_kernel.records import CampaignRef

#: Stand-ins for the per-recipient values registration draws afresh.
PREVIEW_UNSUBSCRIBE_ID = "preview-not-a-token"
#: Shaped like a real one (32 hex digits) so a tracked preview's links are rewritten too.
PREVIEW_MESSAGE_ID = "<" + "0" * 32 + "@preview.bulkmail.invalid>"


@dataclass(frozen=True)
class CampaignPreview:
    """One recipient's message as the campaign would send it (or has stored it)."""

    rendered: RenderedMessage
    subject: str
    #: MIME bytes without Date, or the SMS text as UTF-8.
    data: bytes
    #: True when this is the message stored at registration.
    registered: bool


def campaign_recipients(
    campaign: CampaignRef, recipients: pd.DataFrame | None = None, *, db: Database | None = None
) -> pd.DataFrame:
    """Return whom to preview: ``recipients``, else the registered ones, else the segment."""
    if recipients is not None:
        return recipients
    database = resolve_database(db, None)
    with database.session() as s:
        c = campaign_row(s, campaign)
        registered = set(
            s.scalars(
                sa.select(Message.contact_point_id).where(
                    Message.campaign_id == c.id, Message.contact_point_id.is_not(None)
                )
            )
        )
    if registered:
        frame = contacts_frame(database)
        return frame[frame["contact_point_id"].isin(registered)]
    return recipients_of(c, database)


def campaign_preview(
    campaign: CampaignRef,
    recipients: pd.DataFrame | None = None,
    index: int = 0,
    *,
    template: Any = None,
    db: Database | None = None,
    url: str | None = None,
) -> CampaignPreview:
    """Return the campaign's message for the recipient at position ``index``.

    ``recipients`` defaults to the registered recipients, else the campaign's segment.
    A registered recipient's preview is the stored message (unless the database role
    may not read it, docs/permissions.md); any other is rendered
    through the campaign (its template with its folder, images and attachments, its
    values, its sender) exactly as ``register`` would, with placeholder tokens.
    """
    database = resolve_database(db, url)
    frame = campaign_recipients(campaign, recipients, db=database)
    if frame.empty:
        raise SendError(f"preview {campaign!r}: no recipient to preview", campaign=str(campaign))
    row = frame.iloc[index % len(frame)]
    # A role that may not read the stored bodies (the analyst) sees the message rendered.
    bodies = "message_bodies.body" not in hidden_contact_columns(database)
    with database.session() as s:
        c = campaign_row(s, campaign)
        renderer = campaign_renderer(c, sender_of(s, c), template)
        stored = None
        point = row.get("contact_point_id")
        if bodies and template is None and point is not None and not pd.isna(point):
            stored = s.execute(
                sa.select(MessageBody.subject, MessageBody.body)
                .join(Message, Message.id == MessageBody.message_id)
                .where(Message.campaign_id == c.id, Message.contact_point_id == int(point))
            ).first()
    if stored is not None:
        subject, data = stored[0], bytes(stored[1])
        if renderer.is_sms:
            text = data.decode("utf-8")
            made = RenderedMessage(
                subject="", html=None, text=None, to=Mailbox("", ""), sender=Mailbox("", ""),
                sms=text,
            )  # fmt: skip
            return CampaignPreview(made, subject, data, registered=True)
        return CampaignPreview(read_message(data), subject, data, registered=True)
    contact = row.get("contact_id")
    if template is None and contact is not None and not pd.isna(contact):
        # The links as registration would write them for this recipient (tracked or not).
        renderer = tracking_for(renderer, database, {int(contact)})
    made_now = renderer.message(row, token=PREVIEW_UNSUBSCRIBE_ID, message_id=PREVIEW_MESSAGE_ID)
    return CampaignPreview(made_now.rendered, made_now.subject, made_now.data, registered=False)


def check_campaign(
    campaign: CampaignRef,
    recipients: pd.DataFrame | None = None,
    *,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Render every recipient as the campaign sends it; return who fails and why (empty: fine).

    The campaign checks of ``register`` come first (a value nobody has, an image not
    found, an empty subject: a TemplateError naming it); then each recipient goes
    through the campaign's own path to bytes, one row per recipient and problem.
    ``recipients`` defaults to the registered recipients, else the campaign's segment.
    """
    database = resolve_database(db, url)
    frame = campaign_recipients(campaign, recipients, db=database)
    with database.session() as s:
        c = campaign_row(s, campaign)
        renderer = campaign_renderer(c, sender_of(s, c))
    values = dict(renderer.values)
    if "contact_id" in frame.columns:
        # Checked with the tracked links the consenting recipients get (longer HTML).
        ids = {int(i) for i in frame["contact_id"].dropna()}
        renderer = tracking_for(renderer, database, ids)
    check_campaign_template(c.name, renderer.template, values, [str(k) for k in frame.columns])

    def one(record: Any) -> object:
        return renderer.message(record, token=PREVIEW_UNSUBSCRIBE_ID, message_id=PREVIEW_MESSAGE_ID)

    return check_template(renderer.template, frame, values=values, render_with=one)


def _mailbox(value: str | None) -> Mailbox:
    name, address = parseaddr(str(value or ""))
    return Mailbox(name, address)


def read_message(data: bytes) -> RenderedMessage:
    """Return stored MIME bytes as a ``RenderedMessage``: bodies, images, attachments, headers."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html = text = None
    images: list[InlineImage] = []
    attachments: list[Attachment] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        cid = str(part.get("Content-ID") or "").strip("<>")
        payload = part.get_payload(decode=True) or b""
        assert isinstance(payload, bytes)
        if part.get_content_disposition() == "attachment":
            attachments.append(Attachment(part.get_filename() or "", ctype, payload))
        elif cid:
            images.append(InlineImage(cid, part.get_filename() or "", ctype, payload))
        elif ctype == "text/html" and html is None:
            html = str(part.get_content())
        elif ctype == "text/plain" and text is None:
            text = str(part.get_content())
    unsubscribe = None
    for target in str(msg.get("List-Unsubscribe") or "").split(","):
        target = target.strip().strip("<>")
        if target.startswith("http"):
            unsubscribe = target
    return RenderedMessage(
        subject=str(msg.get("Subject") or ""),
        html=html,
        text=text,
        to=_mailbox(msg.get("To")),
        sender=_mailbox(msg.get("From")),
        attachments=tuple(attachments),
        inline_images=tuple(images),
        headers=tuple((k, str(v)) for k, v in msg.items() if k.lower().startswith("list-")),
        unsubscribe_url=unsubscribe,
    )

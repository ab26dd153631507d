"""One path from a campaign to bytes: registration, test sends, checks and the preview share it.

A :class:`CampaignRenderer` holds what a campaign renders with — its template (with the
folder its images and attachments come from), its values, its sender — and
:meth:`CampaignRenderer.message` turns one recipient row into the stored bytes. Because
every caller goes through it, what the preview shows is what registration stores; only
the Message-ID and the unsubscribe token differ from one rendering to the next.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import pandas as pd

from bulkmail_kernel.compose.headers import (
    has_unsubscribe_pattern,
    list_id,
    unsubscribe_mailto,
    unsubscribe_url,
)
from bulkmail_kernel.compose.links import OPEN, add_pixel, click_token, message_key, rewrite_links
from bulkmail_kernel.compose.mime import build_mime
from bulkmail_kernel.compose.render import Mailbox, RenderedMessage, render
from bulkmail_kernel.compose.sms import fit_to_gsm7
from bulkmail_kernel.compose.templates import Template, load_template, template_from_html
from bulkmail_kernel.db import Campaign
from bulkmail_kernel.exceptions import SendError
from bulkmail_kernel.records import SenderInfo, campaign_channel

#: The template fields a campaign stores, enough to build the very same template again.
_SOURCE_FIELDS = ("subject", "html", "text", "sms", "language", "channel", "send_as_is")


def template_source(template: Template) -> dict[str, Any]:
    """Return what a campaign stores of ``template``: its texts, folder, attachments, rules."""
    source: dict[str, Any] = {k: getattr(template, k, None) for k in _SOURCE_FIELDS}
    # The folder is kept for every template that has one: relative image paths and
    # attachments are read from it. Keeping it only for templates without HTML sent
    # notebook 04's invitations with <img src="logo.png"> and no image part.
    folder = getattr(template, "folder", None)
    source["folder"] = str(folder) if folder is not None else None
    source["attachments"] = [str(p) for p in getattr(template, "attachments", ())]
    source["required"] = list(getattr(template, "required", ()))
    return source


def template_of(c: Campaign, template: Any) -> Template:
    """Return the template to render ``c`` with: ``template`` if given, else the stored one."""
    if template is not None:
        return load_template(template) if isinstance(template, str) else template
    source = c.template_source or {}
    name = c.template_name or "pasted"
    if "channel" in source and (source.get("html") or source.get("text") or source.get("sms")):
        return Template(
            name=name,
            subject=source.get("subject") or "",
            html=source.get("html"),
            text=source.get("text"),
            sms=source.get("sms"),
            language=source.get("language"),
            required=tuple(source.get("required") or ()),
            channel=source["channel"],
            folder=Path(source["folder"]) if source.get("folder") else None,
            attachments=tuple(Path(p) for p in source.get("attachments") or ()),
            send_as_is=bool(source.get("send_as_is")),
        )
    # Campaigns stored before the whole source was kept.
    if source.get("folder"):
        return load_template(source["folder"])
    if source.get("html") or source.get("text"):
        return template_from_html(
            source.get("html") or "",
            source.get("subject") or "",
            source.get("text"),
            name=name,
            language=source.get("language"),
        )
    if source.get("sms"):
        return Template(
            name=name, subject="", sms=source["sms"], language=source.get("language"), channel="sms"
        )
    if c.template_name:
        return load_template(c.template_name)
    raise SendError(
        f"campaign {c.name!r} has no template: pass template=... to create_campaign() "
        "or register()",
        campaign=c.name,
    )


@dataclass(frozen=True)
class CampaignMessage:
    """One recipient's message as the campaign sends it: the rendering, subject and bytes."""

    rendered: RenderedMessage
    subject: str
    #: MIME bytes without Date (added at sending), or the SMS text as UTF-8.
    data: bytes
    #: The original links of a tracked message, by index (empty: not tracked).
    links: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tracking:
    """A campaign's click/open tracking, for the contacts who consented to it."""

    secret: bytes
    #: The click URL pattern with ``{token}`` (the web app's ``/c/{token}``).
    click_url: str
    #: The open pixel's URL pattern (``/o/{token}``), used when ``opens``.
    open_url: str
    opens: bool
    #: Contact ids with a current "tracking" consent: only their links are rewritten.
    contacts: frozenset[int]

    def apply(
        self, rendered: RenderedMessage, contact_id: Any, message_id: str, unsubscribe: str | None
    ) -> tuple[RenderedMessage, tuple[str, ...]]:
        """Return ``rendered`` with tracked links (and pixel) if its contact consented."""
        if not rendered.html or pd.isna(contact_id) or int(contact_id) not in self.contacts:
            return rendered, ()
        if not _TRACKABLE.fullmatch(message_key(message_id)):
            return rendered, ()  # a Message-ID the click endpoint could not look up

        def url_of(link: int | str) -> str:
            return self.click_url.replace("{token}", click_token(self.secret, message_id, link))

        def keep(url: str) -> bool:
            # The unsubscribe link is never rewritten: it must work without our redirect.
            return bool(unsubscribe) and (url == unsubscribe or url.startswith(unsubscribe or ""))

        new_html, links = rewrite_links(rendered.html, url_of, keep=keep)
        if self.opens:
            token = click_token(self.secret, message_id, OPEN)
            new_html = add_pixel(new_html, self.open_url.replace("{token}", token))
        return dc_replace(rendered, html=new_html), links


_TRACKABLE = re.compile(r"[0-9a-f]{32}~[A-Za-z0-9.-]{1,253}")


@dataclass(frozen=True)
class CampaignRenderer:
    """What a campaign renders with; ``message`` is the one way a recipient becomes bytes."""

    campaign: str
    campaign_id: int
    template: Template
    values: Mapping[str, Any]
    sender: SenderInfo
    is_sms: bool
    #: Click/open tracking (``campaigns.tracking``); None: links stay as written.
    tracking: Tracking | None = None

    @property
    def link_wanted(self) -> bool:
        """Return whether each message carries an unsubscribe link (and so a token)."""
        if self.is_sms:
            # An SMS carries one only if its text asks for it (an opt-out text otherwise).
            return "unsubscribe_url" in self.template.variables()
        # E-mail needs List-Unsubscribe (RFC 8058); SendPulse adds its own link.
        return self.sender.kind != "sendpulse" or has_unsubscribe_pattern(self.sender)

    @property
    def fit(self) -> bool:
        """Return whether SMS texts are rewritten into the GSM-7 alphabet."""
        return bool(self.values.get("fit_to_gsm7", False))

    def message(
        self,
        row: Mapping[str, Any] | pd.Series,
        *,
        token: str | None,
        message_id: str,
        fit: bool | None = None,
        to: str | None = None,
        subject_prefix: str = "",
    ) -> CampaignMessage:
        """Render ``row`` into the campaign's bytes; ``token`` fills the unsubscribe link.

        ``to`` and ``subject_prefix`` are for test sends: the same message, addressed to
        a test address and marked.
        """
        link = unsubscribe_url(self.sender, token) if token is not None else None
        rendered = render(
            self.template,
            row,
            values=self.values,
            unsubscribe_url=link,
            sender=Mailbox(self.sender.from_name, self.sender.from_email),
            unsubscribe_mailto=(
                unsubscribe_mailto(self.sender, token)
                if token is not None and not self.is_sms
                else None
            ),
        )
        if self.is_sms:
            text = (rendered.sms or "").strip()
            text = fit_to_gsm7(text) if (self.fit if fit is None else fit) else text
            text = subject_prefix + text
            return CampaignMessage(rendered, text, text.encode("utf-8"))
        # RFC 2919: one List-Id per campaign, so receivers (and Gmail's filters) group its mail.
        header = ("List-Id", list_id(self.campaign, self.campaign_id, self.sender))
        rendered = dc_replace(
            rendered,
            subject=subject_prefix + rendered.subject,
            to=rendered.to if to is None else Mailbox(rendered.to.name, to),
            headers=(*rendered.headers, header),
        )
        links: tuple[str, ...] = ()
        if self.tracking is not None:
            contact_id = row.get("contact_id") if hasattr(row, "get") else None
            rendered, links = self.tracking.apply(rendered, contact_id, message_id, link)
        return CampaignMessage(
            rendered, rendered.subject, build_mime(rendered, message_id=message_id), links
        )


def campaign_renderer(c: Campaign, sender: SenderInfo, template: Any = None) -> CampaignRenderer:
    """Return the renderer of campaign ``c`` (``template`` overrides the stored one)."""
    return CampaignRenderer(
        campaign=c.name,
        campaign_id=c.id,
        template=template_of(c, template),
        values=dict(c.values or {}),
        sender=sender,
        is_sms=campaign_channel(c.channel) == "sms",
    )

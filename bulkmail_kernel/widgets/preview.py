"""Preview a template for each recipient in a notebook: thin ipywidgets over tested functions."""

from __future__ import annotations

import base64
import html as htmlmod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import ipywidgets as widgets
import pandas as pd

from bulkmail_kernel.campaigns.monitor import registration_skips
from bulkmail_kernel.campaigns.preview import campaign_preview, campaign_recipients
from bulkmail_kernel.campaigns.samples import send_samples
from bulkmail_kernel.compose.checks import PREVIEW_UNSUBSCRIBE_URL, preview_warnings
from bulkmail_kernel.compose.mime import build_mime
from bulkmail_kernel.compose.render import Mailbox, RenderedMessage, render
from bulkmail_kernel.compose.sms import sms_segments
from bulkmail_kernel.compose.templates import Template
from bulkmail_kernel.db import Database, resolve_database
from bulkmail_kernel.exceptions import BulkmailError, TemplateError
from bulkmail_kernel.records import CampaignRef
from bulkmail_kernel.widgets.monitor import skips_html

DESKTOP_WIDTH = 700
MOBILE_WIDTH = 375
#: The frame's height before it has measured its content, and its bounds after.
FRAME_HEIGHT = 640
FRAME_MIN_HEIGHT = 200
FRAME_MAX_HEIGHT = 3000
# Runs in the notebook page (an event handler on the iframe, not a script inside the
# e-mail): ipywidgets' HTML inserts markup without running <script>, but handlers run.
# allow-same-origin lets it read the document's height; the e-mail's own scripts stay off.
# It shrinks the frame first because a document's scrollHeight is never below its frame's.
_FIT_HEIGHT = (
    f"try{{var d=this.contentDocument.documentElement;this.style.height='{FRAME_MIN_HEIGHT}px';"
    f"this.style.height=Math.min(Math.max(d.scrollHeight,{FRAME_MIN_HEIGHT}),"
    f"{FRAME_MAX_HEIGHT})+'px'}}catch(e){{this.style.height='{FRAME_HEIGHT}px'}}"
)
_PREVIEW_SENDER = Mailbox("Preview", "preview@example.invalid")
_PREVIEW_MESSAGE_ID = "<preview@example.invalid>"


def message_size_kb(rendered: RenderedMessage) -> float | None:
    """Return the size of the MIME message in KB, or None for an SMS-only message."""
    if rendered.html is None and rendered.text is None:
        return None
    if not rendered.to.address:
        return None
    sender = rendered.sender if rendered.sender.address else _PREVIEW_SENDER
    data = build_mime(replace(rendered, sender=sender), message_id=_PREVIEW_MESSAGE_ID)
    return round(len(data) / 1024, 1)


def preview_html(rendered: RenderedMessage, width: int = DESKTOP_WIDTH) -> str:
    """Return the message's HTML in an ``<iframe srcdoc>`` of the given width that fits its height.

    The frame grows to its content (up to ``FRAME_MAX_HEIGHT``) once loaded, so the
    unsubscribe footer shows without scrolling inside it; where the page runs no event
    handlers (a static HTML export) it stays ``FRAME_HEIGHT`` high and scrolls.
    """
    if rendered.html is not None:
        doc = rendered.html
    elif rendered.text is not None:
        doc = f"<pre style='white-space: pre-wrap'>{htmlmod.escape(rendered.text)}</pre>"
    else:
        bubble = "font-family: sans-serif; background: #e9f5e9; padding: 12px; border-radius: 12px"
        sms = htmlmod.escape(rendered.sms or "")
        doc = f"<div style='{bubble}; white-space: pre-wrap'>{sms}</div>"
    # cid: images cannot load in a browser; inline them as data: URLs for the preview only.
    for image in rendered.inline_images:
        data_url = f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"
        doc = doc.replace(f"cid:{image.cid}", data_url)
    return (
        f'<iframe srcdoc="{htmlmod.escape(doc, quote=True)}" '
        f'style="width: {int(width)}px; height: {FRAME_HEIGHT}px; border: 1px solid #ccc; '
        'background: #fff;" sandbox="allow-same-origin" '
        f'onload="{htmlmod.escape(_FIT_HEIGHT, quote=True)}"></iframe>'
    )


def preview_summary(rendered: RenderedMessage) -> str:
    """Return From/To/Subject, size, attachments and SMS length as a small HTML table."""
    rows = [
        ("From", str(rendered.sender) or "(no sender given)"),
        ("To", str(rendered.to) or "(no address)"),
        ("Subject", rendered.subject),
    ]
    try:
        size = message_size_kb(rendered)
    except BulkmailError as exc:
        size = None
        rows.append(("Size", f"cannot build the message: {exc.message}"))
    if size is not None:
        rows.append(("Size", f"{size} KB"))
    if rendered.attachments:
        rows.append(("Attachments", ", ".join(a.filename for a in rendered.attachments)))
    if rendered.sms is not None:
        info = sms_segments(rendered.sms)
        rows.append(("SMS", f"{info.segments} segment(s), {info.encoding}, {info.units} units"))
    cells = "".join(
        f"<tr><th style='text-align: left; padding-right: 12px'>{htmlmod.escape(k)}</th>"
        f"<td>{htmlmod.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table>{cells}</table>"


def outcomes_html(outcomes: pd.DataFrame) -> str:
    """Return a test send's outcomes as a table: each address, sent or refused, the answer."""
    subjects = sorted(set(outcomes["subject"]))
    head = f"<p>Test send of “{htmlmod.escape(subjects[0])}”:</p>" if len(subjects) == 1 else ""
    rows = []
    for to, status, detail in zip(
        outcomes["to"], outcomes["status"], outcomes["detail"], strict=True
    ):
        sent = status == "sent"
        label = "sent" if sent else f"refused ({status})"
        colour = "#2b8a3e" if sent else "#b00"
        rows.append(
            f"<tr><td style='padding-right: 12px'>{htmlmod.escape(str(to))}</td>"
            f"<td style='padding-right: 12px; color: {colour}'><b>{htmlmod.escape(label)}</b></td>"
            f"<td>{htmlmod.escape(str(detail or ''))}</td></tr>"
        )
    return f"<div class='bm-test-send-result'>{head}<table>{''.join(rows)}</table></div>"


def preview_test_send(
    campaign: CampaignRef,
    frame: pd.DataFrame,
    index: int,
    *,
    to: Sequence[str] | None = None,
    template: Template | None = None,
    db: Database | None = None,
) -> str:
    """Send the recipient's message at ``index`` to the test addresses; return what happened.

    The message is made by ``test_send`` (the campaign's one path to bytes, subject
    marked [TEST]) and goes to ``to`` or else the sender account's
    ``settings['test_addresses']``. The answer is HTML: one row per address, or one
    line saying why nothing was sent.
    """
    if frame.empty:
        return _error_line("Not sent: there is no recipient to send a test of.")
    row = frame.iloc[[index % len(frame)]]
    try:
        outcomes = send_samples(campaign, to, recipients=row, template=template, db=db)
    except BulkmailError as exc:
        return _error_line(f"Not sent: {exc.message}")
    return outcomes_html(outcomes)


def _error_line(text: str) -> str:
    """Return ``text`` as the one red line a widget shows instead of a traceback."""
    return f"<p class='bm-test-send-error' style='color: #b00'>{htmlmod.escape(text)}</p>"


def recipient_labels(frame: pd.DataFrame) -> list[str]:
    """Return one unique, searchable label per recipient row: "1. Name Surname <address>"."""
    labels = []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        name = " ".join(
            str(record[k]) for k in ("first_name", "last_name") if isinstance(record.get(k), str)
        )
        address = record.get("address")
        address = f" <{address}>" if isinstance(address, str) else ""
        labels.append(f"{number}. {name}{address}".strip())
    return labels


def render_preview(
    template: Template,
    frame: pd.DataFrame,
    index: int,
    *,
    values: Mapping[str, Any] | None = None,
    sender: str | Mailbox | None = None,
) -> RenderedMessage:
    """Render the template for the recipient at position ``index``.

    Without ``values`` the template's sample values fill in; with them, only they do,
    so a misspelt value shows up here as the error registration would give, instead of
    the sample quietly standing in for it.
    """
    row = frame.iloc[index]
    return render(
        template,
        row,
        values=template.sample if values is None else values,
        unsubscribe_url=PREVIEW_UNSUBSCRIBE_URL,
        sender=sender,
    )


class PreviewPanel(widgets.VBox):
    """The preview panel; every control calls one of the public functions above."""

    def __init__(
        self,
        template: Template | None,
        frame: pd.DataFrame,
        *,
        values: Mapping[str, Any] | None = None,
        sender: str | Mailbox | None = None,
        campaign: CampaignRef | None = None,
        db: Database | None = None,
    ) -> None:
        self.template = template
        self.frame = frame
        self.values = values
        self.sender = sender
        self.campaign = campaign
        self.db = db
        self.index = 0
        self.labels = recipient_labels(frame)
        self.picker = widgets.Combobox(
            options=self.labels,
            value=self.labels[0] if self.labels else "",
            placeholder="Type a name or address",
            ensure_option=True,
            description="Recipient",
        )
        self.prev_button = widgets.Button(description="◀ Previous")
        self.next_button = widgets.Button(description="Next ▶")
        self.width_toggle = widgets.ToggleButtons(
            options=[("Desktop", DESKTOP_WIDTH), ("Mobile", MOBILE_WIDTH)], value=DESKTOP_WIDTH
        )
        self.summary = widgets.HTML()
        self.body = widgets.HTML()
        self.text_view = widgets.Textarea(
            disabled=True, layout=widgets.Layout(width="100%", height="160px")
        )
        self.warnings = widgets.HTML()
        self.test_button = widgets.Button(
            description="Send a test",
            icon="paper-plane",
            tooltip="Send this recipient's message, marked [TEST], to the account's test addresses",
            layout=widgets.Layout(display=None if campaign is not None else "none"),
        )
        self.test_result = widgets.HTML()
        # Who registration skipped and why, read from the stored skips ("" when none).
        self.skips = widgets.HTML(
            skips_html(registration_skips(campaign, db=db)) if campaign is not None else ""
        )
        self.test_button.on_click(lambda _: self.send_test())
        self.prev_button.on_click(lambda _: self.show(self.index - 1))
        self.next_button.on_click(lambda _: self.show(self.index + 1))
        self.picker.observe(self._on_pick, names="value")
        self.width_toggle.observe(lambda _: self.show(self.index), names="value")
        super().__init__(
            [
                widgets.HBox([self.picker, self.prev_button, self.next_button, self.width_toggle]),
                self.summary,
                self.skips,
                self.warnings,
                widgets.HBox([self.test_button, self.test_result]),
                self.body,
                widgets.Label("Text alternative"),
                self.text_view,
            ]
        )
        # Stable hooks for browser tests and custom CSS.
        self.add_class("bm-preview")
        self.body.add_class("bm-preview-body")
        self.summary.add_class("bm-preview-summary")
        self.test_button.add_class("bm-preview-test-send")
        self.show(0)

    def send_test(self) -> None:
        """Send the shown recipient's message to the test addresses and show the outcome."""
        if self.campaign is None:
            self.test_result.value = _error_line(
                "A test send needs a campaign (its sender account): use preview(campaign=...)."
            )
            return
        self.test_button.disabled = True
        self.test_result.value = "Sending…"
        try:
            self.test_result.value = preview_test_send(
                self.campaign, self.frame, self.index, template=self.template, db=self.db
            )
        finally:
            self.test_button.disabled = False

    def _on_pick(self, change: dict[str, Any]) -> None:
        if change["new"] in self.labels:
            self.show(self.labels.index(change["new"]))

    def show(self, index: int) -> None:
        """Show the recipient at ``index`` (wrapping around at both ends)."""
        if not self.labels:
            self.warnings.value = "<b>The recipient frame is empty.</b>"
            return
        self.index = index % len(self.labels)
        self.test_result.value = ""  # an earlier outcome belongs to another recipient
        if self.picker.value != self.labels[self.index]:
            self.picker.value = self.labels[self.index]
        note = ""
        try:
            if self.campaign is not None:
                # The campaign's own path to bytes: what registration stores (or stored).
                made = campaign_preview(
                    self.campaign, self.frame, self.index, template=self.template, db=self.db
                )
                rendered = made.rendered
                note = (
                    "<p class='bm-preview-stored'>The stored message: this recipient is "
                    "registered.</p>"
                    if made.registered
                    else ""
                )
            else:
                assert self.template is not None
                rendered = render_preview(
                    self.template, self.frame, self.index, values=self.values, sender=self.sender
                )
        except BulkmailError as exc:
            self.summary.value = ""
            self.body.value = ""
            self.text_view.value = ""
            self.warnings.value = f"<b style='color: #b00'>{htmlmod.escape(exc.message)}</b>"
            return
        self.summary.value = note + preview_summary(rendered)
        self.body.value = preview_html(rendered, self.width_toggle.value)
        self.text_view.value = rendered.text or rendered.sms or ""
        found = preview_warnings(rendered)
        self.warnings.value = (
            "<ul style='color: #a15c00'>"
            + "".join(f"<li>{htmlmod.escape(w)}</li>" for w in found)
            + "</ul>"
            if found
            else "<span style='color: #2b8a3e'>No warnings.</span>"
        )


def preview(
    template: Template | None = None,
    frame: pd.DataFrame | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    sender: str | Mailbox | None = None,
    campaign: CampaignRef | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> PreviewPanel:
    """Return a panel to browse the template rendered for each recipient of the frame.

    With ``campaign=`` the panel shows the campaign's messages exactly as registration
    stores them (its template with its images and attachments, its values, its sender):
    a registered recipient's stored message, anyone else's rendered the same way.
    ``frame`` then defaults to the registered recipients, else the campaign's segment.
    """
    if campaign is not None:
        database = resolve_database(db, url)
        frame = campaign_recipients(campaign, frame, db=database)
        return PreviewPanel(template, frame, campaign=campaign, db=database)
    if template is None or frame is None:
        raise TemplateError("preview: give a template and a recipients frame, or campaign=<name>")
    return PreviewPanel(template, frame, values=values, sender=sender)

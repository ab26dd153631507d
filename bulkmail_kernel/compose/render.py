"""Rendering: one template and one recipient row in, a ``RenderedMessage`` out, no I/O.

``render`` fills a compiled :class:`~bulkmail_kernel.compose.templates.Template` with
the recipient's values (campaign values as defaults, see ``build_context``), cleans
every header value so no line break can be smuggled into the headers
(``clean_header_value``), and adds the List-Unsubscribe headers. The result is a
frozen ``RenderedMessage`` addressed ``Mailbox`` to ``Mailbox``, which
:mod:`~bulkmail_kernel.compose.mime` turns into bytes and the SMS providers send as
text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from functools import lru_cache
from typing import Any

import pandas as pd

from bulkmail_kernel.compose import limits
from bulkmail_kernel.compose.limits import RenderBudget, RenderLimitExceeded
from bulkmail_kernel.compose.sandbox import _error_line, _plain, _template_error, row_to_context
from bulkmail_kernel.compose.templates import Attachment, InlineImage, Template, _html_to_text
from bulkmail_kernel.config import DEFAULT_LANGUAGE, render_max_bytes, render_timeout_s
from bulkmail_kernel.exceptions import BulkmailError, TemplateError

_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?.*?\?=", re.DOTALL)
#: Every C0 and C1 control character, DEL, and the Unicode line and paragraph separators:
#: besides CR and LF, Python's email package takes VT, FF, \x1c-\x1e, \x85, \u2028 and
#: \u2029 for line breaks (str.splitlines) when it re-folds a header, so a first name
#: holding "\vBcc: x@evil.sk" from a DataFrame would come out as a real Bcc header.
HEADER_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_LINE_BREAKS = re.compile(r"[\r\n\x00]+")
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


@dataclass(frozen=True)
class Mailbox:
    """A display name and an e-mail address (or a phone number for SMS)."""

    name: str
    address: str

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


@dataclass(frozen=True)
class RenderedMessage:
    """One recipient's message, ready to be turned into MIME bytes or an SMS."""

    subject: str
    html: str | None
    text: str | None
    to: Mailbox
    sender: Mailbox
    attachments: tuple[Attachment, ...] = ()
    inline_images: tuple[InlineImage, ...] = ()
    #: Extra headers in order, e.g. List-Unsubscribe; names are fixed by us, values cleaned.
    headers: tuple[tuple[str, str], ...] = ()
    sms: str | None = None
    template_name: str = ""
    #: Who this is for, in words, for error messages ("contact point 12 <a@b.sk>").
    recipient: str = ""
    unsubscribe_url: str | None = None


# --------------------------------------------------------------------------- rendering


def clean_header_value(
    value: str, *, field_name: str, recipient: str = "", template: str = ""
) -> str:
    r"""Return a header value with every control character made a space; refuse encoded words.

    Runs of control characters (CR, LF, NUL, tab, vertical tab, form feed, ESC, DEL,
    \x1c-\x1f, \x80-\x9f, \u2028, \u2029) become one space and the ends are trimmed.
    """
    cleaned = HEADER_CONTROLS.sub(" ", value).strip()
    if _ENCODED_WORD.search(cleaned):
        # Python 3.11's header folder decodes such words and can emit a real line break.
        who = f" for recipient {recipient}" if recipient else ""
        raise TemplateError(
            f"{field_name}{who} contains RFC 2047 encoded-word syntax {cleaned!r}: refused, "
            "because it could smuggle a line break into the headers; fix the value",
            template=template or None,
            recipient=recipient or None,
            field=field_name,
        )
    return cleaned


def _recipient_label(ctx: Mapping[str, Any]) -> str:
    bits = []
    if ctx.get("contact_point_id") is not None:
        bits.append(f"contact point {ctx['contact_point_id']}")
    elif ctx.get("contact_id") is not None:
        bits.append(f"contact {ctx['contact_id']}")
    if ctx.get("address"):
        bits.append(f"<{ctx['address']}>")
    return " ".join(bits) or "(no address)"


def _parse_sender(sender: str | Mailbox | None) -> Mailbox:
    if sender is None:
        return Mailbox("", "")
    if isinstance(sender, Mailbox):
        return sender
    return _parse_sender_text(sender)


@lru_cache(maxsize=64)
def _parse_sender_text(sender: str) -> Mailbox:
    name, address = parseaddr(sender)
    if not address:
        raise TemplateError(f"sender {sender!r} is not an address like 'Firm <info@firm.sk>'")
    return Mailbox(name, address)


def build_context(
    template: Template,
    row: Mapping[str, Any] | pd.Series,
    values: Mapping[str, Any] | None = None,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    """Return the Jinja context: campaign values, overridden by the recipient's non-empty cells."""
    recipient = row_to_context(row)
    # Campaign values are defaults; a recipient's own non-empty cell is more specific.
    ctx = {k: _plain(v) for k, v in (values or {}).items()}
    ctx.update({k: v for k, v in recipient.items() if v is not None or k not in ctx})
    # SendPulse's own variable names, so one template renders both locally and there.
    ctx.setdefault("name", recipient.get("first_name"))
    ctx.setdefault("surname", recipient.get("last_name"))
    ctx.setdefault("patronymic", None)
    ctx["recipient"] = recipient
    ctx["unsubscribe_url"] = unsubscribe_url
    ctx["template_language"] = template.language or recipient.get("language") or DEFAULT_LANGUAGE
    return ctx


def _render_part(
    template: Template, part: str, ctx: Mapping[str, Any], recipient: str, budget: RenderBudget
) -> str | None:
    compiled = template._compiled.parts.get(part)
    if compiled is None:
        return None
    try:
        # Jinja joins the output in C; it cannot grow unseen meanwhile, because every
        # printed value and every loop step's text is counted as it is made (limits.py).
        result = compiled.compiled.render(ctx)
        budget.stream(result)
        return result
    except RenderLimitExceeded as exc:
        line = _error_line(exc, f"<{template.name}:{part}>")
        raise _limit_error(exc, template.name, part, recipient, budget, line) from None
    except Exception as exc:
        line = _error_line(exc, f"<{template.name}:{part}>")
        if compiled.original is not None:
            # Inlining reflows lines: render the source as written to report its line number.
            try:
                compiled.original.render(ctx)
            except Exception as again:
                line = _error_line(again, f"<{template.name}:{part}>")
        raise _template_error(exc, template.name, part, recipient=recipient, line=line) from exc


_LIMIT_SETTINGS = ("BULKMAIL_RENDER_TIMEOUT_S", "BULKMAIL_RENDER_MAX_BYTES")


@lru_cache(maxsize=8)
def _limits(timeout: str | None, max_bytes: str | None) -> tuple[float, int]:
    # Parsed once per distinct setting, not once per recipient; the arguments are the
    # raw values only so that a changed environment is read again.
    return render_timeout_s(), render_max_bytes()


def _limit_error(
    exc: RenderLimitExceeded,
    template: str,
    part: str,
    recipient: str,
    budget: RenderBudget,
    line: int | None,
) -> TemplateError:
    if exc.limit == "time":
        what = (
            f"stopped after {budget.timeout_s:g} s (limit BULKMAIL_RENDER_TIMEOUT_S): {exc.detail}"
        )
        todo = "shorten the loops, or raise BULKMAIL_RENDER_TIMEOUT_S if the message is right"
    elif exc.limit == "depth":
        what = f"stopped: {exc.detail}"
        todo = "give the recursion an end"
    else:
        what = (
            f"stopped at the size limit of {budget.max_bytes:,} bytes "
            f"(limit BULKMAIL_RENDER_MAX_BYTES): {exc.detail}"
        )
        todo = "make the template print less, or raise BULKMAIL_RENDER_MAX_BYTES"
    where = f"template {template!r}, {part}" + (f", line {line}" if line else "")
    return TemplateError(
        f"rendering for {recipient} {what} ({where}): {todo}",
        template=template,
        part=part,
        line=line,
        recipient=recipient,
        limit={"time": "BULKMAIL_RENDER_TIMEOUT_S", "size": "BULKMAIL_RENDER_MAX_BYTES"}.get(
            exc.limit, "macro depth"
        ),
        reason=what,
    )


def render(
    template: Template,
    row: Mapping[str, Any] | pd.Series,
    *,
    values: Mapping[str, Any] | None = None,
    unsubscribe_url: str | None = None,
    sender: str | Mailbox | None = None,
    unsubscribe_mailto: str | None = None,
) -> RenderedMessage:
    """Render a template for one recipient row (pure: no I/O).

    Args:
        template: a :class:`Template` from :func:`load_template` or :func:`template_from_html`.
        row: the recipient (a row of the contacts frame, or any mapping).
        values: campaign-wide values (event date, venue, ...); a non-empty row cell of the
            same name wins, so values act as defaults.
        unsubscribe_url: the recipient's one-click unsubscribe URL (``{{ unsubscribe_url }}``).
        sender: the From address, ``"Firm <info@firm.sk>"`` or a :class:`Mailbox`.
        unsubscribe_mailto: an optional ``mailto:`` address for List-Unsubscribe.

    """
    ctx = build_context(template, row, values, unsubscribe_url)
    who = _recipient_label(ctx)
    budget = RenderBudget(*_limits(*map(os.environ.get, _LIMIT_SETTINGS)))
    token = limits.activate(budget)
    try:
        subject = _render_part(template, "subject", ctx, who, budget) or ""
        html = _render_part(template, "html", ctx, who, budget)
        text = _render_part(template, "text", ctx, who, budget)
        sms = _render_part(template, "sms", ctx, who, budget)
    finally:
        limits.deactivate(token)
    if text is None and html is not None and template._compiled.text_from_html_each_time:
        text = _html_to_text(html)
        # html2text takes about a second a megabyte and cannot be stopped midway: the
        # message is at most the size limit, and its time counts like the rendering's.
        try:
            budget.tick("making the text alternative from the HTML takes too long")
            budget.stream(text)
        except RenderLimitExceeded as exc:
            raise _limit_error(exc, template.name, "text", who, budget, None) from None
    elif text is not None and not template.text:
        # Loops in generated text leave runs of blank lines behind.
        text = _BLANK_RUNS.sub("\n\n", text)
    subject = clean_header_value(
        subject, field_name="subject", recipient=who, template=template.name
    )
    rec = ctx["recipient"]
    display = " ".join(str(rec[k]) for k in ("first_name", "last_name") if rec.get(k))
    to = Mailbox(
        clean_header_value(
            display, field_name="recipient name", recipient=who, template=template.name
        ),
        # Only the ends are trimmed: a control character inside an address makes the MIME
        # builder refuse it, rather than this quietly mailing a different address.
        str(rec.get("address") or "").strip(),
    )
    headers: list[tuple[str, str]] = []
    targets = []
    if unsubscribe_url:
        url = _LINE_BREAKS.sub("", unsubscribe_url).strip()
        if not re.match(r"^https?://[^\s<>\x00-\x1f\x7f-\x9f]+$", url):
            raise TemplateError(
                f"unsubscribe URL {url!r} for recipient {who} is not an http(s) URL without spaces",
                recipient=who,
            )
        targets.append(f"<{url}>")
    if unsubscribe_mailto:
        mailto = HEADER_CONTROLS.sub("", unsubscribe_mailto).strip().removeprefix("mailto:")
        targets.append(f"<mailto:{mailto}>")
    if targets:
        headers.append(("List-Unsubscribe", ", ".join(targets)))
    if unsubscribe_url:
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return RenderedMessage(
        subject=subject,
        html=html,
        text=text,
        to=to,
        sender=_parse_sender(sender),
        attachments=template._compiled.attachments,
        inline_images=template._compiled.inline_images,
        headers=tuple(headers),
        sms=sms,
        template_name=template.name,
        recipient=who,
        unsubscribe_url=unsubscribe_url,
    )


#: A batch stops once this many recipients in a row ran past the render time limit.
RUNAWAY_IN_A_ROW = 5


class RunawayGuard:
    """Stop a batch (registration, a check) when a template runs too long for everyone.

    A template that breaks the time limit for one recipient may be fine for the next
    (a long list of items); one that breaks it for ``RUNAWAY_IN_A_ROW`` recipients in a
    row would otherwise hold a 10,000-recipient registration for hours, two seconds each.
    """

    def __init__(self, stopping: str, in_a_row: int = RUNAWAY_IN_A_ROW) -> None:
        #: What stopping means for the batch, for the message ("nothing was registered").
        self.stopping = stopping
        self.in_a_row = in_a_row
        self.count = 0

    def rendered(self) -> None:
        """Note a recipient whose message rendered."""
        self.count = 0

    def failed(self, exc: BulkmailError) -> None:
        """Note a render failure; raise TemplateError when the time limit broke too often."""
        if exc.fields.get("limit") != "BULKMAIL_RENDER_TIMEOUT_S":
            self.count = 0
            return
        self.count += 1
        if self.count >= self.in_a_row:
            raise TemplateError(
                f"template {exc.fields.get('template')!r} ran past the render time limit for "
                f"{self.count} recipients in a row, the last {exc.fields.get('recipient')}: "
                f"{self.stopping}; fix the template "
                f"(the last error: {exc.message})",
                template=exc.fields.get("template"),
                recipient=exc.fields.get("recipient"),
                limit="BULKMAIL_RENDER_TIMEOUT_S",
                in_a_row=self.count,
            ) from exc

"""Checks before sending: every recipient renders, and what a careful sender would fix.

``check_template`` renders a template for every recipient of a frame and lists the
ones that fail and why (a missing variable, an empty required value, a variable
SendPulse cannot personalise); ``preview_warnings`` lists what to fix in one rendered
message (no unsubscribe link, an empty or long subject, images without alt text, an
SMS billed as several segments). They are pure functions beside what they check, so
the CLI, the providers and the preview widget call the same tested code.
"""

from __future__ import annotations

import html as htmlmod
from collections.abc import Callable, Mapping
from html.parser import HTMLParser
from typing import Any

import pandas as pd

from bulkmail_kernel.compose.render import (
    RenderedMessage,
    RunawayGuard,
    build_context,
    render,
)
from bulkmail_kernel.compose.sandbox import _is_empty
from bulkmail_kernel.compose.sms import sms_segments
from bulkmail_kernel.compose.templates import Template, _undeclared
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import BulkmailError, TemplateError

#: Variables SendPulse can personalise by itself; anything else must be rendered by us.
SENDPULSE_VARIABLES = frozenset({"name", "patronymic", "surname"})
#: Placeholder URL used when checking or previewing without a real unsubscribe link.
PREVIEW_UNSUBSCRIBE_URL = "https://example.invalid/unsubscribe/preview"
MAX_SUBJECT_CHARS = 78

# --------------------------------------------------------------------------- checks

_CHECK_COLUMNS = ["row", "contact_point_id", "address", "part", "line", "variable", "error"]


def check_template(
    template: Template,
    frame: pd.DataFrame,
    *,
    values: Mapping[str, Any] | None = None,
    provider: str | None = None,
    render_with: Callable[[Mapping[str, Any]], object] | None = None,
) -> pd.DataFrame:
    """Render for every recipient and return the ones that fail and why (empty = all fine).

    ``render_with`` renders one recipient instead of ``render`` (a campaign's own path
    to bytes, see ``check_campaign``), so what is checked is what would be sent.
    """
    problems: list[dict[str, Any]] = []
    if provider is not None:
        if provider.lower() != "sendpulse":
            raise TemplateError(
                f"unknown provider {provider!r}: the only provider rule is 'sendpulse'"
            )
        allowed = ", ".join(sorted(SENDPULSE_VARIABLES))
        for part, names in _undeclared(template).items():
            for variable in sorted(names - SENDPULSE_VARIABLES):
                problems.append(
                    {
                        "part": part,
                        "variable": variable,
                        "error": f"SendPulse personalises only {allowed}; "
                        f"{variable!r} would be sent literally",
                    }
                )
    runaway = RunawayGuard("checking stopped at this recipient")
    for index, record in zip(frame.index, frame.to_dict("records"), strict=True):
        who = {
            "row": index,
            "contact_point_id": record.get("contact_point_id"),
            "address": record.get("address"),
        }
        ctx = build_context(template, record, values, PREVIEW_UNSUBSCRIBE_URL)
        # One row per recipient and problem: a required value that is missing also fails
        # the rendering; the rendering's row (with its part and line) stands for both.
        mine: list[dict[str, Any]] = [
            {
                **who,
                "part": "required",
                "variable": variable,
                "error": f"required value {variable!r} is empty",
            }
            for variable in template.required
            if _is_empty(ctx.get(variable))
        ]
        stop_here = False
        try:
            if render_with is not None:
                render_with(record)
            else:
                render(template, record, values=values, unsubscribe_url=PREVIEW_UNSUBSCRIBE_URL)
            runaway.rendered()
        except BulkmailError as exc:
            failed = exc.fields.get("variable")
            mine = [m for m in mine if failed is None or m["variable"] != failed]
            mine.append(
                {
                    **who,
                    "part": exc.fields.get("part") or exc.fields.get("field"),
                    "line": exc.fields.get("line"),
                    "variable": failed,
                    "error": exc.fields.get("reason") or exc.message,
                }
            )
            try:
                runaway.failed(exc)
            except TemplateError as stop:
                mine.append({**who, "part": "render time", "error": stop.message})
                stop_here = True
        problems.extend(mine)
        if stop_here:
            break
    # Shown in full: an error such as SendPulse's list of variables runs past 50 characters.
    return readable(pd.DataFrame(problems, columns=_CHECK_COLUMNS))


class _ImageAltFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.missing: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            found = dict(attrs)
            if "alt" not in found:
                self.missing.append(found.get("src") or "?")


def images_without_alt(html: str) -> list[str]:
    """Return the ``src`` of every ``<img>`` that has no ``alt`` attribute."""
    finder = _ImageAltFinder()
    finder.feed(html)
    finder.close()
    return finder.missing


def preview_warnings(rendered: RenderedMessage) -> list[str]:
    """Return what a careful sender would want to fix before sending this message."""
    warnings = []
    is_email = rendered.html is not None or rendered.text is not None
    if is_email:
        url = rendered.unsubscribe_url
        bodies = (rendered.html or "") + (rendered.text or "")
        if not url:
            warnings.append("No unsubscribe URL: the message has no List-Unsubscribe header.")
        elif url not in bodies and htmlmod.escape(url) not in bodies:
            warnings.append('No visible unsubscribe link: add <a href="{{ unsubscribe_url }}">.')
        if not rendered.subject:
            warnings.append("The subject is empty.")
        elif len(rendered.subject) > MAX_SUBJECT_CHARS:
            warnings.append(
                f"The subject is {len(rendered.subject)} characters long "
                f"(over {MAX_SUBJECT_CHARS}); mail apps will cut it."
            )
        if rendered.html is not None:
            for src in images_without_alt(rendered.html):
                warnings.append(f"Image {src!r} has no alt text.")
    if rendered.sms is not None:
        info = sms_segments(rendered.sms)
        if info.segments > 1:
            warnings.append(
                f"The SMS needs {info.segments} segments ({info.encoding}, {info.units} units, "
                f"{info.per_segment} per segment): each segment is billed."
            )
    return warnings

"""Campaign checks before anything is queued: variables, images, the subject, who was skipped.

``check_campaign_template`` runs at ``create_campaign`` and ``register``: a required
variable neither in the campaign's values nor a recipient column (a typo such as
``event_nmae``), an image the template cannot find, an empty subject — each an error
naming the variable or file and what to do. ``same_failure`` turns "every recipient
failed for one reason" into one error, and ``skip_summary`` says in one line how many
recipients registration skipped and why (``skipped_line``: the same, read back later from
the stored skip events, for the outbox monitor).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from bulkmail_kernel.compose.templates import Template
from bulkmail_kernel.contacts.frame import FRAME_COLUMNS
from bulkmail_kernel.db import Database
from bulkmail_kernel.exceptions import TemplateError

#: Variables the renderer provides for every recipient (render.build_context).
PROVIDED = frozenset(
    {"recipient", "unsubscribe_url", "template_language", "name", "surname", "patronymic"}
)
_IMG_SRC = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*(["'])([^"'{}]*)\1""", re.IGNORECASE)
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


def recipient_columns(database: Database) -> set[str]:
    """Return every column a recipient row can have: the frame's and the custom attributes'."""
    if database.engine.dialect.name == "postgresql":
        sql = "SELECT DISTINCT jsonb_object_keys(attributes) FROM contacts"
        sql += " WHERE jsonb_typeof(attributes) = 'object'"
    else:
        sql = "SELECT DISTINCT j.key FROM contacts, json_each(contacts.attributes) AS j"
    with database.engine.connect() as conn:
        keys = set(conn.execute(sa.text(sql)).scalars())
    return set(FRAME_COLUMNS) | {str(k) for k in keys}


def _near(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f" (the values have {close[0]!r}: a typo?)" if close else ""


def missing_images(template: Template) -> list[str]:
    """Return the ``src`` of every image the sent message would not carry or link to."""
    part = template._compiled.parts.get("html")
    if part is None:
        return []
    return [
        src
        for _, src in _IMG_SRC.findall(part.source)
        if src.strip() and not _REMOTE.match(src.strip())
    ]


def check_campaign_template(
    campaign: str, template: Template, values: Mapping[str, Any], columns: Iterable[str]
) -> None:
    """Raise TemplateError naming what would make every message wrong, before any is queued."""
    name = template.name
    known = set(values) | set(columns) | PROVIDED
    for variable in template.required:
        if variable not in known:
            raise TemplateError(
                f"campaign {campaign!r}: template {name!r} needs the value {variable!r}, but it "
                f"is neither in the campaign's values nor a recipient column"
                f"{_near(variable, values)}: add {variable}=... to values",
                campaign=campaign,
                template=name,
                variable=variable,
            )
    if template.channel == "email" and not template.subject.strip():
        raise TemplateError(
            f"campaign {campaign!r}: template {name!r} has an empty subject: give it one "
            "(subject = ... in template.toml, or subject= in template_from_html)",
            campaign=campaign,
            template=name,
            field="subject",
        )
    for src in missing_images(template):
        where = (
            f"the template folder {template.folder}"
            if template.folder is not None
            else "no folder (the template was built without one)"
        )
        raise TemplateError(
            f"campaign {campaign!r}: template {name!r}: image {src!r} cannot be found: the "
            f"template has {where}; put the file there and load the template with "
            "load_template(), or use an https:// address",
            campaign=campaign,
            template=name,
            file=src,
        )


def same_failure(campaign: str, failures: list[Any], tried: int) -> TemplateError | None:
    """Return one error when every one of ``tried`` recipients failed for the same reason."""
    if not tried or len(failures) != tried:
        return None
    reasons = Counter(_reason(f) for f in failures)
    reason, count = reasons.most_common(1)[0]
    if count != tried:
        return None
    first = failures[0]
    detail = first.message if isinstance(first, TemplateError) else str(first)
    return TemplateError(
        f"register {campaign!r}: {reason} for every recipient ({tried}): nothing was "
        f"registered; {detail}",
        campaign=campaign,
        variable=getattr(first, "fields", {}).get("variable"),
        reason=reason,
    )


def _reason(failure: Any) -> str:
    if isinstance(failure, TemplateError):
        return str(failure.fields.get("reason") or failure.message)
    return str(failure)


def short_reason(detail: str) -> str:
    """Return a skip reason without its recipient, so like reasons count together."""
    if detail.endswith("is not an E.164 phone number"):
        return "not an E.164 phone number"
    if detail.startswith("not a phone") or detail.startswith("not an email"):
        return detail.split(" (")[0]
    return detail


def reasons_text(reasons: list[str]) -> str:
    """Return "2 suppressed; 1 mailing not allowed": each reason with its count, most first."""
    counts = Counter(reasons).most_common()
    why = "; ".join(f"{n} {reason}" for reason, n in counts[:4])
    return why + (f"; {len(counts) - 4} other reasons" if len(counts) > 4 else "")


def skip_summary(campaign: str, reasons: list[str], registered: int) -> str | None:
    """Return one line: how many recipients were skipped and why (None when none were)."""
    if not reasons:
        return None
    total = registered + len(reasons)
    return (
        f"campaign {campaign!r}: {len(reasons)} of {total} recipients skipped "
        f"({reasons_text(reasons)}); {registered} registered; bm.skipped({campaign!r}) lists them"
    )


def skipped_line(campaign: str, reasons: list[str]) -> str:
    """Return how many were skipped at registration and why, for the monitor ("": none)."""
    if not reasons:
        return ""
    n = len(reasons)
    were = "recipient was" if n == 1 else "recipients were"
    return (
        f"{n:,} {were} skipped at registration: {reasons_text(reasons)} "
        f"— see bm.skipped({campaign!r})"
    )

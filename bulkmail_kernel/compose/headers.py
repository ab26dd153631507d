"""Headers decided once, when composing: Message-ID, List-Id, VERP return path, unsubscribe.

Pure functions of the sender account and the message: no database, no clock. The
one header left for sending time is Date, added by
:func:`bulkmail_kernel.deliverability.dkim.prepare_outgoing` just before DKIM signs.
"""

from __future__ import annotations

import os
import re
import secrets
import unicodedata
import uuid

from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.records import SenderInfo

#: The unique part of our Message-IDs (``uuid4().hex``): what a VERP return path carries.
VERP_TAG = re.compile(r"[0-9a-f]{32}")


#: What ``settings["unsubscribe_mailto"]`` may hold: an ASCII address a header cannot break on.
_MAILTO = re.compile(r"[A-Za-z0-9.!#$&'*+/=^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def new_token() -> str:
    """Return a fresh opaque unsubscribe token."""
    return secrets.token_urlsafe(24)


def unsubscribe_url(sender: SenderInfo, token: str) -> str:
    """Return the recipient's unsubscribe link from the account's (or the env's) URL pattern."""
    pattern = sender.settings.get("unsubscribe_url") or os.environ.get("BULKMAIL_UNSUBSCRIBE_URL")
    if not pattern or "{token}" not in pattern:
        raise ConfigError(
            f"sender account {sender.name!r}: no unsubscribe link pattern: set "
            "settings['unsubscribe_url'] (or BULKMAIL_UNSUBSCRIBE_URL) to an https URL "
            "containing {token}, e.g. https://sk.example.net/unsubscribe?t={token}",
            account=sender.name,
        )
    return str(pattern).replace("{token}", token)


def has_unsubscribe_pattern(sender: SenderInfo) -> bool:
    """Return whether the account (or the environment) gives an unsubscribe link pattern."""
    pattern = sender.settings.get("unsubscribe_url") or os.environ.get("BULKMAIL_UNSUBSCRIBE_URL")
    return bool(pattern) and "{token}" in str(pattern)


def unsubscribe_mailto(sender: SenderInfo, token: str) -> str | None:
    """Return the List-Unsubscribe mailto target for ``token``, or None without a mailto address.

    The subject carries the token (``unsubscribe%20TOKEN``, RFC 6068 percent-encoding),
    so the bounce processor can tell whose unsubscribe it is even from a forwarding alias.
    """
    value = str(sender.settings.get("unsubscribe_mailto") or "").strip()
    if not value:
        return None
    address = value.removeprefix("mailto:").partition("?")[0]
    if not _MAILTO.fullmatch(address):
        raise ConfigError(
            f"sender account {sender.name!r}: settings['unsubscribe_mailto']={value!r} is not "
            "a plain ASCII address like unsubscribe@firm.sk",
            account=sender.name,
        )
    return f"{address}?subject=unsubscribe%20{token}"


def list_id(campaign_name: str, campaign_id: int, sender: SenderInfo) -> str:
    """Return the campaign's ``List-Id`` value (RFC 2919), e.g. ``Jar 2025 <jar-2025.c7.shop.sk>``.

    Both parts are plain ASCII made from the campaign name: the header must never be
    a way for an analyst-typed name to smuggle an encoded word or a line break in.
    """
    folded = unicodedata.normalize("NFKD", campaign_name).encode("ascii", "ignore").decode()
    phrase = " ".join(re.sub(r"[^A-Za-z0-9 _-]", " ", folded).split())[:60]
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")[:40].strip("-")
    domain = sender.from_email.rpartition("@")[2].lower() or "invalid"
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = "invalid"
    ident = f"{slug + '.' if slug else ''}c{campaign_id}.{domain}"
    return f"{phrase} <{ident}>" if phrase else f"<{ident}>"


def envelope_from(sender: SenderInfo, message_id: str = "") -> str:
    """Return one message's MAIL FROM: the account's, VERP-tagged when ``settings['verp']``.

    With VERP the return path carries the Message-ID's unique part
    (``bounces+3f2a...@shop.sk``), so a bounce that quotes nothing of the original
    still names the message it is about.
    """
    base = sender.envelope_from
    tag = message_id.strip().strip("<>").partition("@")[0]
    if not sender.settings.get("verp") or not VERP_TAG.fullmatch(tag) or "@" not in base:
        return base
    local, _, domain = base.rpartition("@")
    return f"{local}+{tag}@{domain}"


def new_message_id(sender: SenderInfo) -> str:
    """Return a globally unique Message-ID on the sender's domain."""
    # SMS accounts have no address; the id still has to be unique in the outbox.
    domain = sender.from_email.rsplit("@", 1)[-1] if "@" in sender.from_email else "sms.invalid"
    return f"<{uuid.uuid4().hex}@{domain}>"

"""Tracked links: rewrite a message's HTML links to signed click URLs, and check the signature.

Pure functions, no I/O. A click token is ``<message key>.<link>.<signature>``: the message
key is its Message-ID without the angle brackets and with ``@`` as ``.``'s neighbour ``~``
(so ``<3f2a…@shop.sk>`` is ``3f2a…~shop.sk``), the link is its index in the HTML part (or
``o`` for the open pixel), and the signature is HMAC-SHA256 of both under the database's
tracking secret (22 base64url characters, 128 bits). The token carries no URL: the click
endpoint looks the original up in the stored message (``message_links``), so it can only
redirect to links that were in that message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
from collections.abc import Callable
from dataclasses import dataclass

#: ``href="http(s)://..."`` in an ``<a>`` or ``<area>`` tag (quoted with " or ').
_HREF = re.compile(
    r"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(["'])(\s*https?://[^"']*)\2""", re.IGNORECASE
)
_KEY = re.compile(r"^[0-9a-f]{32}~[A-Za-z0-9.-]{1,253}$")
_SIG_LEN = 22
#: The link index the open pixel's token carries.
OPEN = "o"


@dataclass(frozen=True)
class ClickToken:
    """What a valid token names: the message (by Message-ID) and the link index (or "o")."""

    message_id_header: str
    link: str


def message_key(message_id_header: str) -> str:
    """Return the token's message key of a Message-ID ``<hex@domain>``."""
    return message_id_header.strip("<>").replace("@", "~", 1)


def _sign(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:_SIG_LEN]


def click_token(secret: bytes, message_id_header: str, link: int | str) -> str:
    """Return the signed token of link ``link`` (an index, or ``OPEN``) of a message."""
    payload = f"{message_key(message_id_header)}.{link}"
    return f"{payload}.{_sign(secret, payload)}"


def read_token(secret: bytes, token: str) -> ClickToken | None:
    """Return what a token names if its signature is right, else None (forged, tampered)."""
    if len(token) > 400:
        return None
    payload, _, signature = token.rpartition(".")
    key, _, link = payload.rpartition(".")
    if not _KEY.match(key) or not (link == OPEN or (link.isdigit() and len(link) < 6)):
        return None
    if len(signature) != _SIG_LEN or not hmac.compare_digest(signature, _sign(secret, payload)):
        return None
    hexpart, _, domain = key.partition("~")
    return ClickToken(f"<{hexpart}@{domain}>", link)


def rewrite_links(
    html_text: str, url_of: Callable[[int], str], *, keep: Callable[[str], bool]
) -> tuple[str, tuple[str, ...]]:
    """Replace each http(s) link of ``html_text`` by ``url_of(index)``; return it and the originals.

    A link for which ``keep(url)`` is true (the unsubscribe link) stays as it is and gets
    no index. The originals are returned unescaped, as a browser would follow them.
    """
    originals: list[str] = []

    def swap(m: re.Match[str]) -> str:
        original = html.unescape(m.group(3).strip())
        # A link with spaces or control characters stays as written: a Location header
        # must not carry them, and the reader's client decides what such a link means.
        if keep(original) or any(ord(ch) < 33 or ch == "\x7f" for ch in original):
            return m.group(0)
        originals.append(original)
        new = html.escape(url_of(len(originals) - 1), quote=True)
        return f"{m.group(1)}{m.group(2)}{new}{m.group(2)}"

    return _HREF.sub(swap, html_text), tuple(originals)


def add_pixel(html_text: str, pixel_url: str) -> str:
    """Return ``html_text`` with a 1x1 image of ``pixel_url`` before ``</body>`` (or at its end)."""
    img = (
        f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px">'
    )
    at = html_text.lower().rfind("</body>")
    return html_text + img if at < 0 else html_text[:at] + img + html_text[at:]

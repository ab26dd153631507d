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
from html.parser import HTMLParser

#: One attribute of a start tag as written: name, then an optional = and value.
_ATTR = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
#: A link that may be tracked: http(s) only (no javascript:, data:, mailto:, tel:, #anchor).
_WEB = re.compile(r"https?://[^\s/?#]", re.IGNORECASE)
_KEY = re.compile(r"[0-9a-f]{32}~[A-Za-z0-9.-]{1,253}")
_SIG_LEN = 22
_LINK = re.compile(r"[0-9]{1,5}")
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
    if len(token) > 400 or not token.isascii():
        return None  # a path can carry any character; only ASCII can be ours (and compared)
    payload, _, signature = token.rpartition(".")
    key, _, link = payload.rpartition(".")
    if not _KEY.fullmatch(key) or not (link == OPEN or _LINK.fullmatch(link)):
        return None
    if len(signature) != _SIG_LEN or not hmac.compare_digest(signature, _sign(secret, payload)):
        return None
    hexpart, _, domain = key.partition("~")
    return ClickToken(f"<{hexpart}@{domain}>", link)


class _Anchors(HTMLParser):
    """Find the ``href`` values of real ``<a>``/``<area>`` start tags: (start, end, raw value).

    Python's HTML parser skips comments, ``<script>``/``<style>`` content and attribute
    text, so a link that only looks like one there is left alone.
    """

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self.found: list[tuple[int, int, str]] = []
        self._line_at = [0]
        for m in re.finditer("\n", text):
            self._line_at.append(m.end())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area"):
            return
        raw = self.get_starttag_text() or ""
        line, col = self.getpos()
        at = self._line_at[line - 1] + col
        # Attributes of the tag as written, after its name; the first href wins (as browsers).
        pos = 1 + len(tag)
        while (m := _ATTR.search(raw, pos)) is not None:
            pos = m.end()
            if m.group(1).lower() != "href":
                continue
            group = next((g for g in (2, 3, 4) if m.group(g) is not None), None)
            if group is not None:
                self.found.append((at + m.start(group), at + m.end(group), m.group(group)))
            return

    handle_startendtag = handle_starttag


def rewrite_links(
    html_text: str, url_of: Callable[[int], str], *, keep: Callable[[str], bool]
) -> tuple[str, tuple[str, ...]]:
    """Replace each http(s) link of ``html_text`` by ``url_of(index)``; return it and the originals.

    Only the ``href`` of real ``<a>``/``<area>`` tags changes (not in comments, scripts,
    other attributes); the rest of the HTML stays byte for byte. A link for which
    ``keep(url)`` is true (the unsubscribe link) stays as it is and gets no index. The
    originals are returned unescaped, as a browser would follow them.
    """
    parser = _Anchors(html_text)
    parser.feed(html_text)
    parser.close()
    originals: list[str] = []
    out: list[str] = []
    done = 0
    for start, end, raw in parser.found:
        original = html.unescape(raw).strip()
        # A link with spaces or control characters stays as written: a Location header
        # must not carry them, and the reader's client decides what such a link means.
        if (
            not _WEB.match(original)
            or keep(original)
            or any(ord(ch) < 33 or ch == "\x7f" for ch in original)
        ):
            continue
        originals.append(original)
        out += [html_text[done:start], html.escape(url_of(len(originals) - 1), quote=True)]
        done = end
    out.append(html_text[done:])
    return "".join(out), tuple(originals)


def add_pixel(html_text: str, pixel_url: str) -> str:
    """Return ``html_text`` with a 1x1 image of ``pixel_url`` before ``</body>`` (or at its end)."""
    img = (
        f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px">'
    )
    at = html_text.lower().rfind("</body>")
    return html_text + img if at < 0 else html_text[:at] + img + html_text[at:]

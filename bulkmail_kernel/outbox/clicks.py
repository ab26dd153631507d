"""Clicks and opens: the tracked links of each message, and the one writer of click events.

Registration stores the original links of each tracked message with it (``outbox.queue``); the
web endpoint asks ``follow_click`` where a token leads, and this module decides whether
the click counts and writes the event: ``clicked`` (counted) or ``click_flagged``
(scanner traffic, with ``data["why"]``), and ``opened`` for the open pixel. Security
scanners (Microsoft Defender Safe Links, Mimecast, Proofpoint, Barracuda ...) fetch every
link of a message, usually right after delivery and often with HEAD: those are flagged,
not counted. See docs/tracking.md.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel.compose.links import OPEN, ClickToken, read_token
from bulkmail_kernel.contacts.consents import consented
from bulkmail_kernel.db import (
    Database,
    Event,
    Message,
    MessageLink,
    Setting,
    chunks,
    utcnow,
)
from bulkmail_kernel.exceptions import ConfigError

log = logging.getLogger("bulkmail")

#: The ``settings`` row holding the HMAC key of click tokens (hex), made on first use.
SECRET_SETTING = "tracking_secret"  # noqa: S105 - the row's name, not a secret
#: A click this soon after the message was sent is a scanner's (a person needs longer).
MIN_DELAY_S = 10
#: Every link of a message followed within this many seconds is a scanner's.
ALL_AT_ONCE_S = 5
#: User agents of link scanners and previewers (substrings, case-insensitive): docs/tracking.md.
SCANNER_AGENTS = (
    "safelinks", "microsoft office", "ms-office", "msoffice", "mimecast", "proofpoint",
    "barracuda", "symantec", "messagelabs", "forcepoint", "trendmicro", "fortiguard",
    "sophos", "cisco", "ironport", "zscaler", "paloalto", "checkpoint", "bitdefender",
    "googleimageproxy", "yahoomailproxy", "bot", "crawler", "spider", "python-requests",
    "python-httpx", "curl/", "wget/", "go-http-client", "java/", "okhttp", "headless",
)  # fmt: skip

_M = cast(sa.Table, Message.__table__)
_L = cast(sa.Table, MessageLink.__table__)
_E = cast(sa.Table, Event.__table__)


#: The shortest key accepted from ``BULKMAIL_TRACKING_SECRET`` (bytes): HMAC-SHA256 wants 32.
MIN_SECRET_BYTES = 32


def tracking_secret(s: Session, *, create: bool = True) -> bytes | None:
    """Return the key click tokens are signed with: ``BULKMAIL_TRACKING_SECRET``, else the DB's.

    The DB's key is made on first use when ``create`` (registration); two workers making
    it at once both end up with the one that was stored first. The web endpoint passes
    ``create=False``: with no key nothing was ever tracked, so every token is refused.
    """
    env = os.environ.get("BULKMAIL_TRACKING_SECRET")
    if env:
        key = env.encode("utf-8")
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"BULKMAIL_TRACKING_SECRET is {len(key)} bytes long: click tokens need a key "
                f"of at least {MIN_SECRET_BYTES} random bytes (python -c 'import secrets; "
                "print(secrets.token_hex(32))'), or unset it to use the database's own"
            )
        return key
    row = s.get(Setting, SECRET_SETTING)
    if row is None and create:
        try:
            with s.begin_nested():
                s.add(Setting(name=SECRET_SETTING, value={"secret": secrets.token_hex(32)}))
        except sa.exc.IntegrityError:
            pass  # another worker stored it first: use theirs (read below)
        row = s.get(Setting, SECRET_SETTING, populate_existing=True)
    if row is None:
        return None
    return bytes.fromhex(row.value["secret"])


def safe_target(url: str) -> str | None:
    """Return ``url`` fit for a Location header (IDN host as punycode), or None if it is not.

    Only absolute http(s) URLs with a host, without spaces, control characters or a
    backslash: the stored link is checked again here, so a row written some other way
    can never make the endpoint an open door to ``javascript:`` or header injection.
    """
    if any(ord(ch) < 33 or ch in "\x7f\\" for ch in url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme.lower() not in ("http", "https") or not host or parts.username:
            return None
        if not host.isascii():
            port = f":{parts.port}" if parts.port is not None else ""
            netloc = host.encode("idna").decode("ascii") + port
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except (ValueError, UnicodeError):
        return None
    # What is left non-ASCII (path, query) is percent-encoded as UTF-8; % stays as written.
    return quote(url, safe="".join(chr(c) for c in range(33, 127)))


def _why_flagged(msg: Any, method: str, agent: str, now: datetime) -> str | None:
    """Return why a click looks like a scanner's, or None when a person made it."""
    if method == "HEAD":
        return "HEAD request"
    lowered = agent.lower()
    if not lowered.strip():
        return "no user agent"
    scanner = next((a for a in SCANNER_AGENTS if a in lowered), None)
    if scanner is not None:
        return f"scanner user agent ({scanner})"
    if msg.sent_at is None:
        return "clicked before the message was sent"
    if now - msg.sent_at < timedelta(seconds=MIN_DELAY_S):
        return f"clicked within {MIN_DELAY_S} s of delivery"
    return None


def _all_at_once(conn: sa.Connection, msg: Any, link: int, now: datetime) -> bool:
    """Return whether this click completes every link of the message within a few seconds."""
    n_links = conn.scalar(sa.select(sa.func.count()).where(_L.c.message_id == msg.id)) or 0
    if n_links < 2:
        return False
    recent = conn.execute(
        sa.select(_E.c.data).where(
            _E.c.message_id == msg.id,
            _E.c.kind.in_(("clicked", "click_flagged")),
            _E.c.occurred_at >= now - timedelta(seconds=ALL_AT_ONCE_S),
        )
    ).scalars()
    hit = {int((d or {}).get("link", -1)) for d in recent} | {link}
    return len(hit) >= n_links


def _unclick_burst(conn: sa.Connection, message_id: int, now: datetime, why: str) -> None:
    """Flag the counted clicks of a burst that turned out to be a scanner's (keeping url, link)."""
    burst = conn.execute(
        sa.select(_E.c.id, _E.c.data).where(
            _E.c.message_id == message_id,
            _E.c.kind == "clicked",
            _E.c.occurred_at >= now - timedelta(seconds=ALL_AT_ONCE_S),
        )
    ).all()
    for event_id, data in burst:
        conn.execute(
            sa.update(_E)
            .where(_E.c.id == event_id)
            .values(kind="click_flagged", detail=why, data={**(data or {}), "why": why})
        )


def follow_click(
    database: Database, secret: bytes, token: str, *, method: str, agent: str
) -> str | None:
    """Record a click on a tracked link; return the original URL, or None (unknown token).

    The URL comes from the stored message, never from the token. Nothing is recorded
    once the contact has withdrawn tracking consent (or was erased). A scanner's click
    (HEAD, a scanner's user agent, too soon after sending, every link at once) is
    recorded as ``click_flagged`` with why, and still redirected.
    """
    found = read_token(secret, token)
    if found is None or found.link == OPEN:
        return None
    link = int(found.link)
    now = utcnow()
    with database.engine.begin() as conn:
        msg = _message(conn, found)
        if msg is None:
            return None
        url = conn.scalar(sa.select(_L.c.url).where(_L.c.message_id == msg.id, _L.c.link == link))
        target = None if url is None else safe_target(str(url))
        if target is None:
            if url is not None:
                log.warning("click on link %s of message %s refused: not a web URL", link, msg.id)
            return None
        if not _still_consents(conn, msg):
            return target  # the link works; withdrawn consent means nothing is recorded
        why = _why_flagged(msg, method, agent, now)
        if why is None and _all_at_once(conn, msg, link, now):
            why = "every link of the message at once"
            _unclick_burst(conn, msg.id, now, why)
        data: dict[str, Any] = {"url": url, "link": link}
        if why is not None:
            data["why"] = why
        conn.execute(
            sa.insert(_E).values(
                kind="clicked" if why is None else "click_flagged",
                occurred_at=now,
                campaign_id=msg.campaign_id,
                message_id=msg.id,
                contact_id=msg.contact_id,
                contact_point_id=msg.contact_point_id,
                detail="" if why is None else why,
                data=data,
            )
        )
    return target


def record_open(database: Database, secret: bytes, token: str, *, agent: str) -> bool:
    """Record the open pixel of a tracked message being fetched; False for an unknown token."""
    found = read_token(secret, token)
    if found is None or found.link != OPEN:
        return False
    with database.engine.begin() as conn:
        msg = _message(conn, found)
        if msg is None:
            return False
        if not _still_consents(conn, msg):
            return True
        conn.execute(
            sa.insert(_E).values(
                kind="opened",
                occurred_at=utcnow(),
                campaign_id=msg.campaign_id,
                message_id=msg.id,
                contact_id=msg.contact_id,
                contact_point_id=msg.contact_point_id,
                detail="",
                data={"agent": agent[:200]},
            )
        )
    return True


def _still_consents(conn: sa.Connection, msg: Any) -> bool:
    """Return whether the message's contact still consents to tracking (withdrawn: no record)."""
    return msg.contact_id is not None and bool(consented(conn, [msg.contact_id], "tracking"))


def _message(conn: sa.Connection, found: ClickToken) -> Any:
    return conn.execute(
        sa.select(
            _M.c.id, _M.c.campaign_id, _M.c.contact_id, _M.c.contact_point_id, _M.c.sent_at
        ).where(_M.c.message_id_header == found.message_id_header)
    ).first()


def erase_links(s: Session, message_ids: list[int]) -> None:
    """Delete the stored links of erased messages (a link may carry the person's data)."""
    for chunk in chunks(message_ids, 500):
        s.execute(sa.delete(_L).where(_L.c.message_id.in_(chunk)))

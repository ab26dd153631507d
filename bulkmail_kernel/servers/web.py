"""The one-click unsubscribe endpoint (RFC 8058): a small Starlette app run by uvicorn.

It also answers tracked links: ``GET``/``HEAD /c/{token}`` redirects (302) to the original
link stored with the message, and ``GET /o/{token}`` is the open pixel (docs/tracking.md).

``POST /u/{token}`` with the body ``List-Unsubscribe=One-Click`` is what Gmail, Yahoo
and Outlook send when the reader clicks "Unsubscribe" next to the sender's name: it
unsubscribes at once and answers 200 (no redirect, no cookie, no login). ``GET /u/{token}``
is the link in the message body: a page with one button whose form makes the same POST,
because link scanners and previewers fetch every URL in a message and must not
unsubscribe anyone. An unknown token answers a plain 404 that says nothing about why.

Put it behind the firm's web server (``location /u/ { proxy_pass http://127.0.0.1:8025; }``)
and set the sender account's ``unsubscribe_url`` to ``https://www.firm.sk/u/{token}``.
"""

from __future__ import annotations

import html
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from bulkmail_kernel.config import DEFAULT_LANGUAGE
from bulkmail_kernel.db import (
    Contact,
    ContactPoint,
    Database,
    UnsubscribeToken,
    resolve_database,
)
from bulkmail_kernel.outbox.clicks import follow_click, record_open, tracking_secret
from bulkmail_kernel.outbox.suppressions import hash_token, unsubscribe

log = logging.getLogger("bulkmail")

#: Tokens are ``secrets.token_urlsafe``: anything else is not ours and is not looked up.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
#: The token is in the URL: keep it out of caches, referrers and other sites' frames.
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
_MAX_BODY = 4096
#: A redirect must not leak the token to the target site (Referer) nor be cached.
_REDIRECT_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
#: The open pixel: a transparent 1x1 GIF.
_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)

_TEXTS: dict[str, dict[str, str]] = {
    "sk": {
        "title": "Odhlásenie z odberu",
        "question": "Naozaj už nechcete dostávať naše e-maily na adresu {address}?",
        "button": "Odhlásiť sa",
        "done": "Adresa {address} bola odhlásená. Ďalšie e-maily od nás už nedostanete.",
    },
    "cs": {
        "title": "Odhlášení z odběru",
        "question": "Opravdu už nechcete dostávat naše e-maily na adresu {address}?",
        "button": "Odhlásit se",
        "done": "Adresa {address} byla odhlášena. Další e-maily od nás už nedostanete.",
    },
    "ru": {
        "title": "Отписка от рассылки",
        "question": "Вы действительно больше не хотите получать наши письма на {address}?",
        "button": "Отписаться",
        "done": "Адрес {address} отписан. Больше писем от нас вы не получите.",
    },
    "en": {
        "title": "Unsubscribe",
        "question": "Do you really no longer want to receive our e-mails at {address}?",
        "button": "Unsubscribe",
        "done": "{address} has been unsubscribed. You will not receive further e-mails from us.",
    },
}

_PAGE = """<!DOCTYPE html>
<html lang="{lang}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em}}
button{{font-size:1.1em;padding:.5em 1.5em}}</style></head>
<body><h1>{title}</h1>{content}</body>
</html>
"""


@dataclass(frozen=True)
class TokenOwner:
    """Who an unsubscribe token belongs to, as much as the page needs to show."""

    address: str
    language: str


def token_owner(
    token: str, *, db: Database | None = None, url: str | None = None
) -> TokenOwner | None:
    """Return the address and language a token unsubscribes, or None for an unknown token."""
    if not _TOKEN.match(token):
        return None
    database = resolve_database(db, url)
    with database.session() as s:
        row = s.get(UnsubscribeToken, hash_token(token))
        point = s.get(ContactPoint, row.contact_point_id) if row is not None else None
        if point is None:
            return None
        contact = s.get(Contact, point.contact_id)
        language = contact.language if contact is not None else DEFAULT_LANGUAGE
        return TokenOwner(point.normalized, language if language in _TEXTS else "en")


def _mask(address: str) -> str:
    """Return ``j***@firm.sk``: enough for the reader to recognise, little for a snooper."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def _page(owner: TokenOwner, key: str, *, form: bool) -> HTMLResponse:
    texts = _TEXTS[owner.language]
    message = html.escape(texts[key].format(address=_mask(owner.address)))
    content = f"<p>{message}</p>"
    if form:
        # The same body a mail client's one-click POST carries, so one handler serves both.
        content += (
            '<form method="post"><input type="hidden" name="List-Unsubscribe" '
            f'value="One-Click"><button type="submit">{html.escape(texts["button"])}</button>'
            "</form>"
        )
    body = _PAGE.format(lang=owner.language, title=html.escape(texts["title"]), content=content)
    return HTMLResponse(body, headers=_SECURITY_HEADERS)


def _not_found() -> Response:
    return PlainTextResponse("Not Found\n", status_code=404, headers=_SECURITY_HEADERS)


def _one_click(body: bytes, content_type: str) -> bool:
    """Return whether the POST body says ``List-Unsubscribe=One-Click`` (RFC 8058 section 3.2)."""
    if content_type.startswith("multipart/form-data"):
        # A field named List-Unsubscribe whose value is One-Click; no multipart library needed.
        return bool(
            re.search(rb'name="List-Unsubscribe"\r?\n(?:[^\r\n]+\r?\n)*\r?\nOne-Click\r?\n', body)
        )
    try:
        fields = parse_qs(body.decode("ascii"), strict_parsing=False)
    except UnicodeDecodeError:
        return False
    return fields.get("List-Unsubscribe") == ["One-Click"]


def create_app(db: Database | None = None, url: str | None = None) -> Starlette:
    """Return the ASGI app serving ``/u/{token}``, ``/c/{token}`` and ``/o/{token}`` for ``db``."""
    database = resolve_database(db, url)

    async def confirm_page(request: Request) -> Response:
        token = request.path_params["token"]
        owner = await run_in_threadpool(token_owner, token, db=database)
        if owner is None:
            return _not_found()
        return _page(owner, "question", form=True)

    async def one_click(request: Request) -> Response:
        token = request.path_params["token"]
        body = await request.body()
        if len(body) > _MAX_BODY:
            return PlainTextResponse("Bad Request\n", status_code=400, headers=_SECURITY_HEADERS)
        owner = await run_in_threadpool(token_owner, token, db=database)
        if owner is None:
            return _not_found()
        if not _one_click(body, request.headers.get("content-type", "")):
            return PlainTextResponse(
                "Bad Request: the body must be List-Unsubscribe=One-Click\n",
                status_code=400,
                headers=_SECURITY_HEADERS,
            )
        if not await run_in_threadpool(unsubscribe, token, db=database):
            return _not_found()
        log.info("one-click unsubscribe of %s", _mask(owner.address))
        return _page(owner, "done", form=False)

    def secret() -> bytes | None:
        # Never made here: with no key yet nothing was tracked, and every token is refused.
        with database.session() as s:
            return tracking_secret(s, create=False)

    async def click(request: Request) -> Response:
        # The original URL comes from the stored message: a forged token redirects nowhere.
        def follow() -> str | None:
            key = secret()
            if key is None:
                return None
            return follow_click(
                database,
                key,
                request.path_params["token"],
                method=request.method,
                agent=request.headers.get("user-agent", ""),
            )

        target = await run_in_threadpool(follow)
        if target is None:
            return _not_found()
        return RedirectResponse(target, status_code=302, headers=_REDIRECT_HEADERS)

    async def pixel(request: Request) -> Response:
        def opened() -> None:
            key = secret()
            if key is not None:
                record_open(
                    database,
                    key,
                    request.path_params["token"],
                    agent=request.headers.get("user-agent", ""),
                )

        await run_in_threadpool(opened)
        # Always the image: a broken image in a message says nothing useful to anyone.
        return Response(_GIF, media_type="image/gif", headers={"Cache-Control": "no-store"})

    async def robots(_request: Request) -> Response:
        return PlainTextResponse("User-agent: *\nDisallow: /\n")

    routes = [
        Route("/u/{token}", confirm_page, methods=["GET"]),
        Route("/u/{token}", one_click, methods=["POST"]),
        Route("/c/{token}", click, methods=["GET", "HEAD"]),
        Route("/o/{token}", pixel, methods=["GET"]),
        Route("/robots.txt", robots, methods=["GET"]),
    ]

    async def not_found(_request: Request, _exc: Exception) -> Response:
        # Paths that match no route answer exactly like unknown tokens: nothing to tell apart.
        return _not_found()

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


class BackgroundServer:
    """An ASGI app served by uvicorn in a daemon thread; ``stop()`` ends it."""

    def __init__(self, server: Any, thread: threading.Thread, sock: Any) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        #: The port it listens on.
        self.port: int = sock.getsockname()[1]

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:8025``."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Ask the server to finish its requests and stop."""
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> BackgroundServer:
    """Serve ``app`` with uvicorn in a daemon thread (port 0: a free one) and wait until it listens.

    The port is bound here, so a port already taken raises OSError at once.
    """
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", ws="none", access_log=False, server_header=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            sock.close()
            raise OSError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    return BackgroundServer(server, thread, sock)


def start_in_background(
    host: str = "127.0.0.1", port: int = 8025, *, url: str | None = None
) -> BackgroundServer:
    """Run the endpoint in a thread (``bulkmail lab`` does, so the demo's links work)."""
    return serve_in_thread(create_app(url=url), host, port)

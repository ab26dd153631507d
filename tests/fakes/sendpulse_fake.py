"""A local SendPulse: OAuth tokens, address books, campaigns, limits and documented errors.

Request bodies are validated against the schemas of SendPulse's OpenAPI document
(``/work/shared/data/providers/sendpulse-bulk-email-openapi.yml``) and the rules its
descriptions state (body or template_id, list_id or segment_id, base64 HTML,
send_date not in the past). Time comes from the clock the test gives, so the
10-requests-per-second and 4-campaigns-per-hour limits are checked without sleeping.
Errors the document does not show (rate limits, a book still being processed) use
the same ``{"message", "error_code"}`` shape.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock

from . import serve

OPENAPI = Path("/work/shared/data/providers/sendpulse-bulk-email-openapi.yml")
if not OPENAPI.exists():  # the checkout's sibling, when the shared folder is mounted elsewhere
    OPENAPI = Path(__file__).resolve().parents[3] / "shared/data/providers" / OPENAPI.name


@cache
def _document() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))


@cache
def _validator(path: str, method: str) -> jsonschema.protocols.Validator:
    doc = _document()
    schema = copy.deepcopy(
        doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    )
    if "oneOf" in schema:
        # addEmailsToMailingList lists single and double opt-in as oneOf, but neither
        # schema excludes the other, so every valid body matches both: read it as anyOf.
        schema["anyOf"] = schema.pop("oneOf")
    schema["components"] = doc["components"]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _err(message: str, code: int | str, status: int) -> JSONResponse:
    return JSONResponse({"message": message, "error_code": code}, status)


@dataclass
class SendPulseFake:
    """State of the fake account; tests read it to see exactly what the client sent."""

    client_id: str = "sp-client-id"
    client_secret: str = "sp-client-secret"
    senders: list[dict[str, str]] = field(
        default_factory=lambda: [{"email": "news@shop.sk", "name": "Shop"}]
    )
    clock: Clock = SYSTEM_CLOCK
    token_lifetime_s: int = 3600
    #: GETs of a book that answer "processing" after emails were added.
    processing_polls: int = 2
    requests_per_s: int = 10
    campaigns_per_hour: int = 4
    tokens: dict[str, float] = field(default_factory=dict)
    token_requests: int = 0
    books: dict[int, dict[str, Any]] = field(default_factory=dict)
    campaigns: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: (method, path, json body, clock.monotonic()) of every request.
    log: list[tuple[str, str, Any, float]] = field(default_factory=list)
    schema_errors: list[str] = field(default_factory=list)
    rejected_for_rate: int = 0
    base_url: str = ""
    _times: deque[float] = field(default_factory=deque)
    _campaign_times: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 1000

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (the next API call gets a 401)."""
        self.tokens.clear()

    def complete(self, campaign_id: int) -> None:
        """Mark a campaign as sent (status 3)."""
        self.campaigns[campaign_id]["status"] = 3

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- cross-cutting ---------------------------------------------------------

    def _rate(self) -> JSONResponse | None:
        now = self.clock.monotonic()
        while self._times and self._times[0] <= now - 1.0:
            self._times.popleft()
        if len(self._times) >= self.requests_per_s:
            self.rejected_for_rate += 1
            return _err("Too Many Requests: at most 10 requests per second", 429, 429)
        self._times.append(now)
        return None

    def _auth(self, request: Request) -> JSONResponse | None:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip()
        expires = self.tokens.get(token)
        if not header.startswith("Bearer ") or expires is None or expires <= self.clock.monotonic():
            return JSONResponse(
                {
                    "error": "invalid_token",
                    "error_description": "The access token provided is invalid or has expired.",
                    "message": "Unauthorized",
                    "error_code": 401,
                },
                401,
            )
        return None

    def _validate(self, path: str, method: str, body: Any) -> JSONResponse | None:
        errors = sorted(_validator(path, method).iter_errors(body), key=lambda e: list(e.path))
        if not errors:
            return None
        first = errors[0]
        where = ".".join(str(p) for p in first.path) or "body"
        self.schema_errors.append(f"{method.upper()} {path}: {where}: {first.message}")
        return _err(f"Argument {where} is invalid", 422, 422)

    async def _enter(
        self, request: Request, *, auth: bool = True
    ) -> tuple[Any, JSONResponse | None]:
        body = None
        if request.method in ("POST", "PUT", "PATCH"):
            try:
                body = await request.json()
            except ValueError:
                return None, _err("Invalid JSON", 400, 400)
        self.log.append((request.method, request.url.path, body, self.clock.monotonic()))
        refused = self._rate() or (self._auth(request) if auth else None)
        return body, refused

    # -- endpoints -------------------------------------------------------------

    async def token(self, request: Request) -> JSONResponse:
        body, refused = await self._enter(request, auth=False)
        with self._lock:
            if refused:
                return refused
            self.token_requests += 1
            if (
                not isinstance(body, dict)
                or body.get("grant_type") != "client_credentials"
                or body.get("client_id") != self.client_id
                or body.get("client_secret") != self.client_secret
            ):
                return JSONResponse(
                    {
                        "error": "invalid_client",
                        "error_description": "Client authentication failed.",
                        "message": "Client authentication failed.",
                        "error_code": 1,
                    },
                    401,
                )
            token = secrets.token_hex(16)
            self.tokens[token] = self.clock.monotonic() + self.token_lifetime_s
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime_s}
        )

    async def get_senders(self, request: Request) -> JSONResponse:
        _, refused = await self._enter(request)
        return refused or JSONResponse(self.senders)

    async def create_book(self, request: Request) -> JSONResponse:
        body, refused = await self._enter(request)
        with self._lock:
            if refused:
                return refused
            if not isinstance(body, dict) or "bookName" not in body:
                return _err("Argument bookName missing", 422, 422)
            if invalid := self._validate("/addressbooks", "post", body):
                return invalid
            if any(b["name"] == body["bookName"] for b in self.books.values()):
                return _err("Name already in use", 203, 422)
            book_id = self._id()
            self.books[book_id] = {
                "name": body["bookName"],
                "emails": [],
                "batches": [],
                "pending_polls": 0,
                "created": self.clock.now().strftime("%Y-%m-%d %H:%M:%S"),
            }
        return JSONResponse({"id": book_id})

    def _book(self, request: Request) -> tuple[int, dict[str, Any] | None]:
        book_id = int(request.path_params["id"])
        return book_id, self.books.get(book_id)

    async def get_book(self, request: Request) -> JSONResponse:
        _, refused = await self._enter(request)
        with self._lock:
            if refused:
                return refused
            book_id, book = self._book(request)
            if book is None:
                return _err("Book not found", 213, 404)
            processing = book["pending_polls"] > 0
            if processing:
                book["pending_polls"] -= 1
            n = len(book["emails"])
        return JSONResponse(
            [
                {
                    "id": book_id,
                    "name": book["name"],
                    "all_email_qty": n,
                    "active_email_qty": n,
                    "inactive_email_qty": 0,
                    "creationdate": book["created"],
                    "status": 1 if processing else 0,
                    "status_explain": "Processing" if processing else "Active",
                }
            ]
        )

    async def add_emails(self, request: Request) -> JSONResponse:
        body, refused = await self._enter(request)
        with self._lock:
            if refused:
                return refused
            _, book = self._book(request)
            if book is None:
                return _err("Book not found", 213, 404)
            if not isinstance(body, dict) or "emails" not in body:
                return _err("Argument emails missing", 422, 422)
            if invalid := self._validate("/addressbooks/{id}/emails", "post", body):
                return invalid
            for item in body["emails"]:
                if not isinstance(item, dict) or not isinstance(item.get("email"), str):
                    return _err("Argument emails is invalid", 422, 422)
                if "@" not in item["email"]:
                    return _err("Argument email is invalid", 422, 422)
                if not isinstance(item.get("variables", {}), dict):
                    return _err("Argument emails.*.variables is invalid", 422, 422)
            book["emails"].extend(body["emails"])
            book["batches"].append(len(body["emails"]))
            book["pending_polls"] = self.processing_polls
        return JSONResponse({"result": True})

    async def create_campaign(self, request: Request) -> JSONResponse:
        body, refused = await self._enter(request)
        with self._lock:
            if refused:
                return refused
            if not isinstance(body, dict):
                return _err("Invalid JSON", 400, 400)
            for name in ("sender_name", "sender_email", "subject"):
                if name not in body:
                    return _err(f"Argument {name} missing", 422, 422)
            if invalid := self._validate("/campaigns", "post", body):
                return invalid
            if "body" not in body and "template_id" not in body:
                return _err("Argument body missing", 422, 422)
            if "list_id" not in body and "segment_id" not in body:
                return _err("Argument list_id missing", 422, 422)
            html = None
            if "body" in body:
                try:
                    html = base64.b64decode(body["body"], validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    return _err("Argument body is invalid string", 422, 422)
                if not re.search(r"<[a-zA-Z!]", html):
                    return _err("Argument body is invalid string", 422, 422)
            if body["sender_email"] not in {s["email"] for s in self.senders}:
                return _err("Sender not found", 1003, 422)
            if "send_date" in body:
                try:
                    when = datetime.strptime(body["send_date"], "%Y-%m-%d %H:%M:%S")
                except ValueError:
                    return _err("Argument send_date is invalid", 422, 422)
                if when < self.clock.now().replace(tzinfo=None):
                    return _err("Argument send_date must be a date in the future", 422, 422)
            if body.get("type", "draft") != "draft":
                return _err("Argument type is invalid", 422, 422)
            lists = body.get("list_id")
            lists = lists if isinstance(lists, list) else [lists]
            for list_id in lists:
                book = self.books.get(int(list_id))
                if book is None:
                    return _err("Book not found", 213, 404)
                if book["pending_polls"] > 0:
                    return _err("The address book is being processed, try later", 800, 422)
                if not book["emails"]:
                    return _err("Addressbook is empty", 502, 422)
            now = self.clock.monotonic()
            while self._campaign_times and self._campaign_times[0] <= now - 3600:
                self._campaign_times.popleft()
            if len(self._campaign_times) >= self.campaigns_per_hour:
                self.rejected_for_rate += 1
                return _err("Campaign limit exceeded: at most 4 campaigns per hour", 429, 429)
            self._campaign_times.append(now)
            count = sum(len(self.books[int(i)]["emails"]) for i in lists)
            campaign_id = self._id()
            status = 26 if body.get("type") == "draft" else 13
            self.campaigns[campaign_id] = {**body, "html": html, "status": status, "count": count}
        return JSONResponse(
            {
                "id": campaign_id,
                "status": status,
                "count": count,
                "tariff_email_qty": count,
                "overdraft_price": "0.0044",
                "ovedraft_currency": "USD",
            }
        )

    async def get_campaign(self, request: Request) -> JSONResponse:
        _, refused = await self._enter(request)
        with self._lock:
            if refused:
                return refused
            campaign = self.campaigns.get(int(request.path_params["id"]))
            if campaign is None:
                return _err("Campaign not found", 404, 404)
        return JSONResponse(
            {
                "id": int(request.path_params["id"]),
                "name": campaign.get("name", ""),
                "status": campaign["status"],
                "all_email_qty": campaign["count"],
                "tariff_email_qty": campaign["count"],
                "send_date": campaign.get("send_date", ""),
                "message": {
                    k: campaign.get(k)
                    for k in ("sender_name", "sender_email", "subject", "body", "list_id")
                },
            }
        )

    def app(self) -> Starlette:
        """Return the ASGI application."""
        return Starlette(
            routes=[
                Route("/oauth/access_token", self.token, methods=["POST"]),
                Route("/senders", self.get_senders, methods=["GET"]),
                Route("/addressbooks", self.create_book, methods=["POST"]),
                Route("/addressbooks/{id:int}", self.get_book, methods=["GET"]),
                Route("/addressbooks/{id:int}/emails", self.add_emails, methods=["POST"]),
                Route("/campaigns", self.create_campaign, methods=["POST"]),
                Route("/campaigns/{id:int}", self.get_campaign, methods=["GET"]),
            ]
        )


@contextmanager
def running_sendpulse(fake: SendPulseFake | None = None) -> Iterator[SendPulseFake]:
    """Start the fake and yield it with ``base_url`` set."""
    fake = fake or SendPulseFake()
    with serve(fake.app()) as base:
        fake.base_url = base
        yield fake

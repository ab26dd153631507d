"""The SendPulse REST API: a small typed client that only talks to SendPulse.

The official Python client is not used: it has Python 3 bugs in its base64
handling, writes token files into the working directory and hard-codes the base
URL. This client keeps the token in memory until it expires, fetches a new one
once on any 401 and retries, and honours SendPulse's limits on an injectable
clock: 10 requests per second and at most 4 campaigns per hour. It knows nothing
of the database; the hand-over workflow is :mod:`bulkmail_kernel.providers.sendpulse`.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any

import httpx
from tqdm.auto import tqdm

from bulkmail_kernel.clock import SYSTEM_CLOCK, Clock
from bulkmail_kernel.exceptions import ConfigError, ProviderError, SendError
from bulkmail_kernel.transports.credentials import resolve_secret

log = logging.getLogger("bulkmail")

DEFAULT_BASE_URL = "https://api.sendpulse.com"
REQUESTS_PER_S = 10
CAMPAIGNS_PER_HOUR = 4
#: Task status of a new campaign, as the API documents them.
CAMPAIGN_STATUS = {13: "copying addresses", 26: "draft", 3: "sent"}
#: Address-book status 0 is "Active": processed and ready for a campaign.
BOOK_READY = 0
#: Refresh the token this long before SendPulse says it expires.
TOKEN_MARGIN_S = 60.0


class SendPulseError(ProviderError):
    """SendPulse refused a request: ``message`` and ``error_code`` as it sent them."""

    def __init__(
        self, message: str, *, error_code: int | str | None, http_status: int | None, **fields: Any
    ) -> None:
        super().__init__(message, error_code=error_code, http_status=http_status, **fields)
        self.error_code = error_code
        self.http_status = http_status


class SlidingWindowLimiter:
    """At most ``limit`` events in any ``window_s`` seconds, timed on ``clock``."""

    def __init__(self, limit: int, window_s: float, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if limit < 1 or window_s <= 0:
            raise ConfigError(f"limiter: limit={limit}, window_s={window_s}: give positive values")
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._times: deque[float] = deque()

    def wait_s(self) -> float:
        """Return how long the next event must wait (0 when it may happen now)."""
        now = self.clock.monotonic()
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window_s - now

    def acquire(self) -> float:
        """Wait for a free slot, take it, and return the seconds waited."""
        waited = 0.0
        while (wait := self.wait_s()) > 0:
            self.clock.sleep(wait)
            waited += wait
        self._times.append(self.clock.monotonic())
        return waited

    def seed(self, ages_s: list[float]) -> None:
        """Count events that happened ``ages_s`` seconds ago (e.g. campaigns from the database)."""
        now = self.clock.monotonic()
        for age in sorted(ages_s, reverse=True):
            if age < self.window_s:
                self._times.append(now - age)


class SendPulseClient:
    """A typed SendPulse REST client with a configurable base URL."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = 30.0,
        requests_per_s: int = REQUESTS_PER_S,
        campaigns_per_hour: int = CAMPAIGNS_PER_HOUR,
    ) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.requests = SlidingWindowLimiter(requests_per_s, 1.0, clock=clock)
        self.campaigns = SlidingWindowLimiter(campaigns_per_hour, 3600.0, clock=clock)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._token: str | None = None
        self._token_expires = 0.0
        #: How many tokens this client fetched (the cache is working when it stays at 1).
        self.tokens_fetched = 0

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> SendPulseClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.requests.acquire()
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise SendPulseError(
                f"SendPulse {method} {path}: not reachable at {self.base_url}: {exc}",
                error_code=None,
                http_status=None,
            ) from exc

    @staticmethod
    def _error(response: httpx.Response, what: str) -> SendPulseError:
        try:
            data = response.json()
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        message = str(data.get("message") or data.get("error_description") or response.text[:200])
        return SendPulseError(
            f"SendPulse {what}: {message} (HTTP {response.status_code}, "
            f"error_code {data.get('error_code')})",
            error_code=data.get("error_code"),
            http_status=response.status_code,
            provider_message=message,
        )

    def token(self) -> str:
        """Return a valid access token, fetching a new one only when the cached one expired."""
        if self._token is not None and self.clock.monotonic() < self._token_expires:
            return self._token
        response = self._send(
            "POST",
            "/oauth/access_token",
            json={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._secret,
            },
        )
        if response.status_code != 200:
            raise self._error(response, "refused the ID and Secret")
        data = response.json()
        self.tokens_fetched += 1
        self._token = str(data["access_token"])
        lifetime = float(data.get("expires_in", 3600))
        self._token_expires = self.clock.monotonic() + max(0.0, lifetime - TOKEN_MARGIN_S)
        return self._token

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Call the API with the bearer token; on a 401 fetch a new token once and retry."""
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.token()}"}
            response = self._send(method, path, json=json, params=params, headers=headers)
            if response.status_code == 401 and attempt == 1:
                # Tokens can be revoked before their announced expiry: one fresh try, no loop.
                log.info("SendPulse %s %s: token refused, fetching a new one", method, path)
                self._token = None
                continue
            if response.status_code >= 400:
                raise self._error(response, f"{method} {path}")
            return response.json()
        raise AssertionError("unreachable")  # pragma: no cover

    # -- API -------------------------------------------------------------------

    def senders(self) -> list[dict[str, Any]]:
        """Return the sender addresses registered (and verified) in the account."""
        return list(self.request("GET", "/senders"))

    def create_address_book(self, name: str) -> int:
        """Create an address book named ``name`` and return its id."""
        return int(self.request("POST", "/addressbooks", json={"bookName": name})["id"])

    def add_emails(
        self,
        book_id: int,
        contacts: list[dict[str, Any]],
        *,
        batch_size: int = 500,
        progress: bool = False,
    ) -> int:
        """Add ``[{"email", "variables"}]`` to the book in batches; return the number of batches."""
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: give at least 1")
        batches = 0
        with tqdm(
            total=len(contacts), desc="address book", unit="addr", disable=not progress
        ) as bar:
            for start in range(0, len(contacts), batch_size):
                chunk = contacts[start : start + batch_size]
                answer = self.request(
                    "POST", f"/addressbooks/{book_id}/emails", json={"emails": chunk}
                )
                if not answer.get("result"):
                    raise SendPulseError(
                        f"SendPulse did not take batch {batches + 1} of book {book_id}: {answer}",
                        error_code=None,
                        http_status=200,
                    )
                batches += 1
                bar.update(len(chunk))
        return batches

    def address_book(self, book_id: int) -> dict[str, Any]:
        """Return the address book's information (status 0 means processed and ready)."""
        data = self.request("GET", f"/addressbooks/{book_id}")
        return dict(data[0] if isinstance(data, list) else data)

    def wait_for_address_book(
        self, book_id: int, *, timeout_s: float = 900.0, poll_s: float = 5.0
    ) -> dict[str, Any]:
        """Poll the book until SendPulse has processed it; return its information."""
        start = self.clock.monotonic()
        while True:
            book = self.address_book(book_id)
            if int(book.get("status", BOOK_READY)) == BOOK_READY:
                return book
            waited = self.clock.monotonic() - start
            if waited >= timeout_s:
                raise SendError(
                    f"SendPulse address book {book_id} is still being processed after "
                    f"{waited:.0f} s ({book.get('status_explain')}); call again later, "
                    "the book is reused",
                    book_id=book_id,
                )
            log.info("SendPulse address book %s is being processed; checking again", book_id)
            self.clock.sleep(poll_s)

    def campaign_wait_s(self) -> float:
        """Return how long the next campaign must wait for SendPulse's 4-per-hour limit."""
        return self.campaigns.wait_s()

    def create_campaign(
        self,
        *,
        sender_name: str,
        sender_email: str,
        subject: str,
        html: str,
        list_id: int,
        name: str | None = None,
        send_date: datetime | None = None,
        draft: bool = False,
    ) -> dict[str, Any]:
        """Create a campaign (or a draft) on address book ``list_id`` with ``html`` as body.

        Waits (on the clock) when four campaigns were created in the last hour.
        ``send_date`` (aware) schedules it; SendPulse wants ``Y-m-d H:i:s`` in UTC here.
        """
        body: dict[str, Any] = {
            "sender_name": sender_name,
            "sender_email": sender_email,
            "subject": subject,
            # SendPulse takes the HTML base64 encoded; UTF-8 first so diacritics survive.
            "body": base64.b64encode(html.encode("utf-8")).decode("ascii"),
            "list_id": int(list_id),
        }
        if name:
            body["name"] = name
        if send_date is not None:
            if send_date.tzinfo is None:
                raise ConfigError(f"send_date {send_date!r} must be time-zone aware")
            if send_date < self.clock.now():
                raise ConfigError(f"send_date {send_date.isoformat()} is in the past")
            body["send_date"] = _utc(send_date)
        if draft:
            body["type"] = "draft"
        self.campaigns.acquire()
        return dict(self.request("POST", "/campaigns", json=body))

    def campaign(self, campaign_id: int) -> dict[str, Any]:
        """Return SendPulse's information on campaign ``campaign_id`` (its status first)."""
        return dict(self.request("GET", f"/campaigns/{campaign_id}"))


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def status_text(status: Any) -> str:
    """Return the words for a SendPulse campaign task status."""
    try:
        return CAMPAIGN_STATUS.get(int(status), f"status {status}")
    except (TypeError, ValueError):
        return str(status)


def client_for_account(
    settings: dict[str, Any], credential_ref: str, *, account: str, clock: Clock = SYSTEM_CLOCK
) -> SendPulseClient:
    """Build a client from a sendpulse account's ``settings`` and the secret it names."""
    client_id = str(settings.get("client_id") or "")
    if not client_id:
        raise ConfigError(f"SendPulse account {account!r}: settings has no 'client_id'")
    secret = resolve_secret(credential_ref, user=client_id, account=account)
    return SendPulseClient(
        client_id, secret, base_url=str(settings.get("base_url") or DEFAULT_BASE_URL), clock=clock
    )

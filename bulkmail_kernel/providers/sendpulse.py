"""SendPulse campaigns: a small typed client and the "campaign" sending mode.

The official Python client is not used: it has Python 3 bugs in its base64
handling, writes token files into the working directory and hard-codes the base
URL. This client keeps the token in memory until it expires, fetches a new one
once on any 401 and retries, and honours SendPulse's limits on an injectable
clock: 10 requests per second and at most 4 campaigns per hour.

Campaign mode (``send_campaign_via_sendpulse``): a registered campaign's
recipients go into a new address book with the variables name, patronymic and
surname; once SendPulse has processed the book, a campaign (or a draft to send
from SendPulse's cabinet) is created with the template's HTML, base64 encoded.
The provider ids and status are kept in ``campaigns.provider_ref``. SMTP mode
needs nothing here: it is an ordinary smtp sender account on smtp-pulse.com.
"""

from __future__ import annotations

import base64
import logging
import re
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pandas as pd
import sqlalchemy as sa
from tqdm.auto import tqdm

from bulkmail_kernel.campaigns.campaigns import template_of
from bulkmail_kernel.db import (
    Campaign,
    CampaignStatus,
    Contact,
    Database,
    Event,
    Message,
    MessageStatus,
    SenderAccount,
    open_database,
)
from bulkmail_kernel.engine.throttle import SYSTEM_CLOCK, Clock
from bulkmail_kernel.exceptions import ConfigError, ProviderError, SendError, TemplateError
from bulkmail_kernel.outbox.lookup import campaign_row, sender_of
from bulkmail_kernel.transports.credentials import check_credential_ref, resolve_secret

log = logging.getLogger("bulkmail")

DEFAULT_BASE_URL = "https://api.sendpulse.com"
#: What a hand-over records in ``campaigns.provider_ref["sendpulse"]``, in report order.
REF_FIELDS = (
    "book_id",
    "campaign_id",
    "draft",
    "status",
    "status_text",
    "count",
    "created_at",
    "send_date",
    "checked_at",
)
REQUESTS_PER_S = 10
CAMPAIGNS_PER_HOUR = 4
#: Task status of a new campaign, as the API documents them.
CAMPAIGN_STATUS = {13: "copying addresses", 26: "draft", 3: "sent"}
#: Address-book status 0 is "Active": processed and ready for a campaign.
BOOK_READY = 0
#: Refresh the token this long before SendPulse says it expires.
TOKEN_MARGIN_S = 60.0

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_STATEMENT = re.compile(r"\{%|\{#")


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


# --------------------------------------------------------------------------- accounts


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


def add_sendpulse_account(
    name: str,
    *,
    client_id: str,
    from_email: str,
    from_name: str = "",
    secret_env: str | None = None,
    credential_ref: str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    clock: Clock = SYSTEM_CLOCK,
    db: Database | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Create or edit the SendPulse account ``name`` after SendPulse accepts its ID and Secret.

    The Secret is read from the environment variable ``secret_env`` (or the place
    ``credential_ref`` names, e.g. ``keyring:sendpulse``) and is never stored. Wrong
    credentials are refused with SendPulse's own message and nothing is saved. The
    sender address must be one registered in SendPulse and cannot be changed later.
    """
    if (secret_env is None) == (credential_ref is None):
        raise ConfigError(
            f"SendPulse account {name!r}: give either secret_env (an environment variable name) "
            "or credential_ref (e.g. 'keyring:sendpulse')",
            account=name,
        )
    ref = secret_env if secret_env is not None else str(credential_ref)
    check_credential_ref(ref, account=name)
    if "@" not in from_email:
        raise ConfigError(
            f"SendPulse account {name!r}: from_email={from_email!r} is not an address"
        )
    database = db if db is not None else open_database(url)
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
        if row is not None and row.kind != "sendpulse":
            raise ConfigError(
                f"sender account {name!r} exists as kind {row.kind!r}: pick another name",
                account=name,
            )
        if row is not None and row.from_email.lower() != from_email.lower():
            raise ConfigError(
                f"SendPulse account {name!r}: the sender address {row.from_email} cannot be "
                f"changed to {from_email}: create a new account for the new address",
                account=name,
            )
    settings = {"client_id": client_id, "base_url": base_url, "mode": "campaign"}
    with client_for_account(settings, ref, account=name, clock=clock) as client:
        client.token()  # refuses wrong credentials with SendPulse's message
        known = {str(x.get("email", "")).lower() for x in client.senders()}
    if from_email.lower() not in known:
        raise ConfigError(
            f"SendPulse account {name!r}: {from_email} is not a sender address in SendPulse "
            f"(it has: {', '.join(sorted(known)) or 'none'}); add and confirm it there first",
            account=name,
        )
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
        if row is None:
            row = SenderAccount(name=name, kind="sendpulse", from_email=from_email)
            s.add(row)
        row.from_name, row.settings, row.credential_ref = from_name, settings, ref
        s.flush()
        return {"id": row.id, "name": name, "kind": "sendpulse", "from_email": row.from_email}


# --------------------------------------------------------------------------- campaign mode


@dataclass(frozen=True)
class SendPulseResult:
    """What ``send_campaign_via_sendpulse`` did."""

    campaign: str
    book_id: int
    provider_campaign_id: int
    status: int
    status_text: str
    recipients: int
    batches: int
    draft: bool
    #: Seconds spent waiting for the 4-campaigns-per-hour limit.
    waited_s: float
    notes: tuple[str, ...] = ()


def _refuse_statements(text: str, part: str, template: str) -> None:
    """Refuse Jinja statements and comments: SendPulse would send them literally."""
    if _STATEMENT.search(text):
        raise TemplateError(
            f"template {template!r}, {part}: SendPulse bodies cannot contain Jinja statements "
            "or comments ({% ... %}, {# ... #}); keep only {{name}}, {{patronymic}}, {{surname}}",
            template=template,
            part=part,
        )


def _check_placeholders(text: str, part: str, template: str) -> None:
    from bulkmail_kernel.compose.checks import SENDPULSE_VARIABLES

    for match in _PLACEHOLDER.finditer(text):
        inner = match.group(1).strip()
        if inner not in SENDPULSE_VARIABLES:
            raise TemplateError(
                f"template {template!r}, {part}: {match.group(0)!r}: SendPulse substitutes only "
                "plain {{name}}, {{patronymic}} and {{surname}} (no filters or expressions)",
                template=template,
                part=part,
                variable=inner,
            )


def _recipients(database: Database, cid: int) -> pd.DataFrame:
    with database.session() as s:
        rows = s.execute(
            sa.select(
                Message.id,
                Message.contact_id,
                Message.contact_point_id,
                Message.recipient,
                Contact.first_name,
                Contact.last_name,
                Contact.patronymic,
                Contact.language,
            )
            .join(Contact, Contact.id == Message.contact_id, isouter=True)
            .where(
                Message.campaign_id == cid,
                Message.status.in_((MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)),
            )
            .order_by(Message.id)
        ).all()
    frame = pd.DataFrame(
        rows,
        columns=[
            "message_id",
            "contact_id",
            "contact_point_id",
            "address",
            "first_name",
            "last_name",
            "patronymic",
            "language",
        ],
    )
    for col in ("first_name", "last_name", "patronymic"):
        frame[col] = frame[col].fillna("")
    return frame


def _body(tmpl: Any, values: dict[str, Any], frame: pd.DataFrame, name: str) -> tuple[str, str]:
    """Check the template for SendPulse and return (subject, html) with SendPulse merge tags."""
    from bulkmail_kernel.compose.checks import check_template
    from bulkmail_kernel.compose.render import render

    problems = check_template(tmpl, frame, values=values, provider="sendpulse")
    if not problems.empty:
        listed = "; ".join(
            f"{p.part} {p.variable or ''}: {p.error}".strip() for p in problems.head(5).itertuples()
        )
        raise TemplateError(
            f"campaign {name!r}: the template cannot go through SendPulse: {listed}"
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            + "; use only {{name}}, {{patronymic}}, {{surname}} or send in SMTP mode",
            campaign=name,
        )
    for part in ("subject", "html"):
        source = getattr(tmpl, part) or ""
        _refuse_statements(source, part, tmpl.name)
        _check_placeholders(source, part, tmpl.name)
    if not tmpl.html:
        raise TemplateError(f"campaign {name!r}: SendPulse campaigns need an HTML body")
    # Rendering with the merge tags as values runs the same CSS inlining as SMTP mode
    # while leaving {{name}} etc. for SendPulse to fill per address-book entry.
    tags = {v: "{{" + v + "}}" for v in ("name", "patronymic", "surname")}
    row = {**tags, "first_name": tags["name"], "last_name": tags["surname"], "address": ""}
    rendered = render(tmpl, row, values=values)
    if rendered.inline_images or rendered.attachments:
        raise TemplateError(
            f"campaign {name!r}: SendPulse campaign bodies cannot carry embedded images or "
            "attachments: link images by https URL, or send in SMTP mode",
            campaign=name,
        )
    return rendered.subject, rendered.html or ""


def _set_provider_ref(database: Database, cid: int, **values: Any) -> dict[str, Any]:
    with database.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        ref = dict(c.provider_ref or {})
        sp = dict(ref.get("sendpulse") or {})
        sp.update(values)
        ref["sendpulse"] = sp
        c.provider_ref = ref
        return sp


def _recent_campaign_ages(database: Database, account_id: int, now: datetime) -> list[float]:
    """Ages (s) of campaigns this account created in SendPulse in the last hour, any process."""
    with database.session() as s:
        refs = s.scalars(
            sa.select(Campaign.provider_ref).where(Campaign.sender_account_id == account_id)
        ).all()
    ages = []
    for ref in refs:
        created = (ref or {}).get("sendpulse", {}).get("created_at")
        if created:
            age = (now - datetime.fromisoformat(created)).total_seconds()
            if 0 <= age < 3600:
                ages.append(age)
    return ages


def send_campaign_via_sendpulse(
    campaign: str | int,
    *,
    draft: bool = False,
    send_date: datetime | None = None,
    wait: bool = True,
    client: SendPulseClient | None = None,
    clock: Clock = SYSTEM_CLOCK,
    batch_size: int = 500,
    book_timeout_s: float = 900.0,
    progress: bool = True,
    db: Database | None = None,
    url: str | None = None,
) -> SendPulseResult:
    """Hand a registered campaign to SendPulse as an address book plus a campaign (or draft).

    Args:
        campaign: name or id of a registered campaign whose sender account is of kind sendpulse.
        draft: create only a draft, to be sent later from SendPulse's cabinet.
        send_date: schedule the SendPulse campaign (aware, not in the past).
        wait: when four campaigns went out in the last hour, wait for the next slot
            (saying so in the log and the result); False raises SendError instead.
        client: a SendPulse client (default: built from the sender account).
        clock: time source for the limits and the polling (tests pass a ManualClock).
        batch_size: addresses per request when filling the address book.
        book_timeout_s: how long to wait for SendPulse to process the address book.
        progress: show a progress bar while the address book is filled.
        db: an open database (default: ``open_database(url)``).
        url: the database URL when ``db`` is not given.

    The queued messages are marked ``sent`` (campaign) or ``removed`` with the draft's id
    (draft), each with an event; the provider ids and status go into ``provider_ref``.

    """
    database = db if db is not None else open_database(url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        sender = sender_of(s, c)
        cid, cname, values = c.id, c.name, dict(c.values or {})
        ref = dict((c.provider_ref or {}).get("sendpulse") or {})
        if sender.kind != "sendpulse":
            raise SendError(
                f"campaign {cname!r}: sender account {sender.name!r} is of kind {sender.kind!r}; "
                "campaign mode needs a sendpulse account (add_sendpulse_account)",
                campaign=cname,
            )
        if ref.get("campaign_id"):
            raise SendError(
                f"campaign {cname!r} was already handed to SendPulse as campaign "
                f"{ref['campaign_id']}; see sendpulse_report()",
                campaign=cname,
            )
        if c.status not in (
            CampaignStatus.REGISTERED.value,
            CampaignStatus.SCHEDULED.value,
            CampaignStatus.STOPPED.value,
        ):
            raise SendError(
                f"campaign {cname!r} is {c.status}: register() it first", campaign=cname
            )
        tmpl = template_of(c, None)
    frame = _recipients(database, cid)
    if frame.empty:
        raise SendError(f"campaign {cname!r} has no queued messages to hand over", campaign=cname)
    subject, html = _body(tmpl, values, frame, cname)
    own = client is None
    if client is None:
        client = client_for_account(
            sender.settings, sender.credential_ref, account=sender.name, clock=clock
        )
    notes: list[str] = []
    try:
        client.campaigns.seed(_recent_campaign_ages(database, sender.id, clock.now()))
        book_id = ref.get("book_id")
        batches = int(ref.get("batches") or 0)
        if not (book_id and ref.get("emails_added") == len(frame)):
            book_id = client.create_address_book(f"bulkmail {cname} #{cid}")
            _set_provider_ref(database, cid, book_id=book_id, emails_added=0)
            contacts = [
                {
                    "email": r.address,
                    "variables": {
                        "name": r.first_name,
                        "patronymic": r.patronymic,
                        "surname": r.last_name,
                    },
                }
                for r in frame.itertuples()
            ]
            batches = client.add_emails(book_id, contacts, batch_size=batch_size, progress=progress)
            _set_provider_ref(database, cid, emails_added=len(frame), batches=batches)
        else:
            notes.append(f"reused address book {book_id} from an earlier attempt")
        client.wait_for_address_book(book_id, timeout_s=book_timeout_s)
        wait_s = client.campaign_wait_s()
        if wait_s > 0:
            until = clock.now() + timedelta(seconds=wait_s)
            note = (
                f"SendPulse allows {client.campaigns.limit} campaigns per hour: campaign "
                f"{cname!r} waits {wait_s:.0f} s, until {until:%H:%M:%S} UTC"
            )
            if not wait:
                raise SendError(
                    note.replace("waits", "would wait")
                    + "; call again then (the address book is kept)",
                    campaign=cname,
                    wait_s=wait_s,
                )
            log.warning(note)
            notes.append(note)
        answer = client.create_campaign(
            sender_name=sender.from_name,
            sender_email=sender.from_email,
            subject=subject,
            html=html,
            list_id=book_id,
            name=cname,
            send_date=send_date,
            draft=draft,
        )
    except Exception as exc:
        message = getattr(exc, "message", str(exc))
        with database.session() as s:
            row = s.get(Campaign, cid)
            assert row is not None
            row.last_error = f"SendPulse: {message}"
        raise
    finally:
        if own:
            client.close()
    status = int(answer.get("status", 0))
    now = clock.now()
    _set_provider_ref(
        database,
        cid,
        campaign_id=int(answer["id"]),
        status=status,
        status_text=status_text(status),
        count=answer.get("count"),
        draft=draft,
        created_at=now.isoformat(),
        send_date=send_date.isoformat() if send_date else None,
    )
    _hand_over(database, cid, frame, int(answer["id"]), book_id, draft, now)
    log.info(
        "campaign %s: SendPulse %s %s (%s)",
        cname,
        "draft" if draft else "campaign",
        answer["id"],
        status_text(status),
    )
    return SendPulseResult(
        cname,
        int(book_id),
        int(answer["id"]),
        status,
        status_text(status),
        len(frame),
        batches,
        draft,
        wait_s,
        tuple(notes),
    )


def _hand_over(
    database: Database,
    cid: int,
    frame: pd.DataFrame,
    provider_id: int,
    book_id: int,
    draft: bool,
    now: datetime,
) -> None:
    """Mark the messages handed over and write one event each, in one transaction."""
    status = MessageStatus.REMOVED.value if draft else MessageStatus.SENT.value
    detail = (
        f"handed to SendPulse draft {provider_id}: send it from SendPulse's cabinet"
        if draft
        else f"handed to SendPulse campaign {provider_id}"
    )
    data = {"provider": "sendpulse", "campaign_id": provider_id, "book_id": book_id}
    with database.engine.begin() as conn:
        conn.execute(
            sa.update(Message)
            .where(Message.id == sa.bindparam("mid"))
            .values(
                status=status,
                sent_at=None if draft else now,
                provider_message_id=f"sendpulse:{provider_id}",
                last_error=detail if draft else "",
                updated_at=now,
            ),
            [{"mid": int(x)} for x in frame["message_id"]],
        )
        conn.execute(
            sa.insert(Event),
            [
                {
                    "kind": "handed_over" if draft else "sent",
                    "contact_id": None if pd.isna(r.contact_id) else int(r.contact_id),
                    "contact_point_id": None
                    if pd.isna(r.contact_point_id)
                    else int(r.contact_point_id),
                    "campaign_id": cid,
                    "message_id": int(r.message_id),
                    "detail": detail,
                    "data": data,
                    "occurred_at": now,
                }
                for r in frame.itertuples()
            ],
        )
        conn.execute(
            sa.update(Campaign)
            .where(Campaign.id == cid)
            .values(status=CampaignStatus.FINISHED.value, finished_at=now, last_error="")
        )
        conn.execute(
            sa.insert(Event).values(
                kind="finished", campaign_id=cid, detail=detail, data=data, occurred_at=now
            )
        )


def sendpulse_report(
    campaign: str | int,
    *,
    refresh: bool = True,
    client: SendPulseClient | None = None,
    clock: Clock = SYSTEM_CLOCK,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Return the campaign's SendPulse ids and status (asking SendPulse first when ``refresh``)."""
    database = db if db is not None else open_database(url)
    with database.session() as s:
        c = campaign_row(s, campaign)
        cid, cname = c.id, c.name
        ref = dict((c.provider_ref or {}).get("sendpulse") or {})
        sender = sender_of(s, c)
    if not ref.get("campaign_id"):
        raise SendError(
            f"campaign {cname!r} was not handed to SendPulse: send_campaign_via_sendpulse() first",
            campaign=cname,
        )
    if refresh:
        own = client is None
        if client is None:
            client = client_for_account(
                sender.settings, sender.credential_ref, account=sender.name, clock=clock
            )
        try:
            info = client.campaign(int(ref["campaign_id"]))
        finally:
            if own:
                client.close()
        ref = _set_provider_ref(
            database,
            cid,
            status=info.get("status"),
            status_text=status_text(info.get("status")),
            checked_at=clock.now().isoformat(),
        )
    return pd.DataFrame(
        [[cname] + [ref.get(k) for k in REF_FIELDS]], columns=["campaign", *REF_FIELDS]
    )

"""SMS through EuroSMS (API v3): a small signed client, a transport, and delivery reports.

Every request is signed: ``sgn = HMAC-SHA1(integration key, concatenation).hexdigest()``,
where the concatenation is ``sndr + rcpt + txt`` for ``send/one``, ``sndr + r1 + r2 + ...
+ txt`` for ``send/o2m`` and the message uuid for ``status/one``. The key never
travels; it comes from the environment or the keyring (``credential_ref``).

Outcomes, as the sending engine knows them:

- ``ENQUEUED`` → sent (the uuids of its segments become the provider message id);
- ``WRONG_NUMBER`` → failed, and the number is suppressed;
- ``WRONG_SIGNATURE`` / ``WRONG_IID`` / ``WRONG_SENDER`` / ``NO_BALANCE`` → fatal: the
  campaign stops and nothing is marked;
- ``TOO_MANY_MESSAGES``, HTTP 5xx, a refused or timed-out connection → deferred, retried;
- a connection that breaks after the request went out → unknown (EuroSMS may have
  queued it; resending blindly could charge and deliver twice).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pandas as pd
import phonenumbers
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.compose.sms import sms_segments
from bulkmail_kernel.db import (
    Campaign,
    Database,
    Event,
    Message,
    MessageStatus,
    SenderAccount,
    open_database,
)
from bulkmail_kernel.engine.throttle import SYSTEM_CLOCK, Clock
from bulkmail_kernel.exceptions import ConfigError, ProviderError, SendError
from bulkmail_kernel.transports import SendResult
from bulkmail_kernel.transports.credentials import check_credential_ref, resolve_secret

log = logging.getLogger("bulkmail")

DEFAULT_BASE_URL = "https://as.eurosms.com/api/v3/"
#: EuroSMS schedules in its own (Slovak) local time.
PROVIDER_TZ = ZoneInfo("Europe/Bratislava")

FATAL_CODES = frozenset({"WRONG_SIGNATURE", "WRONG_IID", "WRONG_SENDER", "NO_BALANCE"})
RETRY_CODES = frozenset({"TOO_MANY_MESSAGES"})
#: Delivery report states after which nothing more will happen.
DELIVERED = frozenset({"DELIVRD"})
UNDELIVERED = frozenset({"UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN"})

_IID = re.compile(r"^\d+-[A-Za-z0-9]{4,}$")
_DATE_LINE = re.compile(rb"\ADate: [^\r\n]*\r\n")
# uuids are joined into messages.provider_message_id (300 characters at most).
_PMID_MAX = 300


class EuroSmsError(ProviderError):
    """EuroSMS refused a request; ``err_code`` is its code (WRONG_NUMBER, NO_BALANCE, ...)."""

    def __init__(self, message: str, *, err_code: str, **fields: Any) -> None:
        super().__init__(message, err_code=err_code, **fields)
        self.err_code = err_code


def sign(key: str, *parts: str | int) -> str:
    """Return the EuroSMS signature: HMAC-SHA1 of the concatenated ``parts`` under ``key``."""
    data = "".join(str(p) for p in parts).encode("utf-8")
    return hmac.new(key.encode("utf-8"), data, hashlib.sha1).hexdigest()


def e164(number: str, region: str | None = None) -> str:
    """Return ``number`` in E.164 (``+421905123456``) or raise SendError naming it."""
    try:
        parsed = phonenumbers.parse(str(number), region or config.default_region())
    except phonenumbers.NumberParseException as exc:
        raise SendError(
            f"phone number {number!r}: {exc}; write it as +421...", number=number
        ) from exc
    if not phonenumbers.is_valid_number(parsed):
        raise SendError(
            f"phone number {number!r} is not a valid number; write it as +421...", number=number
        )
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def rcpt_number(number: str, region: str | None = None) -> int:
    """Return ``number`` as EuroSMS wants it: international digits, no ``+``, as an int."""
    return int(e164(number, region)[1:])


def sms_flags(text: str) -> int:
    """Return ``flgs`` for ``text``: 0 short, 2 long, 4 unicode short, 6 unicode long."""
    info = sms_segments(text)
    return (4 if info.encoding == "UCS-2" else 0) + (2 if info.segments > 1 else 0)


def _schedule(when: datetime) -> str:
    if when.tzinfo is None:
        raise ConfigError(f"SMS schedule {when!r} must be time-zone aware")
    return when.astimezone(PROVIDER_TZ).strftime("%Y-%m-%d %H:%M")


class EuroSmsClient:
    """A typed client for the EuroSMS v3 API with a configurable base URL."""

    def __init__(
        self,
        integration_id: str,
        key: str,
        sender: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 20.0,
        region: str | None = None,
    ) -> None:
        check_sender_id(sender)
        self.integration_id = integration_id
        self.sender = sender
        self.region = region
        self._key = key
        self._http = httpx.Client(base_url=base_url.rstrip("/") + "/", timeout=timeout_s)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def _answer(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or "err_code" not in data:
            raise EuroSmsError(
                f"EuroSMS {what}: HTTP {response.status_code} without a JSON answer: "
                f"{response.text[:200]!r}",
                err_code=f"HTTP_{response.status_code}",
                http_status=response.status_code,
            )
        return data

    def _raise(self, data: dict[str, Any], what: str, status: int) -> None:
        code = str(data.get("err_code"))
        desc = data.get("err_desc") or ""
        details = "; ".join(str(e) for e in data.get("err_list") or [])
        hint = {
            "WRONG_SIGNATURE": "check the integration key in the sender account's credential_ref",
            "WRONG_IID": "check the integration id (1-XXXXXX) of the sender account",
            "NO_BALANCE": "top up the EuroSMS credit",
            "WRONG_SENDER": "register the sender id with EuroSMS or pick an approved one",
        }.get(code, "")
        raise EuroSmsError(
            f"EuroSMS {what}: {code}"
            + (f" ({desc})" if desc else "")
            + (f": {details}" if details else "")
            + (f"; {hint}" if hint else ""),
            err_code=code,
            http_status=status,
            err_desc=desc,
        )

    def send_one(
        self, number: str, text: str, *, schedule: datetime | None = None
    ) -> dict[str, Any]:
        """Send ``text`` to ``number``; return the answer (``uuid``: one id per segment)."""
        rcpt = rcpt_number(number, self.region)
        body: dict[str, Any] = {
            "iid": self.integration_id,
            "sndr": self.sender,
            "rcpt": rcpt,
            "txt": text,
            "flgs": sms_flags(text),
        }
        if schedule is not None:
            body["sch"] = _schedule(schedule)
        body["sgn"] = sign(self._key, self.sender, rcpt, text)
        response = self._http.post("send/one", json=body)
        data = self._answer(response, f"send/one to +{rcpt}")
        if data["err_code"] != "ENQUEUED":
            self._raise(data, f"send/one to +{rcpt}", response.status_code)
        return data

    def send_many(self, recipients: Iterable[tuple[str, str]], text: str) -> dict[str, Any]:
        """Send one ``text`` to many ``(number, our id)`` pairs through ``send/o2m``.

        Returns the answer: ``accepted`` ``[{r, f, i}]`` and ``wrong_numbers`` ``[{r, f}]``,
        where ``f`` is our id echoed back.
        """
        rcpts: list[dict[str, Any]] = [
            {"r": rcpt_number(n, self.region), "f": str(ref)} for n, ref in recipients
        ]
        if not rcpts:
            raise SendError("EuroSMS send/o2m: no recipients given")
        body = {
            "iid": self.integration_id,
            "sndr": self.sender,
            "txt": text,
            "flgs": sms_flags(text),
            "rsp": "full",
            "rcpts": rcpts,
            "sgn": sign(self._key, self.sender, *(r["r"] for r in rcpts), text),
        }
        response = self._http.post("send/o2m", json=body)
        data = self._answer(response, f"send/o2m to {len(rcpts)} numbers")
        if data["err_code"] not in ("ENQUEUED", "OK"):
            self._raise(data, f"send/o2m to {len(rcpts)} numbers", response.status_code)
        return data

    def delivery_reports(self, uuid: str) -> list[dict[str, Any]]:
        """Return the delivery reports (``dlrs``) of the message segment ``uuid``."""
        response = self._http.get(
            f"status/one/{uuid}",
            params={"iid": self.integration_id, "sgn": sign(self._key, uuid)},
        )
        data = self._answer(response, f"status/one/{uuid}")
        if data["err_code"] != "OK":
            self._raise(data, f"status/one/{uuid}", response.status_code)
        return list(data.get("dlrs") or [])


def check_sender_id(sender: str) -> None:
    """Refuse a sender id EuroSMS would not show: 1-11 characters, or a phone number."""
    digits = sender.removeprefix("+")
    if digits.isdigit() and len(digits) <= 15:
        return
    if not 1 <= len(sender) <= 11 or not re.fullmatch(r"[A-Za-z0-9 .&_-]+", sender):
        raise ConfigError(
            f"EuroSMS sender id {sender!r}: give 1-11 letters, digits, space or . & _ - "
            "(or a phone number)",
            sender=sender,
        )


def client_from_settings(
    settings: dict[str, Any], credential_ref: str, *, account: str = "eurosms"
) -> EuroSmsClient:
    """Build a client from a sender account's ``settings`` and the secret it names."""
    iid = str(settings.get("integration_id") or "")
    sender = str(settings.get("sender_id") or "")
    if not iid or not sender:
        raise ConfigError(
            f"EuroSMS sender account {account!r}: settings need 'integration_id' and 'sender_id'",
            account=account,
        )
    key = resolve_secret(credential_ref, user=iid, account=account)
    return EuroSmsClient(
        iid, key, sender, base_url=str(settings.get("base_url") or DEFAULT_BASE_URL)
    )


class EuroSmsTransport:
    """The SMS channel's transport: one ``send/one`` per outbox message."""

    def __init__(self, client: EuroSmsClient) -> None:
        self.client = client

    @classmethod
    def from_settings(
        cls, settings: dict[str, Any], credential_ref: str, *, account: str = "eurosms"
    ) -> EuroSmsTransport:
        """Return a transport for a sender account of kind eurosms."""
        return cls(client_from_settings(settings, credential_ref, account=account))

    def send(self, message: bytes, *, mail_from: str, rcpt_to: str) -> SendResult:
        """Send the SMS text ``message`` (UTF-8) to the E.164 number ``rcpt_to``."""
        # The engine sends SMS bodies bare, but a caller reusing the e-mail path may prefix
        # a Date header; an SMS has no headers, so such a line is never part of the text.
        raw = _DATE_LINE.sub(b"", message, count=1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return SendResult("failed", None, f"SMS to {rcpt_to}: the text is not UTF-8: {exc}")
        if not text.strip():
            return SendResult("failed", None, f"SMS to {rcpt_to}: the text is empty")
        try:
            rcpt_number(rcpt_to, self.client.region)
        except SendError as exc:
            return SendResult("failed", None, exc.message, suppress=True)
        try:
            data = self.client.send_one(rcpt_to, text)
        except EuroSmsError as exc:
            return _classify(exc)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return SendResult("deferred", None, f"EuroSMS not reachable: {exc}")
        except httpx.TransportError as exc:
            return SendResult(
                "unknown", None, f"connection to EuroSMS broke after the request was sent: {exc}"
            )
        return SendResult(
            "sent",
            None,
            f"EuroSMS {data['err_code']}: {len(data.get('uuid') or [])} segment(s)",
            provider_message_id=_join_uuids(data.get("uuid") or []),
        )

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def _classify(exc: EuroSmsError) -> SendResult:
    code = exc.err_code
    if code in FATAL_CODES:
        return SendResult("fatal", None, exc.message)
    if code == "WRONG_NUMBER":
        return SendResult("failed", None, exc.message, suppress=True)
    if code in RETRY_CODES or code.startswith("HTTP_5") or exc.fields.get("http_status", 0) >= 500:
        return SendResult("deferred", None, exc.message)
    return SendResult("failed", None, exc.message)


def _join_uuids(uuids: list[Any]) -> str:
    joined = ""
    for u in uuids:
        candidate = f"{joined},{u}" if joined else str(u)
        if len(candidate) > _PMID_MAX:
            log.warning(
                "EuroSMS: %d segment ids do not fit in the outbox; keeping the first ones",
                len(uuids),
            )
            break
        joined = candidate
    return joined


# --------------------------------------------------------------------------- accounts


def add_eurosms_account(
    name: str,
    *,
    integration_id: str,
    sender_id: str,
    credential_ref: str,
    from_name: str = "",
    base_url: str = DEFAULT_BASE_URL,
    db: Database | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Create or update the EuroSMS sender account ``name``; the key stays in env/keyring.

    ``credential_ref`` names the environment variable (or ``keyring:SERVICE``) holding
    the integration key; it must resolve now, so a typo shows here and not mid-campaign.
    """
    if not _IID.match(integration_id):
        raise ConfigError(
            f"EuroSMS account {name!r}: integration_id={integration_id!r}: give the id EuroSMS "
            "shows for the integration, like 1-AB12CD",
            account=name,
        )
    check_sender_id(sender_id)
    check_credential_ref(credential_ref, account=name)
    resolve_secret(credential_ref, user=integration_id, account=name)
    database = db if db is not None else open_database(url)
    settings = {"integration_id": integration_id, "sender_id": sender_id, "base_url": base_url}
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
        if row is None:
            row = SenderAccount(name=name, kind="eurosms")
            s.add(row)
        elif row.kind != "eurosms":
            raise ConfigError(
                f"sender account {name!r} exists as kind {row.kind!r}: pick another name",
                account=name,
            )
        row.from_name, row.settings, row.credential_ref = from_name, settings, credential_ref
        s.flush()
        return {"id": row.id, "name": row.name, "kind": row.kind, **settings}


# --------------------------------------------------------------------------- delivery reports

_DLR_COLUMNS = ["message_id", "recipient", "uuids", "dlr", "event"]


def _dlr_outcome(states: list[str]) -> tuple[str, str | None]:
    """Return the message's overall state and the event to store (None: still pending)."""
    if states and all(s in DELIVERED for s in states):
        return "DELIVRD", "delivered"
    final_bad = [s for s in states if s in UNDELIVERED]
    if final_bad:
        return final_bad[0], "bounced"
    return (states[0] if states else "PENDING"), None


def poll_delivery_reports(
    campaign: str | int,
    *,
    client: EuroSmsClient | None = None,
    clock: Clock = SYSTEM_CLOCK,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Fetch delivery reports for the campaign's sent SMS and store final ones as events.

    A message is ``delivered`` when every segment is DELIVRD and ``bounced`` when any
    segment ends UNDELIV/EXPIRED/REJECTD; messages still en route are listed with
    event None and asked again next time. Returns one row per message polled.
    """
    database = db if db is not None else open_database(url)
    column = Campaign.id if isinstance(campaign, int) else Campaign.name
    with database.session() as s:
        c = s.scalars(sa.select(Campaign).where(column == campaign)).one_or_none()
        if c is None:
            raise SendError(f"campaign {campaign!r} does not exist", campaign=campaign)
        cid, cname = c.id, c.name
        account = s.get(SenderAccount, c.sender_account_id) if c.sender_account_id else None
        done = set(
            s.scalars(
                sa.select(Event.message_id).where(
                    Event.campaign_id == cid, Event.kind.in_(("delivered", "bounced"))
                )
            )
        )
        rows = s.execute(
            sa.select(
                Message.id,
                Message.contact_id,
                Message.contact_point_id,
                Message.recipient,
                Message.provider_message_id,
            )
            .where(
                Message.campaign_id == cid,
                Message.status == MessageStatus.SENT.value,
                Message.provider_message_id.is_not(None),
            )
            .order_by(Message.id)
        ).all()
    own = client is None
    if client is None:
        if account is None or account.kind != "eurosms":
            raise SendError(
                f"campaign {cname!r} is not sent through a EuroSMS account: nothing to poll",
                campaign=cname,
            )
        client = client_from_settings(
            account.settings, account.credential_ref, account=account.name
        )
    out: list[list[Any]] = []
    events: list[dict[str, Any]] = []
    now = clock.now()
    try:
        for mid, contact_id, point_id, recipient, pmid in rows:
            if mid in done:
                continue
            uuids = [u for u in str(pmid).split(",") if u]
            reports = {u: client.delivery_reports(u) for u in uuids}
            states = [str((r[-1] if r else {}).get("dlr", "PENDING")) for r in reports.values()]
            state, kind = _dlr_outcome(states)
            out.append([mid, recipient, ",".join(uuids), state, kind])
            if kind is not None:
                events.append(
                    {
                        "kind": kind,
                        "contact_id": contact_id,
                        "contact_point_id": point_id,
                        "campaign_id": cid,
                        "message_id": mid,
                        "detail": f"EuroSMS delivery report: {state}",
                        "data": {"provider": "eurosms", "dlr": state, "reports": reports},
                        "occurred_at": now,
                    }
                )
    finally:
        if own:
            client.close()
    if events:
        with database.engine.begin() as conn:
            conn.execute(sa.insert(Event), events)
    log.info(
        "campaign %s: %d delivery reports stored, %d pending",
        cname,
        len(events),
        len(out) - len(events),
    )
    frame = pd.DataFrame(out, columns=_DLR_COLUMNS)
    frame["message_id"] = frame["message_id"].astype("int64")
    return frame

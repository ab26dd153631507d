"""SMS through EuroSMS (API v3): a small signed client and the SMS channel's transport.

Every request is signed: ``sgn = HMAC-SHA1(integration key, concatenation).hexdigest()``,
where the concatenation is ``sndr + rcpt + txt`` for ``send/one``, ``sndr + r1 + r2 + ...
+ txt`` for ``send/o2m`` and the message uuid for ``status/one``; the key never travels
(it comes from the environment or the keyring, ``credential_ref``). The transport
classifies each answer: ``ENQUEUED`` is sent (the segments' uuids become the provider
message id); ``WRONG_NUMBER`` failed, the number suppressed; ``WRONG_SIGNATURE``,
``WRONG_IID``, ``WRONG_SENDER``, ``NO_BALANCE`` fatal (the campaign stops, nothing is
marked); ``TOO_MANY_MESSAGES``, HTTP 5xx, a refused or timed-out connection deferred; a
connection that breaks after the request went out unknown (EuroSMS may have queued it,
and resending blindly could charge and deliver twice). Delivery reports are stored by
:mod:`bulkmail_kernel.providers.eurosms`; nothing here touches the database.
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
import phonenumbers

from bulkmail_kernel import config
from bulkmail_kernel.compose.sms import sms_segments
from bulkmail_kernel.exceptions import ConfigError, ProviderError, SendError
from bulkmail_kernel.transports import SendResult
from bulkmail_kernel.transports.credentials import resolve_secret

log = logging.getLogger("bulkmail")

DEFAULT_BASE_URL = "https://as.eurosms.com/api/v3/"
#: EuroSMS schedules in its own (Slovak) local time.
PROVIDER_TZ = ZoneInfo("Europe/Bratislava")

FATAL_CODES = frozenset({"WRONG_SIGNATURE", "WRONG_IID", "WRONG_SENDER", "NO_BALANCE"})
RETRY_CODES = frozenset({"TOO_MANY_MESSAGES"})

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
        try:
            text = message.decode("utf-8")
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

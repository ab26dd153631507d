"""A local EuroSMS v3: checks HMAC-SHA1 signatures, answers in the documented shapes, keeps DLRs.

Its own signature code (not the product's) so a wrong concatenation in the client shows.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import serve

GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXT = set("\f^{}\\[~]|€")


def _segments(text: str) -> int:
    if all(c in GSM7 or c in GSM7_EXT for c in text):
        units, single, split = sum(2 if c in GSM7_EXT else 1 for c in text), 160, 153
    else:
        units, single, split = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else -(-units // split)


def _sgn(key: str, *parts: Any) -> str:
    return hmac.new(key.encode(), "".join(map(str, parts)).encode(), hashlib.sha1).hexdigest()


@dataclass
class SentSms:
    uuids: list[str]
    rcpt: int
    txt: str
    flgs: int
    sndr: str
    ref: str | None = None


@dataclass
class EuroSmsFake:
    """State of the fake: accounts, credit, invalid numbers, what was sent, and the DLRs."""

    accounts: dict[str, str] = field(default_factory=lambda: {"1-AB12CD": "integration-key"})
    senders: set[str] = field(default_factory=lambda: {"Shop", "BULKMAIL"})
    #: Credits left; each segment costs one.
    balance: int = 1000
    wrong_numbers: set[int] = field(default_factory=set)
    #: Answer 503 to this many send requests first (an outage).
    outage: int = 0
    sent: list[SentSms] = field(default_factory=list)
    dlrs: dict[str, str] = field(default_factory=dict)
    #: Delivery state that SMS to a number will report as soon as they are sent.
    delivery: dict[int, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    base_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_dlr(self, rcpt: int, state: str) -> None:
        """Set the delivery state of every segment sent to ``rcpt``."""
        for sms in self.sent:
            if sms.rcpt == rcpt:
                for u in sms.uuids:
                    self.dlrs[u] = state

    # -- endpoints -------------------------------------------------------------

    def _error(self, code: str, desc: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"err_code": code, "err_desc": desc, "err_list": []}, status)

    def _check_account(self, body: dict[str, Any]) -> JSONResponse | str:
        key = self.accounts.get(str(body.get("iid")))
        if key is None:
            return self._error("WRONG_IID", "Unknown integration id")
        return key

    def _enqueue(self, rcpt: int, txt: str, flgs: int, sndr: str, ref: str | None) -> SentSms:
        n = _segments(txt)
        sms = SentSms([uuidlib.uuid4().hex for _ in range(n)], rcpt, txt, flgs, sndr, ref)
        self.balance -= n
        for u in sms.uuids:
            self.dlrs[u] = self.delivery.get(rcpt, "ENROUTE")
        self.sent.append(sms)
        return sms

    def _valid_number(self, r: Any) -> bool:
        return isinstance(r, int) and 7 <= len(str(r)) <= 15 and r not in self.wrong_numbers

    async def send_one(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self._lock:
            self.requests.append(("send/one", body))
            if self.outage > 0:
                self.outage -= 1
                return JSONResponse({"message": "Service Unavailable"}, 503)
            missing = [k for k in ("iid", "sndr", "rcpt", "txt", "flgs", "sgn") if k not in body]
            if missing:
                return self._error("WRONG_PARAMS", f"missing {', '.join(missing)}")
            key = self._check_account(body)
            if isinstance(key, JSONResponse):
                return key
            if not isinstance(body["rcpt"], int):
                return self._error("WRONG_PARAMS", "rcpt must be a number")
            expected = _sgn(key, body["sndr"], body["rcpt"], body["txt"])
            if not hmac.compare_digest(expected, str(body["sgn"])):
                return self._error("WRONG_SIGNATURE", "Signature mismatch")
            if body["sndr"] not in self.senders:
                return self._error("WRONG_SENDER", "Sender not allowed")
            if not self._valid_number(body["rcpt"]):
                return self._error("WRONG_NUMBER", "Wrong recipient number")
            if _segments(body["txt"]) > 10:
                return self._error("MSG_TOO_LONG", "Message too long")
            if self.balance < _segments(body["txt"]):
                return self._error("NO_BALANCE", "Not enough credit")
            sms = self._enqueue(body["rcpt"], body["txt"], body["flgs"], body["sndr"], None)
        return JSONResponse(
            {"err_code": "ENQUEUED", "err_desc": "Enqueued", "uuid": sms.uuids, "err_list": []}
        )

    async def send_o2m(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self._lock:
            self.requests.append(("send/o2m", body))
            key = self._check_account(body)
            if isinstance(key, JSONResponse):
                return key
            rcpts = body.get("rcpts") or []
            if len(rcpts) > 1000:
                return self._error("TOO_MANY_MESSAGES", "At most 1000 recipients per request")
            expected = _sgn(key, body["sndr"], *(r["r"] for r in rcpts), body["txt"])
            if not hmac.compare_digest(expected, str(body.get("sgn"))):
                return self._error("WRONG_SIGNATURE", "Signature mismatch")
            if body["sndr"] not in self.senders:
                return self._error("WRONG_SENDER", "Sender not allowed")
            accepted, wrong = [], []
            for r in rcpts:
                if not self._valid_number(r["r"]):
                    wrong.append({"r": r["r"], "f": r.get("f")})
                    continue
                sms = self._enqueue(r["r"], body["txt"], body["flgs"], body["sndr"], r.get("f"))
                accepted.append({"r": r["r"], "f": r.get("f"), "i": sms.uuids})
            group = uuidlib.uuid4().hex
        return JSONResponse(
            {
                "err_code": "ENQUEUED",
                "group_id": group,
                "accepted": accepted,
                "wrong_numbers": wrong,
                "err_list": [],
            }
        )

    async def status_one(self, request: Request) -> JSONResponse:
        uuid = request.path_params["uuid"]
        params = dict(request.query_params)
        with self._lock:
            self.requests.append(("status/one", {"uuid": uuid, **params}))
            key = self._check_account(params)
            if isinstance(key, JSONResponse):
                return key
            if not hmac.compare_digest(_sgn(key, uuid), params.get("sgn", "")):
                return self._error("WRONG_SIGNATURE", "Signature mismatch")
            if uuid not in self.dlrs:
                return self._error("WRONG_UUID", "Unknown message", 404)
            rcpt = next(s.rcpt for s in self.sent if uuid in s.uuids)
            state = self.dlrs[uuid]
        return JSONResponse(
            {
                "err_code": "OK",
                "dlrs": [{"rcpt": rcpt, "dlr": state, "dlr_date": "2025-01-06 10:00:00"}],
            }
        )

    def app(self) -> Starlette:
        """Return the ASGI application serving ``/api/v3/...``."""
        return Starlette(
            routes=[
                Route("/api/v3/send/one", self.send_one, methods=["POST"]),
                Route("/api/v3/send/o2m", self.send_o2m, methods=["POST"]),
                Route("/api/v3/status/one/{uuid}", self.status_one, methods=["GET"]),
            ]
        )


@contextmanager
def running_eurosms(fake: EuroSmsFake | None = None) -> Iterator[EuroSmsFake]:
    """Start the fake and yield it with ``base_url`` set (…/api/v3/)."""
    fake = fake or EuroSmsFake()
    with serve(fake.app()) as base:
        fake.base_url = f"{base}/api/v3/"
        yield fake

"""``bulkmail sink``: a local SMTP server that keeps every message it accepts.

It listens on 127.0.0.1, stores each accepted message as an .eml file, writes one
line per message to ``sink.log`` in the same folder and counts the connections
it sees. Tests use it as the real server at the other end of the wire; users
point a sender account at it (security ``none``) to rehearse a campaign.

It can also be told to misbehave for chosen addresses (4xx then success, 5xx) or
to demand a password, which is how the tests show retries, bounces and a
refused login on a real SMTP conversation.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

log = logging.getLogger("bulkmail")

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class SinkMessage:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    path: Path
    message_id: str


@dataclass
class SinkRules:
    """How the sink answers: scripted replies for some recipients, a sender refusal, a login."""

    #: Replies given to RCPT TO for an address, one per attempt; once used up it accepts.
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    #: A reply to every MAIL FROM (e.g. "550 5.7.1 sender rejected"); None accepts.
    mail_reply: str | None = None
    #: user -> password; when set, MAIL FROM is refused until the client logs in.
    users: dict[str, str] | None = None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (aiosmtpd's Controller refuses port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        rules = self.sink.rules
        if rules.users is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if rules.mail_reply:
            return rules.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.sink.lock:
            scripted = self.sink.rules.rcpt_replies.get(address.lower())
            reply = scripted.pop(0) if scripted else None
        if reply:
            self.sink.refusals.append((address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        self.sink.store(envelope.mail_from or "", tuple(envelope.rcpt_tos), data)
        return "250 2.0.0 OK queued"


class _CountingSMTP(SMTP):
    def __init__(self, sink: Sink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def connection_made(self, transport: Any) -> None:
        if self.transport is None:  # a STARTTLS upgrade calls this again on the same connection
            with self._sink.lock:
                self._sink.connections += 1
        super().connection_made(transport)


class _Controller(Controller):
    def __init__(self, sink: Sink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        self._sink = sink

    def factory(self) -> SMTP:
        return _CountingSMTP(self._sink, self.handler, **self.SMTP_kwargs)


class Sink:
    """A running local SMTP server; see :func:`start_sink`."""

    def __init__(self, folder: Path, host: str, port: int, rules: SinkRules) -> None:
        self.folder = folder
        self.host = host
        self.port = port
        self.rules = rules
        self.messages: list[SinkMessage] = []
        self.refusals: list[tuple[str, str]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self._log = (folder / "sink.log").open("a", encoding="utf-8")
        kwargs: dict[str, Any] = {}
        if rules.users is not None:
            kwargs["authenticator"] = self._authenticate
            # Loopback only and a test fixture: AUTH without TLS is what lets smtplib log in.
            kwargs["auth_require_tls"] = False
        self._controller = _Controller(self, hostname=host, port=port, **kwargs)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        users = self.rules.users or {}
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode()
            if users.get(user) == auth_data.password.decode():
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    def store(self, mail_from: str, rcpt_tos: tuple[str, ...], data: bytes) -> SinkMessage:
        """Keep one accepted message: an .eml file, a log line and an entry in ``messages``."""
        found = _MESSAGE_ID.search(data.split(b"\r\n\r\n", 1)[0])
        message_id = found.group(1).decode("ascii", "replace") if found else ""
        with self.lock:
            n = len(self.messages) + 1
            path = self.folder / f"{n:06d}.eml"
            path.write_bytes(data)
            msg = SinkMessage(mail_from, rcpt_tos, data, path, message_id)
            self.messages.append(msg)
            self._log.write(
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\taccepted\t{message_id}\t{mail_from}\t"
                f"{','.join(rcpt_tos)}\t{path.name}\n"
            )
            self._log.flush()
        log.debug("sink: accepted %s for %s", message_id, ",".join(rcpt_tos))
        return msg

    def start(self) -> Sink:
        """Start serving in a background thread."""
        self._controller.start()
        with self.lock:
            # Controller.start() opens one connection itself to check the server is up.
            self.connections = 0
        log.info("sink: listening on %s:%d, storing into %s", self.host, self.port, self.folder)
        return self

    def stop(self) -> None:
        """Stop serving and close the log."""
        self._controller.stop()
        self._log.close()

    def received_by(self, address: str) -> list[SinkMessage]:
        """Return the messages accepted for ``address``."""
        return [m for m in self.messages if address in m.rcpt_tos]

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sink(
    folder: str | Path,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    rcpt_replies: dict[str, Iterable[str]] | None = None,
    mail_reply: str | None = None,
    users: dict[str, str] | None = None,
) -> Sink:
    """Start a local SMTP sink that stores every accepted message in ``folder``."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    rules = SinkRules(
        rcpt_replies={k.lower(): list(v) for k, v in (rcpt_replies or {}).items()},
        mail_reply=mail_reply,
        users=users,
    )
    return Sink(path, host, port or free_port(host), rules).start()


def serve_sink(folder: str | Path, port: int = 2525, *, host: str = "127.0.0.1") -> None:
    """Run the sink in the foreground until interrupted (``bulkmail sink``)."""
    sink = start_sink(folder, port, host=host)
    print(f"bulkmail sink: listening on {host}:{sink.port}, storing into {sink.folder}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
        print(f"bulkmail sink: {len(sink.messages)} messages, {sink.connections} connections")

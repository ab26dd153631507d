"""``bulkmail sink``: a local SMTP server that keeps every message it accepts.

It listens on 127.0.0.1, stores each accepted message as an .eml file, writes one
line per message to ``sink.log`` in the same folder and counts the connections
it sees. Tests use it as the real server at the other end of the wire; users
point a sender account at it (security ``none``) to rehearse a campaign.

It can also be told to misbehave for chosen addresses (4xx then success, 5xx), to
refuse every recipient or every message as a blocklisted relay would
(``rcpt_reply="554 5.7.1 ... blocked using zen.spamhaus.org"``), to answer the content
of chosen messages with a given code (``data_replies``, ``data_reply``), or to demand a
password, which is how the tests show retries, bounces, the circuit breaker and a
refused login on a real SMTP conversation. Without ``users`` it offers no AUTH at all.

Like Postfix and most relays it offers PIPELINING (RFC 2920), so a client may send
MAIL, RCPT and DATA in one write, and answers such a group in one write;
``pipelining=False`` makes it a server that does not offer it. Three of aiosmtpd's
costs per message are replaced by faster equivalents, because the sink is the far
end of every throughput benchmark: the DATA reader (one buffer search, not a Python
loop per line), the parser of plain ``<local@domain>`` paths (a regex, not the e-mail
header parser), and the answers held for a pipelined group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

log = logging.getLogger("bulkmail")

_END = b"\r\n.\r\n"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
# <dot-atom@dot-atom> and what follows it (the ESMTP parameters): RFC 5321 4.1.2's
# common case, ASCII only; quoted local parts, UTF-8 and <> go to aiosmtpd's parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>(?!\s*\()\s*(.*)\Z",
    re.DOTALL,
)
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
    #: A reply to every RCPT TO not scripted above (a blocklisted client: "554 5.7.1 ...").
    rcpt_reply: str | None = None
    #: Replies given after the content of a message to an address, one per attempt.
    data_replies: dict[str, list[str]] = field(default_factory=dict)
    #: A reply after the content of every message not scripted above; None accepts.
    data_reply: str | None = None
    #: A reply to every MAIL FROM (e.g. "550 5.7.1 sender rejected"); None accepts.
    mail_reply: str | None = None
    #: user -> password; when set, MAIL FROM is refused until the client logs in.
    users: dict[str, str] | None = None
    #: Offer PIPELINING in the EHLO answer (RFC 2920), as Postfix and most relays do.
    pipelining: bool = True
    #: Seconds each message's content is held before it is stored and answered: a slow
    #: relay, so a test can stop a sender while a message is on the wire.
    delay_s: float = 0.0


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (aiosmtpd's Controller refuses port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # the hook takes this over from aiosmtpd
        if not self.sink.rules.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

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
            reply = scripted.pop(0) if scripted else getattr(self.sink.rules, "rcpt_reply", None)
        if reply and not reply.startswith("2"):
            self.sink.refusals.append((address, reply))
            return reply
        envelope.rcpt_tos.append(address)  # a scripted 2xx takes it, as "250 OK" does
        return reply or "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # getattr: tests script the rules with objects of their own.
        delay_s = getattr(self.sink.rules, "delay_s", 0.0)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        data = envelope.original_content or b""
        refused = self.sink.data_refusal(envelope.rcpt_tos)
        if refused:
            return refused
        self.sink.store(envelope.mail_from or "", tuple(envelope.rcpt_tos), data)
        return "250 2.0.0 OK queued"


class _CountingSMTP(SMTP):
    def __init__(self, sink: Sink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink
        self._held: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        if self.transport is None:  # a STARTTLS upgrade calls this again on the same connection
            with self._sink.lock:
                self._sink.connections += 1
        super().connection_made(transport)

    async def push(self, status: str | bytes) -> None:
        """Answer; while pipelined commands are already waiting, hold the answers for one write.

        As Postfix does, answers to a pipelined group leave together once the group is
        read: one write (and one wake-up of the client) instead of one per command.
        """
        response = (
            status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
            if isinstance(status, str)
            else status
        )
        self._held.append(response + b"\r\n")
        # StreamReader keeps what arrived in _buffer (CPython since 3.4); if that ever
        # changes, getattr finds nothing and every answer is written at once, as before.
        waiting = getattr(self._reader, "_buffer", b"")
        if b"\n" in waiting and len(self._held) < 100:
            return  # the next command is already here: it will flush us
        self._writer.write(b"".join(self._held))
        self._held.clear()
        await self._writer.drain()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Parse the path of MAIL/RCPT: plain <local@domain> here, anything else by aiosmtpd.

        aiosmtpd runs every path through the e-mail header parser, the largest single
        cost of the sink per message; a dot-atom path parses the same by a regex.
        """
        simple = _SIMPLE_PATH.match(arg)
        if simple is not None:
            local = simple.group(1).rpartition("@")[0]
            if not (self.local_part_limit and len(local) > self.local_part_limit):
                return simple.group(1), simple.group(2)
        return super()._getaddr(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """Take the message content: aiosmtpd's checks and answers, a faster reader."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, error = await self._read_data()
        except asyncio.CancelledError:
            self._writer.close()  # the connection was reset during DATA
            raise
        if error:
            await self.push(error)
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes, str]:
        """Read up to the lone dot; return the content un-dot-stuffed, or an error answer.

        aiosmtpd's own DATA awaits ``readuntil`` and runs a Python loop for every line,
        ~250 us of a 4 KB message on this machine. Here ``readuntil(CRLF "." CRLF)`` finds
        the end with one search of the buffer. The stream's limit (aiosmtpd sets it to
        the line length limit) only means a long message is taken in pieces, and a piece
        may end inside the terminator: then just enough bytes to complete it are read
        (never more, so a pipelined next command stays unread).
        """
        data = bytearray()
        size = 0
        limit = self.data_size_limit
        while True:
            # The data starts a line: as if a CRLF came before it.
            tail = bytes(data[-5:]) if len(data) >= 5 else b"\r\n" + bytes(data)
            if tail.endswith(_END):
                break
            straddle = next((k for k in (4, 3, 2, 1) if tail.endswith(_END[:k])), 0)
            if straddle:
                piece = await self._reader.readexactly(len(_END) - straddle)
            else:
                try:
                    piece = await self._reader.readuntil(_END)
                except asyncio.LimitOverrunError as exc:
                    piece = await self._reader.read(exc.consumed)
            data += piece
            size += len(piece)
            if limit and size > limit + len(_END):
                del data[:-5]  # keep reading to the dot, but not the data
        if limit and size > limit + len(_END):
            return b"", "552 Error: Too much mail data"
        content = bytes(data[:-3])  # the final ".\r\n"; the CRLF before it is the last line's
        if content and max(map(len, content.split(b"\r\n"))) + 2 > self.line_length_limit:
            return b"", "500 Line too long (see RFC5321 4.5.3.1.6)"
        # RFC 5321 4.5.2: a line that starts with a dot loses that one dot.
        content = content.replace(b"\r\n.", b"\r\n")
        return (content[1:] if content.startswith(b".") else content), ""


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
        self._folder_str = str(folder)
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

    def data_refusal(self, rcpt_tos: list[str]) -> str | None:
        """Return the reply scripted for the content of a message to ``rcpt_tos``, or None."""
        rules = self.rules
        with self.lock:
            for address in rcpt_tos:
                scripted = getattr(rules, "data_replies", {}).get(address.lower())
                if scripted:
                    reply: str | None = scripted.pop(0)
                    break
            else:
                reply = getattr(rules, "data_reply", None)
            if reply:
                self.refusals.append((",".join(rcpt_tos), reply))
        return reply

    def store(self, mail_from: str, rcpt_tos: tuple[str, ...], data: bytes) -> SinkMessage:
        """Keep one accepted message: an .eml file, a log line and an entry in ``messages``."""
        end = data.find(b"\r\n\r\n")
        found = _MESSAGE_ID.search(data, 0, end if end >= 0 else len(data))
        message_id = found.group(1).decode("ascii", "replace") if found else ""
        with self.lock:
            n = len(self.messages) + 1
            name = f"{n:06d}.eml"
            # os.open/os.write rather than Path.write_bytes: a third of the cost, per message.
            fd = os.open(os.path.join(self._folder_str, name), _CREATE, 0o644)
            try:
                view = memoryview(data)
                while view:  # os.write may take less than all of it
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            path = self.folder / name
            msg = SinkMessage(mail_from, rcpt_tos, data, path, message_id)
            self.messages.append(msg)
            self._log.write(
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\taccepted\t{message_id}\t{mail_from}\t"
                f"{','.join(rcpt_tos)}\t{name}\n"
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
    rcpt_reply: str | None = None,
    data_replies: dict[str, Iterable[str]] | None = None,
    data_reply: str | None = None,
    mail_reply: str | None = None,
    users: dict[str, str] | None = None,
    pipelining: bool = True,
    delay_s: float = 0.0,
) -> Sink:
    """Start a local SMTP sink that stores every accepted message in ``folder``.

    ``delay_s`` holds each message that long before answering, as a slow relay would.
    ``rcpt_replies`` / ``data_replies`` script the answers to RCPT / to the content for
    some addresses (one per attempt, then it accepts); ``rcpt_reply`` / ``data_reply``
    answer every other recipient / message (None accepts). ``users`` demands a login;
    without it the sink offers no AUTH.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    rules = SinkRules(
        rcpt_replies={k.lower(): list(v) for k, v in (rcpt_replies or {}).items()},
        rcpt_reply=rcpt_reply,
        data_replies={k.lower(): list(v) for k, v in (data_replies or {}).items()},
        data_reply=data_reply,
        mail_reply=mail_reply,
        users=users,
        pipelining=pipelining,
        delay_s=delay_s,
    )
    return Sink(path, host, port or free_port(host), rules).start()

"""The SMTP transport's conversation: pipelined or step by step, in step after every refusal."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bulkmail_kernel.servers.sink import start_sink
from bulkmail_kernel.transports import SendResult
from bulkmail_kernel.transports.smtp import SmtpTransport


def msg(i: int) -> bytes:
    return f"Message-ID: <m.{i}@shop.sk>\r\nSubject: #{i}\r\n\r\nHello {i}\r\n.dot\r\n".encode()


def _counting_writes(t: SmtpTransport) -> list[bytes]:
    """Record the transport's writes on its connection for messages (not EHLO, QUIT)."""
    t.open()
    smtp = t._yag.smtp
    writes: list[bytes] = []
    real = smtp.send

    def send(data: bytes | str) -> None:
        raw = data if isinstance(data, bytes) else data.encode()
        if not raw.lower().startswith((b"ehlo", b"quit")):
            writes.append(raw)
        real(data)

    smtp.send = send
    return writes


@pytest.mark.parametrize("pipelining", [True, False])
def test_refusals_keep_the_conversation_in_step(tmp_path: Path, pipelining: bool) -> None:
    replies = {"soft@x.sk": ["451 4.7.1 later"], "hard@x.sk": ["550 5.1.1 no such user"]}
    to = ["a@x.sk", "soft@x.sk", "hard@x.sk", "soft@x.sk", "b@x.sk"]
    with start_sink(tmp_path, rcpt_replies=replies, pipelining=pipelining) as sink:
        t = SmtpTransport("127.0.0.1", sink.port, security="none")
        results = [t.send(msg(i), mail_from="news@shop.sk", rcpt_to=r) for i, r in enumerate(to)]
        t.close()
    assert [(r.status, r.code) for r in results] == [
        ("sent", 250),
        ("deferred", 451),
        ("failed", 550),
        ("sent", 250),
        ("sent", 250),
    ]
    assert results[2].suppress
    assert not results[1].suppress
    # Exactly the accepted ones arrived, each with its own content, over one connection.
    assert [(m.rcpt_tos, m.message_id) for m in sink.messages] == [
        (("a@x.sk",), "<m.0@shop.sk>"),
        (("soft@x.sk",), "<m.3@shop.sk>"),
        (("b@x.sk",), "<m.4@shop.sk>"),
    ]
    assert sink.messages[2].data == msg(4)
    assert sink.connections == 1


@pytest.mark.parametrize(("pipelining", "writes_per_message"), [(True, 2), (False, 4)])
def test_pipelining_sends_mail_rcpt_data_in_one_write(
    tmp_path: Path, pipelining: bool, writes_per_message: int
) -> None:
    with start_sink(tmp_path, pipelining=pipelining) as sink:
        t = SmtpTransport("127.0.0.1", sink.port, security="none")
        writes = _counting_writes(t)
        for i in range(3):
            assert t.send(msg(i), mail_from="news@shop.sk", rcpt_to=f"u{i}@x.sk").status == "sent"
        t.close()
    assert len(writes) == 3 * writes_per_message
    if pipelining:
        assert writes[0] == b"MAIL FROM:<news@shop.sk>\r\nRCPT TO:<u0@x.sk>\r\nDATA\r\n"
    assert [m.data for m in sink.messages] == [msg(i) for i in range(3)]


@pytest.mark.parametrize("pipelining", [True, False])
def test_refused_sender_is_fatal_and_sends_nothing(tmp_path: Path, pipelining: bool) -> None:
    with start_sink(
        tmp_path, mail_reply="550 5.7.1 sender rejected", pipelining=pipelining
    ) as sink:
        t = SmtpTransport("127.0.0.1", sink.port, security="none")
        first = t.send(msg(1), mail_from="news@shop.sk", rcpt_to="a@x.sk")
        again = t.send(msg(2), mail_from="news@shop.sk", rcpt_to="b@x.sk")  # still in step
        t.close()
    assert (first.status, first.code) == ("fatal", 550)
    assert (again.status, again.code) == ("fatal", 550)
    assert sink.messages == []


def test_utf8_address_and_8bit_body_get_their_options(tmp_path: Path) -> None:
    body = "Subject: =?utf-8?q?x?=\r\n\r\nDobrý deň\r\n".encode()
    with start_sink(tmp_path) as sink:
        t = SmtpTransport("127.0.0.1", sink.port, security="none")
        writes = _counting_writes(t)
        assert t.send(body, mail_from="news@shop.sk", rcpt_to="jožo@x.sk").status == "sent"
        t.close()
    assert writes[0].startswith(b"MAIL FROM:<news@shop.sk> BODY=8BITMIME SMTPUTF8\r\n")
    assert sink.messages[0].rcpt_tos == ("jožo@x.sk",)
    assert sink.messages[0].data == body


@pytest.mark.parametrize("bad", ["a@x.sk\r\nRCPT TO:<evil@x.sk>", "a@x.sk>", "a\x00@x.sk"])
def test_an_address_that_would_bend_the_command_is_failed_unsent(tmp_path: Path, bad: str) -> None:
    with start_sink(tmp_path) as sink:
        t = SmtpTransport("127.0.0.1", sink.port, security="none")
        result = t.send(msg(1), mail_from="news@shop.sk", rcpt_to=bad)
        ok = t.send(msg(2), mail_from="news@shop.sk", rcpt_to="b@x.sk")
        t.close()
    assert result.status == "failed"
    assert "not usable" in result.detail
    assert ok.status == "sent"
    assert [m.rcpt_tos for m in sink.messages] == [("b@x.sk",)]


def test_a_sender_address_that_would_bend_the_command_stops_the_campaign(tmp_path: Path) -> None:
    with start_sink(tmp_path) as sink:
        t = SmtpTransport("127.0.0.1", sink.port, security="none")
        result = t.send(msg(1), mail_from="news@shop.sk>\r\nRCPT TO:<x@y.sk", rcpt_to="b@x.sk")
        t.close()
    assert result.status == "fatal"
    assert "sender account" in result.detail
    assert sink.messages == []


# ---------------------------------------------------------------- a scripted server


class Scripted:
    """A one-connection SMTP server on loopback that answers from a script and keeps what it read.

    For the answers aiosmtpd will not give: DATA taken after every RCPT was refused, a
    421 that closes the connection in the middle of a pipelined group.
    """

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 scripted ESMTP\r\n")
            in_data = False
            for line in lines:
                self.received.append(line)
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        conn.sendall(b"250 OK\r\n")
                    continue
                reply = self.answer(line)
                if reply is None:  # hang up
                    return
                conn.sendall(reply)
                in_data = reply.startswith(b"354")

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[bytes], bytes | None]], Scripted]]:
    servers: list[Scripted] = []

    def start(answer: Callable[[bytes], bytes | None]) -> Scripted:
        servers.append(Scripted(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _ehlo(line: bytes) -> bytes | None:
    if line.upper().startswith(b"EHLO"):
        return b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    return None


def test_data_taken_after_refused_rcpt_gets_a_lone_dot_not_the_content(
    scripted,  # type: ignore[no-untyped-def]
) -> None:
    def answer(line: bytes) -> bytes | None:
        verb = line[:4].upper()
        replies = {b"MAIL": b"250 OK\r\n", b"RCPT": b"550 5.1.1 no such user\r\n"}
        replies |= {b"DATA": b"354 go on\r\n", b"QUIT": b"221 bye\r\n"}
        return _ehlo(line) or replies.get(verb, b"500 what\r\n")

    server = scripted(answer)
    t = SmtpTransport("127.0.0.1", server.port, security="none", timeout_s=5)
    result = t.send(msg(1), mail_from="news@shop.sk", rcpt_to="gone@x.sk")
    t.close()
    server.thread.join(5)
    assert (result.status, result.code, result.suppress) == ("failed", 550, True)
    sent = b"".join(server.received)
    assert b"Hello 1" not in sent  # the content never went
    assert sent.endswith(b"DATA\r\n.\r\nquit\r\n")


def test_421_in_a_pipelined_group_is_deferred_and_the_next_send_reconnects(
    scripted,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    def closing(line: bytes) -> bytes | None:
        if line[:4].upper() == b"MAIL":
            return b"421 4.7.0 too many connections\r\n"
        return _ehlo(line)

    server = scripted(closing)
    t = SmtpTransport("127.0.0.1", server.port, security="none", timeout_s=5)
    result: SendResult = t.send(msg(1), mail_from="news@shop.sk", rcpt_to="a@x.sk")
    assert (result.status, result.code) == ("deferred", 421)
    assert t._yag is None  # dropped: the next send logs in anew
    with start_sink(tmp_path) as sink:
        t.port = sink.port  # the relay is back (here: another server)
        assert t.send(msg(2), mail_from="news@shop.sk", rcpt_to="a@x.sk").status == "sent"
        t.close()
    assert sink.connections == 1
    assert t.logins == 2

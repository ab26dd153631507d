"""The local SMTP sink: stores, logs, counts connections, misbehaves on request."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.servers.sink import free_port, start_sink
from bulkmail_kernel.transports import classify_smtp
from bulkmail_kernel.transports.smtp import SmtpTransport, resolve_password

MSG = b"Message-ID: <a.1@shop.sk>\r\nSubject: hi\r\n\r\nHello\r\n"


def test_stores_logs_and_counts_connections(tmp_path: Path) -> None:
    with start_sink(tmp_path / "box") as sink:
        for _ in range(2):
            with smtplib.SMTP("127.0.0.1", sink.port) as client:
                client.sendmail("a@shop.sk", ["b@x.sk"], MSG)
        assert sink.connections == 2
        assert [m.message_id for m in sink.messages] == ["<a.1@shop.sk>"] * 2
        assert sink.messages[0].path.read_bytes() == MSG
        log_lines = (tmp_path / "box" / "sink.log").read_text().splitlines()
        assert len(log_lines) == 2
        assert "\taccepted\t<a.1@shop.sk>\ta@shop.sk\tb@x.sk\t000001.eml" in log_lines[0]


def test_scripted_replies_then_accepts(tmp_path: Path) -> None:
    with start_sink(tmp_path, rcpt_replies={"B@x.sk": ["451 4.7.1 later"]}) as sink:
        t = SmtpTransport("127.0.0.1", sink.port, security="none")
        first = t.send(MSG, mail_from="a@shop.sk", rcpt_to="b@x.sk")
        second = t.send(MSG, mail_from="a@shop.sk", rcpt_to="b@x.sk")
        t.close()
        assert (first.status, first.code, second.status) == ("deferred", 451, "sent")
        assert sink.connections == 1


def test_refuses_every_recipient_or_message_when_told(tmp_path: Path) -> None:
    blocked = "554 5.7.1 Client host [127.0.0.1] blocked using zen.spamhaus.org"
    with start_sink(
        tmp_path,
        rcpt_reply=blocked,
        rcpt_replies={"ok@x.sk": ["250 OK"]},
        data_replies={"ok@x.sk": ["554 5.7.1 rejected as spam"]},
    ) as sink:
        t = SmtpTransport("127.0.0.1", sink.port, security="none")
        at_rcpt = t.send(MSG, mail_from="a@shop.sk", rcpt_to="b@x.sk")
        after_data = t.send(MSG, mail_from="a@shop.sk", rcpt_to="ok@x.sk")
        sink.rules.rcpt_reply = None  # the IP is delisted: the same connection goes on
        sink.rules.data_reply = "552 5.3.4 Message too big for system"
        too_big = t.send(MSG, mail_from="a@shop.sk", rcpt_to="c@x.sk")
        sink.rules.data_reply = None
        taken = t.send(MSG, mail_from="a@shop.sk", rcpt_to="c@x.sk")
        t.close()
    assert (at_rcpt.status, at_rcpt.code, at_rcpt.category) == ("failed", 554, "policy")
    assert (after_data.status, after_data.category) == ("failed", "policy")
    assert (too_big.status, too_big.code, too_big.category) == ("failed", 552, "size")
    assert taken.status == "sent"
    assert [r for r, _ in sink.refusals] == ["b@x.sk", "ok@x.sk", "c@x.sk"]
    assert [m.rcpt_tos for m in sink.messages] == [("c@x.sk",)]
    assert sink.connections == 1


def test_login_required_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_sink(tmp_path, users={"shop": "s3cret"}) as sink:
        monkeypatch.setenv("PW", "s3cret")
        t = SmtpTransport("127.0.0.1", sink.port, security="none", user="shop", credential_ref="PW")
        t.open()
        assert t.send(MSG, mail_from="a@shop.sk", rcpt_to="b@x.sk").status == "sent"
        t.close()
        anonymous = SmtpTransport("127.0.0.1", sink.port, security="none")
        result = anonymous.send(MSG, mail_from="a@shop.sk", rcpt_to="b@x.sk")
        anonymous.close()
        assert (result.status, result.code) == ("fatal", 530)
        monkeypatch.setenv("PW", "wrong")
        with pytest.raises(SendError, match="refused") as err:
            SmtpTransport(
                "127.0.0.1", sink.port, security="none", user="shop", credential_ref="PW"
            ).open()
        assert err.value.fields == {"code": 535, "fatal": True}


def test_no_keyring_and_no_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PW", raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    with pytest.raises(ConfigError, match="NOPE_PW"):
        resolve_password("shop@shop.sk", "NOPE_PW")


def test_unreachable_server_is_deferred_not_failed() -> None:
    t = SmtpTransport("127.0.0.1", free_port(), security="none", timeout_s=2)
    result = t.send(MSG, mail_from="a@shop.sk", rcpt_to="b@x.sk")
    assert result.status == "deferred"


@pytest.mark.parametrize(
    ("code", "text", "stage", "status", "suppress"),
    [
        (250, "ok", "data", "sent", False),
        (451, "4.3.0 later", "rcpt", "deferred", False),
        (421, "4.7.0 too many connections", "mail", "deferred", False),
        (550, "5.1.1 no such user", "rcpt", "failed", True),
        (554, "5.7.1 spam", "data", "failed", False),
        (550, "5.1.1 unknown mailbox", "data", "failed", True),
        (553, "5.7.1 sender not allowed", "mail", "fatal", False),
        (535, "5.7.8 bad credentials", "rcpt", "fatal", False),
    ],
)
def test_classification(code: int, text: str, stage: str, status: str, suppress: bool) -> None:
    result = classify_smtp(code, text, stage=stage)  # type: ignore[arg-type]
    assert (result.status, result.suppress) == (status, suppress)


def _wire(content: bytes) -> bytes:
    """Return what a message looks like after the sink un-stuffs it: CRLF lines, CRLF at the end."""
    content = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return content if content.endswith(b"\r\n") else content + b"\r\n"


DOTTY = [
    b"Subject: one line only",
    b"Subject: dots\r\n\r\n.\r\n..\r\n...x\r\nends with a dot.\r\n.\r\nlast",
    b".starts with a dot\r\n\r\nbody.\r\n",
    b"Subject: long\r\n\r\n" + b"QUJD" * 240 + b"\r\n" + (b"ZGVm" * 240 + b"\r\n") * 200,
    b"Subject: crlf dot crlf inside a line\r\n\r\nx\r\n. not the end\r\n.\r\n.",
]


@pytest.mark.parametrize("content", DOTTY)
def test_content_arrives_byte_for_byte(tmp_path: Path, content: bytes) -> None:
    # smtplib dot-stuffs; the sink's own DATA reader must undo exactly that.
    with start_sink(tmp_path) as sink, smtplib.SMTP("127.0.0.1", sink.port) as client:
        client.sendmail("a@shop.sk", ["b@x.sk"], content)
        client.sendmail("a@shop.sk", ["c@x.sk"], MSG)  # the connection is still in step
    assert [m.data for m in sink.messages] == [_wire(content), MSG]
    assert [m.rcpt_tos for m in sink.messages] == [("b@x.sk",), ("c@x.sk",)]


def test_pipelined_commands_and_the_next_transaction_after_the_dot(tmp_path: Path) -> None:
    with start_sink(tmp_path) as sink, smtplib.SMTP("127.0.0.1", sink.port) as client:
        client.ehlo()
        assert client.has_extn("pipelining")
        client.send(b"MAIL FROM:<a@shop.sk>\r\nRCPT TO:<b@x.sk>\r\nDATA\r\n")
        assert [client.getreply()[0] for _ in range(3)] == [250, 250, 354]
        # RFC 2920: the content may start a group; the next transaction follows the dot.
        client.send(MSG + b".\r\nMAIL FROM:<a@shop.sk>\r\nRCPT TO:<c@x.sk>\r\nDATA\r\n")
        assert [client.getreply()[0] for _ in range(4)] == [250, 250, 250, 354]
        client.send(b"Subject: second\r\n\r\n..dot\r\n.\r\n")
        assert client.getreply()[0] == 250
    assert [(m.rcpt_tos, m.data) for m in sink.messages] == [
        (("b@x.sk",), MSG),
        (("c@x.sk",), b"Subject: second\r\n\r\n.dot\r\n"),
    ]


def test_overlong_line_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    with start_sink(tmp_path) as sink, smtplib.SMTP("127.0.0.1", sink.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("a@shop.sk", ["b@x.sk"], b"Subject: x\r\n\r\n" + b"y" * 1200)
        assert err.value.smtp_code == 500
        client.sendmail("a@shop.sk", ["b@x.sk"], MSG)
    assert [m.data for m in sink.messages] == [MSG]


def test_pipelining_can_be_switched_off(tmp_path: Path) -> None:
    with (
        start_sink(tmp_path, pipelining=False) as sink,
        smtplib.SMTP("127.0.0.1", sink.port) as client,
    ):
        client.ehlo()
        assert not client.has_extn("pipelining")
        assert client.has_extn("8bitmime")


PATHS = [
    "<b@x.sk>",
    "<b@x.sk> SIZE=1234 BODY=8BITMIME",
    "<b@x.sk>   SIZE=1 ",
    "<b@x.sk> (a comment) SIZE=1",
    "<b@x.sk>\tBODY=8BITMIME",
    "<first.last+tag@mail.x-y.example.net>",
    "<o'brien@x.sk>",
    "<user{1}@sk.example.net>",
    '<"quoted local"@x.sk>',
    "<jožo@x.sk>",
    "<>",
    "<b@x.sk",
    "<a..b@x.sk>",
    "<.a@x.sk>",
    "<a@-x.sk>",
    "<a@x.sk.>",
    "b@x.sk",
    " <b@x.sk>",
    "<@relay.sk:b@x.sk>",
]


@pytest.mark.parametrize("arg", PATHS)
def test_fast_path_parsing_agrees_with_aiosmtpd(tmp_path: Path, arg: str) -> None:
    from aiosmtpd.smtp import SMTP

    with start_sink(tmp_path) as sink:
        server = sink._controller.factory()
        assert server._getaddr(arg) == SMTP._getaddr(server, arg)


def test_fast_path_takes_the_plain_paths_and_leaves_the_rest() -> None:
    from bulkmail_kernel.servers.sink import _SIMPLE_PATH

    taken = [p for p in PATHS if _SIMPLE_PATH.match(p)]
    assert taken == [
        "<b@x.sk>",
        "<b@x.sk> SIZE=1234 BODY=8BITMIME",
        "<b@x.sk>   SIZE=1 ",
        "<b@x.sk>\tBODY=8BITMIME",
        "<first.last+tag@mail.x-y.example.net>",
        "<o'brien@x.sk>",
        "<user{1}@sk.example.net>",
    ]

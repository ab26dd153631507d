"""The preview's "Send a test" button: the previewed message, through the campaign, to the sink."""

from __future__ import annotations

import email
import email.policy
import html
import re
from email.message import EmailMessage
from typing import Any

import pandas as pd
import pytest

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns.preview import campaign_preview
from bulkmail_kernel.campaigns.samples import account_test_addresses
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.servers.sink import Sink, free_port
from bulkmail_kernel.widgets.preview import (
    FRAME_MAX_HEIGHT,
    PreviewPanel,
    preview,
    preview_html,
    preview_test_send,
)

TESTERS = ["me@test.sk", "boss@test.sk"]


def _campaign(database: dbmod.Database, port: int, test_addresses: Any = TESTERS) -> pd.DataFrame:
    """Import three people, save a sink account and create campaign "c" from invitation_sk."""
    people = pd.DataFrame(
        {
            "first_name": ["Ján", "Ольга"],
            "last_name": ["Novák", "Иванова"],
            "email": ["jan@a.sk", "olga@a.sk"],
            "mailing_allowed": ["yes", "yes"],
            "language": ["sk", "ru"],
            "gender": ["m", "f"],
        }
    )
    import_contacts(people, db=database, progress=False)
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "unsubscribe_url": "https://shop.sk/u?t={token}",
    }
    if test_addresses is not None:
        settings["test_addresses"] = test_addresses
    bm.add_sender_account(
        "sink",
        kind="smtp",
        from_email="news@shop.sk",
        from_name="Obchod",
        settings=settings,
        db=database,
        check=False,  # the closed-port case saves an account that cannot log in
    )
    template = bm.load_template("invitation_sk")
    bm.create_campaign(
        "c", sender="sink", template=template, values=dict(template.sample), db=database
    )
    return contacts_frame(database)


def _parts(data: bytes) -> list[tuple[str, Any]]:
    """Return a message's decoded parts, its unsubscribe token made neutral."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    token = re.findall(r"t=([A-Za-z0-9_-]+)", str(msg.get("List-Unsubscribe")))[0]
    out: list[tuple[str, Any]] = []
    for part in msg.walk():
        if part.is_multipart():
            out.append(("multipart", part.get_content_type()))
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if part.get_content_maintype() == "text":
            out.append((part.get_content_type(), payload.decode("utf-8").replace(token, "TOKEN")))
        else:
            out.append((part.get_content_type(), (part.get("Content-ID"), payload)))
    return out


def test_the_button_sends_the_previewed_message_to_the_test_addresses(
    sqlite_url: str, sink: Sink
) -> None:
    database = dbmod.open_database(sqlite_url)
    people = _campaign(database, sink.port)
    panel = preview(campaign="c", frame=people, db=database)
    assert isinstance(panel, PreviewPanel)
    assert panel.test_button.layout.display is None  # shown for a campaign
    panel.next_button.click()  # the second recipient: the test is of whom the preview shows
    panel.test_button.click()
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(TESTERS)
    shown = campaign_preview("c", people, 1, db=database)
    for message in sink.messages:
        sent = email.message_from_bytes(message.data, policy=email.policy.default)
        assert sent["Subject"] == "[TEST] " + shown.rendered.subject
        assert "Иванова" in shown.rendered.subject or "Иванова" in (shown.rendered.text or "")
        # The same parts, logo included, apart from the token (Date/Message-ID are headers).
        assert _parts(message.data) == _parts(shown.data)
        assert any(kind == "image/png" for kind, _ in _parts(message.data))
    result = html.unescape(panel.test_result.value)
    assert "[TEST] " + shown.rendered.subject in result
    for address in TESTERS:
        assert re.search(rf"{re.escape(address)}</td><td[^>]*><b>sent</b>", result)
    assert "bm-test-send-error" not in result
    panel.next_button.click()  # another recipient: the earlier outcome is not theirs
    assert panel.test_result.value == ""
    assert not panel.test_button.disabled


def test_a_refused_address_shows_with_the_servers_answer(sqlite_url: str, sink: Sink) -> None:
    database = dbmod.open_database(sqlite_url)
    people = _campaign(database, sink.port)
    sink.rules.rcpt_replies["boss@test.sk"] = ["550 5.1.1 <boss@test.sk>: no such user"]
    result = html.unescape(preview_test_send("c", people, 0, db=database))
    assert [m.rcpt_tos for m in sink.messages] == [("me@test.sk",)]
    assert re.search(r"me@test.sk</td><td[^>]*><b>sent</b>", result)
    assert re.search(r"boss@test.sk</td><td[^>]*><b>refused \(\w+\)</b>", result)
    assert "no such user" in result


def test_no_test_address_is_one_line_naming_the_account(sqlite_url: str, sink: Sink) -> None:
    database = dbmod.open_database(sqlite_url)
    people = _campaign(database, sink.port, test_addresses=None)
    panel = preview(campaign="c", frame=people, db=database)
    panel.test_button.click()
    assert sink.messages == []
    result = html.unescape(panel.test_result.value)
    assert "bm-test-send-error" in result
    assert "no test address" in result
    assert "settings['test_addresses']" in result
    assert "'sink'" in result
    assert "Traceback" not in result
    assert result.count("<p") == 1


def test_an_account_that_cannot_connect_is_one_line(sqlite_url: str) -> None:
    database = dbmod.open_database(sqlite_url)
    people = _campaign(database, free_port())  # nothing listens there
    result = html.unescape(preview_test_send("c", people, 0, db=database))
    assert "bm-test-send-error" in result
    assert result.count("<p") == 1
    assert "Not sent: SMTP 127.0.0.1:" in result
    assert "cannot connect" in result
    assert "check host, port and security" in result


def test_a_template_preview_has_no_test_button() -> None:
    template = bm.load_template("invitation_sk")
    frame = pd.DataFrame({"first_name": ["Ján"], "last_name": ["Novák"], "gender": ["m"]})
    panel = preview(template, frame, values=dict(template.sample))
    assert panel.test_button.layout.display == "none"
    panel.send_test()
    assert "needs a campaign" in panel.test_result.value


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["a@x.sk", " b@x.sk "], ["a@x.sk", "b@x.sk"]),
        ("a@x.sk, b@x.sk", ["a@x.sk", "b@x.sk"]),
        (None, []),
        ("", []),
    ],
)
def test_account_test_addresses_take_a_list_or_a_comma_separated_string(
    given: Any, expected: list[str]
) -> None:
    assert account_test_addresses({"test_addresses": given}) == expected


def test_the_frame_fits_its_content_from_the_page_not_from_the_email() -> None:
    template = bm.load_template("invitation_sk")
    frame = pd.DataFrame({"first_name": ["Ján"], "last_name": ["Novák"], "gender": ["m"]})
    out = preview_html(bm.render(template, frame.iloc[0], values=dict(template.sample)))
    # Scripts inside the e-mail stay off; the page's handler may read its height.
    assert 'sandbox="allow-same-origin"' in out
    assert "allow-scripts" not in out
    handler = html.unescape(out.split('onload="', 1)[1].split('"', 1)[0])
    assert "scrollHeight" in handler
    assert str(FRAME_MAX_HEIGHT) in handler


def test_the_cli_sends_to_the_accounts_test_addresses_without_to(
    sqlite_url: str, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    from bulkmail_kernel.cli import main

    database = dbmod.open_database(sqlite_url)
    people = _campaign(database, sink.port)
    bm.register("c", people, db=database)  # samples are rendered for registered recipients
    assert main(["test-send", "c", "--csv", "--db", sqlite_url]) == 0
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(TESTERS)
    assert "boss@test.sk" in capsys.readouterr().out
    bm.add_sender_account(
        "sink",
        kind="smtp",
        from_email="news@shop.sk",
        settings={"host": "127.0.0.1", "port": sink.port, "security": "none"},
        db=database,
        check=False,
    )
    assert main(["test-send", "c", "--db", sqlite_url]) == 2
    assert "no test address" in capsys.readouterr().err

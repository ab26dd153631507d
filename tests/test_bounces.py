"""Bounce parsing over real server notifications, and processing against a real Dovecot."""

from __future__ import annotations

import email
import email.policy
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from dovecot_support import Imap

import bulkmail_kernel as cm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel import send
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.db import ContactPoint, Event, Message, MessageBody, Suppression
from bulkmail_kernel.deliverability.bounces import parse_bounce, parse_bounces
from bulkmail_kernel.deliverability.classify import classify_message
from bulkmail_kernel.deliverability.mailbox import process_mailbox, same_address
from bulkmail_kernel.exceptions import ConfigError, ProviderError
from bulkmail_kernel.servers.sink import Sink
from bulkmail_kernel.widgets.monitor import rate_html

BOUNCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "bounces"
if not BOUNCES.is_dir():  # the checkout may sit elsewhere than /work/main
    BOUNCES = Path("/work/shared/data/bounces")

#: file -> [(recipient, status, permanent)] as a human reads each notification.
EXPECTED: dict[str, list[tuple[str, str, bool]] | None] = {
    # "Status: 5.0.0" with "Diagnostic-Code: 5.1.0 ...": the stated specific code wins.
    "lhost-amazonses-01.eml": [("shironeko@example.co.jp", "5.1.0", True)],
    "lhost-exchange2007-01.eml": [("mikeneko@example.co.jp", "5.1.1", True)],
    "lhost-exim-01.eml": [("kijitora@example.ed.jp", "5.7.0", True)],
    "lhost-gmail-01.eml": [("userunknown@example.jp", "5.1.1", True)],
    "lhost-mailru-01.eml": [("kijitora@example.jp", "5.1.1", True)],
    "lhost-office365-01.eml": [("kijitora@example.com", "5.1.10", True)],
    "lhost-postfix-04.eml": [("kijitora@example.co.jp", "5.1.1", True)],
    "lhost-postfix-08.eml": [("kijitora@example.com", "4.4.1", False)],
    "lhost-postfix-13.eml": [
        ("kijitora@example.jp", "5.2.1", True),
        ("noraneko@example.jp", "5.2.2", True),
    ],
    "lhost-qmail-01.eml": [("kijitora@example.ne.jp", "5.5.0", True)],
    "lhost-sendmail-01.eml": [("userunknown@bouncehammer.jp", "5.1.1", True)],
    "lhost-yahoo-01.eml": [("kijitora@example.org", "5.1.1", True)],
    "not-a-bounce-01.eml": None,
    "rfc3464-01.eml": [("userunknown@bouncehammer.jp", "5.1.1", True)],
    "rhost-google-01.eml": [("shironeko@example.ne.jp", "5.2.1", True)],
}


def _files() -> list[Path]:
    return sorted(BOUNCES.glob("*.eml"))


def test_every_shared_bounce_file_is_covered() -> None:
    assert {p.name for p in _files()} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_bounce(name: str) -> None:
    info = parse_bounce((BOUNCES / name).read_bytes())
    expected = EXPECTED[name]
    if expected is None:
        assert info is None
        return
    assert info is not None
    got = [(r.recipient, r.status, r.permanent) for r in info.recipients]
    assert got == expected
    assert info.recipient == expected[0][0]
    assert info.status == expected[0][1]
    assert info.permanent is expected[0][2]


def test_original_message_ids_come_from_the_returned_copy_not_the_notification() -> None:
    ses = parse_bounce((BOUNCES / "lhost-amazonses-01.eml").read_bytes())
    assert ses is not None
    assert ses.original_message_ids == (
        "<000001321defbd2a-788e31c8-2be1-422f-a8d4-cf7765cc9ed7-000000@email.amazonses.com>",
    )
    # Office 365 quotes the original headers as text; Google's report has a broken boundary.
    o365 = parse_bounce((BOUNCES / "lhost-office365-01.eml").read_bytes())
    assert o365 is not None
    assert o365.original_message_ids == ("<FFFFFFFF.EEEEEEEE@example.ed.jp>",)
    google = parse_bounce((BOUNCES / "rhost-google-01.eml").read_bytes())
    assert google is not None
    assert google.original_message_ids == (
        "<201305110000000000000.r4B003v000000@mail4.example.co.jp>",
    )


def test_verp_return_path_names_the_recipient() -> None:
    raw = (BOUNCES / "lhost-qmail-01.eml").read_bytes()
    raw = raw.replace(
        b"Delivered-To: nekochan@example.jp", b"Delivered-To: bounces+jan=a.sk@shop.sk", 1
    )
    info = parse_bounce(raw)
    assert info is not None
    assert info.verp_recipient == "jan@a.sk"


def test_several_failed_recipients_come_in_the_order_the_text_names_them() -> None:
    # flufl.bounce answers with a set; the first recipient must not depend on hashing.
    sample = Path(__file__).parent / "data" / "bounces" / "sisimai-unseen" / "email-exim-02.eml"
    code = (
        "import sys; from pathlib import Path;"
        "from bulkmail_kernel.deliverability.bounces import parse_bounce;"
        "info = parse_bounce(Path(sys.argv[1]).read_bytes());"
        "print(' '.join(f'{r.recipient}={r.status}' for r in info.recipients))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code, str(sample)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3", "4")
    }
    assert seen == {"kijitora@example.jp=5.1.1 sabatora@example.jp=5.2.1"}


def test_an_ordinary_reply_is_not_a_bounce() -> None:
    reply = textwrap.dedent(
        """\
        From: Ján Novák <jan@a.sk>
        To: news@shop.sk
        Subject: Re: Novinky 5.1.1
        Message-ID: <r1@a.sk>

        Ďakujem, 550 5.1.1 je len číslo v texte.
        """
    ).encode()
    assert parse_bounce(reply) is None


def test_a_version_number_is_no_status_and_labelled_lines_name_who_failed() -> None:
    # A virus gateway writes to sender and recipient alike: its "Recipient:" line names
    # who failed even when it is the notice's addressee, its "Sender:" line is us, and the
    # scanner's "v4.3.20" is a version, not the status 4.3.20.
    notice = textwrap.dedent(
        """\
        From: Mail Delivery Subsystem <MAILER-DAEMON@gw.a.sk>
        To: <eva@a.sk>
        Subject: Message Bounced - Virus Infection

        There were problems delivering your message to the following recipient:

        <eva@a.sk>

        Sender:    <news@shop.sk>
        Recipient: <eva@a.sk>

        The original message was NOT delivered to the recipient.
        Scan engine v4.3.20 for Win32.
        """
    ).encode()
    found = classify_message(notice)
    assert (found.kind, found.recipient) == ("hard_bounce", "eva@a.sk")
    assert str(found.status).startswith("5")


def test_a_microsoft_jmrp_report_is_a_complaint() -> None:
    # Outlook.com's Junk Mail Reporting Program attaches the reported message, stamped
    # with the mailbox that complained; it has no feedback-report part.
    report = textwrap.dedent(
        """\
        From: staff@hotmail.com
        To: arf@shop.sk
        Subject: complaint about message from 192.0.2.1
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="b"

        --b
        Content-Type: message/rfc822
        Content-Disposition: inline

        X-HmXmrOriginalRecipient: jana@hotmail.com
        From: News <news@shop.sk>
        To: jana@hotmail.com
        Subject: Novinky
        Message-ID: <n1@shop.sk>

        Ahoj
        --b--
        """
    ).encode()
    found = classify_message(report)
    assert (found.kind, found.recipient) == ("complaint", "jana@hotmail.com")
    # The same copy returned inside a delivery report stays a bounce.
    dsn = report.replace(b"multipart/mixed;", b"multipart/report; report-type=delivery-status;")
    assert classify_message(dsn).kind != "complaint"


def test_an_expired_delivery_is_soft_unless_the_notice_calls_it_permanent() -> None:
    # A delivery given up after temporary failures says nothing against the address.
    expired = textwrap.dedent(
        """\
        From: Mailer Daemon <MAILER-DAEMON@mx.a.sk>
        To: news@shop.sk
        Subject: Delivery status notification: error

            An error has occurred while attempting to deliver a message for
            the following list of recipients:

        eva@a.sk: Envelope expired
        """
    ).encode()
    found = classify_message(expired)
    assert (found.kind, found.recipient, found.status) == ("soft_bounce", "eva@a.sk", "4.4.7")
    permanent = expired.replace(b"An error has occurred", b"This is a permanent error")
    assert (classify_message(permanent).kind, classify_message(permanent).status) == (
        "hard_bounce",
        "5.4.7",
    )
    # SendGrid writes "Action: expired" (no RFC 3464 action) with an empty Status.
    dsn = textwrap.dedent(
        """\
        From: MAILER-DAEMON@mx.shop.sk
        To: news@shop.sk
        Subject: Undelivered Mail Returned to Sender
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=delivery-status; boundary="b"

        --b
        Content-Type: text/plain

        your message was not able to be delivered: Connection timed out in connect
        --b
        Content-Type: message/delivery-status

        Arrival-Date: 2013-07-08 18-21-01

        Final-Recipient: rfc822; eva@a.sk
        Action: expired
        Status:
        Diagnostic-Code: Connection timed out
        --b--
        """
    ).encode()
    found = classify_message(dsn)
    assert (found.kind, found.recipient, found.status) == ("soft_bounce", "eva@a.sk", "4.4.7")


def test_parse_bounces_frame_lists_every_recipient() -> None:
    frame = parse_bounces(p.read_bytes() for p in _files())
    assert len(frame) == sum(len(v) for v in EXPECTED.values() if v)
    assert set(frame["status"].str[0]) == {"4", "5"}


# --------------------------------------------------------------------------- Dovecot


def _recipients() -> list[str]:
    found = {r for v in EXPECTED.values() if v for r, _, _ in v}
    return sorted(found | {"jan@a.sk", "eva@a.sk"})


@pytest.fixture
def sent(
    database: dbmod.Database, sink: Sink, dovecot: Imap, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Send one real campaign to every bounced address; give messages the files' Message-IDs."""
    addresses = _recipients()
    frame = pd.DataFrame(
        {
            "first_name": [a.split("@")[0] for a in addresses],
            "last_name": ["Test"] * len(addresses),
            "email": addresses,
            "mailing_allowed": ["yes"] * len(addresses),
            "language": ["sk"] * len(addresses),
        }
    )
    import_contacts(frame, db=database, progress=False)
    monkeypatch.setenv("BULKMAIL_TEST_IMAP_PASSWORD", dovecot.password)
    cm.add_sender_account(
        "firm",
        kind="smtp",
        from_email="news@shop.sk",
        from_name="Obchod",
        settings={
            "host": "127.0.0.1",
            "port": sink.port,
            "security": "none",
            "unsubscribe_url": "https://shop.sk/u/{token}",
            "unsubscribe_mailto": "unsubscribe@shop.sk",
            "imap": {
                "host": "127.0.0.1",
                "port": dovecot.port,
                "security": "none",
                "user": dovecot.user,
                "credential_ref": "BULKMAIL_TEST_IMAP_PASSWORD",
                "soft_bounce_limit": 2,
            },
        },
        db=database,
        check=False,
    )
    from bulkmail_kernel.compose.templates import template_from_html

    template = template_from_html(
        '<p>Ahoj {{ first_name }}</p><p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p>',
        "Novinky",
        name="novinky",
    )
    cm.create_campaign("jar", sender="firm", template=template, db=database)
    cm.register("jar", contacts_frame(database), db=database)
    assert send("jar", rate_per_hour=math.inf, progress=False, db=database).sent == len(addresses)
    # Each real notification quotes the original's Message-ID: make it ours.
    with database.session() as s:
        for name, expected in EXPECTED.items():
            info = parse_bounce((BOUNCES / name).read_bytes())
            if expected is None or info is None or not info.original_message_ids:
                continue
            msg = s.scalars(sa.select(Message).where(Message.recipient == expected[0][0])).one()
            if not msg.message_id_header.endswith("@shop.sk>"):
                continue  # sendmail-01 and rfc3464-01 return the same original
            msg.message_id_header = info.original_message_ids[0]
    return "firm"


def _unsubscribe_mail(sender: str, subject: str, to: str = "unsubscribe@shop.sk") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <u{time.time_ns()}@a.sk>\r\n\r\nunsubscribe\r\n"
    ).encode()


def test_process_mailbox_against_dovecot(
    database: dbmod.Database, dovecot: Imap, sent: str
) -> None:
    for path in _files():
        dovecot.deliver(path.read_bytes(), path.stem)
    dovecot.deliver(_unsubscribe_mail("Ján <jan@a.sk>", "unsubscribe"), "unsub")
    frame = process_mailbox(sent, db=database)

    # Every message is listed; the non-bounce as unknown, left alone.
    assert len(frame) == len(EXPECTED) + 1
    assert list(frame.loc[frame["kind"] == "unknown", "uid"].map(str)) != []
    assert (frame["kind"] == "unknown").sum() == 1
    by_kind = frame.groupby("kind")["recipient"].apply(set).to_dict()
    assert by_kind["unsubscribe"] == {"jan@a.sk"}
    assert by_kind["soft_bounce"] == {"kijitora@example.com"}
    hard = {r for v in EXPECTED.values() if v for r, _, p in v if p}
    # postfix-13 names two recipients of one original: the one it was sent to is acted on.
    assert by_kind["hard_bounce"] == hard - {"noraneko@example.jp"}
    matched = frame.set_index("recipient")["matched_by"].to_dict()
    assert matched["shironeko@example.co.jp"] == "message-id"
    assert matched["mikeneko@example.co.jp"] == "recipient"  # Exchange returned no Message-ID
    assert matched["kijitora@example.com"] in ("message-id", "recipient")

    with database.session() as s:
        statuses = dict(s.execute(sa.select(Message.recipient, Message.status)).all())
        codes = dict(s.execute(sa.select(Message.recipient, Message.last_code)).all())
        suppressed = dict(s.execute(sa.select(Suppression.normalized, Suppression.reason)).all())
        soft = dict(s.execute(sa.select(ContactPoint.normalized, ContactPoint.soft_bounces)).all())
        bounced = s.scalar(
            sa.select(sa.func.count()).select_from(Event).where(Event.kind == "bounced")
        )
    # Exim's "550 5.7.0 Please use the smtp server of your ISP" refuses our sending host,
    # not the address: the message fails and nobody is suppressed (as at RCPT).
    policy = {"kijitora@example.ed.jp"}
    for address in hard - {"noraneko@example.jp"}:
        assert statuses[address] == "failed", address
        if address in policy:
            assert address not in suppressed
        else:
            assert suppressed[address] == "hard_bounce", address
    assert codes["kijitora@example.ed.jp"] == "5.7.0"
    assert (
        "nobody suppressed: a policy refusal"
        in frame.set_index("recipient").loc["kijitora@example.ed.jp", "detail"]
    )
    # Office 365 hard-bounced kijitora@example.com, then Postfix reported a 4.4.1 for it too:
    # the soft bounce is counted and recorded but cannot undo the failure.
    assert codes["kijitora@example.com"] == "4.4.1"
    assert statuses["kijitora@example.com"] == "failed"
    assert soft["kijitora@example.com"] == 1
    assert suppressed["jan@a.sk"] == "unsubscribe"
    assert statuses["eva@a.sk"] == "sent"
    assert "eva@a.sk" not in suppressed
    assert bounced == len(frame) - 2
    assert not contacts_frame(database).set_index("address").loc["jan@a.sk", "mailing_allowed"]

    # Flagged, never deleted; the non-bounce stays unread and unflagged for a human.
    messages = dovecot.messages()
    assert len(messages) == len(EXPECTED) + 1
    untouched = [k for k, flags in messages.items() if "\\Flagged" not in flags]
    assert len(untouched) == 1
    assert untouched[0].endswith("=?UTF-8?B?44Gr44KD44KT44GT?=")
    assert "\\Seen" not in messages[untouched[0]]

    # A second run acts on nothing old: only the message left for a person is listed again.
    again = process_mailbox(sent, db=database)
    assert list(again["kind"]) == ["unknown"]
    with database.session() as s:
        assert (
            s.scalar(sa.select(sa.func.count()).select_from(Event).where(Event.kind == "bounced"))
            == bounced
        )


def test_soft_bounces_count_until_the_limit(
    database: dbmod.Database, dovecot: Imap, sent: str
) -> None:
    soft = (BOUNCES / "lhost-postfix-08.eml").read_bytes()
    dovecot.deliver(soft, "soft1")
    first = process_mailbox(sent, db=database)
    assert list(first["kind"]) == ["soft_bounce"]
    assert list(first["status"]) == ["4.4.1"]
    assert not bool(first["permanent"].iloc[0])
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0
        msg = s.scalars(sa.select(Message).where(Message.recipient == "kijitora@example.com")).one()
        assert msg.status == "sent"
    dovecot.deliver(soft, "soft2")
    second = process_mailbox(sent, db=database)
    assert list(second["kind"]) == ["soft_bounce_limit"]
    with database.session() as s:
        assert s.execute(sa.select(Suppression.normalized, Suppression.reason)).all() == [
            ("kijitora@example.com", "soft_bounce_limit")
        ]
        point = s.scalars(
            sa.select(ContactPoint).where(ContactPoint.normalized == "kijitora@example.com")
        ).one()
        assert point.soft_bounces == 2


def test_mailto_unsubscribe_with_a_token_uses_the_token(
    database: dbmod.Database, dovecot: Imap, sent: str
) -> None:
    with database.session() as s:
        body = s.scalar(
            sa.select(MessageBody.body)
            .join(Message, Message.id == MessageBody.message_id)
            .where(Message.recipient == "eva@a.sk")
        )
    msg = email.message_from_bytes(body, policy=email.policy.default)
    token = str(msg["List-Unsubscribe"]).split("/u/", 1)[1].split(">", 1)[0]
    # Sent from another address (a forwarding alias): the token, not the sender, decides.
    dovecot.deliver(_unsubscribe_mail("alias@b.sk", f"unsubscribe {token}"), "tok")
    frame = process_mailbox(sent, db=database)
    assert list(frame["kind"]) == ["unsubscribe"]
    assert list(frame["matched_by"]) == ["token"]
    with database.session() as s:
        assert s.execute(sa.select(Suppression.normalized, Suppression.reason)).all() == [
            ("eva@a.sk", "unsubscribe")
        ]


def test_wrong_password_and_missing_settings_are_clear_errors(
    database: dbmod.Database, dovecot: Imap, sent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKMAIL_TEST_IMAP_PASSWORD", "wrong")
    with pytest.raises(ProviderError, match="login as 'bounces' refused"):
        process_mailbox(sent, db=database)
    cm.add_sender_account("plain", kind="smtp", from_email="a@shop.sk", db=database, check=False)
    with pytest.raises(ConfigError, match=r"settings\['imap'\] has no 'host'"):
        process_mailbox("plain", db=database)
    with pytest.raises(ConfigError, match="does not exist"):
        process_mailbox("nobody", db=database)


# --------------------------------------------------------------------------- engine round trips


def _dsn(to: str, recipient: str, status: str, returned_headers: str = "") -> bytes:
    """Return an RFC 3464 report as Postfix writes it, optionally with the original's headers."""
    boundary = "dsn-boundary-1"
    parts = [
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered.\r\n"
        f"<{recipient}>: host mx.a.sk said: 550 {status} no such user\r\n",
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.shop.sk\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} no such user\r\n",
    ]
    if returned_headers:
        parts.append(
            f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n{returned_headers}\r\n"
        )
    return (
        f"From: MAILER-DAEMON@mx.shop.sk (Mail Delivery System)\r\nTo: {to}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn{time.time_ns()}@mx.shop.sk>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"'
        f"\r\n\r\n" + "".join(parts) + f"--{boundary}--\r\n"
    ).encode()


def _queued_campaign(database: dbmod.Database, name: str = "leto") -> int:
    """Register a second campaign to everyone now; it is sent only after the IMAP run."""
    from bulkmail_kernel.compose.templates import template_from_html

    template = template_from_html(
        '<p>Leto {{ first_name }}</p><p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p>',
        "Leto",
        name=name,
    )
    info = cm.create_campaign(name, sender="firm", template=template, db=database)
    cm.register(name, contacts_frame(database), db=database)
    return info.id


def test_hard_bounce_over_imap_stops_queued_messages(
    database: dbmod.Database, dovecot: Imap, sink: Sink, sent: str
) -> None:
    leto = _queued_campaign(database)
    (original,) = sink.received_by("eva@a.sk")
    headers = original.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    dovecot.deliver(_dsn("news@shop.sk", "eva@a.sk", "5.1.1", headers), "hard")
    frame = process_mailbox(sent, db=database)
    assert list(zip(frame["kind"], frame["matched_by"], strict=True)) == [
        ("hard_bounce", "message-id")
    ]
    summary = send(leto, rate_per_hour=math.inf, progress=False, db=database)
    assert summary.removed == 1
    assert len(sink.received_by("eva@a.sk")) == 1  # only the first campaign's, before the bounce
    assert len(sink.received_by("jan@a.sk")) == 2
    row = cm.queue(leto, db=database).set_index("recipient").loc["eva@a.sk"]
    assert row["status"] == "removed"
    assert "hard_bounce" in row["last_error"]


def test_mailto_unsubscribe_as_emitted_reaches_the_token(
    database: dbmod.Database, dovecot: Imap, sink: Sink, sent: str
) -> None:
    from urllib.parse import parse_qs, unquote, urlsplit

    leto = _queued_campaign(database)
    (original,) = sink.received_by("eva@a.sk")
    header = email.message_from_bytes(original.data, policy=email.policy.default)
    mailto = next(
        t for t in str(header["List-Unsubscribe"]).replace(" ", "").split(",") if "mailto:" in t
    ).strip("<>")
    # What a mail client does with the link (RFC 6068): address and decoded subject.
    parts = urlsplit(mailto)
    subject = parse_qs(parts.query)["subject"][0]
    assert subject.startswith("unsubscribe ")
    # Sent from an alias: only the token in the subject can say whose unsubscribe it is.
    dovecot.deliver(_unsubscribe_mail("alias@b.sk", subject, to=unquote(parts.path)), "mailto")
    frame = process_mailbox(sent, db=database)
    assert list(zip(frame["kind"], frame["matched_by"], strict=True)) == [("unsubscribe", "token")]
    summary = send(leto, rate_per_hour=math.inf, progress=False, db=database)
    assert summary.removed == 1
    assert len(sink.received_by("eva@a.sk")) == 1
    with database.session() as s:
        assert s.execute(sa.select(Suppression.normalized, Suppression.reason)).all() == [
            ("eva@a.sk", "unsubscribe")
        ]


def test_a_reported_address_matches_ours_by_identity() -> None:
    # Bounce addresses are only lower-cased; our recipients are identities (IDNA, casefold).
    assert same_address("EVA@BÜCHER.DE", "eva@xn--bcher-kva.de")
    assert same_address("Strasse@A.SK", "STRASSE@a.sk")
    assert not same_address("eva@a.sk", "eva@b.sk")
    assert not same_address("not an address", "eva@a.sk")


def test_a_recipient_the_server_upper_cased_is_still_ours(
    database: dbmod.Database, dovecot: Imap, sink: Sink, sent: str
) -> None:
    (original,) = sink.received_by("eva@a.sk")
    headers = original.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    # Two failed recipients; ours is the second, spelled in capitals by the remote server.
    report = _dsn("news@shop.sk", "EVA@A.SK", "5.1.1", headers).replace(
        b"Final-Recipient: rfc822; EVA@A.SK",
        b"Final-Recipient: rfc822; someone@b.sk\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        b"\r\nFinal-Recipient: rfc822; EVA@A.SK",
    )
    dovecot.deliver(report, "upper")
    frame = process_mailbox(sent, db=database)
    assert list(zip(frame["kind"], frame["matched_by"], frame["status"], strict=True)) == [
        ("hard_bounce", "message-id", "5.1.1")
    ]
    with database.session() as s:
        event = s.scalars(sa.select(Event).where(Event.kind == "bounced")).one()
        assert event.data["reported_recipient"] == "eva@a.sk"


@pytest.mark.parametrize(
    ("status", "said", "kind", "message_status", "suppressed"),
    [
        # Our IP on a blocklist, reported later: the message failed; the person did nothing.
        ("5.7.1", "Client host [203.0.113.9] blocked using zen.spamhaus.org", "hard_bounce",
         "failed", False),
        ("5.4.4", "Unrouteable address: our relay lost its DNS", "hard_bounce", "failed", False),
        # A full mailbox is temporary whatever the first digit: counted, not suppressed.
        ("5.2.2", "Mailbox full", "soft_bounce", "sent", False),
        ("5.1.1", "no such user", "hard_bounce", "failed", True),
    ],
)  # fmt: skip
def test_a_later_bounce_is_read_like_a_refusal_on_the_wire(
    database: dbmod.Database,
    dovecot: Imap,
    sink: Sink,
    sent: str,
    status: str,
    said: str,
    kind: str,
    message_status: str,
    suppressed: bool,
) -> None:
    (original,) = sink.received_by("eva@a.sk")
    headers = original.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    report = _dsn("news@shop.sk", "eva@a.sk", status, headers).replace(
        b"no such user", said.encode()
    )
    dovecot.deliver(report, "later")
    frame = process_mailbox(sent, db=database)
    assert list(zip(frame["kind"], frame["status"], strict=True)) == [(kind, status)]
    with database.session() as s:
        msg = s.scalars(sa.select(Message).where(Message.recipient == "eva@a.sk")).one()
        assert msg.status == message_status
        reasons = s.scalars(sa.select(Suppression.reason)).all()
        event = s.scalars(sa.select(Event).where(Event.kind == "bounced")).one()
        category = event.data["category"]
    assert reasons == (["hard_bounce"] if suppressed else [])
    expected = {"5.7.1": "policy", "5.4.4": "system", "5.2.2": "mailbox_full", "5.1.1": "mailbox"}
    assert category == expected[status]


def test_verp_bounce_without_a_returned_copy_finds_the_message(
    database: dbmod.Database, dovecot: Imap, sink: Sink, sent: str
) -> None:
    with database.session() as s:
        account = s.scalars(sa.select(dbmod.SenderAccount)).one()
        account.settings = {**account.settings, "verp": True, "envelope_from": "bounces@shop.sk"}
    leto = _queued_campaign(database)
    send(leto, rate_per_hour=math.inf, progress=False, db=database)
    eva = next(m for m in sink.received_by("eva@a.sk") if m.mail_from.startswith("bounces+"))
    # The report quotes nothing of the original, and names an address we never wrote to:
    # only the return path it was delivered to says which message it is about.
    dovecot.deliver(_dsn(eva.mail_from, "eva.alias@a.sk", "5.1.1"), "verp")
    frame = process_mailbox(sent, db=database)
    assert list(zip(frame["kind"], frame["matched_by"], strict=True)) == [("hard_bounce", "verp")]
    assert frame["campaign_id"].iloc[0] == leto
    row = cm.queue(leto, db=database).set_index("recipient").loc["eva@a.sk"]
    assert row["status"] == "failed"


def test_unsubscribe_address_accepts_sms_as_the_phone_channel(database: dbmod.Database) -> None:
    assert cm.unsubscribe_address("+421 903 123 456", channel="sms", db=database) is False
    with database.session() as s:
        assert s.execute(sa.select(Suppression.channel, Suppression.normalized)).all() == [
            ("phone", "+421903123456")
        ]
    with pytest.raises(ConfigError, match="not a valid email"):
        cm.unsubscribe_address("not an address", db=database)


# --------------------------------------------------------------------------- every kind


#: A genuinely malformed notification: it declares the IDNA codec as its charset, which
#: refuses the error handling every text part is decoded with (UnicodeError).
POISON = (
    b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@shop.sk\r\nSubject: failure notice\r\n"
    b"Message-ID: <poison@mx.example.net>\r\nContent-Type: text/plain; charset=idna\r\n"
    b"\r\n<eva@a.sk>: 550 5.1.1 no such user\r\n"
)


def _auto_reply(sender: str, subject: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: news@shop.sk\r\nSubject: {subject}\r\nReturn-Path: <>\r\n"
        "Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: All\r\n"
        f"Message-ID: <ar{time.time_ns()}@a.sk>\r\n\r\nI am out of the office until Monday.\r\n"
    ).encode()


def _forwarded_complaint(recipient: str) -> bytes:
    own = (Path(__file__).parent / "data" / "bounces" / "own" / "arf-forwarded.eml").read_bytes()
    return own.replace(b"zuzana@example.org", recipient.encode())


def test_a_poison_message_never_stops_the_run(
    database: dbmod.Database, dovecot: Imap, sent: str
) -> None:
    dovecot.deliver((BOUNCES / "lhost-postfix-04.eml").read_bytes(), "before")
    dovecot.deliver(POISON, "poison")
    dovecot.deliver(_auto_reply("Eva <eva@a.sk>", "Automatic reply: Novinky"), "auto")
    dovecot.deliver(_forwarded_complaint("jan@a.sk"), "complaint")
    dovecot.deliver((BOUNCES / "lhost-gmail-01.eml").read_bytes(), "after")
    frame = process_mailbox(sent, db=database)

    assert list(frame["kind"]) == [
        "hard_bounce",
        "unreadable",
        "auto_reply",
        "complaint",
        "hard_bounce",
    ]
    poison = frame[frame["kind"] == "unreadable"].iloc[0]
    assert poison["uid"] == "2"
    assert "UnicodeError" in poison["detail"]
    assert "idna" in poison["detail"]
    assert set(frame.loc[frame["kind"] == "hard_bounce", "recipient"]) == {
        "kijitora@example.co.jp",
        "userunknown@example.jp",
    }

    with database.session() as s:
        suppressed = dict(s.execute(sa.select(Suppression.normalized, Suppression.reason)).all())
        statuses = dict(s.execute(sa.select(Message.recipient, Message.status)).all())
        events = s.execute(sa.select(Event.kind, Message.recipient).join(Message)).all()
    # The auto-reply suppresses nobody and changes no status; it is in Eva's history.
    assert "eva@a.sk" not in suppressed
    assert statuses["eva@a.sk"] == "sent"
    assert ("auto_reply", "eva@a.sk") in events
    # The forwarded complaint suppresses Jan as a complaint and stops mailing him.
    assert suppressed["jan@a.sk"] == "complaint"
    assert ("complained", "jan@a.sk") in events
    assert statuses["jan@a.sk"] == "sent"
    assert not contacts_frame(database).set_index("address").loc["jan@a.sk", "mailing_allowed"]

    # The campaign's complaint rate shows, with its warning, in the report and the monitor.
    rate = cm.campaign_report("jar", db=database).attrs["complaints"]
    assert rate.complaints == 1
    assert rate.sent == statuses_sent(database)
    assert "Gmail and Yahoo block bulk senders above 0.3 %" in rate.warning
    html = rate_html(cm.campaign_progress("jar", db=database))
    assert "complaint rate" in html
    assert "0.3 %" in html

    # The poison is flagged unreadable but left unseen for a person.
    flags = dovecot.messages()
    poisoned = next(f for k, f in flags.items() if k.startswith("2:"))
    assert "$BulkmailUnreadable" in poisoned
    assert "\\Flagged" in poisoned
    assert "\\Seen" not in poisoned
    # A re-run does not read it again (nor anything already handled).
    assert process_mailbox(sent, db=database).empty


def statuses_sent(database: dbmod.Database) -> int:
    with database.session() as s:
        return int(
            s.scalar(
                sa.select(sa.func.count()).select_from(Message).where(Message.status == "sent")
            )
        )


@pytest.mark.parametrize(
    ("complaints", "sent", "warned"),
    [(0, 1000, False), (1, 1001, False), (1, 1000, True), (3, 1000, True), (1, 0, True)],
)
def test_complaint_rate_warns_from_a_tenth_of_a_percent(
    complaints: int, sent: int, warned: bool
) -> None:
    from bulkmail_kernel.campaigns.complaints import ComplaintRate

    rate = ComplaintRate(complaints, sent)
    assert bool(rate.warning) is (warned and sent > 0)
    if rate.warning:
        assert "Gmail and Yahoo block bulk senders above 0.3 %" in rate.warning
        assert ("is above the limit" in rate.warning) is (complaints / sent >= 0.003)


def test_a_delivery_report_is_history_not_a_bounce(
    database: dbmod.Database, dovecot: Imap, sent: str
) -> None:
    own = Path(__file__).parent / "data" / "bounces" / "own"
    for action in ("delivered", "relayed"):
        raw = (own / f"dsn-{action}.eml").read_bytes().replace(b"dana@example.net", b"eva@a.sk")
        dovecot.deliver(raw, action)
    frame = process_mailbox(sent, db=database)
    assert list(frame["kind"]) == ["delivery_report", "delivery_report"]
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0
        point = s.scalars(
            sa.select(ContactPoint).where(ContactPoint.normalized == "eva@a.sk")
        ).one()
        assert point.soft_bounces == 0
        assert (
            s.scalars(sa.select(Message.status).where(Message.recipient == "eva@a.sk")).one()
            == "sent"
        )

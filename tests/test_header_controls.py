"""Header values: every control character is cleaned where the MIME is built.

Values reach the headers from DataFrames as well as from the importer, so vertical
tab, form feed, \\x1c-\\x1f, ESC, DEL, NUL, \\x85, \\u2028, \\u2029, CR and LF may be in a
name, a subject, an address or a custom header. Python's email package re-folds
such a header at VT, FF, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029 as at a line break, so
"Jana\\vBcc: x@evil.sk" used to come back as a real Bcc header. Each test follows the
whole path: render, MIME bytes, the bytes the transport sends (Date added, header
set checked), parsed back and re-serialised as a relay would.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from dataclasses import replace

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import bulkmail_kernel as cm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel import send
from bulkmail_kernel.compose.mime import build_email_message, build_mime
from bulkmail_kernel.compose.render import Mailbox, RenderedMessage, render
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.deliverability.dkim import prepare_outgoing
from bulkmail_kernel.exceptions import SendError
from bulkmail_kernel.servers.sink import Sink

WHEN = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)
CONTROLS = [
    *"\x00\x01\x07\x08\t\n\x0b\x0c\r\x0e\x1b\x1c\x1d\x1e\x1f\x7f\x80\x85\x9f",
    "\u2028",
    "\u2029",
]
CONTROL_RUN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
INJECTIONS = [
    f"{c}Bcc: x@evil.sk" for c in ("\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\r\n")
] + ["\u2029X-Evil: 1", "\x0bTo: x@evil.sk", "\r\n\r\n<html>body</html>"]
VALUE = st.lists(
    st.sampled_from([*CONTROLS, *INJECTIONS, *"aZ ž Ж:<>\"',;\\@.", "Jana", "Nováková"]),
    max_size=12,
).map("".join)
TEMPLATE = template_from_html(
    '<p>{{ first_name }}</p><a href="{{ unsubscribe_url }}">x</a>',
    subject="Ahoj {{ first_name }}, {{ topic }}",
    name="hlavicky",
)
SENT_HEADERS = [
    "date",
    "from",
    "to",
    "subject",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
    "mime-version",
    "content-type",
]


def _clean(value: str) -> str:
    return CONTROL_RUN.sub(" ", value).strip()


def _letters(value: str) -> str:
    # The stdlib's address parser re-spaces a display name (it joins encoded words and
    # atoms with one space), so names are compared without their spaces.
    return "".join(value.split())


def _message(first: str, last: str, topic: str, sender_name: str, list_id: str) -> RenderedMessage:
    rendered = render(
        TEMPLATE,
        {"first_name": first, "last_name": last, "address": "jana@x.sk", "contact_id": 3},
        values={"topic": topic},
        unsubscribe_url="https://shop.sk/u?t=abc",
        sender=Mailbox(sender_name, "news@shop.sk"),
    )
    # A custom header as registration adds one (List-Id), its value from outside.
    return replace(rendered, headers=(*rendered.headers, ("List-Id", list_id)))


def _sent_bytes(message: RenderedMessage) -> tuple[bytes, bytes]:
    """Return the bytes the transport would send, by our builder and by the stdlib's."""
    ours = build_mime(message, message_id="<m1@shop.sk>")
    stdlib = build_email_message(message, message_id="<m1@shop.sk>").as_bytes(
        policy=email.policy.SMTP
    )
    return (
        prepare_outgoing(ours, when=WHEN, allowed=SENT_HEADERS),
        prepare_outgoing(stdlib, when=WHEN, allowed=SENT_HEADERS),
    )


# No shrinking: each example builds four messages, and shrinking one took minutes.
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(first=VALUE, last=VALUE, topic=VALUE, sender_name=VALUE, list_id=VALUE)
def test_no_control_character_makes_a_header(
    first: str, last: str, topic: str, sender_name: str, list_id: str
) -> None:
    message = _message(first, last, topic, sender_name, list_id)
    ours, stdlib = _sent_bytes(message)
    for data in (ours, stdlib):
        head = data.partition(b"\r\n\r\n")[0]
        assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", head.replace(b"\r\n", b""))
        for policy in (email.policy.default, email.policy.compat32):
            parsed = email.message_from_bytes(data, policy=policy)
            assert [k.lower() for k in parsed] == SENT_HEADERS
            # What a relay does: parse and re-serialise; still exactly our headers.
            again = email.message_from_bytes(parsed.as_bytes(), policy=email.policy.default)
            assert [k.lower() for k in again] == SENT_HEADERS
    # The values as sent. (The stdlib's own builder, kept as a reference only, drops the
    # quotes of a long folded display name; its header set is right, its names are not.)
    parsed = email.message_from_bytes(ours, policy=email.policy.default)
    for value in parsed.values():
        assert not CONTROL_RUN.search(str(value))
    assert str(parsed["Subject"]) == _clean(f"Ahoj {first}, {topic}")
    assert str(parsed["List-Id"]) == _clean(list_id)
    parsed = email.message_from_bytes(ours, policy=email.policy.default)
    to = parsed["To"].addresses[0]
    assert to.addr_spec == "jana@x.sk"
    assert _letters(to.display_name) == _letters(_clean(" ".join(p for p in (first, last) if p)))
    sender = parsed["From"].addresses[0]
    assert sender.addr_spec == "news@shop.sk"
    assert _letters(sender.display_name) == _letters(_clean(sender_name))


@settings(max_examples=100, deadline=None)
@given(
    before=st.lists(st.sampled_from(CONTROLS), max_size=3).map("".join),
    after=st.lists(st.sampled_from([*CONTROLS, *INJECTIONS]), max_size=3).map("".join),
)
def test_an_address_with_a_control_character_is_refused_or_trimmed(before: str, after: str) -> None:
    address = f"{before}jana@x.sk{after}"
    rendered = render(
        TEMPLATE,
        {"first_name": "Jana", "address": address},
        values={"topic": "t"},
        sender="Shop <news@shop.sk>",
    )
    if address.strip() != "jana@x.sk":
        with pytest.raises(SendError, match="contains a control character") as caught:
            build_mime(rendered, message_id="<m1@shop.sk>")
        assert caught.value.fields["recipient"] == rendered.recipient
        return
    data = build_mime(rendered, message_id="<m1@shop.sk>")
    # Accepted only when nothing but whitespace surrounded it: never a changed address.
    assert email.message_from_bytes(data, policy=email.policy.default)["To"] == "Jana <jana@x.sk>"


def test_vertical_tab_bcc_from_a_dataframe_reaches_the_sink_as_text(
    database: dbmod.Database, sink: Sink
) -> None:
    import_contacts(
        pd.DataFrame({"first_name": ["Jana"], "email": ["jana@a.sk"], "mailing_allowed": ["yes"]}),
        db=database,
        progress=False,
    )
    frame = contacts_frame(database)
    # The importer cleans its input; a frame edited in the notebook is not cleaned by it.
    frame["first_name"] = "Jana\vBcc: x@evil.sk\x1c\u2028X-Evil: 1\x1b\x7f"
    cm.add_sender_account(
        "sink",
        kind="smtp",
        from_email="news@shop.sk",
        from_name="Obchod\fBcc: y@evil.sk",
        settings={
            "host": "127.0.0.1",
            "port": sink.port,
            "security": "none",
            "unsubscribe_url": "https://shop.sk/u?t={token}",
        },
        db=database,
        check=False,
    )
    template = template_from_html(
        '<p>{{ first_name }}</p><a href="{{ unsubscribe_url }}">x</a>',
        "Pre {{ first_name }}",
        name="vt",
    )
    cm.create_campaign("vt", sender="sink", template=template, db=database)
    cm.register("vt", frame, db=database)
    assert send("vt", rate_per_hour=float("inf"), progress=False, db=database).sent == 1
    received = sink.received_by("jana@a.sk")
    assert len(received) == 1
    assert sink.received_by("x@evil.sk") == []
    assert sink.received_by("y@evil.sk") == []
    parsed = email.message_from_bytes(received[0].data, policy=email.policy.default)
    names = [k.lower() for k in parsed]
    assert "bcc" not in names
    assert "x-evil" not in names
    assert parsed["Subject"] == "Pre Jana Bcc: x@evil.sk X-Evil: 1"
    assert parsed["To"].addresses[0].display_name == "Jana Bcc: x@evil.sk X-Evil: 1"
    assert parsed["From"].addresses[0].display_name == "Obchod Bcc: y@evil.sk"
    again = email.message_from_bytes(parsed.as_bytes(), policy=email.policy.default)
    assert [k.lower() for k in again] == names


@pytest.mark.parametrize("char", CONTROLS)
def test_each_control_character_in_a_subject_becomes_a_space(char: str) -> None:
    rendered = render(
        TEMPLATE, {"first_name": f"A{char}B", "address": "a@b.sk"}, values={"topic": "t"}
    )
    assert rendered.subject == "Ahoj A B, t"
    assert rendered.to.name == "A B"

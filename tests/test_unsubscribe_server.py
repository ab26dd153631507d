"""The one-click unsubscribe endpoint, driven with httpx against a real uvicorn on loopback."""

from __future__ import annotations

import email
import email.policy
import math
import re
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

import bulkmail_kernel as cm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel import send
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.db import Message, MessageBody, Suppression
from bulkmail_kernel.servers.sink import Sink
from bulkmail_kernel.servers.web import create_app, serve_in_thread, token_owner

HTML = (
    "<html><body><p>Dobrý deň {{ first_name }},</p>"
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť sa</a></p></body></html>'
)


@pytest.fixture
def server(database: dbmod.Database) -> Iterator[str]:
    """Run the app under uvicorn on a free loopback port in a thread; yield its base URL."""
    running = serve_in_thread(create_app(db=database))
    yield running.url
    running.stop()


@pytest.fixture
def registered(database: dbmod.Database, sink: Sink) -> dict[str, str]:
    """Register a campaign for three people; return each address's unsubscribe token."""
    frame = pd.DataFrame(
        {
            "first_name": ["Ján", "Olga", "Petra"],
            "last_name": ["Novák", "Ivanova", "Dvořáková"],
            "email": ["jan@a.sk", "olga@a.sk", "petra@a.cz"],
            "mailing_allowed": ["yes", "yes", "yes"],
            "language": ["sk", "ru", "cs"],
        }
    )
    import_contacts(frame, db=database, progress=False)
    cm.add_sender_account(
        "sink",
        kind="smtp",
        from_email="news@shop.sk",
        from_name="Obchod",
        settings={
            "host": "127.0.0.1",
            "port": sink.port,
            "security": "none",
            "unsubscribe_url": "https://shop.sk/u/{token}",
        },
        db=database,
        check=False,
    )
    template = template_from_html(HTML, "Novinky pre {{ first_name }}", name="novinky")
    cm.create_campaign("jar", sender="sink", template=template, db=database)
    cm.register("jar", contacts_frame(database), db=database)
    tokens = {}
    with database.session() as s:
        for recipient, body in s.execute(
            sa.select(Message.recipient, MessageBody.body).join(
                MessageBody, MessageBody.message_id == Message.id
            )
        ):
            msg = email.message_from_bytes(body, policy=email.policy.default)
            link = re.search(r"<https://shop\.sk/u/([^>]+)>", msg["List-Unsubscribe"])
            tokens[recipient] = link.group(1)
    return tokens


def test_one_click_post_unsubscribes_and_queued_message_is_not_sent(
    database: dbmod.Database, server: str, registered: dict[str, str], sink: Sink
) -> None:
    token = registered["jan@a.sk"]
    # What Gmail sends: a cookieless form POST with exactly this body.
    response = httpx.post(
        f"{server}/u/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert "location" not in response.headers
    assert "j***@a.sk" in response.text
    assert "odhlásená" in response.text
    assert response.headers["cache-control"] == "no-store"
    frame = contacts_frame(database).set_index("address")
    assert not frame.loc["jan@a.sk", "mailing_allowed"]
    with database.session() as s:
        assert s.execute(sa.select(Suppression.normalized, Suppression.reason)).all() == [
            ("jan@a.sk", "unsubscribe")
        ]
    # Posting twice (clients retry) is harmless.
    again = httpx.post(f"{server}/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    # Already queued: the message to the unsubscribed address is removed at claim time.
    summary = send("jar", rate_per_hour=math.inf, progress=False, db=database)
    assert summary.sent == 2
    assert sink.received_by("jan@a.sk") == []
    assert len(sink.received_by("olga@a.sk")) == 1
    queue = cm.queue("jar", db=database).set_index("recipient")
    assert queue.loc["jan@a.sk", "status"] == "removed"


def test_multipart_one_click_body_is_accepted(
    database: dbmod.Database, server: str, registered: dict[str, str]
) -> None:
    response = httpx.post(
        f"{server}/u/{registered['olga@a.sk']}",
        files={"List-Unsubscribe": (None, "One-Click")},
    )
    assert response.status_code == 200
    assert "Адрес o***@a.sk отписан" in response.text
    assert not contacts_frame(database).set_index("address").loc["olga@a.sk", "mailing_allowed"]


@pytest.mark.parametrize(
    ("address", "lang", "button"),
    [
        ("jan@a.sk", "sk", "Odhlásiť sa"),
        ("olga@a.sk", "ru", "Отписаться"),
        ("petra@a.cz", "cs", "Odhlásit se"),
    ],
)
def test_get_shows_a_confirmation_page_in_the_recipients_language_and_changes_nothing(
    database: dbmod.Database,
    server: str,
    registered: dict[str, str],
    address: str,
    lang: str,
    button: str,
) -> None:
    response = httpx.get(f"{server}/u/{registered[address]}")
    assert response.status_code == 200
    assert f'<html lang="{lang}">' in response.text
    assert f">{button}</button>" in response.text
    assert '<form method="post">' in response.text
    assert 'name="List-Unsubscribe" value="One-Click"' in response.text
    assert response.headers["referrer-policy"] == "no-referrer"
    # A link scanner fetching the URL must not unsubscribe anyone.
    assert contacts_frame(database).set_index("address").loc[address, "mailing_allowed"]
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0


def test_submitting_the_confirmation_form_unsubscribes(
    database: dbmod.Database, server: str, registered: dict[str, str]
) -> None:
    page = httpx.get(f"{server}/u/{registered['petra@a.cz']}").text
    name, value = re.search(r'name="([^"]+)" value="([^"]+)"', page).groups()
    response = httpx.post(f"{server}/u/{registered['petra@a.cz']}", data={name: value})
    assert response.status_code == 200
    assert "byla odhlášena" in response.text
    assert token_owner(registered["petra@a.cz"], db=database) is not None


@pytest.mark.parametrize(
    "token",
    ["A" * 32, "not-a-token", "x" * 300, "..%2F..%2Fetc", "%00" * 20],
)
def test_unknown_tokens_answer_a_neutral_404(
    database: dbmod.Database, server: str, registered: dict[str, str], token: str
) -> None:
    get = httpx.get(f"{server}/u/{token}")
    post = httpx.post(f"{server}/u/{token}", content=b"List-Unsubscribe=One-Click")
    for response in (get, post):
        assert response.status_code == 404
        assert response.text == "Not Found\n"
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0


def test_post_without_the_one_click_body_is_refused(
    database: dbmod.Database, server: str, registered: dict[str, str]
) -> None:
    response = httpx.post(f"{server}/u/{registered['jan@a.sk']}", content=b"hello")
    assert response.status_code == 400
    assert contacts_frame(database).set_index("address").loc["jan@a.sk", "mailing_allowed"]

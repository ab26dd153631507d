"""Click tracking and consent records, with the real web app under uvicorn, on SQLite and PG.

A real import, a real registration and send to the local SMTP sink; the tracked links
are read back from the stored message and followed with httpx as a reader (and as
scanners) would.
"""

from __future__ import annotations

import email
import email.policy
import json
import math
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

import bulkmail_kernel as bm
from bulkmail_kernel import config
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns.preview import campaign_preview
from bulkmail_kernel.cli import main
from bulkmail_kernel.compose.links import click_token, read_token, rewrite_links
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.db import Consent, Event, Message, MessageBody, MessageLink
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.clicks import SECRET_SETTING, safe_target, tracking_secret
from bulkmail_kernel.servers.sink import Sink
from bulkmail_kernel.servers.web import create_app, serve_in_thread

HTML = (
    "<html><body><p>Dobrý deň {{ first_name }},</p>"
    '<p><a href="https://shop.sk/akcia?x=1&amp;y=2">Akcia</a> '
    "<a href='http://shop.sk/blog'>Blog</a> "
    '<a href="mailto:info@shop.sk">Napíšte</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť sa</a></p></body></html>'
)
TEXT = "Akcia: https://shop.sk/akcia?x=1&y=2\nOdhlásiť: {{ unsubscribe_url }}\n"
ORIGINALS = ["https://shop.sk/akcia?x=1&y=2", "http://shop.sk/blog"]
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
WORDING = "Súhlasím so sledovaním kliknutí v e-mailoch."


@pytest.fixture
def server(database: dbmod.Database) -> Iterator[str]:
    """Run the app under uvicorn on a free loopback port in a thread; yield its base URL."""
    running = serve_in_thread(create_app(db=database))
    yield running.url
    running.stop()


def _setup(
    database: dbmod.Database, sink: Sink, *, track: bool, opens: bool = False, send: bool = True
) -> None:
    frame = pd.DataFrame(
        {
            "first_name": ["Ján", "Olga"],
            "email": ["jan@a.sk", "olga@a.sk"],
            "mailing_allowed": ["yes", "yes"],
        }
    )
    bm.import_contacts(frame, db=database, progress=False, consent_text="Chcem novinky.")
    bm.add_sender_account(
        "sink", kind="smtp", from_email="news@shop.sk",
        settings={"host": "127.0.0.1", "port": sink.port, "security": "none",
                  "unsubscribe_url": "https://shop.sk/u/{token}"},
        db=database, check=False,
    )  # fmt: skip
    people = bm.contacts_frame(database)
    jan = people[people["address"] == "jan@a.sk"]
    # Only Ján agreed to tracking, on the preferences form.
    assert bm.record_consent(jan, "tracking", method="form", text=WORDING,
                             source="https://shop.sk/preferences", db=database) == 1  # fmt: skip
    template = template_from_html(HTML, "Novinky", TEXT, name="novinky")
    bm.create_campaign("jar", sender="sink", template=template, db=database)
    if track:
        assert bm.set_tracking("jar", clicks=True, opens=opens, db=database)["clicks"]
    if send:
        bm.register("jar", people, db=database)
        bm.send("jar", rate_per_hour=math.inf, progress=False, db=database)


def _parts(database: dbmod.Database, recipient: str) -> tuple[str, str, str]:
    """Return the stored message's HTML, text and List-Unsubscribe of ``recipient``."""
    with database.session() as s:
        body = s.scalar(
            sa.select(MessageBody.body)
            .join(Message, Message.id == MessageBody.message_id)
            .where(Message.recipient == recipient)
        )
    msg = email.message_from_bytes(body, policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    return html, text, str(msg["List-Unsubscribe"])


def _tracked(html: str) -> list[str]:
    return re.findall(r'href="https://shop\.sk/c/([^"]+)"', html)


def _deliver_an_hour_ago(database: dbmod.Database) -> None:
    """As if the messages were delivered an hour ago (a person reads later than a scanner)."""
    with database.engine.begin() as conn:
        conn.execute(sa.update(Message).values(sent_at=dbmod.utcnow() - timedelta(hours=1)))


def _events(database: dbmod.Database, *kinds: str) -> list[Event]:
    with database.session() as s:
        rows = list(s.scalars(sa.select(Event).where(Event.kind.in_(kinds)).order_by(Event.id)))
        s.expunge_all()
    return rows


def test_only_consenting_contacts_get_tracked_links(database: dbmod.Database, sink: Sink) -> None:
    _setup(database, sink, track=True)
    html, text, list_unsub = _parts(database, "jan@a.sk")
    tokens = _tracked(html)
    assert len(tokens) == 2
    assert "shop.sk/akcia" not in html
    assert "shop.sk/blog" not in html
    # The unsubscribe link, List-Unsubscribe and mailto: are never rewritten.
    assert re.search(r'href="https://shop\.sk/u/[^"]+">Odhlásiť sa', html)
    assert "/u/" in list_unsub
    assert "/c/" not in list_unsub
    assert 'href="mailto:info@shop.sk"' in html
    # The text part keeps the original links (docs/tracking.md).
    assert "https://shop.sk/akcia?x=1&y=2" in text
    assert "/c/" not in text
    assert "/o/" not in html  # no pixel unless asked for
    with database.session() as s:
        assert sorted(s.scalars(sa.select(MessageLink.url))) == sorted(ORIGINALS)
    # Olga gave no tracking consent: her links are as written.
    olga, _, _ = _parts(database, "olga@a.sk")
    assert _tracked(olga) == []
    assert 'href="https://shop.sk/akcia?x=1&amp;y=2"' in olga


def test_no_rewriting_when_the_campaign_did_not_opt_in(
    database: dbmod.Database, sink: Sink
) -> None:
    _setup(database, sink, track=False)
    html, _, _ = _parts(database, "jan@a.sk")
    assert _tracked(html) == []
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(MessageLink)) == 0


def test_a_click_redirects_to_the_messages_own_link_and_counts(
    database: dbmod.Database, sink: Sink, server: str
) -> None:
    _setup(database, sink, track=True)
    _deliver_an_hour_ago(database)
    tokens = _tracked(_parts(database, "jan@a.sk")[0])
    response = httpx.get(f"{server}/c/{tokens[0]}", headers={"User-Agent": BROWSER})
    assert response.status_code == 302
    assert response.headers["location"] == ORIGINALS[0]
    assert response.headers["referrer-policy"] == "no-referrer"
    [event] = _events(database, "clicked")
    with database.session() as s:
        msg = s.scalars(sa.select(Message).where(Message.recipient == "jan@a.sk")).one()
        assert (event.campaign_id, event.message_id, event.contact_id, event.contact_point_id) == (
            msg.campaign_id, msg.id, msg.contact_id, msg.contact_point_id,
        )  # fmt: skip
    assert event.data == {"url": ORIGINALS[0], "link": 0}
    frame = bm.clicks("jar", db=database)
    assert list(frame["url"]) == [ORIGINALS[0]]
    assert list(frame["address"]) == ["jan@a.sk"]
    assert str(frame["clicked_at"].dt.tz) == config.local_timezone()
    report = bm.campaign_report("jar", db=database)
    assert report.attrs["clicks"] == {"clicks": 1, "messages_clicked": 1, "flagged": 0}


@pytest.mark.parametrize("how", ["signature", "index", "message", "garbage"])
def test_forged_tokens_are_refused_without_a_redirect(
    database: dbmod.Database, sink: Sink, server: str, how: str
) -> None:
    _setup(database, sink, track=True)
    _deliver_an_hour_ago(database)
    token = _tracked(_parts(database, "jan@a.sk")[0])[0]
    with database.session() as s:
        secret = tracking_secret(s)
        assert secret is not None
        header = s.scalar(
            sa.select(Message.message_id_header).where(Message.recipient == "jan@a.sk")
        )
    forged = {
        # One character of the signature changed.
        "signature": token[:-1] + ("A" if token[-1] != "A" else "B"),
        # Correctly signed (the secret leaked), but no such link in the message.
        "index": click_token(secret, header, 7),
        # Correctly signed for a message that does not exist.
        "message": click_token(secret, "<" + "0" * 32 + "@shop.sk>", 0),
        "garbage": "https%3A%2F%2Fevil.example",
    }[how]
    response = httpx.get(f"{server}/c/{forged}", headers={"User-Agent": BROWSER})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert _events(database, "clicked", "click_flagged") == []


@pytest.mark.parametrize(
    ("method", "agent", "early", "why"),
    [
        ("HEAD", BROWSER, False, "HEAD request"),
        (
            "GET",
            "Mozilla/5.0 (compatible; Microsoft Office SafeLinks)",
            False,
            "scanner user agent",
        ),
        ("GET", "python-httpx/0.28", False, "scanner user agent"),
        ("GET", BROWSER, True, "within 10 s of delivery"),
    ],
)
def test_scanner_traffic_is_flagged_not_counted(
    database: dbmod.Database,
    sink: Sink,
    server: str,
    method: str,
    agent: str,
    early: bool,
    why: str,
) -> None:
    _setup(database, sink, track=True)
    if not early:
        _deliver_an_hour_ago(database)
    token = _tracked(_parts(database, "jan@a.sk")[0])[1]
    response = httpx.request(method, f"{server}/c/{token}", headers={"User-Agent": agent})
    assert response.status_code == 302  # the scanner still gets where the link leads
    assert _events(database, "clicked") == []
    [flagged] = _events(database, "click_flagged")
    assert why in flagged.data["why"]
    assert bm.clicks("jar", db=database).empty


def test_every_link_at_once_is_a_scanner(database: dbmod.Database, sink: Sink, server: str) -> None:
    _setup(database, sink, track=True)
    _deliver_an_hour_ago(database)
    tokens = _tracked(_parts(database, "jan@a.sk")[0])
    for token in tokens:
        assert httpx.get(f"{server}/c/{token}", headers={"User-Agent": BROWSER}).status_code == 302
    assert _events(database, "clicked") == []
    flagged = _events(database, "click_flagged")
    assert len(flagged) == 2
    assert all(e.data["why"] == "every link of the message at once" for e in flagged)
    assert sorted(e.data["url"] for e in flagged) == sorted(ORIGINALS)


def test_open_pixel_only_when_asked_and_consented(
    database: dbmod.Database, sink: Sink, server: str
) -> None:
    _setup(database, sink, track=True, opens=True)
    html, _, _ = _parts(database, "jan@a.sk")
    [pixel] = re.findall(r'<img src="https://shop\.sk/o/([^"]+)" width="1" height="1"', html)
    assert "/o/" not in _parts(database, "olga@a.sk")[0]
    response = httpx.get(f"{server}/o/{pixel}", headers={"User-Agent": BROWSER})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(b"GIF89a")
    [opened] = _events(database, "opened")
    assert opened.contact_id is not None
    # The open token is not a click token.
    assert httpx.get(f"{server}/c/{pixel}").status_code == 404


def test_consent_rows_from_import_analyst_and_unsubscribe(
    database: dbmod.Database, sink: Sink, server: str
) -> None:
    _setup(database, sink, track=False)
    frame = bm.consents(db=database)
    imported = frame[frame["method"] == "import"]
    assert sorted(imported["purpose"]) == ["marketing", "marketing"]
    assert set(imported["text"]) == {"Chcem novinky."}
    assert imported["source"].str.fullmatch(r"import run \d+").all()
    assert imported["contact_point_id"].notna().all()
    form = frame[frame["method"] == "form"]
    assert list(form["source"]) == ["https://shop.sk/preferences"]
    # Importing the same people again records nothing new.
    again = pd.DataFrame({"email": ["jan@a.sk", "olga@a.sk"], "mailing_allowed": ["yes", "yes"]})
    bm.import_contacts(again, db=database, progress=False)
    assert len(bm.consents(db=database)) == len(frame)
    # The analyst withdraws Olga's tracking consent: source is who did it.
    olga = int(frame.loc[frame["method"] == "import", "contact_id"].iloc[-1])
    bm.record_consent([olga], "tracking", False, method="analyst", text="phoned", db=database)
    mine = bm.consents(olga, db=database)
    assert mine.iloc[-1]["source"].startswith("os:")
    assert not mine.iloc[-1]["granted"]
    # An unsubscribe through the web endpoint records the withdrawal.
    _, _, list_unsub = _parts(database, "jan@a.sk")
    token = re.search(r"<https://shop\.sk/u/([^>]+)>", list_unsub).group(1)
    assert (
        httpx.post(f"{server}/u/{token}", content=b"List-Unsubscribe=One-Click").status_code == 200
    )
    last = bm.consents("jan@a.sk", db=database).iloc[-1]
    assert (last["purpose"], last["granted"], last["method"]) == ("marketing", False, "unsubscribe")
    with pytest.raises(bm.ConfigError, match="purpose"):
        bm.record_consent([olga], "spying", method="form", text="x", db=database)
    with pytest.raises(bm.ContactError, match="no contact with id 999999"):
        bm.record_consent([999999], "tracking", method="form", text="x", db=database)


def test_gdpr_export_has_consents_and_clicks_and_forget_erases_them(
    database: dbmod.Database, sink: Sink, server: str, tmp_path: Path
) -> None:
    _setup(database, sink, track=True)
    _deliver_an_hour_ago(database)
    token = _tracked(_parts(database, "jan@a.sk")[0])[0]
    httpx.get(f"{server}/c/{token}", headers={"User-Agent": BROWSER})
    out = bm.export_contact_data("jan@a.sk", folder=tmp_path, db=database)
    data = json.loads(out.json_path.read_text(encoding="utf-8"))
    records = data["consent"]["records"]
    assert [(r["purpose"], r["method"], r["source"]) for r in records] == [
        ("marketing", "import", records[0]["source"]),
        ("tracking", "form", "https://shop.sk/preferences"),
    ]
    assert all(r["recorded_at"] for r in records)
    assert records[1]["text"] == WORDING
    assert [(c["url"], c["counted"]) for c in data["clicks"]] == [(ORIGINALS[0], True)]
    page = out.html_path.read_text(encoding="utf-8")
    assert "Clicks on tracked links" in page
    assert WORDING in page
    bm.forget_contact("jan@a.sk", db=database)
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Consent)) == 1  # Olga's import
        assert s.scalar(sa.select(sa.func.count()).select_from(MessageLink)) == 0
        [click] = s.scalars(sa.select(Event).where(Event.kind == "clicked")).all()
        assert (click.contact_id, click.data) == (None, {})  # counted, no longer anyone's
    # The erased message's link no longer leads anywhere.
    assert httpx.get(f"{server}/c/{token}", headers={"User-Agent": BROWSER}).status_code == 404


def test_rewrite_keeps_unsubscribe_mailto_and_unsafe_links_and_tokens_resist_tampering() -> None:
    page = (
        "<a href=\"https://a.sk/x\">x</a><AREA HREF='http://a.sk/y'>"
        '<a href="https://a.sk/u/TOKEN">u</a><a href="mailto:a@a.sk">m</a>'
        '<a href="https://a.sk/z&#10;Set-Cookie: a=b">z</a>'
    )
    out, links = rewrite_links(page, lambda i: f"https://t.sk/c/{i}", keep=lambda u: "/u/" in u)
    assert links == ("https://a.sk/x", "http://a.sk/y")
    assert 'href="https://t.sk/c/0"' in out
    assert "HREF='https://t.sk/c/1'" in out
    assert 'href="https://a.sk/u/TOKEN"' in out
    assert 'href="mailto:a@a.sk"' in out
    assert "a.sk/z&#10;Set-Cookie" in out  # not tracked: a header must not carry it
    header = "<" + "ab" * 16 + "@shop.sk>"
    token = click_token(b"k" * 32, header, 3)
    found = read_token(b"k" * 32, token)
    assert found is not None
    assert (found.message_id_header, found.link) == (header, "3")
    assert read_token(b"other-secret", token) is None
    assert read_token(b"k" * 32, token.replace(".3.", ".4.", 1)) is None


def test_commands_record_consent_and_list_clicks(
    database: dbmod.Database, sink: Sink, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(database, sink, track=True)
    olga = int(bm.consents("olga@a.sk", db=database)["contact_id"].iloc[0])
    args = ["record-consent", str(olga), "--purpose", "tracking", "--method", "analyst"]
    assert main([*args, "--text", "Áno, po telefóne.", "--db", db_url]) == 0
    assert "1 tracking consent rows recorded" in capsys.readouterr().out
    assert main(["consents", "olga@a.sk", "--csv", "--db", db_url]) == 0
    assert "Áno, po telefóne." in capsys.readouterr().out
    assert main(["set-tracking", "jar", "--no-clicks", "--db", db_url]) == 0
    assert "'clicks': False" in capsys.readouterr().out
    assert main(["clicks", "jar", "--csv", "--db", db_url]) == 0
    assert capsys.readouterr().out.startswith("clicked_at,message_id,contact_id")


def test_rewrite_leaves_comments_scripts_and_other_attributes_and_the_rest_byte_for_byte() -> None:
    page = (
        '<!-- <a href="https://c.sk/">c</a> --><script>var s=\'<a href="https://s.sk/">\';</script>'
        '<a data-href="https://d.sk/" title=\'x href="https://t.sk"\' href="https://a.sk/x">x</a>'
        "<AREA HREF='http://a.sk/y'/><a href=\"javascript:alert(1)\">j</a>"
        '<a href="tel:+421900">t</a><a href="#top">#</a><a href=https://u.sk/q>u</a>\r\n'
        '<a\r\nhref = "HTTPS://b.sk/\u00e9">b</a>'
    )
    out, links = rewrite_links(page, lambda i: f"https://t.sk/c/{i}", keep=lambda u: False)
    assert links == ("https://a.sk/x", "http://a.sk/y", "https://u.sk/q", "HTTPS://b.sk/\u00e9")
    back = out
    for i, original in enumerate(links):
        back = back.replace(f"https://t.sk/c/{i}", original.replace("HTTPS", "HTTPS"), 1)
    assert back == page  # only the four href values changed
    assert '<a data-href="https://d.sk/"' in out
    assert '<!-- <a href="https://c.sk/">c</a> -->' in out


def test_odd_tokens_are_refused_not_an_error() -> None:
    secret = b"k" * 32
    header = "<" + "ab" * 16 + "@shop.sk>"
    token = click_token(secret, header, 1)
    payload, _, sig = token.rpartition(".")
    key = payload.rpartition(".")[0]
    for odd in (
        f"{key}.\u0661.{sig}",  # an Arabic-Indic digit is isdigit() but not ours
        f"{key}\n.1.{sig}",  # a trailing newline must not pass the key's pattern
        f"{key}.1.{sig[:-1]}\u00e9",  # non-ASCII signature: no TypeError from compare_digest
        token + "\n",
    ):
        assert read_token(secret, odd) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://shop.sk/a?x=1&y=2#k", "https://shop.sk/a?x=1&y=2#k"),
        (
            "https://\u017eilina.sk:8443/\u0161ach?q=\u010d",
            "https://xn--ilina-tib.sk:8443/%C5%A1ach?q=%C4%8D",
        ),
        ("HTTP://shop.sk/%C3%A9", "HTTP://shop.sk/%C3%A9"),
        ("javascript:alert(1)", None),
        ("data:text/html,hi", None),
        ("//evil.example/", None),
        ("https:\\\\evil.example", None),
        ("https://shop.sk/\r\nSet-Cookie: a=b", None),
        ("https://shop.sk/a b", None),
        ("https://user@evil.example/", None),
        ("https:///nohost", None),
    ],
)
def test_only_web_urls_make_a_location(url: str, expected: str | None) -> None:
    assert safe_target(url) == expected


def test_a_stored_link_that_is_not_a_web_url_is_refused_and_idn_is_punycode(
    database: dbmod.Database, sink: Sink, server: str
) -> None:
    _setup(database, sink, track=True)
    _deliver_an_hour_ago(database)
    first, second = _tracked(_parts(database, "jan@a.sk")[0])
    with database.engine.begin() as conn:  # as if a row had been written some other way
        conn.execute(sa.update(MessageLink).where(MessageLink.link == 0).values(
            url="javascript:alert(document.cookie)"))  # fmt: skip
        conn.execute(sa.update(MessageLink).where(MessageLink.link == 1).values(
            url="https://\u017eilina.sk/\u0161ach"))  # fmt: skip
    response = httpx.get(f"{server}/c/{first}", headers={"User-Agent": BROWSER})
    assert response.status_code == 404
    assert "location" not in response.headers
    response = httpx.get(f"{server}/c/{second}", headers={"User-Agent": BROWSER})
    assert response.status_code == 302
    assert response.headers["location"] == "https://xn--ilina-tib.sk/%C5%A1ach"
    non_ascii = second[:-1] + "\u00e9"
    assert httpx.get(f"{server}/c/{non_ascii}").status_code == 404  # not a server error


def test_a_short_secret_is_refused_and_the_web_app_never_makes_one(
    database: dbmod.Database, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = click_token(b"", "<" + "ab" * 16 + "@shop.sk>", 0)
    assert httpx.get(f"{server}/c/{token}", headers={"User-Agent": BROWSER}).status_code == 404
    assert httpx.get(f"{server}/o/{token}").status_code == 200  # the image, nothing recorded
    with database.session() as s:
        assert s.get(dbmod.Setting, SECRET_SETTING) is None
        assert tracking_secret(s, create=False) is None
    monkeypatch.setenv("BULKMAIL_TRACKING_SECRET", "short")
    with database.session() as s, pytest.raises(ConfigError, match="at least 32"):
        tracking_secret(s)


def test_two_workers_making_the_secret_at_once_share_one(database: dbmod.Database) -> None:
    theirs: list[bytes | None] = []

    def other_worker() -> None:
        with database.session() as s:
            theirs.append(tracking_secret(s))

    with database.session() as first:
        mine = tracking_secret(first)  # stored, not committed yet: the other one must wait
        worker = threading.Thread(target=other_worker)
        worker.start()
        worker.join(0.5)  # it is blocked on the row (PG) or the write lock (SQLite)
    worker.join(60)
    assert theirs == [mine]
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).where(dbmod.Setting.name == SECRET_SETTING)) == 1


def test_a_tracked_recipients_preview_is_the_registered_message(
    database: dbmod.Database, sink: Sink
) -> None:
    _setup(database, sink, track=True, send=False)
    people = bm.contacts_frame(database)
    previews = {
        a: campaign_preview("jar", people, i, db=database).data
        for i, a in enumerate(people["address"])
    }
    bm.register("jar", people, db=database)
    for address, preview in previews.items():
        with database.session() as s:
            body = bytes(s.scalar(
                sa.select(MessageBody.body).join(Message, Message.id == MessageBody.message_id)
                .where(Message.recipient == address)
            ))  # fmt: skip

        def html(data: bytes) -> str:
            msg = email.message_from_bytes(data, policy=email.policy.default)
            return str(msg.get_body(("html",)).get_content())

        def neutral(data: bytes) -> str:
            return re.sub(r"/(c|u)/[^\"']+", "/TOKEN", html(data))

        assert neutral(preview) == neutral(body)
        # Ján consented: both show his tracked links; Olga's show the links as written.
        tracked = address == "jan@a.sk"
        assert len(_tracked(html(preview))) == len(_tracked(html(body))) == (2 if tracked else 0)


def test_after_withdrawing_consent_a_click_still_leads_on_but_is_not_recorded(
    database: dbmod.Database, sink: Sink, server: str
) -> None:
    _setup(database, sink, track=True, opens=True)
    _deliver_an_hour_ago(database)
    html = _parts(database, "jan@a.sk")[0]
    token = _tracked(html)[0]
    [pixel] = re.findall(r'src="https://shop\.sk/o/([^"]+)"', html)
    people = bm.contacts_frame(database)
    jan = people[people["address"] == "jan@a.sk"]
    bm.record_consent(jan, "tracking", False, method="form", text="Nesledujte ma.", db=database)
    response = httpx.get(f"{server}/c/{token}", headers={"User-Agent": BROWSER})
    assert (response.status_code, response.headers["location"]) == (302, ORIGINALS[0])
    assert httpx.get(f"{server}/o/{pixel}", headers={"User-Agent": BROWSER}).status_code == 200
    assert _events(database, "clicked", "click_flagged", "opened") == []
    # Given again, the latest row wins: the same link counts.
    bm.record_consent(jan, "tracking", method="form", text=WORDING, db=database)
    assert httpx.get(f"{server}/c/{token}", headers={"User-Agent": BROWSER}).status_code == 302
    assert len(_events(database, "clicked")) == 1


def test_a_person_clicking_one_link_twice_or_every_link_slowly_is_counted(
    database: dbmod.Database, sink: Sink, server: str
) -> None:
    # The other side of the scanner rules: they must not swallow a reader's clicks.
    _setup(database, sink, track=True)
    _deliver_an_hour_ago(database)
    first, second = _tracked(_parts(database, "jan@a.sk")[0])
    for _ in range(2):  # the same link twice at once is not "every link of the message"
        assert httpx.get(f"{server}/c/{first}", headers={"User-Agent": BROWSER}).status_code == 302
    assert len(_events(database, "clicked")) == 2
    with database.engine.begin() as conn:  # a minute later, the other link
        conn.execute(sa.update(Event).values(occurred_at=dbmod.utcnow() - timedelta(minutes=1)))
    assert httpx.get(f"{server}/c/{second}", headers={"User-Agent": BROWSER}).status_code == 302
    assert _events(database, "click_flagged") == []
    assert sorted(bm.clicks("jar", db=database)["url"]) == sorted(
        [ORIGINALS[0]] * 2 + [ORIGINALS[1]]
    )

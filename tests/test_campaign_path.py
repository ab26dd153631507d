"""One path from campaign to bytes: the preview is what registration stores, images included."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns.preview import (
    PREVIEW_MESSAGE_ID,
    PREVIEW_UNSUBSCRIBE_ID,
    campaign_preview,
)
from bulkmail_kernel.config import templates_dir
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.exceptions import RecipientsSkippedWarning, TemplateError

EMAIL_TEMPLATES = sorted(
    row["name"] for _, row in bm.list_templates().iterrows() if row["channel"] == "email"
)
TOKEN_PATTERN = "https://shop.sk/u?t={token}"


def _people(database: dbmod.Database) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "first_name": ["Ján", "Ольга", "Eva"],
            "last_name": ["Novák", "Иванова", "Malá"],
            "email": ["jan@a.sk", "olga@a.sk", "eva@a.sk"],
            "mailing_allowed": ["yes", "yes", "no"],
            "language": ["sk", "ru", "sk"],
            "gender": ["m", "f", "f"],
        }
    )
    import_contacts(frame, db=database, progress=False)
    return contacts_frame(database)


def _sender(database: dbmod.Database, tmp_path: Path) -> None:
    bm.add_sender_account(
        "out",
        kind="file",
        from_email="news@shop.sk",
        from_name="Obchod",
        settings={"folder": str(tmp_path / "out"), "unsubscribe_url": TOKEN_PATTERN},
        db=database,
    )


def _invitation(database: dbmod.Database, tmp_path: Path, *, segment: bool = False) -> pd.DataFrame:
    """Import the people and create campaign 'c' from invitation_sk with its sample values."""
    people = _people(database)
    _sender(database, tmp_path)
    if segment:
        bm.save_segment("all", bm.FilterSpec(channel="email"), people, db=database)
    template = bm.load_template("invitation_sk")
    bm.create_campaign(
        "c", sender="out", template=template, segment="all" if segment else None,
        values=dict(template.sample), db=database,
    )  # fmt: skip
    return people


def _canonical(data: bytes) -> list[tuple[str, Any]]:
    """Return a message's headers and decoded parts, its token and Message-ID made neutral."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    links = re.findall(r"t=([A-Za-z0-9_-]+)", str(msg.get("List-Unsubscribe") or ""))
    token = links[0] if links else None

    def neutral(value: str) -> str:
        return value.replace(token, "TOKEN") if token else value

    out: list[tuple[str, Any]] = [
        (k, neutral(str(v))) for k, v in msg.items() if k not in ("Message-ID", "Date")
    ]
    for part in msg.walk():
        if part.is_multipart():
            out.append(("multipart", part.get_content_type()))
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if part.get_content_maintype() == "text":
            out.append((part.get_content_type(), neutral(payload.decode("utf-8"))))
        else:
            out.append((part.get_content_type(), (part.get("Content-ID"), payload)))
    return out


@pytest.mark.parametrize("name", EMAIL_TEMPLATES)
def test_preview_bytes_are_the_registered_bytes(name: str, sqlite_url: str, tmp_path: Path) -> None:
    database = dbmod.open_database(sqlite_url)
    people = _people(database)
    _sender(database, tmp_path)
    template = bm.load_template(name)
    # Notebook 04's path: the template to create_campaign, register without template=.
    bm.create_campaign(
        "c", sender="out", template=template, values=dict(template.sample), db=database
    )
    allowed = people[people["mailing_allowed"]]
    previews = [campaign_preview("c", allowed, i, db=database) for i in range(len(allowed))]
    with pytest.warns(RecipientsSkippedWarning, match=r"1 of 3 recipients skipped \(1 mailing"):
        bm.register("c", people, db=database)
    stored = {
        r.recipient: r.body
        for r in database.engine.connect().execute(
            sa.text(
                "SELECT m.recipient, b.body FROM messages m "
                "JOIN message_bodies b ON b.message_id = m.id"
            )
        )
    }
    assert len(stored) == len(allowed) == 2
    for preview, address in zip(previews, allowed["address"], strict=True):
        registered = bytes(stored[address])
        assert not preview.registered
        # The same bytes apart from the per-recipient Message-ID and unsubscribe token.
        head = registered.split(b"\r\n\r\n", 1)[0]
        assert not head.startswith(b"Date:")
        assert b"\r\nDate:" not in head
        assert _canonical(preview.data) == _canonical(registered)
        assert f"t={PREVIEW_UNSUBSCRIBE_ID}".encode() in preview.data
        assert f"Message-ID: {PREVIEW_MESSAGE_ID}".encode() in preview.data
        images = [p for p in _canonical(registered) if p[0].startswith("image/")]
        if (template.folder is not None) and list(template.folder.glob("*.png")):
            # The logo travels as an inline part the HTML points to, in both.
            assert images, f"{name}: no image part in the registered message"
            html = next(v for k, v in _canonical(registered) if k == "text/html")
            assert all(f"cid:{cid.strip('<>')}" in html for _, (cid, _) in images)
            assert 'src="logo.png"' not in html
    # A registered recipient's preview is the stored message itself.
    again = campaign_preview("c", allowed, 0, db=database)
    assert again.registered
    assert again.data == bytes(stored[allowed["address"].iloc[0]])
    assert again.rendered.subject == previews[0].rendered.subject
    assert [i.data for i in again.rendered.inline_images] == [
        i.data for i in previews[0].rendered.inline_images
    ]


def test_every_predefined_email_template_is_checked() -> None:
    assert len(EMAIL_TEMPLATES) == 12
    assert (templates_dir() / "invitation_sk" / "logo.png").is_file()


def test_a_misspelt_value_is_refused_at_create_campaign_naming_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    database = dbmod.open_database(sqlite_url)
    _people(database)
    _sender(database, tmp_path)
    template = bm.load_template("invitation_sk")
    values = dict(template.sample)
    values["event_nmae"] = values.pop("event_name")
    with pytest.raises(TemplateError, match="event_name") as caught:
        bm.create_campaign("c", sender="out", template=template, values=values, db=database)
    assert "'event_nmae': a typo?" in caught.value.message
    assert "add event_name=... to values" in caught.value.message
    assert bm.list_campaigns(db=database).empty


def test_a_value_missing_for_every_recipient_stops_register_before_queueing(
    sqlite_url: str, tmp_path: Path
) -> None:
    database = dbmod.open_database(sqlite_url)
    people = _people(database)
    _sender(database, tmp_path)
    # Not a required value, so create_campaign cannot know; every rendering fails alike.
    html = '<p>{{ first_name }}: {{ venue }}</p><a href="{{ unsubscribe_url }}">x</a>'
    template = bm.template_from_html(html, "Pozvánka", name="pasted")
    bm.create_campaign("c", sender="out", template=template, db=database)
    with pytest.raises(TemplateError, match=r"'venue' is undefined for every recipient \(2\)"):
        bm.register("c", people, db=database)
    assert bm.queue("c", db=database).empty


def test_an_image_that_cannot_be_found_is_named(sqlite_url: str, tmp_path: Path) -> None:
    database = dbmod.open_database(sqlite_url)
    _sender(database, tmp_path)
    html = '<img src="logo.png" alt="logo"><a href="{{ unsubscribe_url }}">x</a>'
    template = bm.template_from_html(html, "Pozvánka", name="pasted")
    with pytest.raises(TemplateError, match=r"image 'logo\.png' cannot be found"):
        bm.create_campaign("c", sender="out", template=template, db=database)


def test_a_subject_that_renders_empty_for_everyone_stops_register(
    sqlite_url: str, tmp_path: Path
) -> None:
    database = dbmod.open_database(sqlite_url)
    people = _people(database)
    _sender(database, tmp_path)
    html = '<p>Hi</p><a href="{{ unsubscribe_url }}">x</a>'
    template = bm.template_from_html(html, "{{ headline }}", name="pasted")
    bm.create_campaign("c", sender="out", template=template, values={"headline": ""}, db=database)
    with pytest.raises(TemplateError, match="the subject renders empty for every recipient"):
        bm.register("c", people, db=database)


def test_the_cli_prints_the_skip_line(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bulkmail_kernel.cli import main

    database = dbmod.open_database(sqlite_url)
    _invitation(database, tmp_path, segment=True)
    bm.unsubscribe_address("jan@a.sk", db=database)  # still a member of the saved segment
    assert main(["register", "c", "--db", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "1 messages in the queue of 'c'" in out
    line = "campaign 'c': 1 of 2 recipients skipped (1 suppressed); 1 registered; "
    assert line + "bm.skipped('c') lists them" in out.splitlines()


def test_the_preview_widget_shows_the_campaigns_message_and_then_the_stored_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    from bulkmail_kernel.widgets.preview import preview

    database = dbmod.open_database(sqlite_url)
    people = _invitation(database, tmp_path)
    allowed = people[people["mailing_allowed"]]
    panel = preview(campaign="c", frame=allowed, db=database)
    # The logo is the campaign's inline image, shown from its data (cid: cannot load).
    assert "data:image/png;base64," in panel.body.value
    assert "Obchod &lt;news@shop.sk&gt;" in panel.summary.value
    assert "bm-preview-stored" not in panel.summary.value
    assert panel.skips.value == ""  # nothing registered, nobody skipped
    with pytest.warns(RecipientsSkippedWarning):
        bm.register("c", people, db=database)
    panel = preview(campaign="c", db=database)  # the registered recipients
    assert "bm-preview-stored" in panel.summary.value
    # Who registration skipped, and why, in the panel's own words.
    line = "1 recipient was skipped at registration: 1 mailing not allowed"
    assert line + " — see bm.skipped(&#x27;c&#x27;)" in panel.skips.value
    assert panel.skips in panel.children
    assert "data:image/png;base64," in panel.body.value
    assert "No warnings" in panel.warnings.value


def test_the_preview_shows_a_misspelt_value_instead_of_the_sample() -> None:
    from bulkmail_kernel.widgets.preview import preview

    template = bm.load_template("invitation_sk")
    values = dict(template.sample)
    values["event_nmae"] = values.pop("event_name")
    frame = pd.DataFrame([{"contact_point_id": 1, "first_name": "Ján", "address": "j@a.sk"}])
    panel = preview(template, frame, values=values)
    assert "variable &#x27;event_name&#x27; is undefined" in panel.warnings.value
    assert "No warnings" not in panel.warnings.value
    # Browsing a template without values still uses its sample values.
    assert "No warnings" in preview(template, frame).warnings.value


def test_the_cli_previews_a_campaign_and_writes_its_bytes(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bulkmail_kernel.cli import main

    database = dbmod.open_database(sqlite_url)
    people = _invitation(database, tmp_path, segment=True)
    out_file = tmp_path / "first.eml"
    args = ["campaign-preview", "c", "--segment", "all", "--out", str(out_file)]
    assert main([*args, "--db", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "Image: logo.png (image/png, cid:logo." in out
    assert "rendered now, not stored" in out
    assert out_file.read_bytes() == campaign_preview("c", people.iloc[:1], db=database).data


def test_check_campaign_renders_the_bytes_one_row_per_recipient_and_problem(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bulkmail_kernel.cli import main

    database = dbmod.open_database(sqlite_url)
    people = _invitation(database, tmp_path)
    template = bm.load_template("invitation_sk")
    values = dict(template.sample)
    allowed = people[people["mailing_allowed"]].copy()
    assert bm.check_campaign("c", allowed, db=database).empty
    # A name the header folder could be fooled by, and an address only the MIME builder
    # refuses: check_template renders text and would pass the second.
    allowed.loc[allowed.index[0], "first_name"] = "=?utf-8?q?Bcc:_x@evil.sk?="
    allowed.loc[allowed.index[1], "address"] = "olga@a .sk"
    assert bm.check_template(template, allowed.iloc[1:], values=values).empty
    problems = bm.check_campaign("c", allowed, db=database)
    assert list(problems["contact_point_id"]) == list(allowed["contact_point_id"])
    assert "encoded-word" in problems["error"].iloc[0]
    assert "olga@a .sk" in problems["error"].iloc[1]
    bm.save_segment("all", bm.FilterSpec(channel="email"), people, db=database)
    assert main(["check-campaign", "c", "--segment", "all", "--db", sqlite_url]) == 0
    assert "0 problems" in capsys.readouterr().out


def test_an_sms_preview_is_the_registered_text(sqlite_url: str, tmp_path: Path) -> None:
    database = dbmod.open_database(sqlite_url)
    frame = pd.DataFrame(
        {"first_name": ["Ján"], "phone": ["0905 111 111"], "phone_allowed": ["yes"]}
    )
    import_contacts(frame, db=database, progress=False, region="SK")
    people = contacts_frame(database)
    phones = people[people["channel"] == "phone"]
    settings = {"folder": str(tmp_path / "sms"), "unsubscribe_url": TOKEN_PATTERN}
    bm.add_sender_account(
        "texts", kind="file", from_email="sms@shop.sk", settings=settings, db=database
    )
    template = bm.load_template("sms_reminder_sk")
    values = dict(template.sample)
    bm.create_campaign("s", sender="texts", template=template, values=values, db=database)
    before = campaign_preview("s", phones, db=database)
    bm.register("s", phones, db=database)
    after = campaign_preview("s", phones, db=database)
    assert after.registered
    assert not before.registered
    assert before.data == after.data
    assert after.rendered.sms == before.data.decode("utf-8")

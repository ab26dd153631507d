"""GDPR requests on SQLite and PostgreSQL: a copy of a person's data, and erasure that stays.

A real import from a CSV file, a real campaign sent to the local SMTP sink, a real
unsubscribe and saved segment; then the person's export is read back from its files,
the erasure is checked table by table, and the same CSV imported again is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli import main
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.contacts.forgotten import SALT_SETTING
from bulkmail_kernel.db import (
    Contact,
    ContactPoint,
    Event,
    ForgottenAddress,
    Message,
    MessageBody,
    Setting,
    Suppression,
)
from bulkmail_kernel.servers.sink import Sink

CSV = textwrap.dedent(
    """\
    Customer number;First name;Last name;E-mail;Phone;Opt-in;Pet
    C1;Jana;Nováková;Jana.Novakova@a.sk;+421 903 111 222;yes;Micka
    C2;Peter;Kráľ;peter@a.sk;;yes;
    """
)
HTML = '<p>Dobrý deň {{ first_name }},</p><p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p>'


@pytest.fixture
def sent(database: dbmod.Database, sink: Sink, tmp_path: Path) -> Path:
    """Import two people from a CSV, mail both, save a segment, unsubscribe Jana by hand."""
    source = tmp_path / "customers.csv"
    source.write_text(CSV, encoding="utf-8")
    result = bm.import_contacts(source, db=database, progress=False)
    assert (result.inserted, result.committed) == (2, True)
    bm.add_sender_account(
        "sink", kind="smtp", from_email="news@shop.sk",
        settings={"host": "127.0.0.1", "port": sink.port, "security": "none",
                  "unsubscribe_url": "https://shop.sk/u?t={token}"},
        db=database, check=False,
    )  # fmt: skip
    template = template_from_html(HTML, "Pozvánka pre {{ first_name }}", name="pozvanka")
    bm.create_campaign("jar", sender="sink", template=template, db=database)
    people = bm.contacts_frame(database)
    emails = people[people["channel"] == "email"]
    bm.register("jar", emails, db=database)
    bm.send("jar", rate_per_hour=float("inf"), progress=False, db=database)
    bm.save_segment("everyone", bm.FilterSpec(), people, db=database)
    # A second campaign registered for Jana and not sent yet.
    bm.create_campaign("leto", sender="sink", template=template, db=database)
    bm.register("leto", emails[emails["first_name"] == "Jana"], db=database)
    assert bm.unsubscribe_address("jana.novakova@a.sk", db=database)
    return source


def _everything(database: dbmod.Database) -> str:
    """Return every row of every table as text, to look for a person's traces."""
    out = []
    with database.engine.connect() as conn:
        for table in dbmod.Base.metadata.sorted_tables:
            out += [repr(tuple(row)) for row in conn.execute(sa.select(table))]
    return "\n".join(out).casefold()


def test_export_holds_everything_about_the_person(
    database: dbmod.Database, sent: Path, tmp_path: Path
) -> None:
    out = bm.export_contact_data("JANA.NOVAKOVA@A.SK", db=database)  # any spelling
    assert out.json_path.parent == tmp_path / "data" / "exports"  # the default folder
    data = json.loads(out.json_path.read_text(encoding="utf-8"))
    assert data == out.data
    assert data["contact"]["external_id"] == "C1"
    assert data["contact"]["attributes"] == {"pet": "Micka"}
    assert sorted(p["normalized"] for p in data["points"]) == [
        "+421903111222",
        "jana.novakova@a.sk",
    ]
    consent = {c["address"]: c["mailing_allowed"] for c in data["consent"]["addresses"]}
    # Unsubscribed by hand: the e-mail's opt-in is gone, the phone's stays.
    assert consent == {"Jana.Novakova@a.sk": False, "+421 903 111 222": True}
    kinds = [e["kind"] for e in data["consent"]["history"]]
    assert kinds[0] == "imported"
    assert "unsubscribed" in kinds
    unsub = next(e for e in data["consent"]["history"] if e["kind"] == "unsubscribed")
    assert unsub["source"] == "unsubscribed by the analyst"
    assert unsub["occurred_at"]
    assert [s["name"] for s in data["segments"]] == ["everyone", "everyone"]
    message, queued = data["messages"]
    assert (message["campaign"], message["status"]) == ("jar", "sent")
    assert (queued["campaign"], queued["status"]) == ("leto", "queued")
    assert message["subject"] == "Pozvánka pre Jana"
    assert message["sent_at"]
    assert "sent" in [e["kind"] for e in data["events"]]
    assert [(s["normalized"], s["reason"]) for s in data["suppressions"]] == [
        ("jana.novakova@a.sk", "unsubscribe")
    ]
    page = out.html_path.read_text(encoding="utf-8")
    assert "Data held about Jana Nováková" in page
    assert "Pozvánka pre Jana" in page
    assert "Peter" not in json.dumps(data)
    assert "Peter" not in page
    # The same person by customer number, by phone in another spelling, by contact id.
    for other in ("C1", "0903 111 222", out.contact_id, str(out.contact_id)):
        again = bm.export_contact_data(other, folder=tmp_path / "x", db=database)
        assert again.contact_id == out.contact_id


def test_forget_erases_the_person_keeps_counts_and_refuses_a_reimport(
    database: dbmod.Database, sent: Path
) -> None:
    report_before = bm.campaign_report("jar", db=database)
    with database.session() as s:
        n_events = s.scalar(sa.select(sa.func.count()).select_from(Event))
    done = bm.forget_contact("C1", db=database)
    assert (done.addresses, done.messages, done.suppressions) == (2, 2, 1)
    assert done.events >= 4  # imported, registered, sent, unsubscribed at least

    everything = _everything(database)
    for trace in ("jana", "nováková", "novakova", "micka", "903111222", "903 111 222"):
        assert trace not in everything, trace
    assert "peter@a.sk" in everything  # the other person is untouched
    pd.testing.assert_frame_equal(bm.campaign_report("jar", db=database), report_before)
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Contact)) == 1
        assert s.scalar(sa.select(sa.func.count()).select_from(ContactPoint)) == 1
        assert s.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0
        # Events stay (counts), and one more: the audit line, naming nobody.
        assert s.scalar(sa.select(sa.func.count()).select_from(Event)) == n_events + 1
        audit = s.scalars(sa.select(Event).where(Event.kind == "forgotten")).one()
        assert audit.contact_id is None
        assert audit.data["messages"] == 2
        erased, waiting = s.scalars(
            sa.select(Message).where(Message.contact_id.is_(None)).order_by(Message.id)
        )
        # The message still queued for her is removed: nothing goes to "erased-<id>".
        assert (waiting.recipient, waiting.status) == (f"erased-{waiting.id}", "removed")
        assert erased.recipient == f"erased-{erased.id}"
        assert erased.status == "sent"
        body = s.get(MessageBody, erased.id)
        assert body is not None
        assert (body.subject, body.body) == ("", b"")
        # The addresses are kept only as HMACs under this database's own salt.
        salt = bytes.fromhex(s.get(Setting, SALT_SETTING).value["salt"])  # type: ignore[union-attr]
        assert len(salt) == 32
        hashes = set(s.scalars(sa.select(ForgottenAddress.address_hash)))
    expected = {
        hmac.new(salt, f"{ch}:{ident}".encode(), hashlib.sha256).hexdigest()
        for ch, ident in (("email", "jana.novakova@a.sk"), ("phone", "+421903111222"))
    }
    assert hashes == expected
    assert hashlib.sha256(b"email:jana.novakova@a.sk").hexdigest() not in hashes
    with pytest.raises(bm.ContactError, match="nobody is known by it"):
        bm.export_contact_data("jana.novakova@a.sk", db=database)

    # The firm's next CRM export still holds her: the import refuses her row and says why.
    day = done.forgotten_at.date().isoformat()
    why = f"this address was erased on request on {day}; not imported"
    again = bm.import_contacts(sent, db=database, progress=False)
    assert not again.committed
    assert [tuple(r) for r in again.report.itertuples(index=False)] == [
        (2, "rejected", "E-mail", "Jana.Novakova@a.sk", why)
    ]
    skipped = bm.import_contacts(sent, db=database, on_error="skip", progress=False)
    assert (skipped.inserted, skipped.unchanged, skipped.rejected) == (0, 1, 1)
    # Her phone alone, in another spelling, on a new row with a new name: refused too.
    phone_only = pd.DataFrame({"first_name": ["J."], "phone": ["0903 111 222"]})
    by_phone = bm.import_contacts(phone_only, db=database, on_error="skip", progress=False)
    assert by_phone.inserted == 0
    assert by_phone.report["reason"].tolist() == [why]
    assert "jana" not in _everything(database)


def test_forget_waits_for_a_message_being_sent(database: dbmod.Database, sent: Path) -> None:
    with database.session() as s:  # a worker has claimed Jana's queued message
        s.execute(sa.update(Message).where(Message.status == "queued").values(status="sending"))
    with pytest.raises(bm.ContactError, match="of campaign 'leto' is being sent to them"):
        bm.forget_contact("C1", db=database)
    with database.session() as s:  # nothing was erased
        assert s.scalar(sa.select(Contact.first_name).where(Contact.external_id == "C1")) == "Jana"
        assert s.scalar(sa.select(sa.func.count()).select_from(ForgottenAddress)) == 0


def test_the_commands_export_and_forget(sqlite_url: str, sink: Sink, tmp_path: Path) -> None:
    database = dbmod.open_database(sqlite_url)
    source = tmp_path / "customers.csv"
    source.write_text(CSV, encoding="utf-8")
    bm.import_contacts(source, db=database, progress=False)
    folder = tmp_path / "request"
    assert main(["export-contact-data", "C1", "--folder", str(folder), "--db", sqlite_url]) == 0
    assert sorted(p.suffix for p in folder.iterdir()) == [".html", ".json"]
    assert main(["forget-contact", "C1", "--db", sqlite_url]) == 2  # no --yes: nothing done
    with database.session() as s:
        assert s.scalar(sa.select(Contact.id).where(Contact.external_id == "C1")) is not None
    assert main(["forget-contact", "C1", "--yes", "--db", sqlite_url]) == 0
    assert main(["export-contact-data", "C1", "--db", sqlite_url]) == 2
    assert "jana" not in _everything(database)

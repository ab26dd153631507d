"""Campaigns: registration through the real renderer, queue operations, unsubscribe, samples."""

from __future__ import annotations

import email
import email.policy
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import bulkmail_kernel as cm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel import history, send
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.db import Suppression, UnsubscribeToken
from bulkmail_kernel.exceptions import ConfigError, SendError
from bulkmail_kernel.outbox.suppressions import hash_token
from bulkmail_kernel.servers.sink import Sink

HTML = (
    "<html><body><p>Dobrý deň {{ first_name }},</p><p>pozývame vás.</p>"
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p></body></html>'
)


@pytest.fixture
def people(database: dbmod.Database) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "first_name": ["Ján", "Eva", "Olga", "Peter"],
            "last_name": ["Novák", "Malá", "Ivanova", "Kráľ"],
            "email": ["jan@a.sk", "eva@a.sk", "olga@a.sk", "peter@a.sk"],
            "mailing_allowed": ["yes", "yes", "no", "yes"],
            "language": ["sk", "sk", "ru", "sk"],
        }
    )
    import_contacts(frame, db=database, progress=False)
    return contacts_frame(database)


def _campaign(database: dbmod.Database, port: int, name: str = "jar") -> cm.CampaignInfo:
    cm.add_sender_account(
        "sink",
        kind="smtp",
        from_email="news@shop.sk",
        from_name="Obchod",
        settings={
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "unsubscribe_url": "https://shop.sk/u?t={token}",
        },
        db=database,
        check=False,
    )
    template = template_from_html(HTML, "Pozvánka pre {{ first_name }}", name="pozvanka")
    return cm.create_campaign(name, sender="sink", template=template, db=database)


def test_register_renders_skips_and_is_idempotent(
    database: dbmod.Database, people: pd.DataFrame, sink: Sink
) -> None:
    info = _campaign(database, sink.port)
    q = cm.register(info.name, people.iloc[:3], db=database)
    assert sorted(q["recipient"]) == ["eva@a.sk", "jan@a.sk"]
    assert set(q["status"].astype(str)) == {"queued"}
    assert q["message_id_header"].str.endswith("@shop.sk>").all()
    skipped = cm.skipped(info.name, db=database)
    assert list(zip(skipped["address"], skipped["reason"], strict=True)) == [
        ("olga@a.sk", "mailing not allowed")
    ]
    # Again, with one more person: only Peter is added; Message-IDs of the others are kept.
    q2 = cm.register(info.name, people, db=database)
    assert sorted(q2["recipient"]) == ["eva@a.sk", "jan@a.sk", "peter@a.sk"]
    assert set(q["message_id_header"]) <= set(q2["message_id_header"])
    assert cm.get_campaign(info.name, db=database).status == "registered"
    with database.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(UnsubscribeToken)) == 3


def test_sent_message_carries_headers_and_working_unsubscribe(
    database: dbmod.Database, people: pd.DataFrame, sink: Sink
) -> None:
    info = _campaign(database, sink.port)
    cm.register(info.name, people, db=database)
    summary = send(info.name, rate_per_hour=math.inf, progress=False, db=database)
    assert summary.sent == 3
    msg = email.message_from_bytes(
        sink.received_by("jan@a.sk")[0].data, policy=email.policy.default
    )
    assert msg["Subject"] == "Pozvánka pre Ján"
    assert msg["Date"] is not None
    assert len(msg.get_all("Date")) == 1
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.search(r"<(https://shop\.sk/u\?t=[^>]+)>", msg["List-Unsubscribe"]).group(1)
    token = link.split("t=", 1)[1]
    # Only the hash is stored: the token itself is nowhere in the database.
    with database.session() as s:
        hashes = set(s.scalars(sa.select(UnsubscribeToken.token_hash)))
    assert token not in hashes
    assert hash_token(token) in hashes
    assert cm.unsubscribe(token, db=database) is True
    assert cm.unsubscribe(token, db=database) is True  # one-click may POST twice
    assert cm.unsubscribe("no-such-token", db=database) is False
    frame = contacts_frame(database).set_index("address")
    assert not frame.loc["jan@a.sk", "mailing_allowed"]
    with database.session() as s:
        assert s.scalars(sa.select(Suppression.reason)).all() == ["unsubscribe"]
    kinds = list(history(int(frame.loc["jan@a.sk", "contact_id"]), db=database)["kind"])
    assert kinds[-3:] == ["registered", "sent", "unsubscribed"]


def test_remove_from_queue_by_ids_and_by_filtered_frame(
    database: dbmod.Database, people: pd.DataFrame, sink: Sink
) -> None:
    info = _campaign(database, sink.port)
    q = cm.register(info.name, people, db=database)
    assert cm.remove_from_queue(info.name, q[q["recipient"] == "eva@a.sk"], db=database) == 1
    assert cm.remove_from_queue(info.name, [int(q["message_id"].iloc[0])], db=database) == 1
    summary = send(info.name, rate_per_hour=math.inf, progress=False, db=database)
    assert summary.sent == 1
    assert [m.rcpt_tos for m in sink.messages] == [("peter@a.sk",)]
    with pytest.raises(SendError, match="no 'message_id' column"):
        cm.remove_from_queue(info.name, pd.DataFrame({"id": [1]}), db=database)


def test_cancel_removes_pending(database: dbmod.Database, people: pd.DataFrame, sink: Sink) -> None:
    info = _campaign(database, sink.port)
    cm.register(info.name, people, db=database)
    assert cm.cancel(info.name, db=database).status == "cancelled"
    assert set(cm.queue(info.name, db=database)["status"].astype(str)) == {"removed"}
    with pytest.raises(SendError, match="cancelled"):
        send(info.name, progress=False, db=database)


def test_send_samples_marks_subject_and_leaves_queue_alone(
    database: dbmod.Database, people: pd.DataFrame, sink: Sink
) -> None:
    info = _campaign(database, sink.port)
    q = cm.register(info.name, people, db=database)
    out = cm.test_send(info.name, ["me@test.sk", "boss@test.sk"], db=database)
    assert list(out["status"]) == ["sent", "sent"]
    assert out["subject"].str.startswith("[TEST] Pozvánka pre").all()
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == ["boss@test.sk", "me@test.sk"]
    after = cm.queue(info.name, db=database)
    pd.testing.assert_frame_equal(q, after)


def test_passwords_never_go_into_the_database(database: dbmod.Database) -> None:
    with pytest.raises(ConfigError, match="never stored"):
        cm.add_sender_account(
            "x",
            kind="smtp",
            from_email="a@b.sk",
            settings={"host": "h", "password": "secret"},
            db=database,
            check=False,
        )


def test_missing_unsubscribe_pattern_is_a_clear_error(
    database: dbmod.Database, people: pd.DataFrame
) -> None:
    cm.add_sender_account(
        "bare", kind="file", from_email="a@shop.sk", settings={"folder": "out"}, db=database
    )
    cm.create_campaign("c", sender="bare", template=template_from_html(HTML, "S"), db=database)
    with pytest.raises(ConfigError, match="unsubscribe_url"):
        cm.register("c", people, db=database)


def test_file_transport_dry_run(
    database: dbmod.Database, people: pd.DataFrame, tmp_path: Path
) -> None:
    cm.add_sender_account(
        "dry",
        kind="file",
        from_email="a@shop.sk",
        settings={"folder": str(tmp_path / "out"), "unsubscribe_url": "https://shop.sk/u/{token}"},
        db=database,
    )
    cm.create_campaign("c", sender="dry", template=template_from_html(HTML, "S"), db=database)
    cm.register("c", people, db=database)
    assert send("c", rate_per_hour=math.inf, progress=False, db=database).sent == 3
    files = sorted((tmp_path / "out").glob("*.eml"))
    assert len(files) == 3
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["X-Envelope-To"] == parsed["To"].addresses[0].addr_spec

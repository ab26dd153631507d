"""The upgrade to one identity per address (0003) on SQLite and PostgreSQL: merged, history kept."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import email_validator
import pytest
import sqlalchemy as sa

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli import main
from bulkmail_kernel.db import (
    Campaign,
    Contact,
    ContactPoint,
    Event,
    Message,
    Segment,
    SegmentMember,
    SenderAccount,
    Suppression,
    UnsubscribeToken,
)


def _old_normalized(address: str) -> str:
    """Return what imports before 0003 stored: email-validator's form, case kept."""
    return email_validator.validate_email(address, check_deliverability=False).normalized


def _at(year: int, month: int = 1) -> datetime:
    return datetime(year, month, 1, 9, 0, tzinfo=UTC)


def _insert(conn: sa.Connection, model: Any, **values: Any) -> int:
    return conn.execute(sa.insert(model).values(**values).returning(model.id)).scalar_one()


def _contact(conn: sa.Connection, created: datetime, **values: Any) -> int:
    return _insert(conn, Contact, registered_at=created, created_at=created, **values)


def _point(conn: sa.Connection, contact: int, typed: str, created: datetime, **values: Any) -> int:
    return _insert(
        conn,
        ContactPoint,
        contact_id=contact,
        channel="email",
        value=typed,
        normalized=_old_normalized(typed),
        created_at=created,
        **values,
    )


def _message(
    conn: sa.Connection, campaign: int, contact: int, point: int, to: str, status: str
) -> int:
    return _insert(
        conn,
        Message,
        campaign_id=campaign,
        contact_id=contact,
        contact_point_id=point,
        channel="email",
        recipient=to,
        status=status,
        message_id_header=f"<{campaign}.{point}.{status}@shop.sk>",
    )


def _build_at_0002(url: str) -> dict[str, int]:
    """Build a database at 0002 holding one person as two contacts, with a history each."""
    engine = dbmod.create_db_engine(url)
    dbmod.upgrade(engine, "0002")
    ids: dict[str, int] = {}
    with engine.begin() as conn:
        # Dana first came as dup.same@ (2024), then again as DUP.SAME@ (2025) with more data.
        ids["dana"] = _contact(conn, _at(2024), first_name="Dana", attributes={"pet": "Rex"})
        ids["dana2"] = _contact(
            conn,
            _at(2025),
            last_name="Dupová",
            external_id="C7",
            attributes={"pet": "Max", "city": "Nitra"},
        )
        ids["a1"] = _point(
            conn, ids["dana"], "dup.same@x.sk", _at(2024), mailing_allowed=True, is_preferred=True
        )
        ids["phone"] = _insert(
            conn, ContactPoint, contact_id=ids["dana"], channel="phone", value="0903 123 456",
            normalized="+421903123456", is_preferred=True, mailing_allowed=True,
        )  # fmt: skip
        ids["b1"] = _point(
            conn,
            ids["dana2"],
            "DUP.SAME@X.SK",
            _at(2025),
            mailing_allowed=True,
            is_preferred=True,
            soft_bounces=1,
        )
        # Ivan: the IDN domain once in Unicode, once in A-labels; only one spelling opted in.
        ids["ivan"] = _contact(conn, _at(2024, 3), first_name="Ivan")
        ids["ivan2"] = _contact(conn, _at(2024, 6), first_name="Ivan")
        ids["c1"] = _point(conn, ids["ivan"], "Ivan@BÜCHER.de", _at(2024, 3), mailing_allowed=True)
        ids["d1"] = _point(
            conn, ids["ivan2"], "ivan@xn--bcher-kva.de", _at(2024, 6), mailing_allowed=False
        )
        # Solo has one spelling only: re-keyed, not merged.
        ids["solo"] = _contact(conn, _at(2024, 2), first_name="Solo")
        ids["e1"] = _point(conn, ids["solo"], "Solo@X.sk", _at(2024, 2), mailing_allowed=True)

        sender = _insert(conn, SenderAccount, name="s", kind="file")
        ids["spring"] = _insert(conn, Campaign, name="spring", sender_account_id=sender)
        ids["autumn"] = _insert(conn, Campaign, name="autumn", sender_account_id=sender)
        # Both of Dana's contacts were registered to spring: one sent, one still waiting.
        ids["m_sent"] = _message(
            conn, ids["spring"], ids["dana"], ids["a1"], "dup.same@x.sk", "sent"
        )
        ids["m_wait"] = _message(
            conn, ids["spring"], ids["dana2"], ids["b1"], "DUP.SAME@x.sk", "queued"
        )
        ids["m_autumn"] = _message(
            conn, ids["autumn"], ids["dana2"], ids["b1"], "DUP.SAME@x.sk", "sent"
        )
        ids["m_solo"] = _message(conn, ids["autumn"], ids["solo"], ids["e1"], "Solo@x.sk", "queued")
        ids["ev_import"] = _insert(
            conn, Event, kind="imported", contact_id=ids["dana2"], contact_point_id=ids["b1"],
            detail="old.csv row 3", data={}, occurred_at=_at(2025),
        )  # fmt: skip
        ids["ev_sent"] = _insert(
            conn, Event, kind="sent", contact_id=ids["dana2"], contact_point_id=ids["b1"],
            campaign_id=ids["autumn"], message_id=ids["m_autumn"], detail="", data={},
            occurred_at=_at(2025, 9),
        )  # fmt: skip
        conn.execute(
            sa.insert(UnsubscribeToken).values(
                token_hash="b" * 64, contact_point_id=ids["b1"], campaign_id=ids["autumn"]
            )
        )
        # Unsubscribed under one spelling, bounced under the other.
        ids["s_unsub"] = _insert(
            conn, Suppression, channel="email", normalized="DUP.SAME@x.sk", reason="unsubscribe",
            detail="campaign autumn", created_at=_at(2025, 10),
        )  # fmt: skip
        ids["s_bounce"] = _insert(
            conn, Suppression, channel="email", normalized="dup.same@x.sk", reason="hard_bounce",
            detail="550 5.1.1", created_at=_at(2025, 11), message_id=ids["m_sent"],
        )  # fmt: skip
        _insert(
            conn, Suppression, channel="email", normalized="Other@x.sk", reason="manual", detail=""
        )
        ids["both"] = _insert(conn, Segment, name="both")
        ids["second"] = _insert(conn, Segment, name="second")
        conn.execute(
            sa.insert(SegmentMember),
            [
                {"segment_id": ids["both"], "contact_point_id": ids["a1"]},
                {"segment_id": ids["both"], "contact_point_id": ids["b1"]},
                {"segment_id": ids["second"], "contact_point_id": ids["b1"]},
                {"segment_id": ids["second"], "contact_point_id": ids["d1"]},
            ],
        )
    engine.dispose()
    return ids


def test_the_upgrade_merges_one_address_and_keeps_every_history(
    db_url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _build_at_0002(db_url)
    caplog.set_level(logging.WARNING, logger="bulkmail")
    # The command that upgrades a database prints what it merged.
    assert main(["open-database", "--db", db_url]) == 0
    out = capsys.readouterr().out
    # The head, whatever upgrades follow the identity one (not a number copied here).
    assert f"at revision {dbmod.current_revision(dbmod.open_database(db_url).engine)}\n" in out
    assert "5 merges of one address spelled differently" in out
    assert "contact 2 merged into contact 1: same address dup.same@x.sk" in out

    db = dbmod.open_database(db_url)
    with db.session() as s:
        contacts = {c.id: c for c in s.scalars(sa.select(Contact))}
        points = {p.id: p for p in s.scalars(sa.select(ContactPoint))}
        messages = {m.id: m for m in s.scalars(sa.select(Message))}
        events = {e.id: e for e in s.scalars(sa.select(Event))}
        suppressions = s.execute(
            sa.select(Suppression.normalized, Suppression.reason, Suppression.detail)
        ).all()
        members = set(
            s.execute(sa.select(SegmentMember.segment_id, SegmentMember.contact_point_id))
        )
        token_point = s.scalars(sa.select(UnsubscribeToken.contact_point_id)).one()

    # The oldest contact survives with what the other knew, and every point.
    assert set(contacts) == {ids["dana"], ids["ivan"], ids["solo"]}
    dana = contacts[ids["dana"]]
    assert (dana.first_name, dana.last_name, dana.external_id) == ("Dana", "Dupová", "C7")
    assert dana.attributes == {"pet": "Rex", "city": "Nitra"}
    assert {p.id for p in points.values() if p.contact_id == dana.id} == {ids["a1"], ids["phone"]}
    a1 = points[ids["a1"]]
    assert (a1.normalized, a1.value, a1.mailing_allowed, a1.soft_bounces) == (
        "dup.same@x.sk", "dup.same@x.sk", True, 1,
    )  # fmt: skip
    # Ivan: one point in A-labels; allowed under one spelling only, so not allowed.
    c1 = points[ids["c1"]]
    assert (c1.contact_id, c1.normalized, c1.value, c1.mailing_allowed) == (
        ids["ivan"], "ivan@xn--bcher-kva.de", "Ivan@BÜCHER.de", False,
    )  # fmt: skip
    assert points[ids["e1"]].normalized == "solo@x.sk"
    assert ids["b1"] not in points
    assert ids["d1"] not in points

    # Messages: all kept, moved to the survivor; the waiting duplicate is not sent twice.
    assert {m.id for m in messages.values()} == {
        ids["m_sent"], ids["m_wait"], ids["m_autumn"], ids["m_solo"],
    }  # fmt: skip
    assert all(m.contact_id in contacts for m in messages.values())
    sent, wait, autumn = messages[ids["m_sent"]], messages[ids["m_wait"]], messages[ids["m_autumn"]]
    assert (sent.recipient, sent.status) == ("dup.same@x.sk", "sent")
    assert (wait.recipient, wait.status, wait.contact_id, wait.contact_point_id) == (
        "DUP.SAME@x.sk", "removed", dana.id, ids["a1"],
    )  # fmt: skip
    assert f"same address as message {ids['m_sent']}" in wait.last_error
    assert (autumn.recipient, autumn.contact_id, autumn.contact_point_id) == (
        "dup.same@x.sk", dana.id, ids["a1"],
    )  # fmt: skip
    assert messages[ids["m_solo"]].recipient == "solo@x.sk"

    # Events: the old ones point at the survivor; each merge is one more.
    for key in ("ev_import", "ev_sent"):
        event = events[ids[key]]
        assert (event.contact_id, event.contact_point_id) == (dana.id, ids["a1"])
    skipped = [e for e in events.values() if e.kind == "skipped"]
    assert [(e.message_id, e.campaign_id) for e in skipped] == [(ids["m_wait"], ids["spring"])]
    merged = [e for e in events.values() if e.kind == "merged"]
    assert sorted(e.data["merge"] for e in merged) == [
        "contact", "contact", "contact_point", "contact_point", "suppression",
    ]  # fmt: skip
    contact_merge = next(
        e for e in merged if e.data["merge"] == "contact" and e.contact_id == dana.id
    )
    # The merged contact as it was, custom field values the survivor did not take included.
    assert contact_merge.data["merged_row"]["attributes"] == {"pet": "Max", "city": "Nitra"}
    assert contact_merge.data["merged_row"]["external_id"] == "C7"

    # One suppression per identity, the oldest; the other is in the merge's record.
    assert sorted(suppressions) == [
        ("dup.same@x.sk", "unsubscribe", "campaign autumn"),
        ("other@x.sk", "manual", ""),
    ]
    record = next(e for e in merged if e.data["merge"] == "suppression")
    assert record.data["merged_row"]["reason"] == "hard_bounce"

    # Segments and the unsubscribe token follow the point.
    assert members == {
        (ids["both"], ids["a1"]),
        (ids["second"], ids["a1"]),
        (ids["second"], ids["c1"]),
    }
    assert token_point == ids["a1"]

    # Said: one log line per merge, and readable afterwards.
    lines = [r.getMessage() for r in caplog.records if "identity upgrade" in r.getMessage()]
    assert len([line for line in lines if "merged" in line or "suppression of" in line]) >= 5
    report = bm.identity_merges(db=db)
    assert len(report) == 5
    point_rows = report[report["merge"] == "contact_point"]
    assert sorted(zip(point_rows.kept_value, point_rows.merged_value, strict=True)) == [
        ("Ivan@BÜCHER.de", "ivan@xn--bcher-kva.de"),
        ("dup.same@x.sk", "DUP.SAME@X.SK"),
    ]
    assert bm.identity_merges(since=datetime.now(UTC), db=db).empty
    assert main(["identity-merges", "--db", db_url, "--csv"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("merged_at,merge,identity,kept_id,merged_id,")
    assert len(listed) == 6

    # After the upgrade the merged person is suppressed whichever spelling a frame shows.
    frame = bm.contacts_frame(db)
    assert frame.set_index("address").suppressed["dup.same@x.sk"]


def test_an_upgrade_with_nothing_to_merge_says_nothing(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = dbmod.create_db_engine(db_url)
    dbmod.upgrade(engine, "0002")
    with engine.begin() as conn:
        contact = _contact(conn, _at(2024), first_name="Eva")
        _point(conn, contact, "eva@x.sk", _at(2024))
    engine.dispose()
    assert main(["open-database", "--db", db_url]) == 0
    assert "merges" not in capsys.readouterr().out
    assert bm.identity_merges(db=dbmod.open_database(db_url)).empty


def test_two_customer_records_sharing_a_mailbox_stay_two_contacts(db_url: str) -> None:
    """Different external ids are different records: only the address moves, to the older."""
    engine = dbmod.create_db_engine(db_url)
    dbmod.upgrade(engine, "0002")
    with engine.begin() as conn:
        jan = _contact(conn, _at(2024), first_name="Ján", external_id="C1")
        eva = _contact(conn, _at(2025), first_name="Eva", external_id="C2")
        jan_mail = _point(conn, jan, "rodina.kral@x.sk", _at(2024), mailing_allowed=True)
        eva_mail = _point(conn, eva, "Rodina.Kral@x.sk", _at(2025), mailing_allowed=True)
        eva_phone = _insert(
            conn, ContactPoint, contact_id=eva, channel="phone", value="+421903123456",
            normalized="+421903123456",
        )  # fmt: skip
    engine.dispose()
    db = dbmod.open_database(db_url)
    with db.session() as s:
        people = dict(s.execute(sa.select(Contact.external_id, Contact.first_name)).all())
        owners = dict(s.execute(sa.select(ContactPoint.id, ContactPoint.contact_id)).all())
    assert people == {"C1": "Ján", "C2": "Eva"}
    assert owners == {jan_mail: jan, eva_phone: eva}
    report = bm.identity_merges(db=db)
    assert list(report["merge"]) == ["contact_point"]
    assert report.merged_id.iloc[0] == eva_mail
    assert report.detail.iloc[0].endswith(f"contact {eva} stays apart (another external id)")

"""The permission to export contact data, and the export log.

On the real PostgreSQL: two real login roles made by ``create_roles`` on a fresh
schema, each connecting as itself (trust auth). The analyst filters and counts on
masked addresses, and is refused — with a message naming the role, the columns and
the exporter role — when it exports contact data or SELECTs addresses itself; the
exporter's exports succeed and are logged. On SQLite the database's setting decides.
"""

from __future__ import annotations

import csv
import getpass
import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import PG_URL

import bulkmail_kernel as bm
from bulkmail_kernel import config
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.campaigns.monitor import registration_skips
from bulkmail_kernel.cli import main
from bulkmail_kernel.compose.templates import template_from_html
from bulkmail_kernel.servers.sink import Sink

CSV = textwrap.dedent(
    """\
    Customer number;First name;Last name;E-mail;Phone;Opt-in;City
    C1;Jana;Nováková;jana@a.sk;+421 903 111 222;yes;Nitra
    C2;Peter;Kráľ;peter@b.sk;;yes;Nitra
    C3;Eva;Malá;eva@c.sk;;no;Žilina
    """
)


def _import(database: dbmod.Database, tmp_path: Path) -> None:
    source = tmp_path / "customers.csv"
    source.write_text(CSV, encoding="utf-8")
    result = bm.import_contacts(source, db=database, progress=False)
    assert result.inserted == 3


def _as(role: str, owner_url: str) -> str:
    """Return ``owner_url`` (the test schema's search_path) logging in as ``role``."""
    url = sa.engine.make_url(owner_url).set(username=role)
    return url.render_as_string(hide_password=False)


def _drop_roles(*roles: str) -> None:
    """Close every engine (the roles' sessions), then drop the roles and their grants."""
    dbmod.close_all()
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        for role in roles:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
            if exists.first():
                conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
                conn.execute(sa.text(f'DROP ROLE "{role}"'))
    admin.dispose()


@pytest.fixture
def roles(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    """Yield (analyst, analyst URL, exporter, exporter URL) on a fresh schema with contacts."""
    owner = dbmod.open_database(pg_url)
    _import(owner, tmp_path)
    tag = uuid.uuid4().hex[:8]
    analyst, exporter = f"roles_a_{tag}", f"roles_e_{tag}"
    try:
        grants = bm.create_roles(analyst=analyst, exporter=exporter, db=owner)
        hidden = grants[(grants["role"] == analyst) & (grants["table"] == "contact_points")]
        assert hidden["may_read"].iloc[0] == "all but value, normalized"
        yield analyst, _as(analyst, pg_url), exporter, _as(exporter, pg_url)
    finally:
        _drop_roles(analyst, exporter)


@pytest.mark.postgres
def test_the_analyst_filters_on_masked_data_but_cannot_read_or_export_it(
    roles: tuple[str, str, str, str], pg_url: str, tmp_path: Path
) -> None:
    analyst, analyst_url, _, _ = roles
    db = dbmod.open_database(analyst_url)
    frame = bm.contacts_frame(db)
    assert frame.attrs["hidden_columns"] == [
        "contacts.first_name", "contacts.last_name", "contacts.patronymic",
        "contact_points.value", "contact_points.normalized", "messages.recipient",
        "messages.last_error", "message_bodies.subject", "message_bodies.body",
        "suppressions.normalized", "suppressions.detail", "events.detail", "events.data",
        "message_links.url", "forgotten_addresses.address_hash",
    ]  # fmt: skip
    emails = frame[frame["channel"] == "email"]
    assert sorted(emails["address"]) == ["***@a.sk", "***@b.sk", "***@c.sk"]
    assert set(frame["first_name"]) == {"***"}
    assert "jana" not in frame.to_csv()
    # Filtering and counting work on what the analyst may see.
    chosen = bm.filter_recipients(
        frame, bm.FilterSpec(channel="email", mailing_allowed=True, attributes={"city": "Nitra"})
    )
    assert len(chosen) == 2
    # A direct SELECT of the addresses: the server refuses, bulkmail says why and what to do.
    with pytest.raises(bm.ContactAccessError) as denied, db.engine.connect() as conn:
        conn.execute(sa.text("SELECT value FROM contact_points"))
    message = str(denied.value)
    assert f'database role "{analyst}"' in message
    assert "contact_points.value" in message
    assert "ask for the exporter role" in message
    assert denied.value.fields["columns"] == ["value"]
    # Exporting contact data is refused (and nothing is written); the refusal is logged.
    target = tmp_path / "nitra.csv"
    with pytest.raises(bm.ContactAccessError, match="ask for the exporter role"):
        bm.export_recipients(chosen, target, ["contact_id", "address"],
                             include_contact_data=True, segment="nitra", db=db,
                             progress=False)  # fmt: skip
    assert not target.exists()
    with pytest.raises(bm.ContactAccessError, match=rf'"{analyst}".*contact_points.value'):
        bm.export_contact_data(1, folder=tmp_path, db=db)
    assert not list(tmp_path.glob("contact-*"))
    # Columns that are not contact data still export, unlogged.
    safe = bm.export_recipients(chosen, tmp_path / "ids.csv", ["contact_id", "city"], db=db,
                                progress=False)  # fmt: skip
    assert safe.exists()
    log = bm.export_log(db=db)
    assert list(log["outcome"]) == ["refused", "refused"]
    assert set(log["who"]) == {analyst}
    assert list(log["kind"]) == ["contact", "segment"]
    assert log["segment"].iloc[1] == "nitra"
    assert log["columns"].iloc[1] == "address"
    # Without the masked view (grants made by hand) the frame says what to run.
    with dbmod.open_database(pg_url).engine.begin() as conn:
        conn.execute(sa.text(f'REVOKE SELECT ON contact_points_masked FROM "{analyst}"'))
    with pytest.raises(bm.ContactAccessError, match="create-roles --analyst"):
        bm.contacts_frame(db)


@pytest.mark.postgres
def test_the_exporter_exports_and_every_export_is_logged(
    roles: tuple[str, str, str, str], tmp_path: Path
) -> None:
    _, _, exporter, exporter_url = roles
    db = dbmod.open_database(exporter_url)
    frame = bm.contacts_frame(db)
    assert "hidden_columns" not in frame.attrs
    with db.engine.connect() as conn:
        values = set(conn.execute(sa.text("SELECT value FROM contact_points")).scalars())
    assert "jana@a.sk" in values
    target = tmp_path / "all.csv"
    bm.export_recipients(frame, target, ["contact_id", "address"], include_contact_data=True,
                         segment="everyone", db=db, progress=False)  # fmt: skip
    with target.open(encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    assert {"jana@a.sk", "peter@b.sk", "'+421903111222"} <= {r["address"] for r in rows}
    jana = bm.export_contact_data("jana@a.sk", folder=tmp_path, db=db)
    assert json.loads(jana.json_path.read_text(encoding="utf-8"))["contact"]["first_name"] == "Jana"

    log = bm.export_log(db=db)
    assert list(log["outcome"]) == ["exported", "exported"]
    assert set(log["who"]) == {exporter}
    contact, segment = log.iloc[0], log.iloc[1]
    assert (segment["kind"], segment["segment"], segment["rows"]) == ("segment", "everyone", 4)
    assert (segment["columns"], segment["path"]) == ("address", str(target))
    assert (contact["kind"], contact["contact_id"], contact["rows"]) == (
        "contact",
        jana.contact_id,
        2,
    )
    assert contact["path"] == str(jana.json_path)
    assert str(log["exported_at"].dt.tz) == str(config.local_timezone())


def _campaign_for_nitra(owner: dbmod.Database, db: dbmod.Database, sink: Sink) -> None:
    """Create campaign "jar" for segment "nitra" (Jana, Peter) as ``db``, the owner's account."""
    bm.add_sender_account(
        "sink", kind="smtp", from_email="news@shop.sk",
        settings={"host": "127.0.0.1", "port": sink.port, "security": "none",
                  "unsubscribe_url": "https://shop.sk/u?t={token}"},
        db=owner, check=False,
    )  # fmt: skip
    html = '<p>Hi {{ first_name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    template = template_from_html(html, "Hello {{ first_name }}", name="hello")
    spec = bm.FilterSpec(channel="email", attributes={"city": "Nitra"})
    assert bm.save_segment("nitra", spec, bm.contacts_frame(db), db=db).name == "nitra"
    bm.create_campaign("jar", sender="sink", template=template, segment="nitra", db=db)


def _send_as_owner(owner: dbmod.Database) -> None:
    bm.register("jar", db=owner)
    done = bm.send("jar", rate_per_hour=float("inf"), progress=False, db=owner)
    assert done.sent == 2


@pytest.mark.postgres
def test_the_analyst_prepares_a_campaign_and_the_owner_sends_it(
    roles: tuple[str, str, str, str], pg_url: str, sink: Sink
) -> None:
    """The analyst segments, creates and previews; registration and sending run as the owner."""
    _, analyst_url, _, _ = roles
    owner, db = dbmod.open_database(pg_url), dbmod.open_database(analyst_url)
    _campaign_for_nitra(owner, db, sink)
    frame = bm.contacts_frame(db)
    spec = bm.FilterSpec(channel="email", attributes={"city": "Nitra"})
    assert len(bm.segment_recipients("nitra", frame, db=db)) == 2
    preview = bm.campaign_preview("jar", db=db)
    assert preview.subject == "Hello ***"
    with pytest.raises(bm.SendError, match=r"contact_points\.normalized\b.*masked"):
        bm.register("jar", db=db)
    # The analyst's masked frame never reaches the outbox, even through the owner.
    with pytest.raises(bm.SendError, match="masked"):
        bm.register("jar", bm.filter_recipients(frame, spec), db=owner)
    _send_as_owner(owner)
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == ["jana@a.sk", "peter@b.sk"]
    assert any(b"Hi Jana" in m.data for m in sink.messages)
    # After registration the analyst's preview is still rendered, not the stored body.
    assert bm.campaign_preview("jar", db=db).registered is False


def test_on_sqlite_a_setting_allows_or_refuses_contact_export(
    sqlite_url: str, tmp_path: Path
) -> None:
    db = dbmod.open_database(sqlite_url)
    _import(db, tmp_path)
    frame = bm.contacts_frame(db)
    assert "hidden_columns" not in frame.attrs
    user = getpass.getuser()

    assert bm.allow_contact_export(False, db=db) is False
    with pytest.raises(bm.ContactAccessError, match="switched off on this database"):
        bm.export_recipients(frame, tmp_path / "r.xlsx", include_contact_data=True, db=db,
                             progress=False)  # fmt: skip
    with pytest.raises(bm.ContactAccessError, match="allow-contact-export yes"):
        bm.export_contact_data(1, folder=tmp_path, db=db)
    assert not (tmp_path / "r.xlsx").exists()

    assert bm.allow_contact_export(True, db=db) is True
    bm.save_segment("nitra", bm.FilterSpec(attributes={"city": "Nitra"}), frame, db=db)
    chosen = bm.segment_recipients("nitra", frame, db=db)
    path = bm.export_recipients(chosen, tmp_path / "r.xlsx", include_contact_data=True, db=db,
                                progress=False)  # fmt: skip
    assert path.exists()
    log = bm.export_log(db=db)
    assert list(log["outcome"]) == ["exported", "refused", "refused"]
    assert set(log["who"]) == {user}
    assert (log["segment"].iloc[0], log["rows"].iloc[0]) == (
        "nitra",
        3,
    )  # Jana by e-mail and phone, Peter
    assert log["columns"].iloc[0] == "address"
    assert log["path"].iloc[0] == str(path)


def test_create_roles_is_postgresql_only(sqlite_url: str) -> None:
    with pytest.raises(bm.ConfigError, match=r"PostgreSQL only.*allow_contact_export"):
        bm.create_roles(analyst="roles_x", url=sqlite_url)


def test_the_commands_switch_export_off_and_print_the_log(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = dbmod.open_database(sqlite_url)
    _import(db, tmp_path)
    assert main(["allow-contact-export", "no", "--db", sqlite_url]) == 0
    with pytest.raises(bm.ContactAccessError):
        bm.export_contact_data(1, folder=tmp_path, db=db)
    capsys.readouterr()
    assert main(["export-log", "--csv", "--db", sqlite_url]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [(r["outcome"], r["kind"]) for r in rows] == [("refused", "contact")]


@pytest.mark.postgres
def test_db_roles_from_the_shell_and_the_analysts_refusal_in_the_log(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _import(dbmod.open_database(pg_url), tmp_path)
    analyst = f"roles_c_{uuid.uuid4().hex[:8]}"
    try:
        assert main(["db-roles", "--analyst", analyst, "--csv", "--db", pg_url]) == 0
        printed = list(csv.DictReader(capsys.readouterr().out.splitlines()))
        assert {"role": analyst, "kind": "analyst", "table": "contacts",
                "may_read": "all but first_name, last_name, patronymic"} in printed  # fmt: skip
        url = _as(analyst, pg_url)
        assert main(["export-contact-data", "1", "--folder", str(tmp_path), "--db", url]) != 0
        assert "ask for the exporter role" in capsys.readouterr().err
        assert main(["export-log", "--csv", "--db", url]) == 0
        rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
        assert [(r["who"], r["outcome"], r["kind"]) for r in rows] == [
            (analyst, "refused", "contact")
        ]
    finally:
        _drop_roles(analyst)


@pytest.mark.postgres
def test_the_analyst_reads_campaign_reports_but_not_texts_that_quote_an_address(
    roles: tuple[str, str, str, str], pg_url: str, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bounce quotes the address in events and messages: hidden, the reports still work."""
    analyst, analyst_url, _, _ = roles
    owner, db = dbmod.open_database(pg_url), dbmod.open_database(analyst_url)
    _campaign_for_nitra(owner, db, sink)
    _send_as_owner(owner)
    bounce = "550 5.1.1 <jana@a.sk>: user unknown"
    with owner.session() as s:
        cid = s.scalar(sa.select(dbmod.Campaign.id).where(dbmod.Campaign.name == "jar"))
        jana = s.scalars(
            sa.select(dbmod.Message).where(dbmod.Message.recipient == "jana@a.sk")
        ).one()
        jana.status, jana.last_code, jana.last_error = "failed", "550", f"hard bounce: {bounce}"
        at = {"campaign_id": cid, "message_id": jana.id, "contact_id": jana.contact_id,
              "contact_point_id": jana.contact_point_id}  # fmt: skip
        s.add(dbmod.Event(kind="bounced", detail=bounce,
                          data={"code": "550", "reporter": "jana@a.sk"}, **at))  # fmt: skip
        s.add(dbmod.Event(kind="skipped", detail="jana@a.sk: suppressed",
                          data={"at": "registration", "why": "suppressed"}, **at))  # fmt: skip
    # The texts are refused to the analyst, each with the column named.
    texts = [("events", "detail"), ("events", "data"), ("messages", "last_error"),
             ("message_bodies", "subject"), ("suppressions", "detail"), ("message_links", "url"),
             ("forgotten_addresses", "address_hash")]  # fmt: skip
    for table, column in texts:
        denied = pytest.raises(bm.ContactAccessError, match=rf"{table}\.{column}\b.*exporter")
        with denied, db.engine.connect() as conn:
            conn.execute(sa.text(f"SELECT {column} FROM {table}"))
    # The reports the analyst runs do not need them.
    assert bm.campaign_report("jar", db=db)["messages"].to_dict() == (
        bm.campaign_report("jar", db=owner)["messages"].to_dict()
    )
    listed, theirs = bm.list_campaigns(db=db), bm.list_campaigns(db=owner)
    assert listed["rate_per_hour"].iloc[0] == theirs["rate_per_hour"].iloc[0] == float("inf")
    assert bm.campaign_timeline("jar", db=db)["sent"].sum() == 2
    progress = bm.campaign_progress("jar", db=db)
    assert progress.counts["failed"] == 1
    failed = progress.errors.iloc[0]
    assert (failed["recipient"], failed["code"], failed["error"]) == (
        "***@a.sk",
        "550",
        "",
    )
    assert bm.campaign_progress("jar", db=owner).errors["error"].iloc[0].endswith(bounce)
    assert "1 suppressed" in registration_skips("jar", db=db)
    with db.engine.connect() as conn:
        seen = conn.execute(
            sa.text("SELECT detail, data FROM events_masked WHERE kind = 'bounced'")
        )
        assert seen.one() == ("", {"code": "550"})
    # What lists people is contact data: the exporter's.
    for listing in (bm.history, bm.clicks, bm.queue, bm.campaign_failures):
        arg = jana.contact_id if listing is bm.history else "jar"
        with pytest.raises(bm.ContactAccessError, match=f'"{analyst}".*exporter'):
            listing(arg, db=db)  # type: ignore[operator]
    # The analyst's --csv of its masked frame is no export: printed, not logged.
    capsys.readouterr()
    assert main(["contacts-frame", "--csv", "--db", analyst_url]) == 0
    assert "***@a.sk" in capsys.readouterr().out
    assert bm.export_log(db=db).empty


def test_csv_printing_and_the_import_report_are_logged_exports(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = dbmod.open_database(sqlite_url)
    source = tmp_path / "customers.csv"
    source.write_text(CSV + "C4;Ján;Bad;not-an-address;;yes;Nitra\n", encoding="utf-8")
    report = tmp_path / "report.csv"
    args = ["import-contacts", str(source), "--on-error", "skip", "--report", str(report)]
    assert main([*args, "--csv", "--db", sqlite_url]) == 0
    assert "not-an-address" in report.read_text(encoding="utf-8-sig")
    capsys.readouterr()
    assert main(["contacts-frame", "--csv", "--db", sqlite_url]) == 0
    printed = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert "jana@a.sk" in {r["address"] for r in printed}
    log = bm.export_log(db=db)
    assert list(zip(log["kind"], log["path"], log["outcome"], strict=True)) == [
        ("csv", "stdout", "exported"),
        ("import report", str(report), "exported"),
        ("import report", "stdout", "exported"),
    ]
    assert log["rows"].iloc[0] == len(printed)
    assert set(log["columns"].iloc[0].split(",")) >= {"address", "first_name", "last_name"}
    assert log["columns"].iloc[1] == "value"
    assert set(log["who"]) == {getpass.getuser()}
    # Switched off: the --csv of contact data is refused before anything is printed (logged);
    # the import report still is written and logged: it only repeats the user's own file.
    bm.allow_contact_export(False, db=db)
    assert main(["contacts-frame", "--csv", "--db", sqlite_url]) != 0
    captured = capsys.readouterr()
    assert "switched off" in captured.err
    assert "jana" not in captured.out
    assert main(["list-segments", "--csv", "--db", sqlite_url]) == 0  # no contact columns
    result = bm.import_contacts(source, db=db, on_error="skip", progress=False)
    result.save_report(tmp_path / "again.csv")
    log = bm.export_log(db=db)
    assert list(zip(log["kind"], log["outcome"], strict=True))[:2] == [
        ("import report", "exported"),
        ("csv", "refused"),
    ]


@pytest.mark.postgres
def test_the_analyst_reads_an_ab_report(
    roles: tuple[str, str, str, str], pg_url: str, sink: Sink, tmp_path: Path
) -> None:
    _, analyst_url, _, _ = roles
    owner, db = dbmod.open_database(pg_url), dbmod.open_database(analyst_url)
    more = tmp_path / "more.csv"
    rows = "".join(f"N{i};n{i}@d.sk;yes;Nitra\n" for i in range(6))
    more.write_text("Customer number;E-mail;Opt-in;City\n" + rows, encoding="utf-8")
    assert bm.import_contacts(more, db=owner, progress=False).inserted == 6
    _campaign_for_nitra(owner, db, sink)
    bm.create_ab_test("jar", ["Jar A", "Jar B"], sample=0.5, holdout=0.0, seed=1, db=owner)
    mine, theirs = bm.ab_report("jar", db=db), bm.ab_report("jar", db=owner)
    assert mine["assigned"].sum() == theirs["assigned"].sum() == 8
    assert mine.equals(theirs)

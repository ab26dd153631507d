"""Storage: migrations, pragmas, time zones and constraints on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.db import (
    Campaign,
    Contact,
    ContactPoint,
    Message,
    SenderAccount,
    open_database,
)


def test_open_creates_schema_at_head(database: dbmod.Database) -> None:
    names = set(sa.inspect(database.engine).get_table_names())
    assert {
        "contacts",
        "contact_points",
        "segments",
        "segment_members",
        "campaigns",
        "messages",
        "message_bodies",
        "events",
        "suppressions",
        "sender_accounts",
        "unsubscribe_tokens",
        "import_runs",
        "rate_buckets",
        "workers",
        "alembic_version",
    } <= names
    assert dbmod.current_revision(database.engine) is not None


def test_migrations_match_models(database: dbmod.Database) -> None:
    """A model change without a migration would make upgrades silently lose columns."""
    with database.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, dbmod.Base.metadata)
    assert diff == []


def test_reopen_keeps_data_and_is_idempotent(db_url: str) -> None:
    db = open_database(db_url)
    with db.session() as s:
        c = Contact(first_name="Ľubica", last_name="Šťastná", registered_at=datetime.now(UTC))
        c.points.append(ContactPoint(channel="email", value="L@x.sk", normalized="L@x.sk"))
        s.add(c)
    dbmod.close_all()
    # A second open runs the migrations again: nothing may be rebuilt or lost.
    db2 = open_database(db_url)
    with db2.session() as s:
        row = s.scalars(sa.select(Contact)).one()
        assert (row.first_name, row.last_name) == ("Ľubica", "Šťastná")
        assert [p.normalized for p in row.points] == ["L@x.sk"]


def test_upgrade_from_empty_file_keeps_foreign_rows(sqlite_url: str) -> None:
    """A database stamped at an older revision is upgraded in place, not recreated."""
    engine = dbmod.create_db_engine(sqlite_url)
    dbmod.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO contacts (first_name, last_name, patronymic, language, registered_at,"
                " attributes, source, created_at, updated_at)"
                " VALUES ('Ivan', 'Petrov', 'Ivanovič', 'ru', '2024-01-01 00:00:00', '{}', 'old',"
                " '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
            )
        )
    engine.dispose()
    db = open_database(sqlite_url)
    with db.session() as s:
        assert s.scalars(sa.select(Contact.last_name)).all() == ["Petrov"]


def test_datetimes_round_trip_in_utc(database: dbmod.Database) -> None:
    bratislava_summer = timezone(timedelta(hours=2))
    when = datetime(2025, 7, 1, 9, 30, tzinfo=bratislava_summer)
    with database.session() as s:
        s.add(Contact(first_name="A", registered_at=when))
    with database.session() as s:
        got = s.scalars(sa.select(Contact.registered_at)).one()
    assert got == when
    assert got.tzinfo is not None
    assert got.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(database: dbmod.Database) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), database.session() as s:
        s.add(Contact(first_name="A", registered_at=datetime(2025, 1, 1)))


def test_foreign_keys_and_uniques_are_enforced(database: dbmod.Database) -> None:
    with pytest.raises(sa.exc.IntegrityError), database.session() as s:
        s.add(
            ContactPoint(contact_id=999_999, channel="email", value="a@b.sk", normalized="a@b.sk")
        )
    with database.session() as s:
        c = Contact(first_name="A", registered_at=datetime.now(UTC))
        c.points.append(ContactPoint(channel="email", value="a@b.sk", normalized="a@b.sk"))
        s.add(c)
    with pytest.raises(sa.exc.IntegrityError), database.session() as s:
        c2 = Contact(first_name="B", registered_at=datetime.now(UTC))
        c2.points.append(ContactPoint(channel="email", value="A@b.sk", normalized="a@b.sk"))
        s.add(c2)
    with pytest.raises(sa.exc.IntegrityError), database.session() as s:
        c3 = Contact(first_name="C", registered_at=datetime.now(UTC))
        c3.points.append(ContactPoint(channel="fax", value="1", normalized="1"))
        s.add(c3)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_bad_url_is_a_config_error() -> None:
    from bulkmail_kernel.exceptions import ConfigError

    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        open_database("data/bulkmail.db")
    with pytest.raises(ConfigError, match="cannot open the database"):
        open_database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_an_outbox_from_before_handed_at_is_upgraded_in_place(db_url: str) -> None:
    # A database made by the first release (revision 0001) with a message in 'sending'.
    engine = dbmod.create_db_engine(db_url)
    dbmod.upgrade(engine, "0001")
    with engine.begin() as conn:
        # Core inserts of the current tables name only the columns given (and defaults):
        # none of them is new since 0001.
        sender = conn.execute(
            sa.insert(SenderAccount).values(name="s", kind="file").returning(SenderAccount.id)
        ).scalar_one()
        campaign = conn.execute(
            sa.insert(Campaign)
            .values(name="c", status="sending", sender_account_id=sender)
            .returning(Campaign.id)
        ).scalar_one()
        conn.execute(
            sa.insert(Message).values(
                campaign_id=campaign,
                channel="email",
                recipient="b@x.sk",
                status="sending",
                attempts=1,
                message_id_header="<m.1@x.sk>",
            )
        )
    engine.dispose()
    db = open_database(db_url)  # migrates to head
    assert dbmod.current_revision(db.engine) == _head()
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT recipient, status, attempts, handed_at FROM messages")
        ).one()
    assert tuple(row) == ("b@x.sk", "sending", 1, None)


def test_connect_is_the_database_every_function_uses(db_url: str, tmp_path, monkeypatch) -> None:
    """bm.connect(url) once; calls without db=/url= use it; an explicit url= still wins."""
    import bulkmail_kernel as bm

    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("BULKMAIL_DB_URL", other)
    connected = bm.connect(db_url)
    try:
        bm.add_sender_account(
            "conn",
            kind="file",
            from_email="a@example.com",
            settings={"folder": str(tmp_path / "out")},
        )
        assert bm.open_database() is connected
        assert list(bm.list_campaigns()["name"]) == []
        sample = dict(bm.load_template("invitation_sk").sample)
        bm.create_campaign("via-connect", sender="conn", template="invitation_sk", values=sample)
        assert bm.get_campaign("via-connect", url=db_url).name == "via-connect"
        # an explicit url= is not overridden by connect()
        with pytest.raises(bm.SendError, match="does not exist"):
            bm.get_campaign("via-connect", url=other)
    finally:
        dbmod.close_all()  # forgets connect(): later calls use BULKMAIL_DB_URL again
    assert bm.open_database().url == dbmod.open_database(other).url


def _head() -> str:
    """Return the newest migration revision (the scripts', not a number copied here)."""
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(dbmod.__file__).parents[1] / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head

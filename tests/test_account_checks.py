"""Sender accounts log in before they are saved: the real sink (with and without AUTH), Dovecot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dovecot_support import Imap
from http_support import serve

from bulkmail_kernel import add_sender_account, check_account, suggest_account_settings
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli import main
from bulkmail_kernel.db import SenderAccount
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.servers.sink import Sink, free_port, start_sink


@pytest.fixture
def database(sqlite_url: str) -> dbmod.Database:
    """Return a migrated SQLite database (the check does not depend on the backend)."""
    return dbmod.open_database(sqlite_url)


@pytest.fixture
def auth_sink(tmp_path: Path) -> Any:
    """Start a sink that offers AUTH and takes mail only from user shop / s3cret."""
    with start_sink(tmp_path / "auth", users={"shop": "s3cret"}) as running:
        yield running


def _smtp(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "security": "none", **extra}


def _save(database: dbmod.Database, settings: dict[str, Any], **extra: Any) -> None:
    add_sender_account(
        "shop", kind="smtp", from_email="news@shop.sk", settings=settings, db=database, **extra
    )


def _stored(database: dbmod.Database, name: str) -> dict[str, Any] | None:
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
        return None if row is None else dict(row.settings)


def test_an_account_on_a_relay_without_login_is_checked_and_saved(
    database: dbmod.Database, sink: Sink
) -> None:
    before = sink.connections
    _save(database, _smtp(sink.port))
    assert sink.connections == before + 1  # it really talked to the server
    assert sink.messages == []  # and sent nothing
    checks = check_account("shop", db=database)
    assert list(checks["server"]) == ["smtp"]
    row = checks.iloc[0]
    assert (row["host"], row["port"], row["security"], bool(row["ok"])) == (
        "127.0.0.1",
        sink.port,
        "none",
        True,
    )
    assert "EHLO answered without TLS; no AUTH offered; no login" in row["detail"]


def test_login_with_auth_right_and_wrong_password(
    database: dbmod.Database, auth_sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _smtp(auth_sink.port, user="shop")
    monkeypatch.setenv("SHOP_SMTP_PASSWORD", "wrong")
    with pytest.raises(ConfigError) as refused:
        _save(database, settings, credential_ref="SHOP_SMTP_PASSWORD")
    message = refused.value.message
    assert message.startswith("sender account 'shop' not saved: SMTP 127.0.0.1:")
    assert "login as 'shop' refused (535" in message
    assert "pass check=False" in message
    assert _stored(database, "shop") is None  # nothing half-saved

    monkeypatch.setenv("SHOP_SMTP_PASSWORD", "s3cret")
    _save(database, settings, credential_ref="SHOP_SMTP_PASSWORD")
    ok = check_account("shop", db=database).iloc[0]
    assert bool(ok["ok"])
    assert "AUTH" in ok["detail"]
    assert "logged in as 'shop'" in ok["detail"]

    # The password is changed at the provider later: check_account says so, nothing raises.
    monkeypatch.setenv("SHOP_SMTP_PASSWORD", "old")
    later = check_account("shop", db=database).iloc[0]
    assert not bool(later["ok"])
    assert "login as 'shop' refused" in later["detail"]
    assert "SHOP_SMTP_PASSWORD" in later["detail"]


def test_a_user_on_a_relay_that_offers_no_auth_is_refused(
    database: dbmod.Database, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_SMTP_PASSWORD", "x")
    with pytest.raises(ConfigError, match=r"offers no login \(no AUTH in its EHLO reply\)"):
        _save(database, _smtp(sink.port, user="shop"), credential_ref="SHOP_SMTP_PASSWORD")


def test_a_closed_port_is_refused_and_check_false_saves_it_on_purpose(
    database: dbmod.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = free_port()  # nothing listens there
    settings = _smtp(closed)
    with pytest.raises(ConfigError, match=rf"SMTP 127.0.0.1:{closed}: cannot connect"):
        _save(database, settings)
    assert _stored(database, "shop") is None
    # Offline set-up: saved unchecked, on purpose, and checked later.
    _save(database, settings, check=False)
    assert _stored(database, "shop") == settings
    row = check_account("shop", db=database).iloc[0]
    assert not bool(row["ok"])
    assert "check host, port and security" in row["detail"]


@pytest.mark.parametrize(
    ("security", "says"),
    [("ssl", "cannot connect"), ("starttls", "offers no STARTTLS")],
)
def test_tls_that_fails_is_refused(
    database: dbmod.Database, sink: Sink, security: str, says: str
) -> None:
    # The sink speaks plain SMTP: an SSL handshake or a STARTTLS both fail against it.
    with pytest.raises(ConfigError, match=says):
        _save(database, _smtp(sink.port, security=security))


def test_a_failed_update_keeps_the_stored_account(database: dbmod.Database, sink: Sink) -> None:
    _save(database, _smtp(sink.port))
    with pytest.raises(ConfigError, match="not saved"):
        _save(database, _smtp(free_port()))
    assert _stored(database, "shop") == _smtp(sink.port)


def _with_imap(port: int, imap: Imap) -> dict[str, Any]:
    return _smtp(
        port,
        imap={
            "host": "127.0.0.1",
            "port": imap.port,
            "security": "none",
            "user": imap.user,
            "credential_ref": "SHOP_IMAP_PASSWORD",
        },
    )


def test_an_account_that_reads_bounces_logs_in_to_imap_too(
    database: dbmod.Database, sink: Sink, dovecot: Imap, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _with_imap(sink.port, dovecot)
    monkeypatch.setenv("SHOP_IMAP_PASSWORD", "wrong")
    with pytest.raises(ConfigError) as refused:
        _save(database, settings)
    assert f"IMAP 127.0.0.1:{dovecot.port}: login as 'bounces' refused" in refused.value.message
    assert refused.value.fields["failed"] == ["imap"]  # SMTP itself was fine

    monkeypatch.setenv("SHOP_IMAP_PASSWORD", dovecot.password)
    _save(database, settings)
    checks = check_account("shop", db=database)
    assert list(checks["server"]) == ["smtp", "imap"]
    assert checks["ok"].all()
    assert checks.iloc[1]["detail"] == (
        f"IMAP 127.0.0.1:{dovecot.port}: logged in as 'bounces' (none)"
    )


def test_check_account_names_what_is_missing(database: dbmod.Database, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'nope' does not exist; accounts: \(none\)"):
        check_account("nope", db=database)
    folder = {"folder": str(tmp_path)}
    add_sender_account("dry", kind="file", from_email="a@shop.sk", settings=folder, db=database)
    assert check_account("dry", db=database)["server"].tolist() == ["file"]


def test_cli_no_check_and_check_account(
    sqlite_url: str, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    dbmod.open_database(sqlite_url)
    closed = f'{{"host": "127.0.0.1", "port": {free_port()}, "security": "none"}}'
    add = ["add-sender-account", "shop", "--kind", "smtp", "--from-email", "news@shop.sk"]
    assert main([*add, "--settings", closed, "--no-check", "--db", sqlite_url]) == 0
    capsys.readouterr()
    assert main(["check-account", "shop", "--csv", "--db", sqlite_url]) == 1
    assert "cannot connect" in capsys.readouterr().out
    working = f'{{"host": "127.0.0.1", "port": {sink.port}, "security": "none"}}'
    assert main([*add, "--settings", working, "--db", sqlite_url]) == 0
    capsys.readouterr()
    assert main(["check-account", "shop", "--db", sqlite_url]) == 0
    assert "EHLO answered" in capsys.readouterr().out


def test_suggested_settings_log_in_and_are_saved(
    database: dbmod.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    firm = start_sink(tmp_path / "firm", users={"news@firm.example": "right"})
    try:
        _suggest_then_save(database, firm, monkeypatch)
    finally:
        firm.stop()


def _suggest_then_save(
    database: dbmod.Database, auth_sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The firm's autoconfig file (served locally) points at the sink; its login is the address.
    xml = (
        '<clientConfig version="1.1"><emailProvider id="firm.example">'
        '<outgoingServer type="smtp"><hostname>127.0.0.1</hostname>'
        f"<port>{auth_sink.port}</port><socketType>plain</socketType></outgoingServer>"
        "</emailProvider></clientConfig>"
    ).encode()

    with serve(lambda path: (200, xml)) as (base, _asked):
        found = suggest_account_settings(
            "news@firm.example",
            autoconfig_urls=[f"{base}/mail.xml"],
            srv_lookup=lambda name: [],
        )
    assert found["settings"] == {
        "host": "127.0.0.1",
        "port": auth_sink.port,
        "security": "none",
        "user": "news@firm.example",
    }
    monkeypatch.setenv("FIRM_SMTP_PASSWORD", "wrong")
    with pytest.raises(ConfigError, match=r"login as 'news@firm\.example' refused"):
        _save(database, found["settings"], credential_ref="FIRM_SMTP_PASSWORD")
    monkeypatch.setenv("FIRM_SMTP_PASSWORD", "right")
    _save(database, found["settings"], credential_ref="FIRM_SMTP_PASSWORD")
    assert bool(check_account("shop", db=database)["ok"].all())

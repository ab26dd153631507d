"""Log in with a sender account's settings: on save, and later with :func:`check_account`.

An SMTP account with a wrong host, port or password used to be stored silently and
fail at its first message. Now ``add_sender_account`` logs in first, through the same
code a send uses (:meth:`SmtpTransport.check <bulkmail_kernel.transports.smtp.SmtpTransport.check>`:
EHLO, SSL or STARTTLS as set, AUTH with the password from the environment or the
keyring) and, when the account reads bounces (``settings['imap']``), logs in to IMAP
the way the bounce mailbox does (:mod:`bulkmail_kernel.deliverability.mailbox`). The
check never sends a message.
"""

from __future__ import annotations

import contextlib
import imaplib
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from bulkmail_kernel.db import Database, resolve_database
from bulkmail_kernel.deliverability.mailbox import _connect, imap_settings
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import BulkmailError, ConfigError
from bulkmail_kernel.outbox.lookup import account_row, sender_info
from bulkmail_kernel.records import SenderInfo
from bulkmail_kernel.transports.smtp import SmtpTransport

#: The longest a check waits for a server: a person is waiting for the answer.
CHECK_TIMEOUT_S = 15.0

CHECK_COLUMNS = ["account", "server", "host", "port", "security", "user", "ok", "detail"]


@dataclass(frozen=True)
class LoginCheck:
    """One login tried for a sender account, and what came of it."""

    account: str
    #: "smtp" (sending) or "imap" (the bounce mailbox).
    server: str
    host: str
    port: int
    security: str
    user: str
    ok: bool
    detail: str


def run_checks(account: SenderInfo) -> list[LoginCheck]:
    """Log in to the account's SMTP server (and IMAP mailbox, if it has one); never raise."""
    if account.kind != "smtp":
        return []
    checks = [_check_smtp(account)]
    if account.settings.get("imap"):
        checks.append(_check_imap(account))
    return checks


def refuse_unless_ok(checks: list[LoginCheck], name: str) -> None:
    """Raise ConfigError naming each failed login, saying how to save unchecked on purpose."""
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ConfigError(
            f"sender account {name!r} not saved: {'; '.join(c.detail for c in failed)}. "
            "Fix the settings or the password and save again; to save it unchecked on "
            "purpose (set up offline, or a relay only the worker's machine reaches) pass "
            f"check=False (CLI: --no-check) and check later with check_account({name!r})",
            account=name,
            failed=[c.server for c in failed],
        )


def check_account(name: str, *, db: Database | None = None, url: str | None = None) -> pd.DataFrame:
    """Log in with the stored sender account ``name`` now; return one row per server tried.

    Columns: account, server (smtp or imap), host, port, security, user, ok, detail
    (what the server answered, or what to fix). Nothing is sent and nothing is stored.
    SendPulse and EuroSMS accounts are checked by their own functions when saved.
    """
    with resolve_database(db, url).session() as s:
        account = sender_info(account_row(s, name))
    if account.kind in ("sendpulse", "eurosms"):
        raise ConfigError(
            f"sender account {name!r} is a {account.kind} account: its credentials are checked "
            f"with {account.kind} when saved; save it again with add_{account.kind}_account() "
            "to re-check",
            account=name,
        )
    checks = run_checks(account)
    if account.kind == "file":
        folder = str(account.settings.get("folder", ""))
        checks = [LoginCheck(name, "file", "", 0, "", "", True, f"writes .eml files to {folder}")]
    return readable(pd.DataFrame([asdict(c) for c in checks], columns=CHECK_COLUMNS))


def _check_smtp(account: SenderInfo) -> LoginCheck:
    """Log in to the account's SMTP server as a send would, then say QUIT."""
    settings: dict[str, Any] = dict(account.settings)
    settings["timeout_s"] = min(
        float(settings.get("timeout_s") or CHECK_TIMEOUT_S), CHECK_TIMEOUT_S
    )
    host, security = str(settings.get("host", "")), str(settings.get("security", "starttls"))
    port, user = int(settings.get("port") or 0), str(settings.get("user", ""))
    try:
        transport = SmtpTransport.from_settings(settings, account.credential_ref)
        host, port, security = transport.host, transport.port, transport.security
        detail, ok = transport.check(), True
    except BulkmailError as exc:
        detail, ok = exc.message, False
    return LoginCheck(account.name, "smtp", host, port, security, user, ok, detail)


def _check_imap(account: SenderInfo) -> LoginCheck:
    """Log in to the account's bounce mailbox as ``process_mailbox`` does, then log out."""
    conf = dict(account.settings.get("imap") or {})
    host, port = str(conf.get("host", "")), int(conf.get("port") or 0)
    security, user = str(conf.get("security", "ssl")), str(conf.get("user", ""))
    try:
        imap = imap_settings(account)
        host, port, security, user = imap.host, imap.port, imap.security, imap.user
        conn = _connect(imap, timeout_s=CHECK_TIMEOUT_S)
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.logout()  # logged in is what was asked; a rude goodbye changes nothing
    except BulkmailError as exc:
        return LoginCheck(account.name, "imap", host, port, security, user, False, exc.message)
    detail = f"IMAP {host}:{port}: logged in as {user!r} ({security})"
    return LoginCheck(account.name, "imap", host, port, security, user, True, detail)

"""Sender accounts: how mail leaves (an SMTP relay, a folder of .eml files, SendPulse, EuroSMS).

An account stores only where its secret is (``credential_ref``), never the secret.
SendPulse and EuroSMS accounts are saved only by their own functions, which check
the credentials with the provider first.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bulkmail_kernel.db import Database, SenderAccount, resolve_database
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.domains import check_limits
from bulkmail_kernel.outbox.lookup import sender_info
from bulkmail_kernel.providers.account_checks import refuse_unless_ok, run_checks
from bulkmail_kernel.providers.eurosms import add_eurosms_account
from bulkmail_kernel.providers.sendpulse import add_sendpulse_account
from bulkmail_kernel.records import SenderInfo

#: Sender kinds that only the provider functions may save: they check the credentials first.
_PROVIDER_KINDS = {"sendpulse": "add_sendpulse_account", "eurosms": "add_eurosms_account"}


def add_sender_account(
    name: str,
    *,
    kind: str,
    from_email: str,
    from_name: str = "",
    settings: dict[str, Any] | None = None,
    credential_ref: str = "",
    db: Database | None = None,
    url: str | None = None,
    check: bool = True,
) -> SenderInfo:
    """Create or update the sender account ``name`` (smtp or file); secrets stay out of it.

    ``settings`` for smtp: host, port, security (ssl, starttls, none), user,
    unsubscribe_url (with ``{token}``), unsubscribe_mailto (the List-Unsubscribe
    mailto address), envelope_from, verp (True: tag the return path per message),
    dkim (``{"selector": ..., "key_path" or "keyring": ...}``), imap (the bounce
    mailbox); for file: folder.
    ``credential_ref`` names the environment variable holding the password; without
    one the password is looked up in the keyring that ``yagmail.register`` fills.

    An smtp account is saved only after it logs in: EHLO, SSL or STARTTLS as set, AUTH
    with the password from ``credential_ref`` or the keyring (the send path's own code),
    and the IMAP login when ``settings['imap']`` is set; a failure is refused with the
    server's answer and what to fix. ``check=False`` saves without logging in: for a
    set-up made offline, a relay only the worker's machine reaches, or a password set
    there later; ``check_account(name)`` logs in whenever asked.
    ``suggest_account_settings(address)`` proposes host, port and security.

    Kinds sendpulse and eurosms are handed to ``add_sendpulse_account`` /
    ``add_eurosms_account``, which check the credentials with the provider (and keep
    a SendPulse address fixed) before anything is saved.
    """
    settings = dict(settings or {})
    if kind not in ("smtp", "file", "sendpulse", "eurosms"):
        raise ConfigError(
            f"sender account {name!r}: kind={kind!r}: use smtp, file, sendpulse or eurosms"
        )
    if kind in _PROVIDER_KINDS:
        return _add_provider_account(
            name, kind, from_email, from_name, settings, credential_ref, resolve_database(db, url)
        )
    for key in ("password", "pass", "secret"):
        if key in settings:
            raise ConfigError(
                f"sender account {name!r}: settings[{key!r}]: passwords are never stored in the "
                "database; put it in the keyring (yagmail.register) or an environment variable "
                "and give its name as credential_ref",
                account=name,
            )
    if "@" not in from_email:
        raise ConfigError(f"sender account {name!r}: from_email={from_email!r} is not an address")
    if "domain_limits" in settings:  # per-domain limits (outbox.domains), checked once here
        settings["domain_limits"] = check_limits(settings["domain_limits"], name)
    database = resolve_database(db, url)
    with database.session() as s:
        _refuse_provider_row(s, name)
    if check and kind == "smtp":
        # Before the row is written: a refused account must not be left half-saved.
        candidate = SenderInfo(0, name, kind, from_name, from_email, settings, credential_ref)
        refuse_unless_ok(run_checks(candidate), name)
    with database.session() as s:
        row = _refuse_provider_row(s, name)
        if row is None:
            row = SenderAccount(name=name)
            s.add(row)
        if "domain_limits" not in settings and (row.settings or {}).get("domain_limits"):
            settings["domain_limits"] = row.settings["domain_limits"]  # set_domain_limits' stay
        row.kind, row.from_email, row.from_name = kind, from_email, from_name
        row.settings, row.credential_ref = settings, credential_ref
        s.flush()
        return sender_info(row)


def _refuse_provider_row(s: Session, name: str) -> SenderAccount | None:
    """Return the stored account ``name`` (or None); refuse one saved by a provider function."""
    row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one_or_none()
    if row is not None and row.kind in _PROVIDER_KINDS:
        # Re-saving it as smtp/file would bypass the provider's checks and fixed address.
        raise ConfigError(
            f"sender account {name!r} is a {row.kind} account: edit it with "
            f"{_PROVIDER_KINDS[row.kind]}(), or pick another name",
            account=name,
        )
    return row


_PROVIDER_SETTINGS = {
    "sendpulse": (("client_id",), ("base_url",)),
    "eurosms": (("integration_id", "sender_id"), ("base_url",)),
}


def _add_provider_account(
    name: str,
    kind: str,
    from_email: str,
    from_name: str,
    settings: dict[str, Any],
    credential_ref: str,
    database: Database,
) -> SenderInfo:
    """Save a sendpulse/eurosms account through its own checked function, never unchecked."""
    required, optional = _PROVIDER_SETTINGS[kind]
    helper = _PROVIDER_KINDS[kind]
    missing = [k for k in required if not settings.get(k)]
    unknown = sorted(set(settings) - set(required) - set(optional))
    if missing or unknown or not credential_ref:
        problem = (
            f"settings lacks {', '.join(repr(k) for k in missing)}"
            if missing
            else f"settings {', '.join(repr(k) for k in unknown)} are not used"
            if unknown
            else "credential_ref (the environment variable or keyring:SERVICE with the secret) "
            "is empty"
        )
        raise ConfigError(
            f"sender account {name!r} of kind {kind!r}: {problem}; give settings "
            f"{', '.join(required)} (optionally {', '.join(optional)}) and credential_ref, "
            f"or call {helper}() directly",
            account=name,
        )
    extra = {k: settings[k] for k in optional if settings.get(k)}
    if kind == "sendpulse":
        add_sendpulse_account(
            name,
            client_id=str(settings["client_id"]),
            from_email=from_email,
            from_name=from_name,
            credential_ref=credential_ref,
            db=database,
            **extra,
        )
    else:
        add_eurosms_account(
            name,
            integration_id=str(settings["integration_id"]),
            sender_id=str(settings["sender_id"]),
            credential_ref=credential_ref,
            from_name=from_name,
            db=database,
            **extra,
        )
    with database.session() as s:
        row = s.scalars(sa.select(SenderAccount).where(SenderAccount.name == name)).one()
        return sender_info(row)

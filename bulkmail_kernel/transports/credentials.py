"""Where provider secrets come from: an environment variable or the keyring, never the database.

A sender account stores only ``credential_ref``, the *name* of the place holding
the secret: ``ENV_NAME`` or ``env:ENV_NAME`` for an environment variable,
``keyring:SERVICE`` for the keyring entry (SERVICE, account user) that
``keyring.set_password`` filled once in a terminal.
"""

from __future__ import annotations

import os
import re

from bulkmail_kernel.exceptions import ConfigError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_credential_ref(credential_ref: str, *, account: str) -> None:
    """Refuse a ``credential_ref`` that is not an env-var name or ``keyring:SERVICE``."""
    ref = credential_ref.strip()
    if ref.startswith("keyring:") and len(ref) > len("keyring:"):
        return
    name = ref.removeprefix("env:")
    if not _ENV_NAME.match(name):
        raise ConfigError(
            f"sender account {account!r}: credential_ref={credential_ref!r} is not the name of an "
            "environment variable (e.g. SENDPULSE_SECRET) nor 'keyring:SERVICE'; never put the "
            "secret itself here",
            account=account,
        )


def resolve_secret(credential_ref: str, *, user: str, account: str) -> str:
    """Return the secret ``credential_ref`` names, or raise ConfigError saying how to set it."""
    check_credential_ref(credential_ref, account=account)
    ref = credential_ref.strip()
    if ref.startswith("keyring:"):
        service = ref[len("keyring:") :]
        import keyring
        from keyring.errors import KeyringError

        try:
            secret = keyring.get_password(service, user)
        except KeyringError as exc:
            raise ConfigError(
                f"sender account {account!r}: the keyring failed ({exc}); store the secret in an "
                "environment variable and give its name as credential_ref instead",
                account=account,
            ) from exc
        if not secret:
            raise ConfigError(
                f"sender account {account!r}: no secret in the keyring for service {service!r} "
                f"and user {user!r}: run keyring.set_password({service!r}, {user!r}, ...) once",
                account=account,
            )
        return secret
    name = ref.removeprefix("env:")
    secret = os.environ.get(name, "")
    if not secret:
        raise ConfigError(
            f"sender account {account!r}: the environment variable {name} is not set: "
            f"export {name}=... before starting Jupyter or the worker",
            account=account,
        )
    return secret

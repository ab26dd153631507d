"""Per-domain limits of a sender account: see them, and set the account's own.

The rules live in :mod:`bulkmail_kernel.outbox.domains` (the groups, the defaults, the
claim that keeps to them); here the analyst reads them as a frame and sets an
account's own figures, stored in its ``settings["domain_limits"]``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.db import Database, SenderAccount, resolve_database
from bulkmail_kernel.exceptions import ConfigError
from bulkmail_kernel.outbox.domains import (
    DEFAULT_LIMITS,
    GROUPS,
    LIMITED_KINDS,
    account_limits,
    burst,
    check_limits,
)
from bulkmail_kernel.outbox.lookup import account_row

_COLUMNS = [
    "account",
    "group",
    "domains",
    "limit_per_hour",
    "default_per_hour",
    "source",
    "burst",
]


def _domains(group: str) -> str:
    exact, prefixes = GROUPS[group]
    return ", ".join([*exact, *(f"{p}.*" for p in prefixes)])


def _rows(a: SenderAccount) -> list[dict[str, Any]]:
    settings = dict(a.settings or {})
    own = check_limits(settings.get("domain_limits") or {}, a.name)
    limits = account_limits(a.kind, settings, a.name)
    rows = []
    for group in GROUPS:
        limit = limits.get(group)
        source = (
            f"not limited ({a.kind} account)"
            if a.kind not in LIMITED_KINDS
            else "account"
            if group in own
            else "default"
        )
        rows.append(
            {
                "account": a.name,
                "group": group,
                "domains": _domains(group),
                "limit_per_hour": float("nan") if limit is None else limit,
                "default_per_hour": DEFAULT_LIMITS[group],
                "source": source,
                "burst": pd.NA if limit is None else burst(limit),
            }
        )
    return rows


def domain_limits(
    account: str | None = None, *, db: Database | None = None, url: str | None = None
) -> pd.DataFrame:
    """Return each sender account's per-hour limit per domain group (or one account's).

    One row per account and group: the domains in the group, the limit in force
    (NaN: none), the default, where the limit comes from (``default``, ``account``, or
    not limited for kinds that do not deliver to the providers) and the burst (ten
    seconds' worth). The limit is shared by every worker and campaign of the account.
    """
    with resolve_database(db, url).session() as s:
        if account is not None:
            accounts = [account_row(s, account)]
        else:
            accounts = list(s.scalars(sa.select(SenderAccount).order_by(SenderAccount.name)))
        rows = [r for a in accounts for r in _rows(a)]
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    frame["limit_per_hour"] = frame["limit_per_hour"].astype("float64")
    frame["default_per_hour"] = frame["default_per_hour"].astype("float64")
    frame["burst"] = frame["burst"].astype("Int64")
    return frame


def set_domain_limits(
    account: str,
    limits: dict[str, float | str | None],
    *,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Set the account's own per-hour limits per domain group; return its limits now.

    ``limits`` maps a group (``gmail``, ``outlook``, ``yahoo``, ``seznam``, ``centrum``,
    ``mailru``) to messages per hour, to None for no limit, or to ``"default"`` to go
    back to the default. Groups not named keep what they had. Running workers use the
    new figures from their next claim.
    """
    if not isinstance(limits, dict):
        raise ConfigError(
            f"set_domain_limits: limits={limits!r}: give a mapping such as {{'gmail': 300}}"
        )
    back = {g for g, v in limits.items() if isinstance(v, str) and v.strip().lower() == "default"}
    given = check_limits({g: v for g, v in limits.items() if g not in back}, account)
    check_limits(dict.fromkeys(back), account)  # the names of groups set back are checked too
    database = resolve_database(db, url)
    with database.session() as s:
        row = account_row(s, account)
        settings = dict(row.settings or {})
        own = {**(settings.get("domain_limits") or {}), **given}
        for group in back:
            own.pop(group, None)
        if own:
            settings["domain_limits"] = own
        else:
            settings.pop("domain_limits", None)
        row.settings = settings
    return domain_limits(account, db=database)

"""A "permission denied" from PostgreSQL, said clearly: which role, which columns, what to do.

``create_db_engine`` hooks ``translate_denied`` on every PostgreSQL engine, so a statement
the analyst role may not run (``SELECT value FROM contact_points``) raises a
``ContactAccessError`` instead of psycopg's ``InsufficientPrivilege``. Kept apart from
``db.roles`` so the engine code does not import the role management.
"""

from __future__ import annotations

import re
from typing import Any

from bulkmail_kernel.exceptions import ContactAccessError

#: The columns that hold contact data: the analyst role may not read them.
#: Texts that can quote an address or a name count too: a bounce's reply ("550 <jana@a.sk>
#: unknown") in events.detail / messages.last_error / suppressions.detail, a click's URL
#: (a rendered link may carry the address) in events.data / message_links.url, a subject
#: rendered with the first name, and the salted hash of a forgotten address.
CONTACT_COLUMNS: dict[str, tuple[str, ...]] = {
    "contacts": ("first_name", "last_name", "patronymic"),
    "contact_points": ("value", "normalized"),
    "messages": ("recipient", "last_error"),
    "message_bodies": ("subject", "body"),
    "suppressions": ("normalized", "detail"),
    "events": ("detail", "data"),
    "message_links": ("url",),
    "forgotten_addresses": ("address_hash",),
}
_DENIED_TABLE = re.compile(r'permission denied for (?:table|relation|view) "?([\w.]+)"?')
ASK = "ask for the exporter role (bulkmail db-roles --exporter NAME, run by the schema owner)"


def denied_error(message: str, statement: str, role: str) -> ContactAccessError:
    """Return the clear error for a server's "permission denied" on ``statement``."""
    found = _DENIED_TABLE.search(message)
    table = found.group(1).split(".")[-1] if found else "?"
    protected = CONTACT_COLUMNS.get(table, ())
    named = [c for c in protected if re.search(rf"\b{c}\b", statement)] or list(protected)
    if named:
        what = f"cannot read the contact columns {', '.join(f'{table}.{c}' for c in named)}"
    else:
        what = f"has no privilege on table {table}"
    return ContactAccessError(
        f'database role "{role}" {what} (the analyst role may filter, preview and '
        f"schedule, not read or export contact data): {ASK}",
        role=role,
        table=table,
        columns=named,
    )


def translate_denied(context: Any) -> None:
    """Engine ``handle_error`` hook: raise ``ContactAccessError`` for InsufficientPrivilege."""
    orig = context.original_exception
    if getattr(orig, "sqlstate", None) != "42501":  # insufficient_privilege
        return
    role = "?"
    try:
        role = context.connection.connection.driver_connection.info.user
    except AttributeError:
        role = context.engine.url.username or "?"
    raise denied_error(str(orig), context.statement or "", role) from context.sqlalchemy_exception

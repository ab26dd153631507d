"""Database roles on PostgreSQL: an analyst who cannot read contact data, an exporter who can.

``create_roles`` (run by the owner of the bulkmail schema, the role that migrates it and
runs the worker) creates two kinds of login role and grants them the tables:

- the **analyst** may read and write every table except the columns in
  ``CONTACT_COLUMNS`` (names, addresses, phone numbers, message recipients and bodies):
  column privileges leave those out. ``contacts_frame`` notices and reads the view
  ``contact_points_masked`` instead (``***@domain``, the last digits of a phone), so
  filters, counts and previews still work; its reports read events through the view
  ``events_masked`` (``readable_events``: no bounce text, only ``SAFE_EVENT_KEYS`` of data);
- the **exporter** may read everything, so it can export contact data.

A statement the server refuses for lack of privilege (``InsufficientPrivilege``) is
turned into a ``ContactAccessError`` naming the role, the table and the columns, by an
engine event (``translate_denied``). See docs/permissions.md.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel.db.connection import Database, resolve_database
from bulkmail_kernel.db.denied import CONTACT_COLUMNS
from bulkmail_kernel.db.schema import Base
from bulkmail_kernel.exceptions import ConfigError

#: The view the analyst's ``contacts_frame`` reads: a masked address and the suppressed flag.
MASKED_VIEW = "contact_points_masked"
_MASKED_VIEW_SQL = f"""
CREATE OR REPLACE VIEW {MASKED_VIEW} AS
SELECT p.id,
       CASE WHEN p.channel = 'email' THEN '***@' || split_part(p.value, '@', 2)
            ELSE '***' || right(p.normalized, 3) END AS masked_address,
       EXISTS (SELECT 1 FROM suppressions s
               WHERE s.channel = p.channel AND s.normalized = p.normalized) AS suppressed
FROM contact_points p
"""
#: The view the analyst's reports read events through: no ``detail`` (a bounce's text can
#: quote the address), and of ``data`` only the keys that hold no contact data.
EVENTS_VIEW = "events_masked"
SAFE_EVENT_KEYS = ("rate_per_hour", "at", "why", "link", "winner", "rates", "code", "category")
_EVENTS_VIEW_SQL = f"""
CREATE OR REPLACE VIEW {EVENTS_VIEW} AS
SELECT e.id, e.occurred_at, e.kind, e.contact_id, e.contact_point_id, e.campaign_id,
       e.message_id, '' AS detail,
       (SELECT coalesce(jsonb_object_agg(k.key, k.value), '{{}}'::jsonb)
        FROM jsonb_each(e.data) k
        WHERE k.key IN ({", ".join(f"'{k}'" for k in SAFE_EVENT_KEYS)})) AS data
FROM events e
"""
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _role(name: str, what: str) -> str:
    if not _ROLE_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} role {name!r}: use lower-case letters, digits and _ (at most 63), "
            "starting with a letter or _"
        )
    return f'"{name}"'


def _privileges(role: str, kind: str, tables: list[str]) -> list[dict[str, Any]]:
    rows = []
    for table in tables:
        hidden = CONTACT_COLUMNS.get(table, ()) if kind == "analyst" else ()
        rows.append(
            {
                "role": role.strip('"'),
                "kind": kind,
                "table": table,
                "may_read": "all columns" if not hidden else "all but " + ", ".join(hidden),
            }
        )
    return rows


def create_roles(
    *,
    analyst: str | None = None,
    exporter: str | None = None,
    db: Database | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Create (or re-grant) the analyst and exporter login roles on PostgreSQL's bulkmail schema.

    Run it as the owner of the schema (who migrates it and runs the worker) after
    ``open_database``, and again after an upgrade that adds tables. Existing roles are
    kept and their grants reset, so a role can move from exporter to analyst. Give the
    roles passwords yourself (``ALTER ROLE name PASSWORD ...``) unless the server trusts
    local logins.

    Args:
        analyst: role that filters, previews and schedules but cannot read ``CONTACT_COLUMNS``.
        exporter: role that may also read and export contact data.
        db: the bulkmail database (default: ``open_database(url)``).
        url: the database URL when ``db`` is not given.

    Returns:
        One row per role and table: what the role may read.

    Raises:
        ConfigError: not PostgreSQL, no role named, a bad role name, or not allowed to
            create roles.

    """
    database = resolve_database(db, url)
    if database.dialect != "postgresql":
        raise ConfigError(
            "create_roles: database roles exist on PostgreSQL only; on SQLite (one user) "
            "use allow_contact_export(False) to refuse contact-data exports"
        )
    wanted = [(n, k) for n, k in ((analyst, "analyst"), (exporter, "exporter")) if n]
    if not wanted:
        raise ConfigError("create_roles: name an analyst role, an exporter role, or both")
    if analyst and analyst == exporter:
        raise ConfigError(f"create_roles: {analyst!r} cannot be both analyst and exporter")
    quoted = [(_role(n, k), k) for n, k in wanted]
    out: list[dict[str, Any]] = []
    try:
        with database.engine.begin() as conn:
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
            dbname = conn.execute(sa.text("SELECT current_database()")).scalar_one()
            present = set(sa.inspect(conn).get_table_names(schema=schema))
            tables = [t.name for t in Base.metadata.sorted_tables if t.name in present]
            tables += ["alembic_version"] if "alembic_version" in present else []
            conn.execute(sa.text(_MASKED_VIEW_SQL))
            conn.execute(sa.text(_EVENTS_VIEW_SQL))
            for role, kind in quoted:
                exists = conn.execute(
                    sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role.strip('"')}
                ).first()
                if not exists:
                    conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
                conn.execute(sa.text(f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}'))
                conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}'))
                conn.execute(
                    sa.text(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}')
                )
                for table in tables:
                    columns = [c["name"] for c in sa.inspect(conn).get_columns(table, schema)]
                    every = ", ".join(f'"{c}"' for c in columns)
                    # Reset table and column grants both: a column grant outlives REVOKE ALL ON t.
                    conn.execute(sa.text(f'REVOKE ALL ON "{table}" FROM {role}'))
                    conn.execute(sa.text(f'REVOKE ALL ({every}) ON "{table}" FROM {role}'))
                    conn.execute(sa.text(f'GRANT INSERT, UPDATE, DELETE ON "{table}" TO {role}'))
                    hidden = CONTACT_COLUMNS.get(table, ()) if kind == "analyst" else ()
                    readable = ", ".join(f'"{c}"' for c in columns if c not in hidden)
                    what = f"SELECT ({readable})" if hidden else "SELECT"
                    conn.execute(sa.text(f'GRANT {what} ON "{table}" TO {role}'))
                conn.execute(sa.text(f"GRANT SELECT ON {MASKED_VIEW}, {EVENTS_VIEW} TO {role}"))
                out += _privileges(role, kind, tables)
    except sa.exc.ProgrammingError as exc:
        raise ConfigError(
            f"create_roles: {exc.orig}; run it as the owner of the bulkmail schema with the "
            "right to create roles (CREATEROLE)"
        ) from exc
    return pd.DataFrame(out, columns=["role", "kind", "table", "may_read"])


def hidden_contact_columns(database: Database) -> list[str]:
    """Return the ``table.column`` contact columns the connected role may not read ([]: SQLite)."""
    if database.dialect != "postgresql":
        return []
    pairs = [(t, c) for t, cols in CONTACT_COLUMNS.items() for c in cols]
    checks = ", ".join(
        f"has_column_privilege('{t}', '{c}', 'SELECT') AS \"{t}.{c}\"" for t, c in pairs
    )
    with database.engine.connect() as conn:
        row = conn.execute(sa.text(f"SELECT {checks}")).mappings().one()
    return [name for name, allowed in row.items() if not allowed]


def current_role(database: Database) -> str:
    """Return the database user on PostgreSQL (``current_user``), "" on SQLite."""
    if database.dialect != "postgresql":
        return ""
    with database.engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT current_user")).scalar_one())


def readable_events(database: Database) -> sa.FromClause:
    """Return the events table, or for a role that may not read its texts, ``events_masked``.

    The view (made by ``create_roles``) has the same columns, ``detail`` empty and ``data``
    cut to ``SAFE_EVENT_KEYS``, so a report the analyst runs (a campaign's rates, its
    skip reasons) reads the same query either way.
    """
    events = Base.metadata.tables["events"]
    if "events.data" not in hidden_contact_columns(database):
        return events
    return sa.table(EVENTS_VIEW, *(sa.column(c.name, c.type) for c in events.columns)).alias(
        "events"
    )

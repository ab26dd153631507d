"""Read the recipients frame's rows column by column, as Arrow tables, on either backend.

``contacts_frame`` used to fetch one Python tuple per contact point with the contact's
fields repeated in each, then type every column from Python objects: 31 s and 3.8 GB for
the 1,000,000-contact demo (issue 18). Here the points and the contacts are two queries,
each read into Arrow columns: PostgreSQL streams ``COPY ... TO STDOUT`` as CSV into
``pyarrow.csv`` (no Python object per value); SQLite's driver only hands out rows, so
they are read in chunks and each chunk becomes Arrow columns before the next is read,
which keeps the peak memory near the frame's own size (SQLite building JSON lines for
``pyarrow.json`` cost the same CPU). Choice columns arrive as their category codes (a
``CASE`` in the SQL), flags as 0/1; no join per point: the suppressed points are found
from the few suppressions, and the caller drops points whose contact is gone.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from bulkmail_kernel import config
from bulkmail_kernel.db import Database
from bulkmail_kernel.db.roles import MASKED_VIEW

#: Category lists the SQL turns into codes; a value outside its list reads as -1 (missing).
GENDERS = ("m", "f")
CHANNELS = ("email", "phone")
KINDS = ("personal", "work")

_CHUNK_ROWS = 50_000


def _codes(column: str, categories: Sequence[str]) -> str:
    # The categories are the package's own constants, never user text.
    cases = " ".join(f"WHEN '{c}' THEN {i}" for i, c in enumerate(categories))
    return f"CASE {column} {cases} ELSE -1 END"


def _flag(column: str) -> str:
    return f"CASE WHEN {column} THEN 1 ELSE 0 END"


POINT_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("contact_id", pa.int64()),
        ("channel", pa.int8()),
        ("address", pa.large_string()),
        ("point_type", pa.large_string()),
        ("kind", pa.int8()),
        ("mailing_allowed", pa.int8()),
        ("is_preferred", pa.int8()),
    ]
)
_POINT_COLUMNS = (
    "p.id",
    "p.contact_id",
    _codes("p.channel", CHANNELS),
    "CASE WHEN p.channel = 'email' THEN p.value ELSE p.normalized END",
    "p.type",
    _codes("p.kind", KINDS),
    _flag("p.mailing_allowed"),
    _flag("p.is_preferred"),
)
# The few suppressed points, found from the suppressions' side (one index probe each):
# cheaper than a join of every point, and exact because (channel, normalized) is unique.
# CROSS JOIN keeps SQLite from scanning every point instead (it would, for an ORDER BY).
_SUPPRESSED_SQL = """
SELECT p.id FROM suppressions s CROSS JOIN contact_points p
WHERE p.channel = s.channel AND p.normalized = s.normalized{where}
"""


def contact_schema(registered: pa.DataType) -> pa.Schema:
    """Return the contacts table's Arrow schema; ``registered`` is how the backend sends it."""
    return pa.schema(
        [
            ("id", pa.int64()),
            ("external_id", pa.large_string()),
            ("first_name", pa.large_string()),
            ("last_name", pa.large_string()),
            ("patronymic", pa.large_string()),
            ("gender", pa.int8()),
            ("language", pa.int8()),
            ("registered_at", registered),
            ("attributes", pa.large_string()),
        ]
    )


def _contact_columns(registered: str, attributes: str, masked: bool = False) -> tuple[str, ...]:
    names = ("'***'",) * 3 if masked else ("c.first_name", "c.last_name", "c.patronymic")
    return (
        "c.id",
        "c.external_id",
        *names,
        _codes("c.gender", GENDERS),
        _codes("c.language", config.SUPPORTED_LANGUAGES),
        registered,
        attributes,
    )


_ALIASES = {"contact_points": "p", "contacts": "c"}


def _select(columns: Sequence[str], table: str, where: str, join: str = "") -> str:
    alias = _ALIASES[table]
    return f"SELECT {', '.join(columns)} FROM {table} {alias} {join}{where}ORDER BY {alias}.id"


# The analyst role (``db.roles``) may not read addresses nor names: the owner's view gives
# each point's masked address and whether it is suppressed.
_MASKED_JOIN = f"JOIN {MASKED_VIEW} m ON m.id = p.id\n"
_MASKED_POINT_COLUMNS = tuple(
    "m.masked_address" if c.startswith("CASE WHEN p.channel") else c for c in _POINT_COLUMNS
)
_MASKED_SUPPRESSED_SQL = f"""
SELECT p.id FROM contact_points p {_MASKED_JOIN}WHERE m.suppressed{{where}}
"""


# PostgreSQL: microseconds since the epoch, exact whatever the session's time zone
# (EXTRACT(MICROSECONDS) is the seconds field with its fraction, in whole microseconds).
_PG_REGISTERED = (
    "EXTRACT(EPOCH FROM date_trunc('second', c.registered_at))::bigint * 1000000"
    " + EXTRACT(MICROSECONDS FROM c.registered_at)::bigint % 1000000"
)


def fetch_tables(
    database: Database, contact_ids: Sequence[int] | None, *, masked: bool = False
) -> tuple[pa.Table, pa.Table, pa.Array]:
    """Return the points and contacts tables of the frame (ordered by id), suppressed point ids.

    SQLite sends ``registered_at`` as its stored text, PostgreSQL as microseconds. Points
    whose contact is missing are the caller's to drop (no join here: it cost a look-up
    per point). ``masked`` (PostgreSQL's analyst role) reads names as ``***`` and
    addresses and suppression through the masked view.
    """
    point_where = contact_where = ""
    if contact_ids is not None:
        # Whole numbers only, so they can stand in the SQL text of either backend's driver.
        ids = ",".join(str(int(i)) for i in contact_ids) or "NULL"
        point_where = f"WHERE p.contact_id IN ({ids})\n"
        contact_where = f"WHERE c.id IN ({ids})\n"
    suppressed_sql = (_MASKED_SUPPRESSED_SQL if masked else _SUPPRESSED_SQL).format(
        where=point_where.replace("WHERE", "\nAND")
    )
    point_columns, join = (_MASKED_POINT_COLUMNS, _MASKED_JOIN) if masked else (_POINT_COLUMNS, "")
    raw = database.engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            cur.execute(suppressed_sql)
            suppressed = pa.array([row[0] for row in cur.fetchall()], pa.int64())
            if database.dialect == "postgresql":
                columns = _contact_columns(_PG_REGISTERED, "c.attributes::text", masked)
                point_sql = _select(point_columns, "contact_points", point_where, join)
                points = _copy_csv(cur, point_sql, POINT_SCHEMA)
                contact_sql = _select(columns, "contacts", contact_where)
                contacts = _copy_csv(cur, contact_sql, contact_schema(pa.int64()))
            else:
                columns = _contact_columns("c.registered_at", "c.attributes", masked)
                point_sql = _select(point_columns, "contact_points", point_where, join)
                points = _chunked_rows(cur, point_sql, POINT_SCHEMA)
                contact_sql = _select(columns, "contacts", contact_where)
                contacts = _chunked_rows(cur, contact_sql, contact_schema(pa.large_string()))
        finally:
            cur.close()
    finally:
        raw.close()
    return points, contacts, suppressed


def _chunked_rows(cur: Any, sql: str, schema: pa.Schema) -> pa.Table:
    """Read ``sql`` in chunks of rows, each turned into Arrow columns before the next."""
    cur.execute(sql)
    batches = []
    while rows := cur.fetchmany(_CHUNK_ROWS):
        columns = zip(*rows, strict=True)
        del rows
        arrays = [pa.array(values, type=f.type) for values, f in zip(columns, schema, strict=True)]
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return pa.Table.from_batches(batches, schema=schema)


def _copy_csv(cur: Any, sql: str, schema: pa.Schema) -> pa.Table:
    """Stream ``COPY (sql) TO STDOUT`` as CSV into ``pyarrow.csv`` with the given types."""
    buffer = io.BytesIO()
    with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as copy:
        for data in copy:
            buffer.write(data)
    size = buffer.tell()
    if size == 0:
        return schema.empty_table()
    buffer.seek(0)
    table = pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(column_names=schema.names),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=schema,
            # COPY writes NULL as an empty field and an empty text as "".
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return table

"""The recipients frame: every contact point with its contact, as one typed pandas DataFrame.

``contacts_frame`` is the table segments, previews and campaigns start from: one row
per contact point (an e-mail address as it was typed; matching uses its identity), the
contact's fields beside it, whether the address is suppressed,
and one column per custom attribute. It reads the rows with one raw query and gives
each column its dtype on purpose (categories, nullable integers, UTC datetimes), so
filtering a million rows stays fast. ``FRAME_COLUMNS`` names the built-in columns;
any other column is a custom attribute.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.contacts.values import _cell_text, email_identity, normalize_phone
from bulkmail_kernel.db import Contact, ContactPoint, Database, resolve_database
from bulkmail_kernel.db.roles import MASKED_VIEW, hidden_contact_columns
from bulkmail_kernel.exceptions import ContactAccessError

log = logging.getLogger("bulkmail")

#: Columns of ``contacts_frame``; custom attribute names must not collide with these.
FRAME_COLUMNS = (
    "contact_point_id",
    "contact_id",
    "external_id",
    "first_name",
    "last_name",
    "patronymic",
    "gender",
    "language",
    "registered_at",
    "channel",
    "address",
    "point_type",
    "kind",
    "mailing_allowed",
    "is_preferred",
    "suppressed",
)
_FRAME_SQL = """
SELECT p.id, p.contact_id, c.external_id, c.first_name, c.last_name, c.patronymic,
       c.gender, c.language, c.registered_at, p.channel,
       CASE WHEN p.channel = 'email' THEN p.value ELSE p.normalized END, p.type, p.kind,
       p.mailing_allowed, p.is_preferred,
       CASE WHEN s.id IS NULL THEN 0 ELSE 1 END, c.attributes
FROM contact_points p
JOIN contacts c ON c.id = p.contact_id
LEFT JOIN suppressions s ON s.channel = p.channel AND s.normalized = p.normalized
ORDER BY p.id
"""
#: What the analyst role reads instead (docs/permissions.md): names as ``MASKED``, the
#: address masked by the owner's view (``***@domain``, ``***`` and a phone's last digits).
MASKED = "***"
_MASKED_SQL = f"""
SELECT p.id, p.contact_id, c.external_id, '{MASKED}', '{MASKED}', '{MASKED}',
       c.gender, c.language, c.registered_at, p.channel,
       m.masked_address, p.type, p.kind,
       p.mailing_allowed, p.is_preferred,
       CASE WHEN m.suppressed THEN 1 ELSE 0 END, c.attributes
FROM contact_points p
JOIN contacts c ON c.id = p.contact_id
JOIN {MASKED_VIEW} m ON m.id = p.id
ORDER BY p.id
"""


def contacts_frame(
    db: Database | None = None,
    *,
    url: str | None = None,
    contact_ids: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Return one row per contact point with its contact's fields and custom attributes.

    ``contact_ids`` reads only those contacts (what ``explain`` needs on a big database);
    their custom attributes are the columns they have. A PostgreSQL role that may not
    read contact data (the analyst role, ``create_roles``) gets names as ``***`` and
    masked addresses; ``attrs["hidden_columns"]`` then names what was hidden.
    """
    database = resolve_database(db, url)
    hidden = hidden_contact_columns(database)
    sql = _MASKED_SQL if hidden else _FRAME_SQL
    if hidden:
        log.warning(
            "contacts_frame: this database role may not read %s; names show as %s and "
            "addresses masked (filters and counts still work; ask for the exporter role "
            "to see them)",
            ", ".join(hidden),
            MASKED,
        )
    if contact_ids is not None:
        # Whole numbers only, so they can stand in the SQL text of either backend's driver.
        ids = ",".join(str(int(i)) for i in contact_ids) or "NULL"
        sql = sql.replace("ORDER BY p.id", f"WHERE p.contact_id IN ({ids})\nORDER BY p.id")
    raw = database.engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            cur.execute(sql)
        except database.engine.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
            if not hidden:
                raise
            # The masked view is missing (roles granted by hand) or not granted.
            raise ContactAccessError(
                f"contacts_frame: this database role may not read {', '.join(hidden)} and "
                f"cannot read the masked view {MASKED_VIEW} either ({exc}); the schema owner "
                "runs `bulkmail create-roles --analyst NAME` to make and grant it",
                columns=hidden,
            ) from exc
        records = cur.fetchall()
        cur.close()
    finally:
        raw.close()
    # One C-level transpose into object columns; each is then given its dtype on purpose.
    table = np.empty((len(records), 17), dtype=object)
    if records:
        table[:] = records
    cols = [table[:, i] for i in range(17)]
    out = pd.DataFrame(
        {
            "contact_point_id": pd.array(cols[0], dtype="int64"),
            "contact_id": pd.array(cols[1], dtype="int64"),
            "external_id": pd.array(cols[2], dtype="str"),
            "first_name": pd.array(cols[3], dtype="str"),
            "last_name": pd.array(cols[4], dtype="str"),
            "patronymic": pd.array(cols[5], dtype="str"),
            "gender": pd.Categorical(cols[6], categories=["m", "f"]),
            "language": pd.Categorical(cols[7], categories=list(config.SUPPORTED_LANGUAGES)),
            "registered_at": _utc_datetimes(cols[8]),
            "channel": pd.Categorical(cols[9], categories=["email", "phone"]),
            "address": pd.array(cols[10], dtype="str"),
            "point_type": pd.Categorical(cols[11]),
            "kind": pd.Categorical(cols[12], categories=["personal", "work"]),
            "mailing_allowed": pd.array(cols[13], dtype="bool"),
            "is_preferred": pd.array(cols[14], dtype="bool"),
            "suppressed": pd.array(cols[15], dtype="bool"),
        }
    )
    attrs = _attribute_columns(out["contact_id"], cols[16])
    frame = pd.concat([out, attrs], axis=1) if len(attrs.columns) else out
    if hidden:
        frame.attrs["hidden_columns"] = hidden
    return frame


def _utc_datetimes(values: Any) -> pd.Series:
    # SQLite hands back naive UTC text, PostgreSQL aware datetimes; both end as UTC.
    series = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
    return series.astype("datetime64[us, UTC]")


def _attribute_columns(contact_ids: pd.Series, raw: Any) -> pd.DataFrame:
    # Parse each contact's JSON once, however many points it has.
    ids = contact_ids.to_numpy()
    _, first_pos, codes = np.unique(ids, return_index=True, return_inverse=True)
    parsed: list[dict[str, Any]] = []
    for pos in first_pos:
        value = raw[pos]
        parsed.append(json.loads(value) if isinstance(value, str) else dict(value or {}))
    keys = sorted({k for d in parsed for k in d} - set(FRAME_COLUMNS))
    columns = {}
    for key in keys:
        # Type the column once per contact, then spread it over the contact's points.
        per_contact = _typed_attribute(pd.Series([d.get(key) for d in parsed], dtype=object))
        columns[key] = per_contact.take(codes).set_axis(contact_ids.index)
    return pd.DataFrame(columns, index=contact_ids.index)


_ISO_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2}|Z)?)?$"
)


def _typed_attribute(col: pd.Series) -> pd.Series:
    values = col.dropna()
    if values.empty:
        return col.astype("category")
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        return col.astype("boolean")
    if kinds <= {int}:
        return col.astype("Int64")  # nullable: contacts without the attribute stay <NA>
    if kinds <= {int, float}:
        return pd.to_numeric(col).astype("float64")
    if kinds <= {str} and all(_ISO_DATE.match(v) for v in values.unique()):
        return pd.to_datetime(col, format="ISO8601", utc=True).astype("datetime64[us, UTC]")
    return col.map(lambda v: v if v is None or isinstance(v, str) else _cell_text(v),
                   na_action="ignore").astype("category")  # fmt: skip


def contacts_named(who: int | str) -> sa.Select[int] | None:
    """Return the query of the ids of the contacts ``who`` names (None: it names nobody).

    ``who`` is a contact id, a customer number or an address: an e-mail address matches in
    any spelling (its identity), a phone number as typed or in E.164; a number typed as
    text is tried as a contact id and as a customer number.
    """
    if isinstance(who, bool) or not isinstance(who, int | str | np.integer):
        return None
    if isinstance(who, int | np.integer):
        return sa.select(Contact.id).where(Contact.id == int(who))
    text = who.strip()
    # One indexed look-up per way of naming a person (an OR across them would read every
    # contact point of a big database): customer number, e-mail identity, E.164 number.
    parts: list[sa.Select[int]] = [sa.select(Contact.id).where(Contact.external_id == text)]
    with contextlib.suppress(ValueError):  # not an e-mail address / phone number
        channel, key = (
            ("email", email_identity(text)) if "@" in text else ("phone", normalize_phone(text))
        )
        parts.append(
            sa.select(ContactPoint.contact_id).where(
                ContactPoint.channel == channel, ContactPoint.normalized == key
            )
        )
    if text.isdigit():
        parts.append(sa.select(Contact.id).where(Contact.id == int(text)))
    return sa.select(Contact.id).where(Contact.id.in_(sa.union(*parts))).order_by(Contact.id)


def find_contact_ids(database: Database, who: int | str) -> list[int]:
    """Return the ids of the contacts ``who`` names (see ``contacts_named``), ascending."""
    query = contacts_named(who)
    if query is None:
        return []
    with database.session() as s:
        return [int(i) for i in s.scalars(query)]

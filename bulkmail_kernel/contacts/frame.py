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
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from bulkmail_kernel import config
from bulkmail_kernel.contacts.frame_fetch import CHANNELS, GENDERS, KINDS, fetch_tables
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
#: What the analyst role reads instead of names (docs/permissions.md); its addresses come
#: masked from the owner's view (``***@domain``, ``***`` and a phone's last digits).
MASKED = "***"


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
    if hidden:
        log.warning(
            "contacts_frame: this database role may not read %s; names show as %s and "
            "addresses masked (filters and counts still work; ask for the exporter role "
            "to see them)",
            ", ".join(hidden),
            MASKED,
        )
    try:
        points, contacts, suppressed = fetch_tables(database, contact_ids, masked=bool(hidden))
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
    known = pc.is_in(points.column("contact_id"), value_set=contacts.column("id"))
    if not pc.all(known).as_py():  # as the join did: a point whose contact is gone is no recipient
        points = points.filter(known)
    # The contacts that have points, and for each point the position of its contact
    # among them: a contact's fields are typed once and then spread over its points.
    used_ids, spread = np.unique(points.column("contact_id").to_numpy(), return_inverse=True)
    contacts = contacts.take(np.searchsorted(contacts.column("id").to_numpy(), used_ids))
    del used_ids
    taken = pa.array(spread)
    columns: dict[str, Any] = {
        "contact_point_id": points.column("id").to_numpy(),
        "contact_id": points.column("contact_id").to_numpy(),
    }
    for name in ("external_id", "first_name", "last_name", "patronymic"):
        columns[name] = _text(contacts.column(name).take(taken))
    columns["gender"] = _choice(contacts.column("gender"), GENDERS, spread)
    languages = list(config.SUPPORTED_LANGUAGES)
    columns["language"] = _choice(contacts.column("language"), languages, spread)
    columns["registered_at"] = _utc_datetimes(contacts.column("registered_at")).take(spread).array
    columns["channel"] = _choice(points.column("channel"), CHANNELS)
    columns["address"] = _text(points.column("address"))
    columns["point_type"] = _inferred_choice(points.column("point_type")).array
    columns["kind"] = _choice(points.column("kind"), KINDS)
    for name in ("mailing_allowed", "is_preferred"):
        columns[name] = points.column(name).to_numpy().astype(bool)
    columns["suppressed"] = pc.is_in(points.column("id"), value_set=suppressed).to_numpy(
        zero_copy_only=False
    )
    del points
    attributes = _attribute_columns(contacts.column("attributes"))
    del contacts
    for key, per_contact in attributes.items():
        columns[key] = per_contact.take(spread).array
    frame = pd.DataFrame(columns, copy=False)
    if hidden:
        frame.attrs["hidden_columns"] = hidden
    return frame


def _text(values: pa.ChunkedArray) -> pd.api.extensions.ExtensionArray:
    return pd.array(values, dtype="str")


def _choice(
    codes: pa.ChunkedArray, categories: Sequence[str], spread: np.ndarray | None = None
) -> pd.Categorical:
    """Return the categorical of codes the SQL computed (-1: missing or not a category)."""
    numbers = codes.to_numpy()
    if spread is not None:
        numbers = numbers[spread]
    return pd.Categorical.from_codes(numbers, categories=list(categories))


def _inferred_choice(values: pa.ChunkedArray) -> pd.Series:
    """Return ``values`` as a categorical whose categories are its distinct values, sorted."""
    distinct = pc.drop_null(pc.unique(values)).to_pylist()
    # Let pandas order and type the categories, exactly as pd.Categorical(values) would.
    categories = pd.Categorical(np.array(distinct, dtype=object)).categories
    codes = pc.index_in(values, value_set=pa.array(list(categories), pa.large_string()))
    numbers = pc.fill_null(codes, -1).to_numpy().astype(np.int32)
    return pd.Series(pd.Categorical.from_codes(numbers, dtype=pd.CategoricalDtype(categories)))


def _utc_datetimes(values: pa.ChunkedArray) -> pd.Series:
    # SQLite hands back naive UTC text, PostgreSQL microseconds since the epoch.
    if pa.types.is_integer(values.type):
        micros = values.to_numpy(zero_copy_only=False)
        if values.null_count:
            micros = pc.fill_null(values, np.iinfo(np.int64).min).to_numpy()
        return pd.Series(micros.view("datetime64[us]")).dt.tz_localize("UTC")
    try:
        stamps = pc.cast(values, pa.timestamp("us"))
    except pa.ArrowInvalid:
        # Text Arrow does not read (an offset, an odd form): pandas' ISO 8601 parser does.
        series = pd.to_datetime(
            pd.Series(values.to_pylist(), dtype=object), utc=True, format="ISO8601"
        )
        return series.astype("datetime64[us, UTC]")
    return pd.Series(stamps.to_numpy(zero_copy_only=False)).dt.tz_localize("UTC")


_JSON_CHUNK = 50_000


def _attribute_columns(texts: pa.ChunkedArray) -> dict[str, pd.Series]:
    """Return one typed column per custom attribute, one value per contact, keys sorted.

    The JSON is parsed a chunk of contacts at a time, as one array text (one ``json.loads``
    call instead of one per contact), and each attribute's values of the chunk are packed
    into an Arrow array when they are all text, all whole numbers or all yes/no, so a
    million contacts never sit in memory as Python dicts at once.
    """
    parts: dict[str, list[tuple[int, pa.Array | list[Any]]]] = {}
    kinds: dict[str, set[type]] = {}
    n = len(texts)
    for start in range(0, n, _JSON_CHUNK):
        chunk = texts.slice(start, _JSON_CHUNK).to_pylist()
        parsed = json.loads("[" + ",".join(t if t is not None else "{}" for t in chunk) + "]")
        del chunk
        for key in set().union(*parsed) - set(FRAME_COLUMNS):
            values = [d.get(key) for d in parsed]
            packed, seen = _packed(values)
            kinds.setdefault(key, set()).update(seen)
            chunks = parts.setdefault(key, [])
            if seen:  # a chunk where the attribute is always missing is a gap of nulls
                chunks.append((start, packed))
    return {key: _typed_parts(parts[key], kinds[key], n) for key in sorted(parts)}


_ARROW_TYPES: dict[frozenset[type], pa.DataType] = {
    frozenset({str}): pa.large_string(),
    frozenset({int}): pa.int64(),
    frozenset({bool}): pa.bool_(),
}


# What Arrow's own type inference makes of a list of JSON values, when it is one kind.
_INFERRED: dict[pa.DataType, set[type]] = {
    pa.string(): {str},
    pa.int64(): {int},
    pa.bool_(): {bool},
    pa.null(): set(),
}


def _packed(values: list[Any]) -> tuple[pa.Array | list[Any], set[type]]:
    """Return the values as an Arrow array when they are of one kind, and their kinds."""
    try:
        # Arrow infers in C++ what a set of the values' types would say in Python: an
        # int beside a str or a bool fails here, and the values stay a list.
        array = pa.array(values)
    except (OverflowError, pa.ArrowException):
        array = None
    if array is not None and array.type in _INFERRED:
        seen = _INFERRED[array.type]
        arrow_type = _ARROW_TYPES.get(frozenset(seen))
        return (array.cast(arrow_type) if arrow_type else values), seen
    return values, {type(v) for v in values} - {type(None)}


def _typed_parts(
    parts: list[tuple[int, pa.Array | list[Any]]], seen: set[type], n: int
) -> pd.Series:
    """Type one attribute's column from its packed chunks (see ``_typed_attribute``)."""
    arrow_type = _ARROW_TYPES.get(frozenset(seen))
    if arrow_type is not None and all(isinstance(p, pa.Array) for _, p in parts):
        arrays: list[pa.Array] = []
        at = 0
        for start, part in parts:  # chunks without the attribute are missing values
            if start > at:
                arrays.append(pa.nulls(start - at, arrow_type))
            arrays.append(part)
            at = start + len(part)
        if n > at:
            arrays.append(pa.nulls(n - at, arrow_type))
        return _typed_arrow(pa.chunked_array(arrays, arrow_type))
    values: list[Any] = [None] * n
    for start, part in parts:
        chunk = part.to_pylist() if isinstance(part, pa.Array) else part
        values[start : start + len(chunk)] = chunk
    return _typed_attribute(pd.Series(values, dtype=object))


def _typed_arrow(values: pa.ChunkedArray) -> pd.Series:
    """Type a column of all-text, all-integer or all-yes/no values as ``_typed_attribute``."""
    missing = values.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(values.type):
        filled = pc.fill_null(values, False).to_numpy(zero_copy_only=False)
        return pd.Series(pd.arrays.BooleanArray(filled, missing))
    if pa.types.is_integer(values.type):
        filled = pc.fill_null(values, 0).to_numpy()
        return pd.Series(pd.arrays.IntegerArray(filled, missing))
    distinct = pc.drop_null(pc.unique(values)).to_pylist()
    if distinct and all(_ISO_DATE.match(v) for v in distinct):
        # Parse each distinct date once, then look every value up.
        stamps = pd.to_datetime(pd.Series(distinct, dtype=object), format="ISO8601", utc=True)
        stamps = stamps.astype("datetime64[us, UTC]")
        codes = pc.fill_null(pc.index_in(values, value_set=pa.array(distinct)), -1)
        index = codes.to_numpy()
        result = stamps.take(np.where(index < 0, 0, index)).reset_index(drop=True)
        result[index < 0] = pd.NaT
        return result
    return _inferred_choice(values)


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

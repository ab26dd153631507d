"""contacts_frame read column-wise equals, value for value and dtype for dtype, the row builder.

The builder below is the one ``contacts_frame`` used before it read Arrow columns (issue 18):
one tuple per contact point, typed from Python objects. It stays here only as the
reference the new reader must match exactly, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from pandas.errors import Pandas4Warning

from bulkmail_kernel import config
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts import frame as frame_module
from bulkmail_kernel.contacts import frame_fetch
from bulkmail_kernel.contacts.frame import FRAME_COLUMNS, contacts_frame
from bulkmail_kernel.contacts.values import _cell_text
from bulkmail_kernel.db import Contact, ContactPoint, Suppression
from bulkmail_kernel.demo.generate import generate_demo

# --------------------------------------------------------------------------- the old builder

_OLD_SQL = """
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
_ISO_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2}|Z)?)?$"
)


def old_frame(database: dbmod.Database, contact_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Build the frame the way contacts_frame did before issue 18."""
    sql = _OLD_SQL
    if contact_ids is not None:
        ids = ",".join(str(int(i)) for i in contact_ids) or "NULL"
        sql = sql.replace("ORDER BY p.id", f"WHERE p.contact_id IN ({ids})\nORDER BY p.id")
    raw = database.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(sql)
        records = cur.fetchall()
        cur.close()
    finally:
        raw.close()
    table = np.empty((len(records), 17), dtype=object)
    if records:
        table[:] = records
    cols = [table[:, i] for i in range(17)]
    with warnings.catch_warnings():
        # A language outside the list became missing, with pandas' deprecation warning.
        warnings.simplefilter("ignore", Pandas4Warning)
        out = _old_columns(cols)
    attrs = _old_attributes(out["contact_id"], cols[16])
    return pd.concat([out, attrs], axis=1) if len(attrs.columns) else out


def _old_columns(cols: list[Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_point_id": pd.array(cols[0], dtype="int64"),
            "contact_id": pd.array(cols[1], dtype="int64"),
            "external_id": pd.array(cols[2], dtype="str"),
            "first_name": pd.array(cols[3], dtype="str"),
            "last_name": pd.array(cols[4], dtype="str"),
            "patronymic": pd.array(cols[5], dtype="str"),
            "gender": pd.Categorical(cols[6], categories=["m", "f"]),
            "language": pd.Categorical(cols[7], categories=list(config.SUPPORTED_LANGUAGES)),
            "registered_at": _old_datetimes(cols[8]),
            "channel": pd.Categorical(cols[9], categories=["email", "phone"]),
            "address": pd.array(cols[10], dtype="str"),
            "point_type": pd.Categorical(cols[11]),
            "kind": pd.Categorical(cols[12], categories=["personal", "work"]),
            "mailing_allowed": pd.array(cols[13], dtype="bool"),
            "is_preferred": pd.array(cols[14], dtype="bool"),
            "suppressed": pd.array(cols[15], dtype="bool"),
        }
    )


def _old_datetimes(values: Any) -> pd.Series:
    series = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
    return series.astype("datetime64[us, UTC]")


def _old_attributes(contact_ids: pd.Series, raw: Any) -> pd.DataFrame:
    ids = contact_ids.to_numpy()
    _, first_pos, codes = np.unique(ids, return_index=True, return_inverse=True)
    parsed: list[dict[str, Any]] = []
    for pos in first_pos:
        value = raw[pos]
        parsed.append(json.loads(value) if isinstance(value, str) else dict(value or {}))
    keys = sorted({k for d in parsed for k in d} - set(FRAME_COLUMNS))
    columns = {}
    for key in keys:
        per_contact = _old_typed(pd.Series([d.get(key) for d in parsed], dtype=object))
        columns[key] = per_contact.take(codes).set_axis(contact_ids.index)
    return pd.DataFrame(columns, index=contact_ids.index)


def _old_typed(col: pd.Series) -> pd.Series:
    values = col.dropna()
    if values.empty:
        return col.astype("category")
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        return col.astype("boolean")
    if kinds <= {int}:
        return col.astype("Int64")
    if kinds <= {int, float}:
        return pd.to_numeric(col).astype("float64")
    if kinds <= {str} and all(_ISO_DATE.match(v) for v in values.unique()):
        return pd.to_datetime(col, format="ISO8601", utc=True).astype("datetime64[us, UTC]")
    return col.map(lambda v: v if v is None or isinstance(v, str) else _cell_text(v),
                   na_action="ignore").astype("category")  # fmt: skip


# --------------------------------------------------------------------------- the data

BASE = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
CONTACTS: list[dict[str, Any]] = [
    {"external_id": "C1", "first_name": "Ján", "last_name": "Nováková", "gender": "f",
     "language": "sk", "registered_at": BASE,
     "attributes": {"customer_type": "vip", "visits": 3, "spend": 12.5, "vip": True,
                    "since": "2024-01-02", "tags": ["a", "b"], "note": "Ďakujem 😀",
                    "mixed": 1, "flag": True, "score": 1}},
    {"external_id": None, "first_name": 'Ann "Q", x\nY', "last_name": "", "gender": None,
     "language": "de", "registered_at": BASE + timedelta(microseconds=123_456),
     "attributes": {}},
    {"external_id": "", "first_name": "Иван", "last_name": "Петров", "patronymic": "Ильич",
     "gender": "m", "language": "ru", "registered_at": BASE - timedelta(days=900, seconds=7),
     "attributes": {"visits": None, "spend": 3, "vip": None, "mixed": "x", "customer_type":
                    "retail", "since": "2024-01-02T10:00:00+02:00",
                    "note": "", "only_null": None, "tags": {"k": 1}}},
    {"external_id": "C4", "first_name": "Ghost", "last_name": "NoPoints", "gender": "m",
     "language": "cs", "registered_at": BASE, "attributes": {"ghost": 1, "visits": 9}},
    {"external_id": "C5", "first_name": "Ola", "last_name": "Ñandú", "gender": "f",
     "language": "en", "registered_at": BASE + timedelta(hours=30),
     "attributes": {"customer_type": "new", "visits": 0, "vip": False, "spend": None,
                    "since": None, "first_name": "shadowed",
                    "flag": 0, "score": 2.5}},
]  # fmt: skip
POINTS: list[tuple[int, str, str, str, str, bool, bool]] = [
    # contact, channel, value, type, kind, mailing_allowed, is_preferred
    (1, "email", "Jan.Novak@Example.SK", "main", "personal", True, True),
    (1, "phone", "0905 123 456", "mobile", "personal", True, False),
    (2, "email", "ann@work.example", "billing", "work", False, True),
    (3, "email", "ivan@пример.рф", "main", "personal", True, True),
    (3, "email", "ivan2@example.ru", "newsletter", "personal", True, False),
    (3, "phone", "+79031234567", "landline", "work", True, True),
    (5, "email", "ola@example.com", "main", "personal", True, False),
    (1, "email", "second@example.sk", "main", "personal", False, False),
]


def fill(database: dbmod.Database) -> None:
    """Insert the varied contacts, their points (out of contact order) and suppressions."""
    with database.engine.begin() as conn:
        for i, c in enumerate(CONTACTS, start=1):
            conn.execute(sa.insert(Contact), [{"id": i, "patronymic": "", **c, "source": "t"}])
        for n, (cid, channel, value, ptype, kind, allowed, preferred) in enumerate(POINTS):
            normalized = value.lower() if channel == "email" else f"+4219{n:08d}"
            if value.startswith("+"):
                normalized = value
            conn.execute(
                sa.insert(ContactPoint),
                [{"contact_id": cid, "channel": channel, "value": value,
                  "normalized": normalized, "type": ptype, "kind": kind,
                  "mailing_allowed": allowed, "is_preferred": preferred, "source": "t"}],
            )  # fmt: skip
        conn.execute(
            sa.insert(Suppression),
            [
                {"channel": "email", "normalized": "ann@work.example", "reason": "manual"},
                {"channel": "phone", "normalized": "+79031234567", "reason": "unsubscribe"},
            ],
        )


def assert_same(new: pd.DataFrame, old: pd.DataFrame) -> None:
    """Fail unless the frames have the same columns, order, dtypes and values."""
    assert list(new.columns) == list(old.columns)
    for name in old.columns:
        assert new[name].dtype == old[name].dtype, name
    assert new.index.equals(old.index)
    pd.testing.assert_frame_equal(new, old, check_exact=True, check_categorical=True)


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("chunk", [None, 2])
def test_frame_equals_the_row_builder(
    database: dbmod.Database, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(database)
    if chunk:  # chunk boundaries inside contacts and points: every piece joins up again
        monkeypatch.setattr(frame_fetch, "_CHUNK_ROWS", chunk)
        monkeypatch.setattr(frame_module, "_JSON_CHUNK", chunk)
    new = contacts_frame(database)
    old = old_frame(database)
    assert_same(new, old)
    assert len(new) == len(POINTS)
    assert "ghost" not in new.columns  # the contact without points brings no attribute
    assert str(new["mixed"].dtype) == "category"  # a number and a text: text, as before
    assert new["first_name"].tolist().count('Ann "Q", x\nY') == 1
    assert new.loc[new.contact_id == 2, "external_id"].isna().all()
    assert (new.loc[new.contact_id == 3, "external_id"] == "").all()


def test_frame_of_some_contacts_equals_the_row_builder(database: dbmod.Database) -> None:
    fill(database)
    for ids in ([3, 1], [4], []):
        assert_same(contacts_frame(database, contact_ids=ids), old_frame(database, ids))


def test_empty_frame_equals_the_row_builder(database: dbmod.Database) -> None:
    assert_same(contacts_frame(database), old_frame(database))


def test_demo_frame_equals_the_row_builder(database: dbmod.Database) -> None:
    generate_demo(800, db=database, today=date(2026, 12, 1), progress=False, samples_dir=None)
    new = contacts_frame(database)
    assert_same(new, old_frame(database))
    assert new["next_checkup"].dtype == "datetime64[us, UTC]"

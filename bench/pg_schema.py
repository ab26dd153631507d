"""A fresh PostgreSQL schema for one benchmark run, dropped after it: a bench leaves no tables."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

from bulkmail_kernel import db as dbmod


@contextlib.contextmanager
def fresh_schema(base_url: str) -> Iterator[str]:
    """Yield ``base_url`` pointed at a new schema; drop the schema (and close engines) after."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        dbmod.close_all()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

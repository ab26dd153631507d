"""The deterministic demo data set: realistic Slovak, Czech, Russian and English contacts.

``generate_demo`` fills a database with contacts whose names carry diacritics and
Cyrillic, correct female surname forms (Nováková, Петрова), Russian patronymics,
custom attributes (customer type, city, a vet-clinic share with pets and check-ups),
and one to three contact points each. The same seed always gives the same rows.

Every e-mail address lies under an example domain (example.com, .sk, .cz, .ru) and
every phone number is a valid E.164 number, so the set exercises validation without
writing to a real person. The columns are generated vectorised with numpy
(:mod:`bulkmail_kernel.demo.dataset`, from the name and number pools of
:mod:`bulkmail_kernel.demo.pools`); this module refuses a database that holds real
contacts, loads the columns with the raw driver (SQLite ``executemany`` in one
transaction, PostgreSQL ``COPY``) and adds the demo sender: a million contacts load
in well under two minutes (see ``bench/bench_demo.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from tqdm.auto import tqdm

from bulkmail_kernel import config
from bulkmail_kernel.db import Contact, Database, Suppression, resolve_database
from bulkmail_kernel.demo.dataset import DEMO_SOURCE, DEMO_SUPPRESSION_DETAIL, _generate
from bulkmail_kernel.exceptions import ConfigError

log = logging.getLogger("bulkmail")

DEFAULT_SEED = 20261123
#: Rows per executemany / COPY batch: large enough to amortise the driver, small enough
#: that the progress bar moves.
BATCH_ROWS = 50_000

# --------------------------------------------------------------------------- loading


def _rows(cols: dict[str, np.ndarray], start: int, stop: int) -> Iterator[tuple[Any, ...]]:
    return zip(*(c[start:stop].tolist() for c in cols.values()), strict=True)


def _load_sqlite(db: Database, tables: dict[str, dict[str, np.ndarray]], bar: tqdm) -> None:
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        cur = conn.cursor()
        # Nothing is lost if the machine dies mid-load (the demo is simply regenerated),
        # so skip the fsyncs for the load only.
        cur.execute("PRAGMA synchronous=OFF")
        # A big page cache keeps the randomly-ordered unique index in memory while loading.
        cur.execute("PRAGMA cache_size=-262144")
        try:
            cur.execute("BEGIN")
            for table, cols in tables.items():
                sql = (
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                )
                total = len(next(iter(cols.values())))
                for start in range(0, total, BATCH_ROWS):
                    stop = min(start + BATCH_ROWS, total)
                    cur.executemany(sql, _rows(cols, start, stop))
                    bar.update(stop - start)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA cache_size=-2000")
            cur.close()
    finally:
        raw.close()


def _pg_text(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn SQLite's naive UTC timestamp text into timestamptz literals for PostgreSQL."""
    out = dict(cols)
    for name in ("registered_at", "created_at", "updated_at"):
        if name in out:
            out[name] = np.strings.add(out[name], "+00")
    return out


def _load_postgresql(db: Database, tables: dict[str, dict[str, np.ndarray]], bar: tqdm) -> None:
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        try:
            with conn.cursor() as cur:
                for table, cols in tables.items():
                    pg_cols = _pg_text(cols)
                    total = len(next(iter(cols.values())))
                    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                        for start in range(0, total, BATCH_ROWS):
                            stop = min(start + BATCH_ROWS, total)
                            for row in _rows(pg_cols, start, stop):
                                copy.write_row(row)
                            bar.update(stop - start)
                    if "id" not in cols:
                        continue
                    # Ids were given explicitly: move the sequence past them.
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"GREATEST((SELECT max(id) FROM {table}), 1))"
                    )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    finally:
        raw.close()


def _prepare(db: Database, replace: bool) -> None:
    """Refuse to mix with real contacts; delete earlier demo data when asked to."""
    with db.session() as s:
        total = s.scalar(sa.select(sa.func.count()).select_from(Contact)) or 0
        demo = (
            s.scalar(
                sa.select(sa.func.count()).select_from(Contact).where(Contact.source == DEMO_SOURCE)
            )
            or 0
        )
        if total > demo:
            raise ConfigError(
                f"{db.url}: holds {total - demo} contacts that are not demo data; "
                "generate the demo into its own database (pass url=... or set BULKMAIL_DB_URL)",
                existing=total - demo,
            )
        if demo and not replace:
            raise ConfigError(
                f"{db.url}: already holds {demo} demo contacts; pass replace=True "
                "(bulkmail demo --replace) to delete them and generate the set anew",
                existing=demo,
            )
        if demo:
            log.info("deleting %d earlier demo contacts from %s", demo, db.url)
            # Points first: one set-based delete beats a cascade per contact on SQLite.
            s.execute(
                sa.text(
                    "DELETE FROM contact_points WHERE contact_id IN "
                    "(SELECT id FROM contacts WHERE source = :src)"
                ),
                {"src": DEMO_SOURCE},
            )
            s.execute(sa.delete(Contact).where(Contact.source == DEMO_SOURCE))
        s.execute(sa.delete(Suppression).where(Suppression.detail == DEMO_SUPPRESSION_DETAIL))


def _write_samples(samples_dir: Path | str | bool | None) -> None:
    if samples_dir is None or samples_dir is False:
        return
    target = config.data_dir() / "samples" if samples_dir is True else Path(samples_dir)
    try:
        from bulkmail_kernel.demo.samples import write_samples
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.samples":
            raise
        log.info("no samples module yet: sample files not written")
        return
    write_samples(target)


def generate_demo(
    contacts: int = 5000,
    *,
    db: Database | None = None,
    url: str | None = None,
    seed: int = DEFAULT_SEED,
    today: date | None = None,
    replace: bool = False,
    progress: bool = True,
    samples_dir: Path | str | bool | None = True,
) -> pd.DataFrame:
    """Fill the database with the deterministic demo data set and return row counts per table.

    Args:
        contacts: How many contacts to create (each gets one to three contact points).
        db: An open database; else ``open_database(url)``.
        url: The database URL when ``db`` is not given (default: ``BULKMAIL_DB_URL`` or
            the SQLite file under ``data/``).
        seed: The random seed; the same seed and ``today`` always give identical rows.
        today: The anchor date: registrations lie in the five years before it, check-ups
            after it (default: today's date).
        replace: Delete earlier demo data first; without it a database that already
            holds contacts is refused.
        progress: Show a progress bar while loading.
        samples_dir: Where ``samples.write_samples`` puts the dirty sample files; True
            (default) means ``<data_dir>/samples``, None or False skips them.

    Returns:
        A frame with columns ``table`` and ``rows``.

    Raises:
        ConfigError: ``contacts`` is not positive, or the database already holds contacts
            (pass ``replace=True`` for earlier demo data; real contacts are never mixed in).

    """
    if contacts < 1:
        raise ConfigError(f"generate_demo: contacts={contacts}: give a positive number")
    db = resolve_database(db, url)
    today = today or datetime.now(UTC).date()
    started = time.perf_counter()
    _prepare(db, replace)

    with tqdm(total=contacts, unit="rows", desc="demo: generating", disable=not progress) as bar:
        gen = _generate(contacts, seed, today)
        tables = {
            "contacts": gen.contacts,
            "contact_points": gen.points,
            "suppressions": gen.suppressions,
        }
        counts = {name: len(next(iter(cols.values()))) for name, cols in tables.items()}
        log.info("generated %d demo contacts in %.1f s", contacts, time.perf_counter() - started)
        # Generation is one vectorised step; the bar then counts rows as they are written.
        bar.reset(total=sum(counts.values()))
        bar.set_description("demo: loading")
        if db.dialect == "postgresql":
            _load_postgresql(db, tables, bar)
        else:
            _load_sqlite(db, tables, bar)
    log.info("loaded %s into %s in %.1f s", counts, db.url, time.perf_counter() - started)

    _write_samples(samples_dir)
    add_demo_sender(db)
    return pd.DataFrame({"table": list(counts), "rows": list(counts.values())})


#: The demo's sender account sends to ``bulkmail sink`` on this machine, never to the internet.
DEMO_SENDER = "demo"
DEMO_SINK_PORT = 2525


def add_demo_sender(db: Database, *, port: int | None = None) -> None:
    """Create (or point again) the ``demo`` sender account at the local sink."""
    from bulkmail_kernel.providers.accounts import add_sender_account

    env_port: str | int = os.environ.get("BULKMAIL_SINK_PORT", DEMO_SINK_PORT)
    add_sender_account(
        DEMO_SENDER,
        kind="smtp",
        from_email="news@example.com",
        from_name="Demo Firm s.r.o.",
        settings={
            "host": "127.0.0.1",
            "port": int(port or env_port),
            "security": "none",
            # Served by `bulkmail unsubscribe-server` on this machine; a real account
            # points this at the firm's own https site.
            "unsubscribe_url": "http://127.0.0.1:8025/u/{token}",
        },
        db=db,
        # Unchecked on purpose: the demo is set up offline, before `bulkmail sink` runs;
        # `check_account("demo")` logs in once the sink is started.
        check=False,
    )

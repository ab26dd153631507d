"""Contacts: import from CSV, Excel, XML or SQL, validate, de-duplicate, and store.

``import_contacts`` reads a source (see :mod:`bulkmail_kernel.contacts.sources`), maps its
columns to contact fields (:mod:`bulkmail_kernel.contacts.columns`), validates every row
(:mod:`bulkmail_kernel.contacts.checks`, by the rules of
:mod:`bulkmail_kernel.contacts.values`), merges duplicates and matches stored contacts
(:mod:`bulkmail_kernel.contacts.grouping`), and stores the result in one transaction
(:mod:`bulkmail_kernel.contacts.store`). The ``ImportResult`` it returns
(:mod:`bulkmail_kernel.contacts.report`) says what happened, row by row; reading the
contacts back is :mod:`bulkmail_kernel.contacts.frame`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import pandas as pd

from bulkmail_kernel import config
from bulkmail_kernel.contacts.checks import _Candidate, validate_rows
from bulkmail_kernel.contacts.columns import _plan_columns
from bulkmail_kernel.contacts.consents import record_import_consents
from bulkmail_kernel.contacts.forgotten import drop_forgotten
from bulkmail_kernel.contacts.grouping import _merge_within_source, _resolve_against_db
from bulkmail_kernel.contacts.report import ImportResult, _Report
from bulkmail_kernel.contacts.sources import read_source
from bulkmail_kernel.contacts.store import _insert_events, _insert_many, _update
from bulkmail_kernel.db import Database, ImportRun, resolve_database, utcnow
from bulkmail_kernel.exceptions import ContactImportError

log = logging.getLogger("bulkmail")


def import_contacts(
    source: str | Path | pd.DataFrame,
    *,
    db: Database | None = None,
    url: str | None = None,
    mapping: Mapping[str, str | None] | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    region: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    query: str | None = None,
    table: str | None = None,
    sheet: str | int | None = None,
    source_name: str | None = None,
    progress: bool = True,
    consent_text: str | None = None,
) -> ImportResult:
    """Import contacts from a file, another database or a DataFrame, all or nothing by default.

    Args:
        source: a .csv, .xlsx or .xml file (schema in docs/contacts-xml.md), a SQLAlchemy URL
            of another database (with ``table=`` or ``query=``), or a pandas DataFrame.
        db: the bulkmail database to import into (default: ``open_database(url)``).
        url: the bulkmail database URL when ``db`` is not given.
        mapping: ``{"Source column": "field"}`` for columns the built-in synonyms do not
            recognise; a field is one of ``FIELDS``, ``"attributes.<name>"``, or None to skip
            the column. Unmapped, unrecognised columns become custom attributes.
        encoding: CSV encoding; detected if None: UTF-8 or UTF-16/32 (Excel's "Unicode
            text"), else cp1250 or cp1251.
        delimiter: CSV delimiter; sniffed among , ; TAB and | if None.
        region: region for phone numbers without a country code (default
            ``config.default_region()``, "SK").
        on_error: ``"raise"`` (default) imports nothing if any row is rejected and returns the
            report with ``committed=False``; ``"skip"`` imports the good rows.
        query: the SELECT to run when ``source`` is a database URL.
        table: the table to read when ``source`` is a database URL.
        sheet: the Excel sheet name or index (default: the first sheet).
        source_name: the name recorded on contacts, points and the import run.
        progress: show a progress bar while validating.
        consent_text: the wording agreed to, kept on each allowed point's consent row.

    Mailing is allowed only on explicit opt-in: a point whose row has no
    ``mailing_allowed``/``email_allowed``/``phone_allowed`` value gets False, and on re-import an
    absent value leaves the stored consent alone. Rows sharing an external id, e-mail or phone are
    one contact; existing contacts are matched the same way and updated only where a value differs,
    so re-importing a file changes nothing. An e-mail address is matched by its identity
    (``email_identity``: any case, an IDN domain in either form); another spelling of a known
    address is reported and merged, and the spelling first stored is kept. A source that cannot be
    read at all raises ``ContactImportError``.

    """
    if on_error not in ("raise", "skip"):
        raise ContactImportError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    database = resolve_database(db, url)
    src = read_source(source, encoding=encoding, delimiter=delimiter, sheet=sheet, table=table,
                      query=query)  # fmt: skip
    name = source_name or src.name
    plan = _plan_columns(src, mapping)
    region = (region or config.default_region()).upper()
    report = _Report()
    for number, reason in src.broken:
        report.add(number, "rejected", "", "", reason)
    n_rows = len(src.rows) + len(src.broken)
    # validate_rows empties src.rows as it goes: the source is not held beside its candidates.
    candidates = validate_rows(src.rows, plan, region, src.kind == "csv", report,
                               label=f"checking {name}", progress=progress)  # fmt: skip
    groups = _merge_within_source(candidates, report)
    inserted = updated = unchanged = 0
    committed = False
    with database.session() as s:
        run = ImportRun(source=name[:500], rows=n_rows)
        s.add(run)
        s.flush()
        groups = drop_forgotten(s, groups, report)  # erased on request: never back (GDPR 17)
        contacts = _resolve_against_db(s, groups, report)
        if on_error == "skip" or not report.rejected:
            now = utcnow()
            events: list[tuple[int, str, _Candidate, list[str]]] = []
            new: list[_Candidate] = []
            for g in groups:
                if g.contact_id is not None and g.contact_id < 0:
                    continue  # rejected, or folded into another row matching the same contact
                if g.contact_id is None:
                    new.append(g)
                elif changed := _update(contacts[g.contact_id], g, name):
                    events.append((g.contact_id, "updated", g, changed))
                    updated += 1
                else:
                    unchanged += 1
            s.flush()
            new_ids = _insert_many(s, new, name, now)
            events.extend((cid, "imported", g, []) for cid, g in zip(new_ids, new, strict=True))
            inserted = len(new_ids)
            event_rows = (
                (kind, cid, f"{name} row {g.row}",
                 {"import_run_id": run.id, "rows": [g.row, *g.rows], "changed": changed}, now)
                for cid, kind, g, changed in sorted(events, key=lambda e: e[2].row)
            )  # fmt: skip
            _insert_events(s, event_rows)
            committed = True
            record_import_consents(s, run.id, run.started_at, consent_text)  # GDPR art. 7(1)
        run.inserted, run.updated = inserted, updated
        run.merged = len(report.merged - report.rejected)
        run.rejected = len(report.rejected)
        run.committed = committed
        run.finished_at = utcnow()
        run_id = run.id
    result = ImportResult(
        source=name, rows=n_rows, inserted=inserted, updated=updated, unchanged=unchanged,
        merged=len(report.merged - report.rejected), rejected=len(report.rejected),
        committed=committed, report=report.frame(), run_id=run_id, encoding=src.encoding,
        delimiter=src.delimiter, notes=src.notes, database=database)  # fmt: skip
    log.info("import %s", result.summary())
    return result

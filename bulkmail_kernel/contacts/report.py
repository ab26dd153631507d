"""What an import did: ``ImportResult`` and the row-by-row report it carries.

``import_contacts`` returns an ``ImportResult``: the counts (inserted, updated,
unchanged, merged, rejected), whether anything was committed, and a DataFrame listing
every rejected, merged, matched (another spelling of an address a contact in the
database has) or cleaned row with the row number a person sees in the source.
``_Report`` collects those lines while the pipeline validates, merges and stores; it
lives here with the result it becomes, apart from the pipeline itself.
"""

from __future__ import annotations

import csv
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bulkmail_kernel import config
from bulkmail_kernel.contacts.values import _cell_text, neutralise
from bulkmail_kernel.db import Database
from bulkmail_kernel.db.exportlog import IMPORT_REPORT, export_user, record_export
from bulkmail_kernel.display import readable

REPORT_COLUMNS = ("row", "action", "column", "value", "reason")


@dataclass(frozen=True, eq=False)
class ImportResult:
    """What an import did: counts, whether it was committed, and a row-by-row report.

    ``report`` lists every rejected, merged, matched or cleaned row with the row number
    a person sees in the source (spreadsheet row with the header as row 1, XML
    ``<contact>`` element number, SQL result row).
    """

    source: str
    rows: int
    inserted: int
    updated: int
    unchanged: int
    merged: int
    rejected: int
    committed: bool
    report: pd.DataFrame
    run_id: int | None = None
    encoding: str | None = None
    delimiter: str | None = None
    #: How the source was read, when the user should know (a workbook named .csv).
    notes: tuple[str, ...] = ()
    #: The database imported into: ``save_report`` logs the report there as an export.
    database: Database | None = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        """Return a one-line summary of the counts."""
        state = "committed" if self.committed else "NOT committed"
        text = (
            f"{self.source}: {self.rows} rows, {self.inserted} inserted, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.merged} merged, {self.rejected} rejected; {state}"
        )
        if not self.committed and self.rejected:
            text += " (fix the rejected rows, or import again with on_error='skip')"
        return text

    def save_report(self, path: str | Path | None = None) -> Path:
        """Write the report to a .csv Excel opens safely and return its path.

        None means ``data/exports/import-report-<source name>.csv`` (ignored by git).
        Text that Excel would run as a formula (a rejected ``=cmd|...`` cell) gets an
        apostrophe in front: a .csv has no cell types to keep it text. Its ``value``
        column repeats cells of the source (addresses, names), so the file is written to
        the export log (kind "import report"); it is not refused, since it only gives back
        what the importing user supplied (docs/permissions.md).
        """
        if path is None:
            # A source may be a SQL URL or a query: keep a file-name-safe part of it.
            stem = re.sub(r"[^\w.-]+", "_", Path(self.source).stem).strip("._") or "source"
            target = config.exports_dir() / f"import-report-{stem}.csv"
        else:
            target = Path(path).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
        # utf-8-sig: the BOM is what makes Excel read the file as UTF-8 (diacritics, Cyrillic).
        with target.open("w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")
            writer.writerow(REPORT_COLUMNS)
            for row in self.report.itertuples(index=False):
                writer.writerow([row[0], *(neutralise(str(v)) for v in row[1:])])
        if self.database is not None and len(self.report):
            record_export(self.database, who=export_user(self.database), kind=IMPORT_REPORT,
                          columns=["value"], rows=len(self.report), path=target,
                          detail=f"rows of {self.source} as supplied")  # fmt: skip
        return target

    def __repr__(self) -> str:
        lines = [f"ImportResult({self.summary()})", *(f"note: {n}" for n in self.notes)]
        if len(self.report):
            # Reasons in full: a cut one hides what to fix.
            lines.append(self.report.to_string(index=False, max_rows=20, max_colwidth=None))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.committed else "#cf222e"
        head = f'<p style="color:{colour}"><b>{html.escape(self.summary())}</b></p>'
        head += "".join(f"<p>note: {html.escape(n)}</p>" for n in self.notes)
        if not len(self.report):
            return head
        # Reasons in full (pandas cuts at 50 characters), only for this table.
        with pd.option_context("display.max_colwidth", None):
            table = self.report.to_html(index=False, max_rows=200, escape=True, na_rep="")
        return head + table


class _Report:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str, str, str, str]] = []
        self.rejected: set[int] = set()
        self.merged: set[int] = set()

    def add(self, row: int, action: str, column: str, value: Any, reason: str) -> None:
        self.lines.append((row, action, column, _cell_text(value), reason))
        if action == "rejected":
            self.rejected.add(row)
        elif action == "merged":
            self.merged.add(row)

    def frame(self) -> pd.DataFrame:
        order = {"rejected": 0, "merged": 1, "matched": 1, "cleaned": 2}
        lines = sorted(self.lines, key=lambda t: (t[0], order.get(t[1], 9)))
        df = pd.DataFrame(lines, columns=list(REPORT_COLUMNS))
        return readable(df.astype({"row": "int64", "action": "str", "column": "str", "value": "str",
                                   "reason": "str"}))  # fmt: skip

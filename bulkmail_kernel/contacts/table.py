"""A source read into memory: its header and rows, before any validation.

Each reader of :mod:`bulkmail_kernel.contacts.sources` (and
:mod:`bulkmail_kernel.contacts.workbook`) returns a :class:`SourceTable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class XmlPoint:
    """One ``<email>`` or ``<phone>`` element of an XML contact."""

    channel: str
    value: str
    kind: str | None = None
    type: str | None = None
    allowed: str | None = None


@dataclass(frozen=True)
class SourceRow:
    """One data row of a source: its visible number and its cells by column name."""

    row: int
    cells: dict[str, Any]
    #: XML only: the contact's ``<email>``/``<phone>`` elements, in document order.
    points: tuple[XmlPoint, ...] = ()


@dataclass(frozen=True)
class SourceTable:
    """A source read into memory, before any validation."""

    name: str
    kind: str
    columns: list[str]
    rows: list[SourceRow]
    #: Rows that could not even be split into cells: (row number, reason).
    broken: list[tuple[int, str]] = field(default_factory=list)
    encoding: str | None = None
    delimiter: str | None = None
    #: What the user should know about how the source was read (a workbook named .csv).
    notes: tuple[str, ...] = ()

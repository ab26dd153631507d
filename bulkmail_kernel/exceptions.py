"""Errors that bulkmail raises on purpose, each saying where, what, and what to do.

The tree::

    BulkmailError
    ├── ConfigError          settings, database URL, credentials
    ├── ContactImportError   a source file or table that cannot be imported
    ├── ContactError         no contact is known by the id, customer number or address given
    ├── FilterError          a segment filter naming an unknown field or a wrong value
    ├── SegmentError         a saved segment that is unknown, taken, or cannot be stored
    ├── ExportError          an export with unknown or not-allowed columns, or a bad path
    ├── ContactAccessError   the database role may not read or export contact data
    ├── TemplateError        a template that does not load or render
    ├── SendError            a campaign or message that cannot be sent
    └── ProviderError        a provider (SMTP relay, SendPulse, EuroSMS) said no

Library errors are converted where they enter the package, so a notebook user
sees one of these with structured fields instead of a stack of foreign frames.
"""

from __future__ import annotations

from typing import Any


class BulkmailError(Exception):
    """Base of every error bulkmail raises on purpose."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        #: Structured details (row number, contact id, SMTP code, ...) for programs.
        self.fields: dict[str, Any] = fields


class ConfigError(BulkmailError):
    """A setting, database URL or credential is missing or wrong."""


class ContactImportError(BulkmailError):
    """A contact source cannot be read at all (as opposed to single bad rows)."""


class ContactError(BulkmailError):
    """No stored contact is known by the id, customer number or address given."""


class FilterError(BulkmailError):
    """A filter names an unknown field or gives a value of the wrong type."""


class SegmentError(BulkmailError):
    """A saved segment is unknown, its name is taken, or its members cannot be stored."""


class ExportError(BulkmailError):
    """An export cannot be written: unknown columns, contact data not allowed, bad path."""


class ContactAccessError(ExportError):
    """The database role (or the local setting) does not allow reading or exporting contact data.

    Fields: ``role`` (the database or OS user), ``table`` and ``columns`` refused.
    """


class TemplateError(BulkmailError):
    """A template cannot be loaded or rendered."""


class SendError(BulkmailError):
    """A campaign or message cannot be sent."""


class ProviderError(BulkmailError):
    """A provider refused a request."""


class RecipientsSkippedWarning(UserWarning):
    """Registration skipped some recipients; the message says how many and why."""

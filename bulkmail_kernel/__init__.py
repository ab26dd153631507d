"""bulkmail: contacts, segments, templates and throttled sending, step by step from a notebook.

Notebooks import only from here; ``__all__`` is the public API.
"""

from __future__ import annotations

import logging

from .db import Database, open_database
from .exceptions import (
    BulkmailError,
    ConfigError,
    ContactImportError,
    FilterError,
    ProviderError,
    SendError,
    TemplateError,
)

__version__ = "0.1.0"

logging.getLogger("bulkmail").addHandler(logging.NullHandler())

__all__ = [
    "BulkmailError",
    "ConfigError",
    "ContactImportError",
    "Database",
    "FilterError",
    "ProviderError",
    "SendError",
    "TemplateError",
    "open_database",
]

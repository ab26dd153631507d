"""bulkmail: contacts, segments, templates and throttled sending, step by step from a notebook.

Notebooks import only from here; ``__all__`` is the public API and the README's
"Public API" section lists the same names (a test keeps them in step).
"""

from __future__ import annotations

import logging

from .contacts import ImportResult, contacts_frame, import_contacts
from .db import Database, open_database
from .demo import generate_demo
from .exceptions import (
    BulkmailError,
    ConfigError,
    ContactImportError,
    ExportError,
    FilterError,
    ProviderError,
    SegmentError,
    SendError,
    TemplateError,
)
from .export import export_recipients
from .mime import build_mime
from .segments import (
    FilterSpec,
    delete_segment,
    filter_recipients,
    list_segments,
    load_segment,
    rename_segment,
    save_segment,
    segment_recipients,
)
from .sms import sms_segments
from .templates import (
    RenderedMessage,
    Template,
    check_template,
    list_templates,
    load_template,
    render,
    template_from_html,
)
from .widgets_preview import preview, preview_warnings
from .widgets_segments import segment_builder

__version__ = "0.1.0"

logging.getLogger("bulkmail").addHandler(logging.NullHandler())

__all__ = [
    "BulkmailError",
    "ConfigError",
    "ContactImportError",
    "Database",
    "ExportError",
    "FilterError",
    "FilterSpec",
    "ImportResult",
    "ProviderError",
    "RenderedMessage",
    "SegmentError",
    "SendError",
    "Template",
    "TemplateError",
    "build_mime",
    "check_template",
    "contacts_frame",
    "delete_segment",
    "export_recipients",
    "filter_recipients",
    "generate_demo",
    "import_contacts",
    "list_segments",
    "list_templates",
    "load_segment",
    "load_template",
    "open_database",
    "preview",
    "preview_warnings",
    "rename_segment",
    "render",
    "save_segment",
    "segment_builder",
    "segment_recipients",
    "sms_segments",
    "template_from_html",
]

"""bulkmail: contacts, segments, templates and throttled sending, step by step from a notebook.

Notebooks import only from here; ``__all__`` is the public API and the README's
"Public API" section lists the same names (a test keeps them in step).
"""

from __future__ import annotations

import logging

from .bounces import parse_bounce, process_mailbox
from .campaigns import (
    CampaignInfo,
    SenderInfo,
    add_sender_account,
    cancel,
    create_campaign,
    get_campaign,
    pause,
    queue,
    register,
    remove_from_queue,
    requeue,
    resume,
    skipped,
    test_send,
    unknown_messages,
    unsubscribe,
    unsubscribe_address,
)
from .contacts import ImportResult, contacts_frame, import_contacts
from .db import Database, open_database
from .demo import generate_demo
from .dkim import generate_dkim_key, sign_message
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
from .reports import list_campaigns, list_suppressions, plot_timeline
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
from .sending import (
    RetryPolicy,
    SendSummary,
    campaign_failures,
    campaign_report,
    campaign_timeline,
    history,
    provider_status,
    run_worker,
    send,
)
from .sink import Sink, start_sink
from .sms import fit_to_gsm7, sms_cost, sms_fit_preview, sms_segments
from .templates import (
    RenderedMessage,
    Template,
    check_template,
    list_templates,
    load_template,
    render,
    template_from_html,
)
from .transports.sendpulse import (
    SendPulseError,
    SendPulseResult,
    add_sendpulse_account,
    send_campaign_via_sendpulse,
    sendpulse_report,
)
from .transports.sms import EuroSmsError, add_eurosms_account, poll_delivery_reports
from .unsubscribe_server import create_app as create_unsubscribe_app
from .widgets_preview import preview, preview_warnings
from .widgets_segments import segment_builder

__version__ = "0.1.0"

logging.getLogger("bulkmail").addHandler(logging.NullHandler())

__all__ = [
    "BulkmailError",
    "CampaignInfo",
    "ConfigError",
    "ContactImportError",
    "Database",
    "EuroSmsError",
    "ExportError",
    "FilterError",
    "FilterSpec",
    "ImportResult",
    "ProviderError",
    "RenderedMessage",
    "RetryPolicy",
    "SegmentError",
    "SendError",
    "SendPulseError",
    "SendPulseResult",
    "SendSummary",
    "SenderInfo",
    "Sink",
    "Template",
    "TemplateError",
    "add_eurosms_account",
    "add_sender_account",
    "add_sendpulse_account",
    "build_mime",
    "campaign_failures",
    "campaign_report",
    "campaign_timeline",
    "cancel",
    "check_template",
    "contacts_frame",
    "create_campaign",
    "create_unsubscribe_app",
    "delete_segment",
    "export_recipients",
    "filter_recipients",
    "fit_to_gsm7",
    "generate_demo",
    "generate_dkim_key",
    "get_campaign",
    "history",
    "import_contacts",
    "list_campaigns",
    "list_segments",
    "list_suppressions",
    "list_templates",
    "load_segment",
    "load_template",
    "open_database",
    "parse_bounce",
    "pause",
    "plot_timeline",
    "poll_delivery_reports",
    "preview",
    "preview_warnings",
    "process_mailbox",
    "provider_status",
    "queue",
    "register",
    "remove_from_queue",
    "rename_segment",
    "render",
    "requeue",
    "resume",
    "run_worker",
    "save_segment",
    "segment_builder",
    "segment_recipients",
    "send",
    "send_campaign_via_sendpulse",
    "sendpulse_report",
    "sign_message",
    "skipped",
    "sms_cost",
    "sms_fit_preview",
    "sms_segments",
    "start_sink",
    "template_from_html",
    "test_send",
    "unknown_messages",
    "unsubscribe",
    "unsubscribe_address",
]

"""bulkmail: contacts, segments, templates and throttled sending, step by step from a notebook.

Notebooks import only from here; ``__all__`` is the public API and the README's
"Public API" section lists the same names (a test keeps them in step).

Each name is imported from its stage the first time it is used (PEP 562), so
``import bulkmail_kernel`` and ``bulkmail --help`` load no widget, web, SMTP-server
or data stack: ``bm.segment_builder`` brings ipywidgets, ``bm.start_sink`` aiosmtpd.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bulkmail_kernel.campaigns.abreport import ab_report
    from bulkmail_kernel.campaigns.abtests import ab_test_step, create_ab_test, pick_winner
    from bulkmail_kernel.campaigns.background import BackgroundSend, send_in_background
    from bulkmail_kernel.campaigns.campaigns import (
        cancel,
        create_campaign,
        get_campaign,
        pause,
        resume,
        schedule,
        set_send_window,
    )
    from bulkmail_kernel.campaigns.caps import (
        frequency_cap,
        set_campaign_cap,
        set_frequency_cap,
    )
    from bulkmail_kernel.campaigns.explain import explain
    from bulkmail_kernel.campaigns.monitor import CampaignProgress, campaign_progress
    from bulkmail_kernel.campaigns.plan import send_plan
    from bulkmail_kernel.campaigns.plan_views import plan_overlap, plan_per_hour, plot_plan
    from bulkmail_kernel.campaigns.preview import (
        CampaignPreview,
        campaign_preview,
        check_campaign,
    )
    from bulkmail_kernel.campaigns.privacy import (
        ContactData,
        ForgetResult,
        export_contact_data,
        forget_contact,
    )
    from bulkmail_kernel.campaigns.registration import register, skipped
    from bulkmail_kernel.campaigns.reports import (
        campaign_failures,
        campaign_report,
        campaign_timeline,
        history,
        list_campaigns,
        list_suppressions,
        plot_timeline,
        provider_status,
    )
    from bulkmail_kernel.campaigns.resend import non_clickers, resend_to_non_clickers
    from bulkmail_kernel.campaigns.samples import test_send

    # Consent records and click tracking (docs/tracking.md).
    from bulkmail_kernel.campaigns.tracking import clicks, set_tracking
    from bulkmail_kernel.campaigns.worker import run_worker
    from bulkmail_kernel.compose.checks import check_template, preview_warnings
    from bulkmail_kernel.compose.mime import build_mime
    from bulkmail_kernel.compose.render import RenderedMessage, render
    from bulkmail_kernel.compose.sms import fit_to_gsm7, sms_cost, sms_fit_preview, sms_segments
    from bulkmail_kernel.compose.templates import (
        Template,
        list_templates,
        load_template,
        template_from_html,
    )
    from bulkmail_kernel.contacts.consents import consents, record_consent
    from bulkmail_kernel.contacts.frame import contacts_frame
    from bulkmail_kernel.contacts.importer import import_contacts
    from bulkmail_kernel.contacts.merges import identity_merges
    from bulkmail_kernel.contacts.report import ImportResult
    from bulkmail_kernel.db import Database, connect, open_database
    from bulkmail_kernel.db.roles import create_roles
    from bulkmail_kernel.deliverability.bounces import parse_bounce
    from bulkmail_kernel.deliverability.classify import classify_message
    from bulkmail_kernel.deliverability.dkim import generate_dkim_key, sign_message
    from bulkmail_kernel.deliverability.mailbox import process_mailbox
    from bulkmail_kernel.demo.generate import generate_demo
    from bulkmail_kernel.display import readable
    from bulkmail_kernel.engine.loop import RetryPolicy, SendSummary, send
    from bulkmail_kernel.exceptions import (
        BulkmailError,
        ConfigError,
        ContactAccessError,
        ContactError,
        ContactImportError,
        ExportError,
        FilterError,
        ProviderError,
        RecipientsSkippedWarning,
        SegmentError,
        SendError,
        TemplateError,
    )
    from bulkmail_kernel.outbox.caps import FrequencyCap
    from bulkmail_kernel.outbox.domains import domain_group
    from bulkmail_kernel.outbox.queue import queue, remove_from_queue, requeue, unknown_messages
    from bulkmail_kernel.outbox.suppressions import unsubscribe, unsubscribe_address
    from bulkmail_kernel.outbox.workers import live_workers
    from bulkmail_kernel.providers.account_checks import check_account
    from bulkmail_kernel.providers.accounts import add_sender_account
    from bulkmail_kernel.providers.autoconfig import suggest_account_settings
    from bulkmail_kernel.providers.eurosms import add_eurosms_account, poll_delivery_reports
    from bulkmail_kernel.providers.limits import domain_limits, set_domain_limits
    from bulkmail_kernel.providers.sendpulse import (
        SendPulseResult,
        add_sendpulse_account,
        send_campaign_via_sendpulse,
        sendpulse_report,
    )
    from bulkmail_kernel.records import CampaignInfo, SenderInfo
    from bulkmail_kernel.segments.audit import allow_contact_export, export_log
    from bulkmail_kernel.segments.explain import explain_segment
    from bulkmail_kernel.segments.export import export_recipients, frame_csv
    from bulkmail_kernel.segments.filters import filter_recipients
    from bulkmail_kernel.segments.rules import Rule, RuleGroup
    from bulkmail_kernel.segments.saved import (
        delete_segment,
        list_segments,
        load_segment,
        rename_segment,
        save_segment,
        segment_recipients,
    )
    from bulkmail_kernel.segments.spec import FilterSpec
    from bulkmail_kernel.servers.sink import Sink, start_sink
    from bulkmail_kernel.servers.web import create_app as create_unsubscribe_app
    from bulkmail_kernel.transports.eurosms import EuroSmsError
    from bulkmail_kernel.transports.sendpulse import SendPulseError
    from bulkmail_kernel.widgets.abtest import ab_test_widget
    from bulkmail_kernel.widgets.monitor import outbox_monitor
    from bulkmail_kernel.widgets.preview import preview
    from bulkmail_kernel.widgets.segments import segment_builder

__version__ = "0.1.0"

logging.getLogger("bulkmail").addHandler(logging.NullHandler())


def _in_a_notebook() -> None:
    """Show bulkmail's own errors as one short box when imported in IPython (cheap elsewhere)."""
    if "IPython" in sys.modules:
        from bulkmail_kernel.widgets.errors import install_error_display

        install_error_display()


_in_a_notebook()

#: Public name -> (module, name there): where each name of ``__all__`` lives.
_WHERE: dict[str, tuple[str, str]] = {
    "BackgroundSend": ("bulkmail_kernel.campaigns.background", "BackgroundSend"),
    "BulkmailError": ("bulkmail_kernel.exceptions", "BulkmailError"),
    "CampaignInfo": ("bulkmail_kernel.records", "CampaignInfo"),
    "CampaignProgress": ("bulkmail_kernel.campaigns.monitor", "CampaignProgress"),
    "ConfigError": ("bulkmail_kernel.exceptions", "ConfigError"),
    "ContactData": ("bulkmail_kernel.campaigns.privacy", "ContactData"),
    "ContactError": ("bulkmail_kernel.exceptions", "ContactError"),
    "ContactImportError": ("bulkmail_kernel.exceptions", "ContactImportError"),
    "ForgetResult": ("bulkmail_kernel.campaigns.privacy", "ForgetResult"),
    "export_contact_data": ("bulkmail_kernel.campaigns.privacy", "export_contact_data"),
    "forget_contact": ("bulkmail_kernel.campaigns.privacy", "forget_contact"),
    "Database": ("bulkmail_kernel.db", "Database"),
    "EuroSmsError": ("bulkmail_kernel.transports.eurosms", "EuroSmsError"),
    "ExportError": ("bulkmail_kernel.exceptions", "ExportError"),
    "FilterError": ("bulkmail_kernel.exceptions", "FilterError"),
    "FilterSpec": ("bulkmail_kernel.segments.spec", "FilterSpec"),
    "Rule": ("bulkmail_kernel.segments.rules", "Rule"),
    "readable": ("bulkmail_kernel.display", "readable"),
    "explain": ("bulkmail_kernel.campaigns.explain", "explain"),
    "explain_segment": ("bulkmail_kernel.segments.explain", "explain_segment"),
    "RuleGroup": ("bulkmail_kernel.segments.rules", "RuleGroup"),
    "FrequencyCap": ("bulkmail_kernel.outbox.caps", "FrequencyCap"),
    "ImportResult": ("bulkmail_kernel.contacts.report", "ImportResult"),
    "ProviderError": ("bulkmail_kernel.exceptions", "ProviderError"),
    "RenderedMessage": ("bulkmail_kernel.compose.render", "RenderedMessage"),
    "RetryPolicy": ("bulkmail_kernel.engine.loop", "RetryPolicy"),
    "SegmentError": ("bulkmail_kernel.exceptions", "SegmentError"),
    "SendError": ("bulkmail_kernel.exceptions", "SendError"),
    "SendPulseError": ("bulkmail_kernel.transports.sendpulse", "SendPulseError"),
    "SendPulseResult": ("bulkmail_kernel.providers.sendpulse", "SendPulseResult"),
    "SendSummary": ("bulkmail_kernel.engine.loop", "SendSummary"),
    "SenderInfo": ("bulkmail_kernel.records", "SenderInfo"),
    "Sink": ("bulkmail_kernel.servers.sink", "Sink"),
    "Template": ("bulkmail_kernel.compose.templates", "Template"),
    "TemplateError": ("bulkmail_kernel.exceptions", "TemplateError"),
    "RecipientsSkippedWarning": ("bulkmail_kernel.exceptions", "RecipientsSkippedWarning"),
    "add_eurosms_account": ("bulkmail_kernel.providers.eurosms", "add_eurosms_account"),
    "add_sender_account": ("bulkmail_kernel.providers.accounts", "add_sender_account"),
    "add_sendpulse_account": ("bulkmail_kernel.providers.sendpulse", "add_sendpulse_account"),
    "build_mime": ("bulkmail_kernel.compose.mime", "build_mime"),
    "campaign_failures": ("bulkmail_kernel.campaigns.reports", "campaign_failures"),
    "campaign_progress": ("bulkmail_kernel.campaigns.monitor", "campaign_progress"),
    "campaign_report": ("bulkmail_kernel.campaigns.reports", "campaign_report"),
    "campaign_timeline": ("bulkmail_kernel.campaigns.reports", "campaign_timeline"),
    "cancel": ("bulkmail_kernel.campaigns.campaigns", "cancel"),
    "check_account": ("bulkmail_kernel.providers.account_checks", "check_account"),
    "check_template": ("bulkmail_kernel.compose.checks", "check_template"),
    "classify_message": ("bulkmail_kernel.deliverability.classify", "classify_message"),
    "connect": ("bulkmail_kernel.db", "connect"),
    "contacts_frame": ("bulkmail_kernel.contacts.frame", "contacts_frame"),
    "create_campaign": ("bulkmail_kernel.campaigns.campaigns", "create_campaign"),
    "create_unsubscribe_app": ("bulkmail_kernel.servers.web", "create_app"),
    "domain_group": ("bulkmail_kernel.outbox.domains", "domain_group"),
    "domain_limits": ("bulkmail_kernel.providers.limits", "domain_limits"),
    "delete_segment": ("bulkmail_kernel.segments.saved", "delete_segment"),
    "export_recipients": ("bulkmail_kernel.segments.export", "export_recipients"),
    "filter_recipients": ("bulkmail_kernel.segments.filters", "filter_recipients"),
    "fit_to_gsm7": ("bulkmail_kernel.compose.sms", "fit_to_gsm7"),
    "frequency_cap": ("bulkmail_kernel.campaigns.caps", "frequency_cap"),
    "generate_demo": ("bulkmail_kernel.demo.generate", "generate_demo"),
    "generate_dkim_key": ("bulkmail_kernel.deliverability.dkim", "generate_dkim_key"),
    "get_campaign": ("bulkmail_kernel.campaigns.campaigns", "get_campaign"),
    "history": ("bulkmail_kernel.campaigns.reports", "history"),
    "identity_merges": ("bulkmail_kernel.contacts.merges", "identity_merges"),
    "import_contacts": ("bulkmail_kernel.contacts.importer", "import_contacts"),
    "list_campaigns": ("bulkmail_kernel.campaigns.reports", "list_campaigns"),
    "live_workers": ("bulkmail_kernel.outbox.workers", "live_workers"),
    "list_segments": ("bulkmail_kernel.segments.saved", "list_segments"),
    "list_suppressions": ("bulkmail_kernel.campaigns.reports", "list_suppressions"),
    "list_templates": ("bulkmail_kernel.compose.templates", "list_templates"),
    "load_segment": ("bulkmail_kernel.segments.saved", "load_segment"),
    "load_template": ("bulkmail_kernel.compose.templates", "load_template"),
    "open_database": ("bulkmail_kernel.db", "open_database"),
    "outbox_monitor": ("bulkmail_kernel.widgets.monitor", "outbox_monitor"),
    "parse_bounce": ("bulkmail_kernel.deliverability.bounces", "parse_bounce"),
    "pause": ("bulkmail_kernel.campaigns.campaigns", "pause"),
    "plan_overlap": ("bulkmail_kernel.campaigns.plan_views", "plan_overlap"),
    "plan_per_hour": ("bulkmail_kernel.campaigns.plan_views", "plan_per_hour"),
    "plot_plan": ("bulkmail_kernel.campaigns.plan_views", "plot_plan"),
    "plot_timeline": ("bulkmail_kernel.campaigns.reports", "plot_timeline"),
    "poll_delivery_reports": ("bulkmail_kernel.providers.eurosms", "poll_delivery_reports"),
    "preview": ("bulkmail_kernel.widgets.preview", "preview"),
    "preview_warnings": ("bulkmail_kernel.compose.checks", "preview_warnings"),
    "process_mailbox": ("bulkmail_kernel.deliverability.mailbox", "process_mailbox"),
    "provider_status": ("bulkmail_kernel.campaigns.reports", "provider_status"),
    "queue": ("bulkmail_kernel.outbox.queue", "queue"),
    "register": ("bulkmail_kernel.campaigns.registration", "register"),
    "remove_from_queue": ("bulkmail_kernel.outbox.queue", "remove_from_queue"),
    "rename_segment": ("bulkmail_kernel.segments.saved", "rename_segment"),
    "render": ("bulkmail_kernel.compose.render", "render"),
    "requeue": ("bulkmail_kernel.outbox.queue", "requeue"),
    "resume": ("bulkmail_kernel.campaigns.campaigns", "resume"),
    "run_worker": ("bulkmail_kernel.campaigns.worker", "run_worker"),
    "save_segment": ("bulkmail_kernel.segments.saved", "save_segment"),
    "schedule": ("bulkmail_kernel.campaigns.campaigns", "schedule"),
    "set_send_window": ("bulkmail_kernel.campaigns.campaigns", "set_send_window"),
    "segment_builder": ("bulkmail_kernel.widgets.segments", "segment_builder"),
    "segment_recipients": ("bulkmail_kernel.segments.saved", "segment_recipients"),
    "send": ("bulkmail_kernel.engine.loop", "send"),
    "set_campaign_cap": ("bulkmail_kernel.campaigns.caps", "set_campaign_cap"),
    "set_frequency_cap": ("bulkmail_kernel.campaigns.caps", "set_frequency_cap"),
    "send_in_background": ("bulkmail_kernel.campaigns.background", "send_in_background"),
    "send_plan": ("bulkmail_kernel.campaigns.plan", "send_plan"),
    "send_campaign_via_sendpulse": (
        "bulkmail_kernel.providers.sendpulse",
        "send_campaign_via_sendpulse",
    ),
    "set_domain_limits": ("bulkmail_kernel.providers.limits", "set_domain_limits"),
    "sendpulse_report": ("bulkmail_kernel.providers.sendpulse", "sendpulse_report"),
    "sign_message": ("bulkmail_kernel.deliverability.dkim", "sign_message"),
    "skipped": ("bulkmail_kernel.campaigns.registration", "skipped"),
    "sms_cost": ("bulkmail_kernel.compose.sms", "sms_cost"),
    "sms_fit_preview": ("bulkmail_kernel.compose.sms", "sms_fit_preview"),
    "sms_segments": ("bulkmail_kernel.compose.sms", "sms_segments"),
    "start_sink": ("bulkmail_kernel.servers.sink", "start_sink"),
    "suggest_account_settings": (
        "bulkmail_kernel.providers.autoconfig",
        "suggest_account_settings",
    ),
    "template_from_html": ("bulkmail_kernel.compose.templates", "template_from_html"),
    "test_send": ("bulkmail_kernel.campaigns.samples", "test_send"),
    "campaign_preview": ("bulkmail_kernel.campaigns.preview", "campaign_preview"),
    "check_campaign": ("bulkmail_kernel.campaigns.preview", "check_campaign"),
    "CampaignPreview": ("bulkmail_kernel.campaigns.preview", "CampaignPreview"),
    "unknown_messages": ("bulkmail_kernel.outbox.queue", "unknown_messages"),
    "unsubscribe": ("bulkmail_kernel.outbox.suppressions", "unsubscribe"),
    "unsubscribe_address": ("bulkmail_kernel.outbox.suppressions", "unsubscribe_address"),
    "create_roles": ("bulkmail_kernel.db.roles", "create_roles"),
    "allow_contact_export": ("bulkmail_kernel.segments.audit", "allow_contact_export"),
    "export_log": ("bulkmail_kernel.segments.audit", "export_log"),
    "frame_csv": ("bulkmail_kernel.segments.export", "frame_csv"),
    "ContactAccessError": ("bulkmail_kernel.exceptions", "ContactAccessError"),
    "create_ab_test": ("bulkmail_kernel.campaigns.abtests", "create_ab_test"),
    "pick_winner": ("bulkmail_kernel.campaigns.abtests", "pick_winner"),
    "ab_test_step": ("bulkmail_kernel.campaigns.abtests", "ab_test_step"),
    "ab_report": ("bulkmail_kernel.campaigns.abreport", "ab_report"),
    "ab_test_widget": ("bulkmail_kernel.widgets.abtest", "ab_test_widget"),
    "non_clickers": ("bulkmail_kernel.campaigns.resend", "non_clickers"),
    "resend_to_non_clickers": ("bulkmail_kernel.campaigns.resend", "resend_to_non_clickers"),
    # Consent records and click tracking (docs/tracking.md).
    "record_consent": ("bulkmail_kernel.contacts.consents", "record_consent"),
    "consents": ("bulkmail_kernel.contacts.consents", "consents"),
    "set_tracking": ("bulkmail_kernel.campaigns.tracking", "set_tracking"),
    "clicks": ("bulkmail_kernel.campaigns.tracking", "clicks"),
}

__all__ = [
    "BackgroundSend",
    "BulkmailError",
    "CampaignInfo",
    "CampaignPreview",
    "CampaignProgress",
    "ConfigError",
    "ContactAccessError",
    "ContactData",
    "ContactError",
    "ContactImportError",
    "Database",
    "EuroSmsError",
    "ExportError",
    "FilterError",
    "FilterSpec",
    "ForgetResult",
    "FrequencyCap",
    "ImportResult",
    "ProviderError",
    "RecipientsSkippedWarning",
    "RenderedMessage",
    "RetryPolicy",
    "Rule",
    "RuleGroup",
    "SegmentError",
    "SendError",
    "SendPulseError",
    "SendPulseResult",
    "SendSummary",
    "SenderInfo",
    "Sink",
    "Template",
    "TemplateError",
    "ab_report",
    "ab_test_step",
    "ab_test_widget",
    "add_eurosms_account",
    "add_sender_account",
    "add_sendpulse_account",
    "allow_contact_export",
    "build_mime",
    "campaign_failures",
    "campaign_preview",
    "campaign_progress",
    "campaign_report",
    "campaign_timeline",
    "cancel",
    "check_account",
    "check_campaign",
    "check_template",
    "classify_message",
    "clicks",
    "connect",
    "consents",
    "contacts_frame",
    "create_ab_test",
    "create_campaign",
    "create_roles",
    "create_unsubscribe_app",
    "delete_segment",
    "domain_group",
    "domain_limits",
    "explain",
    "explain_segment",
    "export_contact_data",
    "export_log",
    "export_recipients",
    "filter_recipients",
    "fit_to_gsm7",
    "forget_contact",
    "frame_csv",
    "frequency_cap",
    "generate_demo",
    "generate_dkim_key",
    "get_campaign",
    "history",
    "identity_merges",
    "import_contacts",
    "list_campaigns",
    "list_segments",
    "list_suppressions",
    "list_templates",
    "live_workers",
    "load_segment",
    "load_template",
    "non_clickers",
    "open_database",
    "outbox_monitor",
    "parse_bounce",
    "pause",
    "pick_winner",
    "plan_overlap",
    "plan_per_hour",
    "plot_plan",
    "plot_timeline",
    "poll_delivery_reports",
    "preview",
    "preview_warnings",
    "process_mailbox",
    "provider_status",
    "queue",
    "readable",
    # Consent records and click tracking (docs/tracking.md).
    "record_consent",
    "register",
    "remove_from_queue",
    "rename_segment",
    "render",
    "requeue",
    "resend_to_non_clickers",
    "resume",
    "run_worker",
    "save_segment",
    "schedule",
    "segment_builder",
    "segment_recipients",
    "send",
    "send_campaign_via_sendpulse",
    "send_in_background",
    "send_plan",
    "sendpulse_report",
    "set_campaign_cap",
    "set_domain_limits",
    "set_frequency_cap",
    "set_send_window",
    "set_tracking",
    "sign_message",
    "skipped",
    "sms_cost",
    "sms_fit_preview",
    "sms_segments",
    "start_sink",
    "suggest_account_settings",
    "template_from_html",
    "test_send",
    "unknown_messages",
    "unsubscribe",
    "unsubscribe_address",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its stage on first use and keep it here."""
    try:
        module, attr = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'bulkmail_kernel' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""The segment builder: rules in AND/OR/NOT groups, a live count, saved groups, export.

Thin by design: the rule rows (:mod:`.rule_rows`) and four settings map to a
``FilterSpec`` (``builder.spec``) and back (``builder.set_spec``, also how a saved group
is opened); counting is ``filter_recipients``, saving ``save_segment``, exporting
``export_recipients``. Refreshes are debounced with a ``threading.Timer`` so typing does
not refilter a million rows per keystroke; ``apply_now()`` flushes synchronously (tests,
benchmarks, and anyone who wants the result immediately). Everything the panel says —
an empty segment, a taken name, a rule that does not fit its field — is said in the
panel, in the analyst's words.
"""

from __future__ import annotations

import html
import logging
import threading
from datetime import date, datetime
from typing import Any

import ipywidgets as w
import pandas as pd

from bulkmail_kernel.db import Database
from bulkmail_kernel.display import display_cells
from bulkmail_kernel.exceptions import BulkmailError, FilterError
from bulkmail_kernel.segments.explain import explain_segment
from bulkmail_kernel.segments.export import export_recipients, is_contact_column
from bulkmail_kernel.segments.filters import filter_recipients
from bulkmail_kernel.segments.labels import readable_name
from bulkmail_kernel.segments.rules import RuleGroup
from bulkmail_kernel.segments.saved import list_segments, load_segment, save_segment
from bulkmail_kernel.segments.spec import FilterSpec
from bulkmail_kernel.widgets.rule_rows import Fields, GroupBox

log = logging.getLogger("bulkmail")

_TRI = {"any": None, "yes": True, "no": False}
_TRI_BACK = {v: k for k, v in _TRI.items()}
_WIDE = {"description_width": "initial"}
_AUTO = w.Layout(width="auto")
#: Sample columns shown first when the frame has them.
SAMPLE_COLUMNS = ("first_name", "last_name", "address", "language", "registered_at")
_SAMPLE_ROWS = 10


class SegmentBuilder:
    """An ipywidgets panel that builds a ``FilterSpec`` from rules and shows who it selects."""

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        db: Database | None = None,
        url: str | None = None,
        today: date | datetime | str | None = None,
        debounce_s: float = 0.3,
    ) -> None:
        self.frame = frame
        self.db = db
        self.url = url
        self.today = today
        self.debounce_s = debounce_s
        self.result: pd.DataFrame = frame.iloc[:0]
        self.last_error: BulkmailError | None = None
        self.unfinished = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.RLock()
        self._quiet = False
        self.fields = Fields(frame)

        self.rules = GroupBox(self.fields, self._changed)
        self.mailing_allowed = w.Dropdown(
            options=[("opted in", "yes"), ("any", "any"), ("not opted in", "no")],
            value="yes",
            description="Mailing allowed",
            style=_WIDE,
            layout=_AUTO,
        )
        self.has_valid_address = w.Dropdown(
            options=[("any", "any"), ("valid only", "yes"), ("broken only", "no")],
            value="any",
            description="Address",
            style=_WIDE,
            layout=_AUTO,
        )
        self.exclude_suppressed = w.Checkbox(
            value=True, description="Leave out suppressed addresses", indent=False, layout=_AUTO
        )
        self.one_per_contact = w.Checkbox(
            value=True, description="One address per person and channel", indent=False, layout=_AUTO
        )

        self.count = w.HTML()
        columns = [str(c) for c in frame.columns]
        self.sample_columns = w.TagsInput(
            value=[c for c in SAMPLE_COLUMNS if c in columns] or columns[:5],
            allowed_tags=columns,
            allow_duplicates=False,
            layout=_AUTO,
        )
        self.sample_columns.observe(lambda _c: self._show_sample(), names="value")
        self.sample = w.HTML()
        self.status = w.HTML()

        self.why = w.Combobox(
            description="Why is",
            placeholder="a person in the sample, or any address or customer number",
            ensure_option=False,
            style=_WIDE,
            layout=w.Layout(width="520px"),
        )
        self.why_button = w.Button(description="in or out?", icon="question", layout=_AUTO)
        self.why_button.on_click(lambda _b: self.explain())
        self.why.observe(self._why_picked, names="value")
        self.why_result = w.HTML()

        self.saved = w.Dropdown(description="Saved groups", style=_WIDE, layout=_AUTO)
        self.open_button = w.Button(description="Open", icon="folder-open", layout=_AUTO)
        self.open_button.on_click(lambda _b: self.open_saved())
        self.segment_name = w.Text(description="Name", placeholder="e.g. Spring vaccination")
        self.segment_description = w.Text(description="Note", placeholder="optional")
        self.replace = w.Checkbox(description="Overwrite if it exists", indent=False, layout=_AUTO)
        self.save_button = w.Button(description="Save group", icon="save", layout=_AUTO)
        self.save_button.on_click(lambda _b: self.save())

        self.export_path = w.Text(
            description="File", placeholder="recipients.xlsx (goes to data/exports)", style=_WIDE
        )
        self.export_columns = w.TagsInput(
            value=[c for c in columns if not is_contact_column(c) and c in SAMPLE_COLUMNS]
            or [c for c in columns if not is_contact_column(c)],
            allowed_tags=columns,
            allow_duplicates=False,
            layout=_AUTO,
        )
        self.include_contact_data = w.Checkbox(
            description="Include e-mails and phones", indent=False, layout=_AUTO
        )
        self.export_button = w.Button(description="Export", icon="download", layout=_AUTO)
        self.export_button.on_click(lambda _b: self.export())

        for control in (
            self.mailing_allowed,
            self.has_valid_address,
            self.exclude_suppressed,
            self.one_per_contact,
        ):
            control.observe(self._changed, names="value")

        def heading(text: str) -> w.HTML:
            return w.HTML(f"<b>{html.escape(text)}</b>")

        settings = w.HBox(
            [self.mailing_allowed, self.has_valid_address, self.exclude_suppressed,
             self.one_per_contact],
            layout=w.Layout(flex_flow="row wrap"),
        )  # fmt: skip
        saved_box = w.HBox([self.saved, self.open_button], layout=w.Layout(flex_flow="row wrap"))
        save_box = w.HBox(
            [self.segment_name, self.segment_description, self.replace, self.save_button],
            layout=w.Layout(flex_flow="row wrap"),
        )
        export_box = w.VBox(
            [
                w.HBox([self.export_path, self.include_contact_data, self.export_button],
                       layout=w.Layout(flex_flow="row wrap")),
                w.HBox([w.Label("Columns"), self.export_columns]),
            ]
        )  # fmt: skip
        self.widget = w.VBox(
            [
                heading("Who"),
                self.rules.box,
                settings,
                self.count,
                w.HBox([w.Label("Sample columns"), self.sample_columns]),
                self.sample,
                w.HBox([self.why, self.why_button]),
                self.why_result,
                heading("Mailing groups"),
                saved_box,
                save_box,
                heading("Export"),
                export_box,
                self.status,
            ],
            layout=w.Layout(max_width="100%", overflow="hidden"),
        )
        for widget, name in (
            (self.widget, "bm-segments"),
            (self.count, "bm-segment-count"),
            (self.sample, "bm-segment-sample"),
            (self.status, "bm-segment-status"),
            (self.saved, "bm-saved-groups"),
            (self.open_button, "bm-open-group"),
            (self.save_button, "bm-save-group"),
            (self.why, "bm-why"),
            (self.why_result, "bm-why-result"),
        ):
            widget.add_class(name)
        self.refresh_saved()
        self.apply_now()

    # ------------------------------------------------------------- controls <-> spec

    @property
    def spec(self) -> FilterSpec:
        """Return the FilterSpec the controls show (rows not filled in yet are left out)."""
        group, self.unfinished = self.rules.group()
        return FilterSpec(
            mailing_allowed=_TRI[self.mailing_allowed.value],
            has_valid_address=_TRI[self.has_valid_address.value],
            exclude_suppressed=self.exclude_suppressed.value,
            one_per_contact=self.one_per_contact.value,
            rules=group,
        )

    def set_spec(self, spec: FilterSpec) -> None:
        """Show ``spec`` (any FilterSpec: its column conditions become rules), then refresh."""
        as_rules = spec.as_rules()
        with self._lock:
            self._quiet = True
            try:
                rules = as_rules.rules
                self.rules.set(rules if isinstance(rules, RuleGroup) else RuleGroup())
                self.mailing_allowed.value = _TRI_BACK[spec.mailing_allowed]
                self.has_valid_address.value = _TRI_BACK[spec.has_valid_address]
                self.exclude_suppressed.value = spec.exclude_suppressed
                self.one_per_contact.value = spec.one_per_contact
            finally:
                self._quiet = False
        self.apply_now()

    # ------------------------------------------------------------- refresh

    def _changed(self, _change: Any = None) -> None:
        if self._quiet:
            return
        if self.debounce_s <= 0:
            self.apply_now()
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce_s, self.apply_now)
            self._timer.daemon = True
            self._timer.start()

    @property
    def pending(self) -> bool:
        """Return True while a debounced refresh is waiting to run."""
        timer = self._timer
        return timer is not None and timer.is_alive()

    def apply_now(self) -> pd.DataFrame:
        """Refilter now (cancelling any pending refresh) and return the recipients."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            try:
                self.result = filter_recipients(self.frame, self.spec, today=self.today)
            except BulkmailError as exc:
                self._error(exc)
                return self.result
            self.last_error = None
            self.count.value = self._count_text()
            self._show_sample()
            self.status.value = ""
            return self.result

    def _count_text(self) -> str:
        n = len(self.result)
        text = f"<b>{n:,}</b> recipients (of {len(self.frame):,} addresses)"
        if n == 0:
            text += (
                " — <span style='color:#a60'>no one matches: loosen a rule, or match "
                "<i>any</i> instead of <i>all</i></span>"
            )
        if self.unfinished:
            rows = "rule is" if self.unfinished == 1 else "rules are"
            text += f" · {self.unfinished} {rows} not filled in yet and left out"
        return text

    def _show_sample(self) -> None:
        head = self.result.head(_SAMPLE_ROWS)
        self.why.options = [str(a) for a in head["address"]] if "address" in head else []
        columns = [c for c in self.sample_columns.value if c in self.frame.columns]
        if self.result.empty or not columns:
            self.sample.value = ""
            return
        part = display_cells(self.result[columns].head(_SAMPLE_ROWS))
        part.columns = [readable_name(c) for c in columns]
        table = part.to_html(index=False, escape=True, na_rep="", border=0)
        more = len(self.result) - len(part)
        note = f"<small>first {len(part)} of {len(self.result):,}</small>" if more > 0 else ""
        self.sample.value = f"<div style='overflow-x:auto;max-width:100%'>{table}</div>{note}"

    def _error(self, exc: BulkmailError) -> None:
        self.last_error = exc
        self.status.value = _red(str(exc))
        log.info("segment builder: %s", exc)

    def _ok(self, message: str) -> None:
        self.last_error = None
        self.status.value = f"<span style='color:#070'>{html.escape(message, quote=False)}</span>"

    # ------------------------------------------------------------- why in or out

    def _why_picked(self, change: Any) -> None:
        # Picking a person of the sample is the click; typed text waits for the button.
        if change["new"] in self.why.options:
            self.explain(change["new"])

    def explain(self, contact: int | str | None = None) -> pd.DataFrame | None:
        """Show (and return) why ``contact`` (default: the one in the box) is in or out."""
        who = contact if contact is not None else self.why.value.strip()
        if who == "":
            self.why_result.value = "<i>Pick a person of the sample or type an address.</i>"
            return None
        try:
            table = explain_segment(self.frame, self.spec, who, today=self.today)
        except BulkmailError as exc:
            self.why_result.value = _red(str(exc))
            return None
        shown = display_cells(table)
        shown["holds"] = ["✔" if h else "✘" for h in table["holds"]]
        verdict = html.escape(table.attrs["verdict"])
        body = shown.to_html(index=False, escape=True, border=0)
        self.why_result.value = (
            f"<b>{verdict}</b><div style='overflow-x:auto;max-width:100%'>{body}</div>"
        )
        return table

    # ------------------------------------------------------------- saved groups

    def refresh_saved(self) -> None:
        """Fill the saved-groups menu from the database."""
        try:
            saved = list_segments(db=self.db, url=self.url)
        except BulkmailError as exc:
            self.saved.options = []
            self._error(exc)
            return
        self.saved.options = [
            (f"{row.name} ({row.members:,})", row.name) for row in saved.itertuples()
        ]
        self.saved.value = None

    def open_saved(self, name: str | None = None) -> None:
        """Open saved group ``name`` (default: the one chosen in the menu) in the builder."""
        name = name or self.saved.value
        if not name:
            self._error(FilterError("Choose a saved group in the menu first, then press Open."))
            return
        try:
            loaded = load_segment(name, db=self.db, url=self.url)
            self.set_spec(loaded.spec)
        except BulkmailError as exc:
            self._error(exc)
            return
        self.segment_name.value = name
        self.segment_description.value = loaded.info.description or ""
        self._ok(
            f"opened {name!r}: {len(self.result):,} recipients today "
            f"({loaded.info.members:,} when it was saved)"
        )

    # ------------------------------------------------------------- buttons

    def save(self) -> None:
        """Save the current rules as the mailing group named in the name box."""
        name = self.segment_name.value.strip()
        recipients = self.apply_now()
        if self.last_error is not None:
            return
        if not name:
            self._error(FilterError("Give the group a name first, then press Save group."))
            return
        if recipients.empty:
            self._error(
                FilterError(
                    "No one matches these rules, so there is no group to save: loosen a rule."
                )
            )
            return
        try:
            info = save_segment(
                name,
                self.spec,
                self.frame,
                db=self.db,
                url=self.url,
                description=self.segment_description.value,
                today=self.today,
                replace=self.replace.value,
            )
        except BulkmailError as exc:
            if exc.fields.get("exists"):
                exc = FilterError(
                    f"A group named {name!r} already exists: tick “Overwrite if it exists” "
                    "to replace it, or choose another name."
                )
            self._error(exc)
            return
        self.refresh_saved()
        self._ok(f"saved group {info.name!r} with {info.members:,} recipients")

    def export(self) -> None:
        """Export the current recipients to the file in the export box."""
        recipients = self.apply_now()
        if self.last_error is not None:
            return
        if recipients.empty:
            self._error(FilterError("No one matches these rules, so there is nothing to export."))
            return
        try:
            path = export_recipients(
                recipients,
                self.export_path.value.strip() or None,
                list(self.export_columns.value),
                include_contact_data=self.include_contact_data.value,
            )
        except BulkmailError as exc:
            self._error(exc)
            return
        self._ok(f"exported {len(recipients):,} recipients to {path}")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def _red(text: str) -> str:
    return f"<span style='color:#b00'>{html.escape(text, quote=False)}</span>"


def segment_builder(
    frame: pd.DataFrame,
    *,
    db: Database | None = None,
    url: str | None = None,
    today: date | datetime | str | None = None,
    debounce_s: float = 0.3,
) -> SegmentBuilder:
    """Return a segment builder panel over ``frame``; display it in a notebook cell."""
    return SegmentBuilder(frame, db=db, url=url, today=today, debounce_s=debounce_s)

"""The segment builder: ipywidgets controls over ``FilterSpec``, live count, save and export.

Thin by design: the controls only map to a ``FilterSpec`` (``builder.spec``) and back
(``builder.set_spec``); counting is ``filter_recipients``, saving is ``save_segment``,
exporting is ``export_recipients``. Refreshes are debounced with a ``threading.Timer``
so typing does not refilter a million rows per keystroke; ``apply_now()`` flushes
synchronously (tests, benchmarks, and anyone who wants the result immediately).
"""

from __future__ import annotations

import html
import logging
import threading
from datetime import date, datetime
from typing import Any

import ipywidgets as w
import pandas as pd

from bulkmail_kernel import config
from bulkmail_kernel.db import Database
from bulkmail_kernel.exceptions import BulkmailError, FilterError
from bulkmail_kernel.segments.export import export_recipients, is_contact_column
from bulkmail_kernel.segments.filters import BUILTIN_COLUMNS, filter_recipients
from bulkmail_kernel.segments.saved import save_segment
from bulkmail_kernel.segments.spec import GENDERS, KINDS, AttributeCondition, FilterSpec

log = logging.getLogger("bulkmail")

_TRI = {"any": None, "yes": True, "no": False}
_TRI_BACK = {v: k for k, v in _TRI.items()}
_WIDE = {"description_width": "initial"}


def _choices(frame: pd.DataFrame, column: str, extra: tuple[str, ...] = ()) -> list[str]:
    out: list[str] = list(extra)
    if column in frame.columns:
        col = frame[column]
        values = (
            col.dtype.categories if isinstance(col.dtype, pd.CategoricalDtype) else col.unique()
        )
        out += [str(v) for v in values if pd.notna(v) and str(v) not in out]
    return out


def _number(text: str, where: str) -> int | float | None:
    text = text.strip().replace(",", ".")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise FilterError(f"{where}: {text!r} is not a number", field="attributes") from None


class _AttributeControl:
    """The control of one custom attribute: a multi-select of values, or a min/max range."""

    def __init__(self, frame: pd.DataFrame, name: str) -> None:
        self.name = name
        dtype = frame[name].dtype
        self.is_date = pd.api.types.is_datetime64_any_dtype(dtype)
        self.is_bool = pd.api.types.is_bool_dtype(dtype)
        self.is_number = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(
            dtype
        )
        self.values: w.SelectMultiple | None = None
        self.low: w.Text | w.DatePicker | None = None
        self.high: w.Text | w.DatePicker | None = None
        if self.is_date:
            self.low = w.DatePicker(description=f"{name} from", style=_WIDE)
            self.high = w.DatePicker(description="to", style=_WIDE)
            self.box: w.Widget = w.HBox([self.low, self.high])
        elif self.is_number:
            self.low = w.Text(description=f"{name} min", placeholder="any", style=_WIDE)
            self.high = w.Text(description="max", placeholder="any", style=_WIDE)
            self.box = w.HBox([self.low, self.high])
        else:
            options = ["True", "False"] if self.is_bool else _choices(frame, name)
            self.values = w.SelectMultiple(options=options, description=name, rows=4, style=_WIDE)
            self.box = self.values

    @property
    def widgets(self) -> list[w.Widget]:
        """Return the value-holding widgets (to observe)."""
        return [x for x in (self.values, self.low, self.high) if x is not None]

    def condition(self) -> Any:
        """Return the condition in FilterSpec's mapping form, or None for no condition."""
        if self.values is not None:
            if self.is_bool:  # the options are the texts "True"/"False"
                return [v == "True" for v in self.values.value] or None
            return list(self.values.value) or None
        assert self.low is not None
        assert self.high is not None
        if self.is_date:
            low, high = self.low.value, self.high.value
        else:
            low = _number(self.low.value, f"attributes.{self.name} min")
            high = _number(self.high.value, f"attributes.{self.name} max")
        if low is None and high is None:
            return None
        return {"min": low, "max": high}

    def set(self, cond: AttributeCondition | None) -> None:
        """Show ``cond`` (None clears the control)."""
        if self.values is not None:
            if cond is not None and cond.values is None:
                raise FilterError(
                    f"attributes.{self.name} is text: the builder shows lists of values, "
                    "not ranges",
                    field="attributes",
                )
            values = [str(v) for v in cond.values] if cond and cond.values else []
            missing = [v for v in values if v not in self.values.options]
            if missing:
                self.values.options = list(self.values.options) + missing
            self.values.value = tuple(values)
            return
        assert self.low is not None
        assert self.high is not None
        if cond is not None and cond.values is not None:
            raise FilterError(
                f"attributes.{self.name}: the builder shows a min/max range here, not a list "
                "of values; use filter_recipients() for that spec",
                field="attributes",
            )
        low = cond.low if cond else None
        high = cond.high if cond else None
        if self.is_date:
            self.low.value, self.high.value = low, high
        else:
            self.low.value = "" if low is None else str(low)
            self.high.value = "" if high is None else str(high)


class SegmentBuilder:
    """An ipywidgets panel that builds a ``FilterSpec`` and shows who it selects."""

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
        self._timer: threading.Timer | None = None
        self._lock = threading.RLock()
        self._quiet = False

        self.within_on = w.Checkbox(description="registered within the last", indent=False)
        self.within_days = w.BoundedIntText(value=30, min=0, max=100_000, description="days")
        self.older_on = w.Checkbox(description="registered more than", indent=False)
        self.older_days = w.BoundedIntText(value=365, min=0, max=100_000, description="days ago")
        self.registered_from = w.DatePicker(description="registered from", style=_WIDE)
        self.registered_to = w.DatePicker(description="to", style=_WIDE)
        self.mailing_allowed = w.Dropdown(
            options=[("opted-in only", "yes"), ("any", "any"), ("not opted-in only", "no")],
            value="yes",
            description="opt-in",
        )
        self.channel = w.Dropdown(
            options=[("any", "any"), ("e-mail", "email"), ("phone / SMS", "phone")],
            value="any",
            description="channel",
        )
        self.point_type = w.SelectMultiple(
            options=_choices(frame, "point_type"), description="point type", rows=4
        )
        self.kind = w.SelectMultiple(options=list(KINDS), description="kind", rows=2)
        self.language = w.SelectMultiple(
            options=_choices(frame, "language", config.SUPPORTED_LANGUAGES),
            description="language",
            rows=4,
        )
        self.gender = w.SelectMultiple(options=list(GENDERS), description="gender", rows=2)
        self.has_valid_address = w.Dropdown(
            options=[("any", "any"), ("valid only", "yes"), ("invalid only", "no")],
            value="any",
            description="address",
        )
        self.exclude_suppressed = w.Checkbox(value=True, description="exclude suppressed")
        self.one_per_contact = w.Checkbox(value=True, description="one per contact and channel")
        self.attributes = {
            str(name): _AttributeControl(frame, str(name))
            for name in frame.columns
            if name not in BUILTIN_COLUMNS
        }

        self.count = w.HTML()
        self.sample = w.HTML()
        self.status = w.HTML()

        self.segment_name = w.Text(description="segment name", style=_WIDE)
        self.segment_description = w.Text(description="description", style=_WIDE)
        self.replace = w.Checkbox(description="replace if it exists", value=False)
        self.save_button = w.Button(description="Save segment", icon="save")
        self.save_button.on_click(lambda _b: self.save())

        self.export_path = w.Text(
            description="export to", placeholder="recipients.xlsx (in data/exports)"
        )
        self.export_columns = w.SelectMultiple(
            options=[str(c) for c in frame.columns],
            value=tuple(str(c) for c in frame.columns if not is_contact_column(c)),
            description="columns",
            rows=8,
        )
        self.include_contact_data = w.Checkbox(description="include contact data", value=False)
        self.export_button = w.Button(description="Export", icon="download")
        self.export_button.on_click(lambda _b: self.export())

        for control in self._controls():
            control.observe(self._changed, names="value")

        filters = w.VBox(
            [
                w.HBox([self.within_on, self.within_days]),
                w.HBox([self.older_on, self.older_days]),
                w.HBox([self.registered_from, self.registered_to]),
                w.HBox([self.mailing_allowed, self.channel, self.has_valid_address]),
                w.HBox([self.point_type, self.kind, self.language, self.gender]),
                *[a.box for a in self.attributes.values()],
                w.HBox([self.exclude_suppressed, self.one_per_contact]),
            ]
        )
        save_box = w.HBox(
            [self.segment_name, self.segment_description, self.replace, self.save_button]
        )
        export_box = w.HBox(
            [self.export_path, self.export_columns, self.include_contact_data, self.export_button]
        )
        self.widget = w.VBox([filters, self.count, self.sample, save_box, export_box, self.status])
        self.apply_now()

    # ------------------------------------------------------------- controls <-> spec

    def _controls(self) -> list[w.Widget]:
        fixed = [
            self.within_on, self.within_days, self.older_on, self.older_days,
            self.registered_from, self.registered_to, self.mailing_allowed, self.channel,
            self.point_type, self.kind, self.language, self.gender, self.has_valid_address,
            self.exclude_suppressed, self.one_per_contact,
        ]  # fmt: skip
        return fixed + [x for a in self.attributes.values() for x in a.widgets]

    @property
    def spec(self) -> FilterSpec:
        """Return the FilterSpec the controls show."""
        attributes = {}
        for name, control in self.attributes.items():
            cond = control.condition()
            if cond is not None:
                attributes[name] = cond
        between = (self.registered_from.value, self.registered_to.value)
        return FilterSpec(
            registered_within_days=self.within_days.value if self.within_on.value else None,
            registered_more_than_days_ago=self.older_days.value if self.older_on.value else None,
            registered_between=between,
            mailing_allowed=_TRI[self.mailing_allowed.value],
            channel=None if self.channel.value == "any" else self.channel.value,
            point_type=tuple(self.point_type.value),
            kind=tuple(self.kind.value),
            language=tuple(self.language.value),
            gender=tuple(self.gender.value),
            attributes=attributes,
            has_valid_address=_TRI[self.has_valid_address.value],
            exclude_suppressed=self.exclude_suppressed.value,
            one_per_contact=self.one_per_contact.value,
        )

    def set_spec(self, spec: FilterSpec) -> None:
        """Set every control to show ``spec``, then refresh."""
        unknown = [c.name for c in spec.attributes if c.name not in self.attributes]  # type: ignore[union-attr]
        if unknown:
            raise FilterError(
                f"attributes {unknown} are not in this frame; available: "
                f"{', '.join(self.attributes) or '(none)'}",
                field="attributes",
            )
        with self._lock:
            self._quiet = True
            try:
                self.within_on.value = spec.registered_within_days is not None
                if spec.registered_within_days is not None:
                    self.within_days.value = spec.registered_within_days
                self.older_on.value = spec.registered_more_than_days_ago is not None
                if spec.registered_more_than_days_ago is not None:
                    self.older_days.value = spec.registered_more_than_days_ago
                low, high = spec.registered_between or (None, None)
                self.registered_from.value, self.registered_to.value = low, high
                self.mailing_allowed.value = _TRI_BACK[spec.mailing_allowed]
                self.channel.value = spec.channel or "any"
                for control, values in (
                    (self.point_type, spec.point_type),
                    (self.kind, spec.kind),
                    (self.language, spec.language),
                    (self.gender, spec.gender),
                ):
                    missing = [v for v in values or () if v not in control.options]
                    if missing:
                        control.options = list(control.options) + missing
                    control.value = tuple(values or ())
                for name, control in self.attributes.items():
                    control.set(spec.attribute(name))
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
            self.count.value = (
                f"<b>{len(self.result):,}</b> recipients (of {len(self.frame):,} contact points)"
            )
            self.sample.value = self.result.head(10).to_html(index=False, escape=True, na_rep="")
            self.status.value = ""
            return self.result

    def _error(self, exc: BulkmailError) -> None:
        self.last_error = exc
        self.status.value = f"<span style='color:#b00'>{html.escape(str(exc), quote=False)}</span>"
        log.info("segment builder: %s", exc)

    def _ok(self, message: str) -> None:
        self.last_error = None
        self.status.value = f"<span style='color:#070'>{html.escape(message, quote=False)}</span>"

    # ------------------------------------------------------------- buttons

    def save(self) -> None:
        """Save the current spec as the segment named in the name box."""
        try:
            info = save_segment(
                self.segment_name.value,
                self.spec,
                self.frame,
                db=self.db,
                url=self.url,
                description=self.segment_description.value,
                today=self.today,
                replace=self.replace.value,
            )
        except BulkmailError as exc:
            self._error(exc)
            return
        self._ok(f"saved segment {info.name!r} with {info.members:,} members")

    def export(self) -> None:
        """Export the current recipients to the path in the export box."""
        try:
            recipients = self.apply_now()
            if self.last_error is not None:
                return
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

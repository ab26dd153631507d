"""The rule rows of the segment builder: field · operator · value, in AND/OR/NOT groups.

``Fields`` describes the frame's columns as an analyst reads them (a label, a kind, the
choices of a category column). ``RuleRow`` is one rule whose operator menu follows its
field's kind and whose value control follows its operator: a date picker for dates, a
searchable tag picker (type to filter the choices) for "is one of", a day count for "in
the last … days". ``GroupBox`` holds rows and nested groups under a "match all / any /
none / not all" menu. Each maps to a ``Rule``/``RuleGroup`` and back; a row that is not
filled in yet (no value chosen) is left out and counted, so editing never shows an error
for a half-typed rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import ipywidgets as w
import pandas as pd

from bulkmail_kernel.exceptions import FilterError
from bulkmail_kernel.segments.labels import FIELD_LABELS, HIDDEN_FIELDS, VALUE_LABELS, readable_name
from bulkmail_kernel.segments.rule_masks import column_kind
from bulkmail_kernel.segments.rules import OPERATORS, Kind, Rule, RuleGroup, operators_for

#: Beyond this many choices, "is" gets a searchable text box instead of a menu.
_MENU_MAX = 25
_MATCH = {
    "all": ("all", False),
    "any": ("any", False),
    "none": ("any", True),
    "not_all": ("all", True),
}
_MATCH_OPTIONS = [
    ("all of these rules (AND)", "all"),
    ("any of these rules (OR)", "any"),
    ("none of these rules (NOT)", "none"),
    ("not all of these rules", "not_all"),
]
_AUTO = w.Layout(width="auto")


@dataclass(frozen=True)
class Field:
    """One column as the builder offers it."""

    column: str
    label: str
    kind: Kind
    choices: tuple[str, ...] = ()


class Fields:
    """The frame's columns a rule can name, with labels, kinds and choices."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.by_column: dict[str, Field] = {}
        for name in frame.columns:
            column = str(name)
            if column in HIDDEN_FIELDS:
                continue
            col = frame[name]
            kind = column_kind(col)
            choices: tuple[str, ...] = ()
            if kind == "choice":
                choices = tuple(str(c) for c in col.cat.categories)
            self.by_column[column] = Field(column, readable_name(column), kind, choices)

    def options(self) -> list[tuple[str, str]]:
        """Return the field menu: built-in fields first, then custom ones, as (label, column)."""
        builtin = [f for c, f in self.by_column.items() if c in FIELD_LABELS]
        custom = [f for c, f in self.by_column.items() if c not in FIELD_LABELS]
        return [(f.label, f.column) for f in builtin] + [
            (f"{f.label} (custom field)", f.column) for f in custom
        ]

    def first(self) -> str:
        """Return the column a new row starts with."""
        return "registered_at" if "registered_at" in self.by_column else next(iter(self.by_column))


def _number(text: str, where: str) -> int | float | None:
    text = text.strip().replace(",", ".").replace(" ", "")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise FilterError(f"{where}: {text!r} is not a number", field="rules") from None


class RuleRow:
    """One rule: a field menu, an operator menu that fits the field, and a value control."""

    def __init__(
        self, fields: Fields, on_change: Callable[[], None], on_remove: Callable[[RuleRow], None]
    ) -> None:
        self.fields = fields
        self._on_change = on_change
        self.field = w.Dropdown(options=fields.options(), value=fields.first(), layout=_AUTO)
        self.op = w.Dropdown(layout=_AUTO)
        self.value_box = w.HBox()
        self.inputs: list[w.Widget] = []
        self._building = False
        self._built_for: tuple[str, str] | None = None
        self.remove = w.Button(
            description="", icon="times", tooltip="Remove this rule", layout=w.Layout(width="32px")
        )
        self.remove.on_click(lambda _b: on_remove(self))
        self.box = w.HBox([self.field, self.op, self.value_box, self.remove])
        self.box.add_class("bm-rule")
        self._fill_ops()
        self.field.observe(self._field_changed, names="value")
        self.op.observe(self._op_changed, names="value")

    # ------------------------------------------------------------- building

    @property
    def spec_field(self) -> Field:
        """Return the chosen field."""
        return self.fields.by_column[self.field.value]

    def _fill_ops(self) -> None:
        field = self.spec_field
        names = operators_for(field.kind)
        default = "one_of" if field.kind == "choice" else "in_last_days"
        # Replacing the options moves the value; build the value control once, at the end,
        # so the browser never types into a control that is about to be replaced.
        with self._quietly():
            self.op.options = [(OPERATORS[n].label, n) for n in names]
            self.op.value = default if default in names else names[0]
        self._fill_value()

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        """Change the menus without their observers rebuilding the row meanwhile."""
        self._building = True
        try:
            yield
        finally:
            self._building = False

    def _field_changed(self, _change: Any) -> None:
        if self._building:
            return
        self._fill_ops()
        self._on_change()

    def _op_changed(self, _change: Any) -> None:
        if self._building:
            return
        self._fill_value()
        self._on_change()

    def _fill_value(self) -> None:
        field = self.spec_field
        if self._built_for == (field.column, self.op.value):
            # An echo of a value the row already shows (the browser sends the menus back
            # after their options change): keep the control, and what is typed into it.
            return
        self._built_for = (field.column, self.op.value)
        shape = OPERATORS[self.op.value].shape if self.op.value else "none"
        inputs: list[w.Widget] = []
        label: list[w.Widget] = []
        if shape == "days":
            inputs = [w.BoundedIntText(value=30, min=0, max=100_000, layout=w.Layout(width="90px"))]
            label = [w.Label("days")]
        elif shape == "pair":
            inputs = [self._single(field, "from"), self._single(field, "to")]
            label = [w.Label("(both included)")]
        elif shape == "many":
            inputs = [self._tags(field)]
        elif shape == "one":
            inputs = [self._one(field)]
        self.inputs = inputs
        if shape == "pair":
            self.value_box.children = [inputs[0], w.Label("and"), inputs[1], *label]
        else:
            self.value_box.children = [*inputs, *label]
        for control in inputs:
            control.observe(lambda _c: self._on_change(), names="value")

    def _single(self, field: Field, placeholder: str) -> w.Widget:
        if field.kind == "date":
            return w.DatePicker(layout=w.Layout(width="150px"))
        return w.Text(placeholder=placeholder, layout=w.Layout(width="110px"))

    def _tags(self, field: Field) -> w.TagsInput:
        # Type to search the choices; Enter or a click adds one. Free text where any value goes.
        return w.TagsInput(
            value=[],
            allowed_tags=list(field.choices),
            allow_duplicates=False,
            layout=w.Layout(min_width="240px"),
        )

    def _one(self, field: Field) -> w.Widget:
        if field.kind == "date":
            return w.DatePicker(layout=w.Layout(width="150px"))
        if field.kind == "bool":
            return w.Dropdown(options=[("yes", True), ("no", False)], value=True, layout=_AUTO)
        if field.kind == "choice" and self.op.value in ("is", "is_not"):
            if len(field.choices) <= _MENU_MAX:
                labels = VALUE_LABELS.get(field.column, {})
                options = [(labels.get(c, c), c) for c in field.choices]
                return w.Dropdown(options=options, value=None, layout=_AUTO)
            return w.Combobox(
                options=list(field.choices), ensure_option=True, placeholder="type to search"
            )
        return w.Text(placeholder="value", layout=w.Layout(width="180px"))

    # ------------------------------------------------------------- rule <-> controls

    def rule(self) -> Rule | None:
        """Return the rule the row shows, or None while its value is not filled in."""
        field = self.spec_field
        op = self.op.value
        shape = OPERATORS[op].shape
        where = f"rule '{field.label} {OPERATORS[op].label}'"
        if shape == "none":
            return Rule(field.column, op)
        values = [c.value for c in self.inputs]
        if shape == "days":
            return None if values[0] is None else Rule(field.column, op, int(values[0]))
        if shape == "many":
            tags = [str(v) for v in values[0]]
            if not tags:
                return None
            if field.kind == "number":
                return Rule(field.column, op, [_number(t, where) for t in tags])
            return Rule(field.column, op, tags)
        if shape == "pair":
            low, high = (self._read(field, v, where) for v in values)
            return None if low is None and high is None else Rule(field.column, op, (low, high))
        value = self._read(field, values[0], where)
        return None if value is None else Rule(field.column, op, value)

    @staticmethod
    def _read(field: Field, raw: Any, where: str) -> Any:
        if isinstance(raw, str):
            if field.kind == "number":
                return _number(raw, where)
            return raw if raw.strip() else None
        return raw

    def set(self, rule: Rule) -> None:
        """Show ``rule`` in the row (without telling the builder: it refreshes once after)."""
        if rule.field not in self.fields.by_column:
            raise FilterError(
                f"rule {rule.describe()!r}: these contacts have no field {rule.field!r}",
                field="rules",
                column=rule.field,
            )
        with self._quietly():
            self.field.value = rule.field
        self._fill_ops()
        names = [n for _label, n in self.op.options]
        if rule.op not in names:
            raise FilterError(
                f"rule {rule.describe()!r}: {self.spec_field.label!r} has no operator "
                f"{OPERATORS[rule.op].label!r}",
                field="rules",
                column=rule.field,
            )
        with self._quietly():
            self.op.value = rule.op
        self._fill_value()
        shape = OPERATORS[rule.op].shape
        if shape == "days":
            self.inputs[0].value = rule.value
        elif shape == "many":
            control = self.inputs[0]
            texts = [_text(v) for v in rule.value]
            missing = [t for t in texts if control.allowed_tags and t not in control.allowed_tags]
            if missing:
                control.allowed_tags = list(control.allowed_tags) + missing
            control.value = texts
        elif shape == "pair":
            for control, value in zip(self.inputs, rule.value, strict=True):
                _show(control, value)
        elif shape == "one":
            control = self.inputs[0]
            if isinstance(control, w.Dropdown) and rule.value not in [
                v for _l, v in control.options
            ]:
                control.options = [*control.options, (str(rule.value), rule.value)]
            _show(control, rule.value)


def _text(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _show(control: w.Widget, value: Any) -> None:
    if isinstance(control, w.Text | w.Combobox):
        control.value = "" if value is None else _text(value)
    else:
        control.value = value


class GroupBox:
    """Rules and nested groups under one "match all / any / none / not all" menu."""

    def __init__(
        self,
        fields: Fields,
        on_change: Callable[[], None],
        *,
        depth: int = 0,
        on_remove: Callable[[GroupBox], None] | None = None,
    ) -> None:
        self.fields = fields
        self._on_change = on_change
        self.depth = depth
        self.items: list[RuleRow | GroupBox] = []
        self.match = w.Dropdown(options=_MATCH_OPTIONS, value="all", layout=_AUTO)
        self.match.observe(lambda _c: on_change(), names="value")
        self.match.add_class("bm-rules-match")
        self.add_rule = w.Button(description="Add rule", icon="plus", layout=_AUTO)
        self.add_rule.on_click(lambda _b: self.add())
        self.add_rule.add_class("bm-add-rule")
        self.add_group = w.Button(description="Add group", icon="plus-square", layout=_AUTO)
        self.add_group.on_click(lambda _b: self.add_subgroup())
        header: list[w.Widget] = [w.Label("Match" if depth == 0 else "Group: match"), self.match]
        if on_remove is not None:
            remove = w.Button(
                icon="times", tooltip="Remove this group", layout=w.Layout(width="32px")
            )
            remove.on_click(lambda _b: on_remove(self))
            header.append(remove)
        self.rows = w.VBox()
        buttons = [self.add_rule] + ([self.add_group] if depth < 2 else [])
        style = {"border_left": "3px solid #9ab", "padding": "0 0 0 8px"} if depth else {}
        self.box = w.VBox([w.HBox(header), self.rows, w.HBox(buttons)], layout=w.Layout(**style))
        self.box.add_class("bm-rules")

    def _show_items(self) -> None:
        self.rows.children = [item.box for item in self.items]

    def add(self, rule: Rule | None = None) -> RuleRow:
        """Add a rule row (showing ``rule`` if given) and return it."""
        row = RuleRow(self.fields, self._on_change, self._remove)
        if rule is not None:
            row.set(rule)
        self.items.append(row)
        self._show_items()
        if rule is None:
            self._on_change()
        return row

    def add_subgroup(self, group: RuleGroup | None = None) -> GroupBox:
        """Add a nested group (showing ``group`` if given) and return it."""
        sub = GroupBox(self.fields, self._on_change, depth=self.depth + 1, on_remove=self._remove)
        self.items.append(sub)
        if group is not None:
            sub.set(group)
        else:
            sub.add()
        self._show_items()
        return sub

    def _remove(self, item: RuleRow | GroupBox) -> None:
        self.items.remove(item)
        self._show_items()
        self._on_change()

    def group(self) -> tuple[RuleGroup, int]:
        """Return the group the controls show and how many rows are not filled in yet."""
        match, negate = _MATCH[self.match.value]
        rules: list[Rule | RuleGroup] = []
        unfinished = 0
        for item in self.items:
            if isinstance(item, GroupBox):
                sub, open_rows = item.group()
                rules.append(sub)
                unfinished += open_rows
            else:
                rule = item.rule()
                if rule is None:
                    unfinished += 1
                else:
                    rules.append(rule)
        return RuleGroup(match, tuple(rules), negate=negate), unfinished

    def set(self, group: RuleGroup) -> None:
        """Replace the rows with ``group``'s rules and subgroups."""
        self.items = []
        key = {v: k for k, v in _MATCH.items()}[(group.match, group.negate)]
        self.match.value = key
        for item in group.rules:
            if isinstance(item, RuleGroup):
                if self.depth >= 2:
                    raise FilterError(
                        "rules nest deeper than the builder shows (three levels); "
                        "use filter_recipients() with this spec",
                        field="rules",
                    )
                self.add_subgroup(item)
            else:
                self.add(item)
        self._show_items()

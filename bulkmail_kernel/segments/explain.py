"""Why a person is in a segment or not: every rule and setting judged on their addresses.

``explain_segment(frame, spec, contact)`` finds the contact's rows in the recipient frame
(by contact id, customer number or address), judges every rule of the spec — the older
fields too, through ``FilterSpec.as_rules()`` — and every setting (opt-in, suppression,
address validity, one address per person) on each of those rows, and says whether each
address is selected. Only the contact's own rows are filtered, so it answers at once on
a million-row frame.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from bulkmail_kernel.contacts.values import email_identity
from bulkmail_kernel.display import display_cells
from bulkmail_kernel.exceptions import FilterError
from bulkmail_kernel.segments.filters import _zone, filter_recipients, resolve_today
from bulkmail_kernel.segments.labels import readable_name
from bulkmail_kernel.segments.rule_masks import group_mask, rule_mask
from bulkmail_kernel.segments.rules import OPERATORS, Rule, RuleGroup
from bulkmail_kernel.segments.spec import FilterSpec

#: Columns of ``explain_segment``'s frame.
EXPLAIN_COLUMNS = ["address", "check", "holds", "their value"]
_MATCH_WORDS = {
    ("all", False): "all of",
    ("any", False): "any of",
    ("all", True): "not all of",
    ("any", True): "none of",
}


def contact_rows(frame: pd.DataFrame, contact: int | str) -> np.ndarray:
    """Return the positions of ``contact``'s rows: a contact id, a customer number or an address.

    Raises:
        FilterError: nobody in the frame is known by ``contact``.

    """
    if isinstance(contact, bool) or not isinstance(contact, int | str | np.integer):
        raise FilterError(
            f"explain: {contact!r} is not a contact id, customer number or address",
            field="contact",
        )
    if isinstance(contact, int | np.integer):
        hits = frame["contact_id"].to_numpy() == int(contact)
    else:
        text = contact.strip()
        hits = (frame["external_id"] == text).to_numpy(dtype=bool, na_value=False, copy=True)
        if "@" in text:
            try:
                wanted = email_identity(text)
            except ValueError:
                wanted = text.casefold()
            folded = frame["address"].str.casefold()
            candidates = np.flatnonzero(
                folded.str.endswith(wanted.rsplit("@", 1)[-1]).to_numpy(dtype=bool, na_value=False)
            )
            for pos in candidates:
                try:
                    same = email_identity(str(frame["address"].iat[pos])) == wanted
                except ValueError:
                    same = False
                hits[pos] |= same
        else:
            hits |= (frame["address"] == text).to_numpy(dtype=bool, na_value=False)
            if text.isdigit():  # typed on a command line: a contact id
                hits |= frame["contact_id"].to_numpy() == int(text)
        ids = frame["contact_id"].to_numpy()[hits]
        hits = np.isin(frame["contact_id"].to_numpy(), np.unique(ids)) if ids.size else hits
    rows = np.flatnonzero(hits)
    if rows.size == 0:
        raise FilterError(
            f"explain: nobody in these contacts is {contact!r} (give a contact id, a customer "
            "number or an e-mail address or phone number as stored)",
            field="contact",
        )
    return rows


def explain_segment(
    frame: pd.DataFrame,
    spec: FilterSpec,
    contact: int | str,
    *,
    today: date | datetime | str | None = None,
    tz: str | None = None,
) -> pd.DataFrame:
    """Return, for each of ``contact``'s addresses, every rule and setting and whether it holds.

    The frame's ``attrs["selected"]`` lists the selected addresses; ``attrs["verdict"]``
    says it in one line ("in: jana@x.sk" or "out: rule 'language is one of sk' fails").
    """
    rows = contact_rows(frame, contact)
    zone = _zone(tz)
    day = resolve_today(today, tz)
    as_rules = spec.as_rules()
    group = as_rules.rules if isinstance(as_rules.rules, RuleGroup) else RuleGroup()
    part = _with_rule_fields(frame.iloc[rows], group)
    selected = set(
        filter_recipients(part, spec, today=today, tz=tz)["contact_point_id"].astype(int)
    )
    out: list[dict[str, Any]] = []
    reasons: list[str] = []
    for i in range(len(part)):
        one = part.iloc[[i]]
        address = str(one["address"].iat[0])
        pid = int(one["contact_point_id"].iat[0])
        checks = _rule_checks(one, group, zone, day, depth=0) + _setting_checks(
            one, spec, pid in selected, part
        )
        for check, holds, value in checks:
            out.append({"address": address, "check": check, "holds": holds, "their value": value})
        failing = [c.strip() for c, h, _v in checks if not h and not c.strip().endswith("rules")]
        if pid not in selected and failing:
            reasons.append(f"{address}: {failing[0]}")
    result = pd.DataFrame(out, columns=EXPLAIN_COLUMNS)
    chosen = [str(a) for a in part.loc[part["contact_point_id"].isin(selected), "address"]]
    result.attrs["selected"] = chosen
    result.attrs["verdict"] = (
        f"in: {', '.join(chosen)}" if chosen else "out: " + ("; ".join(reasons) or "no address")
    )
    return result


def _with_rule_fields(part: pd.DataFrame, group: RuleGroup) -> pd.DataFrame:
    """Add the fields the rules name that these rows lack, empty, typed as the rule reads them.

    A frame read for one person (``contacts_frame(contact_ids=...)``) has only the custom
    attributes that person has; a rule on another one is judged on an empty value.
    """
    missing = {r.field: r for r in group.walk() if r.field not in part.columns}
    if not missing:
        return part
    part = part.copy()
    for name, rule in missing.items():
        kinds = OPERATORS[rule.op].kinds
        if "text" in kinds or "choice" in kinds:
            part[name] = pd.array([None] * len(part), dtype="str")
        elif "number" in kinds:
            part[name] = np.full(len(part), np.nan)
        elif "date" in kinds:
            part[name] = pd.Series(pd.NaT, index=part.index, dtype="datetime64[us, UTC]")
        else:
            part[name] = pd.array([None] * len(part), dtype="boolean")
    return part


def _rule_checks(
    one: pd.DataFrame, group: RuleGroup, zone: Any, day: date, *, depth: int
) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    if group.empty:
        return checks
    indent = "    " * depth
    holds = bool(group_mask(one, group, zone=zone, today=day)[0])
    words = _MATCH_WORDS[(group.match, group.negate)]
    checks.append((f"{indent}{words} these rules", holds, ""))
    for item in group.rules:
        if isinstance(item, RuleGroup):
            checks += _rule_checks(one, item, zone, day, depth=depth + 1)
            continue
        mask = rule_mask(one, item, zone=zone, today=day)
        checks.append((f"{indent}    rule '{_words(item)}'", bool(mask[0]), _value(one, item)))
    return checks


def _setting_checks(
    one: pd.DataFrame, spec: FilterSpec, selected: bool, part: pd.DataFrame
) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    allowed = bool(one["mailing_allowed"].iat[0])
    if spec.mailing_allowed is not None:
        want = "mailing allowed" if spec.mailing_allowed else "mailing not allowed"
        checks.append((want, allowed == spec.mailing_allowed, "yes" if allowed else "no"))
    if spec.exclude_suppressed:
        suppressed = bool(one["suppressed"].iat[0])
        checks.append(("not suppressed", not suppressed, "suppressed" if suppressed else "no"))
    if spec.has_valid_address is not None:
        # Judged by the same masks as the filter: the address alone, every rule off.
        alone = FilterSpec(
            mailing_allowed=None,
            exclude_suppressed=False,
            one_per_contact=False,
            has_valid_address=spec.has_valid_address,
        )
        ok = len(filter_recipients(one, alone)) == 1
        checks.append(("valid address" if spec.has_valid_address else "broken address", ok, ""))
    if spec.one_per_contact:
        others = part[part["channel"] == one["channel"].iat[0]]
        note = "the preferred or first of this person's addresses that pass"
        if len(others) > 1:
            checks.append(("one address per person and channel", selected, note))
    return checks


def _words(rule: Rule) -> str:
    return rule.describe().replace(rule.field, readable_name(rule.field), 1)


def _value(one: pd.DataFrame, rule: Rule) -> str:
    if rule.field not in one.columns:
        return ""
    cell = display_cells(one[[rule.field]]).iat[0, 0]
    return str(cell) if cell != "" else "(empty)"

"""Contacts: import from CSV, Excel, XML or SQL, validate, de-duplicate, and read back.

``import_contacts`` reads a source (see :mod:`bulkmail_kernel.contacts.sources`), maps its
columns to contact fields, validates every row, merges duplicates, and upserts the
result in one transaction. ``contacts_frame`` returns every contact point with its
contact as one pandas DataFrame, the table segments and campaigns start from.
"""

from __future__ import annotations

import html
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import email_validator
import numpy as np
import pandas as pd
import phonenumbers
import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload
from tqdm.auto import tqdm

from bulkmail_kernel import config
from bulkmail_kernel.contacts.sources import (
    SourceRow,
    SourceTable,
    excel_serial_to_date,
    fold,
    read_source,
    snake_case,
)
from bulkmail_kernel.db import (
    Contact,
    ContactPoint,
    Database,
    Event,
    ImportRun,
    open_database,
    utcnow,
)
from bulkmail_kernel.exceptions import ContactImportError

log = logging.getLogger("bulkmail")

# --------------------------------------------------------------------------- vocabulary

#: Source column names recognised for each field, compared case- and diacritics-insensitively
#: after turning them into snake_case ("E-mail" -> "e_mail", "Příjmení" -> "prijmeni").
FIELD_SYNONYMS: dict[str, tuple[str, ...]] = {
    "external_id": (
        "external_id",
        "id",
        "customer_id",
        "client_id",
        "customer_number",
        "client_number",
        "cislo_zakaznika",
        "cislo_klienta",
        "zakaznik_id",
        "klient_id",
        "patient_id",
        "номер_клиента",
        "id_клиента",
        "код_клиента",
    ),
    "first_name": (
        "first_name",
        "firstname",
        "given_name",
        "forename",
        "meno",
        "krstne_meno",
        "jmeno",
        "krestni_jmeno",
        "имя",
    ),
    "last_name": (
        "last_name",
        "lastname",
        "surname",
        "family_name",
        "priezvisko",
        "prijmeni",
        "фамилия",
    ),
    "patronymic": ("patronymic", "middle_name", "otcestvo", "отчество"),
    "gender": ("gender", "sex", "pohlavie", "pohlavi", "пол"),
    "language": ("language", "lang", "jazyk", "язык"),
    "registered_at": (
        "registered",
        "registered_at",
        "registration_date",
        "date_registered",
        "signup_date",
        "datum_registracie",
        "datum_registrace",
        "registracia",
        "registrace",
        "дата_регистрации",
        "зарегистрирован",
    ),
    "email": (
        "email",
        "e_mail",
        "mail",
        "email_address",
        "e_mail_address",
        "emailova_adresa",
        "e_mailova_adresa",
        "почта",
        "эл_почта",
        "электронная_почта",
        "e_mail_адрес",
    ),
    "phone": (
        "phone",
        "phone_number",
        "telephone",
        "tel",
        "mobile",
        "mobil",
        "telefon",
        "telefonne_cislo",
        "telefonni_cislo",
        "tel_cislo",
        "телефон",
        "мобильный",
        "моб_телефон",
    ),
    "work_email": (
        "work_email",
        "business_email",
        "pracovny_email",
        "pracovny_e_mail",
        "pracovni_email",
        "pracovni_e_mail",
        "рабочий_email",
        "рабочая_почта",
    ),
    "work_phone": (
        "work_phone",
        "business_phone",
        "pracovny_telefon",
        "pracovni_telefon",
        "рабочий_телефон",
    ),
    "mailing_allowed": (
        "mailing_allowed",
        "opt_in",
        "optin",
        "consent",
        "marketing_consent",
        "subscribed",
        "suhlas",
        "souhlas",
        "suhlas_so_zasielanim",
        "согласие",
        "согласие_на_рассылку",
    ),
    "email_kind": ("email_kind",),
    "phone_kind": ("phone_kind",),
    "email_type": ("email_type",),
    "phone_type": ("phone_type", "phone_label"),
    "work_email_type": ("work_email_type",),
    "work_phone_type": ("work_phone_type",),
    "email_allowed": ("email_allowed", "email_opt_in", "email_consent"),
    "phone_allowed": ("phone_allowed", "sms_allowed", "phone_opt_in", "sms_opt_in"),
    "work_email_allowed": ("work_email_allowed",),
    "work_phone_allowed": ("work_phone_allowed",),
}
FIELDS = tuple(FIELD_SYNONYMS)
_SYNONYM_TO_FIELD = {snake_case(s): f for f, names in FIELD_SYNONYMS.items() for s in names}

#: (value field, channel, kind or its field, type field, allowed field) per point column.
_POINT_SPECS = (
    ("email", "email", "email_kind", "email_type", "email_allowed"),
    ("phone", "phone", "phone_kind", "phone_type", "phone_allowed"),
    ("work_email", "email", "work", "work_email_type", "work_email_allowed"),
    ("work_phone", "phone", "work", "work_phone_type", "work_phone_allowed"),
)
_NAME_FIELDS = ("first_name", "last_name", "patronymic")

#: Columns of ``contacts_frame``; custom attribute names must not collide with these.
FRAME_COLUMNS = (
    "contact_point_id",
    "contact_id",
    "external_id",
    "first_name",
    "last_name",
    "patronymic",
    "gender",
    "language",
    "registered_at",
    "channel",
    "address",
    "point_type",
    "kind",
    "mailing_allowed",
    "is_preferred",
    "suppressed",
)

_YES = {"yes", "y", "true", "t", "1", "x", "ano", "a", "da", "да", "д", "ok", "+", "✓", "✔"}
_NO = {"no", "n", "false", "f", "0", "nie", "ne", "нет", "н", "-", "—"}
_GENDER = {
    "m": "m", "male": "m", "man": "m", "mr": "m", "muz": "m", "muzske": "m", "muzsky": "m",
    "м": "m", "муж": "m", "мужской": "m", "мужчина": "m",
    "f": "f", "female": "f", "woman": "f", "w": "f", "z": "f", "zena": "f", "zenske": "f",
    "zensky": "f", "ж": "f", "жен": "f", "женский": "f", "женщина": "f", "mrs": "f", "ms": "f",
}  # fmt: skip
_LANGUAGE = {
    "sk": "sk", "slovak": "sk", "slovencina": "sk", "slovensky": "sk", "slk": "sk",
    "cs": "cs", "cz": "cs", "czech": "cs", "cestina": "cs", "cesky": "cs", "ces": "cs",
    "ru": "ru", "russian": "ru", "rustina": "ru", "rusky": "ru", "русский": "ru", "rus": "ru",
    "en": "en", "english": "en", "anglictina": "en", "anglicky": "en", "eng": "en",
}  # fmt: skip
_KIND = {
    "personal": "personal", "private": "personal", "home": "personal", "osobny": "personal",
    "osobni": "personal", "sukromny": "personal", "soukromy": "personal", "личный": "personal",
    "work": "work", "business": "work", "office": "work", "job": "work", "pracovny": "work",
    "pracovni": "work", "firemny": "work", "firemni": "work", "рабочий": "work",
}  # fmt: skip

_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\u0085\u2028\u2029]+")
_DMY = re.compile(r"^(\d{1,2})\.\s*(\d{1,2})\.\s*(\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_PLAIN_NUMBER = re.compile(r"^-?(0|[1-9]\d{0,14})(\.\d+)?$")
_FORMULA_START = "=+-@"
_CLEANED = "removed control characters (line breaks and tabs became a space)"


# --------------------------------------------------------------------------- value cleaning


def clean_text(value: str) -> str:
    """Return ``value`` with line breaks and tabs as single spaces and control characters gone.

    Control (Cc), format (Cf: bidi overrides, zero-width marks), surrogate and
    private-use characters are dropped; runs of whitespace collapse to one space.
    """
    text = _LINE_BREAKS.sub(" ", value)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))
    return " ".join(text.split())


def _needs_cleaning(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in value) or bool(
        _LINE_BREAKS.search(value)
    )


def normalize_email(value: str) -> str:
    """Return the address as email-validator normalises it (no DNS); raise ValueError if invalid."""
    try:
        return email_validator.validate_email(value.strip(), check_deliverability=False).normalized
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"invalid e-mail address: {exc}") from exc


def normalize_phone(value: str, region: str | None = None) -> str:
    """Return the number in E.164 ("+421903123456"); raise ValueError if it is not valid.

    Numbers without a country code are read in ``region`` (default
    ``config.default_region()``); a bare run of digits that is not valid there is
    retried with a leading "+", because spreadsheets drop it.
    """
    region = (region or config.default_region()).upper()
    text = value.strip()
    candidates = [text]
    if text.isdigit():
        candidates.append("+" + text)
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    raise ValueError(f"invalid phone number for region {region}")


def parse_yes_no(value: Any) -> bool | None:
    """Return True/False for yes/no in English, Slovak, Czech or Russian; None when empty."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        if value in (0, 1):
            return bool(value)
        raise ValueError(f"cannot read {value!r} as yes or no")
    text = fold(str(value)).strip().rstrip(".")
    if not text:
        return None
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise ValueError(f"cannot read {value!r} as yes or no: write yes/no, áno/nie, ano/ne or да/нет")


def parse_date(value: Any) -> datetime | None:
    """Return an aware UTC datetime from ISO, d.m.yyyy, an Excel date or serial; None if empty.

    A date without a time zone is taken in ``config.local_timezone()``.
    """
    tz = ZoneInfo(config.local_timezone())
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not 1 <= value < 2958466:  # Excel serials run from 1900-01-01 to 9999-12-31
            raise ValueError(f"cannot read {value!r} as a date")
        dt = excel_serial_to_date(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        m = _DMY.match(text)
        try:
            if m:
                d, mo, y, hh, mm, ss = m.groups()
                dt = datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0))
            else:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(
                f"cannot read {text!r} as a date: write 2024-01-31 or 31.1.2024"
            ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(UTC)


def _lookup(table: Mapping[str, str], value: Any, what: str, hint: str) -> str | None:
    text = _cell_text(value)
    if not text:
        return None
    key = fold(text).strip().rstrip(".")
    if key in table:
        return table[key]
    raise ValueError(f"unknown {what} {text!r}: {hint}")


def _cell_text(value: Any) -> str:
    """Return a cell as text: integers without ".0", dates in ISO form, None as ""."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _attribute_value(value: Any, infer_numbers: bool) -> Any:
    """Return a JSON-ready attribute value, or None to leave the attribute unset."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return (
            value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
        )
    if isinstance(value, date):
        return value.isoformat()
    text = clean_text(str(value))
    if not text:
        return None
    # CSV cells are all text; "3" becomes a number but "00123" (a post code) stays text.
    if infer_numbers and _PLAIN_NUMBER.match(text):
        return float(text) if "." in text else int(text)
    return text


# --------------------------------------------------------------------------- result


REPORT_COLUMNS = ("row", "action", "column", "value", "reason")


@dataclass(frozen=True, eq=False)
class ImportResult:
    """What an import did: counts, whether it was committed, and a row-by-row report.

    ``report`` lists every rejected, merged or cleaned row with the row number a
    person sees in the source (spreadsheet row with the header as row 1, XML
    ``<contact>`` element number, SQL result row).
    """

    source: str
    rows: int
    inserted: int
    updated: int
    unchanged: int
    merged: int
    rejected: int
    committed: bool
    report: pd.DataFrame
    run_id: int | None = None
    encoding: str | None = None
    delimiter: str | None = None

    def summary(self) -> str:
        """Return a one-line summary of the counts."""
        state = "committed" if self.committed else "NOT committed"
        text = (
            f"{self.source}: {self.rows} rows, {self.inserted} inserted, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.merged} merged, {self.rejected} rejected; {state}"
        )
        if not self.committed and self.rejected:
            text += " (fix the rejected rows, or import again with on_error='skip')"
        return text

    def __repr__(self) -> str:
        lines = [f"ImportResult({self.summary()})"]
        if len(self.report):
            lines.append(self.report.to_string(index=False, max_rows=20, max_colwidth=60))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.committed else "#cf222e"
        head = f'<p style="color:{colour}"><b>{html.escape(self.summary())}</b></p>'
        if not len(self.report):
            return head
        return head + self.report.to_html(index=False, max_rows=200, escape=True)


class _Report:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str, str, str, str]] = []
        self.rejected: set[int] = set()
        self.merged: set[int] = set()

    def add(self, row: int, action: str, column: str, value: Any, reason: str) -> None:
        self.lines.append((row, action, column, _cell_text(value), reason))
        if action == "rejected":
            self.rejected.add(row)
        elif action == "merged":
            self.merged.add(row)

    def frame(self) -> pd.DataFrame:
        order = {"rejected": 0, "merged": 1, "cleaned": 2}
        lines = sorted(self.lines, key=lambda t: (t[0], order.get(t[1], 9)))
        df = pd.DataFrame(lines, columns=list(REPORT_COLUMNS))
        return df.astype({"row": "int64", "action": "str", "column": "str", "value": "str",
                          "reason": "str"})  # fmt: skip


# --------------------------------------------------------------------------- column plan


@dataclass(frozen=True)
class _Plan:
    """Which source column feeds which field, and which become custom attributes."""

    fields: dict[str, str]  # field -> source column
    attributes: dict[str, str]  # source column -> attribute name


def _plan_columns(table: SourceTable, mapping: Mapping[str, str | None] | None) -> _Plan:
    mapping = dict(mapping or {})
    by_folded = {snake_case(c): c for c in table.columns}
    explicit: dict[str, str | None] = {}
    for key, target in mapping.items():
        column = key if key in table.columns else by_folded.get(snake_case(key))
        if column is None:
            raise ContactImportError(
                f"{table.name}: mapping names column {key!r}, which is not in the source; "
                f"its columns are {table.columns}",
                source=table.name,
            )
        if target is not None and target not in FIELDS and not target.startswith("attributes."):
            raise ContactImportError(
                f"{table.name}: mapping sends {key!r} to unknown field {target!r}; use one of "
                f"{', '.join(FIELDS)}, 'attributes.<name>' or None to skip the column",
                source=table.name,
            )
        explicit[column] = target
    fields: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for position, column in enumerate(table.columns, start=1):
        if column in explicit:
            target = explicit[column]
            if target is None:
                continue
        elif table.kind == "xml" and column.startswith("attribute["):
            target = "attributes." + column[len("attribute[") : -1]
        else:
            target = _SYNONYM_TO_FIELD.get(snake_case(column))
        if target is None or target.startswith("attributes."):
            raw_name = target[len("attributes.") :] if target else column
            name = snake_case(raw_name) or f"column_{position}"
            if name in FRAME_COLUMNS or name in FIELDS or name == "attributes":
                name += "_attr"  # never shadow a built-in column of contacts_frame
            attributes[column] = name
            continue
        if target in fields:
            raise ContactImportError(
                f"{table.name}: columns {fields[target]!r} and {column!r} both look like "
                f"{target}; say which is which with mapping={{...}}",
                source=table.name,
            )
        fields[target] = column
    has_points = any(f in fields for f in ("email", "phone", "work_email", "work_phone"))
    if table.kind != "xml" and not has_points:
        raise ContactImportError(
            f"{table.name}: no e-mail or phone column found among {table.columns}; name one "
            "'email' or 'phone', or pass mapping={'Your column': 'email'}",
            source=table.name,
        )
    return _Plan(fields, attributes)


# --------------------------------------------------------------------------- validation


@dataclass
class _Point:
    channel: str
    normalized: str
    value: str
    kind: str
    type: str
    allowed: bool | None
    column: str


@dataclass
class _Candidate:
    row: int
    external_id: str | None
    fields: dict[str, Any]
    attributes: dict[str, Any]
    points: list[_Point]
    rows: list[int] = field(default_factory=list)
    contact_id: int | None = None

    def absorb(self, other: _Candidate) -> None:
        """Take the other row's values where this one has none, and its new points."""
        for key, value in other.fields.items():
            self.fields.setdefault(key, value)
        for key, value in other.attributes.items():
            self.attributes.setdefault(key, value)
        if self.external_id is None:
            self.external_id = other.external_id
        have = {(p.channel, p.normalized): p for p in self.points}
        for p in other.points:
            mine = have.get((p.channel, p.normalized))
            if mine is None:
                self.points.append(p)
                have[(p.channel, p.normalized)] = p
            elif mine.allowed is None:
                mine.allowed = p.allowed
        self.rows.append(other.row)


def _label(channel: str) -> str:
    return "e-mail" if channel == "email" else "phone"


def _validate_row(
    row: SourceRow, plan: _Plan, region: str, infer_numbers: bool, report: _Report
) -> _Candidate | None:
    cells = row.cells
    n = row.row

    def cell(field_name: str) -> tuple[str, Any] | None:
        column = plan.fields.get(field_name)
        return None if column is None else (column, cells.get(column))

    def reject(column: str, value: Any, reason: str) -> None:
        report.add(n, "rejected", column, value, reason)

    def clean(column: str, value: Any) -> str:
        text = _cell_text(value)
        if _needs_cleaning(text):
            report.add(n, "cleaned", column, text, _CLEANED)
        return clean_text(text)

    fields: dict[str, Any] = {}
    for name in _NAME_FIELDS:
        got = cell(name)
        if got is None:
            continue
        column, raw = got
        text = clean(column, raw)
        if text and text[0] in _FORMULA_START:
            reject(
                column,
                raw,
                f"starts with {text[0]!r} like a spreadsheet formula; remove "
                "the leading character if it really belongs to the name",
            )
        elif len(text) > 200:
            reject(column, raw, "longer than 200 characters")
        elif text:
            fields[name] = text
    external_id = None
    if (got := cell("external_id")) is not None:
        column, raw = got
        external_id = clean(column, raw) or None
        if external_id is not None and len(external_id) > 100:
            reject(column, raw, "external id longer than 100 characters")
    parsers = (
        ("gender", lambda v: _lookup(_GENDER, v, "gender", "use m or f, or leave it empty")),
        ("language", lambda v: _lookup(_LANGUAGE, v, "language", "use sk, cs, ru or en")),
        ("registered_at", parse_date),
    )
    for name, parse in parsers:
        if (got := cell(name)) is None:
            continue
        column, raw = got
        try:
            value = parse(raw)
        except ValueError as exc:
            reject(column, raw, str(exc))
            continue
        if value is not None:
            fields[name] = value

    shared_allowed: bool | None = None
    if (got := cell("mailing_allowed")) is not None:
        try:
            shared_allowed = parse_yes_no(got[1])
        except ValueError as exc:
            reject(got[0], got[1], str(exc))

    specs: list[tuple[str, str, Any, Any, Any, Any, str]] = []
    for value_field, channel, kind_field, type_field, allowed_field in _POINT_SPECS:
        if (got := cell(value_field)) is None:
            continue
        kind_cell = ("", "work") if kind_field == "work" else cell(kind_field)
        specs.append((got[0], channel, got[1], kind_cell, cell(type_field), cell(allowed_field),
                      value_field))  # fmt: skip
    for p in row.points:  # XML <email>/<phone> elements
        specs.append((p.channel, p.channel, p.value, ("kind", p.kind), ("type", p.type),
                      ("mailing-allowed", p.allowed), p.channel))  # fmt: skip

    points: list[_Point] = []
    for column, channel, raw, kind_cell, type_cell, allowed_cell, _ in specs:
        text = _cell_text(raw).strip()
        if not text:
            continue
        try:
            if channel == "email":
                normalized = normalize_email(text)
            elif isinstance(raw, int | float) and not isinstance(raw, bool):
                normalized = normalize_phone(_cell_text(raw), region)
            else:
                normalized = normalize_phone(text, region)
        except ValueError as exc:
            reject(column, raw, str(exc))
            continue
        kind = "personal"
        if kind_cell is not None:
            try:
                kind = _lookup(_KIND, kind_cell[1], "kind", "use personal or work") or "personal"
            except ValueError as exc:
                reject(kind_cell[0], kind_cell[1], str(exc))
        point_type = "main"
        if type_cell is not None and _cell_text(type_cell[1]).strip():
            point_type = snake_case(_cell_text(type_cell[1]))[:50] or "main"
        allowed = shared_allowed
        if allowed_cell is not None:
            try:
                own = parse_yes_no(allowed_cell[1])
            except ValueError as exc:
                reject(allowed_cell[0], allowed_cell[1], str(exc))
                own = None
            if own is not None:
                allowed = own
        if any(p.channel == channel and p.normalized == normalized for p in points):
            continue  # the same address twice in one row (email = work_email)
        points.append(_Point(channel, normalized, text, kind, point_type, allowed, column))

    attributes: dict[str, Any] = {}
    for column, name in plan.attributes.items():
        raw = cells.get(column)
        if isinstance(raw, str):
            clean(column, raw)
        value = _attribute_value(raw, infer_numbers)
        if value is not None:
            attributes[name] = value

    if n in report.rejected:
        return None
    if not points:
        reject("", "", "no e-mail address or phone number")
        return None
    return _Candidate(n, external_id, fields, attributes, points)


def _merge_within_source(candidates: list[_Candidate], report: _Report) -> list[_Candidate]:
    """Fold rows that share an external id, e-mail or phone into the first such row."""
    groups: list[_Candidate] = []
    by_ext: dict[str, _Candidate] = {}
    by_point: dict[tuple[str, str], _Candidate] = {}
    for cand in candidates:
        hits: list[tuple[_Candidate, str]] = []
        if cand.external_id is not None and cand.external_id in by_ext:
            hits.append((by_ext[cand.external_id], f"same external id {cand.external_id}"))
        for p in cand.points:
            if (g := by_point.get((p.channel, p.normalized))) is not None:
                hits.append((g, f"same {_label(p.channel)} {p.normalized}"))
        targets = list({id(g): g for g, _ in hits}.values())
        if len(targets) > 1:
            (g1, why1), (g2, why2) = hits[0], next(h for h in hits if h[0] is not hits[0][0])
            report.add(cand.row, "rejected", "", "",
                       f"conflict: {why1.removeprefix('same ')} is in row {g1.row} but "
                       f"{why2.removeprefix('same ')} is in row {g2.row}")  # fmt: skip
            continue
        if targets:
            g, why = hits[0]
            if cand.external_id and g.external_id and cand.external_id != g.external_id:
                report.add(cand.row, "rejected", "", cand.external_id,
                           f"conflict: {why.removeprefix('same ')} is already in row {g.row} "
                           f"with external id {g.external_id}")  # fmt: skip
                continue
            g.absorb(cand)
            report.add(cand.row, "merged", "", "", f"merged into row {g.row}: {why}")
        else:
            g = cand
            groups.append(g)
        if g.external_id is not None:
            by_ext.setdefault(g.external_id, g)
        for p in g.points:
            by_point.setdefault((p.channel, p.normalized), g)
    return groups


# --------------------------------------------------------------------------- database


def _chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _resolve_against_db(
    s: Session, groups: list[_Candidate], report: _Report
) -> dict[int, Contact]:
    """Attach each group to the existing contact it matches; reject conflicting ones."""
    ext_ids = sorted({g.external_id for g in groups if g.external_id is not None})
    by_ext: dict[str, int] = {}
    for chunk in _chunks(ext_ids):
        ext_stmt = sa.select(Contact.external_id, Contact.id).where(Contact.external_id.in_(chunk))
        by_ext.update({e: i for e, i in s.execute(ext_stmt) if e is not None})
    owner: dict[tuple[str, str], int] = {}
    for channel in ("email", "phone"):
        norms = sorted({p.normalized for g in groups for p in g.points if p.channel == channel})
        for chunk in _chunks(norms):
            # channel first, so the (channel, normalized) unique index serves the lookup.
            point_stmt = sa.select(ContactPoint.normalized, ContactPoint.contact_id).where(
                ContactPoint.channel == channel, ContactPoint.normalized.in_(chunk)
            )
            owner.update({(channel, nm): cid for nm, cid in s.execute(point_stmt)})
    matched_ids = sorted(set(by_ext.values()) | set(owner.values()))
    contacts: dict[int, Contact] = {}
    for chunk in _chunks(matched_ids):
        load = sa.select(Contact).where(Contact.id.in_(chunk)).options(selectinload(Contact.points))
        contacts.update({c.id: c for c in s.scalars(load)})

    claimed: dict[int, _Candidate] = {}
    for g in groups:
        hits: list[tuple[int, str]] = []
        if g.external_id is not None and g.external_id in by_ext:
            hits.append((by_ext[g.external_id], f"external id {g.external_id}"))
        for p in g.points:
            if (cid := owner.get((p.channel, p.normalized))) is not None:
                hits.append((cid, f"{_label(p.channel)} {p.normalized}"))
        ids = list(dict.fromkeys(cid for cid, _ in hits))
        reason = None
        if len(ids) > 1:
            (c1, w1), (c2, w2) = hits[0], next(h for h in hits if h[0] != hits[0][0])
            reason = (f"conflict: {w1} is contact {c1} in the database but {w2} is contact {c2}; "
                      "merge those contacts first or fix the row")  # fmt: skip
        elif ids:
            existing = contacts[ids[0]]
            if g.external_id and existing.external_id and existing.external_id != g.external_id:
                reason = (f"conflict: {hits[0][1]} belongs to contact {existing.id} with external "
                          f"id {existing.external_id} in the database")  # fmt: skip
        if reason is not None:
            report.add(g.row, "rejected", "", "", reason)
            for merged_row in g.rows:
                report.add(
                    merged_row, "rejected", "", "", f"merged into row {g.row}, which was rejected"
                )
            g.contact_id = -1
            continue
        if ids:
            g.contact_id = ids[0]
            if (first := claimed.get(ids[0])) is not None:
                first.absorb(g)
                first.rows.extend(g.rows)
                why = f"merged into row {first.row}: both are contact {ids[0]} in the database"
                report.add(g.row, "merged", "", "", why)
                g.contact_id = -2
            else:
                claimed[ids[0]] = g
    return contacts


def _insert_many(s: Session, groups: list[_Candidate], source: str, now: datetime) -> list[int]:
    """Insert new contacts and their points in bulk; return the new contact ids in order."""
    ids: list[int] = []
    for chunk in _chunks(groups, 2000):
        rows = [
            {
                "external_id": g.external_id,
                "first_name": g.fields.get("first_name", ""),
                "last_name": g.fields.get("last_name", ""),
                "patronymic": g.fields.get("patronymic", ""),
                "gender": g.fields.get("gender"),
                "language": g.fields.get("language", config.DEFAULT_LANGUAGE),
                # Without a registration date the import is the best we know.
                "registered_at": g.fields.get("registered_at", now),
                "attributes": dict(g.attributes),
                "source": source,
                "created_at": now,
                "updated_at": now,
            }
            for g in chunk
        ]
        # One INSERT ... RETURNING per chunk (insertmanyvalues), ids in parameter order.
        stmt = sa.insert(Contact).returning(Contact.id, sort_by_parameter_order=True)
        chunk_ids = list(s.scalars(stmt, rows))
        points: list[dict[str, Any]] = []
        for cid, g in zip(chunk_ids, chunk, strict=True):
            seen: set[tuple[str, str]] = set()
            for p in g.points:
                points.append(_point_row(p, source, cid, now, (p.channel, p.kind) not in seen))
                seen.add((p.channel, p.kind))
        s.execute(sa.insert(ContactPoint), points)
        ids.extend(chunk_ids)
    return ids


def _point_row(
    p: _Point, source: str, contact_id: int, now: datetime, preferred: bool
) -> dict[str, Any]:
    return {
        "contact_id": contact_id, "channel": p.channel, "value": p.value[:320],
        "normalized": p.normalized, "type": p.type, "kind": p.kind,
        "mailing_allowed": bool(p.allowed), "is_preferred": preferred, "soft_bounces": 0,
        "source": source, "created_at": now, "updated_at": now,
    }  # fmt: skip


def _new_point(p: _Point, source: str, *, preferred: bool) -> ContactPoint:
    return ContactPoint(
        channel=p.channel, value=p.value[:320], normalized=p.normalized, type=p.type,
        kind=p.kind, mailing_allowed=bool(p.allowed), is_preferred=preferred, source=source,
    )  # fmt: skip


def _update(contact: Contact, g: _Candidate, source: str) -> list[str]:
    """Apply the group's values to an existing contact; return the names of what changed."""
    changed: list[str] = []
    if g.external_id is not None and contact.external_id != g.external_id:
        contact.external_id = g.external_id
        changed.append("external_id")
    for name, value in g.fields.items():
        if getattr(contact, name) != value:
            setattr(contact, name, value)
            changed.append(name)
    attrs = dict(contact.attributes or {})
    for name, value in g.attributes.items():
        if attrs.get(name) != value:
            attrs[name] = value
            changed.append(name)
    if attrs != (contact.attributes or {}):
        contact.attributes = attrs  # a new dict: JSON columns do not track in-place edits
    existing = {(p.channel, p.normalized): p for p in contact.points}
    preferred = {(p.channel, p.kind) for p in contact.points if p.is_preferred}
    for p in g.points:
        old = existing.get((p.channel, p.normalized))
        if old is None:
            contact.points.append(
                _new_point(p, source, preferred=(p.channel, p.kind) not in preferred)
            )
            preferred.add((p.channel, p.kind))
            changed.append(f"{p.channel} {p.normalized} added")
            continue
        # Only what the source states overwrites: no consent column leaves consent alone.
        updates: dict[str, Any] = {"value": p.value[:320], "type": p.type, "kind": p.kind}
        if p.allowed is not None:
            updates["mailing_allowed"] = p.allowed
        for attr, value in updates.items():
            if getattr(old, attr) != value:
                setattr(old, attr, value)
                changed.append(f"{p.channel} {p.normalized} {attr}")
    return changed


# --------------------------------------------------------------------------- import


def import_contacts(
    source: str | Path | pd.DataFrame,
    *,
    db: Database | None = None,
    url: str | None = None,
    mapping: Mapping[str, str | None] | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    region: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    query: str | None = None,
    table: str | None = None,
    sheet: str | int | None = None,
    source_name: str | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import contacts from a file, another database or a DataFrame, all or nothing by default.

    Args:
        source: a .csv, .xlsx or .xml file (schema in docs/contacts-xml.md), a SQLAlchemy URL
            of another database (with ``table=`` or ``query=``), or a pandas DataFrame.
        db: the bulkmail database to import into (default: ``open_database(url)``).
        url: the bulkmail database URL when ``db`` is not given.
        mapping: ``{"Source column": "field"}`` for columns the built-in synonyms do not
            recognise; a field is one of ``FIELDS``, ``"attributes.<name>"``, or None to skip
            the column. Unmapped, unrecognised columns become custom attributes.
        encoding: CSV encoding; detected among utf-8, utf-8-sig, cp1250 and cp1251 if None.
        delimiter: CSV delimiter; sniffed among , ; TAB and | if None.
        region: region for phone numbers without a country code (default
            ``config.default_region()``, "SK").
        on_error: ``"raise"`` (default) imports nothing if any row is rejected and returns the
            report with ``committed=False``; ``"skip"`` imports the good rows.
        query: the SELECT to run when ``source`` is a database URL.
        table: the table to read when ``source`` is a database URL.
        sheet: the Excel sheet name or index (default: the first sheet).
        source_name: the name recorded on contacts, points and the import run.
        progress: show a progress bar while validating.

    Mailing is allowed only on explicit opt-in: a point whose row has no
    ``mailing_allowed``/``email_allowed``/``phone_allowed`` value gets False, and on
    re-import an absent value leaves the stored consent alone. Rows sharing an
    external id, e-mail or phone are one contact; existing contacts are matched the
    same way and updated only where a value differs, so re-importing a file changes
    nothing. A source that cannot be read at all raises ``ContactImportError``.

    """
    if on_error not in ("raise", "skip"):
        raise ContactImportError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    database = db or open_database(url)
    src = read_source(source, encoding=encoding, delimiter=delimiter, sheet=sheet, table=table,
                      query=query)  # fmt: skip
    name = source_name or src.name
    plan = _plan_columns(src, mapping)
    region = (region or config.default_region()).upper()
    report = _Report()
    for number, reason in src.broken:
        report.add(number, "rejected", "", "", reason)
    candidates = []
    for row in tqdm(src.rows, desc=f"checking {name}", disable=not progress, leave=False):
        cand = _validate_row(row, plan, region, src.kind == "csv", report)
        if cand is not None:
            candidates.append(cand)
    groups = _merge_within_source(candidates, report)
    n_rows = len(src.rows) + len(src.broken)
    inserted = updated = unchanged = 0
    committed = False
    with database.session() as s:
        run = ImportRun(source=name[:500], rows=n_rows)
        s.add(run)
        s.flush()
        contacts = _resolve_against_db(s, groups, report)
        if on_error == "skip" or not report.rejected:
            now = utcnow()
            events: list[tuple[int, str, _Candidate, list[str]]] = []
            new: list[_Candidate] = []
            for g in groups:
                if g.contact_id is not None and g.contact_id < 0:
                    continue  # rejected, or folded into another row matching the same contact
                if g.contact_id is None:
                    new.append(g)
                elif changed := _update(contacts[g.contact_id], g, name):
                    events.append((g.contact_id, "updated", g, changed))
                    updated += 1
                else:
                    unchanged += 1
            s.flush()
            new_ids = _insert_many(s, new, name, now)
            events.extend((cid, "imported", g, []) for cid, g in zip(new_ids, new, strict=True))
            inserted = len(new_ids)
            event_rows = [
                {
                    "kind": kind, "contact_id": cid, "detail": f"{name} row {g.row}",
                    "data": {"import_run_id": run.id, "rows": [g.row, *g.rows], "changed": changed},
                    "occurred_at": now,
                }
                for cid, kind, g, changed in sorted(events, key=lambda e: e[2].row)
            ]  # fmt: skip
            for chunk in _chunks(event_rows, 5000):
                s.execute(sa.insert(Event), chunk)
            committed = True
        run.inserted, run.updated = inserted, updated
        run.merged = len(report.merged - report.rejected)
        run.rejected = len(report.rejected)
        run.committed = committed
        run.finished_at = utcnow()
        run_id = run.id
    result = ImportResult(
        source=name, rows=n_rows, inserted=inserted, updated=updated, unchanged=unchanged,
        merged=len(report.merged - report.rejected), rejected=len(report.rejected),
        committed=committed, report=report.frame(), run_id=run_id, encoding=src.encoding,
        delimiter=src.delimiter,
    )  # fmt: skip
    log.info("import %s", result.summary())
    return result


# --------------------------------------------------------------------------- frame

_FRAME_SQL = """
SELECT p.id, p.contact_id, c.external_id, c.first_name, c.last_name, c.patronymic,
       c.gender, c.language, c.registered_at, p.channel, p.normalized, p.type, p.kind,
       p.mailing_allowed, p.is_preferred,
       CASE WHEN s.id IS NULL THEN 0 ELSE 1 END, c.attributes
FROM contact_points p
JOIN contacts c ON c.id = p.contact_id
LEFT JOIN suppressions s ON s.channel = p.channel AND s.normalized = p.normalized
ORDER BY p.id
"""


def contacts_frame(db: Database | None = None, *, url: str | None = None) -> pd.DataFrame:
    """Return one row per contact point with its contact's fields and custom attributes."""
    database = db or open_database(url)
    raw = database.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(_FRAME_SQL)
        records = cur.fetchall()
        cur.close()
    finally:
        raw.close()
    # One C-level transpose into object columns; each is then given its dtype on purpose.
    table = np.empty((len(records), 17), dtype=object)
    if records:
        table[:] = records
    cols = [table[:, i] for i in range(17)]
    out = pd.DataFrame(
        {
            "contact_point_id": pd.array(cols[0], dtype="int64"),
            "contact_id": pd.array(cols[1], dtype="int64"),
            "external_id": pd.array(cols[2], dtype="str"),
            "first_name": pd.array(cols[3], dtype="str"),
            "last_name": pd.array(cols[4], dtype="str"),
            "patronymic": pd.array(cols[5], dtype="str"),
            "gender": pd.Categorical(cols[6], categories=["m", "f"]),
            "language": pd.Categorical(cols[7], categories=list(config.SUPPORTED_LANGUAGES)),
            "registered_at": _utc_datetimes(cols[8]),
            "channel": pd.Categorical(cols[9], categories=["email", "phone"]),
            "address": pd.array(cols[10], dtype="str"),
            "point_type": pd.Categorical(cols[11]),
            "kind": pd.Categorical(cols[12], categories=["personal", "work"]),
            "mailing_allowed": pd.array(cols[13], dtype="bool"),
            "is_preferred": pd.array(cols[14], dtype="bool"),
            "suppressed": pd.array(cols[15], dtype="bool"),
        }
    )
    attrs = _attribute_columns(out["contact_id"], cols[16])
    return pd.concat([out, attrs], axis=1) if len(attrs.columns) else out


def _utc_datetimes(values: Any) -> pd.Series:
    # SQLite hands back naive UTC text, PostgreSQL aware datetimes; both end as UTC.
    series = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
    return series.astype("datetime64[us, UTC]")


def _attribute_columns(contact_ids: pd.Series, raw: Any) -> pd.DataFrame:
    # Parse each contact's JSON once, however many points it has.
    ids = contact_ids.to_numpy()
    _, first_pos, codes = np.unique(ids, return_index=True, return_inverse=True)
    parsed: list[dict[str, Any]] = []
    for pos in first_pos:
        value = raw[pos]
        parsed.append(json.loads(value) if isinstance(value, str) else dict(value or {}))
    keys = sorted({k for d in parsed for k in d} - set(FRAME_COLUMNS))
    columns = {}
    for key in keys:
        # Type the column once per contact, then spread it over the contact's points.
        per_contact = _typed_attribute(pd.Series([d.get(key) for d in parsed], dtype=object))
        columns[key] = per_contact.take(codes).set_axis(contact_ids.index)
    return pd.DataFrame(columns, index=contact_ids.index)


_ISO_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:\d{2}|Z)?)?$"
)


def _typed_attribute(col: pd.Series) -> pd.Series:
    values = col.dropna()
    if values.empty:
        return col.astype("category")
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        return col.astype("boolean")
    if kinds <= {int}:
        return col.astype("Int64")  # nullable: contacts without the attribute stay <NA>
    if kinds <= {int, float}:
        return pd.to_numeric(col).astype("float64")
    if kinds <= {str} and all(_ISO_DATE.match(v) for v in values.unique()):
        return pd.to_datetime(col, format="ISO8601", utc=True).astype("datetime64[us, UTC]")
    return col.map(lambda v: v if v is None or isinstance(v, str) else _cell_text(v),
                   na_action="ignore").astype("category")  # fmt: skip

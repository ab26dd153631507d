"""Column plan: which source column feeds which contact field, and which become attributes.

``FIELD_SYNONYMS`` lists the column names recognised for each field in English,
Slovak, Czech and Russian; ``_plan_columns`` matches a source's columns against them
(and against the caller's ``mapping``) before any row is read, so a source whose
columns cannot be understood is refused at once with the columns it has. Unrecognised
columns become custom attributes, renamed where they would shadow a column of
``contacts_frame``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bulkmail_kernel.contacts.frame import FRAME_COLUMNS
from bulkmail_kernel.contacts.sources import SourceTable, snake_case
from bulkmail_kernel.exceptions import ContactImportError

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

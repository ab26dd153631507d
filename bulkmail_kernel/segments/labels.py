"""How the recipient frame's columns and values read to an analyst, in menus and explanations."""

from __future__ import annotations

#: Labels of the built-in columns; columns not listed here and not hidden are custom fields.
FIELD_LABELS = {
    "first_name": "First name",
    "last_name": "Last name",
    "patronymic": "Patronymic",
    "gender": "Gender",
    "language": "Language",
    "registered_at": "Registered",
    "channel": "Channel",
    "address": "E-mail or phone",
    "point_type": "Type of address",
    "kind": "Personal or work",
    "external_id": "Customer number",
    "is_preferred": "Preferred address",
}
#: Columns that are settings of the builder (or ids), not fields of a rule.
HIDDEN_FIELDS = ("contact_point_id", "contact_id", "mailing_allowed", "suppressed")
#: How stored values read in the menus.
VALUE_LABELS = {
    "channel": {"email": "e-mail", "phone": "phone / SMS"},
    "gender": {"m": "male", "f": "female"},
    "language": {"sk": "Slovak", "cs": "Czech", "ru": "Russian", "en": "English"},
}


def readable_name(column: str) -> str:
    """Return a column's label: the built-in one, else ``treatment_result`` → "Treatment result"."""
    if column in FIELD_LABELS:
        return FIELD_LABELS[column]
    text = column.replace("_", " ").strip()
    return text[:1].upper() + text[1:] if text else column

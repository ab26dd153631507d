"""Contact import, validation, de-duplication and contacts_frame on SQLite and PostgreSQL."""

from __future__ import annotations

import textwrap
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts.frame import FRAME_COLUMNS, contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.contacts.sources import detect_encoding
from bulkmail_kernel.contacts.values import clean_text, normalize_phone, parse_date, parse_yes_no
from bulkmail_kernel.db import Contact, ContactPoint, Event, ImportRun, Suppression
from bulkmail_kernel.exceptions import ContactImportError

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
DATA = Path(__file__).resolve().parent / "data"

CLEANED = "removed control characters (line breaks and tabs became a space)"
FORMULA = (
    "starts with '=' like a spreadsheet formula; remove the leading character if it really "
    "belongs to the name"
)
NO_PERIOD = (
    "invalid e-mail address: The part after the @-sign is not valid. It should have a period."
)

EXPECTED_REPORTS: dict[str, list[tuple[int, str, str, str, str]]] = {
    "customers_utf8.csv": [
        (4, "rejected", "E-mail", "peter.horvath@example", NO_PERIOD),
        (5, "rejected", "E-mail", "maria@@sk.example.net",
         "invalid e-mail address: The part after the @-sign contains invalid characters: '@'."),
        (6, "rejected", "Phone", "12345", "invalid phone number for region SK"),
        (8, "rejected", "", "", "row 8 has 5 fields, the header has 9"),
        (9, "merged", "", "", "merged into row 2: same external id C001"),
        (10, "merged", "", "", "merged into row 2: same e-mail jan.novak@sk.example.net"),
        (11, "cleaned", "First name", "Martin\r\nJozef", CLEANED),
        (12, "rejected", "First name", '=HYPERLINK("http://evil.example","click")', FORMULA),
        (13, "rejected", "Registered", "2023-13-45",
         "cannot read '2023-13-45' as a date: write 2024-01-31 or 31.1.2024"),
        (14, "rejected", "", "", "no e-mail address or phone number"),
        (15, "rejected", "Opt-in", "maybe",
         "cannot read 'maybe' as yes or no: write yes/no, áno/nie, ano/ne or да/нет"),
        (17, "rejected", "", "",
         "conflict: e-mail eva.kovacova@sk.example.net is in row 3 "
         "but phone +421907654321 is in row 7"),
    ],
    "clients_cp1250.csv": [
        (5, "rejected", "Telefón", "603 987 654", "invalid phone number for region SK"),
        (6, "rejected", "", "K104",
         "conflict: e-mail lubica.stastna@sk.example.net is already in row 2 "
         "with external id K100"),
        (7, "rejected", "Jazyk", "de", "unknown language 'de': use sk, cs, ru or en"),
        (8, "rejected", "Pohlavie", "x", "unknown gender 'x': use m or f, or leave it empty"),
    ],
    "klienty_cp1251.csv": [
        (4, "rejected", "Телефон", "8 (903) 765-43-21", "invalid phone number for region SK"),
        (5, "rejected", "Дата регистрации", "31.02.2021",
         "cannot read '31.02.2021' as a date: write 2024-01-31 or 31.1.2024"),
        (6, "merged", "", "", "merged into row 2: same phone +79161234567"),
    ],
    "patients.xlsx": [
        (4, "rejected", "first_name", "=cmd|' /C calc'!A0", FORMULA),
        (5, "rejected", "email", "adam.kollar@example", NO_PERIOD),
        (6, "cleaned", "treatment_result", "wing clipped\nsee again in 3 weeks", CLEANED),
        (7, "merged", "", "", "merged into row 2: same external id 1001"),
    ],
    "contacts.xml": [
        (3, "rejected", "email", "broken.address@",
         "invalid e-mail address: There must be something after the @-sign."),
        (4, "rejected", "language", "de", "unknown language 'de': use sk, cs, ru or en"),
    ],
}  # fmt: skip

#: Contacts that skip mode imports from each sample, by external id or e-mail.
EXPECTED_GOOD = {
    "customers_utf8.csv": ["C001", "C002", "C006", "C009", "C014"],
    "clients_cp1250.csv": ["K100", "K101", "K102"],
    "klienty_cp1251.csv": [
        "anna.petrova@ru.example.net",
        "ivanov@ru.example.net",
        "maria.popova@sk.example.net",
    ],
    "patients.xlsx": ["1001", "1002", "1005"],
    "contacts.xml": ["X001", "X002", "X005"],
}


def dump(database: dbmod.Database) -> dict[str, list[tuple[Any, ...]]]:
    """Return every contact and contact point, for before/after comparisons."""
    with database.engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(t.c.id))]
            for t in (Contact.__table__, ContactPoint.__table__, Event.__table__)
        }


def report_rows(result: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in result.report.itertuples(index=False)]


def contact_keys(database: dbmod.Database) -> list[str]:
    with database.session() as s:
        rows = s.execute(sa.select(Contact.external_id, Contact.id)).all()
        keys = []
        for ext, cid in rows:
            if ext is None:
                ext = s.scalars(
                    sa.select(ContactPoint.normalized)
                    .where(ContactPoint.contact_id == cid, ContactPoint.channel == "email")
                    .order_by(ContactPoint.id)
                ).first()
            keys.append(ext)
    return sorted(keys)


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(textwrap.dedent(text).lstrip("\n").encode(encoding))
    return path


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize("name", sorted(EXPECTED_REPORTS))
def test_sample_default_mode_imports_nothing(database: dbmod.Database, name: str) -> None:
    before = dump(database)
    result = import_contacts(SAMPLES / name, db=database, progress=False)
    assert report_rows(result) == EXPECTED_REPORTS[name]
    assert not result.committed
    assert (result.inserted, result.updated) == (0, 0)
    assert result.rejected == len({r[0] for r in EXPECTED_REPORTS[name] if r[1] == "rejected"})
    assert dump(database) == before
    with database.session() as s:
        run = s.scalars(sa.select(ImportRun)).one()
        assert (run.committed, run.rejected, run.source) == (False, result.rejected, name)
    assert "NOT committed" in repr(result)
    assert "on_error='skip'" in repr(result)


@pytest.mark.parametrize("name", sorted(EXPECTED_REPORTS))
def test_sample_skip_mode_imports_exactly_the_good_rows(
    database: dbmod.Database, name: str
) -> None:
    result = import_contacts(SAMPLES / name, db=database, progress=False, on_error="skip")
    assert result.committed
    assert report_rows(result) == EXPECTED_REPORTS[name]
    assert result.inserted == len(EXPECTED_GOOD[name])
    assert contact_keys(database) == sorted(EXPECTED_GOOD[name])
    with database.session() as s:
        kinds = s.scalars(sa.select(Event.kind)).all()
    assert kinds == ["imported"] * result.inserted


@pytest.mark.parametrize("name", sorted(EXPECTED_REPORTS))
def test_reimport_changes_nothing(database: dbmod.Database, name: str) -> None:
    first = import_contacts(SAMPLES / name, db=database, progress=False, on_error="skip")
    before = dump(database)
    again = import_contacts(SAMPLES / name, db=database, progress=False, on_error="skip")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, first.inserted)
    assert dump(database) == before


def test_billion_laughs_is_refused(database: dbmod.Database) -> None:
    with pytest.raises(ContactImportError, match=r"billion laughs.*remove the <!DOCTYPE"):
        import_contacts(SAMPLES / "billion_laughs.xml", db=database, progress=False)
    assert dump(database)["contacts"] == []


def test_external_entity_is_refused(sqlite_url: str) -> None:
    with pytest.raises(ContactImportError, match="declares entities") as info:
        import_contacts(DATA / "external_entity.xml", url=sqlite_url, progress=False)
    assert "root:" not in str(info.value)
    assert contacts_frame(url=sqlite_url).empty


def test_customers_content(database: dbmod.Database) -> None:
    import_contacts(SAMPLES / "customers_utf8.csv", db=database, progress=False, on_error="skip")
    df = contacts_frame(database)
    jan = df[df.external_id == "C001"]
    # Rows 2, 9 and 10 are one contact: one e-mail, two phones, the first one preferred.
    assert jan[["channel", "address", "is_preferred", "mailing_allowed"]].values.tolist() == [
        ["email", "jan.novak@sk.example.net", True, True],
        ["phone", "+421903123456", True, True],
        ["phone", "+421903999888", False, True],
    ]
    assert jan.registered_at.iloc[0] == pd.Timestamp("2023-01-14 23:00", tz="UTC")
    assert set(df[df.external_id == "C009"].first_name) == {"Martin Jozef"}
    # An empty opt-in cell is not consent.
    assert not df[df.external_id == "C014"].mailing_allowed.any()
    # The frame shows the spelling typed; the point matches on its identity (case-blind).
    assert "JANA.MALA@Sk.Example.Net" in set(df.address)
    with database.session() as s:
        typed = s.scalars(
            sa.select(ContactPoint.value).where(
                ContactPoint.normalized == "jana.mala@sk.example.net"
            )
        ).one()
    assert typed == "JANA.MALA@Sk.Example.Net"
    assert list(df[df.external_id == "C002"].customer_type.unique()) == ["wholesale"]


def test_cp1250_and_cp1251_detection_and_names(database: dbmod.Database) -> None:
    r1 = import_contacts(
        SAMPLES / "clients_cp1250.csv", db=database, progress=False, on_error="skip"
    )
    r2 = import_contacts(
        SAMPLES / "klienty_cp1251.csv", db=database, progress=False, on_error="skip"
    )
    assert (r1.encoding, r1.delimiter, r2.encoding, r2.delimiter) == (
        "cp1250", ";", "cp1251", "\t",
    )  # fmt: skip
    df = contacts_frame(database)
    people = set(zip(df.first_name, df.last_name, df.patronymic, strict=True))
    assert ("Ľubica", "Šťastná", "") in people
    assert ("Jiří", "Dvořák", "") in people
    assert ("Анна", "Петрова", "Сергеевна") in people
    jiri = df[df.external_id == "K101"].iloc[0]
    assert (jiri.gender, jiri.language) == ("m", "cs")
    assert set(df.mesto.dropna()) == {"Žilina", "Brno", "Ťahanovce"}
    assert set(df["город"].dropna()) == {"Москва", "Санкт-Петербург", "Братислава"}


def test_region_decides_national_numbers(database: dbmod.Database) -> None:
    result = import_contacts(
        SAMPLES / "klienty_cp1251.csv", db=database, progress=False, region="RU", on_error="skip"
    )
    assert [r[0] for r in report_rows(result)] == [5, 6]
    assert "+79037654321" in set(contacts_frame(database).address)


def test_explicit_encoding_overrides_detection(tmp_path: Path, sqlite_url: str) -> None:
    path = write(tmp_path, "c.csv", "email;meno\nx@sk.example.net;Ján\n", "cp1250")
    wrong = import_contacts(path, url=sqlite_url, encoding="cp1251", progress=False)
    assert wrong.encoding == "cp1251"
    assert set(contacts_frame(url=sqlite_url).first_name) == {"Jбn"}


def test_patients_xlsx(database: dbmod.Database) -> None:
    import_contacts(SAMPLES / "patients.xlsx", db=database, progress=False, on_error="skip")
    df = contacts_frame(database)
    simona = df[df.external_id == "1002"].set_index("channel")
    # A phone stored as a number lost its "+": read back as the Slovak number it was.
    assert simona.loc["phone", "address"] == "+421905111222"
    assert simona.loc["phone", "mailing_allowed"]
    assert not simona.loc["email", "mailing_allowed"]
    renata = df[df.external_id == "1005"].iloc[0]
    assert renata.treatment_result == "wing clipped see again in 3 weeks"
    assert renata.visits == 4  # the cached value of "=2+2"; nothing was evaluated
    assert str(df.visits.dtype) == "Int64"
    assert df.last_visit.dtype == "datetime64[us, UTC]"
    assert set(df.pet_name.dropna()) == {"Rex", "Micka", "Ferko"}


def test_xml_points_kinds_and_types(database: dbmod.Database) -> None:
    import_contacts(SAMPLES / "contacts.xml", db=database, progress=False, on_error="skip")
    df = contacts_frame(database)
    kat = df[df.external_id == "X001"]
    assert kat[["channel", "kind", "point_type", "mailing_allowed", "is_preferred"]].astype(
        object
    ).values.tolist() == [
        ["email", "personal", "main", True, True],
        ["email", "work", "billing", False, True],
        ["phone", "personal", "mobile", True, True],
    ]
    assert set(df.customer_type.dropna()) == {"vip", "retail"}


# --------------------------------------------------------------------------- behaviour


CLEAN_CSV = """
    id,first_name,last_name,email,phone,opt_in,city
    A1,Ján,Novák,jan@sk.example.net,0903 123 456,yes,Bratislava
    A2,Eva,Malá,eva@sk.example.net,,no,Košice
    """


def test_update_only_what_changed_and_keep_consent(
    tmp_path: Path, database: dbmod.Database
) -> None:
    import_contacts(write(tmp_path, "a.csv", CLEAN_CSV), db=database, progress=False)
    changed = write(tmp_path, "b.csv", """
        id,first_name,last_name,email,city
        A1,Ján,Nováková,jan@sk.example.net,Bratislava
        A2,Eva,Malá,eva@sk.example.net,Košice
        """)  # fmt: skip
    result = import_contacts(changed, db=database, progress=False)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 1)
    df = contacts_frame(database)
    assert set(df[df.external_id == "A1"].last_name) == {"Nováková"}
    # No opt-in column in the second file: the stored consent stays as it was.
    assert df.set_index("address").loc["jan@sk.example.net", "mailing_allowed"]
    with database.session() as s:
        event = s.scalars(sa.select(Event).where(Event.kind == "updated")).one()
        assert event.data["changed"] == ["last_name"]
        assert event.detail == "b.csv row 2"


def test_conflict_with_database_is_rejected(tmp_path: Path, database: dbmod.Database) -> None:
    import_contacts(write(tmp_path, "a.csv", CLEAN_CSV), db=database, progress=False)
    before = dump(database)
    bad = write(tmp_path, "b.csv", """
        email,phone
        eva@sk.example.net,+421903123456
        """)  # fmt: skip
    result = import_contacts(bad, db=database, progress=False)
    assert report_rows(result) == [
        (2, "rejected", "", "",
         "conflict: e-mail eva@sk.example.net is contact 2 in the database but phone +421903123456 "
         "is contact 1; merge those contacts first or fix the row"),
    ]  # fmt: skip
    assert dump(database) == before


def test_new_point_on_existing_contact(tmp_path: Path, database: dbmod.Database) -> None:
    import_contacts(write(tmp_path, "a.csv", CLEAN_CSV), db=database, progress=False)
    more = write(tmp_path, "b.csv", """
        e-mail;mobil;súhlas
        eva@sk.example.net;+421 911 222 333;áno
        """)  # fmt: skip
    result = import_contacts(more, db=database, progress=False)
    assert (result.updated, result.inserted) == (1, 0)
    eva = contacts_frame(database).query("contact_id == 2")
    assert eva[["channel", "address", "is_preferred", "mailing_allowed"]].values.tolist() == [
        ["email", "eva@sk.example.net", True, True],
        ["phone", "+421911222333", True, True],
    ]


def test_work_points_and_per_point_columns(tmp_path: Path, sqlite_url: str) -> None:
    path = write(tmp_path, "w.csv", """
        E-mail,email_type,email_allowed,work_email,work_phone,phone,phone_kind,phone_allowed
        a@sk.example.net,newsletter,áno,a@firma.example.net,02 5443 1234,0903 111 222,pracovný,nie
        """)  # fmt: skip
    import_contacts(path, url=sqlite_url, progress=False)
    df = contacts_frame(url=sqlite_url)
    got = df[["channel", "address", "point_type", "kind", "mailing_allowed", "is_preferred"]]
    assert got.astype(object).values.tolist() == [
        ["email", "a@sk.example.net", "newsletter", "personal", True, True],
        ["phone", "+421903111222", "main", "work", False, True],
        ["email", "a@firma.example.net", "main", "work", False, True],
        ["phone", "+421254431234", "main", "work", False, False],
    ]


def test_mapping_and_unmapped_columns(tmp_path: Path, sqlite_url: str) -> None:
    path = write(tmp_path, "m.csv", """
        Kontakt,Krstné,Pet's name,Channel,Visits
        a@sk.example.net,Ján,Rex,web,3
        """)  # fmt: skip
    import_contacts(
        path, url=sqlite_url, mapping={"Kontakt": "email", "krstne": "first_name"}, progress=False
    )
    df = contacts_frame(url=sqlite_url)
    row = df.iloc[0]
    assert (row.address, row.first_name, row.pet_s_name, row.channel_attr) == (
        "a@sk.example.net", "Ján", "Rex", "web",
    )  # fmt: skip
    assert row.visits == 3
    assert row.channel == "email"


def test_mapping_errors_name_the_problem(tmp_path: Path, sqlite_url: str) -> None:
    path = write(tmp_path, "m.csv", "Kontakt,Name\na@sk.example.net,Ján\n")
    with pytest.raises(ContactImportError, match="no e-mail or phone column found"):
        import_contacts(path, url=sqlite_url, progress=False)
    with pytest.raises(ContactImportError, match="unknown field 'emial'"):
        import_contacts(path, url=sqlite_url, mapping={"Kontakt": "emial"}, progress=False)
    with pytest.raises(ContactImportError, match="'Nope', which is not in the source"):
        import_contacts(path, url=sqlite_url, mapping={"Nope": "email"}, progress=False)
    two = write(tmp_path, "two.csv", "Email,E-mail\na@sk.example.net,b@sk.example.net\n")
    with pytest.raises(ContactImportError, match="both look like email"):
        import_contacts(two, url=sqlite_url, progress=False)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "no such file"),
        ("list.ods", b"x", "unsupported file type .ods"),
        ("empty.csv", b"", "the file is empty"),
        ("bad.xml", b"<contacts><contact>", "not well-formed XML"),
        ("other.xml", b"<people/>", "expected <contacts>"),
        ("bad.xlsx", b"not a zip", "bad.xlsx is a text file \\(perhaps CSV\\), not an .xlsx"),
    ],
)
def test_unreadable_sources_raise(
    tmp_path: Path, sqlite_url: str, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ContactImportError, match=message):
        import_contacts(path, url=sqlite_url, progress=False)


def test_sql_table_and_query_sources(tmp_path: Path, database: dbmod.Database) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    engine = sa.create_engine(other)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE customers (id INTEGER, name TEXT, surname TEXT, mail TEXT,"
                " registered DATE, opt_in INTEGER, segment TEXT)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO customers VALUES"
                " (7, 'Ján', 'Novák', 'jan@sk.example.net', '2024-01-31', 1, 'gold'),"
                " (8, 'Eva', 'Malá', 'bad@', '2024-02-01', 0, 'silver')"
            )
        )
    engine.dispose()
    result = import_contacts(other, table="customers", db=database, progress=False)
    assert report_rows(result) == [
        (2, "rejected", "mail", "bad@",
         "invalid e-mail address: There must be something after the @-sign."),
    ]  # fmt: skip
    result = import_contacts(
        other,
        query="SELECT id, name AS first_name, mail AS email, opt_in FROM customers WHERE id = 7",
        db=database,
        progress=False,
    )
    assert (result.inserted, result.committed) == (1, True)
    row = contacts_frame(database).iloc[0]
    assert (row.external_id, row.first_name, row.mailing_allowed) == ("7", "Ján", True)
    with pytest.raises(ContactImportError, match="no table 'nope'"):
        import_contacts(other, table="nope", db=database, progress=False)
    with pytest.raises(ContactImportError, match="exactly one of table"):
        import_contacts(other, db=database, progress=False)


def test_dataframe_source(database: dbmod.Database) -> None:
    df = pd.DataFrame({"Email": ["a@sk.example.net", None], "Phone": [None, "0903 123 456"]})
    result = import_contacts(df, db=database, progress=False)
    assert (result.inserted, result.rows) == (2, 2)


def test_cr_lf_in_names_never_survive(tmp_path: Path, database: dbmod.Database) -> None:
    path = write(
        tmp_path,
        "n.csv",
        'email,first_name,last_name\nx@sk.example.net,"A\r\nB\tC","D\x00\u202eE"\n',
    )
    result = import_contacts(path, db=database, progress=False)
    assert [r[1:3] for r in report_rows(result)] == [
        ("cleaned", "first_name"), ("cleaned", "last_name"),
    ]  # fmt: skip
    row = contacts_frame(database).iloc[0]
    assert (row.first_name, row.last_name) == ("A B C", "DE")


def test_result_repr_html(tmp_path: Path, sqlite_url: str) -> None:
    result = import_contacts(
        SAMPLES / "customers_utf8.csv", url=sqlite_url, progress=False, on_error="skip"
    )
    page = result._repr_html_()
    assert "5 inserted" in page
    assert "committed" in page
    assert "<table" in page
    assert "<td>=HYPERLINK(" in page
    bad = write(tmp_path, "x.csv", "email\n<script>@sk.example.net\n")
    page = import_contacts(bad, url=sqlite_url, progress=False)._repr_html_()
    assert "&lt;script&gt;@sk.example.net" in page
    assert "<script>" not in page


def test_save_report_goes_to_exports_and_keeps_formulas_inert(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    monkeypatch.setenv("BULKMAIL_DATA_DIR", str(tmp_path / "data"))
    result = import_contacts(
        SAMPLES / "customers_utf8.csv", url=sqlite_url, progress=False, on_error="skip"
    )
    path = result.save_report()
    assert path == tmp_path / "data" / "exports" / "import-report-customers_utf8.csv"
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["row", "action", "column", "value", "reason"]
    assert len(rows) - 1 == len(result.report)
    values = [r[3] for r in rows[1:]]
    # The rejected formula is in the report, behind the apostrophe a .csv needs.
    assert any(v.startswith("'=HYPERLINK(") for v in values)
    assert not any(v.startswith(("=", "+", "-", "@")) for v in values)
    # Reasons are written whole.
    assert list(result.report["reason"]) == [r[4] for r in rows[1:]]
    mine = result.save_report(tmp_path / "mine" / "r.csv")
    assert mine == tmp_path / "mine" / "r.csv"
    assert mine.read_bytes() == path.read_bytes()


# --------------------------------------------------------------------------- frame


def test_frame_dtypes_and_suppression(tmp_path: Path, database: dbmod.Database) -> None:
    empty = contacts_frame(database)
    assert list(empty.columns) == list(FRAME_COLUMNS)
    assert len(empty) == 0
    import_contacts(write(tmp_path, "a.csv", CLEAN_CSV), db=database, progress=False)
    with database.session() as s:
        s.add(Suppression(channel="email", normalized="eva@sk.example.net", reason="unsubscribe"))
    df = contacts_frame(database)
    assert list(df.columns) == [*FRAME_COLUMNS, "city"]
    expected = {
        "contact_point_id": "int64", "contact_id": "int64", "external_id": "str",
        "first_name": "str", "last_name": "str", "patronymic": "str", "gender": "category",
        "language": "category", "registered_at": "datetime64[us, UTC]", "channel": "category",
        "address": "str", "point_type": "category", "kind": "category",
        "mailing_allowed": "bool", "is_preferred": "bool", "suppressed": "bool",
        "city": "category",
    }  # fmt: skip
    assert {c: str(t) for c, t in df.dtypes.items()} == expected
    assert list(df.channel.cat.categories) == ["email", "phone"]
    assert list(df.language.cat.categories) == ["sk", "cs", "ru", "en"]
    assert df.set_index("address").suppressed.to_dict() == {
        "jan@sk.example.net": False, "+421903123456": False, "eva@sk.example.net": True,
    }  # fmt: skip


def test_frame_missing_external_id_is_nan(tmp_path: Path, sqlite_url: str) -> None:
    import_contacts(
        write(tmp_path, "a.csv", "email\na@sk.example.net\n"), url=sqlite_url, progress=False
    )
    df = contacts_frame(url=sqlite_url)
    assert df.external_id.isna().all()
    assert str(df.external_id.dtype) == "str"


# --------------------------------------------------------------------------- values


def test_value_parsers() -> None:
    assert parse_yes_no("Áno") is True
    assert parse_yes_no("нет") is False
    assert parse_yes_no("") is None
    assert parse_yes_no(1.0) is True
    with pytest.raises(ValueError, match="as yes or no"):
        parse_yes_no("maybe")
    assert parse_date("31.1.2024") == datetime(2024, 1, 30, 23, tzinfo=UTC)
    assert parse_date("2024-07-01T10:00:00+00:00") == datetime(2024, 7, 1, 10, tzinfo=UTC)
    assert parse_date(45322) == datetime(2024, 1, 30, 23, tzinfo=UTC)  # Excel serial
    assert normalize_phone("00421 903 123 456") == "+421903123456"
    assert normalize_phone("603 123 456", "cz") == "+420603123456"
    with pytest.raises(ValueError, match="region SK"):
        normalize_phone("603 123 456")


def test_detect_encoding_prefers_the_plausible_code_page() -> None:
    assert detect_encoding("Příjmení;Jméno\nDvořák;Jiří\n".encode("cp1250")) == "cp1250"
    assert detect_encoding("Фамилия;Имя\nИванов;Иван\n".encode("cp1251")) == "cp1251"
    assert detect_encoding("\ufeffemail\n".encode()) == "utf-8-sig"


_CONTROL = st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"])


@given(st.text(st.one_of(st.characters(), _CONTROL)))
def test_clean_text_never_keeps_control_characters(text: str) -> None:
    cleaned = clean_text(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in cleaned)
    assert "  " not in cleaned
    assert cleaned == cleaned.strip()
    assert clean_text(cleaned) == cleaned


@given(st.lists(st.text(st.characters(categories=["L"]), min_size=1, max_size=8), min_size=1))
def test_clean_text_joins_words_split_by_line_breaks(words: list[str]) -> None:
    assert clean_text("\r\n".join(words)) == " ".join(words)

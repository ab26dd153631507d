"""Deliberately dirty sample contact files, for demos, notebooks and tests.

``write_samples`` writes the same bytes every time (the .xlsx too: its creation
date is fixed and xlsxwriter stamps zip entries with a constant date), so the
files under ``data/samples/`` are checked in and a test proves they are current.
Every defect is listed in ``data/samples/README.md``.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from pathlib import Path

#: Columns of customers_utf8.csv.
CUSTOMERS_HEADER = [
    "Customer ID", "First name", "Last name", "E-mail", "Phone", "Registered", "Opt-in",
    "Customer type", "City",
]  # fmt: skip
CUSTOMERS_ROWS: list[list[str]] = [
    [
        "C001",
        "Ján",
        "Novák",
        "jan.novak@sk.example.net",
        "0903 123 456",
        "2023-01-15",
        "yes",
        "retail",
        "Bratislava",
    ],
    [
        "C002",
        "Eva",
        "Kováčová",
        "eva.kovacova@sk.example.net",
        "+421 905 222 333",
        "15.2.2023",
        "áno",
        "wholesale",
        "Košice",
    ],
    [
        "C003",
        "Peter",
        "Horváth",
        "peter.horvath@example",
        "0911 000 111",
        "2023-03-01",
        "no",
        "retail",
        "Žilina",
    ],
    [
        "C004",
        "Mária",
        "Svobodová",
        "maria@@sk.example.net",
        "0944 111 222",
        "2023-03-02",
        "yes",
        "retail",
        "Nitra",
    ],
    [
        "C005",
        "Tomáš",
        "Kučera",
        "tomas.kucera@sk.example.net",
        "12345",
        "2023-03-05",
        "yes",
        "vip",
        "Trnava",
    ],
    [
        "C006",
        "Jana",
        "Malá",
        "JANA.MALA@Sk.Example.Net",
        "0907 654 321",
        "2023-04-01",
        "yes",
        "retail",
        "Prešov",
    ],
    ["C007", "Róbert", "Varga", "robert.varga@sk.example.net", "0908 111 222"],
    [
        "C001",
        "Ján",
        "Novák",
        "jan.novak@sk.example.net",
        "+421 903 999 888",
        "2023-01-15",
        "yes",
        "retail",
        "Bratislava",
    ],
    ["", "Ján", "Novák", "jan.novak@sk.example.net", "", "", "", "", ""],
    [
        "C009",
        "Martin\r\nJozef",
        "Novotný",
        "martin.novotny@sk.example.net",
        "",
        "2023-05-10",
        "yes",
        "retail",
        "Trenčín",
    ],
    [
        "C010",
        '=HYPERLINK("http://evil.example","click")',
        "Hacker",
        "hacker@sk.example.net",
        "",
        "2023-05-11",
        "yes",
        "retail",
        "",
    ],
    [
        "C011",
        "Zuzana",
        "Veselá",
        "zuzana.vesela@sk.example.net",
        "",
        "2023-13-45",
        "yes",
        "retail",
        "Poprad",
    ],
    ["C012", "Ivan", "Kráľ", "", "", "2023-06-01", "yes", "retail", "Martin"],
    [
        "C013",
        "Oľga",
        "Tichá",
        "olga.ticha@sk.example.net",
        "0902 555 666",
        "2023-06-30",
        "maybe",
        "retail",
        "Zvolen",
    ],
    [
        "C014",
        "Pavol",
        "Bielik",
        "pavol.bielik@sk.example.net",
        "0915 333 444",
        "2023-07-01",
        "",
        "wholesale",
        "Banská Bystrica",
    ],
    ["", "Karol", "Zmätený", "eva.kovacova@sk.example.net", "0907 654 321", "", "", "", ""],
]

CLIENTS_HEADER = [
    "Číslo klienta", "Meno", "Priezvisko", "E-mail", "Telefón", "Pohlavie", "Jazyk",
    "Dátum registrácie", "Súhlas", "Mesto", "Typ zákazníka",
]  # fmt: skip
CLIENTS_ROWS: list[list[str]] = [
    [
        "K100",
        "Ľubica",
        "Šťastná",
        "lubica.stastna@sk.example.net",
        "0905 100 200",
        "žena",
        "slovenčina",
        "3.1.2022",
        "áno",
        "Žilina",
        "stály",
    ],
    [
        "K101",
        "Jiří",
        "Dvořák",
        "jiri.dvorak@cz.example.net",
        "+420 603 123 456",
        "muž",
        "cs",
        "14.2.2022",
        "ano",
        "Brno",
        "nový",
    ],
    [
        "K102",
        "Žofia",
        "Ďuricová",
        "zofia.duricova@sk.example.net",
        "0918 300 400",
        "Ž",
        "sk",
        "1.3.2022",
        "nie",
        "Ťahanovce",
        "stály",
    ],
    [
        "K103",
        "Čestmír",
        "Řezníček",
        "cestmir.reznicek@cz.example.net",
        "603 987 654",
        "M",
        "cs",
        "2.3.2022",
        "ano",
        "Plzeň",
        "nový",
    ],
    [
        "K104",
        "Ľubica",
        "Šťastná",
        "lubica.stastna@SK.EXAMPLE.NET",
        "",
        "žena",
        "sk",
        "",
        "",
        "",
        "",
    ],
    [
        "K105",
        "Hans",
        "Müller",
        "hans.mueller@example.de",
        "",
        "m",
        "de",
        "5.4.2022",
        "ano",
        "Wien",
        "nový",
    ],
    [
        "K106",
        "Dáša",
        "Kňazovická",
        "dasa.knazovicka@sk.example.net",
        "0902 600 700",
        "x",
        "sk",
        "6.4.2022",
        "áno",
        "Nové Zámky",
        "stály",
    ],
]

KLIENTY_HEADER = [
    "Фамилия", "Имя", "Отчество", "Пол", "Язык", "Телефон", "Email", "Дата регистрации",
    "Согласие", "Город",
]  # fmt: skip
KLIENTY_ROWS: list[list[str]] = [
    [
        "Иванов",
        "Иван",
        "Иванович",
        "м",
        "ru",
        "+7 916 123-45-67",
        "ivanov@ru.example.net",
        "12.01.2021",
        "да",
        "Москва",
    ],
    [
        "Петрова",
        "Анна",
        "Сергеевна",
        "ж",
        "русский",
        "+7 (921) 555-44-33",
        "anna.petrova@ru.example.net",
        "2021-02-03",
        "да",
        "Санкт-Петербург",
    ],
    [
        "Сидоров",
        "Пётр",
        "Алексеевич",
        "м",
        "ru",
        "8 (903) 765-43-21",
        "sidorov@ru.example.net",
        "05.03.2021",
        "нет",
        "Казань",
    ],
    [
        "Кузнецова",
        "Ольга",
        "Викторовна",
        "ж",
        "ru",
        "",
        "olga.kuznetsova@ru.example.net",
        "31.02.2021",
        "да",
        "Самара",
    ],
    [
        "Смирнов",
        "Алексей",
        "Дмитриевич",
        "м",
        "ru",
        "+7 916 123-45-67",
        "",
        "01.04.2021",
        "да",
        "Москва",
    ],
    [
        "Попова",
        "Мария",
        "Игоревна",
        "ж",
        "ru",
        "+421 903 777 888",
        "maria.popova@sk.example.net",
        "02.04.2021",
        "да",
        "Братислава",
    ],
]

PATIENTS_HEADER = [
    "id", "first_name", "last_name", "email", "phone", "registered_at", "email_allowed",
    "phone_allowed", "pet_name", "species", "treatment_result", "last_visit", "visits",
]  # fmt: skip

CONTACTS_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Recipients in the bulkmail XML schema (docs/contacts-xml.md), with deliberate defects. -->
<contacts>
  <contact id="X001">
    <first-name>Katarína</first-name>
    <last-name>Horváthová</last-name>
    <gender>f</gender>
    <language>sk</language>
    <registered>2024-02-01</registered>
    <email type="main" mailing-allowed="yes">katarina.horvathova@sk.example.net</email>
    <email kind="work" type="billing" mailing-allowed="no">k.horvathova@firma.sk.example.net</email>
    <phone type="mobile" mailing-allowed="yes">+421 910 111 222</phone>
    <attribute name="customer_type">vip</attribute>
    <attribute name="city">Bratislava</attribute>
  </contact>
  <contact id="X002">
    <first-name>Pavel</first-name>
    <last-name>Černý</last-name>
    <gender>m</gender>
    <language>cs</language>
    <registered>1.3.2024</registered>
    <email mailing-allowed="ano">pavel.cerny@cz.example.net</email>
    <phone kind="work" type="landline" mailing-allowed="ne">+420 222 333 444</phone>
    <attribute name="customer_type">retail</attribute>
  </contact>
  <contact id="X003">
    <first-name>Broken</first-name>
    <last-name>Address</last-name>
    <email mailing-allowed="yes">broken.address@</email>
  </contact>
  <contact id="X004">
    <first-name>Hugo</first-name>
    <last-name>Klein</last-name>
    <language>de</language>
    <email mailing-allowed="yes">hugo.klein@example.at</email>
  </contact>
  <contact id="X005">
    <first-name>Natália</first-name>
    <last-name>Kováčová</last-name>
    <language>sk</language>
    <email kind="private" mailing-allowed="áno">natalia.kovacova@sk.example.net</email>
    <attribute name="customer_type">retail</attribute>
  </contact>
</contacts>
"""

BILLION_LAUGHS_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- A "billion laughs" entity bomb: a few hundred bytes that expand to gigabytes. -->
<!DOCTYPE contacts [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<contacts>
  <contact id="B001">
    <first-name>&lol9;</first-name>
    <email>bomb@sk.example.net</email>
  </contact>
</contacts>
"""


def _csv_bytes(header: list[str], rows: list[list[str]], delimiter: str, encoding: str) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode(encoding)


def _write_patients(path: Path) -> None:
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(path), {"strings_to_formulas": False, "strings_to_numbers": False})
    # A fixed creation date keeps the file byte-identical from run to run.
    wb.set_properties({"created": datetime(2024, 1, 1), "author": "bulkmail samples"})
    ws = wb.add_worksheet("Patients")
    date_fmt = wb.add_format({"num_format": "d.m.yyyy"})
    ws.write_row(0, 0, PATIENTS_HEADER)
    rows: list[list[object]] = [
        [
            1001,
            "Michal",
            "Baláž",
            "michal.balaz@sk.example.net",
            "0903 400 500",
            date(2023, 9, 1),
            "yes",
            "yes",
            "Rex",
            "dog",
            "vaccinated",
            date(2024, 3, 1),
            3,
        ],
        [
            1002,
            "Simona",
            "Oravcová",
            "simona.oravcova@sk.example.net",
            421905111222,
            date(2023, 9, 5),
            "no",
            "yes",
            "Micka",
            "cat",
            "sterilised",
            date(2024, 2, 14),
            1,
        ],
        [
            1003,
            "=cmd|' /C calc'!A0",
            "Mrkvička",
            "mrkvicka@sk.example.net",
            "",
            date(2023, 10, 1),
            "yes",
            "",
            "Bobik",
            "rabbit",
            "healthy",
            date(2024, 1, 10),
            2,
        ],
        [
            1004,
            "Adam",
            "Kollár",
            "adam.kollar@example",
            "0911 222 333",
            date(2023, 10, 2),
            "yes",
            "yes",
            "Luna",
            "dog",
            "healthy",
            date(2024, 1, 11),
            1,
        ],
        [
            1005,
            "Renáta",
            "Hudecová",
            "renata.hudecova@sk.example.net",
            "",
            date(2023, 11, 20),
            "áno",
            "",
            "Ferko",
            "parrot",
            "wing clipped\nsee again in 3 weeks",
            date(2024, 4, 2),
            4,
        ],
        [
            1001,
            "Michal",
            "Baláž",
            "michal.balaz@sk.example.net",
            "0904 600 700",
            date(2023, 9, 1),
            "yes",
            "no",
            "Rex",
            "dog",
            "vaccinated",
            date(2024, 3, 1),
            3,
        ],
    ]
    for r, values in enumerate(rows, start=1):
        for c, value in enumerate(values):
            if isinstance(value, date):
                ws.write_datetime(r, c, datetime(value.year, value.month, value.day), date_fmt)
            elif isinstance(value, str):
                ws.write_string(r, c, value)  # never a formula, even if it starts with "="
            else:
                ws.write_number(r, c, value)
    # A real formula with the value Excel would have cached: read as 4, never evaluated.
    ws.write_formula(5, 12, "=2+2", None, 4)
    wb.close()


SAMPLE_FILES = (
    "customers_utf8.csv",
    "clients_cp1250.csv",
    "klienty_cp1251.csv",
    "patients.xlsx",
    "contacts.xml",
    "billion_laughs.xml",
)


def write_samples(directory: Path) -> list[Path]:
    """Write the dirty sample contact files into ``directory`` and return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in SAMPLE_FILES]
    paths[0].write_bytes(_csv_bytes(CUSTOMERS_HEADER, CUSTOMERS_ROWS, ",", "utf-8"))
    paths[1].write_bytes(_csv_bytes(CLIENTS_HEADER, CLIENTS_ROWS, ";", "cp1250"))
    paths[2].write_bytes(_csv_bytes(KLIENTY_HEADER, KLIENTY_ROWS, "\t", "cp1251"))
    _write_patients(paths[3])
    paths[4].write_bytes(CONTACTS_XML.encode("utf-8"))
    paths[5].write_bytes(BILLION_LAUGHS_XML.encode("utf-8"))
    return paths

"""The deterministic demo data set: realistic Slovak, Czech, Russian and English contacts.

``generate_demo`` fills a database with contacts whose names carry diacritics and
Cyrillic, correct female surname forms (Nováková, Петрова), Russian patronymics,
custom attributes (customer type, city, a vet-clinic share with pets and check-ups),
and one to three contact points each. The same seed always gives the same rows.

Every e-mail address lies under an example domain (example.com, .sk, .cz, .ru) and
every phone number is a valid E.164 number, so the set exercises validation without
writing to a real person. Columns are generated vectorised with numpy and loaded
with the raw driver (SQLite ``executemany`` in one transaction, PostgreSQL ``COPY``):
a million contacts load in well under two minutes (see ``bench/bench_demo.py``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa
from tqdm.auto import tqdm

from bulkmail_kernel import config
from bulkmail_kernel.db import Contact, Database, Suppression, open_database
from bulkmail_kernel.exceptions import ConfigError

log = logging.getLogger("bulkmail")

#: The ``source`` of every demo contact and contact point; ``replace`` deletes by it.
DEMO_SOURCE = "demo"
#: The ``detail`` of every demo suppression (the table has no source column).
DEMO_SUPPRESSION_DETAIL = "demo data set"
DEFAULT_SEED = 20261123
#: Rows per executemany / COPY batch: large enough to amortise the driver, small enough
#: that the progress bar moves.
BATCH_ROWS = 50_000

LANGUAGES = ("sk", "cs", "ru", "en")
_LANGUAGE_SHARE = (0.40, 0.25, 0.15, 0.20)

# --------------------------------------------------------------------------- name pools


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((m, f) for m, f in (w.split("/") for w in _words(text)))


#: First names per language as (male, female).
_FIRST: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sk": (
        _words(
            "Ján, Peter, Martin, Tomáš, Michal, Jozef, Lukáš, Marek, Juraj, Ľubomír, Štefan,"
            "Dušan, Matej, Andrej, Róbert, Miroslav, Igor, Radoslav, Samuel, Šimon, Ľudovít,"
            "Pavol, Vladimír, Ondrej"
        ),
        _words(
            "Mária, Anna, Zuzana, Katarína, Eva, Jana, Lucia, Martina, Ľubica, Veronika,"
            "Simona, Petra, Dominika, Soňa, Žofia, Monika, Alžbeta, Terézia, Natália, Ivana,"
            "Dáša, Kristína, Ľudmila, Barbora"
        ),
    ),
    "cs": (
        _words(
            "Jiří, Jan, Petr, Josef, Pavel, Tomáš, Martin, Jaroslav, Miroslav, Zdeněk, Václav,"
            "Michal, František, Lukáš, Jakub, Vojtěch, Ondřej, Radek, Karel, Milan, Matěj,"
            "Přemysl, Bořivoj, Dušan"
        ),
        _words(
            "Jana, Marie, Eva, Hana, Anna, Lenka, Kateřina, Lucie, Věra, Alena, Petra,"
            "Veronika, Jaroslava, Tereza, Martina, Michaela, Zdeňka, Barbora, Markéta, Šárka,"
            "Radka, Dagmar, Božena, Klára"
        ),
    ),
    "ru": (
        _words(
            "Александр, Сергей, Дмитрий, Андрей, Алексей, Максим, Иван, Михаил, Николай,"
            "Евгений, Владимир, Павел, Артём, Игорь, Юрий, Фёдор, Григорий, Олег"
        ),
        _words(
            "Елена, Ольга, Наталья, Татьяна, Ирина, Анна, Мария, Екатерина, Светлана, Юлия,"
            "Анастасия, Дарья, Людмила, Галина, Ксения, Алёна, Софья, Вера"
        ),
    ),
    "en": (
        _words(
            "James, John, Robert, Michael, William, David, Richard, Thomas, Oliver, George,"
            "Harry, Jack, Charlie, Daniel, Matthew, Samuel, Henry, Edward"
        ),
        _words(
            "Mary, Elizabeth, Sarah, Emma, Olivia, Amelia, Emily, Jessica, Charlotte, Sophie,"
            "Grace, Lucy, Hannah, Chloe, Alice, Zoë, Isla, Ruby"
        ),
    ),
}

#: Surnames as (male, female): the female form follows no single rule
#: (Oravec → Oravcová, Šťastný → Šťastná, Krajčí → Krajčí), so it is spelled out.
_LAST: dict[str, tuple[tuple[str, str], ...]] = {
    "sk": _pairs(
        "Novák/Nováková, Horváth/Horváthová, Kováč/Kováčová, Varga/Vargová, Tóth/Tóthová,"
        "Nagy/Nagyová, Baláž/Balážová, Molnár/Molnárová, Lukáč/Lukáčová, Šimko/Šimková,"
        "Kráľ/Kráľová, Polák/Poláková, Hudák/Hudáková, Kollár/Kollárová, Oravec/Oravcová,"
        "Ďurica/Ďuricová, Šťastný/Šťastná, Krajčí/Krajčí, Čierny/Čierna, Mráz/Mrázová,"
        "Ševčík/Ševčíková, Žiak/Žiaková, Gašpar/Gašparová, Bielik/Bieliková, Ondruš/Ondrušová,"
        "Kučera/Kučerová, Slovák/Slováková, Matuška/Matušková"
    ),
    "cs": _pairs(
        "Novák/Nováková, Svoboda/Svobodová, Novotný/Novotná, Dvořák/Dvořáková, Černý/Černá,"
        "Procházka/Procházková, Kučera/Kučerová, Veselý/Veselá, Horák/Horáková, Němec/Němcová,"
        "Marek/Marková, Pospíšil/Pospíšilová, Pokorný/Pokorná, Hájek/Hájková, Král/Králová,"
        "Jelínek/Jelínková, Růžička/Růžičková, Beneš/Benešová, Fiala/Fialová,"
        "Sedláček/Sedláčková, Doležal/Doležalová, Zeman/Zemanová, Kolář/Kolářová,"
        "Navrátil/Navrátilová, Čermák/Čermáková, Vaněk/Vaňková, Šťastný/Šťastná"
    ),
    "ru": _pairs(
        "Иванов/Иванова, Смирнов/Смирнова, Кузнецов/Кузнецова, Попов/Попова,"
        "Васильев/Васильева, Петров/Петрова, Соколов/Соколова, Михайлов/Михайлова,"
        "Новиков/Новикова, Фёдоров/Фёдорова, Морозов/Морозова, Волков/Волкова,"
        "Алексеев/Алексеева, Лебедев/Лебедева, Семёнов/Семёнова, Егоров/Егорова,"
        "Павлов/Павлова, Козлов/Козлова, Степанов/Степанова, Николаев/Николаева,"
        "Орлов/Орлова, Никитин/Никитина, Захаров/Захарова, Островский/Островская,"
        "Жуковский/Жуковская, Толстой/Толстая"
    ),
    "en": tuple(
        (s, s)
        for s in _words(
            "Smith, Jones, Taylor, Brown, Williams, Wilson, Johnson, Davies, Robinson, Wright,"
            "Thompson, Evans, Walker, White, Roberts, Green, Hall, Wood, Jackson, Clarke,"
            "O'Brien, Hughes, Edwards, Turner, Phillips, Campbell"
        )
    ),
}

#: Russian patronymics as (male, female), from the father's first name.
_PATRONYMICS = _pairs(
    "Александрович/Александровна, Сергеевич/Сергеевна, Дмитриевич/Дмитриевна,"
    "Андреевич/Андреевна, Алексеевич/Алексеевна, Иванович/Ивановна, Михайлович/Михайловна,"
    "Николаевич/Николаевна, Владимирович/Владимировна, Павлович/Павловна, Игоревич/Игоревна,"
    "Юрьевич/Юрьевна, Евгеньевич/Евгеньевна, Викторович/Викторовна, Петрович/Петровна,"
    "Фёдорович/Фёдоровна, Олегович/Олеговна"
)

_CITIES: dict[str, tuple[str, ...]] = {
    "sk": _words(
        "Bratislava, Košice, Prešov, Žilina, Banská Bystrica, Nitra, Trnava, Trenčín,"
        "Martin, Poprad, Piešťany, Dunajská Streda"
    ),
    "cs": _words(
        "Praha, Brno, Ostrava, Plzeň, Liberec, Olomouc, České Budějovice,"
        "Hradec Králové, Ústí nad Labem, Pardubice, Zlín, Jihlava"
    ),
    "ru": _words(
        "Москва, Санкт-Петербург, Новосибирск, Екатеринбург, Казань,"
        "Нижний Новгород, Самара, Ростов-на-Дону, Калининград"
    ),
    "en": _words(
        "London, Manchester, Birmingham, Leeds, Glasgow, Bristol, Edinburgh,Liverpool, Cardiff"
    ),
}

_PET_NAMES: dict[str, tuple[str, ...]] = {
    "sk": _words("Bobík, Micka, Dunčo, Rexo, Žofka, Ťapka, Líza, Max, Bella, Čiko, Šimi, Ňufko"),
    "cs": _words(
        "Alík, Mourek, Micinka, Rex, Žeryk, Bára, Čert, Fousek, Ťapka, Max, Šmudla,Příšerka"
    ),
    "ru": _words("Барсик, Мурка, Шарик, Рыжик, Пушок, Жучка, Тузик, Дымка, Бобик, Снежок, Соня"),
    "en": _words("Buddy, Bella, Max, Luna, Charlie, Daisy, Milo, Coco, Rosie, Oscar, Poppy"),
}

_CUSTOMER_TYPES = (("regular", 0.66), ("VIP", 0.09), ("inactive", 0.17), ("wholesale", 0.08))
_PET_SPECIES = (
    ("dog", 0.46),
    ("cat", 0.38),
    ("rabbit", 0.06),
    ("parrot", 0.04),
    ("guinea pig", 0.04),
    ("ferret", 0.02),
)
#: (result, share, next check-up from today in days: low, high)
_TREATMENT = (
    ("healed", 0.48, 60, 365),
    ("still in treatment", 0.24, 2, 30),
    ("follow-up needed", 0.16, 7, 90),
    ("chronic", 0.12, 14, 60),
)
#: Share of contacts that are clients of the vet clinic (have a pet).
_VET_SHARE = 0.4
#: Registered this many days ago or less → customer_type "new".
_NEW_CUSTOMER_DAYS = 180

# --------------------------------------------------------------------------- addresses
# Only example domains: a demo must never write to a real mailbox.
# example.sk/.cz/.ru are ordinary, ownable domains; subdomains of example.net (RFC 2606) are not.
_PERSONAL_DOMAIN = {
    "sk": "sk.example.net",
    "cs": "cz.example.net",
    "ru": "ru.example.net",
    "en": "example.com",
}
_WORK_DOMAINS: dict[str, tuple[str, ...]] = {
    "sk": _words(
        "vetcentrum.sk.example.net, agrofarma.sk.example.net, stavby.sk.example.net,"
        "uctovnictvo.sk.example.net, mesto.sk.example.net"
    ),
    "cs": _words(
        "vetklinika.cz.example.net, stavebniny.cz.example.net,"
        "ucetni.cz.example.net, skola.cz.example.net"
    ),
    "ru": _words("romashka.ru.example.net, torgservis.ru.example.net, vetclinic.ru.example.net"),
    "en": _words("office.example.com, acme.example.com, vets.example.com, council.example.com"),
}


@dataclass(frozen=True)
class _PhonePlan:
    """Number ranges of one country whose every completion ``phonenumbers`` deems valid."""

    country_code: int
    #: National (significant) number length.
    length: int
    mobile_prefixes: tuple[str, ...]
    landline_prefixes: tuple[str, ...]
    #: Trunk prefix written before a national number ("" where none is dialled).
    trunk: str


# Prefixes chosen from libphonenumber's metadata patterns; tests check the extremes of
# every range are valid, so a metadata update that retires a range shows up at once.
_PHONE_PLANS: dict[str, _PhonePlan] = {
    "sk": _PhonePlan(
        421,
        9,
        _words(
            "901, 902, 903, 904, 905, 907, 908, 910, 911, 915, 917, 918, 940, 944, 948, 949,"
            "950, 951"
        ),
        _words("22, 23, 24, 25, 26, 27, 28, 29"),
        "0",
    ),
    "cs": _PhonePlan(
        420,
        9,
        _words(
            "601, 602, 603, 604, 605, 606, 607, 608, 720, 721, 722, 723, 724, 725, 730, 731,"
            "732, 736, 737, 739, 773, 774, 775, 776, 777, 778, 790, 792, 799"
        ),
        _words("22, 23, 24, 25, 26, 27, 28, 54"),
        "",
    ),
    "ru": _PhonePlan(
        7,
        10,
        _words(
            "900, 901, 903, 905, 906, 909, 910, 912, 915, 916, 917, 919, 920, 921, 925, 926,"
            "950, 951, 960, 962, 977, 985, 999"
        ),
        _words("495, 499, 812, 343, 383, 843"),
        "8",
    ),
    "en": _PhonePlan(
        44,
        10,
        _words(
            "710, 712, 715, 720, 723, 730, 735, 740, 741, 747, 771, 772, 774, 777, 780, 781,"
            "785, 789, 794, 795, 797, 799"
        ),
        _words("207, 203, 208"),
        "0",
    ),
}

_RU_TRANSLIT = dict(
    zip(
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        _words(
            "a, b, v, g, d, e, e, zh, z, i, y, k, l, m, n, o, p, r, s, t, u, f, kh, ts, ch,"
            "sh, shch, -, y, -, e, yu, ya"
        ),
        strict=True,
    )
)
_RU_TRANSLIT["ъ"] = _RU_TRANSLIT["ь"] = ""


def ascii_name(name: str) -> str:
    """Transliterate a name to the lower-case ASCII letters used in e-mail local parts."""
    text = "".join(_RU_TRANSLIT.get(ch, ch) for ch in name.lower())
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if ch.isascii() and ch.isalpha())


# --------------------------------------------------------------------------- generation


def _five_years_before(today: date) -> date:
    try:
        return today.replace(year=today.year - 5)
    except ValueError:  # 29 February
        return today.replace(year=today.year - 5, day=28)


def _choice(rng: np.random.Generator, options: Sequence[tuple[Any, ...]], n: int) -> np.ndarray:
    """Draw ``n`` indices into ``options`` weighted by each option's second field."""
    p = np.array([o[1] for o in options], dtype=float)
    return rng.choice(len(options), size=n, p=p / p.sum())


def _obj(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _json_frag(values: Sequence[str]) -> np.ndarray:
    # json.dumps with its defaults, exactly as SQLAlchemy's JSON type serialises on SQLite.
    return _obj([json.dumps(v) for v in values])


def _iso(us: np.ndarray, unit: Literal["s", "ms", "us"] = "us") -> np.ndarray:
    stamps: npt.NDArray[np.datetime64] = us.astype(f"datetime64[{unit}]")
    return np.datetime_as_string(stamps, unit=unit)


def _group_digits(nsn: np.ndarray) -> np.ndarray:
    """Group a national number as people write it: 903 123 456, 912 345 6789."""
    head, mid, tail = (np.strings.slice(nsn, a, b) for a, b in ((0, 3), (3, 6), (6, None)))
    return np.strings.add(np.strings.add(head, " "), np.strings.add(np.strings.add(mid, " "), tail))


@dataclass
class _Tables:
    """Generated columns, in insertion order, ready for the driver."""

    contacts: dict[str, np.ndarray]
    points: dict[str, np.ndarray]
    suppressions: dict[str, np.ndarray]


def _unique_suffix(keys: np.ndarray) -> np.ndarray:
    """Return "", "2", "3", ... per occurrence of each key, so appended keys are unique."""
    codes, _ = pd.factorize(keys)
    k = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    out = np.full(len(keys), "", dtype=object)
    dup = np.flatnonzero(k > 0)
    out[dup] = [str(x + 1) for x in k[dup].tolist()]
    return out


def _draw_phones(
    rng: np.random.Generator, lang_idx: np.ndarray, landline: np.ndarray
) -> np.ndarray:
    """Draw unique E.164 numbers (as int64, without the plus), one per language row."""
    n = len(lang_idx)
    e164 = np.zeros(n, dtype=np.int64)

    def draw(rows: np.ndarray) -> None:
        for li, lang in enumerate(LANGUAGES):
            plan = _PHONE_PLANS[lang]
            for is_land, prefixes in (
                (False, plan.mobile_prefixes),
                (True, plan.landline_prefixes),
            ):
                sel = rows[(lang_idx[rows] == li) & (landline[rows] == is_land)]
                if not len(sel):
                    continue
                pre = np.array([int(p) for p in prefixes], dtype=np.int64)
                plen = np.array([len(p) for p in prefixes], dtype=np.int64)
                pick = rng.integers(0, len(prefixes), len(sel))
                rest = plan.length - plen[pick]
                scale = 10**rest
                nsn = pre[pick] * scale + rng.integers(0, scale)
                e164[sel] = plan.country_code * 10**plan.length + nsn

    rows = np.arange(n)
    draw(rows)
    # Redraw the (rare) repeats until every number is unique; deterministic per seed.
    while True:
        dup = pd.Series(e164).duplicated().to_numpy()
        if not dup.any():
            return e164
        draw(np.flatnonzero(dup))


def _generate(n: int, seed: int, today: date) -> _Tables:
    """Generate every column of the demo set; same arguments, same arrays."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1, dtype=np.int64)

    lang_idx = rng.choice(len(LANGUAGES), size=n, p=_LANGUAGE_SHARE)
    female = rng.random(n) < 0.52
    gender = np.where(female, "f", "m").astype(object)
    language = _obj(LANGUAGES)[lang_idx]

    first = np.empty(n, dtype=object)
    last = np.empty(n, dtype=object)
    patronymic = np.full(n, "", dtype=object)
    first_a = np.empty(n, dtype=object)
    last_a = np.empty(n, dtype=object)
    for li, lang in enumerate(LANGUAGES):
        for g in (0, 1):
            rows = np.flatnonzero((lang_idx == li) & (female == bool(g)))
            pool = _FIRST[lang][g]
            pick = rng.integers(0, len(pool), len(rows))
            first[rows] = _obj(pool)[pick]
            first_a[rows] = _obj([ascii_name(x) for x in pool])[pick]
            surnames = [pair[g] for pair in _LAST[lang]]
            pick = rng.integers(0, len(surnames), len(rows))
            last[rows] = _obj(surnames)[pick]
            last_a[rows] = _obj([ascii_name(x) for x in surnames])[pick]
            if lang == "ru":
                pats = [pair[g] for pair in _PATRONYMICS]
                patronymic[rows] = _obj(pats)[rng.integers(0, len(pats), len(rows))]

    # Registrations over the five years before today, denser recently (the firm grew);
    # ids follow registration order as they would in a real CRM.
    day0 = datetime(today.year, today.month, today.day, tzinfo=UTC)
    lower = datetime.combine(_five_years_before(today), datetime.min.time(), tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    lower_us = (lower - epoch) // timedelta(microseconds=1)
    span_us = (day0 - lower) // timedelta(microseconds=1)
    reg_us = np.sort(lower_us + (np.sqrt(rng.random(n)) * span_us).astype(np.int64))
    reg_text = np.strings.replace(_iso(reg_us), "T", " ")
    age_days = (day0 - epoch) // timedelta(days=1) - reg_us // 86_400_000_000

    external_id = np.full(n, None, dtype=object)
    has_ext = rng.random(n) < 0.9
    external_id[has_ext] = np.strings.add("DEMO-", np.strings.zfill(ids[has_ext].astype(str), 7))

    attributes = _attributes(rng, n, lang_idx, age_days, today)
    contacts = {
        "id": ids,
        "external_id": external_id,
        "first_name": first,
        "last_name": last,
        "patronymic": patronymic,
        "gender": gender,
        "language": language,
        "registered_at": reg_text,
        "attributes": attributes,
        "source": np.full(n, DEMO_SOURCE, dtype=object),
        "created_at": reg_text,
        "updated_at": reg_text,
    }
    points = _points(rng, n, ids, lang_idx, first_a, last_a, reg_text)
    suppressions = _suppressions(rng, points, reg_text)
    return _Tables(contacts, points, suppressions)


def _attributes(
    rng: np.random.Generator, n: int, lang_idx: np.ndarray, age_days: np.ndarray, today: date
) -> np.ndarray:
    """Build each contact's attributes as JSON text, by concatenating pre-serialised parts."""
    ctype = _json_frag([c[0] for c in _CUSTOMER_TYPES])[_choice(rng, _CUSTOMER_TYPES, n)]
    ctype[age_days <= _NEW_CUSTOMER_DAYS] = json.dumps("new")
    city = np.empty(n, dtype=object)
    pet_name = np.empty(n, dtype=object)
    for li, lang in enumerate(LANGUAGES):
        rows = np.flatnonzero(lang_idx == li)
        city[rows] = _json_frag(_CITIES[lang])[rng.integers(0, len(_CITIES[lang]), len(rows))]
        pets = _PET_NAMES[lang]
        pet_name[rows] = _json_frag(pets)[rng.integers(0, len(pets), len(rows))]
    loyalty = rng.gamma(2.0, 400.0, n).astype(np.int64).astype(str).astype(object)
    attrs = '{"customer_type": ' + ctype + ', "city": ' + city + ', "loyalty_points": ' + loyalty

    vet = np.flatnonzero(rng.random(n) < _VET_SHARE)
    species = _json_frag([s[0] for s in _PET_SPECIES])[_choice(rng, _PET_SPECIES, len(vet))]
    result_idx = _choice(rng, _TREATMENT, len(vet))
    low = np.array([t[2] for t in _TREATMENT])[result_idx]
    high = np.array([t[3] for t in _TREATMENT])[result_idx]
    due = np.datetime64(today, "D") + rng.integers(low, high + 1)
    attrs[vet] = (
        attrs[vet]
        + ', "pet_name": '
        + pet_name[vet]
        + ', "pet_species": '
        + species
        + ', "treatment_result": '
        + _json_frag([t[0] for t in _TREATMENT])[result_idx]
        + ', "next_checkup": "'
        + np.datetime_as_string(due, unit="D").astype(object)
        + '"'
    )
    return attrs + "}"


# Contact-point slots, in the order a contact's points get their ids.
_SLOT_EMAIL, _SLOT_EMAIL2, _SLOT_WORK, _SLOT_MOBILE, _SLOT_LANDLINE = range(5)


def _points(
    rng: np.random.Generator,
    n: int,
    ids: np.ndarray,
    lang_idx: np.ndarray,
    first_a: np.ndarray,
    last_a: np.ndarray,
    reg_text: np.ndarray,
) -> dict[str, np.ndarray]:
    """Give every contact one to three contact points (e-mails and phones)."""
    has = np.zeros((5, n), dtype=bool)
    has[_SLOT_EMAIL] = rng.random(n) < 0.88
    has[_SLOT_EMAIL2] = has[_SLOT_EMAIL] & (rng.random(n) < 0.08)
    has[_SLOT_WORK] = rng.random(n) < 0.22
    has[_SLOT_MOBILE] = rng.random(n) < 0.65
    has[_SLOT_LANDLINE] = rng.random(n) < 0.08
    has[_SLOT_EMAIL] |= ~has.any(axis=0)  # everyone is reachable somehow
    for slot in (_SLOT_LANDLINE, _SLOT_EMAIL2):  # at most three points each
        has[slot] &= has.sum(axis=0) <= 3
    landline_work = rng.random(n) < 0.5
    email2_preferred = rng.random(n) < 0.15

    slot_of, row_of = np.nonzero(has)
    order = np.lexsort((slot_of, row_of))
    slot_of, row_of = slot_of[order], row_of[order]
    m = len(row_of)
    lang = lang_idx[row_of]

    channel = np.where(slot_of <= _SLOT_WORK, "email", "phone").astype(object)
    kind = np.where(
        (slot_of == _SLOT_WORK) | ((slot_of == _SLOT_LANDLINE) & landline_work[row_of]),
        "work",
        "personal",
    ).astype(object)
    ptype = _obj(["main", "newsletter", "main", "mobile", "landline"])[slot_of]
    ptype[(slot_of == _SLOT_EMAIL2) & (rng.random(m) < 0.4)] = "billing"
    ptype[(slot_of == _SLOT_WORK) & (rng.random(m) < 0.25)] = "billing"
    preferred = np.where(slot_of == _SLOT_EMAIL2, email2_preferred[row_of], True)
    preferred[slot_of == _SLOT_EMAIL] = (
        ~email2_preferred[row_of[slot_of == _SLOT_EMAIL]]
        | ~(has[_SLOT_EMAIL2][row_of[slot_of == _SLOT_EMAIL]])
    )
    # A personal landline beside a personal mobile is the fallback, not the first choice.
    preferred[(slot_of == _SLOT_LANDLINE) & (kind == "personal") & has[_SLOT_MOBILE][row_of]] = (
        False
    )
    allowed_share = np.array([0.82, 0.6, 0.55, 0.5, 0.2])[slot_of]
    mailing_allowed = rng.random(m) < allowed_share

    normalized = np.empty(m, dtype=object)
    value = np.empty(m, dtype=object)

    # E-mail: name-based local parts, made unique with a number as people do (jan.novak2).
    em = np.flatnonzero(channel == "email")
    f, s = first_a[row_of[em]], last_a[row_of[em]]
    initial = _obj([x[0] for x in f.tolist()])
    pattern = rng.choice(6, size=len(em), p=[0.42, 0.15, 0.17, 0.1, 0.08, 0.08])
    local = np.empty(len(em), dtype=object)
    for k, (a, sep, b) in enumerate(
        ((f, ".", s), (f, "", s), (initial, ".", s), (s, ".", f), (f, "-", s), (s, ".", initial))
    ):
        rows = pattern == k  # build each pattern only for its own rows
        local[rows] = a[rows] + sep + b[rows]
    domain = np.empty(len(em), dtype=object)
    em_lang = lang[em]
    em_slot = slot_of[em]
    for li, code in enumerate(LANGUAGES):
        here = em_lang == li
        domain[here] = _PERSONAL_DOMAIN[code]
        work = np.flatnonzero(here & (em_slot == _SLOT_WORK))
        wd = _WORK_DOMAINS[code]
        domain[work] = _obj(wd)[rng.integers(0, len(wd), len(work))]
    # A second personal mailbox lives at the other provider, or an international one.
    alt = (em_slot == _SLOT_EMAIL2) | ((em_slot == _SLOT_EMAIL) & (rng.random(len(em)) < 0.15))
    domain[alt & (em_lang != LANGUAGES.index("en"))] = "example.com"
    domain[alt & (em_lang == LANGUAGES.index("en"))] = "sk.example.net"
    # Local parts end in a letter, so appending digits can never recreate another base.
    address = local + "@" + domain
    suffix = _unique_suffix(address)
    dup = suffix != ""
    address[dup] = local[dup] + suffix[dup] + "@" + domain[dup]
    normalized[em] = address
    value[em] = normalized[em]

    # Phones: valid E.164 by construction; the source spelling varies as in real files.
    ph = np.flatnonzero(channel == "phone")
    e164 = _draw_phones(rng, lang[ph], slot_of[ph] == _SLOT_LANDLINE)
    digits = e164.astype(str)
    normalized[ph] = np.strings.add("+", digits).astype(object)
    cc = np.array([_PHONE_PLANS[c].country_code for c in LANGUAGES])[lang[ph]]
    cc_text = cc.astype(str)
    nsn = np.strings.slice(digits, np.strings.str_len(cc_text), None)
    grouped = _group_digits(nsn)
    trunk = np.array([_PHONE_PLANS[c].trunk for c in LANGUAGES])[lang[ph]]
    style = rng.choice(3, size=len(ph), p=[0.5, 0.3, 0.2])
    # Czech numbers have no trunk prefix: a bare national number would read as Slovak.
    style[(style == 2) & (trunk == "")] = 1
    intl = np.strings.add(np.strings.add("+", cc_text), np.strings.add(" ", grouped))
    national = np.strings.add(trunk, grouped)
    value[ph] = np.where(style == 0, normalized[ph], np.where(style == 1, intl, national))

    return {
        "id": np.arange(1, m + 1, dtype=np.int64),
        "contact_id": ids[row_of],
        "channel": channel,
        "value": value,
        "normalized": normalized,
        "type": ptype,
        "kind": kind,
        "mailing_allowed": mailing_allowed,
        "is_preferred": preferred.astype(bool),
        "soft_bounces": np.zeros(m, dtype=np.int64),
        "source": np.full(m, DEMO_SOURCE, dtype=object),
        "created_at": reg_text[row_of],
        "updated_at": reg_text[row_of],
    }


def _suppressions(
    rng: np.random.Generator, points: dict[str, np.ndarray], reg_text: np.ndarray
) -> dict[str, np.ndarray]:
    """Suppress a few addresses (unsubscribed, bounced), as every real list has."""
    m = len(points["id"])
    pick = np.flatnonzero(rng.random(m) < 0.012)
    email = points["channel"][pick] == "email"
    reason = np.where(
        email,
        np.where(rng.random(len(pick)) < 0.6, "unsubscribe", "hard_bounce"),
        "unsubscribe",
    ).astype(object)
    # Someone who unsubscribed no longer allows mailing at that address.
    points["mailing_allowed"][pick[reason == "unsubscribe"]] = False
    when = reg_text[points["contact_id"][pick] - 1]
    return {
        "channel": points["channel"][pick],
        "normalized": points["normalized"][pick],
        "reason": reason,
        "detail": np.full(len(pick), DEMO_SUPPRESSION_DETAIL, dtype=object),
        "created_at": when,
    }


# --------------------------------------------------------------------------- loading


def _rows(cols: dict[str, np.ndarray], start: int, stop: int) -> Iterator[tuple[Any, ...]]:
    return zip(*(c[start:stop].tolist() for c in cols.values()), strict=True)


def _load_sqlite(db: Database, tables: dict[str, dict[str, np.ndarray]], bar: tqdm) -> None:
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        cur = conn.cursor()
        # Nothing is lost if the machine dies mid-load (the demo is simply regenerated),
        # so skip the fsyncs for the load only.
        cur.execute("PRAGMA synchronous=OFF")
        # A big page cache keeps the randomly-ordered unique index in memory while loading.
        cur.execute("PRAGMA cache_size=-262144")
        try:
            cur.execute("BEGIN")
            for table, cols in tables.items():
                sql = (
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                )
                total = len(next(iter(cols.values())))
                for start in range(0, total, BATCH_ROWS):
                    stop = min(start + BATCH_ROWS, total)
                    cur.executemany(sql, _rows(cols, start, stop))
                    bar.update(stop - start)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA cache_size=-2000")
            cur.close()
    finally:
        raw.close()


def _pg_text(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn SQLite's naive UTC timestamp text into timestamptz literals for PostgreSQL."""
    out = dict(cols)
    for name in ("registered_at", "created_at", "updated_at"):
        if name in out:
            out[name] = np.strings.add(out[name], "+00")
    return out


def _load_postgresql(db: Database, tables: dict[str, dict[str, np.ndarray]], bar: tqdm) -> None:
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        try:
            with conn.cursor() as cur:
                for table, cols in tables.items():
                    pg_cols = _pg_text(cols)
                    total = len(next(iter(cols.values())))
                    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                        for start in range(0, total, BATCH_ROWS):
                            stop = min(start + BATCH_ROWS, total)
                            for row in _rows(pg_cols, start, stop):
                                copy.write_row(row)
                            bar.update(stop - start)
                    if "id" not in cols:
                        continue
                    # Ids were given explicitly: move the sequence past them.
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"GREATEST((SELECT max(id) FROM {table}), 1))"
                    )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    finally:
        raw.close()


def _prepare(db: Database, replace: bool) -> None:
    """Refuse to mix with real contacts; delete earlier demo data when asked to."""
    with db.session() as s:
        total = s.scalar(sa.select(sa.func.count()).select_from(Contact)) or 0
        demo = (
            s.scalar(
                sa.select(sa.func.count()).select_from(Contact).where(Contact.source == DEMO_SOURCE)
            )
            or 0
        )
        if total > demo:
            raise ConfigError(
                f"{db.url}: holds {total - demo} contacts that are not demo data; "
                "generate the demo into its own database (pass url=... or set BULKMAIL_DB_URL)",
                existing=total - demo,
            )
        if demo and not replace:
            raise ConfigError(
                f"{db.url}: already holds {demo} demo contacts; pass replace=True "
                "(bulkmail demo --replace) to delete them and generate the set anew",
                existing=demo,
            )
        if demo:
            log.info("deleting %d earlier demo contacts from %s", demo, db.url)
            # Points first: one set-based delete beats a cascade per contact on SQLite.
            s.execute(
                sa.text(
                    "DELETE FROM contact_points WHERE contact_id IN "
                    "(SELECT id FROM contacts WHERE source = :src)"
                ),
                {"src": DEMO_SOURCE},
            )
            s.execute(sa.delete(Contact).where(Contact.source == DEMO_SOURCE))
        s.execute(sa.delete(Suppression).where(Suppression.detail == DEMO_SUPPRESSION_DETAIL))


def _write_samples(samples_dir: Path | str | bool | None) -> None:
    if samples_dir is None or samples_dir is False:
        return
    target = config.data_dir() / "samples" if samples_dir is True else Path(samples_dir)
    try:
        from bulkmail_kernel.demo.samples import write_samples
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.samples":
            raise
        log.info("no samples module yet: sample files not written")
        return
    write_samples(target)


def generate_demo(
    contacts: int = 5000,
    *,
    db: Database | None = None,
    url: str | None = None,
    seed: int = DEFAULT_SEED,
    today: date | None = None,
    replace: bool = False,
    progress: bool = True,
    samples_dir: Path | str | bool | None = True,
) -> pd.DataFrame:
    """Fill the database with the deterministic demo data set and return row counts per table.

    Args:
        contacts: How many contacts to create (each gets one to three contact points).
        db: An open database; else ``open_database(url)``.
        url: The database URL when ``db`` is not given (default: ``BULKMAIL_DB_URL`` or
            the SQLite file under ``data/``).
        seed: The random seed; the same seed and ``today`` always give identical rows.
        today: The anchor date: registrations lie in the five years before it, check-ups
            after it (default: today's date).
        replace: Delete earlier demo data first; without it a database that already
            holds contacts is refused.
        progress: Show a progress bar while loading.
        samples_dir: Where ``samples.write_samples`` puts the dirty sample files; True
            (default) means ``<data_dir>/samples``, None or False skips them.

    Returns:
        A frame with columns ``table`` and ``rows``.

    Raises:
        ConfigError: ``contacts`` is not positive, or the database already holds contacts
            (pass ``replace=True`` for earlier demo data; real contacts are never mixed in).

    """
    if contacts < 1:
        raise ConfigError(f"generate_demo: contacts={contacts}: give a positive number")
    db = db or open_database(url)
    today = today or datetime.now(UTC).date()
    started = time.perf_counter()
    _prepare(db, replace)

    with tqdm(total=contacts, unit="rows", desc="demo: generating", disable=not progress) as bar:
        gen = _generate(contacts, seed, today)
        tables = {
            "contacts": gen.contacts,
            "contact_points": gen.points,
            "suppressions": gen.suppressions,
        }
        counts = {name: len(next(iter(cols.values()))) for name, cols in tables.items()}
        log.info("generated %d demo contacts in %.1f s", contacts, time.perf_counter() - started)
        # Generation is one vectorised step; the bar then counts rows as they are written.
        bar.reset(total=sum(counts.values()))
        bar.set_description("demo: loading")
        if db.dialect == "postgresql":
            _load_postgresql(db, tables, bar)
        else:
            _load_sqlite(db, tables, bar)
    log.info("loaded %s into %s in %.1f s", counts, db.url, time.perf_counter() - started)

    _write_samples(samples_dir)
    add_demo_sender(db)
    return pd.DataFrame({"table": list(counts), "rows": list(counts.values())})


#: The demo's sender account sends to ``bulkmail sink`` on this machine, never to the internet.
DEMO_SENDER = "demo"
DEMO_SINK_PORT = 2525


def add_demo_sender(db: Database, *, port: int | None = None) -> None:
    """Create (or point again) the ``demo`` sender account at the local sink."""
    from bulkmail_kernel.providers.accounts import add_sender_account

    env_port: str | int = os.environ.get("BULKMAIL_SINK_PORT", DEMO_SINK_PORT)
    add_sender_account(
        DEMO_SENDER,
        kind="smtp",
        from_email="news@example.com",
        from_name="Demo Firm s.r.o.",
        settings={
            "host": "127.0.0.1",
            "port": int(port or env_port),
            "security": "none",
            # Served by `bulkmail unsubscribe-server` on this machine; a real account
            # points this at the firm's own https site.
            "unsubscribe_url": "http://127.0.0.1:8025/u/{token}",
        },
        db=db,
    )

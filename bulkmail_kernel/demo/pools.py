"""The demo's vocabulary: names, places, pets, mail domains and phone number plans per language.

Slovak, Czech, Russian and English first names and surnames (with the female
surname forms spelled out, since no rule derives them), Russian patronymics, cities,
pet names, the shares of customer types and treatments, the example domains every
demo address lies under, and the number ranges ``phonenumbers`` accepts as valid.
They are data, kept apart from the generator (:mod:`bulkmail_kernel.demo.dataset`)
so that adding a name or a country does not mean reading the vectorised code;
``ascii_name`` turns a name into the ASCII letters of an e-mail local part.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

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

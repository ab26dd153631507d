from __future__ import annotations

import pytest

from bulkmail_kernel.compose.sms import (
    fit_to_gsm7,
    is_gsm7,
    sms_cost,
    sms_fit_preview,
    sms_segments,
)


def test_160_gsm_chars_fit_one_sms():
    info = sms_segments("a" * 160)
    assert (info.encoding, info.segments, info.units, info.per_segment) == ("GSM-7", 1, 160, 160)


def test_161_gsm_chars_need_two_parts_of_153_and_8():
    info = sms_segments("a" * 161)
    assert (info.segments, info.per_segment, info.parts) == (2, 153, (153, 8))


def test_slovak_diacritics_force_ucs2():
    assert not is_gsm7("žltý")
    info = sms_segments("ž" + "a" * 69)
    assert (info.encoding, info.segments, info.units) == ("UCS-2", 1, 70)
    assert sms_segments("ž" + "a" * 70).parts == (67, 4)


@pytest.mark.parametrize("char", ["€", "^", "{", "}", "\\", "[", "~", "]", "|"])
def test_extension_characters_count_double(char):
    info = sms_segments(char * 80)
    assert (info.encoding, info.units, info.segments) == ("GSM-7", 160, 1)
    assert sms_segments(char * 81).segments == 2


def test_gsm_basic_non_ascii_characters_are_single():
    info = sms_segments("äöñüà@£$¥èé")
    assert (info.encoding, info.units) == ("GSM-7", 11)


def test_emoji_costs_two_utf16_units():
    assert sms_segments("😀" * 35).units == 70
    assert sms_segments("😀" * 35).segments == 1
    assert sms_segments("😀" * 36).segments == 2


def test_escape_pair_is_never_split_at_a_part_boundary():
    # 152 septets, then € (2 septets) would straddle the 153 boundary: it moves whole.
    info = sms_segments("a" * 152 + "€" + "a" * 10)
    assert info.units == 164
    assert info.parts == (152, 12)


def test_surrogate_pair_is_never_split_at_a_part_boundary():
    info = sms_segments("ж" * 66 + "😀" + "ж" * 5)
    assert info.units == 73
    assert info.parts == (66, 7)


def test_greedy_split_can_need_an_extra_part():
    # 153*2 = 306 septets of € pairs: 153 is odd, so each part holds only 152.
    info = sms_segments("€" * 153)
    assert info.units == 306
    assert info.segments == 3


def test_empty_text_costs_nothing():
    assert sms_segments("").segments == 0


# --------------------------------------------------------------------------- tricky texts

TRICKY = [
    # text, encoding, segments, parts
    ("a" * 161, "GSM-7", 2, (153, 8)),
    ("a" * 306, "GSM-7", 2, (153, 153)),
    ("a" * 307, "GSM-7", 3, (153, 153, 1)),
    ("ž", "UCS-2", 1, (1,)),
    ("Ďakujeme, že ste s nami!", "UCS-2", 1, (24,)),
    ("Ä é ü ö Ñ ß", "GSM-7", 1, (11,)),
    ("€" * 80, "GSM-7", 1, (160,)),
    ("Cena 10 € [akcia]", "GSM-7", 1, (20,)),
    ("😀", "UCS-2", 1, (2,)),
    ("a" * 66 + "😀", "UCS-2", 1, (68,)),
    ("a" * 69 + "😀", "UCS-2", 2, (67, 4)),
    ("Привет" * 12, "UCS-2", 2, (67, 5)),
    ("line\nbreak\r", "GSM-7", 1, (11,)),
    ("\f", "GSM-7", 1, (2,)),
]


@pytest.mark.parametrize(("text", "encoding", "segments", "parts"), TRICKY)
def test_tricky_texts(text, encoding, segments, parts):
    info = sms_segments(text)
    assert (info.encoding, info.segments, info.parts) == (encoding, segments, parts)
    assert sum(info.parts) == info.units


@pytest.mark.parametrize(
    ("text", "fitted"),
    [
        ("Dobrý deň, Ľubica! Ďakujeme za nákup v Žiline.",
         "Dobry den, Lubica! Dakujeme za nakup v Ziline."),
        ("Здравствуйте, Жанна Щукина!", "Zdravstvuyte, Zhanna Shchukina!"),
        ("Їжак і ґудзик", "Yizhak i gudzik"),  # one table: и is "i" as in Russian
        ("„Zľava“ – 20 % …", '"Zlava" - 20 % ...'),
        ("Ä é ü ö Ñ ß €", "Ä é ü ö Ñ ß €"),  # already GSM-7: kept as is
        ("Łódź", "Lodz"),
        ("Super 😀", "Super ?"),
    ],
)  # fmt: skip
def test_fit_to_gsm7(text, fitted):
    out = fit_to_gsm7(text)
    assert out == fitted
    assert is_gsm7(out)


def test_fit_to_gsm7_halves_the_cost_of_a_slovak_text():
    text = "Dobrý deň, pani Nováková! Vaša objednávka č. 12345 je pripravená na vyzdvihnutie."
    preview = sms_fit_preview([text, "Ahoj"], price_per_segment=0.05)
    row = preview.iloc[0]
    assert (row["encoding"], row["segments"]) == ("UCS-2", 2)
    assert (row["fitted_encoding"], row["fitted_segments"]) == ("GSM-7", 1)
    assert row["cost"] == pytest.approx(0.10)
    assert row["saving"] == pytest.approx(0.05)
    assert preview.iloc[1]["saving"] == 0
    assert str(preview["segments"].dtype) == "int64"


def test_sms_cost_counts_segments_and_recipients():
    assert sms_cost("a" * 161, 0.04, recipients=100) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="non-negative"):
        sms_cost("a", -1)

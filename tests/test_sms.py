from __future__ import annotations

import pytest

from bulkmail_kernel.sms import is_gsm7, sms_segments


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

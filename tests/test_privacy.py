"""Personal data in transcripts (telephony/review/privacy.py): 身份证号 with its check character, mobile numbers and
bank cards (Luhn), written in Arabic or Chinese digits, in groups or not; masked, and ordinary numbers left alone."""

from __future__ import annotations

import pytest

from telephony.review.privacy import PersonalKind, find_personal, id_card_valid, luhn_valid, mask_personal

VALID_ID = "11010519491231002X"  # the GB 11643-1999 worked example
VALID_CARD = "6222021234567894"  # Luhn-valid


def test_the_id_check_character_and_birth_date_are_verified() -> None:
    assert id_card_valid(VALID_ID)
    assert not id_card_valid("110105194912310021")  # wrong check character
    assert not id_card_valid("110105194913310026")  # month 13
    assert not id_card_valid("1101051949123100")  # too short


def test_luhn() -> None:
    assert luhn_valid(VALID_CARD) and luhn_valid("4111111111111111")
    assert not luhn_valid("6222021234567892") and not luhn_valid("62220212345678X4")


@pytest.mark.parametrize(("text", "masked", "kinds"), [
    (f"我的身份证号是{VALID_ID}，手机13812345678", "我的身份证号是110105************，手机138****5678",
     ["id_card", "mobile"]),
    ("电话幺三八 一二三四 五六七八", "电话138****5678", ["mobile"]),
    ("号码是一三八零零零零零零零零对", "号码是138****0000对", ["mobile"]),
    ("+86 138-1234-5678", "138****5678", ["mobile"]),
    ("卡号6222 0212 3456 7894 谢谢", "卡号************7894 谢谢", ["bank_card"]),
    ("110105 19491231 002X", "110105************", ["id_card"]),
    ("13812345678，13900001111", "138****5678，139****1111", ["mobile", "mobile"]),
    ("13812345678 2次", "138****5678 2次", ["mobile"]),
    # a card read with a wrong digit, an ID with a wrong check character: still long numbers, still masked
    ("卡号6222 0212 3456 7892", "卡号622202**********", ["long_number"]),
    ("110105194912310021", "110105************", ["long_number"]),
])
def test_personal_data_is_masked(text: str, masked: str, kinds: list[str]) -> None:
    assert mask_personal(text) == masked
    assert [item.kind.value for item in find_personal(text)] == kinds


@pytest.mark.parametrize("text", ["2026年1月1日起缴费基数调整", "共12345元", "拨打12333咨询", "第1、2、3、4、5项",
                                  "0773-1234567", "养老保险缴费满15年", ""])
def test_ordinary_numbers_are_left_alone(text: str) -> None:
    assert mask_personal(text) == text
    assert find_personal(text) == []


def test_what_a_mask_keeps() -> None:
    [mobile] = find_personal("13812345678")
    assert (mobile.kind, mobile.digits, mobile.masked) == (PersonalKind.MOBILE, "13812345678", "138****5678")
    [card] = find_personal(VALID_CARD)
    assert card.masked.endswith("7894") and "622202" not in card.masked  # the last four, as statements show
    [person] = find_personal(VALID_ID.lower())
    assert person.kind is PersonalKind.ID_CARD and person.masked == "110105" + "*" * 12

"""The SMS as sent: carrier length rules, the cap's shortening rule, and the numbers a guide may go to."""

from __future__ import annotations

import pytest

from kb.loader import load_knowledge_base
from kb.sms_text import compose_sms
from telephony.sms.compose import (
    GuideTooLongError,
    InvalidNumberError,
    compose_guide,
    mask,
    mobile_number,
    segment_count,
    sms_length,
)

PHONE = "0773-0000000"


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


@pytest.mark.parametrize(("length", "segments"), [(0, 0), (1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (500, 8)])
def test_segments_follow_the_70_and_67_rule(length: int, segments: int) -> None:
    assert segment_count("社" * length) == segments


def test_an_emoji_counts_two_and_ascii_counts_one() -> None:
    assert sms_length("社保😀") == 4 and sms_length("12333 ok") == 8


def test_a_guide_that_fits_is_sent_whole_with_code_appended_basis_phone_and_signature(kb) -> None:
    item = kb.get("card-loss-report")
    sent = compose_guide(item, PHONE, "桂林社保")
    assert sent.body == compose_sms(item, PHONE, "桂林社保") and not sent.shortened
    assert sent.body.endswith(f"咨询电话：{PHONE}【桂林社保】") and "依据：《" in sent.body
    assert sent.length == sms_length(sent.body) <= 500 and sent.segments == segment_count(sent.body) >= 2


def test_a_low_cap_shortens_by_one_rule_keeping_the_basis_and_pointing_to_12333(kb) -> None:
    item = kb.get("injury-disability-benefits")
    full = compose_guide(item, PHONE, "桂林社保")
    short = compose_guide(item, PHONE, "桂林社保", cap=220, guide_base_url="https://rsj.example.gov.cn/guide/")
    assert short.shortened and short.length <= 220 < full.length
    assert short.body.startswith(item.sms.strip().splitlines()[0])  # what the guide is about stays
    assert "完整指南请咨询12333或查看https://rsj.example.gov.cn/guide/injury-disability-benefits。" in short.body
    assert short.body.endswith(f"咨询电话：{PHONE}【桂林社保】") and "《工伤保险条例》" in short.body
    assert compose_guide(item, PHONE, "桂林社保", cap=220) == compose_guide(item, PHONE, "桂林社保", cap=220)
    with pytest.raises(GuideTooLongError, match="exceed 40 characters"):
        compose_guide(item, PHONE, "桂林社保", cap=40)


@pytest.mark.parametrize(("raw", "number"), [("13800000000", "13800000000"), ("+86 138-0000-0000", "13800000000"),
                                             ("008613800000000", "13800000000"), ("8613800000000", "13800000000")])
def test_mainland_mobile_numbers_are_normalised(raw: str, number: str) -> None:
    assert mobile_number(raw) == number


@pytest.mark.parametrize(("raw", "why"), [("0773-2825000", "is a landline"), ("+1 415 555 0100", "not a mainland"),
                                          ("1380000000", "10 digits"), ("", "withheld or empty"), ("anonymous", "other than"),
                                          ("12800000000", "11 digits")])
def test_other_numbers_get_a_clear_error_and_are_never_retried(raw: str, why: str) -> None:
    with pytest.raises(InvalidNumberError, match=why) as caught:
        mobile_number(raw)
    assert caught.value.retryable is False
    assert "2825000" not in str(caught.value) and "5550100" not in str(caught.value)  # masked in the message


def test_masking_keeps_three_and_four_digits() -> None:
    assert mask("13812345678") == "138****5678" and mask("12345") == "*****"

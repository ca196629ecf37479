"""The SMS as the caller's phone receives it: the item's guide, its policy basis and the centre's phone, within the
length a domestic SMS may have, and the mobile number it may go to.

Length follows the Chinese carriers' rule (the same on Aliyun and Tencent Cloud): the signature 【…】 and the body
together, every character, letter, digit, punctuation mark and space counting 1 (UTF-16 code units, so an emoji
counts 2). Up to 70 is one message; above that the message is sent in parts of 67 (a 6-octet concatenation header
takes the rest of 140 octets of UCS-2), shown as one message on the handset. A send is capped (500 by default).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kb.schema import ServiceItem
from kb.sms_text import sms_footer
from telephony.sms.base import SmsError

SINGLE_SEGMENT_CHARS = 70
CONCATENATED_SEGMENT_CHARS = 67
DEFAULT_CAP_CHARS = 500
NATIONAL_HOTLINE = "12333"
# Sentences that only illustrate («例如…», «比如…»): the first thing a shortened guide drops.
_EXAMPLE = re.compile(r"[（(]?(例如|比如|举例|如：)[^。；\n）)]*[。；）)]?")
_MOBILE = re.compile(r"^1[3-9]\d{9}$")


class InvalidNumberError(SmsError):
    """The number cannot receive the guide: not a mainland mobile number."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class GuideTooLongError(SmsError):
    """Even the policy basis, the phone and the signature do not fit the cap."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def sms_length(text: str) -> int:
    """Characters as the carriers count them: UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def segment_count(text: str) -> int:
    length = sms_length(text)
    if length == 0:
        return 0
    return 1 if length <= SINGLE_SEGMENT_CHARS else math.ceil(length / CONCATENATED_SEGMENT_CHARS)


def mobile_number(raw: str) -> str:
    """The 11-digit mainland mobile number in `raw` (spaces, dashes, +86, 0086 or 86 allowed); `InvalidNumberError`
    for a landline, a number in another country, a withheld or malformed number."""
    digits = re.sub(r"[\s\-()（）]", "", raw or "")
    if not digits:
        raise InvalidNumberError("no number: the caller ID is withheld or empty")
    if digits.startswith("+"):
        if not digits.startswith("+86"):
            raise InvalidNumberError(f"{mask(digits)} is not a mainland China number")
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if not digits.isdigit():
        raise InvalidNumberError("the number has characters other than digits")
    if not _MOBILE.match(digits):
        kind = "a landline" if digits.startswith("0") else f"{len(digits)} digits, not an 11-digit mobile number"
        raise InvalidNumberError(f"{mask(digits)} is {kind}")
    return digits


def mask(number: str) -> str:
    """The number as logs and consoles show it: the first three and last four digits only."""
    if len(number) <= 7:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


@dataclass(frozen=True)
class ComposedSms:
    item_id: str
    body: str  # as sent, signature included
    length: int
    segments: int
    shortened: bool


def compose_guide(item: ServiceItem, phone: str, signature: str, cap: int = DEFAULT_CAP_CHARS,
                  guide_base_url: str | None = None) -> ComposedSms:
    """The item's full guide within `cap` characters. The footer (依据 with 文号, the centre's phone, the signature)
    is code's and always kept. When the whole does not fit, the same rule always applies, in order: drop example
    sentences; then drop guide lines from the end, keeping the first (what the guide is about), and point to 12333
    and, when the bureau set a base URL, the item's public guide page; then keep only the first policy document."""
    guide = item.sms.strip()
    footer = sms_footer(item, phone, signature)
    whole = guide + footer
    if sms_length(whole) <= cap:
        return ComposedSms(item.id, whole, sms_length(whole), segment_count(whole), False)
    guide = _EXAMPLE.sub("", guide)
    pointer = f"\n完整指南请咨询{NATIONAL_HOTLINE}" + (f"或查看{guide_base_url.rstrip('/')}/{item.id}"
                                                  if guide_base_url else "") + "。"
    first_basis_only = sms_footer(item.model_copy(update={"policy_basis": item.policy_basis[:1]}), phone, signature)
    for tail in (footer, first_basis_only):
        lines = guide.splitlines()
        while lines:
            text = "\n".join(lines) + ("" if len(lines) == len(guide.splitlines()) else pointer) + tail
            if sms_length(text) <= cap:
                return ComposedSms(item.id, text, sms_length(text), segment_count(text), True)
            lines.pop()
    raise GuideTooLongError(f"{item.id}: the policy basis, phone and signature alone exceed {cap} characters")

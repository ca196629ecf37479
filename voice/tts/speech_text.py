"""Text rewritten for a rule-based synthesizer: numbers read as people say them, no URLs, markup or emoji."""

from __future__ import annotations

import math
import re
import unicodedata

_DIGIT_READINGS = str.maketrans("0123456789", "零幺二三四五六七八九")  # phone numbers say 幺 for 1
_DECIMAL_DIGIT_READINGS = str.maketrans("0123456789", "零一二三四五六七八九")  # digits after 点 are read one by one
_FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")
_URL = re.compile(r"(?:https?://|www\.)[^\s，。；！？、）)]*", re.IGNORECASE)
_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LINE_MARKERS = re.compile(r"^\s*(?:#+|>+|[-*+]\s|\d+\.\s)\s*", re.MULTILINE)
_SYMBOLS_READ_ALOUD = re.compile(r"[*#_`~|\\<>{}\[\]^=@&$]+")
_HYPHENATED_PHONE = re.compile(r"(?<!\d)(\d{3,4})-(\d{7,8})(?!\d)")
_LONG_DIGITS = re.compile(r"(?<![\d.])\d{7,}(?![\d.元块])")  # phone, ID and account numbers, not amounts
_SERVICE_NUMBER = re.compile(r"(?<![\d.])123\d\d(?![\d.%元块万])")  # 12333, 12345, ... government hotlines
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")


def _digit_groups(digits: str) -> str:
    """Digit by digit in the groups people say: mobile 3-4-4, 7-digit local 3-4, anything else in fours."""
    if len(digits) == 11 and digits.startswith("1"):
        sizes: tuple[int, ...] = (3, 4, 4)
    else:
        sizes = (3, 4) if len(digits) == 7 else (4,) * math.ceil(len(digits) / 4)
    groups, position = [], 0
    for size in sizes:
        groups.append(digits[position:position + size].translate(_DIGIT_READINGS))
        position += size
    return " ".join(group for group in groups if group)


def normalize_text_for_speech(text: str) -> str:
    """Rewrite text so a rule-based synthesizer reads it naturally: numbers as people say them, no URLs or markup."""
    text = text.translate(_FULL_WIDTH_DIGITS)
    text = _MARKDOWN_LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _LINE_MARKERS.sub("", text)
    text = _SYMBOLS_READ_ALOUD.sub(" ", text)
    text = "".join(character for character in text if unicodedata.category(character) != "So")  # emoji
    text = _HYPHENATED_PHONE.sub(lambda match: f"{_digit_groups(match[1])} {_digit_groups(match[2])}", text)
    text = _LONG_DIGITS.sub(lambda match: _digit_groups(match[0]), text)
    text = _SERVICE_NUMBER.sub(lambda match: match[0].translate(_DIGIT_READINGS), text)
    text = _PERCENT.sub(r"百分之\1", text)  # espeak-ng says "percent" in English
    text = _DECIMAL.sub(lambda match: f"{match[1]}点{match[2].translate(_DECIMAL_DIGIT_READINGS)}", text)
    return re.sub(r"\s+", " ", text).strip()

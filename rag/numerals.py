"""Chinese and Arabic numerals in caller speech: 一九六五年十月, 六五年, 1965.10, 十二年, 两年半."""

from __future__ import annotations

import re

DIGITS = {"零": 0, "〇": 0, "○": 0, "一": 1, "幺": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
          "七": 7, "八": 8, "九": 9}
UNITS = {"十": 10, "百": 100, "千": 1000}
_NUMBER = "[零〇○一幺二两三四五六七八九十百千0-9]+"


def chinese_to_int(text: str) -> int | None:
    """'一九六五' -> 1965 (digit by digit), '二十五' -> 25, '十二' -> 12, '65' -> 65."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    if all(char in DIGITS for char in text):
        return int("".join(str(DIGITS[char]) for char in text))
    total, current = 0, 0
    for char in text:
        if char in DIGITS:
            current = DIGITS[char]
        elif char in UNITS:
            total += (current or 1) * UNITS[char]
            current = 0
        elif char.isdigit():
            current = current * 10 + int(char)
        else:
            return None
    return total + current


def full_year(value: int) -> int:
    """Two-digit years as callers say them: 六五年 -> 1965, 05年 -> 2005."""
    if value >= 100:
        return value
    return 1900 + value if value >= 30 else 2000 + value


def find_year_month(text: str) -> tuple[int | None, int | None]:
    """The first year (and month, if said) in the text, e.g. birth date '1965年10月' -> (1965, 10)."""
    match = re.search(rf"({_NUMBER})\s*[年.．/-]\s*(?:({_NUMBER})\s*(?:月|份|月份)?)?", text)
    if not match:
        return None, None
    if re.search("[十百千]", match.group(1)):
        return None, None  # a year is said digit by digit (一九七零年, 七零年); 「交了十年」 is a duration
    year = chinese_to_int(match.group(1))
    if year is None or not (10 <= year <= 2100 or year < 100):
        return None, None
    month = chinese_to_int(match.group(2)) if match.group(2) else None
    if month is not None and not 1 <= month <= 12:
        month = None
    return full_year(year), month


def find_years_amount(text: str) -> float | None:
    """A duration in years: '交了十二年' -> 12, '两年半' -> 2.5, '6年7个月' -> 6.58."""
    match = re.search(rf"({_NUMBER})\s*年\s*(半|(?:({_NUMBER})\s*个?月))?", text)
    if not match:
        match_months = re.search(rf"({_NUMBER})\s*个月", text)
        if match_months:
            months = chinese_to_int(match_months.group(1))
            return round(months / 12, 2) if months is not None else None
        return None
    spoken = match.group(1)
    years = chinese_to_int(spoken)
    if len(spoken) == 2 and all(char in DIGITS for char in spoken) and DIGITS[spoken[1]] == DIGITS[spoken[0]] + 1:
        years = DIGITS[spoken[0]]  # "六七年" is a range: six or seven years; take the lower bound
    if years is None or years > 60:
        return None
    extra = 0.0
    if match.group(2) == "半":
        extra = 0.5
    elif match.group(3):
        months = chinese_to_int(match.group(3)) or 0
        extra = months / 12
    return round(years + extra, 2)

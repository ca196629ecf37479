"""Personal data in free text (transcripts, SMS text, exports): 身份证号, mobile numbers and bank card numbers,
found and masked for roles without the right to see them.

A caller reads these out, so the ASR writes them in Arabic digits, in Chinese digits (幺三八…, 两, 洞) or a mix, with
spaces, dashes or commas between groups. A run of such characters is read as one digit string, then classified:

- 身份证号 (GB 11643-1999): 18 characters, the last a digit or X, a plausible birth date, and the ISO 7064 MOD 11-2
  check character right. A run of 18 that fails the check is still masked as a long number: a caller who misread one
  digit said personal data all the same.
- mobile: 11 digits starting 13–19 (mainland numbering plan), with or without +86 / 86 in front.
- bank card: 16–19 digits passing the Luhn check.
- any other run of 15 or more digits is masked too (an old 15-digit 身份证号, a card read with a digit missing): masking
  a harmless long number costs a supervisor a little, showing a real one costs the caller their privacy.

What shows: the first three and last four digits of a mobile (138****0000, as elsewhere in the hotline), the first six
(region) and nothing else of a 身份证号 or long number, and the last four digits of a bank card (as bank statements do).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum

CHINESE_DIGITS = {"零": "0", "〇": "0", "洞": "0", "一": "1", "幺": "1", "壹": "1", "二": "2", "两": "2", "贰": "2",
                  "三": "3", "叁": "3", "四": "4", "肆": "4", "五": "5", "伍": "5", "六": "6", "陆": "6", "七": "7",
                  "拐": "7", "柒": "7", "八": "8", "捌": "8", "九": "9", "勾": "9", "玖": "9"}
_DIGIT = "0-9０-９" + "".join(CHINESE_DIGITS)
_SEPARATOR = r"[ \u3000\-–—,，.、]"
# A run: digits (either script), single separators between them, and an ID's final X. Starts and ends on a digit/X.
RUN = re.compile(rf"(?:\+?86{_SEPARATOR}?)?[{_DIGIT}](?:{_SEPARATOR}?[{_DIGIT}])*(?:{_SEPARATOR}?[xX×])?")
_SEPARATOR_RE = re.compile(_SEPARATOR)
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
LONG_NUMBER_DIGITS = 15


class PersonalKind(StrEnum):
    ID_CARD = "id_card"
    MOBILE = "mobile"
    BANK_CARD = "bank_card"
    LONG_NUMBER = "long_number"


@dataclass(frozen=True)
class PersonalData:
    kind: PersonalKind
    start: int  # in the text as given
    end: int
    digits: str  # normalised: ASCII digits (and an ID's X)
    masked: str


def _digits(run: str) -> str:
    out = []
    for char in run:
        if char in CHINESE_DIGITS:
            out.append(CHINESE_DIGITS[char])
        elif "0" <= char <= "9":
            out.append(char)
        elif "０" <= char <= "９":
            out.append(chr(ord(char) - ord("０") + ord("0")))
        elif char in "xX×":
            out.append("X")
    return "".join(out)


def id_card_valid(value: str) -> bool:
    """An 18-character 身份证号 with a real birth date and the right MOD 11-2 check character."""
    if not re.fullmatch(r"\d{17}[\dX]", value):
        return False
    try:
        birth = dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if not dt.date(1900, 1, 1) <= birth <= dt.date.today():
        return False
    total = sum(int(digit) * weight for digit, weight in zip(value[:17], ID_WEIGHTS, strict=True))
    return ID_CHECK[total % 11] == value[17]


def luhn_valid(value: str) -> bool:
    if not value.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(value)):
        digit = int(char)
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _classify(digits: str) -> PersonalKind | None:
    national = digits[2:] if digits.startswith("86") and len(digits) == 13 else digits
    if re.fullmatch(r"1[3-9]\d{9}", national):
        return PersonalKind.MOBILE
    if len(digits) == 18 and id_card_valid(digits):
        return PersonalKind.ID_CARD
    if 16 <= len(digits) <= 19 and digits.isdigit() and luhn_valid(digits):
        return PersonalKind.BANK_CARD
    if len(digits) >= LONG_NUMBER_DIGITS:
        return PersonalKind.LONG_NUMBER
    return None


def _masked(kind: PersonalKind, digits: str) -> str:
    if kind is PersonalKind.MOBILE:
        national = digits[-11:]
        return f"{national[:3]}****{national[-4:]}"
    if kind is PersonalKind.BANK_CARD:
        return "*" * (len(digits) - 4) + digits[-4:]
    return digits[:6] + "*" * (len(digits) - 6)  # 身份证号 and long numbers: the region code only


_GROUP = re.compile(rf"(?:\+?86{_SEPARATOR}?)?[{_DIGIT}]+(?:[xX×])?")


def _in_run(run: str, offset: int) -> list[PersonalData]:
    """The personal data in one run. The run as a whole first; else its groups (between separators), the longest
    span of consecutive groups that is personal data first: 「13812345678，2次」 or two numbers read one after the
    other are still found."""
    digits = _digits(run)
    kind = _classify(digits) if len(digits) >= 11 else None
    if kind is not None and not (kind is PersonalKind.LONG_NUMBER and _SEPARATOR_RE.search(run)):
        return [PersonalData(kind, offset, offset + len(run), digits, _masked(kind, digits))]
    groups = [(match.start(), match.end(), _digits(match.group())) for match in _GROUP.finditer(run)]
    found, index = [], 0
    while index < len(groups):
        span = _span_at(groups, index, long_numbers=False) or _span_at(groups, index, long_numbers=True)
        if span is None:
            index += 1
            continue
        last, kind, joined = span
        found.append(PersonalData(kind, offset + groups[index][0], offset + groups[last][1], joined,
                                  _masked(kind, joined)))
        index = last + 1
    return found


def _span_at(groups: list[tuple[int, int, str]], index: int, long_numbers: bool
             ) -> tuple[int, PersonalKind, str] | None:
    """The longest span of groups from `index` that is a mobile, 身份证号 or bank card (or, with `long_numbers`, any
    long number): (its last group, kind, digits)."""
    for last in range(len(groups) - 1, index - 1, -1):
        joined = "".join(group[2] for group in groups[index:last + 1])
        kind = _classify(joined) if len(joined) >= 11 else None
        if kind is not None and (long_numbers or kind is not PersonalKind.LONG_NUMBER):
            return last, kind, joined
    return None


def find_personal(text: str) -> list[PersonalData]:
    """Every 身份证号, mobile number, bank card and long number in `text`, in order."""
    found: list[PersonalData] = []
    for match in RUN.finditer(text):
        found.extend(_in_run(match.group(), match.start()))
    return found


def mask_personal(text: str) -> str:
    """`text` with every piece of personal data replaced by its masked form."""
    if not text:
        return text
    parts, last = [], 0
    for item in find_personal(text):
        parts.append(text[last:item.start])
        parts.append(item.masked)
        last = item.end
    parts.append(text[last:])
    return "".join(parts)

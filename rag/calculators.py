"""Policy calculators: statutory retirement age (2025 reform), minimum contribution years, unemployment months.

Numbers come from these rules, never from a language model. Sources:
- 全国人民代表大会常务委员会关于实施渐进式延迟法定退休年龄的决定 (2024-09-13) and its 国务院关于渐进式延迟
  法定退休年龄的办法: from 2025-01-01 over 15 years, men 60→63 and women originally 55→58 by one month
  every four months; women originally 50→55 by one month every two months; minimum contribution for a
  monthly pension 15 years until 2029, then +6 months a year from 2030 up to 20 years.
- 中华人民共和国社会保险法 第四十六条 / 失业保险条例 第十七条: unemployment benefit for at most 12, 18 or
  24 months after 1–5, 5–10 and 10+ years of contribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class RetirementCategory(StrEnum):
    MALE = "male"              # 男职工, originally 60
    FEMALE_55 = "female_55"    # 女职工 originally 55 (管理、技术岗位 / 干部)
    FEMALE_50 = "female_50"    # 女职工 originally 50 (工人岗位)


@dataclass(frozen=True)
class ReformRule:
    original_age_years: int
    reform_start_birth_year: int  # people born from January of this year are affected
    months_per_delay_month: int
    max_delay_months: int


RULES = {
    RetirementCategory.MALE: ReformRule(60, 1965, 4, 36),
    RetirementCategory.FEMALE_55: ReformRule(55, 1970, 4, 36),
    RetirementCategory.FEMALE_50: ReformRule(50, 1975, 2, 60),
}

MIN_YEARS_BEFORE_2030 = 15.0
MIN_YEARS_CAP = 20.0


@dataclass(frozen=True)
class RetirementAge:
    category: RetirementCategory
    birth_year: int
    birth_month: int
    delay_months: int
    age_years: int
    age_months: int
    retire_year: int
    retire_month: int

    @property
    def age_text(self) -> str:
        return f"{self.age_years}岁" + (f"{self.age_months}个月" if self.age_months else "")


def retirement_age(category: RetirementCategory, birth_year: int, birth_month: int) -> RetirementAge:
    if not 1 <= birth_month <= 12:
        raise ValueError("birth month must be 1..12")
    rule = RULES[category]
    months_since_start = (birth_year - rule.reform_start_birth_year) * 12 + birth_month
    delay = 0 if months_since_start <= 0 else min(rule.max_delay_months, math.ceil(months_since_start / rule.months_per_delay_month))
    total_months = rule.original_age_years * 12 + delay
    # The month in which the person reaches the age: birth month + total months.
    absolute = birth_year * 12 + (birth_month - 1) + total_months
    return RetirementAge(category, birth_year, birth_month, delay, total_months // 12, total_months % 12,
                         absolute // 12, absolute % 12 + 1)


def minimum_contribution_years(retire_year: int) -> float:
    """Years of contribution needed for a monthly pension when reaching retirement age in `retire_year`."""
    if retire_year <= 2029:
        return MIN_YEARS_BEFORE_2030
    return min(MIN_YEARS_CAP, MIN_YEARS_BEFORE_2030 + 0.5 * (retire_year - 2029))


def years_text(years: float) -> str:
    whole = int(years)
    return f"{whole}年" + ("6个月" if years - whole >= 0.5 else "")


def unemployment_benefit_months(contribution_years: float) -> int:
    """Longest unemployment benefit period for cumulative contribution years (0 when under one year)."""
    if contribution_years < 1:
        return 0
    if contribution_years < 5:
        return 12
    if contribution_years < 10:
        return 18
    return 24


# -- understanding a caller's calculator question ----------------------------------------------

import re  # noqa: E402 - the parsing half of the module

from rag import phrases  # noqa: E402
from rag.numerals import find_year_month, find_years_amount  # noqa: E402

RETIREMENT_ITEM = "retirement-age-query"
MIN_YEARS_ITEM = "insufficient-years-extension"
UNEMPLOYMENT_ITEM = "unemployment-benefit-application"

_RETIRE_WORDS = re.compile(r"退休|退得|能退|可以退|领养老金|领退休金|延迟")
_BIRTH_WORDS = re.compile(r"出生|生的|生人|属[鼠牛虎兔龙蛇马羊猴鸡狗猪]")  # not 家属 / 属于
# "我什么时候退休" asks for the caller's own date even without a birth date: ask for it.
_WHEN_RETIRE = re.compile(r"(什么时候|啥时候|哪年|哪一年|几岁|多少岁|哪个月)(能|可以|才能|就能|该|要)?退休")
_MIN_YEARS_WORDS = re.compile(r"最低缴费|最少(要)?交|最少缴|交满几年|交多少年|要交几年|交够几年|缴费年限")
_UNEMPLOYMENT_WORDS = re.compile(r"失业(保险)?金|失业保险")
_MONTHS_WORDS = re.compile(r"几个月|多少个月|多久|多长时间|领多长")
_MALE = re.compile(r"男|老公|丈夫|老头|爸|父亲|儿子|哥|弟|爷|先生|他")
_FEMALE = re.compile(r"女|老婆|妻子|爱人|媳妇|妈|母亲|女儿|姐|妹|奶|太太|她")
_FEMALE_50 = re.compile(r"50岁|五十岁|工人|原来50|原50|车间|生产岗|一线")
_FEMALE_55 = re.compile(r"55岁|五十五|干部|管理|技术岗|原来55|原55|办公室")


@dataclass(frozen=True)
class CalculatorAnswer:
    item_id: str
    spoken: str
    complete: bool  # False: `spoken` asks for what is missing
    reason: str


def _month_text(year: int, month: int | None) -> str:
    return f"{year}年{month}月" if month else f"{year}年"


def retirement_question(text: str) -> CalculatorAnswer | None:
    year, month = find_year_month(text)
    if year is not None and not 1930 <= year <= 2010:
        return None  # not a birth year: "2032年退休" is about the retirement year
    if not _RETIRE_WORDS.search(text) or not (year or _BIRTH_WORDS.search(text) or _WHEN_RETIRE.search(text)):
        return None
    if year is None:
        return CalculatorAnswer(RETIREMENT_ITEM, phrases.ASK_BIRTH, False, "retirement calculator: birth date missing")
    male, female = bool(_MALE.search(text)), bool(_FEMALE.search(text))
    if male == female:
        return CalculatorAnswer(RETIREMENT_ITEM, phrases.ASK_GENDER, False, "retirement calculator: gender missing")
    if male:
        category, who = RetirementCategory.MALE, "男职工"
    elif _FEMALE_50.search(text) and not _FEMALE_55.search(text):
        category, who = RetirementCategory.FEMALE_50, "原50岁退休的女职工"
    elif _FEMALE_55.search(text):
        category, who = RetirementCategory.FEMALE_55, "原55岁退休的女职工"
    else:
        return CalculatorAnswer(RETIREMENT_ITEM, phrases.ASK_FEMALE_CATEGORY, False,
                                "retirement calculator: female category missing")
    result = retirement_age(category, year, month or 12)
    # Without a month, December is the latest case; say so by naming only the year.
    when = f"{result.retire_year}年{result.retire_month}月" if month else f"最晚{result.retire_year}年{result.retire_month}月"
    template = phrases.RETIREMENT_UNCHANGED if result.delay_months == 0 else phrases.RETIREMENT_RESULT
    spoken = template.format(birth=_month_text(year, month), who=who, age=result.age_text, when=when)
    return CalculatorAnswer(RETIREMENT_ITEM, spoken, True,
                            f"retirement calculator: {category.value} born {year}-{month or 12}, delay {result.delay_months} months")


def minimum_years_question(text: str) -> CalculatorAnswer | None:
    if not _MIN_YEARS_WORDS.search(text):
        return None
    match = re.search(r"(20[2-9]\d)\s*年", text)
    if match is None:
        return None  # a general question: the KB item answers it
    year = int(match.group(1))
    spoken = phrases.MIN_YEARS_RESULT.format(year=year, years=years_text(minimum_contribution_years(year)))
    return CalculatorAnswer(MIN_YEARS_ITEM, spoken, True, f"minimum-years calculator: retirement year {year}")


def unemployment_question(text: str) -> CalculatorAnswer | None:
    if not (_UNEMPLOYMENT_WORDS.search(text) and _MONTHS_WORDS.search(text)):
        return None
    years = find_years_amount(text)
    if years is None:
        return None  # the KB item explains the general rule
    months = unemployment_benefit_months(years)
    if months == 0:
        return CalculatorAnswer(UNEMPLOYMENT_ITEM, phrases.UNEMPLOYMENT_TOO_SHORT, True,
                                f"unemployment calculator: {years} years")
    shown = int(years) if years == int(years) else years
    spoken = phrases.UNEMPLOYMENT_RESULT.format(years=shown, months=months)
    return CalculatorAnswer(UNEMPLOYMENT_ITEM, spoken, True, f"unemployment calculator: {years} years -> {months} months")


def calculate(question: str, previous_questions: tuple[str, ...] = ()) -> CalculatorAnswer | None:
    """A calculator answer when the question (with what the caller said just before) needs numbers."""
    for text in (question, " ".join([*previous_questions[-2:], question])):
        for parser in (minimum_years_question, unemployment_question, retirement_question):
            result = parser(text)
            if result is not None and (result.complete or text is question):
                return result
    return None

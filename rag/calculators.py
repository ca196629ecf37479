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

"""The office-hours calendar: whether a human agent is on duty (kb/office_hours.yaml, docs/office_hours.md).

In hours the hotline can offer a warm transfer; after hours it opens a callback ticket and tells the caller when
agents are back (`describe_next_opening`). Bureau staff edit the YAML file; `hotline hours check` validates it.

Rules, in order, for a calendar date:

1. a public holiday of the year's entry (the State Council notice, then the regional notice) is closed all day;
2. a 调休 working day (a weekend day the notice makes a working day) keeps the hours of the weekday named by
   `working_day_hours` (Monday by default);
3. any other day keeps its weekday's hours from `weekly`.

The regional layer (e.g. Guangxi's 壮族三月三) overrides the State Council's for the dates it lists. A year whose
notice is not in the file (`published: false`, or no entry at all) has unknown dates: such days follow rule 3,
`is_known` is false for them and `check` warns.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from telephony.errors import TelephonyError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SPOKEN_WEEKDAYS = ("一", "二", "三", "四", "五", "六", "日")
# The festivals of 《全国年节及纪念日放假办法》 every State Council notice arranges (names may be combined,
# e.g. "国庆节、中秋节" when the two fall together).
STATUTORY_FESTIVALS = ("元旦", "春节", "清明节", "劳动节", "端午节", "中秋节", "国庆节")
DEFAULT_WORKING_DAY_HOURS = "mon"
SEARCH_DAYS = 400  # how far `next_opening` looks ahead

_TOP_KEYS = ("timezone", "unverified", "confirm", "weekly", "working_day_hours", "years")
_UNVERIFIABLE = ("timezone", "weekly", "working_day_hours", "years")
_LAYER_KEYS = ("published", "source", "note", "holidays", "working_days")
_YEAR_KEYS = (*_LAYER_KEYS, "regional")
_SOURCE_KEYS = ("title", "document", "url", "issued")
_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class OfficeHoursError(TelephonyError):
    """The office-hours file is missing, not YAML, or breaks the format; `problems` lists every fault."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        super().__init__(f"{path}: " + "; ".join(self.problems))


@dataclass(frozen=True)
class Period:
    """A duty period of one day in minutes after midnight: start included, end excluded."""

    start: int
    end: int

    def contains(self, moment: dt.time) -> bool:
        seconds = moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6
        return self.start * 60 <= seconds < self.end * 60

    def __str__(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


@dataclass(frozen=True)
class Source:
    title: str
    document: str
    url: str
    issued: dt.date | None = None


@dataclass(frozen=True)
class Layer:
    """The dates of one notice: the State Council's for the whole country, or a region's."""

    published: bool
    source: Source | None = None
    note: str = ""
    holidays: dict[dt.date, str] = field(default_factory=dict)      # date → festival name
    working_days: dict[dt.date, str] = field(default_factory=dict)  # date → the festival it makes up for


@dataclass(frozen=True)
class YearCalendar:
    year: int
    national: Layer
    regional: Layer | None = None

    @property
    def published(self) -> bool:
        return self.national.published


class DayKind(StrEnum):
    ORDINARY = "ordinary"          # the weekday's own hours (weekends usually have none)
    HOLIDAY = "holiday"            # closed all day
    WORKING_DAY = "working_day"    # 调休: a weekend day worked with `working_day_hours`' hours


@dataclass(frozen=True)
class Day:
    date: dt.date
    kind: DayKind
    hours: tuple[Period, ...]
    name: str = ""      # the holiday, or the festival a working day makes up for
    known: bool = True  # false where the year's notice is not in the file (its holidays are unknown)


@dataclass
class CheckReport:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    years: dict[int, str] = field(default_factory=dict)  # year → "published" | "not published"

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


class OfficeHours:
    """A validated calendar; build it with `OfficeHours.load(path)`."""

    def __init__(self, timezone: ZoneInfo, weekly: dict[str, tuple[Period, ...]], years: dict[int, YearCalendar],
                 working_day_hours: str = DEFAULT_WORKING_DAY_HOURS, unverified: tuple[str, ...] = (),
                 confirm: str = "") -> None:
        self.timezone = timezone
        self.weekly = weekly
        self.years = years
        self.working_day_hours = working_day_hours
        self.unverified = unverified
        self.confirm = confirm
        self._special: dict[dt.date, tuple[DayKind, str]] = {}
        for calendar in sorted(years.values(), key=lambda entry: entry.year):
            for layer in (calendar.national, calendar.regional):
                if layer is None:
                    continue
                for day, name in layer.holidays.items():
                    self._special[day] = (DayKind.HOLIDAY, name)
                for day, name in layer.working_days.items():
                    self._special[day] = (DayKind.WORKING_DAY, name)

    @classmethod
    def load(cls, path: Path | str) -> OfficeHours:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise OfficeHoursError(path, [f"cannot read the file: {exc.strerror or exc}"]) from None
        return cls.from_text(text, path)

    @classmethod
    def from_text(cls, text: str, where: Path | str = "<text>") -> OfficeHours:
        try:
            data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise OfficeHoursError(where, [f"not valid YAML: {exc}".replace("\n", " ")]) from None
        parser = _Parser()
        calendar = parser.parse(data)
        if parser.errors or calendar is None:
            raise OfficeHoursError(where, parser.errors or ["the file is empty"])
        return calendar

    # --- days and moments -------------------------------------------------------------------------------------

    def day(self, date: dt.date) -> Day:
        kind, name = self._special.get(date, (DayKind.ORDINARY, ""))
        if kind is DayKind.HOLIDAY:
            hours: tuple[Period, ...] = ()
        elif kind is DayKind.WORKING_DAY:
            hours = self.weekly[self.working_day_hours]
        else:
            hours = self.weekly[WEEKDAYS[date.weekday()]]
        entry = self.years.get(date.year)
        return Day(date, kind, hours, name, known=entry is not None and entry.published)

    def local(self, at: dt.datetime) -> dt.datetime:
        """`at` in the calendar's time zone; a naive datetime is refused (its zone would be a guess)."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("office hours need an aware datetime (with a time zone)")
        return at.astimezone(self.timezone)

    def is_open(self, at: dt.datetime) -> bool:
        local = self.local(at)
        return any(period.contains(local.time()) for period in self.day(local.date()).hours)

    def is_known(self, at: dt.datetime) -> bool:
        """Whether the holidays of `at`'s date are known (its year's State Council notice is in the file)."""
        return self.day(self.local(at).date()).known

    def next_opening(self, at: dt.datetime) -> dt.datetime | None:
        """The next start of a duty period after `at` (strictly after: at 09:00 sharp it is the afternoon's),
        in the calendar's time zone; None when nothing opens within `SEARCH_DAYS` days."""
        local = self.local(at)
        for offset in range(SEARCH_DAYS + 1):
            date = local.date() + dt.timedelta(days=offset)
            for period in self.day(date).hours:
                start = dt.datetime.combine(date, dt.time(period.start // 60, period.start % 60),
                                            tzinfo=self.timezone)
                if start > local:
                    return start
        return None

    def describe_next_opening(self, at: dt.datetime) -> str:
        """The next opening as the assistant says it: "明天上午9点", "今天下午1点半", "10月8日星期四上午9点"."""
        opening = self.next_opening(at)
        if opening is None:
            return "下一个工作日"
        return spoken_day(opening.date(), self.local(at).date()) + spoken_time(opening.hour, opening.minute)

    # --- what the check command reports beyond errors ---------------------------------------------------------

    def warnings(self, today: dt.date) -> list[str]:
        found: list[str] = []
        for name in self.unverified:
            found.append(f"{name}: not confirmed by the bureau" + (f" ({self.confirm})" if self.confirm else ""))
        for year, label in ((today.year, "the current year"), (today.year + 1, "next year")):
            if year not in self.years:
                found.append(f"years.{year}: no entry for {label}; add the State Council notice "
                             f"(国务院办公厅关于{year}年部分节假日安排的通知) or `published: false` until it is out")
        for year, calendar in sorted(self.years.items()):
            if year < today.year:
                continue
            national = calendar.national
            if not national.published:
                found.append(f"years.{year}: published: false: the holidays and 调休 working days of {year} are "
                             f"unknown; on those days the hotline follows the weekly hours"
                             + (f" ({national.note})" if national.note else ""))
            else:
                names = "".join(national.holidays.values())
                missing = [festival for festival in STATUTORY_FESTIVALS if festival not in names]
                if missing:
                    found.append(f"years.{year}.holidays: no entry names {', '.join(missing)}; every State Council "
                                 "notice arranges all seven festivals: compare with the notice")
            regional = calendar.regional
            if regional is not None and not regional.published:
                found.append(f"years.{year}.regional: published: false: regional holidays of {year} are not in the "
                             "file" + (f" ({regional.note})" if regional.note else ""))
        return found


def check(path: Path | str, today: dt.date | None = None) -> CheckReport:
    """Validate the file: errors (the hotline must not use it) and warnings (facts still to confirm or add)."""
    report = CheckReport(str(path))
    try:
        calendar = OfficeHours.load(path)
    except OfficeHoursError as exc:
        report.errors = exc.problems
        return report
    if today is None:
        today = dt.datetime.now(calendar.timezone).date()
    report.warnings = calendar.warnings(today)
    report.years = {year: "published" if entry.published else "not published"
                    for year, entry in sorted(calendar.years.items())}
    return report


# --- speech ---------------------------------------------------------------------------------------------------

def spoken_day(date: dt.date, today: dt.date) -> str:
    """今天 / 明天 / 后天, else "12月8日星期二" (with the year when it is not this year's)."""
    relative = {0: "今天", 1: "明天", 2: "后天"}.get((date - today).days)
    if relative:
        return relative
    year = f"{date.year}年" if date.year != today.year else ""
    return f"{year}{date.month}月{date.day}日星期{SPOKEN_WEEKDAYS[date.weekday()]}"


def spoken_time(hour: int, minute: int) -> str:
    """A 12-hour clock time with its part of the day: 上午9点, 中午12点, 下午1点半, 晚上7点05分."""
    if hour < 6:
        part, shown = "凌晨", hour
    elif hour < 12:
        part, shown = "上午", hour
    elif hour < 13:
        part, shown = "中午", hour
    elif hour < 18:
        part, shown = "下午", hour - 12
    else:
        part, shown = "晚上", hour - 12
    if minute == 0:
        return f"{part}{shown}点"
    if minute == 30:
        return f"{part}{shown}点半"
    return f"{part}{shown}点{minute:02d}分"


# --- parsing --------------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates as text (a bad date becomes an error with its path, not a YAML crash) and
    refuses a key written twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                continue  # an unhashable key: SafeLoader reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class _Parser:
    """Turns the YAML data into an `OfficeHours`, collecting every problem with the path of its field."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.claimed: dict[dt.date, tuple[int, str]] = {}  # date → the year and field that list it

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def unknown_keys(self, data: dict, allowed: tuple[str, ...], where: str) -> None:
        for key in data:
            if key not in allowed:
                self.error(f"{where}.{key}" if where else str(key),
                           f"unknown key (expected one of: {', '.join(allowed)})")

    def parse(self, data: Any) -> OfficeHours | None:
        if data is None:
            return None
        if not isinstance(data, dict):
            self.error("file", "must be a mapping with timezone, weekly and years")
            return None
        self.unknown_keys(data, _TOP_KEYS, "")
        timezone = self.timezone(data.get("timezone"))
        weekly = self.weekly(data.get("weekly"))
        working = data.get("working_day_hours", DEFAULT_WORKING_DAY_HOURS)
        if working not in WEEKDAYS:
            self.error("working_day_hours", f"{working!r} is not a weekday key ({', '.join(WEEKDAYS)})")
        elif isinstance(data.get("weekly"), dict) and working in data["weekly"] and not data["weekly"][working]:
            self.error("working_day_hours", f"{working} has no hours in weekly: 调休 working days would be closed")
        unverified = self.unverified(data.get("unverified", []))
        confirm = data.get("confirm", "")
        if not isinstance(confirm, str):
            self.error("confirm", "must be text")
            confirm = ""
        years = self.years(data.get("years"))
        if self.errors or timezone is None or weekly is None or years is None:
            return None
        return OfficeHours(timezone, weekly, years, working, unverified, confirm.strip())

    def timezone(self, value: Any) -> ZoneInfo | None:
        if value is None:
            self.error("timezone", "missing (the bureau's is Asia/Shanghai)")
            return None
        if not isinstance(value, str) or not value.strip():
            self.error("timezone", f"must be an IANA time zone name such as Asia/Shanghai, got {value!r}")
            return None
        try:
            return ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError, OSError):
            self.error("timezone", f"unknown time zone {value!r} (e.g. Asia/Shanghai)")
            return None

    def unverified(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            self.error("unverified", "must be a list of field names, e.g. [weekly]")
            return ()
        for index, name in enumerate(value):
            if name not in _UNVERIFIABLE:
                self.error(f"unverified[{index}]", f"{name!r} is not a field (one of: {', '.join(_UNVERIFIABLE)})")
        return tuple(value)

    def weekly(self, value: Any) -> dict[str, tuple[Period, ...]] | None:
        if value is None:
            self.error("weekly", "missing: the duty hours of each weekday, e.g. mon: [\"09:00-12:00\"]")
            return None
        if not isinstance(value, dict):
            self.error("weekly", "must map each weekday (mon … sun) to a list of \"HH:MM-HH:MM\" periods")
            return None
        for key in value:
            if key not in WEEKDAYS:
                self.error(f"weekly.{key}", f"unknown weekday (use {', '.join(WEEKDAYS)})")
        weekly: dict[str, tuple[Period, ...]] = {}
        for key in WEEKDAYS:
            if key not in value:
                self.error("weekly", f"missing {key} (write `{key}: []` for a day without duty)")
                continue
            weekly[key] = self.periods(value[key], f"weekly.{key}")
        return weekly

    def periods(self, value: Any, where: str) -> tuple[Period, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(where, f"must be a list of \"HH:MM-HH:MM\" periods, got {value!r}")
            return ()
        periods: list[tuple[int, Period]] = []
        for index, text in enumerate(value):
            period = self.period(text, f"{where}[{index}]")
            if period is not None:
                periods.append((index, period))
        ordered = sorted(periods, key=lambda pair: pair[1].start)
        for (_, before), (index, after) in zip(ordered, ordered[1:], strict=False):
            if after.start < before.end:
                self.error(f"{where}[{index}]", f"'{after}' overlaps '{before}'")
        return tuple(period for _, period in ordered)

    def period(self, text: Any, where: str) -> Period | None:
        if not isinstance(text, str):
            self.error(where, f"expected a quoted text like \"09:00-12:00\", got {text!r}")
            return None
        match = _RANGE.match(text)
        if not match:
            self.error(where, f"{text!r} is not a period like \"09:00-12:00\"")
            return None
        start_hour, start_minute, end_hour, end_minute = (int(group) for group in match.groups())
        if start_hour > 23 or end_hour > 24 or start_minute > 59 or end_minute > 59 or (
                end_hour == 24 and end_minute):
            self.error(where, f"{text!r} is not a time of day (00:00 to 24:00)")
            return None
        start, end = start_hour * 60 + start_minute, end_hour * 60 + end_minute
        if end < start:
            self.error(where, f"{text!r} ends before it starts (a period past midnight is two periods on two days)")
            return None
        if end == start:
            self.error(where, f"{text!r} is empty")
            return None
        return Period(start, end)

    # --- years ------------------------------------------------------------------------------------------------

    def years(self, value: Any) -> dict[int, YearCalendar] | None:
        if value is None:
            self.error("years", "missing: one entry per year with its public holidays and 调休 working days")
            return None
        if not isinstance(value, dict):
            self.error("years", "must map each year (e.g. 2026) to its entry")
            return None
        years: dict[int, YearCalendar] = {}
        for key, entry in value.items():
            year = key if isinstance(key, int) and not isinstance(key, bool) else None
            if isinstance(key, str) and key.strip().isdigit():
                year = int(key)
            if year is None or not 1949 < year < 2200:
                self.error(f"years.{key}", "is not a year such as 2026")
                continue
            where = f"years.{year}"
            if not isinstance(entry, dict):
                self.error(where, "must be a mapping with published, source, holidays and working_days")
                continue
            self.unknown_keys(entry, _YEAR_KEYS, where)
            national = self.layer(entry, year, where)
            regional = None
            if "regional" in entry:
                if isinstance(entry["regional"], dict):
                    self.unknown_keys(entry["regional"], _LAYER_KEYS, f"{where}.regional")
                    regional = self.layer(entry["regional"], year, f"{where}.regional")
                else:
                    self.error(f"{where}.regional", "must be a mapping like a year's entry (published, source, …)")
            if national is not None:
                years[year] = YearCalendar(year, national, regional)
        return years

    def layer(self, entry: dict, year: int, where: str) -> Layer | None:
        published = entry.get("published")
        if not isinstance(published, bool):
            self.error(f"{where}.published", "must be true (the notice is copied here) or false (not out yet)")
            return None
        note = entry.get("note", "")
        if not isinstance(note, str):
            self.error(f"{where}.note", "must be text")
            note = ""
        if not published:
            for key in ("holidays", "working_days"):
                if entry.get(key):
                    self.error(f"{where}.{key}", "published: false, yet dates are listed: set published: true "
                                                 "with the notice's source, or remove the dates")
            return Layer(False, None, note.strip())
        source = self.source(entry.get("source"), f"{where}.source")
        holidays = self.holidays(entry.get("holidays"), year, f"{where}.holidays")
        working_days = self.working_days(entry.get("working_days"), year, f"{where}.working_days")
        for day in working_days:
            if day in holidays:
                self.error(f"{where}.working_days", f"{day} is both a holiday ({holidays[day]}) and a working day")
        return Layer(True, source, note.strip(), holidays, working_days)

    def source(self, value: Any, where: str) -> Source | None:
        if not isinstance(value, dict):
            self.error(where, "missing: the notice's title, document number and gov.cn url")
            return None
        self.unknown_keys(value, _SOURCE_KEYS, where)
        texts = {}
        for key in ("title", "document", "url"):
            text = value.get(key)
            if not isinstance(text, str) or not text.strip():
                self.error(f"{where}.{key}", "missing")
            texts[key] = str(text or "").strip()
        if texts["url"] and not texts["url"].startswith(("https://", "http://")):
            self.error(f"{where}.url", f"{texts['url']!r} is not a web address")
        issued = None
        if value.get("issued") is not None:
            issued = self.date(value["issued"], f"{where}.issued")
        return Source(texts["title"], texts["document"], texts["url"], issued)

    def date(self, value: Any, where: str) -> dt.date | None:
        text = value if isinstance(value, str) else repr(value)
        if not isinstance(value, str) or not _DATE.match(value.strip()):
            self.error(where, f"{text!r} is not a date like 2026-10-01")
            return None
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            self.error(where, f"{value!r} is not a date")
            return None

    def in_year(self, day: dt.date, year: int, where: str) -> bool:
        # A notice may reach back into the last days of the year before (元旦 from 30 or 31 December).
        if dt.date(year - 1, 12, 1) <= day <= dt.date(year, 12, 31):
            return True
        self.error(where, f"{day} is outside {year}")
        return False

    def claim(self, day: dt.date, year: int, where: str) -> bool:
        """A date belongs to one year's entry; the same date under two years is a typo in one of them. (Within a
        year the national and the regional entry may both list it: the regional one wins.)"""
        earlier_year, earlier = self.claimed.setdefault(day, (year, where))
        if earlier_year != year:
            self.error(where, f"{day} is also listed at {earlier}")
            return False
        return True

    def holidays(self, value: Any, year: int, where: str) -> dict[dt.date, str]:
        if not isinstance(value, list) or not value:
            self.error(where, "published: true needs the notice's holidays: a list of {name, from, to} "
                              "(or {name, date})")
            return {}
        holidays: dict[dt.date, str] = {}
        spans: list[tuple[dt.date, dt.date, str, str]] = []
        for index, item in enumerate(value):
            at = f"{where}[{index}]"
            if not isinstance(item, dict):
                self.error(at, "must be {name, from, to} or {name, date}")
                continue
            self.unknown_keys(item, ("name", "from", "to", "date"), at)
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                self.error(f"{at}.name", "missing (e.g. 春节)")
                name = "?"
            if "date" in item:
                if "from" in item or "to" in item:
                    self.error(at, "either date or from/to, not both")
                    continue
                first = last = self.date(item["date"], f"{at}.date")
            elif "from" in item and "to" in item:
                first, last = self.date(item["from"], f"{at}.from"), self.date(item["to"], f"{at}.to")
            else:
                self.error(at, "needs date, or from and to")
                continue
            if first is None or last is None:
                continue
            if last < first:
                self.error(at, f"{first} to {last} ends before it starts")
                continue
            if not (self.in_year(first, year, at) and self.in_year(last, year, at)):
                continue
            clash = next((other for other in spans if first <= other[1] and other[0] <= last), None)
            if clash is not None:
                self.error(at, f"{first} to {last} overlaps {clash[2]} ({clash[3]})")
                continue
            spans.append((first, last, name.strip(), at))
            day = first
            while day <= last:
                if self.claim(day, year, at):
                    holidays[day] = name.strip()
                day += dt.timedelta(days=1)
        return holidays

    def working_days(self, value: Any, year: int, where: str) -> dict[dt.date, str]:
        if value is None:
            return {}
        if not isinstance(value, list):
            self.error(where, "must be a list of {date, for} (or dates)")
            return {}
        days: dict[dt.date, str] = {}
        for index, item in enumerate(value):
            at = f"{where}[{index}]"
            reason = ""
            if isinstance(item, dict):
                self.unknown_keys(item, ("date", "for"), at)
                reason = item.get("for") or ""
                if not isinstance(reason, str):
                    self.error(f"{at}.for", "must be text (the festival it makes up for)")
                    reason = ""
                if "date" not in item:
                    self.error(at, "missing date")
                    continue
                day = self.date(item["date"], f"{at}.date")
            else:
                day = self.date(item, at)
            if day is None or not self.in_year(day, year, at):
                continue
            if day in days:
                self.error(at, f"{day} is listed twice")
                continue
            if day.weekday() < 5:
                self.error(at, f"{day} is a {WEEKDAY_NAMES[day.weekday()]}: a 调休 working day is a Saturday or "
                               "Sunday made a working day")
                continue
            if self.claim(day, year, at):
                days[day] = reason.strip()
        return days

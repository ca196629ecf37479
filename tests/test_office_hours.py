"""The office-hours calendar: the shipped file (2026 State Council notice), validation of every field, open/closed
decisions, the next opening and how it is spoken, and the `hotline hours` commands."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from typer.testing import CliRunner

from telephony.cli import app
from telephony.errors import TelephonyError
from telephony.handoff.office_hours import (
    WEEKDAYS,
    DayKind,
    OfficeHours,
    OfficeHoursError,
    check,
    spoken_day,
    spoken_time,
)

SHIPPED = Path(__file__).resolve().parent.parent / "kb" / "office_hours.yaml"
SHANGHAI = ZoneInfo("Asia/Shanghai")
TODAY = dt.date(2026, 12, 6)


def at(text: str) -> dt.datetime:
    """A Beijing-time moment from 'YYYY-MM-DD HH:MM'."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


@pytest.fixture(scope="module")
def shipped() -> OfficeHours:
    return OfficeHours.load(SHIPPED)


def base() -> dict:
    workday = ["09:00-12:00", "13:30-17:30"]
    return {
        "timezone": "Asia/Shanghai",
        "weekly": {"mon": workday, "tue": workday, "wed": workday, "thu": workday, "fri": workday,
                   "sat": [], "sun": []},
        "years": {2026: {
            "published": True,
            "source": {"title": "国务院办公厅关于2026年部分节假日安排的通知", "document": "国办发明电〔2025〕7号",
                       "url": "https://www.gov.cn/zhengce/content/202511/content_7047090.htm", "issued": "2025-11-04"},
            "holidays": [{"name": "元旦", "from": "2026-01-01", "to": "2026-01-03"}],
            "working_days": [{"date": "2026-01-04", "for": "元旦"}],
        }},
    }


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "office_hours.yaml"
    text = data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, data: dict | str) -> list[str]:
    with pytest.raises(OfficeHoursError) as caught:
        OfficeHours.load(write(tmp_path, data))
    return caught.value.problems


def has(found: list[str], *parts: str) -> bool:
    return any(all(part in problem for part in parts) for problem in found)


# --- the shipped file -------------------------------------------------------------------------------------------

def test_shipped_file_passes_the_check_with_its_open_questions_as_warnings() -> None:
    report = check(SHIPPED, today=TODAY)
    assert report.ok and report.errors == []
    assert report.years == {2026: "published", 2027: "not published"}
    assert has(report.warnings, "weekly: not confirmed by the bureau", "请社保中心核实")
    assert has(report.warnings, "years.2027: published: false", "unknown")
    assert has(report.warnings, "years.2027.regional", "壮族三月三")


def test_shipped_2026_entry_cites_the_state_council_notice(shipped: OfficeHours) -> None:
    national = shipped.years[2026].national
    assert national.source is not None
    assert national.source.document == "国办发明电〔2025〕7号"
    assert national.source.url.startswith("https://www.gov.cn/")
    assert national.source.issued == dt.date(2025, 11, 4)
    assert sorted(set(national.holidays.values())) == sorted(["元旦", "春节", "清明节", "劳动节", "端午节", "中秋节",
                                                              "国庆节"])
    assert len(national.holidays) == 33  # 3 + 9 + 3 + 5 + 3 + 3 + 7 days off
    assert sorted(national.working_days) == [dt.date(2026, 1, 4), dt.date(2026, 2, 14), dt.date(2026, 2, 28),
                                             dt.date(2026, 5, 9), dt.date(2026, 9, 20), dt.date(2026, 10, 10)]


# --- open or closed ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("moment", "expected"), [
    ("2026-12-07 08:59", False),     # Monday, before hours
    ("2026-12-07 09:00", True),      # opening minute
    ("2026-12-07 11:59:59", True),
    ("2026-12-07 12:00", False),     # lunch break
    ("2026-12-07 13:29", False),
    ("2026-12-07 13:30", True),
    ("2026-12-07 17:29", True),
    ("2026-12-07 17:30", False),     # closing minute is closed
    ("2026-12-04 15:00", True),      # Friday afternoon
    ("2026-12-05 10:00", False),     # Saturday
    ("2026-12-06 10:00", False),     # Sunday
])
def test_ordinary_days_follow_the_weekly_hours(shipped: OfficeHours, moment: str, expected: bool) -> None:
    assert shipped.is_open(at(moment)) is expected


@pytest.mark.parametrize("moment", ["2026-10-01 10:00", "2026-10-07 15:00", "2026-02-17 10:00", "2026-02-23 10:00",
                                    "2026-01-02 10:00", "2026-04-06 10:00", "2026-05-05 10:00", "2026-06-19 10:00",
                                    "2026-09-25 10:00"])
def test_statutory_holidays_of_the_shipped_file_are_closed_all_day(shipped: OfficeHours, moment: str) -> None:
    assert not shipped.is_open(at(moment))
    assert shipped.day(at(moment).date()).kind is DayKind.HOLIDAY


@pytest.mark.parametrize("date", ["2026-02-14", "2026-09-20", "2026-10-10", "2026-01-04"])
def test_adjusted_weekend_working_days_keep_monday_hours(shipped: OfficeHours, date: str) -> None:
    day = shipped.day(dt.date.fromisoformat(date))
    assert day.kind is DayKind.WORKING_DAY and dt.date.fromisoformat(date).weekday() >= 5
    assert shipped.is_open(at(f"{date} 09:30"))
    assert not shipped.is_open(at(f"{date} 12:30"))  # Monday's lunch break too
    assert shipped.is_open(at(f"{date} 16:00"))
    assert not shipped.is_open(at(f"{date} 18:00"))


def test_a_utc_moment_is_read_in_the_calendar_time_zone(shipped: OfficeHours) -> None:
    utc = dt.timezone.utc
    assert shipped.is_open(dt.datetime(2026, 12, 7, 1, 30, tzinfo=utc))        # 09:30 Beijing, Monday
    assert not shipped.is_open(dt.datetime(2026, 12, 7, 9, 30, tzinfo=utc))    # 17:30 Beijing
    assert not shipped.is_open(dt.datetime(2026, 12, 6, 23, 59, tzinfo=utc))   # 07:59 Monday Beijing
    assert shipped.is_open(dt.datetime(2026, 12, 6, 20, 0, tzinfo=ZoneInfo("America/New_York")))  # Mon 09:00
    assert not shipped.is_open(dt.datetime(2026, 9, 30, 18, 0, tzinfo=utc))    # 02:00 on 1 October
    assert shipped.next_opening(dt.datetime(2026, 12, 6, 2, 0, tzinfo=utc)) == at("2026-12-07 09:00")


def test_a_naive_datetime_is_refused(shipped: OfficeHours) -> None:
    with pytest.raises(ValueError, match="aware"):
        shipped.is_open(dt.datetime(2026, 12, 7, 10, 0))


def test_a_year_without_its_notice_follows_the_weekly_hours_and_says_it_is_unknown(shipped: OfficeHours) -> None:
    assert shipped.is_known(at("2026-10-01 10:00"))
    assert not shipped.is_known(at("2027-01-01 10:00"))
    new_year = shipped.day(dt.date(2027, 1, 1))
    assert new_year.kind is DayKind.ORDINARY and not new_year.known  # no date is guessed before the notice
    assert shipped.is_open(at("2027-01-01 10:00"))
    assert not shipped.is_known(at("2028-06-01 10:00"))


# --- the next opening -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("moment", "opening"), [
    ("2026-09-30 18:00", "2026-10-08 09:00"),   # eve of the National Day holiday: back on the 8th
    ("2026-10-01 10:00", "2026-10-08 09:00"),
    ("2026-10-09 18:00", "2026-10-10 09:00"),   # the Saturday worked for it
    ("2026-02-13 18:00", "2026-02-14 09:00"),   # a Saturday working day before the Spring Festival
    ("2026-02-14 18:00", "2026-02-24 09:00"),   # nine days off
    ("2026-12-07 12:15", "2026-12-07 13:30"),   # lunch break
    ("2026-12-07 09:00", "2026-12-07 13:30"),   # open now: the next period that starts
    ("2026-12-04 17:30", "2026-12-07 09:00"),   # Friday evening
])
def test_next_opening(shipped: OfficeHours, moment: str, opening: str) -> None:
    found = shipped.next_opening(at(moment))
    assert found == at(opening)
    assert found is not None and found.tzinfo is not None and found.utcoffset() == dt.timedelta(hours=8)


def test_no_opening_when_there_are_no_hours_at_all() -> None:
    calendar = OfficeHours(SHANGHAI, {day: () for day in WEEKDAYS}, {})
    assert calendar.next_opening(at("2026-12-07 10:00")) is None
    assert calendar.describe_next_opening(at("2026-12-07 10:00")) == "下一个工作日"


@pytest.mark.parametrize(("moment", "spoken"), [
    ("2026-12-06 10:00", "明天上午9点"),
    ("2026-12-07 12:30", "今天下午1点半"),
    ("2026-12-07 07:00", "今天上午9点"),
    ("2026-12-05 10:00", "后天上午9点"),
    ("2026-09-30 18:00", "10月8日星期四上午9点"),
    ("2026-02-14 18:00", "2月24日星期二上午9点"),
])
def test_describe_next_opening(shipped: OfficeHours, moment: str, spoken: str) -> None:
    assert shipped.describe_next_opening(at(moment)) == spoken


def test_spoken_day_and_time_forms() -> None:
    assert spoken_day(dt.date(2027, 1, 4), dt.date(2026, 12, 30)) == "2027年1月4日星期一"
    assert spoken_day(dt.date(2026, 12, 8), dt.date(2026, 12, 4)) == "12月8日星期二"
    assert spoken_time(12, 0) == "中午12点"
    assert spoken_time(14, 30) == "下午2点半"
    assert spoken_time(17, 45) == "下午5点45分"
    assert spoken_time(19, 5) == "晚上7点05分"
    assert spoken_time(0, 0) == "凌晨0点"
    assert spoken_time(8, 30) == "上午8点半"


# --- layers and options -----------------------------------------------------------------------------------------

def test_working_day_hours_names_the_weekday_whose_hours_a_working_day_keeps(tmp_path: Path) -> None:
    data = base()
    data["weekly"]["fri"] = ["08:00-11:00"]
    data["working_day_hours"] = "fri"
    calendar = OfficeHours.load(write(tmp_path, data))
    assert calendar.is_open(at("2026-01-04 08:30"))      # Sunday worked with Friday's hours
    assert not calendar.is_open(at("2026-01-04 14:00"))


def test_a_regional_notice_adds_days_off_and_overrides_the_national_entry(tmp_path: Path) -> None:
    data = base()
    data["years"][2026]["regional"] = {
        "published": True,
        "source": {"title": "广西壮族自治区人民政府办公厅关于XXXX年“壮族三月三”放假的通知（测试数据）",
                   "document": "测试", "url": "https://www.gxzf.gov.cn/"},
        "holidays": [{"name": "壮族三月三", "from": "2026-01-04", "to": "2026-01-05"}],  # test dates, not real ones
    }
    calendar = OfficeHours.load(write(tmp_path, data))
    assert not calendar.is_open(at("2026-01-05 10:00"))   # a Monday
    assert calendar.day(dt.date(2026, 1, 4)).kind is DayKind.HOLIDAY  # the national working day gives way
    assert calendar.day(dt.date(2026, 1, 4)).name == "壮族三月三"


def test_check_warns_when_the_current_or_next_year_is_missing(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    report = check(path, today=dt.date(2026, 11, 20))
    assert report.ok
    assert has(report.warnings, "years.2027: no entry for next year", "2027年部分节假日安排")
    assert not has(report.warnings, "years.2026: no entry")
    later = check(path, today=dt.date(2028, 3, 1))
    assert has(later.warnings, "years.2028: no entry for the current year")
    assert has(later.warnings, "years.2029: no entry for next year")


def test_check_warns_when_a_published_year_lacks_a_festival(tmp_path: Path) -> None:
    report = check(write(tmp_path, base()), today=dt.date(2026, 3, 1))
    assert report.ok
    assert has(report.warnings, "years.2026.holidays: no entry names 春节", "国庆节")


# --- validation errors ------------------------------------------------------------------------------------------

def test_office_hours_error_is_a_telephony_error() -> None:
    assert issubclass(OfficeHoursError, TelephonyError)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["weekly"].update(mon=["09:00-12:00", "13:30-12:00"]),
     ("weekly.mon[1]: '13:30-12:00' ends before it starts",)),
    (lambda d: d["weekly"].update(tue=["09:00-12:00", "11:00-14:00"]),
     ("weekly.tue[1]: '11:00-14:00' overlaps '09:00-12:00'",)),
    (lambda d: d["weekly"].update(wed=["9am-5pm"]), ("weekly.wed[0]: '9am-5pm' is not a period",)),
    (lambda d: d["weekly"].update(thu=["09:00-25:00"]), ("weekly.thu[0]", "not a time of day")),
    (lambda d: d["weekly"].update(fri=["09:00-09:00"]), ("weekly.fri[0]", "is empty")),
    (lambda d: d["weekly"].update(fri="09:00-17:00"), ("weekly.fri: must be a list",)),
    (lambda d: d["weekly"].update(monday=["09:00-12:00"]), ("weekly.monday: unknown weekday",)),
    (lambda d: d["weekly"].pop("sun"), ("weekly: missing sun",)),
    (lambda d: d.pop("weekly"), ("weekly: missing",)),
    (lambda d: d.update(timezone="Asia/Shangai"), ("timezone: unknown time zone 'Asia/Shangai'",)),
    (lambda d: d.update(timezone="Asia"), ("timezone: unknown time zone 'Asia'",)),
    (lambda d: d.pop("timezone"), ("timezone: missing",)),
    (lambda d: d.update(weekley={}), ("weekley: unknown key",)),
    (lambda d: d.update(working_day_hours="sat"), ("working_day_hours: sat has no hours",)),
    (lambda d: d.update(working_day_hours="monday"), ("working_day_hours: 'monday' is not a weekday key",)),
    (lambda d: d.update(unverified=["hours"]), ("unverified[0]: 'hours' is not a field",)),
    (lambda d: d.update(unverified="weekly"), ("unverified: must be a list",)),
    (lambda d: d.pop("years"), ("years: missing",)),
    (lambda d: d["years"].update(twenty={"published": False}), ("years.twenty: is not a year",)),
    (lambda d: d["years"][2026]["holidays"][0].update({"from": "2026-02-30"}),
     ("years.2026.holidays[0].from: '2026-02-30' is not a date",)),
    (lambda d: d["years"][2026]["holidays"][0].update({"to": "Jan 3"}),
     ("years.2026.holidays[0].to: 'Jan 3' is not a date",)),
    (lambda d: d["years"][2026]["holidays"][0].update({"from": "2026-01-05"}),
     ("years.2026.holidays[0]: 2026-01-05 to 2026-01-03 ends before it starts",)),
    (lambda d: d["years"][2026]["holidays"].append({"name": "春节", "from": "2026-01-03", "to": "2026-01-04"}),
     ("years.2026.holidays[1]", "overlaps 元旦")),
    (lambda d: d["years"][2026]["holidays"].append({"name": "国庆节", "from": "2025-10-01", "to": "2025-10-07"}),
     ("years.2026.holidays[1]: 2025-10-01 is outside 2026",)),
    (lambda d: d["years"][2026]["holidays"].append({"name": "国庆节", "date": "2026-10-01", "to": "2026-10-07"}),
     ("years.2026.holidays[1]: either date or from/to",)),
    (lambda d: d["years"][2026]["holidays"].append({"from": "2026-10-01", "to": "2026-10-07"}),
     ("years.2026.holidays[1].name: missing",)),
    (lambda d: d["years"][2026]["working_days"].append({"date": "2026-01-03", "for": "元旦"}),
     ("years.2026.working_days: 2026-01-03 is both a holiday (元旦) and a working day",)),
    (lambda d: d["years"][2026]["working_days"].append({"date": "2026-01-05", "for": "元旦"}),
     ("years.2026.working_days[1]: 2026-01-05 is a Monday",)),
    (lambda d: d["years"][2026]["working_days"].append("2026-01-04"),
     ("years.2026.working_days[1]: 2026-01-04 is listed twice",)),
    (lambda d: d["years"][2026].pop("source"), ("years.2026.source: missing",)),
    (lambda d: d["years"][2026]["source"].pop("document"), ("years.2026.source.document: missing",)),
    (lambda d: d["years"][2026]["source"].update(url="gov.cn"), ("years.2026.source.url: 'gov.cn' is not a web",)),
    (lambda d: d["years"][2026].pop("holidays"), ("years.2026.holidays: published: true needs",)),
    (lambda d: d["years"][2026].update(published="yes please"), ("years.2026.published: must be true",)),
    (lambda d: d["years"][2026].update(publshed=True), ("years.2026.publshed: unknown key",)),
    (lambda d: d["years"].update({2027: {"published": False, "holidays": [{"name": "元旦", "date": "2027-01-01"}]}}),
     ("years.2027.holidays: published: false, yet dates are listed",)),
    (lambda d: d["years"].update({2027: {"published": True, "source": d["years"][2026]["source"],
                                         "holidays": [{"name": "元旦", "date": "2026-12-31"}]}}) or
     d["years"][2026]["holidays"].append({"name": "测试", "date": "2026-12-31"}),
     ("2026-12-31 is also listed at years.2026.holidays[1]",)),
    (lambda d: d["years"][2026].update(regional="三月三"), ("years.2026.regional: must be a mapping",)),
    (lambda d: d["years"][2026].update(regional={"published": True}), ("years.2026.regional.source: missing",)),
])
def test_each_fault_is_reported_with_the_path_of_its_field(tmp_path: Path, change, expected) -> None:
    data = base()
    change(data)
    found = problems(tmp_path, data)
    assert has(found, *expected), found


def test_all_faults_are_listed_at_once(tmp_path: Path) -> None:
    data = base()
    data["timezone"] = "Mars/Olympus"
    data["weekly"]["mon"] = ["13:30-12:00"]
    data["years"][2026]["holidays"][0]["to"] = "2026-13-01"
    with pytest.raises(OfficeHoursError) as caught:
        OfficeHours.load(write(tmp_path, data))
    assert len(caught.value.problems) == 3
    assert "timezone" in str(caught.value) and "weekly.mon[0]" in str(caught.value)


def test_an_unquoted_clock_time_is_explained(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare 12:00 as the number 720 (base 60).
    text = write(tmp_path, base()).read_text(encoding="utf-8").replace("- 09:00-12:00", "- 12:00", 1)
    assert has(problems(tmp_path, text), "weekly.mon[0]: expected a quoted text", "720")


def test_a_key_written_twice_is_an_error_not_silently_the_last(tmp_path: Path) -> None:
    text = write(tmp_path, base()).read_text(encoding="utf-8").replace("timezone: Asia/Shanghai",
                                                                      "timezone: Asia/Shanghai\ntimezone: UTC")
    assert has(problems(tmp_path, text), "not valid YAML", "'timezone' is written twice")


@pytest.mark.parametrize(("text", "expected"), [
    ("weekly: [unclosed", "not valid YAML"),
    ("", "the file is empty"),
    ("- just\n- a list\n", "file: must be a mapping"),
])
def test_unreadable_content(tmp_path: Path, text: str, expected: str) -> None:
    assert has(problems(tmp_path, text), expected)


def test_a_missing_file_is_an_error_and_check_reports_it(tmp_path: Path) -> None:
    with pytest.raises(OfficeHoursError, match="cannot read the file"):
        OfficeHours.load(tmp_path / "absent.yaml")
    report = check(tmp_path / "absent.yaml")
    assert not report.ok and has(report.errors, "cannot read the file")


# --- the command ------------------------------------------------------------------------------------------------

@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in list(os.environ):
        if key.startswith("HOTLINE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    return CliRunner()


def test_cli_check_on_the_shipped_file_passes_with_the_unverified_warning(runner: CliRunner) -> None:
    result = runner.invoke(app, ["hours", "check", "--file", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert "warning: weekly: not confirmed by the bureau" in result.output
    assert "2026 (published), 2027 (not published)" in result.output
    assert result.output.rstrip().endswith("OK")


def test_cli_check_uses_the_configured_file(runner: CliRunner, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["hours", "check"])  # the default: the shipped file
    assert result.exit_code == 0, result.output
    assert str(SHIPPED) in result.output
    data = base()
    data["weekly"]["mon"] = ["09:00-12:00", "13:30-12:00"]
    monkeypatch.setenv("HOTLINE_OFFICE_HOURS_FILE", str(write(tmp_path, data)))
    result = runner.invoke(app, ["hours", "check"])
    assert result.exit_code == 1
    assert "error: weekly.mon[1]: '13:30-12:00' ends before it starts" in result.output


def test_cli_check_fails_on_a_malformed_file_naming_the_field(runner: CliRunner, tmp_path: Path) -> None:
    data = base()
    data["years"][2026]["working_days"].append({"date": "2026-01-02", "for": "元旦"})
    result = runner.invoke(app, ["hours", "check", "--file", str(write(tmp_path, data))])
    assert result.exit_code == 1
    assert "years.2026.working_days" in result.output and "1 error(s)" in result.output


def test_cli_check_json(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["hours", "check", "--json", "--file", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["errors"] == [] and report["years"] == {"2026": "published",
                                                                                    "2027": "not published"}
    data = base()
    data["timezone"] = "Nowhere/City"
    result = runner.invoke(app, ["hours", "check", "--json", "--file", str(write(tmp_path, data))])
    assert result.exit_code == 1
    assert json.loads(result.output)["errors"] == ["timezone: unknown time zone 'Nowhere/City' (e.g. Asia/Shanghai)"]


def test_cli_now_prints_the_state_and_the_next_opening(runner: CliRunner) -> None:
    result = runner.invoke(app, ["hours", "now", "--file", str(SHIPPED), "--at", "2026-10-01T10:00+08:00"])
    assert result.exit_code == 0, result.output
    assert "节假日（国庆节）：非值班时间" in result.output
    assert "下次上班：2026-10-08 09:00（10月8日星期四上午9点）" in result.output
    result = runner.invoke(app, ["hours", "now", "--file", str(SHIPPED), "--at", "2026-12-07T02:00:00Z"])
    assert "2026-12-07 10:00 Asia/Shanghai 星期一：值班中" in result.output
    result = runner.invoke(app, ["hours", "now", "--file", str(SHIPPED), "--at", "2026-02-14T10:00"])
    assert "调休上班日（春节）：值班中" in result.output
    result = runner.invoke(app, ["hours", "now", "--file", str(SHIPPED), "--at", "2027-01-01T10:00"])
    assert "warning: 2027 年的放假安排不在日历中" in result.output


def test_cli_now_refuses_a_bad_time_or_a_broken_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["hours", "now", "--file", str(SHIPPED), "--at", "tomorrow"])
    assert result.exit_code == 2
    data = base()
    data["weekly"]["mon"] = ["13:30-12:00"]
    result = runner.invoke(app, ["hours", "now", "--file", str(write(tmp_path, data))])
    assert result.exit_code == 2
    assert "weekly.mon[0]" in result.output

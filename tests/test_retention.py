"""Retention on SQLite and PostgreSQL: the dry run only counts; the purge deletes old calls with everything hanging on
them (turns, review rows and their full-text index, QA marks and samples, closed tickets, recordings), blanks old
SMS texts, keeps recent calls and calls with open tickets, and never touches the append-only audit log. Also the
daily background run, the settings and `hotline retention`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from telephony.cli import app as cli_app
from telephony.errors import StorageError
from telephony.review import audit
from telephony.review.retention import RETENTION_LOCK_KEY, RetentionError, next_run_at, purge, run_daily
from telephony.settings import Settings
from telephony.store import Database
from telephony.store.models import (
    AuditEntry,
    Call,
    CallbackAttempt,
    CallbackOutcome,
    CallChannel,
    CallOutcome,
    CallReview,
    CallReviewItem,
    HandoffStatus,
    HandoffTicket,
    KbChange,
    KbChangeKind,
    QaLabel,
    QaMarkRow,
    QaSample,
    SmsMessage,
    SmsStatus,
    Turn,
)

NOW = dt.datetime(2026, 12, 7, 1, 0, tzinfo=dt.UTC)
OLD = NOW - dt.timedelta(days=200)
RECENT = NOW - dt.timedelta(days=10)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Database]:
    url = settings.resolved_database_url if request.param == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    database = Database(url)
    database.migrate()
    yield database
    database.close()


@dataclass
class Calls:
    old: str  # 200 days old, closed ticket, recordings on disk: goes
    old_unrecorded: str  # 200 days old, its recording files already gone: goes
    old_open: str  # 200 days old with an open ticket: kept
    recent: str  # 10 days old: kept
    files: dict[str, list[Path]]
    orphan_old: Path
    orphan_new: Path


def _recordings(folder: Path, call_id: str, write: bool) -> list[Path]:
    paths = [folder / f"{call_id}-caller.wav", folder / f"{call_id}-assistant.wav"]
    if write:
        for path in paths:
            path.write_bytes(b"RIFF\x00\x00\x00\x00WAVE")
    return paths


# The words of each call and the tokens the review index would hold for them (jieba's search mode).
TOKENS = {"工伤认定": "工伤 认定 工伤认定", "工伤待遇": "工伤 待遇", "养老保险": "养老 保险 养老保险",
          "工伤保险": "工伤 保险 工伤保险"}


def _call(database: Database, folder: Path, started: dt.datetime, words: str, record: bool = True) -> str:
    call_id = database.start_call(CallChannel.SIP, caller_number="13812345678").id
    database.add_turn(call_id, caller_text=f"我想问一下{words}", spoken_text=f"关于{words}……", action="answer",
                      sms_text=f"{words}办事指南")
    database.add_turn(call_id, caller_text="好的谢谢", spoken_text="不客气", action="answer")
    caller, assistant = _recordings(folder, call_id, write=record)
    with database.session() as session:
        session.execute(update(Call).where(Call.id == call_id).values(
            started_at=started, ended_at=started, recording_caller_path=str(caller),
            recording_assistant_path=str(assistant)))
        session.execute(update(Turn).where(Turn.call_id == call_id).values(created_at=started))
        review = CallReview(call_id=call_id, started_at=started, channel="sip", outcome=CallOutcome.ANSWERED,
                            turns=2, first_question=f"我想问一下{words}", search_text=f"我 想 问 一下 {TOKENS[words]}")
        session.add(review)
        session.flush()
        session.add(CallReviewItem(doc_id=review.doc_id, item_id="injury-recognition", category="工伤保险"))
        session.add(QaMarkRow(call_id=call_id, turn_seq=1, label=QaLabel.CORRECT, reviewer="zhao",
                              marked_at=started))
        session.add(QaSample(day=started.date(), call_id=call_id, drawn_at=started))
    return call_id


def _ticket(database: Database, call_id: str, status: HandoffStatus, at: dt.datetime) -> None:
    with database.session() as session:
        ticket = HandoffTicket(call_id=call_id, reason="caller pressed 0", status=status,
                               callback_number="13812345678", created_at=at, due_at=at,
                               context={"question": "工伤认定要什么材料"})
        session.add(ticket)
        session.flush()
        session.add(CallbackAttempt(ticket_id=ticket.id, outcome=CallbackOutcome.REACHED, at=at, note="已回电"))


def _sms(database: Database, call_id: str | None, at: dt.datetime, reference: str,
         status: SmsStatus = SmsStatus.DELIVERED) -> None:
    with database.session() as session:
        session.add(SmsMessage(reference=reference, call_id=call_id, item_id="injury-recognition",
                               phone="13812345678", body="【测试社保】工伤认定办事指南……", length=20, segments=1,
                               gateway="outbox", status=status, created_at=at, template_variables=[["name", "王"]]))


@pytest.fixture
def calls(database: Database, settings: Settings) -> Calls:
    folder = Path(settings.data_dir) / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    old = _call(database, folder, OLD, "工伤认定")
    old_unrecorded = _call(database, folder, OLD - dt.timedelta(hours=1), "工伤待遇", record=False)
    old_open = _call(database, folder, OLD, "养老保险")
    recent = _call(database, folder, RECENT, "工伤保险")
    _ticket(database, old, HandoffStatus.RESOLVED, OLD)
    _ticket(database, old_open, HandoffStatus.ASSIGNED, OLD)
    _sms(database, old, OLD, "guide:old")
    _sms(database, recent, RECENT, "guide:recent")
    _sms(database, None, OLD, "manual:queued", status=SmsStatus.QUEUED)  # not final: left alone
    with database.session() as session:
        session.add(KbChange(kind=KbChangeKind.ADD_QUESTION, item_id="injury-recognition", call_id=old, turn_seq=1,
                             payload={"question": "我想问一下工伤认定"}, proposed_by="zhao"))
    audit.write(database, audit.Operator("zhao", 3), audit.AuditAction.LISTEN, f"call:{old}", track="caller")
    orphan_old = folder / f"{'a' * 32}-caller.wav"
    orphan_new = folder / f"{'b' * 32}-caller.wav"
    for orphan in (orphan_old, orphan_new):
        orphan.write_bytes(b"RIFF")
    os.utime(orphan_old, (OLD.timestamp(), OLD.timestamp()))
    os.utime(orphan_new, (RECENT.timestamp(), RECENT.timestamp()))
    files = {call_id: _recordings(folder, call_id, write=False) for call_id in (old, old_unrecorded, old_open, recent)}
    return Calls(old, old_unrecorded, old_open, recent, files, orphan_old, orphan_new)


def _rows(database: Database) -> dict[str, int]:
    with database.session() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model)) for model in
                (Call, Turn, CallReview, CallReviewItem, QaMarkRow, QaSample, HandoffTicket, CallbackAttempt,
                 SmsMessage, KbChange)}


def _search(database: Database, word: str) -> set[str]:
    """The calls the full-text index finds `word` in, the way each database indexes call_reviews.search_text."""
    if database.dialect == "sqlite":
        query = ("SELECT call_reviews.call_id FROM call_search JOIN call_reviews ON call_reviews.doc_id = "
                 "call_search.rowid WHERE call_search MATCH :word")
        fts_rows = "SELECT rowid FROM call_search WHERE call_search MATCH :word"
    else:
        query = ("SELECT call_id FROM call_reviews WHERE to_tsvector('simple', search_text) @@ "
                 "plainto_tsquery('simple', :word)")
        fts_rows = None
    with database.engine.connect() as connection:
        found = set(connection.execute(text(query), {"word": word}).scalars())
        if fts_rows:  # the index itself, not only its join with the rows that are left
            assert len(connection.execute(text(fts_rows), {"word": word}).all()) == len(found)
    return found


def _audit(database: Database) -> list[audit.AuditView]:
    return audit.entries(database, limit=100)[0]


def test_a_dry_run_counts_and_deletes_nothing(database: Database, settings: Settings, calls: Calls) -> None:
    before = _rows(database)
    report = purge(database, settings, NOW, dry_run=True, actor=audit.Operator("cli"))
    assert report.counts() == {
        "calls": 2, "turns": 4, "reviews": 2, "qa_marks": 2, "qa_samples": 2, "tickets": 1, "recordings": 2,
        "recordings_missing": 2, "orphan_recordings": 1, "sms_blanked": 1, "kept_open_tickets": 1, "batches": 0}
    assert report.dry_run and report.days == 180 and report.cutoff == NOW - dt.timedelta(days=180)
    assert _rows(database) == before
    assert all(path.exists() for call_id in (calls.old, calls.recent, calls.old_open) for path in calls.files[call_id])
    assert calls.orphan_old.exists()
    assert _search(database, "工伤") == {calls.old, calls.old_unrecorded, calls.recent}
    entry = _audit(database)[0]
    assert (entry.action, entry.username, entry.detail["dry_run"], entry.detail["calls"]) == (
        "retention", "cli", True, 2)


def test_the_purge_deletes_old_calls_and_keeps_the_rest(database: Database, settings: Settings,
                                                         calls: Calls) -> None:
    report = purge(database, settings, NOW, batch_size=1)
    assert report.counts() == {
        "calls": 2, "turns": 4, "reviews": 2, "qa_marks": 2, "qa_samples": 2, "tickets": 1, "recordings": 2,
        "recordings_missing": 2, "orphan_recordings": 1, "sms_blanked": 1, "kept_open_tickets": 1, "batches": 2}
    assert report.file_errors == [] and report.skipped is None
    with database.session() as session:
        assert set(session.scalars(select(Call.id))) == {calls.old_open, calls.recent}
        assert set(session.scalars(select(Turn.call_id))) == {calls.old_open, calls.recent}
        assert set(session.scalars(select(CallReview.call_id))) == {calls.old_open, calls.recent}
        assert session.scalar(select(func.count()).select_from(CallReviewItem)) == 2
        assert set(session.scalars(select(QaMarkRow.call_id))) == {calls.old_open, calls.recent}
        assert set(session.scalars(select(HandoffTicket.call_id))) == {calls.old_open}
        assert session.scalar(select(func.count()).select_from(CallbackAttempt)) == 1
        sms = {row.reference: row for row in session.scalars(select(SmsMessage))}
        kb_change = session.scalars(select(KbChange)).one()
    # Old SMS: the counts stay, the text and the number go; recent and unsent ones are untouched.
    old_sms = sms["guide:old"]
    assert (old_sms.body, old_sms.phone, old_sms.call_id, old_sms.template_variables) == ("", "138****5678", None, None)
    assert (old_sms.status, old_sms.segments, old_sms.length, old_sms.item_id) == (
        SmsStatus.DELIVERED, 1, 20, "injury-recognition")
    assert sms["guide:recent"].body.startswith("【测试社保】") and sms["guide:recent"].phone == "13812345678"
    assert sms["manual:queued"].body.startswith("【测试社保】")
    assert kb_change.call_id is None and kb_change.payload == {"question": "我想问一下工伤认定"}
    # Recordings: the old call's files and the old orphan are gone; the kept calls' and the new orphan stay.
    assert not any(path.exists() for path in calls.files[calls.old]) and not calls.orphan_old.exists()
    assert all(path.exists() for call_id in (calls.old_open, calls.recent) for path in calls.files[call_id])
    assert calls.orphan_new.exists()
    # The full-text index no longer finds the deleted calls' words.
    assert _search(database, "工伤") == {calls.recent}
    assert _search(database, "认定") == set()
    assert _search(database, "养老保险") == {calls.old_open}
    # The audit log keeps its earlier entry and gains one for the purge.
    [retention_entry, listen_entry] = _audit(database)
    assert (listen_entry.action, listen_entry.username, listen_entry.target) == ("listen", "zhao", f"call:{calls.old}")
    assert retention_entry.action == "retention" and retention_entry.username == "system"
    assert {key: retention_entry.detail[key] for key in ("calls", "turns", "recordings", "sms_blanked", "dry_run")} == {
        "calls": 2, "turns": 4, "recordings": 2, "sms_blanked": 1, "dry_run": False}
    # Nothing is left to do: a second run deletes nothing.
    again = purge(database, settings, NOW)
    assert (again.calls, again.turns, again.recordings, again.sms_blanked, again.kept_open_tickets) == (0, 0, 0, 0, 1)


def test_a_later_cutoff_or_more_days(database: Database, settings: Settings, calls: Calls) -> None:
    assert purge(database, settings, NOW, dry_run=True, days=365).calls == 0
    assert purge(database, settings, NOW, dry_run=True, days=5).calls == 3  # the recent call too
    with pytest.raises(RetentionError, match="at least 1 day"):
        purge(database, settings, NOW, days=0)
    with pytest.raises(RetentionError, match="timezone-aware"):
        purge(database, settings, NOW.replace(tzinfo=None))


def test_the_audit_log_refuses_update_and_delete(database: Database, calls: Calls) -> None:
    with pytest.raises(StorageError, match="append-only"):
        with database.session() as session:
            session.execute(update(AuditEntry).values(username="someone else"))
    for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            with database.engine.begin() as connection:
                connection.execute(text(statement))
    assert [entry.username for entry in _audit(database)] == ["zhao"]


def test_a_file_that_cannot_be_deleted_is_reported(database: Database, settings: Settings, calls: Calls) -> None:
    blocker = calls.files[calls.old][0]
    blocker.unlink()
    blocker.mkdir()  # a directory where the WAV was: unlink() fails
    report = purge(database, settings, NOW)
    assert report.calls == 2 and len(report.file_errors) == 1 and str(blocker) in report.file_errors[0]
    assert _audit(database)[0].detail["file_errors"] == report.file_errors


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)  # SQLite serialises writers by itself
def test_on_postgresql_one_worker_purges_at_a_time(database: Database, settings: Settings, calls: Calls) -> None:

    with database.engine.connect() as other_worker:
        other_worker.execute(text("SELECT pg_advisory_lock(:key)"), {"key": RETENTION_LOCK_KEY})
        report = purge(database, settings, NOW)
        other_worker.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RETENTION_LOCK_KEY})
    assert report.skipped == "another worker is purging" and report.calls == 0
    assert database.get_call(calls.old) is not None and _audit(database)[0].action == "listen"
    assert purge(database, settings, NOW).calls == 2  # the lock is free again


# -- the server's daily run ------------------------------------------------------------------------------------


def test_next_run_is_the_next_three_oclock_china_time() -> None:
    # 01:00 UTC is 09:00 in China: the next 03:00 there is 19:00 UTC the same day.
    assert next_run_at(NOW, "03:00") == dt.datetime(2026, 12, 7, 19, 0, tzinfo=dt.UTC)
    assert next_run_at(dt.datetime(2026, 12, 7, 19, 0, tzinfo=dt.UTC), "03:00") == dt.datetime(
        2026, 12, 8, 19, 0, tzinfo=dt.UTC)
    assert next_run_at(dt.datetime(2026, 12, 7, 18, 59, tzinfo=dt.UTC), "03:00") == dt.datetime(
        2026, 12, 7, 19, 0, tzinfo=dt.UTC)


class Waits:
    """Stands in for the wait between runs: records each delay asked for, lets `runs` runs happen, then stops."""

    def __init__(self, runs: int, before_run=None) -> None:
        self.delays: list[float] = []
        self.runs = runs
        self.before_run = before_run

    async def __call__(self, stop: asyncio.Event, seconds: float) -> bool:
        self.delays.append(seconds)
        if len(self.delays) > self.runs:
            stop.set()
            return True
        if self.before_run is not None:
            self.before_run(len(self.delays))
        return False


def test_the_daily_run_purges_as_the_system_and_stops(database: Database, settings: Settings, calls: Calls) -> None:
    waits = Waits(runs=1)
    asyncio.run(run_daily(database, settings, asyncio.Event(), clock=lambda: NOW, wait=waits))
    assert waits.delays == [18 * 3600.0, 18 * 3600.0]
    with database.session() as session:
        assert set(session.scalars(select(Call.id))) == {calls.old_open, calls.recent}
    entry = _audit(database)[0]
    assert (entry.action, entry.username, entry.detail["calls"]) == ("retention", "system", 2)


def test_a_daily_run_with_nothing_to_do_writes_no_entry(database: Database, settings: Settings) -> None:
    asyncio.run(run_daily(database, settings, asyncio.Event(), clock=lambda: NOW, wait=Waits(runs=2)))
    assert _audit(database) == []


def test_a_failed_daily_run_is_logged_and_the_next_one_runs(settings: Settings,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    database = Database(f"sqlite:///{settings.data_dir / 'later.db'}")  # not migrated yet: the first run fails
    waits = Waits(runs=2, before_run=lambda run: database.migrate() if run == 2 else None)
    caplog.set_level(logging.ERROR, logger="telephony.review.retention")
    try:
        asyncio.run(run_daily(database, settings, asyncio.Event(), clock=lambda: NOW, wait=waits))
    finally:
        database.close()
    assert len(waits.delays) == 3  # failed, ran, stopped
    assert "the daily purge failed" in caplog.text and caplog.text.count("daily purge failed") == 1


def test_the_daily_run_is_cancellable(settings: Settings) -> None:
    database = Database(settings.resolved_database_url)

    async def scenario() -> None:
        task = asyncio.create_task(run_daily(database, settings, asyncio.Event()))
        await asyncio.sleep(0)  # it starts waiting for 03:00
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        database.close()


# -- settings and the command ---------------------------------------------------------------------------------


def test_retention_settings_are_validated(settings: Settings) -> None:
    assert (settings.retention_days, settings.retention_run_at) == (180, "03:00")
    assert Settings(_env_file=None, retention_days=1, retention_run_at="3:05").retention_run_at == "03:05"
    with pytest.raises(ValidationError, match="retention_days must be at least 1"):
        Settings(_env_file=None, retention_days=0)
    with pytest.raises(ValidationError, match="at most 3650"):
        Settings(_env_file=None, retention_days=4000)
    with pytest.raises(ValidationError, match="retention_run_at must be a time of day"):
        Settings(_env_file=None, retention_run_at="25:00")


def test_the_retention_command(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLINE_DATA_DIR", str(settings.data_dir))
    database = Database(settings.resolved_database_url)
    database.migrate()
    folder = Path(settings.data_dir) / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    old = _call(database, folder, now - dt.timedelta(days=40), "工伤认定")
    recent = _call(database, folder, now - dt.timedelta(days=2), "养老保险")
    runner = CliRunner()
    dry = runner.invoke(cli_app, ["retention", "--days", "30", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    data = json.loads(dry.output)
    assert (data["dry_run"], data["days"], data["calls"], data["turns"], data["recordings"]) == (True, 30, 1, 2, 2)
    assert database.get_call(old) is not None
    default = runner.invoke(cli_app, ["retention", "--dry-run"])  # 180 days: nothing that old
    assert default.exit_code == 0 and "保留期 180 天" in default.output and "将删除通话 0 通" in default.output
    real = runner.invoke(cli_app, ["retention", "--days", "30"])
    assert real.exit_code == 0, real.output
    assert "已删除通话 1 通、对话轮次 2 条、录音文件 2 个" in real.output
    assert database.get_call(old) is None and database.get_call(recent) is not None
    assert [(entry.username, entry.detail["dry_run"]) for entry in _audit(database)] == [
        ("cli", False), ("cli", True), ("cli", True)]
    zero = runner.invoke(cli_app, ["retention", "--days", "0"])
    assert zero.exit_code == 2 and "Traceback" not in zero.output
    database.close()

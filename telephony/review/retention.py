"""Retention: deletes the recordings and transcripts of calls older than `retention_days`, in short batches, and
records each purge in the audit log (which it never touches otherwise).

What goes (docs/review.md "Retention"): a call older than the limit by `started_at` loses its two WAV files and its
row, and with the row its turns, review summary and full-text index entry, QA marks, QA sample draws and callback
tickets (with their attempts). A call whose callback ticket is still open is kept until the ticket is closed. SMS
rows of that age keep their counts (kind, item, status, length, segments, times) but lose the text and all but the
first three and last four digits of the number. Recording files in data_dir/recordings that no call points at any
more are removed once they are that old. Proposed KB changes keep the caller's question they were made from (it is
KB text now) and lose the link to the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.orm import Session

from telephony.errors import StorageError, TelephonyError
from telephony.review import audit
from telephony.settings import Settings
from telephony.sms.compose import mask
from telephony.store.database import Database
from telephony.store.models import (
    Call,
    CallbackAttempt,
    CallReview,
    CallReviewItem,
    HandoffStatus,
    HandoffTicket,
    KbChange,
    QaMarkRow,
    QaSample,
    SmsMessage,
    SmsStatus,
    Turn,
)

log = logging.getLogger(__name__)

BATCH_CALLS = 1000  # calls deleted per transaction: a big purge never holds a long lock
RETENTION_LOCK_KEY = 0x686F746C72746E  # PostgreSQL advisory lock: one worker purges at a time
BUREAU_TIME = ZoneInfo("Asia/Shanghai")
OPEN_TICKET_STATUSES = tuple(status for status in HandoffStatus if not status.final)
FINAL_SMS_STATUSES = tuple(status for status in SmsStatus if status.final)
RECORDING_FILE = re.compile(r"^([0-9a-f]{32})-(caller|assistant)\.wav$")  # telephony.calls.recording names


class RetentionError(TelephonyError):
    """A purge was asked for with values that cannot be right (e.g. fewer than one day)."""


@dataclass
class RetentionReport:
    """What a purge deleted (or, on a dry run, would delete)."""

    days: int
    cutoff: dt.datetime  # calls that started before this instant (UTC)
    dry_run: bool
    calls: int = 0
    turns: int = 0
    reviews: int = 0  # call_reviews rows, each with its full-text index entry
    qa_marks: int = 0
    qa_samples: int = 0
    tickets: int = 0  # closed callback tickets of those calls, with their attempts
    recordings: int = 0  # WAV files deleted
    recordings_missing: int = 0  # files the calls pointed at that were already gone
    orphan_recordings: int = 0  # old WAV files in data_dir/recordings of calls no longer in the database
    sms_blanked: int = 0
    kept_open_tickets: int = 0  # calls past the limit kept because a callback ticket is still open
    batches: int = 0
    skipped: str | None = None  # why nothing was done (another worker holds the purge lock)
    file_errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cutoff"] = self.cutoff.isoformat()
        return data

    def counts(self) -> dict[str, int]:
        return {key: value for key, value in asdict(self).items()
                if isinstance(value, int) and not isinstance(value, bool) and key != "days"}


def cutoff_for(now: dt.datetime, days: int) -> dt.datetime:
    if days < 1:
        raise RetentionError(f"retention must be at least 1 day, not {days}")
    if now.tzinfo is None:
        raise RetentionError("`now` must be timezone-aware")
    return now.astimezone(dt.UTC) - dt.timedelta(days=days)


def _expired_calls(cutoff: dt.datetime):
    """Calls that started before `cutoff` and have no open callback ticket (a WHERE clause)."""
    open_ticket = exists().where(HandoffTicket.call_id == Call.id, HandoffTicket.status.in_(OPEN_TICKET_STATUSES))
    return (Call.started_at < cutoff) & ~open_ticket


def _recording_paths(rows: Sequence[Any]) -> Iterator[Path]:
    for row in rows:
        for value in (row.recording_caller_path, row.recording_assistant_path):
            # Only WAV files are ever deleted, whatever a row says.
            if value and value.lower().endswith(".wav"):
                yield Path(value)


def _delete_file(path: Path, report: RetentionReport, orphan: bool = False) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        report.recordings_missing += 1
    except OSError as exc:
        report.file_errors.append(f"{path}: {exc.strerror or exc}")
    else:
        if orphan:
            report.orphan_recordings += 1
        else:
            report.recordings += 1


@contextlib.contextmanager
def _purge_lock(database: Database) -> Iterator[bool]:
    """On PostgreSQL a session advisory lock, so workers that start the daily purge together do it once; elsewhere
    (SQLite: one machine, and writes are serialised anyway) always granted."""
    if database.dialect != "postgresql":
        yield True
        return
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": RETENTION_LOCK_KEY}).scalar())
        try:
            yield got
        finally:
            if got:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RETENTION_LOCK_KEY})


def _delete_batch(session: Session, call_ids: list[str], report: RetentionReport) -> None:
    """Delete these calls and everything that hangs on them, explicitly (not relying on the foreign keys' cascades,
    so the full-text triggers on call_reviews fire the same way on every database)."""
    docs = select(CallReview.doc_id).where(CallReview.call_id.in_(call_ids)).scalar_subquery()
    tickets = select(HandoffTicket.id).where(HandoffTicket.call_id.in_(call_ids)).scalar_subquery()
    options = {"synchronize_session": False}
    session.execute(delete(CallReviewItem).where(CallReviewItem.doc_id.in_(docs)), execution_options=options)
    report.reviews += session.execute(delete(CallReview).where(CallReview.call_id.in_(call_ids)),
                                      execution_options=options).rowcount
    report.qa_marks += session.execute(delete(QaMarkRow).where(QaMarkRow.call_id.in_(call_ids)),
                                       execution_options=options).rowcount
    report.qa_samples += session.execute(delete(QaSample).where(QaSample.call_id.in_(call_ids)),
                                         execution_options=options).rowcount
    session.execute(delete(CallbackAttempt).where(CallbackAttempt.ticket_id.in_(tickets)), execution_options=options)
    report.tickets += session.execute(delete(HandoffTicket).where(HandoffTicket.call_id.in_(call_ids)),
                                      execution_options=options).rowcount
    session.execute(update(SmsMessage).where(SmsMessage.call_id.in_(call_ids)).values(call_id=None),
                    execution_options=options)
    session.execute(update(KbChange).where(KbChange.call_id.in_(call_ids)).values(call_id=None),
                    execution_options=options)
    report.turns += session.execute(delete(Turn).where(Turn.call_id.in_(call_ids)),
                                    execution_options=options).rowcount
    report.calls += session.execute(delete(Call).where(Call.id.in_(call_ids)), execution_options=options).rowcount


def _old_sms(cutoff: dt.datetime):
    return ((SmsMessage.created_at < cutoff) & SmsMessage.status.in_(FINAL_SMS_STATUSES)
            & (SmsMessage.body != ""))


def _blank_sms(database: Database, cutoff: dt.datetime, report: RetentionReport, batch: int) -> None:
    while True:
        with database.session() as session:
            rows = session.execute(select(SmsMessage.id, SmsMessage.phone).where(_old_sms(cutoff))
                                   .order_by(SmsMessage.id).limit(batch)).all()
            if not rows:
                return
            session.execute(update(SmsMessage), [
                {"id": row.id, "body": "", "phone": mask(row.phone), "template_variables": None} for row in rows])
        report.sms_blanked += len(rows)


def _orphan_recordings(database: Database, folder: Path, cutoff: dt.datetime, batch: int) -> Iterator[list[Path]]:
    """Old recording files in `folder` whose call is no longer in the database, a batch at a time."""
    if not folder.is_dir():
        return
    limit = cutoff.timestamp()
    pending: dict[str, list[Path]] = {}

    def check() -> list[Path]:
        with database.session() as session:
            known = set(session.scalars(select(Call.id).where(Call.id.in_(list(pending)))))
        found = [path for call_id, paths in pending.items() if call_id not in known for path in paths]
        pending.clear()
        return found

    for path in folder.iterdir():
        match = RECORDING_FILE.match(path.name)
        if not match:
            continue
        try:
            if path.stat().st_mtime >= limit:
                continue
        except OSError:
            continue
        pending.setdefault(match.group(1), []).append(path)
        if len(pending) >= batch:
            yield check()
    if pending:
        yield check()


def purge(database: Database, settings: Settings, now: dt.datetime | None = None, dry_run: bool = False, *,
          days: int | None = None, actor: audit.Actor = audit.SYSTEM, batch_size: int = BATCH_CALLS,
          audit_when_nothing: bool = True) -> RetentionReport:
    """Delete the recordings and transcripts of calls older than `days` (default `settings.retention_days`) before
    `now`; with `dry_run`, only count them. Blocking. Writes one audit entry (action "retention") with the counts,
    also when a batch fails part-way (then it re-raises); `audit_when_nothing=False` skips the entry for a run that
    found nothing to do (the server's daily run)."""
    days = settings.retention_days if days is None else days
    cutoff = cutoff_for(now or dt.datetime.now(dt.UTC), days)
    if batch_size < 1:
        raise RetentionError("batch_size must be at least 1")
    report = RetentionReport(days=days, cutoff=cutoff, dry_run=dry_run)
    recordings_dir = Path(settings.data_dir) / "recordings"
    with _purge_lock(database) as granted:
        if not granted:
            report.skipped = "another worker is purging"
            log.info("retention: skipped, another worker is purging")
            return report
        if dry_run:
            _count(database, cutoff, recordings_dir, report, batch_size)
        else:
            try:
                _run(database, cutoff, recordings_dir, report, batch_size)
            except Exception as exc:
                _audit(database, actor, report, audit_when_nothing=True, error=f"{exc.__class__.__name__}: {exc}")
                raise
    _audit(database, actor, report, audit_when_nothing)
    log.info("retention%s: %d calls, %d turns, %d recordings, %d SMS before %s (%d days)",
             " (dry run)" if dry_run else "", report.calls, report.turns, report.recordings, report.sms_blanked,
             cutoff.isoformat(), days)
    return report


def _run(database: Database, cutoff: dt.datetime, recordings_dir: Path, report: RetentionReport, batch: int) -> None:
    expired = _expired_calls(cutoff)
    while True:
        with database.session() as session:
            rows = session.execute(select(Call.id, Call.recording_caller_path, Call.recording_assistant_path)
                                   .where(expired).order_by(Call.started_at, Call.id).limit(batch)).all()
            if not rows:
                break
            before = report.calls
            _delete_batch(session, [row.id for row in rows], report)
            if report.calls == before:  # nothing deleted: stop rather than select the same rows forever
                raise StorageError("retention: a batch of calls could not be deleted")
        report.batches += 1
        # The rows are gone (committed) before the files: a failure in between leaves old files without rows,
        # which the orphan sweep below removes, never rows whose recordings are lost.
        for path in _recording_paths(rows):
            _delete_file(path, report)
    with database.session() as session:
        report.kept_open_tickets = session.scalar(select(func.count()).select_from(Call).where(
            Call.started_at < cutoff, ~_expired_calls(cutoff))) or 0
    _blank_sms(database, cutoff, report, batch)
    for paths in _orphan_recordings(database, recordings_dir, cutoff, batch):
        for path in paths:
            _delete_file(path, report, orphan=True)


def _count(database: Database, cutoff: dt.datetime, recordings_dir: Path, report: RetentionReport,
           batch: int) -> None:
    expired = select(Call.id).where(_expired_calls(cutoff)).scalar_subquery()

    def count(model, column) -> int:
        return session.scalar(select(func.count()).select_from(model).where(column.in_(expired))) or 0

    with database.session() as session:
        report.calls = session.scalar(select(func.count()).select_from(Call).where(_expired_calls(cutoff))) or 0
        report.turns = count(Turn, Turn.call_id)
        report.reviews = count(CallReview, CallReview.call_id)
        report.qa_marks = count(QaMarkRow, QaMarkRow.call_id)
        report.qa_samples = count(QaSample, QaSample.call_id)
        report.tickets = count(HandoffTicket, HandoffTicket.call_id)
        report.kept_open_tickets = session.scalar(select(func.count()).select_from(Call).where(
            Call.started_at < cutoff, ~_expired_calls(cutoff))) or 0
        report.sms_blanked = session.scalar(select(func.count()).select_from(SmsMessage).where(
            _old_sms(cutoff))) or 0
        rows = session.execute(select(Call.recording_caller_path, Call.recording_assistant_path)
                               .where(_expired_calls(cutoff)).execution_options(yield_per=batch))
        for path in _recording_paths(rows):
            if path.exists():
                report.recordings += 1
            else:
                report.recordings_missing += 1
    report.orphan_recordings = sum(len(paths) for paths in _orphan_recordings(database, recordings_dir, cutoff,
                                                                              batch))


def _audit(database: Database, actor: audit.Actor, report: RetentionReport, audit_when_nothing: bool,
           error: str | None = None) -> None:
    counts = report.counts()
    if not audit_when_nothing and not any(value for key, value in counts.items() if key != "batches"):
        return
    detail: dict[str, Any] = {"days": report.days, "cutoff": report.cutoff.isoformat(), "dry_run": report.dry_run,
                              **counts}
    if report.file_errors:
        detail["file_errors"] = report.file_errors[:20]
    if error:
        detail["error"] = error[:500]
    try:
        audit.write(database, actor, audit.AuditAction.RETENTION, f"calls before {report.cutoff:%Y-%m-%d}", **detail)
    except StorageError as exc:  # the purge itself is done (or failed already): say so, do not hide its result
        log.error("retention: the audit entry could not be written: %s", exc)
        if error is None:
            raise


# -- the server's daily run ---------------------------------------------------------------------------------


def next_run_at(now: dt.datetime, run_at: str) -> dt.datetime:
    """The next `run_at` (HH:MM, China time) strictly after `now`, in UTC."""
    hour, minute = (int(part) for part in run_at.split(":"))
    local = now.astimezone(BUREAU_TIME)
    due = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if due <= local:
        due += dt.timedelta(days=1)
    return due.astimezone(dt.UTC)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Whether `stop` was set within `seconds`."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))
        return True
    except TimeoutError:
        return False


async def run_daily(database: Database, settings: Settings, stop: asyncio.Event,
                    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                    wait: Callable[[asyncio.Event, float], Awaitable[bool]] = _wait) -> None:
    """Purge once a day at `settings.retention_run_at` until `stop` is set (or the task is cancelled). A failed
    purge is logged and tried again the next day: it never ends the loop or the server."""
    while not stop.is_set():
        now = clock()
        if await wait(stop, (next_run_at(now, settings.retention_run_at) - now).total_seconds()):
            return
        try:
            report = await asyncio.to_thread(purge, database, settings, clock(), False, actor=audit.SYSTEM,
                                             audit_when_nothing=False)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the server keeps serving calls
            log.exception("retention: the daily purge failed: %s", exc)
            continue
        if report.file_errors:
            log.warning("retention: %d recordings could not be deleted, e.g. %s", len(report.file_errors),
                        report.file_errors[0])

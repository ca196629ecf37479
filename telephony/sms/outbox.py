"""The persistent SMS outbox: enqueue once per reference, claim with row locks, record every gateway answer and
delivery report, enforce the per-number and global limits. Blocking (SQLAlchemy): call it from a thread.

Exactly-once is not possible across a crash in the middle of a submit, so the outbox chooses at most once: a row a
worker claimed and never finished (the process died inside `send`) is marked failed for staff to resend by hand,
never resent automatically. Every other path (retries, restarts, two workers, replayed reports) sends a reference
once."""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from telephony.errors import TelephonyError
from telephony.sms.base import DeliveryReport, DeliveryState, SmsError, SmsReceipt
from telephony.sms.compose import mask
from telephony.store.database import Database
from telephony.store.models import SmsKind, SmsMessage, SmsReportLog, SmsStatus

log = logging.getLogger(__name__)
_FINAL = tuple(status for status in SmsStatus if status.final)  # a message in one of these is never changed back


class SmsRefused(TelephonyError):
    """The outbox will not take this message (rate limit, number blocked today); `reason` names which."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # number_hourly_limit | number_daily_limit | number_blocked


class UnknownSmsError(TelephonyError):
    """No outbox message has this id."""


@dataclass(frozen=True)
class SmsLimits:
    per_number_per_hour: int = 5
    per_number_per_day: int = 10
    global_per_minute: int = 120  # across every worker sharing the database
    failures_per_day: int = 3  # a number whose deliveries failed this often today is not sent to again today
    max_attempts: int = 5  # retryable gateway errors before the message is failed
    retry_base_s: float = 15.0  # backoff: base * 2^(attempt-1), jittered, capped
    retry_cap_s: float = 900.0
    queue_ttl_s: float = 3600.0  # a message not handed to a gateway within this is expired (the call is long over)
    report_timeout_s: float = 172800.0  # submitted without a final report for this long: expired (SMPP validity)
    claim_lease_s: float = 120.0  # a claim older than this belongs to a worker that died inside `send`


@dataclass(frozen=True)
class NewSms:
    reference: str
    kind: SmsKind
    phone: str  # normalised 11-digit mobile
    body: str
    length: int
    segments: int
    gateway: str
    call_id: str | None = None
    item_id: str | None = None
    template_code: str | None = None
    template_variables: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Enqueued:
    message: SmsMessage
    created: bool  # False: the reference was already in the outbox and nothing new was stored


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _not_interrupted():
    # An interrupted submit (the worker died, or no answer after sending) is not the number's fault; NULL codes count.
    return or_(SmsMessage.error_code.is_(None), SmsMessage.error_code.not_in(("interrupted", "unknown_outcome")))


def _start_of_day(now: dt.datetime) -> dt.datetime:
    # "That day" is the bureau's day: China Standard Time, UTC+8, no daylight saving.
    local = now.astimezone(dt.timezone(dt.timedelta(hours=8)))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(dt.UTC)


class SmsOutbox:
    def __init__(self, database: Database, limits: SmsLimits | None = None,
                 clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.database = database
        self.limits = limits or SmsLimits()
        self.clock = clock

    # -- enqueue -----------------------------------------------------------------------------------

    def enqueue(self, new: NewSms) -> Enqueued:
        """Store a message, or return the one already stored under its reference (the idempotency key). Raises
        `SmsRefused` when the number is over its limits; nothing is stored then."""
        existing = self.by_reference(new.reference)
        if existing is not None:
            return Enqueued(existing, created=False)
        now = self.clock()
        with self.database.session() as session:
            self._check_number(session, new.phone, now)
            message = SmsMessage(
                reference=new.reference, kind=new.kind, call_id=new.call_id, item_id=new.item_id, phone=new.phone,
                body=new.body, length=new.length, segments=new.segments, gateway=new.gateway,
                template_code=new.template_code,
                template_variables=[list(pair) for pair in new.template_variables] or None,
                status=SmsStatus.QUEUED, next_attempt_at=now, created_at=now, part_ids=[])
            session.add(message)
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                message = None
        if message is None:  # another worker stored the same reference between our read and our write
            existing = self.by_reference(new.reference)
            assert existing is not None
            return Enqueued(existing, created=False)
        log.info("sms %s queued for %s (%s, %s segments)", message.id, mask(new.phone), new.reference,
                 new.segments)
        return Enqueued(message, created=True)

    def _check_number(self, session, phone: str, now: dt.datetime) -> None:
        limits = self.limits
        day = _start_of_day(now)
        failures = session.scalar(select(func.count()).select_from(SmsMessage).where(
            SmsMessage.phone == phone, SmsMessage.status == SmsStatus.FAILED, SmsMessage.finished_at >= day,
            _not_interrupted()))
        if failures >= limits.failures_per_day:
            raise SmsRefused(f"{mask(phone)}: {failures} failed deliveries today, not retried until tomorrow",
                             "number_blocked")
        hour = session.scalar(select(func.count()).select_from(SmsMessage).where(
            SmsMessage.phone == phone, SmsMessage.created_at >= now - dt.timedelta(hours=1)))
        if hour >= limits.per_number_per_hour:
            raise SmsRefused(f"{mask(phone)}: {hour} messages in the last hour (limit {limits.per_number_per_hour})",
                             "number_hourly_limit")
        today = session.scalar(select(func.count()).select_from(SmsMessage).where(
            SmsMessage.phone == phone, SmsMessage.created_at >= day))
        if today >= limits.per_number_per_day:
            raise SmsRefused(f"{mask(phone)}: {today} messages today (limit {limits.per_number_per_day})",
                             "number_daily_limit")

    def resend(self, message_id: int) -> SmsMessage:
        """「再发一遍」: the same message (same id, same reference) goes out once more. A message still on its way is
        left as it is (sending it again now would be the double send the caller did not ask for)."""
        now = self.clock()
        with self.database.session() as session:
            message = session.get(SmsMessage, message_id, with_for_update=True)
            if message is None:
                raise UnknownSmsError(f"no SMS message {message_id}")
            if message.status in (SmsStatus.QUEUED, SmsStatus.SENDING):
                return message
            self._check_number(session, message.phone, now)
            message.status = SmsStatus.QUEUED
            message.next_attempt_at = now
            message.attempts = 0
            message.last_error = None
            message.error_code = None
            message.finished_at = None
            message.created_at = now  # a resend starts a fresh queue TTL
        return message

    # -- the worker's side -------------------------------------------------------------------------

    def global_budget(self) -> int:
        """How many messages all workers together may still submit in the current minute."""
        now = self.clock()
        with self.database.session() as session:
            recent = session.scalar(select(func.count()).select_from(SmsMessage).where(
                SmsMessage.submitted_at >= now - dt.timedelta(minutes=1)))
        return max(0, self.limits.global_per_minute - recent)

    def claim(self, worker: str, limit: int) -> list[SmsMessage]:
        """Take up to `limit` due messages for this worker. On PostgreSQL the rows are locked with SKIP LOCKED, so
        workers sharing the database never take the same row; SQLite has a single writer."""
        if limit <= 0:
            return []
        now = self.clock()
        with self.database.session() as session:
            due = list(session.scalars(
                select(SmsMessage)
                .where(SmsMessage.status == SmsStatus.QUEUED, SmsMessage.next_attempt_at <= now)
                .order_by(SmsMessage.next_attempt_at, SmsMessage.id)
                .limit(limit)
                .with_for_update(skip_locked=True)))
            for message in due:
                message.status = SmsStatus.SENDING
                message.claimed_by = worker
                message.claimed_at = now
                message.attempts += 1
        return due

    def submitted(self, message_id: int, receipt: SmsReceipt) -> None:
        now = self.clock()
        with self.database.session() as session:
            # A delivery report that overtook this response may be committing now. On PostgreSQL FOR UPDATE waits
            # for it; SQLite ignores FOR UPDATE (the read can still say "sending"), so the status is written by one
            # UPDATE whose condition is checked under the write lock: a report's final state is never undone.
            message = session.get(SmsMessage, message_id, with_for_update=True)
            if message is None:
                return
            status = SmsStatus(receipt.state.value)  # submitted, or a gateway that answers with the final state
            session.execute(
                update(SmsMessage)
                .where(SmsMessage.id == message_id, SmsMessage.status.not_in(_FINAL))
                .values(status=status, finished_at=now if status.final else None)
                .execution_options(synchronize_session=False))
            message.gateway = receipt.gateway
            message.gateway_message_id = receipt.message_id
            message.part_ids = list(receipt.part_ids)
            message.segments = receipt.segments or message.segments
            message.submitted_at = now
            message.sends += 1
            message.claimed_by = None
        log.info("sms %s submitted to %s as %s", message_id, receipt.gateway, receipt.message_id)

    def refused(self, message_id: int, error: SmsError) -> SmsStatus:
        """Record a gateway error: queued again with backoff while retryable and attempts remain, else failed."""
        now = self.clock()
        limits = self.limits
        with self.database.session() as session:
            message = session.get(SmsMessage, message_id, with_for_update=True)
            if message is None:
                return SmsStatus.FAILED
            message.last_error = str(error)
            message.error_code = error.code
            message.claimed_by = None
            if error.outcome_unknown:
                message.status = SmsStatus.FAILED
                message.error_code = "unknown_outcome"
                message.finished_at = now
            elif error.retryable and message.attempts < limits.max_attempts:
                delay = min(limits.retry_cap_s, limits.retry_base_s * 2 ** (message.attempts - 1))
                message.next_attempt_at = now + dt.timedelta(seconds=delay * random.uniform(0.8, 1.2))
                message.status = SmsStatus.QUEUED
            else:
                message.status = SmsStatus.FAILED
                message.finished_at = now
            status = message.status
        log.warning("sms %s: %s (%s; %s)", message_id, error, "retry" if status is SmsStatus.QUEUED else "failed",
                    "retryable" if error.retryable else "final")
        return status

    def blocked_today(self, phone: str) -> bool:
        now = self.clock()
        with self.database.session() as session:
            failures = session.scalar(select(func.count()).select_from(SmsMessage).where(
                SmsMessage.phone == phone, SmsMessage.status == SmsStatus.FAILED,
                SmsMessage.finished_at >= _start_of_day(now), _not_interrupted()))
        return failures >= self.limits.failures_per_day

    def fail(self, message_id: int, reason: str, code: str | None) -> None:
        now = self.clock()
        with self.database.session() as session:
            message = session.get(SmsMessage, message_id)
            if message is not None:
                message.status = SmsStatus.FAILED
                message.last_error = reason
                message.error_code = code
                message.claimed_by = None
                message.finished_at = now

    def sweep(self) -> dict[str, int]:
        """Housekeeping every worker runs now and then: expire what is too old, fail claims of dead workers."""
        now = self.clock()
        limits = self.limits
        counts = {}
        with self.database.session() as session:
            counts["interrupted"] = session.execute(
                update(SmsMessage)
                .where(SmsMessage.status == SmsStatus.SENDING,
                       SmsMessage.claimed_at < now - dt.timedelta(seconds=limits.claim_lease_s))
                .values(status=SmsStatus.FAILED, error_code="interrupted", finished_at=now, claimed_by=None,
                        last_error="the worker stopped while submitting; the outcome is unknown, so it is not "
                                   "resent automatically (at most once): check the phone and resend by hand")
            ).rowcount
            counts["expired_queued"] = session.execute(
                update(SmsMessage)
                .where(SmsMessage.status == SmsStatus.QUEUED,
                       SmsMessage.created_at < now - dt.timedelta(seconds=limits.queue_ttl_s))
                .values(status=SmsStatus.EXPIRED, finished_at=now, error_code="queue_ttl",
                        last_error="not handed to a gateway in time")
            ).rowcount
            counts["expired_submitted"] = session.execute(
                update(SmsMessage)
                .where(SmsMessage.status == SmsStatus.SUBMITTED, SmsMessage.gateway != "outbox",
                       SmsMessage.submitted_at < now - dt.timedelta(seconds=limits.report_timeout_s))
                .values(status=SmsStatus.EXPIRED, finished_at=now, error_code="no_report",
                        last_error="no delivery report within the validity period")
            ).rowcount
        if any(counts.values()):
            log.warning("sms outbox sweep: %s", counts)
        return counts

    # -- delivery reports --------------------------------------------------------------------------

    def apply_report(self, report: DeliveryReport, record_unknown: bool = True) -> str:
        """Apply one delivery report; returns applied | unknown | replayed | ignored. Unknown and replayed reports
        change nothing and are kept in `sms_reports` for staff (an unknown one only with `record_unknown`: the
        dispatcher tries a report that overtook its submit response again before calling it unknown)."""
        now = self.clock()
        with self.database.session() as session:
            message = self._report_target(session, report)
            if message is None:
                outcome = "unknown"
            elif message.status.final:
                outcome = "replayed"
            elif report.state is DeliveryState.SUBMITTED:
                outcome = "ignored"  # an intermediate "accepted by the SMSC": the message already says submitted
            elif message.status not in (SmsStatus.SUBMITTED, SmsStatus.SENDING):
                outcome = "ignored"
            else:
                message.status = SmsStatus(report.state.value)
                message.finished_at = now
                if report.state is not DeliveryState.DELIVERED:
                    message.error_code = report.error_code or report.state.value
                    message.last_error = report.detail or f"delivery report: {report.state.value}"
                outcome = "applied"
            if outcome == "unknown" and not record_unknown:
                return outcome
            session.add(SmsReportLog(
                gateway=report.gateway, gateway_message_id=report.message_id, reference=report.reference,
                state=report.state.value, error_code=report.error_code, detail=report.detail[:500],
                message_id=message.id if message is not None else None, outcome=outcome, received_at=now))
        if outcome == "applied":
            log.info("sms %s: %s (%s)", message.id, report.state.value, report.gateway)
        else:
            log.warning("sms delivery report %s: %s %s ref=%s", outcome, report.gateway, report.message_id,
                        report.reference)
        return outcome

    @staticmethod
    def _report_target(session, report: DeliveryReport) -> SmsMessage | None:
        if report.reference:
            message = session.scalar(select(SmsMessage).where(SmsMessage.reference == report.reference)
                                     .with_for_update())
            if message is not None:
                return message
        if not report.message_id:
            return None
        message = session.scalar(select(SmsMessage).where(
            SmsMessage.gateway == report.gateway, SmsMessage.gateway_message_id == report.message_id)
            .with_for_update())
        if message is not None:
            return message
        # SMPP: a receipt may name any segment's id. Only recent submitted messages can still get one.
        candidates = session.scalars(select(SmsMessage).where(
            SmsMessage.gateway == report.gateway, SmsMessage.segments > 1,
            or_(SmsMessage.status == SmsStatus.SUBMITTED, SmsMessage.status == SmsStatus.DELIVERED,
                SmsMessage.status == SmsStatus.FAILED))
            .order_by(SmsMessage.id.desc()).limit(500))
        for candidate in candidates:
            if report.message_id in (candidate.part_ids or []):
                return candidate
        return None

    # -- reading -----------------------------------------------------------------------------------

    def get(self, message_id: int) -> SmsMessage | None:
        with self.database.session() as session:
            return session.get(SmsMessage, message_id)

    def by_reference(self, reference: str) -> SmsMessage | None:
        with self.database.session() as session:
            return session.scalar(select(SmsMessage).where(SmsMessage.reference == reference))

    def listing(self, status: SmsStatus | None = None, limit: int = 50, call_id: str | None = None) -> list[SmsMessage]:
        with self.database.session() as session:
            query = select(SmsMessage).order_by(SmsMessage.id.desc()).limit(limit)
            if status is not None:
                query = query.where(SmsMessage.status == status)
            if call_id is not None:
                query = query.where(SmsMessage.call_id == call_id)
            return list(session.scalars(query))

    def counts(self) -> dict[str, int]:
        with self.database.session() as session:
            rows = session.execute(select(SmsMessage.status, func.count()).group_by(SmsMessage.status))
            return {status.value: count for status, count in rows}


def _iso(value: dt.datetime | None) -> str | None:
    value = _aware(value)
    return value.isoformat() if value is not None else None


def message_summary(message: SmsMessage, body: bool = True) -> dict[str, object]:
    """A message as the admin API, the CLI and the console show it: the number masked."""
    data: dict[str, object] = {
        "id": message.id, "reference": message.reference, "kind": message.kind.value, "to": mask(message.phone),
        "item": message.item_id, "call_id": message.call_id, "state": message.status.value,
        "gateway": message.gateway, "gateway_message_id": message.gateway_message_id,
        "length": message.length, "segments": message.segments, "attempts": message.attempts,
        "sends": message.sends, "error": message.last_error, "error_code": message.error_code,
        "created_at": _iso(message.created_at),
        "submitted_at": _iso(message.submitted_at),
        "finished_at": _iso(message.finished_at),
    }
    if body:
        data["text"] = message.body
    return data

"""The SMS outbox and its worker on a real database (SQLite and PostgreSQL): once per reference, retries with backoff,
limits, delivery reports (applied, unknown, replayed), crash recovery, and two workers on one PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from kb.loader import load_knowledge_base
from telephony.sms.base import (
    DeliveryReport,
    DeliveryState,
    OutgoingSms,
    SmsError,
    SmsReceipt,
)
from telephony.sms.compose import InvalidNumberError, compose_guide
from telephony.sms.dispatcher import DispatchConfig, SmsDispatcher
from telephony.sms.outbox import NewSms, SmsLimits, SmsOutbox, SmsRefused
from telephony.sms.service import (
    SmsConfig,
    SmsService,
    UnknownItemError,
    guide_reference,
)
from telephony.store import Database, SmsKind, SmsMessage, SmsReportLog, SmsStatus

KB = load_knowledge_base()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 5, 2, 0, tzinfo=dt.UTC)  # 10:00 in Guilin

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class ScriptedGateway:
    """A gateway whose answers the test scripts: a receipt, or an exception, per call."""

    name = "scripted"
    uses_templates = False

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.sent: list[OutgoingSms] = []
        self.sink = None

    async def start(self, reports) -> None:
        self.sink = reports

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        self.sent.append(message)
        answer = self.answers.pop(0) if self.answers else "ok"
        if isinstance(answer, BaseException):
            raise answer
        return SmsReceipt(self.name, f"gw-{len(self.sent)}", DeliveryState.SUBMITTED, segments=2,
                          part_ids=(f"gw-{len(self.sent)}", f"gw-{len(self.sent)}b"))

    async def close(self) -> None:
        return None

    def status(self) -> str:
        return "ready"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path):
    url = (f"sqlite:///{tmp_path / 'sms.db'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_postgres_url"))
    db = Database(url)
    db.migrate()
    yield db
    db.close()


def new_sms(reference: str, phone: str = "13800000000") -> NewSms:
    return NewSms(reference=reference, kind=SmsKind.GUIDE, phone=phone, body="【测试社保】指南", length=8, segments=1,
                  gateway="scripted", item_id="card-loss-report")


def service_for(database: Database, gateway, clock: Clock | None = None, limits: SmsLimits | None = None):
    outbox = SmsOutbox(database, limits or SmsLimits(), clock or Clock())
    dispatcher = SmsDispatcher(outbox, gateway, DispatchConfig(report_retry_s=(0.05, 0.1)), worker="test")
    return SmsService(outbox, dispatcher, SmsConfig("测试社保", "0773-0000000"), lambda: KB)


async def test_a_guide_is_composed_from_the_kb_stored_once_and_sent_once(database: Database) -> None:
    gateway = ScriptedGateway()
    service = service_for(database, gateway)
    reference = guide_reference("call-1", "card-loss-report")
    first = await service.send_guide("+86 138-0000-0000", "card-loss-report", reference, call_id=None)
    again = await service.send_guide("13800000000", "card-loss-report", reference)
    assert first.created and not again.created and again.message.id == first.message.id
    await service.dispatcher.drain()
    await service.dispatcher.drain()
    expected = compose_guide(KB.get("card-loss-report"), "0773-0000000", "测试社保")
    assert [message.body for message in gateway.sent] == [expected.body]
    assert gateway.sent[0].to_number == "13800000000" and gateway.sent[0].reference == reference
    stored = service.outbox.get(first.message.id)
    assert stored.status is SmsStatus.SUBMITTED and stored.gateway_message_id == "gw-1" and stored.sends == 1
    assert (stored.length, stored.segments) == (expected.length, 2)  # the gateway's count of parts wins


async def test_bad_input_is_a_clear_error_and_stores_nothing(database: Database) -> None:
    service = service_for(database, ScriptedGateway())
    with pytest.raises(InvalidNumberError, match="landline"):
        await service.send_guide("0773-2822222", "card-loss-report", "r1")
    with pytest.raises(InvalidNumberError, match="mainland"):
        await service.send_guide("+1 415 555 0100", "card-loss-report", "r2")
    with pytest.raises(UnknownItemError, match="no item given"):
        await service.send_guide("13800000000", "  ", "r3")
    with pytest.raises(UnknownItemError, match="no KB item"):
        await service.send_guide("13800000000", "no-such-item", "r4")
    assert service.outbox.listing() == []


async def test_retryable_errors_back_off_then_fail_and_final_errors_fail_at_once(database: Database) -> None:
    clock = Clock()
    busy = SmsError("throttled", retryable=True, code="0x58")
    gateway = ScriptedGateway(busy, busy, SmsError("invalid destination", retryable=False, code="0x0B"))
    service = service_for(database, gateway, clock, SmsLimits(max_attempts=2, retry_base_s=10))
    outbox = service.outbox
    first = outbox.enqueue(new_sms("r-retry")).message
    await service.dispatcher.drain_once()
    stored = outbox.get(first.id)
    assert stored.status is SmsStatus.QUEUED and stored.attempts == 1 and stored.error_code == "0x58"
    assert dt.timedelta(seconds=8) <= stored.next_attempt_at.replace(tzinfo=dt.UTC) - clock.now <= dt.timedelta(
        seconds=12)
    assert await service.dispatcher.drain_once() == 0  # not due yet
    clock.advance(13)
    await service.dispatcher.drain_once()
    stored = outbox.get(first.id)
    assert stored.status is SmsStatus.FAILED and stored.attempts == 2 and "throttled" in stored.last_error
    second = outbox.enqueue(new_sms("r-final", phone="13900000000")).message
    await service.dispatcher.drain_once()
    assert outbox.get(second.id).status is SmsStatus.FAILED and outbox.get(second.id).attempts == 1
    assert len(gateway.sent) == 3


async def test_no_answer_after_sending_is_failed_for_staff_not_resent(database: Database) -> None:
    unknown = SmsError("no answer within 10 s after sending", retryable=True, outcome_unknown=True)
    gateway = ScriptedGateway(unknown)
    service = service_for(database, gateway)
    message = service.outbox.enqueue(new_sms("r-unknown")).message
    await service.dispatcher.drain()
    await service.dispatcher.drain()
    stored = service.outbox.get(message.id)
    assert stored.status is SmsStatus.FAILED and stored.error_code == "unknown_outcome" and len(gateway.sent) == 1
    assert not service.outbox.blocked_today(stored.phone)  # not the number's fault


async def test_a_gateway_that_raises_garbage_is_retried_not_fatal(database: Database) -> None:
    gateway = ScriptedGateway(ValueError("garbage in the response"))
    service = service_for(database, gateway)
    message = service.outbox.enqueue(new_sms("r-garbage")).message
    await service.dispatcher.drain_once()
    stored = service.outbox.get(message.id)
    assert stored.status is SmsStatus.QUEUED and "ValueError: garbage" in stored.last_error


def test_per_number_limits_and_three_failures_a_day_stop_a_number(database: Database) -> None:
    clock = Clock()
    outbox = SmsOutbox(database, SmsLimits(per_number_per_hour=2, per_number_per_day=3), clock)
    outbox.enqueue(new_sms("a"))
    outbox.enqueue(new_sms("b"))
    with pytest.raises(SmsRefused, match="last hour") as refused:
        outbox.enqueue(new_sms("c"))
    assert refused.value.reason == "number_hourly_limit"
    assert outbox.enqueue(new_sms("a")).created is False  # the same reference is not a new message
    clock.advance(3700)
    outbox.enqueue(new_sms("c"))
    with pytest.raises(SmsRefused, match="today"):
        outbox.enqueue(new_sms("d"))
    other = "13700000000"
    outbox.limits = SmsLimits(per_number_per_hour=10, per_number_per_day=10)
    for reference in ("f1", "f2", "f3"):
        message = outbox.enqueue(new_sms(reference, other)).message
        outbox.fail(message.id, "UNDELIV", None)
    assert outbox.blocked_today(other)
    with pytest.raises(SmsRefused, match="3 failed deliveries") as blocked:
        outbox.enqueue(new_sms("f4", other))
    assert blocked.value.reason == "number_blocked"
    clock.advance(24 * 3600)  # the next day
    assert not outbox.blocked_today(other)


async def test_the_global_limit_holds_messages_back_without_dropping_them(database: Database) -> None:
    clock = Clock()
    gateway = ScriptedGateway()
    service = service_for(database, gateway, clock, SmsLimits(global_per_minute=2))
    for number in range(4):
        service.outbox.enqueue(new_sms(f"g{number}", phone=f"1380000000{number}"))
    await service.dispatcher.drain()
    assert len(gateway.sent) == 2 and service.outbox.counts() == {"submitted": 2, "queued": 2}
    clock.advance(61)
    await service.dispatcher.drain()
    assert len(gateway.sent) == 4 and service.outbox.counts() == {"submitted": 4}


async def test_reports_are_applied_once_and_unknown_or_replayed_ones_change_nothing(database: Database) -> None:
    gateway = ScriptedGateway()
    service = service_for(database, gateway)
    message = service.outbox.enqueue(new_sms("r-report")).message
    await service.dispatcher.start()
    try:
        service.dispatcher.wake()
        for _ in range(100):
            if service.outbox.get(message.id).status is SmsStatus.SUBMITTED:
                break
            await asyncio.sleep(0.02)
        # A receipt may name the second segment's id (SMPP).
        delivered = DeliveryReport("scripted", "gw-1b", DeliveryState.DELIVERED)
        assert await service.dispatcher.on_report(delivered) == "applied"
        assert await service.dispatcher.on_report(delivered) == "replayed"
        late_failure = DeliveryReport("scripted", "gw-1", DeliveryState.FAILED, error_code="UNDELIV")
        assert await service.dispatcher.on_report(late_failure) == "replayed"
        assert await service.dispatcher.on_report(
            DeliveryReport("scripted", None, DeliveryState.DELIVERED, reference="nobody")) == "unknown"
    finally:
        await service.dispatcher.close()
    assert service.outbox.get(message.id).status is SmsStatus.DELIVERED
    with database.session() as session:
        outcomes = [row.outcome for row in session.scalars(select(SmsReportLog).order_by(SmsReportLog.id))]
    assert outcomes == ["applied", "replayed", "replayed", "unknown"]


async def test_a_report_that_overtakes_the_submit_response_is_not_lost(database: Database) -> None:
    service = service_for(database, ScriptedGateway())
    message = service.outbox.enqueue(new_sms("r-race")).message
    early = DeliveryReport("scripted", "gw-1", DeliveryState.DELIVERED)
    assert await service.dispatcher.on_report(early) == "unknown"  # not submitted yet: tried again shortly
    await service.dispatcher.drain_once()
    await asyncio.sleep(0.3)
    assert service.outbox.get(message.id).status is SmsStatus.DELIVERED


async def test_resend_sends_the_same_message_again(database: Database) -> None:
    gateway = ScriptedGateway()
    service = service_for(database, gateway)
    enqueued = await service.send_guide("13800000000", "card-loss-report", "r-resend")
    await service.dispatcher.drain()
    again = await service.resend(enqueued.message.id)
    await service.dispatcher.drain()
    assert again.id == enqueued.message.id
    stored = service.outbox.get(enqueued.message.id)
    assert stored.sends == 2 and len(gateway.sent) == 2 and gateway.sent[0].body == gateway.sent[1].body
    assert len(service.outbox.listing()) == 1


def test_sweep_fails_a_dead_workers_claim_instead_of_resending_and_expires_old_messages(database: Database) -> None:
    clock = Clock()
    outbox = SmsOutbox(database, SmsLimits(claim_lease_s=60, queue_ttl_s=3600, report_timeout_s=7200), clock)
    claimed = outbox.enqueue(new_sms("crashed")).message
    assert [message.id for message in outbox.claim("worker-that-dies", 5)] == [claimed.id]
    stale = outbox.enqueue(new_sms("stale", phone="13900000000")).message
    submitted = outbox.enqueue(new_sms("no-report", phone="13700000000")).message
    outbox.claim("w", 5)
    outbox.submitted(submitted.id, SmsReceipt("scripted", "x1", DeliveryState.SUBMITTED))
    outbox.refused(stale.id, SmsError("busy", retryable=True))  # back to queued
    clock.advance(7300)
    assert outbox.sweep() == {"interrupted": 1, "expired_queued": 1, "expired_submitted": 1}
    crashed = outbox.get(claimed.id)
    assert crashed.status is SmsStatus.FAILED and crashed.error_code == "interrupted" and crashed.sends == 0
    assert outbox.get(stale.id).status is SmsStatus.EXPIRED
    assert outbox.get(submitted.id).status is SmsStatus.EXPIRED
    assert outbox.claim("w", 5) == []
    assert not outbox.blocked_today("13800000000")  # an interrupted send is not the number's fault


def test_two_workers_on_one_postgresql_never_claim_the_same_message(fresh_postgres_url: str) -> None:
    databases = [Database(fresh_postgres_url) for _ in range(2)]
    databases[0].migrate()
    try:
        seed = SmsOutbox(databases[0], SmsLimits(per_number_per_hour=1000, per_number_per_day=1000))
        for number in range(60):
            seed.enqueue(new_sms(f"pg-{number}", phone=f"138000{number:05d}"))
        claims: dict[str, list[int]] = {"a": [], "b": []}

        start = threading.Barrier(2)

        def work(name: str, database: Database) -> None:
            outbox = SmsOutbox(database)
            start.wait(30)
            while batch := outbox.claim(name, 3):
                claims[name].extend(message.id for message in batch)
                time.sleep(0.02)  # "sending" the batch: the other worker claims meanwhile, as real workers overlap

        threads = [threading.Thread(target=work, args=(name, database))
                   for name, database in zip(claims, databases, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        taken = claims["a"] + claims["b"]
        assert len(taken) == 60 and len(set(taken)) == 60
        assert claims["a"] and claims["b"]  # both really worked
    finally:
        for database in databases:
            database.close()


def test_a_report_committing_while_the_submit_response_is_recorded_is_not_overwritten(database: Database) -> None:
    """Kannel's delivery report can reach the server while the worker is still recording the submit response (a
    real CI failure, on PostgreSQL and again on SQLite, where FOR UPDATE is a no-op and the worker read "sending"
    before the report committed). The worker's write must wait for the report's and keep its "delivered"."""
    outbox = SmsOutbox(database)
    message = outbox.enqueue(new_sms("race-1")).message
    assert [m.id for m in outbox.claim("w", 1)] == [message.id]
    locked, release = threading.Event(), threading.Event()

    def report_in_flight() -> None:  # what apply_report does, held open at the point of commit
        with database.session() as session:
            row = session.get(SmsMessage, message.id, with_for_update=True)
            row.status = SmsStatus.DELIVERED
            session.flush()
            locked.set()
            release.wait(10)

    thread = threading.Thread(target=report_in_flight)
    thread.start()
    assert locked.wait(10)
    threading.Timer(0.3, release.set).start()  # commits while submitted() waits on the row
    outbox.submitted(message.id, SmsReceipt("scripted", "gw-9", DeliveryState.SUBMITTED, segments=1))
    thread.join(10)
    stored = outbox.get(message.id)
    assert stored.status is SmsStatus.DELIVERED and stored.gateway_message_id == "gw-9" and stored.sends == 1

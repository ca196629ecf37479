"""The outbox worker: claims due messages, hands them to the gateway, records each answer, applies delivery reports.
One runs in every server process; several against one PostgreSQL never take the same row (`SmsOutbox.claim`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass

from telephony.sms.base import DeliveryReport, OutgoingSms, SmsError, SmsGateway
from telephony.sms.compose import mask
from telephony.sms.outbox import SmsOutbox
from telephony.store.models import SmsMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchConfig:
    batch: int = 10  # messages claimed (and submitted concurrently) at a time
    poll_s: float = 1.0  # how often an idle worker looks for due messages (an in-process enqueue wakes it at once)
    sweep_s: float = 30.0
    # A report can overtake the submit response (a fast SMSC): an unknown report is tried again after these delays.
    report_retry_s: tuple[float, ...] = (0.5, 1.0, 2.0)
    sender: str | None = None
    report_url: str | None = None  # where HTTP-report gateways call back (token included)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class SmsDispatcher:
    def __init__(self, outbox: SmsOutbox, gateway: SmsGateway, config: DispatchConfig | None = None,
                 worker: str | None = None) -> None:
        self.outbox = outbox
        self.gateway = gateway
        self.config = config or DispatchConfig()
        self.worker = worker or worker_name()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._report_tasks: set[asyncio.Task] = set()
        self._stopping = False
        self.sent = 0
        self.errors = 0

    async def start(self, run_worker: bool = True) -> None:
        await self.gateway.start(self.on_report)
        if run_worker:
            self._task = asyncio.create_task(self._run(), name="sms-dispatcher")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._report_tasks):
            task.cancel()
        await self.gateway.close()

    async def _run(self) -> None:
        last_sweep = 0.0
        while not self._stopping:
            try:
                if time.monotonic() - last_sweep >= self.config.sweep_s:
                    last_sweep = time.monotonic()
                    await asyncio.to_thread(self.outbox.sweep)
                handled = await self.drain_once()
            except Exception:
                log.exception("sms dispatcher: pass failed, trying again shortly")
                handled = 0
            if handled:
                continue
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_s)

    async def drain_once(self) -> int:
        """Claim one batch and submit it; returns how many messages were handled."""
        budget = await asyncio.to_thread(self.outbox.global_budget)
        if budget <= 0:
            return 0
        claimed = await asyncio.to_thread(self.outbox.claim, self.worker, min(self.config.batch, budget))
        if claimed:
            await asyncio.gather(*(self._submit(message) for message in claimed))
        return len(claimed)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Submit everything due now (the CLI's one-shot send)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and await self.drain_once():
            pass

    async def _submit(self, message: SmsMessage) -> None:
        if await asyncio.to_thread(self.outbox.blocked_today, message.phone):
            await asyncio.to_thread(self.outbox.fail, message.id, "three failed deliveries to this number today; "
                                    "not retried until tomorrow", "number_blocked")
            return
        outgoing = OutgoingSms(
            reference=message.reference, to_number=message.phone, body=message.body, sender=self.config.sender,
            template_code=message.template_code,
            template_variables=tuple(tuple(pair) for pair in message.template_variables or ()),
            report_url=self.config.report_url)
        try:
            receipt = await self.gateway.send(outgoing)
        except SmsError as exc:
            self.errors += 1
            await asyncio.to_thread(self.outbox.refused, message.id, exc)
            return
        except Exception as exc:
            self.errors += 1
            log.exception("sms %s: gateway %s raised", message.id, self.gateway.name)
            await asyncio.to_thread(self.outbox.refused, message.id,
                                    SmsError(f"gateway error: {exc.__class__.__name__}: {exc}", retryable=True))
            return
        self.sent += 1
        await asyncio.to_thread(self.outbox.submitted, message.id, receipt)
        log.info("sms %s to %s: %s by %s", message.id, mask(message.phone), receipt.state.value, receipt.gateway)

    async def on_report(self, report: DeliveryReport) -> str:
        """The gateway's `ReportSink`, also used by the HTTP receipts route."""
        retry = report.reference is None and bool(self.config.report_retry_s)
        outcome = await asyncio.to_thread(self.outbox.apply_report, report, not retry)
        if outcome == "unknown" and retry:
            task = asyncio.create_task(self._retry_report(report))
            self._report_tasks.add(task)
            task.add_done_callback(self._report_tasks.discard)
        return outcome

    async def _retry_report(self, report: DeliveryReport) -> None:
        delays = self.config.report_retry_s
        for number, delay in enumerate(delays, start=1):
            await asyncio.sleep(delay)
            if await asyncio.to_thread(self.outbox.apply_report, report, number == len(delays)) != "unknown":
                return

"""The embedded default gateway: messages stay in the outbox (shown by the admin API and `hotline sms list`), nothing
leaves the machine. A bureau sets HOTLINE_SMS_GATEWAY to a real one."""

from __future__ import annotations

from telephony.sms.base import DeliveryState, OutgoingSms, ReportSink, SmsReceipt
from telephony.sms.compose import segment_count


class OutboxOnlyGateway:
    name = "outbox"
    uses_templates = False

    async def start(self, reports: ReportSink) -> None:
        return None

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        return SmsReceipt(self.name, f"local-{message.reference}", DeliveryState.SUBMITTED,
                          segments=segment_count(message.body))

    async def close(self) -> None:
        return None

    def status(self) -> str:
        return "kept in the outbox: nothing is sent (HOTLINE_SMS_GATEWAY=outbox)"

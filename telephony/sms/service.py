"""What the rest of the hotline asks of SMS: send an item's guide, a ticket's confirmation, resend. Composes the text
from the KB (never generated), checks the number, stores it in the outbox once per reference and wakes the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from kb.errors import KbError
from kb.loader import KnowledgeBase
from kb.schema import ServiceItem
from telephony.sms.base import SmsError
from telephony.sms.compose import (
    DEFAULT_CAP_CHARS,
    ComposedSms,
    compose_guide,
    mobile_number,
    segment_count,
    sms_length,
)
from telephony.sms.dispatcher import SmsDispatcher
from telephony.sms.outbox import Enqueued, NewSms, SmsOutbox
from telephony.store.models import SmsKind, SmsMessage

# Template-only gateways (Aliyun, Tencent): the approved template code and its variables for an item's guide, or
# for a ticket's confirmation when the item is None (then the ticket number is given).
TemplateLookup = Callable[[ServiceItem | None, int | None], tuple[str, tuple[tuple[str, str], ...]]]

TICKET_TEXT = "【{signature}】您的人工服务登记号为{ticket}。工作人员会按您来电的号码回电，请保持电话畅通。咨询电话{phone}。"


class UnknownItemError(SmsError):
    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class SmsConfig:
    signature: str
    centre_phone: str
    cap: int = DEFAULT_CAP_CHARS
    guide_base_url: str | None = None


def guide_reference(call_id: str, item_id: str) -> str:
    """The idempotency key of an item's guide within a call: one SMS per item per call."""
    return f"call:{call_id}:item:{item_id}"


class SmsService:
    def __init__(self, outbox: SmsOutbox, dispatcher: SmsDispatcher, config: SmsConfig,
                 kb: Callable[[], KnowledgeBase], templates: TemplateLookup | None = None) -> None:
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.config = config
        self.kb = kb
        self.templates = templates

    @property
    def gateway_name(self) -> str:
        return self.dispatcher.gateway.name

    def item(self, item_id: str) -> ServiceItem:
        item_id = (item_id or "").strip()
        if not item_id:
            raise UnknownItemError("no item given: name the KB item whose guide to send")
        item = self.kb().get(item_id)
        if item is None:
            raise UnknownItemError(f"no KB item {item_id!r}")
        return item

    def compose(self, item_id: str) -> ComposedSms:
        config = self.config
        return compose_guide(self.item(item_id), config.centre_phone, config.signature, config.cap,
                             config.guide_base_url)

    def _template(self, item: ServiceItem | None,
                  ticket: int | None = None) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        if not self.dispatcher.gateway.uses_templates:
            return None, ()
        if self.templates is None:
            raise SmsError(f"gateway {self.gateway_name} sends only approved templates and no template map is loaded",
                           retryable=False)
        try:
            return self.templates(item, ticket)
        except KbError as exc:  # no approved code for this item, or a variable too long
            raise SmsError(str(exc), retryable=False) from exc

    async def send_guide(self, to: str, item_id: str, reference: str, *, call_id: str | None = None,
                         kind: SmsKind = SmsKind.GUIDE) -> Enqueued:
        """Queue an item's guide for `to`. Raises `InvalidNumberError`, `UnknownItemError`, `GuideTooLongError`,
        `SmsRefused` (limits); the same reference twice returns the first message."""
        phone = mobile_number(to)
        item = self.item(item_id)
        config = self.config
        composed = compose_guide(item, config.centre_phone, config.signature, config.cap, config.guide_base_url)
        code, variables = self._template(item)
        new = NewSms(reference=reference, kind=kind, phone=phone, body=composed.body, length=composed.length,
                     segments=composed.segments, gateway=self.gateway_name, call_id=call_id, item_id=composed.item_id,
                     template_code=code, template_variables=variables)
        return await self._enqueue(new)

    async def send_ticket(self, to: str, ticket_id: int, call_id: str | None) -> Enqueued:
        phone = mobile_number(to)
        body = TICKET_TEXT.format(signature=self.config.signature, ticket=ticket_id, phone=self.config.centre_phone)
        code, variables = self._template(None, ticket_id)
        new = NewSms(reference=f"ticket:{ticket_id}", kind=SmsKind.TICKET, phone=phone, body=body,
                     length=sms_length(body), segments=segment_count(body), gateway=self.gateway_name,
                     call_id=call_id, template_code=code, template_variables=variables)
        return await self._enqueue(new)

    async def resend(self, message_id: int) -> SmsMessage:
        message = await asyncio.to_thread(self.outbox.resend, message_id)
        self.dispatcher.wake()
        return message

    async def _enqueue(self, new: NewSms) -> Enqueued:
        enqueued = await asyncio.to_thread(self.outbox.enqueue, new)
        if enqueued.created:
            self.dispatcher.wake()
        return enqueued

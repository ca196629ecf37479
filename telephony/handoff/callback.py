"""The default handoff until live transfer exists: a callback ticket on the caller's number, and say so."""

from __future__ import annotations

import asyncio
import logging

from telephony.calls import prompts
from telephony.errors import StorageError
from telephony.handoff.base import HandoffOutcome, HandoffRequest
from telephony.sms.base import SmsError
from telephony.sms.compose import mobile_number
from telephony.sms.outbox import SmsRefused
from telephony.sms.service import SmsService
from telephony.store import Database

log = logging.getLogger(__name__)


class CallbackTickets:
    """Implements `HandoffTarget` by opening a handoff ticket that staff call back on."""

    def __init__(self, database: Database, sms: SmsService | None = None) -> None:
        self.database = database
        self.sms = sms  # confirms the ticket number by SMS when the caller's number is a mobile

    async def offer(self, request: HandoffRequest) -> HandoffOutcome:
        if request.call_id is None:
            log.error("handoff ticket not stored: the call has no record (%s)", request.trigger)
            return HandoffOutcome(prompts.HANDOFF_REGISTERED)
        try:
            ticket = await asyncio.to_thread(self.database.open_handoff_ticket, request.call_id, request.trigger,
                                             request.caller_number)
        except StorageError as exc:
            log.error("call %s: handoff ticket not stored: %s", request.call_id, exc)
            return HandoffOutcome(prompts.HANDOFF_REGISTERED)
        if await self._confirm_by_sms(request, ticket.id):
            return HandoffOutcome(prompts.HANDOFF_REGISTERED_SMS.format(ticket=ticket.id), ticket_id=ticket.id)
        return HandoffOutcome(prompts.HANDOFF_REGISTERED, ticket_id=ticket.id)

    async def _confirm_by_sms(self, request: HandoffRequest, ticket_id: int) -> bool:
        if self.sms is None or not request.caller_number:
            return False
        try:
            mobile_number(request.caller_number)
            await self.sms.send_ticket(request.caller_number, ticket_id, request.call_id)
        except (SmsError, SmsRefused, StorageError) as exc:
            log.info("call %s: ticket %s not confirmed by SMS: %s", request.call_id, ticket_id, exc)
            return False
        return True

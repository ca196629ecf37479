"""The default handoff until live transfer exists: a callback ticket on the caller's number, and say so."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Callable
from typing import Any

from telephony.calls import prompts
from telephony.errors import StorageError
from telephony.handoff.base import HandoffOutcome, HandoffRequest, HandoffTrigger
from telephony.handoff.office_hours import OfficeHours
from telephony.handoff.tickets import TicketDesk, classify_trigger
from telephony.sms.base import SmsError
from telephony.sms.compose import mask, mobile_number
from telephony.sms.outbox import SmsRefused
from telephony.sms.service import SmsService
from telephony.store import Call, Database, HandoffTicket
from telephony.store.models import utcnow

log = logging.getLogger(__name__)

_LONG_DIGITS = re.compile(r"\d{7,}")  # a phone or ID number said aloud: the ticket keeps it masked


def _masked_text(text: str) -> str:
    return _LONG_DIGITS.sub(lambda match: mask(match.group()), text)


def ticket_context(call: Call, request: HandoffRequest) -> dict[str, Any]:
    """What the agent reads before calling back: the question, the conversation so far, what the assistant
    answered, the services and confidence, the masked number and the SMS already sent."""
    turns = list(call.turns)
    answer = request.last_answer
    said = list(request.transcript) or [turn.caller_text for turn in turns]
    transcript = [_masked_text(text) for text in said]
    if answer is not None:
        question = answer.question
    else:
        question = transcript[-1] if transcript else ""
    return {
        "question": _masked_text(question),
        "transcript": transcript,
        "answers": [{"question": _masked_text(turn.caller_text), "spoken": turn.spoken_text, "action": turn.action,
                     "item_ids": list(turn.item_ids), "confidence": turn.confidence} for turn in turns],
        "item_ids": list(answer.items) if answer is not None else (list(turns[-1].item_ids) if turns else []),
        "confidence": answer.confidence if answer is not None else None,
        "reason": request.trigger,
        "caller_number": mask(request.caller_number) if request.caller_number else None,
        "sms_sent": [{"id": message.id, "kind": message.kind.value, "item_id": message.item_id,
                      "state": message.status.value, "to": mask(message.phone)}
                     for message in call.sms_messages],
    }


def request_trigger(request: HandoffRequest) -> HandoffTrigger:
    """The ticket's trigger: the request's typed kind, else its prose classified (a request built without `kind`)."""
    if request.kind is not HandoffTrigger.OTHER:
        return request.kind
    return classify_trigger(request.trigger)


class CallbackTickets:
    """Implements `HandoffTarget` by opening a callback ticket that staff call back on: due at once in office hours
    (or without a calendar), else when the next duty period starts."""

    def __init__(self, database: Database, sms: SmsService | None = None, office_hours: OfficeHours | None = None,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.database = database
        self.sms = sms  # confirms the ticket number by SMS when the caller's number is a mobile
        self.desk = TicketDesk(database, office_hours, clock=clock)

    async def offer(self, request: HandoffRequest) -> HandoffOutcome:
        if request.call_id is None:
            log.error("handoff ticket not stored: the call has no record (%s)", request.trigger)
            return HandoffOutcome(prompts.HANDOFF_REGISTERED)
        try:
            ticket = await asyncio.to_thread(self._open, request)
        except StorageError as exc:
            log.error("call %s: handoff ticket not stored: %s", request.call_id, exc)
            return HandoffOutcome(prompts.HANDOFF_REGISTERED)
        if not request.caller_number:  # AudioSocket or a withheld number: nobody can call back
            return HandoffOutcome(prompts.HANDOFF_NO_CALLER_ID.format(ticket=ticket.id), ticket_id=ticket.id)
        if await self._confirm_by_sms(request, ticket.id):
            return HandoffOutcome(prompts.HANDOFF_REGISTERED_SMS.format(ticket=ticket.id), ticket_id=ticket.id)
        return HandoffOutcome(prompts.HANDOFF_REGISTERED_NUMBER.format(ticket=ticket.id), ticket_id=ticket.id)

    def _open(self, request: HandoffRequest) -> HandoffTicket:
        assert request.call_id is not None
        call = self.database.get_call(request.call_id)
        if call is None:
            raise StorageError(f"no call {request.call_id}")
        return self.desk.open(request.call_id, request.trigger, trigger=request_trigger(request),
                              callback_number=request.caller_number, context=ticket_context(call, request))

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

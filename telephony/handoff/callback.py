"""The default handoff until live transfer exists: a callback ticket on the caller's number, and say so."""

from __future__ import annotations

import asyncio
import logging

from telephony.calls import prompts
from telephony.errors import StorageError
from telephony.handoff.base import HandoffOutcome, HandoffRequest
from telephony.store import Database

log = logging.getLogger(__name__)


class CallbackTickets:
    """Implements `HandoffTarget` by opening a handoff ticket that staff call back on."""

    def __init__(self, database: Database) -> None:
        self.database = database

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
        return HandoffOutcome(prompts.HANDOFF_REGISTERED, ticket_id=ticket.id)

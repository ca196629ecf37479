"""What a handoff carries and the seam each way of reaching a person implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rag.base import Answer


@dataclass(frozen=True)
class HandoffRequest:
    """Everything a person needs before saying hello: a value, not the live call."""

    call_id: str | None
    caller_number: str | None
    trigger: str  # why: "caller pressed 0", "caller asked for a human", "ASR unavailable: ...", a gate's reason
    last_answer: Answer | None = None
    transcript: tuple[str, ...] = ()  # the caller's utterances so far, oldest first


@dataclass(frozen=True)
class HandoffOutcome:
    """What the caller is told and what was arranged."""

    spoken: str  # the closing sentence the assistant says
    ticket_id: int | None = None
    transferred: bool = False  # the call left the assistant (a live agent or a PBX took it)


class HandoffTarget(Protocol):
    async def offer(self, request: HandoffRequest) -> HandoffOutcome:
        """Arrange the handoff; never raises for a storage or network fault (say so in `spoken` instead)."""

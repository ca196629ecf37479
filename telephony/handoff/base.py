"""What a handoff carries and the seam each way of reaching a person implements."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from rag.base import Answer, HandoffCause


class HandoffTrigger(StrEnum):
    """Why a caller was handed to people, as a short machine value (`HandoffRequest.kind`, `HandoffTicket.trigger`)."""

    KEY_0 = "key_0"  # pressed 0
    ASKED_FOR_HUMAN = "asked_for_human"  # 「转人工」 in any words
    LOW_CONFIDENCE = "low_confidence"  # the answer gate was not sure enough to answer
    MISUNDERSTOOD_TWICE = "misunderstood_twice"  # two replies in a row asked the caller to say it again
    COMPLAINT = "complaint"  # about the bureau or this service
    CRISIS = "crisis"  # self-harm words, or someone hurt now
    OUT_OF_SCOPE = "out_of_scope"  # another office's business
    ABUSE = "abuse"
    ASR_UNAVAILABLE = "asr_unavailable"
    OTHER = "other"

    @classmethod
    def of(cls, cause: HandoffCause | None) -> HandoffTrigger:
        """The trigger of an answer engine's handoff; OTHER when the answerer did not say why."""
        if cause is None:
            return cls.OTHER
        return cls.CRISIS if cause.crisis else cls(cause.value)


TRIGGER_LABELS: dict[HandoffTrigger, str] = {  # what the agent desk shows
    HandoffTrigger.KEY_0: "来电人按0转人工",
    HandoffTrigger.ASKED_FOR_HUMAN: "来电人要求转人工",
    HandoffTrigger.LOW_CONFIDENCE: "助手没有把握回答",
    HandoffTrigger.MISUNDERSTOOD_TWICE: "连续两次没听懂",
    HandoffTrigger.COMPLAINT: "投诉或不满",
    HandoffTrigger.CRISIS: "紧急情况（人身安全）",
    HandoffTrigger.OUT_OF_SCOPE: "非本单位业务",
    HandoffTrigger.ABUSE: "言语辱骂",
    HandoffTrigger.ASR_UNAVAILABLE: "语音识别不可用",
    HandoffTrigger.OTHER: "其他",
}


@dataclass(frozen=True)
class HandoffRequest:
    """Everything a person needs before saying hello: a value, not the live call."""

    call_id: str | None
    caller_number: str | None
    trigger: str  # why, in words: "caller pressed 0", "ASR unavailable: ...", a gate's reason with its scores
    last_answer: Answer | None = None
    transcript: tuple[str, ...] = ()  # the caller's utterances so far, oldest first
    kind: HandoffTrigger = HandoffTrigger.OTHER  # why, typed; OTHER: a ticket classifies `trigger` instead


@dataclass(frozen=True)
class HandoffOutcome:
    """What the caller is told and what was arranged."""

    spoken: str  # the closing sentence the assistant says
    ticket_id: int | None = None
    transferred: bool = False  # the call left the assistant (a live agent or a PBX took it)


class HandoffTarget(Protocol):
    async def offer(self, request: HandoffRequest) -> HandoffOutcome:
        """Arrange the handoff; never raises for a storage or network fault (say so in `spoken` instead)."""

"""Types and interfaces that cross the rag boundary: scored items, answers, retriever, answerer."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class Action(StrEnum):
    ANSWER = "answer"
    CLARIFY = "clarify"
    HANDOFF = "handoff"


@dataclass(frozen=True)
class ScoredItem:
    """One KB item a retriever ranked for a query, with the score of each channel that voted."""

    item_id: str
    score: float
    channel_scores: dict[str, float] = field(default_factory=dict)
    matched_alias: str | None = None


@dataclass(frozen=True)
class Citation:
    item_id: str
    document: str
    number: str | None
    articles: str | None
    text: str


@dataclass(frozen=True)
class ConversationContext:
    """What the caller asked before in this conversation (most recent last)."""

    previous_item_ids: tuple[str, ...] = ()
    previous_questions: tuple[str, ...] = ()
    # Items the last reply asked the caller to choose between or confirm ("您问的是A，还是B？").
    offered_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    question: str
    action: Action
    spoken: str
    sms: str
    citations: tuple[Citation, ...]
    items: tuple[str, ...]
    confidence: float
    reason: str

    def to_json(self) -> dict:
        """The answer JSON of `POST /api/ask` and `hotline ask --json`."""
        return {
            "question": self.question,
            "action": self.action.value,
            "spoken": self.spoken,
            "sms": self.sms,
            "citations": [citation.text for citation in self.citations],
            "items": list(self.items),
            "confidence": round(self.confidence, 4),
            "reason": self.reason,
        }


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, query: str, limit: int = 5) -> list[ScoredItem]: ...


@runtime_checkable
class Answerer(Protocol):
    async def answer(self, question: str, context: ConversationContext | None = None) -> Answer: ...

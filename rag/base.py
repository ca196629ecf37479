"""Types and interfaces that cross the rag boundary: scored items, answers, retriever, answerer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class Action(StrEnum):
    ANSWER = "answer"
    CLARIFY = "clarify"
    HANDOFF = "handoff"


class ClarifyKind(StrEnum):
    """What a clarifying reply asks the caller for."""

    CHOICE = "choice"  # choose among the offered services: 「您问的是A，还是B？」, also the next two after 「都不是」
    CONFIRM = "confirm"  # confirm the one service offered: 「您问的是不是A？」
    DETAILS = "details"  # a calculator asks for the numbers it needs
    REPEAT = "repeat"  # nothing with meaning was heard (noise, ASR garbage): 「我没听清，请您再说一遍」
    REPHRASE = "rephrase"  # the caller turned every offered service down: 「请您换个说法，再讲一下」


class HandoffCause(StrEnum):
    """Why the engine hands the caller to a person (`Answer.handoff`); the phone dialogue records it as the
    handoff's trigger, and says emergency numbers after hours for the two crises."""

    ASKED_FOR_HUMAN = "asked_for_human"  # 「转人工」 in any words
    LOW_CONFIDENCE = "low_confidence"  # the confidence gate is not sure enough to answer
    OUT_OF_SCOPE = "out_of_scope"  # another office's business, or no social-insurance term at all
    ABUSE = "abuse"  # insults and frustration
    COMPLAINT = "complaint"  # a complaint about the bureau or this service
    SELF_HARM = "self_harm"  # crisis: the caller speaks of ending their life
    ACCIDENT = "accident"  # crisis: someone is being hurt now (a workplace accident happening as they call)

    @property
    def crisis(self) -> bool:
        return self in (HandoffCause.SELF_HARM, HandoffCause.ACCIDENT)


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
class ConversationTurn:
    """One exchange as later questions need it: the caller's text, what the reply did and about which items, and the
    items it asked the caller to choose between or confirm (empty when no choice is pending after it)."""

    question: str
    action: Action
    item_ids: tuple[str, ...]
    offered_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConversationContext:
    """What the caller asked before in this conversation (most recent last)."""

    previous_item_ids: tuple[str, ...] = ()
    previous_questions: tuple[str, ...] = ()
    # Items the last reply asked the caller to choose between or confirm ("您问的是A，还是B？"), or, after an answer
    # that named its service, the alternative it offered ("如果您问的是B，请说‘另一个’").
    offered_item_ids: tuple[str, ...] = ()
    last_action: Action | None = None  # what the last reply did (an answer's offer is a switch, not a menu)

    @property
    def offers_a_switch(self) -> bool:
        """The last reply answered one service and offered another in one line."""
        return self.last_action is Action.ANSWER and bool(self.offered_item_ids) and bool(self.previous_item_ids)

    @classmethod
    def from_turns(cls, turns: Iterable[ConversationTurn]) -> ConversationContext:
        """The context after these turns, oldest first: follow-ups resolve against the last three answered items;
        the last reply's offered items are pending (a calculator's question for numbers offers none)."""
        turns = list(turns)
        answered = [turn.item_ids[0] for turn in turns if turn.action is Action.ANSWER and turn.item_ids]
        offered = turns[-1].offered_item_ids if turns else ()
        last_action = turns[-1].action if turns else None
        return cls(tuple(answered[-3:]), tuple(turn.question for turn in turns[-3:]), tuple(offered), last_action)


@dataclass(frozen=True)
class Answer:
    question: str
    action: Action
    spoken: str
    sms: str
    citations: tuple[Citation, ...]
    items: tuple[str, ...]
    confidence: float
    reason: str  # for people reading the turn log; no code parses it
    clarify: ClarifyKind | None = None  # with Action.CLARIFY: what the caller is asked for (None: which service)
    # The services a CHOICE or CONFIRM offers (the next reply may pick one), or with Action.ANSWER the alternative
    # an answer that named its service offers in one line (the next reply may switch to it: 「另一个」).
    offered_items: tuple[str, ...] = ()
    handoff: HandoffCause | None = None  # with Action.HANDOFF: why (None from an answerer that does not say)

    @property
    def named(self) -> bool:
        """An answer given with the alternative offered: the caller heard which service it is about."""
        return self.action is Action.ANSWER and bool(self.offered_items)

    def as_turn(self) -> ConversationTurn:
        return ConversationTurn(self.question, self.action, self.items, self.offered_items)

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
            "clarify": self.clarify.value if self.clarify is not None else None,
            "offered_items": list(self.offered_items),
            "handoff": self.handoff.value if self.handoff is not None else None,
        }


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, query: str, limit: int = 5) -> list[ScoredItem]: ...


@runtime_checkable
class Answerer(Protocol):
    async def answer(self, question: str, context: ConversationContext | None = None) -> Answer: ...

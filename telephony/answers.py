"""Answers from the current KB version: `Answers.ask(question, context)` for every channel, and the text
conversations of the API and the CLI, each question stored as a turn."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kb.ingest import Passage
from kb.loader import KnowledgeBase
from rag.base import Action, Answer, Answerer, ConversationContext, ConversationTurn, Retriever
from telephony.errors import StorageError, UnknownConversationError
from telephony.store import CallChannel, Database, Turn
from telephony.store.turns import TurnRecord, TurnWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnswerStack:
    """One KB version with the retriever and answerer built on it; replaced whole, never mutated."""

    version: str
    source: str
    kb: KnowledgeBase
    passages: tuple[Passage, ...]
    retriever: Retriever
    answerer: Answerer
    hotwords: tuple[str, ...]  # domain words that bias the ASR towards this KB's vocabulary


class Answers:
    """Serves questions from the current answer stack; `reload` swaps in a newly published KB build."""

    def __init__(self, load: Callable[[], AnswerStack], stack: AnswerStack | None = None) -> None:
        self._load = load
        self.stack = stack or load()

    def reload(self) -> tuple[str, str]:
        """Build a stack from the current build and swap it in with one assignment.

        Requests in flight finish on the stack they started with; a failed load keeps the old stack.
        """
        old = self.stack.version
        new_stack = self._load()
        self.stack = new_stack
        log.info("knowledge base switched from %s to %s (%d items)", old, new_stack.version, len(new_stack.kb))
        return old, new_stack.version

    @property
    def kb(self) -> KnowledgeBase:
        return self.stack.kb

    @property
    def kb_version(self) -> str:
        return self.stack.version

    @property
    def hotwords(self) -> tuple[str, ...]:
        return self.stack.hotwords

    async def ask(self, question: str, context: ConversationContext | None = None) -> Answer:
        return (await self.ask_versioned(question, context))[0]

    async def ask_versioned(self, question: str, context: ConversationContext | None = None) -> tuple[Answer, str]:
        """The answer and the KB version that gave it (one version for the whole question, even across a switch)."""
        stack = self.stack
        return await stack.answerer.answer(question, context), stack.version


@dataclass(frozen=True)
class TextReply:
    answer: Answer
    conversation_id: str | None
    turn_seq: int | None  # None when the turn went to the journal
    timings_ms: dict[str, float]


class TextConversations:
    """The text path (POST /api/ask, `hotline ask`): answer, time, store the turn, continue a stored conversation."""

    def __init__(self, answers: Answers, database: Database, writer: TurnWriter) -> None:
        self.answers = answers
        self.database = database
        self.writer = writer

    async def ask(self, question: str, channel: CallChannel = CallChannel.API, conversation_id: str | None = None,
                  context: ConversationContext | None = None) -> TextReply:
        if conversation_id is not None:
            stored = await asyncio.to_thread(self.context_of, conversation_id)
            context = context if context is not None else stored
        started = time.perf_counter()
        answer, version = await self.answers.ask_versioned(question, context)
        timings = {"answer_ms": round((time.perf_counter() - started) * 1000, 3)}
        call_id, seq = await asyncio.to_thread(self.writer.write, channel, conversation_id,
                                               TurnRecord.of_answer(answer, timings), version)
        return TextReply(answer, call_id, seq, timings)

    def context_of(self, conversation_id: str) -> ConversationContext | None:
        """What was asked and answered before in a stored conversation. Raises `UnknownConversationError` for an id
        the database does not hold; None while the database is unreachable (the question is answered without it)."""
        try:
            call = self.database.get_call(conversation_id)
        except StorageError:
            return None
        if call is None:
            raise UnknownConversationError(f"no conversation {conversation_id}")
        return ConversationContext.from_turns(conversation_turn(turn) for turn in call.turns)


def conversation_turn(turn: Turn) -> ConversationTurn:
    """A stored turn as conversation context. A turn the dialogue answered by itself (请再说一遍, goodbye) counts as a
    question that answered and offered nothing."""
    action = Action(turn.action) if turn.action in tuple(Action) else Action.CLARIFY
    return ConversationTurn(turn.caller_text, action, tuple(turn.item_ids or ()), tuple(turn.offered_item_ids or ()))

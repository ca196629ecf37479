"""The text question path shared by the API and the CLI: retrieve, answer, time, store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from kb.builds import BuildStore, calibration_file
from kb.ingest import Passage
from kb.lexicon import DEFAULT_LEXICON_FILE, load_lexicon
from kb.loader import KnowledgeBase, load_knowledge_base
from rag.base import Action, Answer, ConversationContext, ConversationTurn
from rag.calibration import Calibration, load_calibration
from rag.engine import AnswerEngine
from rag.extractive import AnswerPolicy, CuratedComposer
from rag.embeddings import (LocalModelEmbedding, MultilingualUseEmbedding, NgramHashEmbedding,
                            OpenAICompatibleEmbedding)
from rag.errors import RetrievalError
from rag.vector import VectorIndex, chroma_client
from rag.llm import LlmComposer, LlmConfig
from rag.hybrid import HybridRetriever
from rag.text import TextProcessor
from telephony.errors import StorageError, UnknownConversationError
from telephony.settings import EmbeddingBackend, Settings
from telephony.store import CallChannel, Database, Turn

log = logging.getLogger(__name__)
STORE_AFTER_LIMIT_S = 2.0  # a turn is written at the latest this long after its answer


@dataclass(frozen=True)
class AskResult:
    answer: Answer
    call_id: str | None
    turn_seq: int | None
    timings_ms: dict[str, float]
    stored: asyncio.Task | None = None  # with background_store: resolves to (call id, turn number)


class TurnJournal:
    """Turns that could not be stored are appended here and replayed when the database is back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as journal:
            journal.write(json.dumps(record, ensure_ascii=False) + "\n")

    def replay(self, database: Database) -> int:
        """Store every journaled turn; returns how many were flushed. Lines that fail stay."""
        if not self.path.exists():
            return 0
        kept, flushed = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                call = database.start_call(CallChannel(record.pop("channel")), kb_version=record.pop("kb_version", None))
                database.add_turn(call.id, **record)
                flushed += 1
            except (StorageError, ValueError, TypeError, KeyError) as exc:
                log.warning("journaled turn not flushed: %s", exc)
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        return flushed


@dataclass(frozen=True)
class AnswerStack:
    """One KB version with the retriever and answerer built on it; replaced whole, never mutated."""

    version: str
    source: str
    kb: KnowledgeBase
    passages: tuple[Passage, ...]
    retriever: HybridRetriever
    answerer: AnswerEngine


def build_stack(settings: Settings, kb: KnowledgeBase, version: str, source: str, lexicon_path: Path,
                calibration: Calibration, passages: tuple[Passage, ...] = ()) -> AnswerStack:
    for error in kb.errors:
        log.error("knowledge base: %s (item skipped)", error)
    lexicon = load_lexicon(lexicon_path)
    text = TextProcessor(lexicon)
    weights = calibration.weights.with_overrides(settings.retrieval_weights)
    retriever = HybridRetriever(kb, text, weights)
    if weights.uses_vectors and settings.embedding_backend is not EmbeddingBackend.NONE:
        try:
            retriever.vector = open_vector_index(settings, retriever, version)
        except (RetrievalError, OSError, ValueError) as exc:
            log.error("vector channel off, lexical channels only: %s", exc)
    policy = AnswerPolicy(
        centre_phone=settings.centre_phone,
        sms_signature=settings.sms_signature,
        high_confidence=settings.answer_high_confidence,
        low_confidence=settings.answer_low_confidence,
        max_question_chars=settings.max_question_chars,
    )
    llm = None
    if settings.llm_api_key is not None:
        llm = LlmComposer(
            LlmConfig(
                base_url=settings.llm_base_url, model=settings.llm_model,
                api_key=settings.llm_api_key.get_secret_value(),
                first_token_timeout_s=settings.llm_first_token_timeout_ms / 1000,
                total_timeout_s=settings.llm_total_timeout_ms / 1000, centre_name=settings.centre_name,
            ),
            CuratedComposer(policy),
        )
    answerer = AnswerEngine(kb, retriever, policy, calibration.confidence, llm=llm, lexicon=lexicon)
    retriever.retrieve("社保卡")  # warm jieba and the indexes before the stack serves anyone
    return AnswerStack(version, source, kb, passages, retriever, answerer)


def embedding_function(settings: Settings):
    if settings.embedding_backend is EmbeddingBackend.OPENAI:
        key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else "unused"
        return OpenAICompatibleEmbedding(settings.embedding_base_url, settings.embedding_model, api_key=key)
    if settings.embedding_backend is EmbeddingBackend.LOCAL:
        return LocalModelEmbedding(str(settings.embedding_model_dir))
    if settings.embedding_backend is EmbeddingBackend.NGRAM:
        return NgramHashEmbedding()
    return MultilingualUseEmbedding()


def open_vector_index(settings: Settings, retriever: HybridRetriever, version: str) -> VectorIndex:
    """The chromadb collection for this KB version and embedding function, filled on first use."""
    embedding = embedding_function(settings)
    client = chroma_client(
        path=None if settings.chroma_host else str(settings.data_dir / "chroma"),
        host=settings.chroma_host, port=settings.chroma_port,
    )
    index = VectorIndex(client, f"kb-{version}-{embedding.name()}", embedding)
    texts, item_ids = retriever.vector_documents()
    index.populate(texts, item_ids)
    return index


def conversation_turn(turn: Turn) -> ConversationTurn:
    """A stored turn as conversation context. A turn the dialogue answered by itself (请再说一遍, goodbye) counts as a
    question that answered and offered nothing."""
    action = Action(turn.action) if turn.action in tuple(Action) else Action.CLARIFY
    return ConversationTurn(turn.caller_text, action, tuple(turn.item_ids or ()), tuple(turn.offered_item_ids or ()))


class HotlineService:
    """Serves questions from the current answer stack and records every question as a turn."""

    def __init__(self, settings: Settings, database: Database, kb: KnowledgeBase | None = None) -> None:
        self.settings = settings
        self.database = database
        self.builds = BuildStore(settings.data_dir / "kb-builds")
        self.journal = TurnJournal(settings.data_dir / "turn-journal.jsonl")
        self.stack = self._load_stack(kb)

    def _load_stack(self, kb: KnowledgeBase | None = None) -> AnswerStack:
        # A build serves the calibration it was built with; a KB read from files, the one `hotline kb build` would take.
        calibration_path = calibration_file(self.settings.data_dir)
        if kb is not None:
            return build_stack(self.settings, kb, kb.content_hash[:12], "given", DEFAULT_LEXICON_FILE,
                               load_calibration(calibration_path))
        if self.builds.current() is not None:
            build = self.builds.load()
            return build_stack(self.settings, build.kb, build.manifest.version, f"build {build.manifest.version}",
                               build.lexicon_path, load_calibration(build.calibration_path or calibration_path),
                               build.passages)
        kb = load_knowledge_base(self.settings.kb_dir)
        return build_stack(self.settings, kb, kb.content_hash[:12], f"directory {self.settings.kb_dir}",
                           DEFAULT_LEXICON_FILE, load_calibration(calibration_path))

    def reload(self) -> tuple[str, str]:
        """Build a stack from the current build and swap it in with one assignment.

        Requests in flight finish on the stack they started with; a failed load keeps the old stack.
        """
        old = self.stack.version
        new_stack = self._load_stack()
        self.stack = new_stack
        log.info("knowledge base switched from %s to %s (%d items)", old, new_stack.version, len(new_stack.kb))
        return old, new_stack.version

    # Shortcuts to the current stack, for callers that need one piece.
    @property
    def kb(self) -> KnowledgeBase:
        return self.stack.kb

    @property
    def retriever(self) -> HybridRetriever:
        return self.stack.retriever

    @property
    def answerer(self) -> AnswerEngine:
        return self.stack.answerer

    @property
    def kb_version(self) -> str:
        return self.stack.version

    async def ask(
        self, question: str, channel: CallChannel = CallChannel.API, conversation_id: str | None = None,
        context: ConversationContext | None = None, stage_timings: dict[str, float] | None = None,
        background_store: bool = False, store_after: asyncio.Event | None = None,
        write_lock: asyncio.Lock | None = None,
    ) -> AskResult:
        stack = self.stack  # one version for the whole request, even if a switch happens meanwhile
        if context is None and conversation_id is not None:
            context = await asyncio.to_thread(self.context_of, conversation_id)
        started = time.perf_counter()
        answer = await stack.answerer.answer(question, context)
        timings = {**(stage_timings or {}), "answer_ms": round((time.perf_counter() - started) * 1000, 3)}
        record = {
            "caller_text": answer.question,
            "spoken_text": answer.spoken,
            "sms_text": answer.sms,
            "item_ids": list(answer.items),
            "offered_item_ids": list(answer.offered_items),
            "citations": [citation.text for citation in answer.citations],
            "confidence": answer.confidence,
            "action": answer.action.value,
            "reason": answer.reason,
            "timings_ms": timings,
        }
        if background_store:
            # The caller hears the reply while the turn is written (phone calls: storage is off the critical path).
            task = asyncio.create_task(self._store_or_journal(channel, conversation_id, record, stack.version,
                                                              store_after, write_lock))
            return AskResult(answer, conversation_id, None, timings, stored=task)
        call_id, seq = await self._store_or_journal(channel, conversation_id, record, stack.version)
        return AskResult(answer, call_id, seq, timings)

    async def _store_or_journal(self, channel: CallChannel, conversation_id: str | None, record: dict,
                                version: str, store_after: asyncio.Event | None = None,
                                write_lock: asyncio.Lock | None = None) -> tuple[str | None, int | None]:
        # One call's background writes go through its lock in the order they were made (turn numbers follow it).
        async with write_lock or contextlib.nullcontext():
            if store_after is not None:
                # A phone reply's first audio goes out first: the write's Python work would compete for the GIL.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(store_after.wait(), STORE_AFTER_LIMIT_S)
            try:
                return await asyncio.to_thread(self._store, channel, conversation_id, record, version)
            except StorageError as exc:
                log.error("turn not stored, journaled for later: %s", exc)
                self.journal.append({"channel": channel.value, "kb_version": version, **record})
                return conversation_id, None

    def context_of(self, conversation_id: str) -> ConversationContext | None:
        """What was asked and answered before in a stored conversation (None if unknown or unreachable)."""
        try:
            call = self.database.get_call(conversation_id)
        except StorageError:
            return None
        if call is None:
            return None
        return ConversationContext.from_turns(conversation_turn(turn) for turn in call.turns)

    def _store(self, channel: CallChannel, conversation_id: str | None, record: dict, version: str) -> tuple[str, int]:
        if conversation_id is None:
            conversation_id = self.database.start_call(channel, kb_version=version).id
        elif self.database.get_call(conversation_id) is None:
            raise UnknownConversationError(f"no conversation {conversation_id}")
        turn = self.database.add_turn(conversation_id, **record)
        return conversation_id, turn.seq

"""The embedded-default answerer: curated spoken summary and SMS guide of the best KB item, no LLM."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kb.check import compose_sms
from kb.loader import KnowledgeBase
from kb.schema import ServiceItem
from rag import phrases
from rag.base import Action, Answer, Citation, ConversationContext, Retriever, ScoredItem
from rag.errors import InvalidQuestionError

HUMAN_REQUEST = re.compile(r"转人工|找人工|要人工|人工服务|人工客服|接人工|真人|接线员|跟人说|人来接")


@dataclass(frozen=True)
class AnswerPolicy:
    """Confidence gates and the fixed parts code appends to every answer."""

    centre_phone: str
    sms_signature: str
    high_confidence: float = 0.55
    low_confidence: float = 0.35
    max_question_chars: int = 500


def item_citations(item: ServiceItem) -> tuple[Citation, ...]:
    return tuple(
        Citation(item.id, basis.document, basis.number, basis.articles, basis.citation()) for basis in item.policy_basis
    )


def confidence_of(ranked: list[ScoredItem]) -> float:
    """Map the top candidate's alias match and its lead over the runner-up to 0..1."""
    if not ranked:
        return 0.0
    top = ranked[0]
    runner_up = ranked[1].score if len(ranked) > 1 else 0.0
    lead = (top.score - runner_up) / top.score if top.score > 0 else 0.0
    alias = top.channel_scores.get("alias_match", 0.0)
    return max(0.0, min(1.0, 0.7 * alias + 0.3 * min(1.0, 2 * lead)))


def validate_question(question: str, max_chars: int) -> str:
    if not isinstance(question, str):
        raise InvalidQuestionError("question must be text")
    question = question.strip()
    if not question:
        raise InvalidQuestionError("question is empty")
    if len(question) > max_chars:
        raise InvalidQuestionError(f"question is {len(question)} characters; the limit is {max_chars}")
    return question


class ExtractiveAnswerer:
    """Answers with the curated text of the top item when retrieval is confident, else hands off."""

    def __init__(self, kb: KnowledgeBase, retriever: Retriever, policy: AnswerPolicy) -> None:
        self.kb = kb
        self.retriever = retriever
        self.policy = policy

    async def answer(self, question: str, context: ConversationContext | None = None) -> Answer:
        question = validate_question(question, self.policy.max_question_chars)
        if HUMAN_REQUEST.search(question):
            return Answer(question, Action.HANDOFF, phrases.HANDOFF_REQUESTED, "", (), (), 1.0, "caller asked for a human")
        ranked = self.retriever.retrieve(question, limit=5)
        confidence = confidence_of(ranked)
        if not ranked or confidence < self.policy.low_confidence:
            best = f"best candidate {ranked[0].item_id}" if ranked else "no candidate"
            return Answer(
                question, Action.HANDOFF, phrases.NOT_SURE, "", (), tuple(r.item_id for r in ranked[:3]), confidence,
                f"confidence {confidence:.2f} below the low gate {self.policy.low_confidence:.2f} ({best})",
            )
        top = ranked[0]
        item = self.kb.get(top.item_id)
        assert item is not None, "retriever returned an item the KB does not hold"
        sms = compose_sms(item, self.policy.centre_phone, self.policy.sms_signature)
        reason = f"top item {item.id} ({item.title}); matched {top.matched_alias!r}; confidence {confidence:.2f}"
        return Answer(
            question, Action.ANSWER, item.spoken, sms, item_citations(item), (item.id,), confidence, reason
        )

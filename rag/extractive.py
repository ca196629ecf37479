"""The curated composer (embedded default, no LLM): spoken summary, SMS guide and citations of one item."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from kb.sms_text import compose_sms
from kb.schema import SPOKEN_MAX_CHARS, ServiceItem
from rag import phrases
from rag.base import Action, Answer, Citation
from rag.errors import InvalidQuestionError

# Follow-up intents -> the item section that answers them.
FOLLOWUP_SECTIONS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"材料|带什么|带啥|带些|证件|照片|证明|要什么东西|准备|替我|帮我|代办|本人去"), "materials", "所需材料"),
    (re.compile(r"在哪|哪里办|去哪|哪个地方|网上|手机上|线上|渠道"), "channels", "办理渠道"),
    (re.compile(r"多久|几天|多长时间|什么时候|时限|期限"), "time_limits", "办理时限"),
    (re.compile(r"交钱|要钱|收费|费用|工本费|免费|收钱"), "fees", "收费标准"),
    (re.compile(r"条件|符合|能不能办|可以办吗|有没有资格"), "conditions", "办理条件"),
    (re.compile(r"流程|步骤|怎么办理|咋办理|手续"), "steps", "办理流程"),
    (re.compile(r"进度|查询|办好了没|办到哪"), "progress", "进度查询"),
)
# Confidence of a follow-up answered from a section of the item asked about before: the service is already settled,
# so only the section match can be wrong; without that section the caller hears that the KB does not say.
SECTION_CONFIDENCE = 0.9
SECTION_MISSING_CONFIDENCE = 0.5
_MARKUP = re.compile(r"\*\*|#+ |〔待核实〕|^\s*[-*]\s*|^\s*\d+[.、]\s*", re.MULTILINE)


@dataclass(frozen=True)
class AnswerPolicy:
    """Confidence gates and the fixed parts code appends to every answer."""

    centre_phone: str
    sms_signature: str
    high_confidence: float = 0.95
    low_confidence: float = 0.25
    # In the middle band, from this confidence the top service is answered by name with the runner-up offered in one
    # line (「关于A，…如果您问的是B，请说“另一个”」); below it the caller is asked which one (see docs/eval.md).
    named_confidence: float = 0.5
    max_question_chars: int = 500


def validate_question(question: str, max_chars: int) -> str:
    if not isinstance(question, str):
        raise InvalidQuestionError("question must be text")
    question = question.strip()
    if not question:
        raise InvalidQuestionError("question is empty")
    if len(question) > max_chars:
        raise InvalidQuestionError(f"question is {len(question)} characters; the limit is {max_chars}")
    return question


def item_citations(item: ServiceItem) -> tuple[Citation, ...]:
    return tuple(
        Citation(item.id, basis.document, basis.number, basis.articles, basis.citation()) for basis in item.policy_basis
    )


def short_title(item: ServiceItem) -> str:
    """The title as said in a sentence: without its parenthesised detail (「失业保险金申领」)."""
    title = re.sub(r"（[^）]*）|\([^)]*\)", "", item.title).split("：")[0].strip()
    return title or item.title


def for_the_ear(text: str, limit: int = SPOKEN_MAX_CHARS) -> str:
    """Plain sentences from Markdown, cut at a sentence end within `limit` characters."""
    plain = _MARKUP.sub("", text)
    plain = re.sub(r"\s*\n\s*", "；", plain).strip("； ")
    plain = re.sub(r"；+", "；", plain)
    if len(plain) <= limit:
        return plain
    cut = max(plain.rfind(mark, 0, limit) for mark in "。；！？")
    return plain[: cut + 1] if cut > limit // 3 else plain[: limit - 1] + "…"


class CuratedComposer:
    """Builds answers from the item text itself, with citations and phone appended by code."""

    def __init__(self, policy: AnswerPolicy) -> None:
        self.policy = policy

    def sms(self, item: ServiceItem) -> str:
        return compose_sms(item, self.policy.centre_phone, self.policy.sms_signature)

    def answer(self, question: str, item: ServiceItem, confidence: float, reason: str,
               spoken: str | None = None, asked: str | None = None) -> Answer:
        """The item's answer. Unless `spoken` is given, the spoken reply leads with the fact the question (or `asked`,
        the question a short reply such as 「另一个」 refers to) asks for, when the item states one (`ItemFact`)."""
        if spoken is None:
            spoken = self.spoken_for(asked or question, item)
        return Answer(question, Action.ANSWER, spoken, self.sms(item), item_citations(item), (item.id,), confidence,
                      reason)

    @staticmethod
    def spoken_for(question: str, item: ServiceItem) -> str:
        """The item's spoken summary, after the fact the question asks for when there is one."""
        fact = item.fact_for(question)
        if fact is None:
            return item.spoken
        return fact.say + item.spoken if not item.spoken.startswith(fact.say) else item.spoken

    def named_answer(self, question: str, item: ServiceItem, other: ServiceItem | None, confidence: float,
                     reason: str) -> Answer:
        """「关于A，…」 with, when there is a runner-up, 「如果您问的是B，请说“另一个”」: an answer in the middle band that
        tells the caller which service it is about and how to get the other."""
        return self.name(self.answer(question, item, confidence, reason), item, other)

    @staticmethod
    def name(answer: Answer, item: ServiceItem, other: ServiceItem | None) -> Answer:
        """The answer (curated or composed) led by the name of its service, with the runner-up offered."""
        if answer.action is not Action.ANSWER:
            return answer
        spoken = phrases.NAMED_ANSWER.format(title=short_title(item), spoken=answer.spoken)
        if other is None or other.id == item.id:
            return replace(answer, spoken=spoken)
        spoken += phrases.OFFER_OTHER.format(title=short_title(other))
        return replace(answer, spoken=spoken, offered_items=(other.id,))

    def followup(self, question: str, item: ServiceItem) -> Answer | None:
        """Answer "那要带什么材料" from the matching section of the item asked about before."""
        for pattern, field, heading in FOLLOWUP_SECTIONS:
            if pattern.search(question):
                section = item.section(field)
                spoken = for_the_ear(section) if section else phrases.FOLLOWUP_MISSING
                reason = f"follow-up on {item.id}: section {heading}"
                confidence = SECTION_CONFIDENCE if section else SECTION_MISSING_CONFIDENCE
                return self.answer(question, item, confidence, reason, spoken=spoken)
        return None

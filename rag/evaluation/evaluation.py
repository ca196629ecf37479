"""Batch evaluation of retrieval and answers against a labelled question set (`hotline eval`): cases, metrics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rag.base import (
    Action,
    Answer,
    Answerer,
    ClarifyKind,
    ConversationContext,
    Retriever,
)
from rag.errors import RetrievalError
from rag.evaluation.asr_noise import DEFAULT_SEED, HomophoneNoise, homophone_table

DEFAULT_EVAL_SET = Path(__file__).resolve().parent / "evalset"
HANDOFF = "handoff"
REPEAT = "repeat"  # noise or garbage: the caller must be asked to say it again


@dataclass(frozen=True)
class EvalCase:
    question: str
    expect: tuple[str, ...]  # acceptable item ids, or ("handoff",)
    category: str
    facts: tuple[str, ...] = ()
    context_items: tuple[str, ...] = ()
    lead: tuple[str, ...] = ()  # what the spoken reply itself must say (the fact asked for, not only the SMS)

    @property
    def expects_handoff(self) -> bool:
        return self.expect == (HANDOFF,)

    @property
    def expects_repeat(self) -> bool:
        return self.expect == (REPEAT,)

    @property
    def expects_item(self) -> bool:
        return not (self.expects_handoff or self.expects_repeat)


@dataclass
class CaseResult:
    case: EvalCase
    ranked: list[str]
    action: Action
    answered_item: str | None
    facts_ok: bool
    facts_ok_after_clarify: bool = False  # right after the caller answers one clarifying question
    facts_ok_after_two: bool = False  # right after the caller answers at most two clarifying questions
    named: bool = False  # the answer named its service and offered another in one line
    repeat_asked: bool = False  # the reply asked the caller to say it again (nothing with meaning heard)
    lead_ok: bool = False  # an answer about an expected item whose spoken reply says every `lead` string

    @property
    def rank(self) -> int | None:
        for position, item_id in enumerate(self.ranked, start=1):
            if item_id in self.case.expect:
                return position
        return None


@dataclass
class Metrics:
    questions: int = 0
    hit_at_1: float = 0.0
    hit_at_3: float = 0.0
    mrr: float = 0.0
    answer_fact_accuracy: float = 0.0
    fact_accuracy_after_clarify: float = 0.0
    fact_accuracy_after_two_clarify: float = 0.0
    answer_precision: float = 0.0
    clarify_rate: float = 0.0
    handoff_precision: float = 0.0
    handoff_recall: float = 0.0
    confidently_wrong_rate: float = 0.0
    named_answer_rate: float = 0.0
    named_wrong_rate: float = 0.0
    spoken_fact_accuracy: float = 0.0
    repeat_recall: float = 0.0
    repeat_false_rate: float = 0.0


@dataclass
class EvalReport:
    overall: Metrics
    by_category: dict[str, Metrics] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {
            "overall": asdict(self.overall),
            "by_category": {name: asdict(metrics) for name, metrics in sorted(self.by_category.items())},
            "failures": self.failures,
        }


def load_eval_set(path: Path = DEFAULT_EVAL_SET) -> list[EvalCase]:
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    cases = []
    for file in files:
        for index, raw in enumerate(yaml.safe_load(file.read_text(encoding="utf-8")) or []):
            try:
                expect = raw["expect"]
                cases.append(EvalCase(
                    question=str(raw["q"]),
                    expect=tuple(expect) if isinstance(expect, list) else (str(expect),),
                    category=str(raw.get("category", file.stem)),
                    facts=tuple(str(fact) for fact in raw.get("facts") or ()),
                    context_items=tuple(str(item) for item in raw.get("context") or ()),
                    lead=tuple(str(text) for text in raw.get("lead") or ()),
                ))
            except (KeyError, TypeError) as exc:
                raise RetrievalError(f"{file.name} entry {index}: needs q and expect ({exc})") from exc
    return cases


def with_asr_noise(cases: list[EvalCase], corpus: Iterable[str], rate: float = 0.15,
                   seed: int | None = None) -> list[EvalCase]:
    """One homophone-corrupted copy of every colloquial question, in category `asr_noise`."""
    noise = HomophoneNoise(homophone_table(corpus), rate=rate, seed=DEFAULT_SEED if seed is None else seed)
    return [
        EvalCase(noise.corrupt(case.question), case.expect, "asr_noise", case.facts, case.context_items, case.lead)
        for case in cases if case.category == "colloquial"
    ]


def _ratio(numerator: int, denominator: int) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0


def summarize(results: list[CaseResult]) -> Metrics:
    scored = [result for result in results if result.case.expects_item]
    ranks = [result.rank for result in scored]
    answered = [result for result in results if result.action is Action.ANSWER]
    handed_off = [result for result in results if result.action is Action.HANDOFF]
    should_handoff = [result for result in results if result.case.expects_handoff]
    should_repeat = [result for result in results if result.case.expects_repeat]
    meant = [result for result in results if not result.case.expects_repeat]
    wrong = [result for result in answered if result.answered_item not in result.case.expect]
    with_lead = [result for result in scored if result.case.lead]
    return Metrics(
        questions=len(results),
        hit_at_1=_ratio(sum(1 for rank in ranks if rank == 1), len(scored)),
        hit_at_3=_ratio(sum(1 for rank in ranks if rank is not None and rank <= 3), len(scored)),
        mrr=round(sum(1 / rank for rank in ranks if rank) / len(scored), 4) if scored else 0.0,
        answer_fact_accuracy=_ratio(sum(1 for result in scored if result.facts_ok), len(scored)),
        fact_accuracy_after_clarify=_ratio(sum(1 for result in scored if result.facts_ok_after_clarify), len(scored)),
        fact_accuracy_after_two_clarify=_ratio(sum(1 for result in scored if result.facts_ok_after_two), len(scored)),
        answer_precision=_ratio(sum(1 for result in answered if result.facts_ok), len(answered)),
        clarify_rate=_ratio(sum(1 for result in meant if result.action is Action.CLARIFY and not result.repeat_asked),
                            len(meant)),
        handoff_precision=_ratio(sum(1 for result in handed_off if result.case.expects_handoff), len(handed_off)),
        handoff_recall=_ratio(sum(1 for result in should_handoff if result.action is Action.HANDOFF), len(should_handoff)),
        confidently_wrong_rate=_ratio(sum(1 for result in wrong if not result.named), len(results)),
        named_answer_rate=_ratio(sum(1 for result in answered if result.named), len(results)),
        named_wrong_rate=_ratio(sum(1 for result in wrong if result.named), len(results)),
        spoken_fact_accuracy=_ratio(sum(1 for result in with_lead if result.lead_ok), len(with_lead)),
        repeat_recall=_ratio(sum(1 for result in should_repeat if result.repeat_asked), len(should_repeat)),
        repeat_false_rate=_ratio(sum(1 for result in meant if result.repeat_asked), len(meant)),
    )


async def evaluate(cases: list[EvalCase], retriever: Retriever, answerer: Answerer) -> EvalReport:
    results: list[CaseResult] = []
    for case in cases:
        ranked = [scored.item_id for scored in retriever.retrieve(case.question, limit=10)]
        context = ConversationContext(previous_item_ids=case.context_items) if case.context_items else None
        answer = await answerer.answer(case.question, context)
        answered_item = answer.items[0] if answer.action is Action.ANSWER and answer.items else None
        if context is not None:
            # A follow-up is ranked by what the conversation resolved it to, not by retrieval alone.
            ranked = [*answer.items, *(item_id for item_id in ranked if item_id not in answer.items)]
        text = answer.spoken + "\n" + answer.sms
        # Only an answer can be accurate: a clarifying question or a handoff has not told the caller yet.
        facts_ok = answer.action is Action.ANSWER and all(fact in text for fact in case.facts)
        if case.expects_item and answer.action is Action.ANSWER and answered_item not in case.expect:
            facts_ok = False
        after_one = after_two = facts_ok
        if case.expects_item and not facts_ok and (answer.named or (answer.action is Action.CLARIFY and answer.items)):
            after_one, after_two = await _answer_after_choices(case, answer, context, answerer)
        lead_ok = facts_ok and all(text in answer.spoken for text in case.lead)
        results.append(CaseResult(case, ranked, answer.action, answered_item, facts_ok, after_one, after_two,
                                  answer.named, answer.clarify is ClarifyKind.REPEAT, lead_ok))
    by_category: dict[str, list[CaseResult]] = defaultdict(list)
    for result in results:
        by_category[result.case.category].append(result)
    failures = [
        {"q": r.case.question, "expect": list(r.case.expect), "action": r.action.value,
         "answered": r.answered_item, "top3": r.ranked[:3]}
        for r in results
        if (r.case.expects_handoff and r.action is not Action.HANDOFF)
        or (r.case.expects_repeat and not r.repeat_asked)
        or (r.case.expects_item and (r.rank != 1 or not r.facts_ok or (r.case.lead and not r.lead_ok)))
    ]
    return EvalReport(summarize(results), {name: summarize(group) for name, group in by_category.items()}, failures)


async def _answer_after_choices(case: EvalCase, first: Answer, context: ConversationContext | None,
                                answerer: Answerer) -> tuple[bool, bool]:
    """Play the caller who answers truthfully: to a clarifying question "第一个", "第二个", "是的" or "都不是"; to an
    answer about the wrong service that offered another, "另一个" when the offer is right, else "都不是". Whether the
    reply after the first such exchange is a right answer, and whether one comes within two."""
    base = context or ConversationContext()
    questions = (*base.previous_questions, case.question)
    answered = (*base.previous_item_ids, *first.items) if first.action is Action.ANSWER else base.previous_item_ids
    offered, last_action = first.offered_items or first.items, first.action
    results = []
    for _exchange in range(2):
        right = [index for index, item_id in enumerate(offered) if item_id in case.expect]
        if last_action is Action.ANSWER:
            reply = "另一个" if right else "都不是"
        elif not right:
            reply = "都不是"
        elif len(offered) == 1:
            reply = "是的"
        else:
            reply = "第一个" if right[0] == 0 else "第二个"
        answer = await answerer.answer(reply, ConversationContext(answered, questions, offered, last_action))
        if answer.action is Action.ANSWER:
            right_answer = bool(answer.items) and answer.items[0] in case.expect
            text = answer.spoken + "\n" + answer.sms
            results.append(right_answer and all(fact in text for fact in case.facts))
            break
        results.append(False)
        if answer.action is not Action.CLARIFY or not answer.items:
            break
        questions, offered, last_action = (*questions, reply), answer.items, answer.action
    return results[0], any(results)

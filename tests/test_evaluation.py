"""The evaluation harness's arithmetic: ranks, first-reply answers, clarifying exchanges played by a truthful
caller, answer precision and confidently wrong answers, on a scripted answerer."""

from __future__ import annotations

from rag.base import Action, Answer, ConversationContext, ScoredItem
from rag.evaluation import EvalCase, evaluate

RANKING = {"卡丢了": ["card", "pension", "injury"], "认证": ["card", "pension", "injury"],
           "工伤": ["card", "pension", "injury"], "退休": ["pension", "card", "injury"],
           "天气": ["injury", "card", "pension"]}


class ScriptedRetriever:
    def retrieve(self, query: str, limit: int = 5) -> list[ScoredItem]:
        return [ScoredItem(item, 1.0 / rank, {}, None) for rank, item in enumerate(RANKING.get(query, []), 1)][:limit]


class ScriptedAnswerer:
    """卡丢了: answered at once; 认证 and 工伤: "card or pension?", and after 都不是 "injury or …?"; 退休: answered
    about the wrong item; 天气: handed off."""

    def __init__(self) -> None:
        self.replies: list[tuple[str, ConversationContext | None]] = []

    async def answer(self, question: str, context: ConversationContext | None = None) -> Answer:
        self.replies.append((question, context))
        if question == "卡丢了":
            return Answer(question, Action.ANSWER, "先挂失", "带身份证", (), ("card",), 0.99, "high")
        if question in ("认证", "工伤"):
            return Answer(question, Action.CLARIFY, "A还是B？", "", (), ("card", "pension"), 0.6, "middle")
        if question == "第二个" and context.offered_item_ids == ("card", "pension"):
            return Answer(question, Action.ANSWER, "每年认证", "刷脸认证", (), ("pension",), 0.9, "chose")
        if question == "都不是" and context.offered_item_ids == ("card", "pension"):
            return Answer(question, Action.CLARIFY, "那C还是D？", "", (), ("injury", "card"), 0.0, "middle")
        if question == "第一个" and context.offered_item_ids == ("injury", "card"):
            return Answer(question, Action.ANSWER, "工伤认定", "30日内申请", (), ("injury",), 0.9, "chose")
        if question == "退休":
            return Answer(question, Action.ANSWER, "养老金", "", (), ("card",), 0.97, "high")
        return Answer(question, Action.HANDOFF, "转人工", "", (), (), 0.1, "low")


async def test_metrics_follow_the_callers_path() -> None:
    cases = [
        EvalCase("卡丢了", ("card",), "colloquial", facts=("挂失", "身份证")),
        EvalCase("认证", ("pension",), "colloquial", facts=("刷脸",)),
        EvalCase("工伤", ("injury",), "colloquial", facts=("30日",)),
        EvalCase("退休", ("pension",), "colloquial"),
        EvalCase("天气", ("handoff",), "out_of_scope"),
    ]
    answerer = ScriptedAnswerer()
    report = await evaluate(cases, ScriptedRetriever(), answerer)
    overall = report.overall
    assert (overall.hit_at_1, overall.hit_at_3) == (0.5, 1.0)  # 卡丢了 and 退休 (pension) ranked first
    assert overall.answer_fact_accuracy == 0.25  # only 卡丢了 is right at once
    assert overall.fact_accuracy_after_clarify == 0.5  # 认证 after "第二个"
    assert overall.fact_accuracy_after_two_clarify == 0.75  # 工伤 after "都不是" and "第一个"
    assert overall.answer_precision == 0.5  # two first-reply answers, one about the wrong item
    assert overall.confidently_wrong_rate == 0.2 and overall.clarify_rate == 0.4
    assert (overall.handoff_precision, overall.handoff_recall) == (1.0, 1.0)
    # The second exchange carries both earlier caller texts and the newly offered services.
    second = [context for question, context in answerer.replies if question == "第一个"]
    assert second and second[0].previous_questions == ("工伤", "都不是")
    assert second[0].offered_item_ids == ("injury", "card")


def test_the_answer_path_never_imports_the_evaluation_tooling() -> None:
    from tests.test_architecture import GRAPH

    product = [module for module in GRAPH if module.startswith("rag.") and not module.startswith("rag.evaluation")]
    wrong = [f"{module} imports {target}" for module in product for target in GRAPH[module]
             if target.startswith("rag.evaluation")]
    assert product and wrong == []

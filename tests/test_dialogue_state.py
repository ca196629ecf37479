"""Typed dialogue state: what a clarifying reply asks for, the services it offers, and the context built from turns."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from kb.loader import load_knowledge_base
from rag.base import Action, Answer, ClarifyKind, ConversationContext, ConversationTurn, ScoredItem
from rag.confidence import FEATURES, ConfidenceModel
from rag.engine import AnswerEngine
from rag.extractive import AnswerPolicy
from tests.kbfixtures import make_mini_kb

MIDDLE_BAND = ConfidenceModel((0.0,) * len(FEATURES), 0.0)  # 0.5 for every ranking: between the two gates


class ScriptedRetriever:
    def __init__(self, ranking: list[tuple[str, float]]) -> None:
        self.ranking = ranking

    def retrieve(self, query: str, limit: int = 5) -> list[ScoredItem]:
        return [ScoredItem(item_id, score, {}, None) for item_id, score in self.ranking][:limit]


def engine(tmp_path: Path, ranking: list[tuple[str, float]], named_from: float = 0.6) -> AnswerEngine:
    """An engine whose every ranking sits in the middle band at confidence 0.5; it answers by name from
    `named_from` (above 0.5: it asks instead)."""
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    policy = AnswerPolicy(centre_phone="0773-0000000", sms_signature="测试社保", named_confidence=named_from)
    return AnswerEngine(kb, ScriptedRetriever(ranking), policy, MIDDLE_BAND)


async def test_the_more_likely_service_is_answered_by_name_with_the_other_offered(tmp_path: Path) -> None:
    answerer = engine(tmp_path, [("card-loss-report", 1.0), ("pension-certification-test", 0.9)], named_from=0.4)
    answer = await answerer.answer("卡的事情")
    assert (answer.action, answer.items, answer.offered_items) == (Action.ANSWER, ("card-loss-report",),
                                                                   ("pension-certification-test",))
    assert answer.named and answer.spoken.startswith("关于社会保障卡挂失与解挂，")
    assert answer.spoken.endswith("请说“另一个”。") and answer.sms and answer.citations
    context = ConversationContext.from_turns([answer.as_turn()])
    assert context.offers_a_switch and context.last_action is Action.ANSWER
    for reply in ("另一个", "不是这个", "不是这个，是另外一个"):
        switched = await answerer.answer(reply, context)
        assert (switched.action, switched.items, switched.offered_items) == (
            Action.ANSWER, ("pension-certification-test",), ()), reply
        assert "caller switched from card-loss-report" in switched.reason
    # 「都不是」 turns both down: the next candidates of the first question are offered (none left here).
    rejected = await answerer.answer("都不是", context)
    assert rejected.action is Action.CLARIFY and rejected.items == ()
    # Anything else is a new question or a follow-up, not a switch.
    followed = await answerer.answer("那要带什么材料", context)
    assert followed.items == ("card-loss-report",) and "follow-up" in followed.reason


async def test_a_clear_leader_in_the_middle_band_is_offered_for_confirmation(tmp_path: Path) -> None:
    answerer = engine(tmp_path, [("card-loss-report", 1.0), ("pension-certification-test", 0.1)])
    asked = await answerer.answer("卡的事情")
    assert (asked.action, asked.clarify, asked.offered_items) == (Action.CLARIFY, ClarifyKind.CONFIRM,
                                                                  ("card-loss-report",))
    assert asked.spoken == "您问的是不是“社会保障卡挂失与解挂”？"
    confirmed = await answerer.answer("是的", ConversationContext.from_turns([asked.as_turn()]))
    assert confirmed.action is Action.ANSWER and confirmed.items == ("card-loss-report",)


async def test_two_close_services_are_offered_as_a_choice(tmp_path: Path) -> None:
    answerer = engine(tmp_path, [("card-loss-report", 1.0), ("pension-certification-test", 0.9)])
    asked = await answerer.answer("卡的事情")
    assert asked.clarify is ClarifyKind.CHOICE
    assert asked.offered_items == asked.items == ("card-loss-report", "pension-certification-test")
    picked = await answerer.answer("第二个", ConversationContext.from_turns([asked.as_turn()]))
    assert picked.action is Action.ANSWER and picked.items == ("pension-certification-test",)


def test_the_context_takes_answered_items_and_only_the_last_replys_offer() -> None:
    turns = [
        ConversationTurn("社保卡丢了怎么办", Action.ANSWER, ("card-loss-report",)),
        ConversationTurn("养老认证", Action.ANSWER, ("pension-certification-test", "card-loss-report")),
        ConversationTurn("我想办社保卡", Action.CLARIFY, ("card-apply", "card-reissue"), ("card-apply", "card-reissue")),
    ]
    context = ConversationContext.from_turns(turns)
    assert context == ConversationContext(("card-loss-report", "pension-certification-test"),
                                          ("社保卡丢了怎么办", "养老认证", "我想办社保卡"), ("card-apply", "card-reissue"),
                                          Action.CLARIFY)
    assert not context.offers_a_switch  # a menu's offer is a choice, not a switch
    # A calculator's question for numbers names its item but offers no choice; a later turn clears an offer.
    details = ConversationTurn("我什么时候退休", Action.CLARIFY, ("retirement-age-query",))
    assert ConversationContext.from_turns([*turns, details]).offered_item_ids == ()
    assert ConversationContext.from_turns([*turns, details]).previous_questions == ("养老认证", "我想办社保卡",
                                                                                  "我什么时候退休")
    assert ConversationContext.from_turns([]) == ConversationContext()


def test_an_answer_carries_its_clarify_state_into_its_turn_and_json() -> None:
    answer = Answer("我想办社保卡", Action.CLARIFY, "请问您问的是A，还是B？", "", (), ("a", "b"), 0.6,
                    "middle, choose between the two closest", ClarifyKind.CHOICE, ("a", "b"))
    assert answer.as_turn() == ConversationTurn("我想办社保卡", Action.CLARIFY, ("a", "b"), ("a", "b"))
    payload = answer.to_json()
    assert payload["clarify"] == "choice" and payload["offered_items"] == ["a", "b"]
    assert payload["reason"] == "middle, choose between the two closest" and payload["items"] == ["a", "b"]
    plain = Answer("转人工", Action.HANDOFF, "好的", "", (), (), 1.0, "caller asked for a human")
    assert plain.to_json()["clarify"] is None and plain.to_json()["offered_items"] == []


class LoopWatchingRetriever(ScriptedRetriever):
    """Retrieves only after a coroutine on the event loop ran: it can run only if retrieval is off the loop (as a
    vector index that waits on the network must be, or every call on the worker waits with it)."""

    def __init__(self, ranking: list[tuple[str, float]]) -> None:
        super().__init__(ranking)
        self.loop_ran = threading.Event()
        self.saw_the_loop_run: list[bool] = []

    def retrieve(self, query: str, limit: int = 5) -> list[ScoredItem]:
        self.saw_the_loop_run.append(self.loop_ran.wait(10))
        return super().retrieve(query, limit)


async def test_retrieval_runs_off_the_event_loop(tmp_path: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    policy = AnswerPolicy(centre_phone="0773-0000000", sms_signature="测试社保", named_confidence=0.6)
    retriever = LoopWatchingRetriever([("card-loss-report", 1.0), ("pension-certification-test", 0.1)])
    answerer = AnswerEngine(kb, retriever, policy, MIDDLE_BAND)

    async def another_call() -> None:
        await asyncio.sleep(0.05)
        retriever.loop_ran.set()

    other = asyncio.create_task(another_call())
    asked = await answerer.answer("卡的事情")
    await other
    assert asked.offered_items == ("card-loss-report",) and retriever.saw_the_loop_run == [True]

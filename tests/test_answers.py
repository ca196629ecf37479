"""The answer engine on the shipped KB: calculators, homophones, clarifying choices, gates, noise model."""

from __future__ import annotations

import pytest

from rag import phrases
from rag.evaluation.asr_noise import HomophoneNoise, homophone_table
from rag.base import Action, ClarifyKind, ConversationContext
from rag.calculators import (
    RetirementCategory,
    minimum_contribution_years,
    retirement_age,
    unemployment_benefit_months,
)
from rag.numerals import find_year_month
from rag.text import SoundCorrector
from telephony.app import Hotline
from telephony.settings import Settings
from telephony.store import Database


@pytest.fixture(scope="module")
def hotline(tmp_path_factory: pytest.TempPathFactory) -> Hotline:
    directory = tmp_path_factory.mktemp("answers")
    settings = Settings(data_dir=directory / "var", centre_phone="0773-0000000", sms_signature="测试社保")
    database = Database(f"sqlite:///{directory / 'answers.db'}")
    return Hotline.open(settings, database)


# Worked examples of the 2025 gradual retirement reform (research/domain_facts.md §3).
@pytest.mark.parametrize(("category", "year", "month", "age", "retire"), [
    (RetirementCategory.MALE, 1965, 1, (60, 1), (2025, 2)),
    (RetirementCategory.MALE, 1965, 12, (60, 3), (2026, 3)),
    (RetirementCategory.MALE, 1970, 1, (61, 4), (2031, 5)),
    (RetirementCategory.MALE, 1976, 9, (63, 0), (2039, 9)),
    (RetirementCategory.MALE, 1964, 12, (60, 0), (2024, 12)),
    (RetirementCategory.FEMALE_50, 1975, 1, (50, 1), (2025, 2)),
    (RetirementCategory.FEMALE_50, 1975, 6, (50, 3), (2025, 9)),
    (RetirementCategory.FEMALE_50, 1975, 12, (50, 6), (2026, 6)),
    (RetirementCategory.FEMALE_50, 1976, 12, (51, 0), (2027, 12)),
    (RetirementCategory.FEMALE_50, 1980, 1, (52, 7), (2032, 8)),
    (RetirementCategory.FEMALE_50, 1984, 11, (55, 0), (2039, 11)),
    (RetirementCategory.FEMALE_55, 1970, 1, (55, 1), (2025, 2)),
    (RetirementCategory.FEMALE_55, 1975, 6, (56, 5), (2031, 11)),
    (RetirementCategory.FEMALE_55, 1981, 9, (58, 0), (2039, 9)),
])
def test_retirement_age_matches_the_reform_examples(category, year, month, age, retire) -> None:
    result = retirement_age(category, year, month)
    assert (result.age_years, result.age_months) == age
    assert (result.retire_year, result.retire_month) == retire


def test_minimum_years_and_unemployment_months() -> None:
    assert minimum_contribution_years(2029) == 15
    assert minimum_contribution_years(2030) == 15.5
    assert minimum_contribution_years(2039) == 20
    assert minimum_contribution_years(2045) == 20
    assert [unemployment_benefit_months(years) for years in (0.5, 1, 4.9, 5, 9, 10, 30)] == [0, 12, 12, 18, 18, 24, 24]


def test_chinese_numerals_in_dates() -> None:
    assert find_year_month("一九六五年五月出生") == (1965, 5)
    assert find_year_month("我是七零年十二月生的") == (1970, 12)
    assert find_year_month("1972年3月") == (1972, 3)


async def test_calculator_answers_and_asks_for_what_is_missing(hotline: Hotline) -> None:
    answer = await hotline.answers.ask("一九六五年五月出生的男的什么时候退休")
    assert answer.action is Action.ANSWER and answer.items == ("retirement-age-query",)
    assert "60岁2个月" in answer.spoken and "2025年7月" in answer.spoken
    assert "0773-0000000" in answer.sms

    asked = await hotline.answers.ask("我是一九七五年六月出生的，什么时候退休")
    assert asked.action is Action.CLARIFY and asked.spoken == "请问是男同志还是女同志？"
    assert asked.clarify is ClarifyKind.DETAILS and asked.offered_items == ()  # numbers asked for, no choice
    followed = await hotline.answers.ask(
        "女的，原来五十岁退休的工人", ConversationContext(previous_questions=("我是一九七五年六月出生的，什么时候退休",)))
    assert followed.action is Action.ANSWER and "50岁3个月" in followed.spoken

    when = await hotline.answers.ask("我什么时候退休")
    assert when.action is Action.CLARIFY and "出生的年份和月份" in when.spoken


@pytest.mark.parametrize(("question", "item"), [
    ("公伤认定要什么材料", "injury-recognition"),
    ("失叶金怎么领", "unemployment-benefit-application"),
    ("社保卡掉了", "card-loss-report"),
])
async def test_asr_homophones_still_find_the_service(hotline: Hotline, question: str, item: str) -> None:
    assert hotline.answers.stack.retriever.retrieve(question, limit=1)[0].item_id == item
    answer = await hotline.answers.ask(question)
    assert answer.action is not Action.HANDOFF  # never treated as out of scope


def test_sound_corrector_leaves_real_words_alone() -> None:
    corrector = SoundCorrector(["失业金", "工伤", "丧葬费"])
    assert corrector.correct("失叶金怎么领") == "失业金怎么领"
    assert corrector.correct("公伤认定") == "工伤认定"
    assert corrector.correct("事业单位") == "事业单位"  # a real word with the same sound as 失业
    assert corrector.correct("丧脏费") == "丧葬费"


async def test_a_clarifying_choice_is_resolved_by_the_callers_reply(hotline: Hotline) -> None:
    first = await hotline.answers.ask("我想办社保卡")
    assert first.action is Action.CLARIFY and len(first.items) == 2
    assert first.spoken.startswith("请问您问的是")
    assert first.clarify is ClarifyKind.CHOICE and first.offered_items == first.items
    offered = ConversationContext(previous_questions=("我想办社保卡",), offered_item_ids=first.items)

    second = await hotline.answers.ask("第二个", offered)
    assert second.action is Action.ANSWER and second.items == (first.items[1],)
    assert second.citations and "0773-0000000" in second.sms

    first_choice = await hotline.answers.ask("前面那个", offered)
    assert first_choice.items == (first.items[0],)

    # Neither: the next two services the question ranked are offered, once; then the caller is asked to rephrase.
    rejected = await hotline.answers.ask("都不是", offered)
    ranked = [scored.item_id for scored in hotline.answers.stack.retriever.retrieve("我想办社保卡", limit=4)]
    assert rejected.action is Action.CLARIFY and rejected.items == tuple(ranked[2:4])
    assert rejected.spoken.startswith("那您问的是") and hotline.answers.kb.get(ranked[2]).title in rejected.spoken
    assert rejected.clarify is ClarifyKind.CHOICE and rejected.offered_items == rejected.items
    offered_again = ConversationContext(previous_questions=("我想办社保卡", "都不是"), offered_item_ids=rejected.items)
    picked = await hotline.answers.ask("第二个", offered_again)
    assert picked.action is Action.ANSWER and picked.items == (ranked[3],)
    rejected_again = await hotline.answers.ask("都不是", offered_again)
    assert rejected_again.action is Action.CLARIFY and rejected_again.items == ()
    assert "换个说法" in rejected_again.spoken
    assert rejected_again.clarify is ClarifyKind.REPHRASE and rejected_again.offered_items == ()
    without_question = await hotline.answers.ask("都不是", ConversationContext(offered_item_ids=first.items))
    assert without_question.items == () and "换个说法" in without_question.spoken

    confirmed = await hotline.answers.ask("是的", ConversationContext(offered_item_ids=("card-loss-report",)))
    assert confirmed.action is Action.ANSWER and confirmed.items == ("card-loss-report",)
    assert confirmed.clarify is None and confirmed.offered_items == ()

    # A new full question is not mistaken for a choice.
    fresh = await hotline.answers.ask("社保卡丢了怎么办", offered)
    assert fresh.items == ("card-loss-report",)


async def test_the_stored_conversation_carries_the_offered_choice(hotline: Hotline) -> None:
    first = await hotline.conversations.ask("我想办社保卡")
    assert first.answer.action is Action.CLARIFY
    second = await hotline.conversations.ask("第二个", conversation_id=first.conversation_id)
    assert second.answer.action is Action.ANSWER and second.answer.items == (first.answer.items[1],)


@pytest.mark.parametrize("question", ["今天天气怎么样", "帮我订一张去北京的火车票", "你会唱歌吗，给我唱一首",
                                      "我妈想申请低保要啥材料", "驾驶证到期了去哪里换", "你觉得这个政策好不好",
                                      "办结婚证"])
async def test_out_of_scope_is_handed_off(hotline: Hotline, question: str) -> None:
    answer = await hotline.answers.ask(question)
    assert answer.action is Action.HANDOFF and answer.sms == ""
    assert answer.reason.startswith("out of scope")


@pytest.mark.parametrize("question", ["转人工", "帮我接一下客服", "喊个人来嘛", "我不想跟机器讲", "你们领导在不在",
                                      "我要找专门管工伤的同志讲", "能不能帮我接到社保局里面的人"])
async def test_asking_for_a_person_in_any_words_is_handed_off(hotline: Hotline, question: str) -> None:
    answer = await hotline.answers.ask(question)
    assert (answer.action, answer.spoken, answer.reason) == (Action.HANDOFF, phrases.HANDOFF_REQUESTED,
                                                             "caller asked for a human")


@pytest.mark.parametrize(("question", "item"), [
    ("我们厂里有个工人工伤住院了，单位要在多少天内去申请工伤认定", "injury-recognition"),
    ("伤残补助金里说的本人工资是按哪个月的算", "injury-disability-benefits"),
    ("找个人帮我代办社保卡补办可以吗", "card-reissue"),
])
async def test_words_that_merely_contain_a_human_request_are_answered(hotline: Hotline, question: str,
                                                                      item: str) -> None:
    answer = await hotline.answers.ask(question)
    assert answer.action is not Action.HANDOFF and answer.items[0] == item


async def test_insults_and_frustration_go_to_a_person(hotline: Hotline) -> None:
    for remark in ("你是不是傻哦", "啥子破系统", "一点用都没得"):
        answer = await hotline.answers.ask(remark)
        assert (answer.action, answer.spoken) == (Action.HANDOFF, phrases.ABUSE), remark
    answer = await hotline.answers.ask("我的社保卡一直没用过，要先激活吗")  # 没用过 is no complaint
    assert answer.action is not Action.HANDOFF


async def test_noise_is_asked_again_and_a_general_opener_is_asked_which_service(hotline: Hotline) -> None:
    for noise in ("嗯那个", "喂喂喂", "啊啊啊啊", "的了吗是在不", "金那个么的了个呃", "幺三九幺七", "ok ok hello"):
        answer = await hotline.answers.ask(noise)
        assert (answer.action, answer.clarify, answer.spoken) == (Action.CLARIFY, ClarifyKind.REPEAT,
                                                                  phrases.NOT_HEARD), noise
    for opener in ("那个我问一下", "就是说那个社保", "我想咨询一下社保的事情"):
        answer = await hotline.answers.ask(opener)
        assert (answer.action, answer.spoken, answer.items) == (Action.CLARIFY, phrases.EMPTY_QUESTION, ()), opener
    # Short questions are not noise: with an item asked before they are follow-ups on it.
    followed = await hotline.answers.ask("在哪办", ConversationContext(previous_item_ids=("card-reissue",)))
    assert followed.action is Action.ANSWER and followed.items == ("card-reissue",)


async def test_a_short_question_naming_another_service_is_a_new_question_not_a_follow_up(hotline: Hotline) -> None:
    after_unemployment = ConversationContext(previous_item_ids=("unemployment-benefit-application",))
    switched = await hotline.answers.ask("社保卡丢了怎么办", after_unemployment)
    assert switched.action is Action.ANSWER and switched.items[0] == "card-loss-report"
    switched = await hotline.answers.ask("工伤怎么认定", ConversationContext(previous_item_ids=("card-activation",)))
    assert switched.action is Action.ANSWER and switched.items[0] == "injury-recognition"
    # A short question that names no other service, or the same one, stays on the item answered before.
    for question in ("要带什么材料", "失业金在哪里领"):
        followed = await hotline.answers.ask(question, after_unemployment)
        assert followed.items[0] == "unemployment-benefit-application", question


async def test_another_offices_word_does_not_hide_a_social_insurance_question(hotline: Hotline) -> None:
    answer = await hotline.answers.ask("农村户口的老人家怎么参加城乡居民养老保险")
    assert answer.action is not Action.HANDOFF
    assert "resident-pension-enrollment" in answer.items


def test_homophone_noise_is_deterministic_and_changes_sounds_not_length() -> None:
    table = homophone_table(["工伤认定需要材料", "公司上班失业金", "功能认真"])
    noisy = HomophoneNoise(table, rate=0.5, seed=7).corrupt("工伤认定")
    assert noisy == HomophoneNoise(table, rate=0.5, seed=7).corrupt("工伤认定")
    assert noisy != "工伤认定" and len(noisy) == 4


def test_kb_search_endpoint_ranks_items_with_channel_scores(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from telephony.web.app import create_app

    with TestClient(create_app(settings)) as client:
        response = client.get("/api/kb/search", params={"q": "公伤认定", "limit": 3})
        assert response.status_code == 200
        body = response.json()
        assert body["results"][0]["item"] == "injury-recognition"
        assert len(body["results"]) == 3 and "centroid" in body["results"][0]["channels"]
        assert client.get("/api/kb/search").status_code == 422


@pytest.mark.parametrize(("question", "item"), [
    ("领失业金要什么条件", "unemployment-benefit-application"),
    ("工伤一级伤残一次性补助金给多少", "injury-disability-benefits"),
    ("怎么查我的社保交了多少年", "contribution-years-query"),
])
async def test_a_clear_question_gets_an_answer_on_the_first_reply_not_a_menu(hotline: Hotline, question: str,
                                                                               item: str) -> None:
    answer = await hotline.answers.ask(question)
    assert answer.action is Action.ANSWER and answer.items == (item,), answer.reason
    assert answer.sms and answer.citations


async def test_the_spoken_reply_leads_with_the_fact_asked_for(hotline: Hotline) -> None:
    answer = await hotline.answers.ask("工伤一级伤残一次性补助金给多少")
    assert answer.items == ("injury-disability-benefits",)
    fact = hotline.answers.kb.get("injury-disability-benefits").fact_for("工伤一级伤残一次性补助金给多少")
    assert fact is not None and "27个月" in fact.say
    assert answer.spoken.index("27个月") < answer.spoken.index(hotline.answers.kb.get(
        "injury-disability-benefits").spoken[:10])  # the number comes before the item's usual summary


async def test_a_pair_that_would_mislead_is_still_asked_not_answered(hotline: Hotline) -> None:
    answer = await hotline.answers.ask("我想办社保卡")
    assert answer.clarify is ClarifyKind.CHOICE
    assert set(answer.offered_items) == {"card-first-application-adult", "card-application-minor"}
    assert "a pair the caller must choose between" in answer.reason


async def test_a_duration_or_a_relative_does_not_start_the_retirement_calculator(hotline: Hotline) -> None:
    short = await hotline.answers.ask("到退休年龄了社保才交了十年，咋个办")
    assert short.action is Action.ANSWER and short.items == ("insufficient-years-extension",), short.reason
    survivors = await hotline.answers.ask("退休的老人去世了，家属能领丧葬费和抚恤金吗")
    assert survivors.clarify is not ClarifyKind.DETAILS and "retirement calculator" not in survivors.reason
    # Enterprise or 机关事业 pensioner is not said: the pair is asked (`ask_between`), not answered one for the other.
    assert survivors.items[0] == "survivor-funeral-pension-benefit"
    assert set(survivors.offered_items) == {"survivor-funeral-pension-benefit", "institution-pensioner-death-benefit"}


async def test_a_stored_conversation_switches_to_the_offered_service(hotline: Hotline) -> None:
    """The switch survives storage: the turn keeps the answer's offer and action, and 「另一个」 in the next turn
    answers the offered service (as a phone call's dialogue does, through the same context)."""
    from telephony.store import CallChannel

    first = await hotline.conversations.ask("领失业金要什么条件", CallChannel.API)
    assert first.answer.named and first.answer.items == ("unemployment-benefit-application",)
    offered = first.answer.offered_items
    assert offered and "请说“另一个”" in first.answer.spoken
    switched = await hotline.conversations.ask("另一个", CallChannel.API, first.conversation_id)
    assert (switched.answer.action, switched.answer.items) == (Action.ANSWER, offered)
    assert switched.turn_seq == first.turn_seq + 1
    # After the switch nothing is pending: 「另一个」 again is a new (empty) question, not a second switch.
    again = await hotline.conversations.ask("另一个", CallChannel.API, first.conversation_id)
    assert again.answer.items != first.answer.items


async def test_the_issues_fact_question_is_answered_with_the_number_first(hotline: Hotline) -> None:
    answer = await hotline.answers.ask("最少交多少年")
    assert answer.action is Action.ANSWER, answer.reason
    assert answer.spoken.index("15年") < 40  # the minimum years lead the reply, before any procedure

"""When the call goes to a person (issue 18): 转人工, key 0, two misunderstandings in a row, complaints, insults and
crises each hand off once, and the ticket records why; after hours a crisis hears the emergency numbers first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from zoneinfo import ZoneInfo

import pytest

from kb.loader import load_knowledge_base
from rag import phrases
from rag.base import Action, ConversationContext, HandoffCause
from rag.engine import crisis, is_complaint
from rag.evaluation import load_eval_set
from telephony.app import Hotline, call_config, open_now
from telephony.calls import prompts
from telephony.calls.dialogue import CallParty, CallSession
from telephony.calls.prerender import fixed_prompts
from telephony.calls.turn_log import TurnLog
from telephony.handoff.base import HandoffRequest, HandoffTrigger
from telephony.handoff.callback import CallbackTickets, request_trigger
from telephony.handoff.office_hours import WEEKDAYS, OfficeHours, Period
from telephony.handoff.tickets import classify_trigger
from telephony.settings import Settings
from telephony.store import CallChannel, Database
from tests.test_call_session import ScriptedCall, ScriptedSpeech, TranscriptTts, VirtualTime, utterance
from voice.session import DtmfPressed

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEVER_OPEN = OfficeHours(SHANGHAI, {day: () for day in WEEKDAYS}, {})
ALWAYS_OPEN = OfficeHours(SHANGHAI, {day: (Period(0, 24 * 60),) for day in WEEKDAYS}, {})

# -- the words ---------------------------------------------------------------------------------------------------

SELF_HARM = ["我不想活了", "活着没意思", "我想死", "我想自杀", "我真的活不下去了", "有时候会有轻生的念头",
             "干脆跳楼算了", "我去死算了", "我老公走了，我也不想活了", "死了算了", "我要喝农药",
             "转人工，我不想活了"]
# Survivor-benefit and injury questions that say 死 or 自杀 without any intent: service questions.
NOT_SELF_HARM = ["死亡待遇怎么领", "丧葬费怎么领", "死亡后个人账户怎么处理", "人死了养老金怎么办",
                 "我爸去世了丧葬费找哪个", "自杀的算不算工伤", "我老公自杀了，丧葬费能不能领", "死亡证明去哪里开",
                 "想问一下死亡待遇", "职工因工死亡，家属能领哪些待遇",
                 "我兄弟在厂里被砸死了，认定了工亡，能领哪些钱", "烦死了", "气死我了", "累死了"]
ACCIDENT = ["工地上有人摔下来了", "工友被机器卷进去了", "现在有人受伤流血", "救命啊，有人触电了",
            "我同事刚刚从架子上掉下来，一动不动", "快叫救护车", "车间里有人晕倒了", "我老公的手被机器夹断了"]
# The same words in the past, or with the after-care asked about: the injury items' questions.
NOT_ACCIDENT = ["工伤认定怎么办", "去年受的工伤", "去年在工地摔下来了，工伤怎么认定",
                "上班受伤了，咋个申请工伤认定", "我上个月受伤了能报工伤吗",
                "厂里有人受伤了，单位是不是要先去社保备个案", "上下班路上出车祸算工伤吗", "社保断了怎么办",
                "医保断了两个月还能补吗", "生小孩大出血了，医保能报吗", "我爸昏迷了三年，养老金怎么领"]
COMPLAINT = ["我要投诉", "我要投诉你们", "我要投诉你们窗口的工作人员", "你们态度太差了", "我要打12345投诉你们",
             "我要去告你们", "你们社保局不作为", "我要去信访", "我要投诉，社保卡办了三趟都没办好",
             "你们工作人员推来推去", "我要找媒体曝光你们"]
# Reports about an employer and labour disputes: where to report is the labour inspectorate's business, a
# service question (kb item referral-wage-arrears), not a complaint about us.
NOT_COMPLAINT = ["怎么投诉用人单位不交社保", "单位不给交社保去哪里举报", "举报公司拖欠工资",
                 "我想举报我们老板不给买社保", "讨薪去哪里投诉", "公司不签合同咋投诉",
                 "劳动监察投诉要准备哪些证据材料", "我要报告你们一个情况", "老板态度太差了，不给交社保"]


@pytest.mark.parametrize("text", SELF_HARM)
def test_self_harm_words_are_a_crisis(text: str) -> None:
    assert crisis(text) is HandoffCause.SELF_HARM


@pytest.mark.parametrize("text", ACCIDENT)
def test_someone_hurt_now_is_a_crisis(text: str) -> None:
    assert crisis(text) is HandoffCause.ACCIDENT


@pytest.mark.parametrize("text", NOT_SELF_HARM + NOT_ACCIDENT + COMPLAINT + NOT_COMPLAINT)
def test_service_questions_about_death_and_injury_are_no_crisis(text: str) -> None:
    assert crisis(text) is None


@pytest.mark.parametrize("text", COMPLAINT)
def test_a_complaint_about_the_service_is_a_complaint(text: str) -> None:
    assert is_complaint(text)


@pytest.mark.parametrize("text", NOT_COMPLAINT + NOT_SELF_HARM + NOT_ACCIDENT)
def test_reporting_an_employer_is_a_service_question(text: str) -> None:
    assert not is_complaint(text)


def test_no_question_the_knowledge_base_or_the_eval_set_answers_trips_a_rule() -> None:
    """Every alias and caller question of the shipped items, and every eval question that expects an item, is a
    service question: none may be taken for a crisis or a complaint."""
    texts = [text for item in load_knowledge_base().items for text in (*item.aliases, *item.questions)]
    texts += [case.question for case in load_eval_set() if case.expects_item]
    assert len(texts) > 1000
    assert [text for text in texts if crisis(text) or is_complaint(text)] == []


def test_every_cause_maps_to_its_trigger_and_old_prose_still_classifies() -> None:
    assert {cause: HandoffTrigger.of(cause) for cause in HandoffCause} == {
        HandoffCause.ASKED_FOR_HUMAN: HandoffTrigger.ASKED_FOR_HUMAN, HandoffCause.LOW_CONFIDENCE:
        HandoffTrigger.LOW_CONFIDENCE, HandoffCause.OUT_OF_SCOPE: HandoffTrigger.OUT_OF_SCOPE,
        HandoffCause.ABUSE: HandoffTrigger.ABUSE, HandoffCause.COMPLAINT: HandoffTrigger.COMPLAINT,
        HandoffCause.SELF_HARM: HandoffTrigger.CRISIS, HandoffCause.ACCIDENT: HandoffTrigger.CRISIS}
    assert HandoffTrigger.of(None) is HandoffTrigger.OTHER
    # A request's kind wins; one built without it (old callers) is classified from its prose.
    assert request_trigger(HandoffRequest("c", None, "caller asked for a human")) is HandoffTrigger.ASKED_FOR_HUMAN
    assert request_trigger(HandoffRequest("c", None, "gate said so", kind=HandoffTrigger.COMPLAINT)) \
        is HandoffTrigger.COMPLAINT
    assert classify_trigger("misunderstood twice in a row: x") is HandoffTrigger.MISUNDERSTOOD_TWICE
    assert classify_trigger("crisis: self-harm words") is HandoffTrigger.CRISIS


def test_the_office_hours_calendar_tells_the_dialogue_whether_agents_are_on_duty() -> None:
    assert open_now(None) is None  # no calendar: the dialogue takes it as open
    assert open_now(ALWAYS_OPEN)() is True and open_now(NEVER_OPEN)() is False


def test_the_new_sentences_are_prerendered_and_name_only_national_numbers() -> None:
    texts = fixed_prompts("测试社保中心")
    for text in (prompts.MISUNDERSTOOD_HANDOFF, prompts.CRISIS_SELF_HARM_AFTER_HOURS,
                 prompts.CRISIS_ACCIDENT_AFTER_HOURS, phrases.COMPLAINT, phrases.CRISIS_SELF_HARM,
                 phrases.CRISIS_ACCIDENT, phrases.ABUSE):
        assert text in texts
    # Said digit by digit (幺 for 1): 12356 the psychological assistance hotline, 110 police, 120 ambulance.
    assert "幺二三五六" in prompts.CRISIS_SELF_HARM_AFTER_HOURS
    assert all(number in prompts.CRISIS_SELF_HARM_AFTER_HOURS for number in ("幺幺零", "幺二零"))
    accident = prompts.CRISIS_ACCIDENT_AFTER_HOURS
    assert accident.index("幺二零") < accident.index("幺幺零")  # the ambulance first


# -- the answer engine -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hotline(tmp_path_factory: pytest.TempPathFactory) -> Hotline:
    directory = tmp_path_factory.mktemp("triggers")
    settings = Settings(data_dir=directory / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_prerender=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Hotline.open(settings, Database(f"sqlite:///{directory / 'triggers.db'}"))


@pytest.mark.parametrize(("question", "cause", "spoken"), [
    ("我不想活了", HandoffCause.SELF_HARM, phrases.CRISIS_SELF_HARM),
    ("工地上有人摔下来了，快来人啊", HandoffCause.ACCIDENT, phrases.CRISIS_ACCIDENT),
    ("我要投诉你们窗口的工作人员", HandoffCause.COMPLAINT, phrases.COMPLAINT),
    ("转人工", HandoffCause.ASKED_FOR_HUMAN, phrases.HANDOFF_REQUESTED),
    ("啥子破系统", HandoffCause.ABUSE, phrases.ABUSE),
    ("帮我订一张去北京的火车票", HandoffCause.OUT_OF_SCOPE, phrases.OUT_OF_SCOPE),
])
async def test_the_engine_hands_off_at_once_and_says_why(hotline: Hotline, question: str, cause: HandoffCause,
                                                         spoken: str) -> None:
    # The rules come before everything, so with a choice pending a crisis or a complaint is never read as a pick
    # from the menu (out of scope is the retrieval's verdict, not a rule).
    offered = (await hotline.answers.ask("我想办社保卡")).offered_items
    pending = ConversationContext(previous_questions=("我想办社保卡",), offered_item_ids=offered)
    assert offered
    for context in (None, pending) if cause is not HandoffCause.OUT_OF_SCOPE else (None,):
        answer = await hotline.answers.ask(question, context)
        assert (answer.action, answer.handoff, answer.spoken) == (Action.HANDOFF, cause, spoken)
        assert answer.to_json()["handoff"] == cause.value


@pytest.mark.parametrize("question", ["怎么投诉用人单位不交社保", "死亡待遇怎么领", "上班受伤了，咋个申请工伤认定"])
async def test_the_service_questions_beside_them_are_answered(hotline: Hotline, question: str) -> None:
    answer = await hotline.answers.ask(question)
    assert answer.action is not Action.HANDOFF and answer.handoff is None and answer.items


# -- the dialogue ------------------------------------------------------------------------------------------------

def make_call(hotline: Hotline, *events, is_open: Callable[[], bool] | None = None,
              calendar: OfficeHours | None = None) -> ScriptedCall:
    call_id = hotline.database.start_call(CallChannel.TWILIO, "13800000000").id
    speech, tts, hangups, time = ScriptedSpeech(), TranscriptTts(), [], VirtualTime()
    turn_log = TurnLog(hotline.writer, CallChannel.TWILIO, call_id)

    async def hang_up() -> None:
        hangups.append("hung up")

    dialogue = replace(call_config(hotline.settings).dialogue, centre_name="测试社保中心", no_speech_timeout_ms=2000,
                       no_speech_reprompts=0)
    session = CallSession(CallParty(call_id, "13800000000"), speech, tts, hotline.answers, dialogue,
                          CallbackTickets(hotline.database, office_hours=calendar), observers=(turn_log,),
                          hangup=hang_up, clock=time.now, sleep=time.sleep, is_open=is_open)
    for event in events:
        speech.events.put_nowait(utterance(event) if isinstance(event, str) else event)
    return ScriptedCall(session, speech, tts, turn_log, hangups)


async def run(hotline: Hotline, call: ScriptedCall):
    reason = await call.session.run()
    await call.turn_log.flush()
    return reason, hotline.database.get_call(call.session.party.call_id)


def registered(stored) -> str:
    """The ticket's closing sentence, with the ticket's number read out."""
    [ticket] = stored.handoff_tickets
    return prompts.HANDOFF_REGISTERED_NUMBER.format(ticket=ticket.id)


NOISE = "呃嗯那个就是呃"  # words with no meaning: the engine asks to hear it again


@pytest.mark.parametrize(("events", "trigger"), [
    ([DtmfPressed("0", 0.0)], HandoffTrigger.KEY_0),
    (["社保卡丢了怎么办", "我要转人工"], HandoffTrigger.ASKED_FOR_HUMAN),
    (["我不想活了"], HandoffTrigger.CRISIS),
    (["工友被机器卷进去了"], HandoffTrigger.CRISIS),
    (["我要投诉你们"], HandoffTrigger.COMPLAINT),
    (["你是不是傻哦"], HandoffTrigger.ABUSE),
    (["帮我订一张去北京的火车票"], HandoffTrigger.OUT_OF_SCOPE),
    ([NOISE, "啊啊啊啊"], HandoffTrigger.MISUNDERSTOOD_TWICE),
])
async def test_each_trigger_hands_off_once_and_the_ticket_records_it(hotline: Hotline, events: list,
                                                                     trigger: HandoffTrigger) -> None:
    call = make_call(hotline, *events)
    reason, stored = await run(hotline, call)
    assert reason == "handoff" and call.hangups == ["hung up"]
    [ticket] = stored.handoff_tickets
    assert ticket.trigger == trigger.value and ticket.callback_number == "13800000000"
    assert call.tts.said[-1] == prompts.HANDOFF_REGISTERED_NUMBER.format(ticket=ticket.id)
    assert prompts.CRISIS_SELF_HARM_AFTER_HOURS not in call.tts.said  # no calendar: taken as open
    assert prompts.CRISIS_ACCIDENT_AFTER_HOURS not in call.tts.said


async def test_the_second_misunderstanding_in_a_row_goes_to_a_person(hotline: Hotline) -> None:
    # Empty text is noise, asked again without counting; the second reply that would ask again hands off instead.
    call = make_call(hotline, NOISE, "", "啊啊啊啊")
    reason, stored = await run(hotline, call)
    assert reason == "handoff"
    assert call.tts.said[1:] == [phrases.NOT_HEARD, prompts.REPEAT_PLEASE, prompts.MISUNDERSTOOD_HANDOFF,
                                 registered(stored)]
    assert [turn.action for turn in stored.turns] == ["clarify", "repeat", "handoff"]
    assert stored.turns[-1].spoken_text == prompts.MISUNDERSTOOD_HANDOFF
    assert stored.turns[-1].reason.startswith("misunderstood twice in a row")
    [ticket] = stored.handoff_tickets
    assert ticket.trigger == "misunderstood_twice" and ticket.context["transcript"] == [NOISE, "啊啊啊啊"]


async def test_an_understood_turn_between_two_misunderstandings_starts_the_count_again(hotline: Hotline) -> None:
    call = make_call(hotline, NOISE, "社保卡丢了怎么办", NOISE)
    reason, stored = await run(hotline, call)
    assert reason == "no_speech" and stored.handoff_tickets == []
    assert call.tts.said.count(phrases.NOT_HEARD) == 2


async def test_turning_every_offer_down_counts_as_a_misunderstanding(hotline: Hotline) -> None:
    # 「都不是」 twice leaves nothing to offer: 「请您换个说法」 is the first misunderstanding, noise the second.
    call = make_call(hotline, "我想办社保卡", "都不是", "都不是", "啊啊啊啊")
    reason, stored = await run(hotline, call)
    assert reason == "handoff" and phrases.REPHRASE in call.tts.said
    assert [ticket.trigger for ticket in stored.handoff_tickets] == ["misunderstood_twice"]


@pytest.mark.parametrize(("question", "engine_says", "emergency"), [
    ("我不想活了", phrases.CRISIS_SELF_HARM, prompts.CRISIS_SELF_HARM_AFTER_HOURS),
    ("工地上有人摔下来了", phrases.CRISIS_ACCIDENT, prompts.CRISIS_ACCIDENT_AFTER_HOURS),
])
async def test_after_hours_a_crisis_hears_the_emergency_numbers_before_the_ticket(hotline: Hotline, question: str,
                                                                                  engine_says: str,
                                                                                  emergency: str) -> None:
    call = make_call(hotline, question, is_open=lambda: False)
    reason, stored = await run(hotline, call)
    assert reason == "handoff"
    assert call.tts.said[1:] == [engine_says, emergency, registered(stored)]
    [ticket] = stored.handoff_tickets
    assert ticket.trigger == "crisis" and ticket.reason.startswith("crisis")
    assert stored.turns[0].spoken_text == engine_says + emergency  # the turn keeps what the caller heard


async def test_in_hours_a_crisis_is_handed_off_like_any_request(hotline: Hotline) -> None:
    call = make_call(hotline, "我不想活了", is_open=lambda: True)
    reason, stored = await run(hotline, call)
    assert call.tts.said[1:] == [phrases.CRISIS_SELF_HARM, registered(stored)]
    assert [ticket.trigger for ticket in stored.handoff_tickets] == ["crisis"]


async def test_after_hours_other_handoffs_get_no_emergency_numbers(hotline: Hotline) -> None:
    call = make_call(hotline, "我要投诉你们", is_open=lambda: False)
    _, stored = await run(hotline, call)
    assert call.tts.said[1:] == [phrases.COMPLAINT, registered(stored)]


async def test_an_unknown_hour_is_taken_as_closed_for_a_crisis(hotline: Hotline) -> None:
    def broken() -> bool:
        raise RuntimeError("calendar unreadable")

    call = make_call(hotline, "我想自杀", is_open=broken)
    reason, _stored = await run(hotline, call)
    assert reason == "handoff" and prompts.CRISIS_SELF_HARM_AFTER_HOURS in call.tts.said


async def test_the_office_hours_calendar_decides_as_the_hotline_wires_it(hotline: Hotline) -> None:
    for calendar, heard in ((NEVER_OPEN, True), (ALWAYS_OPEN, False)):
        call = make_call(hotline, "工友被机器卷进去了", is_open=open_now(calendar), calendar=calendar)
        _reason, stored = await run(hotline, call)
        assert (prompts.CRISIS_ACCIDENT_AFTER_HOURS in call.tts.said) is heard
        assert [ticket.trigger for ticket in stored.handoff_tickets] == ["crisis"]

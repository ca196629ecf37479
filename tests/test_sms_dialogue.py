"""The SMS offer in a call: scripted caller events, the real answer engine, the real outbox on SQLite."""

from __future__ import annotations

from dataclasses import replace

import pytest

from telephony.app import Hotline, call_config
from telephony.calls import prompts
from telephony.calls.dialogue import CallParty, CallSession
from telephony.calls.sms_offer import OutboxSender, SmsOfferFlow, digits_in, read_back
from telephony.calls.turn_log import TurnLog
from telephony.handoff.callback import CallbackTickets
from telephony.settings import Settings
from telephony.sms.compose import compose_guide
from telephony.store import CallChannel, SmsKind, SmsStatus
from tests.test_call_session import (
    ScriptedCall,
    ScriptedSpeech,
    TranscriptTts,
    VirtualTime,
    utterance,
)
from voice.session import DtmfPressed

LOSS = "card-loss-report"


@pytest.fixture
def hotline(settings: Settings) -> Hotline:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Hotline.open(settings)


def sms_call(hotline: Hotline, caller_number: str | None, *events) -> ScriptedCall:
    call_id = hotline.database.start_call(CallChannel.TWILIO, caller_number).id
    speech, tts, hangups, time = ScriptedSpeech(), TranscriptTts(), [], VirtualTime()
    turn_log = TurnLog(hotline.writer, CallChannel.TWILIO, call_id)

    async def hang_up() -> None:
        hangups.append("hung up")

    flow = SmsOfferFlow(OutboxSender(hotline.sms, hotline.settings.centre_phone), call_id, caller_number)
    dialogue = replace(call_config(hotline.settings).dialogue, centre_name="测试社保中心", no_speech_timeout_ms=2000,
                       no_speech_reprompts=0)
    session = CallSession(CallParty(call_id, caller_number), speech, tts, hotline.answers, dialogue,
                          CallbackTickets(hotline.database, hotline.sms), observers=(turn_log,), hangup=hang_up,
                          sms=flow, clock=time.now, sleep=time.sleep)
    for event in events:
        speech.events.put_nowait(utterance(event) if isinstance(event, str) else event)
    return ScriptedCall(session, speech, tts, turn_log, hangups)


async def run(hotline: Hotline, call: ScriptedCall):
    await call.session.run()
    await call.turn_log.flush()
    return hotline.database.get_call(call.session.party.call_id)


def expected_body(hotline: Hotline, item_id: str = LOSS) -> str:
    return compose_guide(hotline.answers.kb.get(item_id), "0773-0000000", "测试社保").body


async def test_yes_sends_the_guide_to_the_callers_mobile_once_and_the_turn_says_so(hotline: Hotline) -> None:
    call = sms_call(hotline, "+8613812345678", "社保卡丢了怎么办", "要", "社保卡丢了怎么办", "没有了")
    stored = await run(hotline, call)
    said = call.tts.said
    assert prompts.SMS_OFFER in said
    assert said.count(prompts.SMS_SENT.format(tail="5678")) == 1
    # The second time the same item is answered, no second offer: one SMS per item per call.
    assert said.count(prompts.SMS_OFFER) == 1
    [message] = hotline.sms.outbox.listing(call_id=stored.id)
    assert message.body == expected_body(hotline) and message.phone == "13812345678"
    assert message.kind is SmsKind.GUIDE and message.item_id == LOSS
    assert [turn.action for turn in stored.turns] == ["answer", "sms", "answer", "goodbye"]
    consent = stored.turns[1]
    assert (consent.sms_consent, consent.sms_to, consent.sms_message_id) == (True, "138****5678", message.id)
    assert consent.item_ids == [LOSS] and consent.caller_text == "要"


async def test_no_or_a_new_question_sends_nothing(hotline: Hotline) -> None:
    call = sms_call(hotline, "13812345678", "社保卡丢了怎么办", "不用了", "失业金怎么领", "不需要", "没有了")
    stored = await run(hotline, call)
    assert hotline.sms.outbox.listing() == []
    assert prompts.SMS_DECLINED in call.tts.said
    assert [turn.action for turn in stored.turns] == ["answer", "sms", "answer", "sms", "goodbye"]
    assert stored.turns[1].sms_consent is False and stored.turns[1].sms_message_id is None
    assert call.session.end_reason == "caller_done"


async def test_key_one_consents_and_resend_uses_the_same_message(hotline: Hotline) -> None:
    call = sms_call(hotline, "13812345678", "社保卡丢了怎么办", DtmfPressed("1", 0.0), "短信没收到，再发一遍",
                    "没有了")
    stored = await run(hotline, call)
    [message] = hotline.sms.outbox.listing()
    assert prompts.SMS_RESENT.format(tail="5678") in call.tts.said
    turns = [turn for turn in stored.turns if turn.action == "sms"]
    assert [turn.caller_text for turn in turns] == ["按键1", "短信没收到，再发一遍"]
    assert [turn.sms_message_id for turn in turns] == [message.id, message.id]
    await hotline.sms.dispatcher.drain()
    assert hotline.sms.outbox.get(message.id).sends == 1  # one submit so far: the resend is queued on the same row


async def test_a_landline_caller_gives_a_mobile_number_hears_it_back_and_corrects_it(hotline: Hotline) -> None:
    call = sms_call(hotline, "0773-2822222", "社保卡丢了怎么办", "需要", "幺三八零零零零幺幺幺幺",
                    "不对，是13900002222", "对", "没有了")
    stored = await run(hotline, call)
    said = call.tts.said
    assert prompts.SMS_ASK_NUMBER in said
    assert prompts.SMS_CONFIRM_NUMBER.format(digits="幺三八，零零零零，幺幺幺幺") in said
    assert prompts.SMS_CONFIRM_NUMBER.format(digits="幺三九，零零零零，二二二二") in said
    [message] = hotline.sms.outbox.listing()
    assert message.phone == "13900002222" and message.body == expected_body(hotline)
    number_turns = [turn for turn in stored.turns if turn.action == "sms"]
    # The number the caller said is stored masked, never in the clear.
    assert all("13800001111" not in turn.caller_text and "13900002222" not in turn.caller_text
               for turn in number_turns)
    assert number_turns[-1].sms_to == "139****2222" and number_turns[-1].sms_message_id == message.id


async def test_a_withheld_number_can_be_keyed_in_and_a_bad_number_is_asked_again(hotline: Hotline) -> None:
    keys = [DtmfPressed(digit, 0.0) for digit in "13712345678"]
    call = sms_call(hotline, None, "社保卡丢了怎么办", "好的", "一二三四五六七", *keys, DtmfPressed("1", 0.0),
                    "没有了")
    await run(hotline, call)
    assert prompts.SMS_BAD_NUMBER in call.tts.said
    [message] = hotline.sms.outbox.listing()
    assert message.phone == "13712345678"


async def test_a_handoff_from_a_mobile_confirms_the_ticket_by_sms(hotline: Hotline) -> None:
    call = sms_call(hotline, "13812345678", DtmfPressed("0", 0.0))
    stored = await run(hotline, call)
    [ticket] = stored.handoff_tickets
    [message] = hotline.sms.outbox.listing()
    assert message.kind is SmsKind.TICKET and message.reference == f"ticket:{ticket.id}"
    assert f"登记号为{ticket.id}" in message.body and message.body.startswith("【测试社保】")
    assert call.tts.said[-1] == prompts.HANDOFF_REGISTERED_SMS.format(ticket=ticket.id)


async def test_a_refused_number_is_told_so_and_the_call_goes_on(hotline: Hotline) -> None:
    hotline.sms.outbox.limits = replace(hotline.sms.outbox.limits, per_number_per_hour=1)
    await hotline.sms.send_guide("13812345678", "unemployment-benefit-application", "earlier")
    call = sms_call(hotline, "13812345678", "社保卡丢了怎么办", "要", "没有了")
    await run(hotline, call)
    assert prompts.SMS_LIMIT in call.tts.said and call.session.end_reason == "caller_done"
    assert [message.status for message in hotline.sms.outbox.listing()] == [SmsStatus.QUEUED]


def test_digits_are_read_from_speech_and_read_back_in_groups() -> None:
    assert digits_in("幺三八 零零零零，一一一一") == "13800001111"
    assert digits_in("我的号码是139-0000-2222") == "13900002222"
    assert read_back("13800001111") == "幺三八，零零零零，幺幺幺幺"

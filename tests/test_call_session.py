"""The phone dialogue on its own: scripted caller events, the real answer engine and database, no audio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from telephony.app import Hotline, call_config
from telephony.calls import prompts
from telephony.calls.dialogue import CallParty, CallSession, DialogueState, IllegalTransition, next_state, usable
from telephony.calls.turn_log import TurnLog
from telephony.handoff.base import HandoffOutcome, HandoffRequest
from telephony.handoff.callback import CallbackTickets
from telephony.settings import Settings
from telephony.store import CallChannel
from voice.base import TtsUnavailable
from voice.session import DtmfPressed, PlaybackResult, ReplyKind, TurnTimings, UtteranceEnded


class ScriptedSpeech:
    """Stands in for SpeechSession: playback finishes at once; caller events come from the test."""

    def __init__(self) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.playing = False
        self.expected_replies: list[ReplyKind] = []  # what the dialogue said it expects, turn by turn

    def expect_reply(self, kind: ReplyKind) -> None:
        self.expected_replies.append(kind)

    @property
    def expects_short_reply(self) -> bool:
        return bool(self.expected_replies) and self.expected_replies[-1] is ReplyKind.SHORT

    async def play(self, chunks: AsyncIterator[bytes], on_first_audio=None) -> PlaybackResult:
        result = PlaybackResult(True)
        async for _chunk in chunks:
            if result.first_audio_at is None:
                result.first_audio_at = 0.0
                if on_first_audio is not None:
                    on_first_audio(0.0)
        return result


class TranscriptTts:
    """Records what the dialogue says (the TTS engines have their own tests)."""

    name = "transcript"
    voice = "none"

    def __init__(self) -> None:
        self.said: list[str] = []

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.said.append(text)
        yield bytes(320)


def utterance(text: str) -> UtteranceEnded:
    return UtteranceEnded(text, "silence", TurnTimings(0.0, 1.0, 1.7, 1.71))


class VirtualTime:
    """The dialogue's clock and sleep: a timeout passes at once, and the clock moves by it."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def now(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.now_s += seconds
        await asyncio.sleep(0)  # only yields to the event loop


@pytest.fixture
def hotline(settings: Settings) -> Hotline:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Hotline.open(settings)


@dataclass
class ScriptedCall:
    session: CallSession
    speech: ScriptedSpeech
    tts: TranscriptTts
    turn_log: TurnLog
    hangups: list[str]


def make_call(hotline: Hotline, **config) -> ScriptedCall:
    call_id = hotline.database.start_call(CallChannel.TWILIO, "caller-1").id
    speech, tts, hangups = ScriptedSpeech(), TranscriptTts(), []
    turn_log = TurnLog(hotline.writer, CallChannel.TWILIO, call_id)
    time = VirtualTime()

    async def hang_up() -> None:
        hangups.append("hung up")

    dialogue = replace(call_config(hotline.settings).dialogue, centre_name="测试社保中心", **config)
    session = CallSession(CallParty(call_id, "caller-1"), speech, tts, hotline.answers, dialogue,
                          CallbackTickets(hotline.database), observers=(turn_log,), hangup=hang_up,
                          clock=time.now, sleep=time.sleep)
    return ScriptedCall(session, speech, tts, turn_log, hangups)


async def test_silence_gets_reprompts_then_a_polite_goodbye(hotline: Hotline) -> None:
    call = make_call(hotline, no_speech_timeout_ms=20, no_speech_reprompts=2)
    assert await call.session.run() == "no_speech"
    assert call.tts.said == [prompts.GREETING.format(centre="测试社保中心"), prompts.SILENCE_REPROMPT,
                             prompts.SILENCE_REPROMPT, prompts.SILENCE_GOODBYE]
    assert "AI助手" in call.tts.said[0] and "转人工" in call.tts.said[0]
    assert call.hangups == ["hung up"] and call.session.state is DialogueState.ENDED


async def test_a_question_is_answered_stored_and_the_caller_can_say_goodbye(hotline: Hotline) -> None:
    call = make_call(hotline, no_speech_timeout_ms=2000)
    for event in (utterance(""), utterance("社保卡丢了怎么办"), utterance("没有了，谢谢")):
        call.speech.events.put_nowait(event)
    assert await call.session.run() == "caller_done"
    await call.turn_log.flush()
    assert call.tts.said[1] == prompts.REPEAT_PLEASE  # nothing usable was recognised
    assert "挂失" in call.tts.said[2] and call.tts.said[3] == prompts.ANYTHING_ELSE
    assert call.tts.said[-1] == prompts.GOODBYE and call.hangups == ["hung up"]
    stored = hotline.database.get_call(call.session.party.call_id)
    assert [turn.action for turn in stored.turns] == ["repeat", "answer", "goodbye"]
    answered = stored.turns[1]
    assert answered.item_ids == ["card-loss-report"] and "0773-0000000" in answered.sms_text
    assert {"endpoint_wait_ms", "asr_final_ms", "answer_ms", "voice_to_voice_ms"} <= set(answered.timings_ms)


async def test_a_clarifying_choice_carries_into_the_next_turn(hotline: Hotline) -> None:
    call = make_call(hotline, no_speech_timeout_ms=2000, no_speech_reprompts=0)
    call.speech.events.put_nowait(utterance("我想办社保卡"))
    call.speech.events.put_nowait(utterance("第二个"))
    await call.session.run()
    await call.turn_log.flush()
    assert call.tts.said[1].startswith("请问您问的是")
    assert call.speech.expected_replies[:2] == [ReplyKind.SHORT, ReplyKind.QUESTION]  # "第二个" was taken as a reply
    stored = hotline.database.get_call(call.session.party.call_id)
    assert stored.turns[0].action == "clarify" and stored.turns[1].action == "answer"
    assert stored.turns[0].offered_item_ids == stored.turns[0].item_ids  # the pending choice is stored, typed
    assert stored.turns[1].item_ids == [stored.turns[0].item_ids[1]] and stored.turns[1].offered_item_ids == []


async def test_the_call_ends_at_its_maximum_length(hotline: Hotline) -> None:
    call = make_call(hotline, no_speech_timeout_ms=5000, max_call_s=0)
    assert await call.session.run() == "max_call_length"
    assert call.tts.said[-1] == prompts.MAX_LENGTH_GOODBYE and call.hangups == ["hung up"]


async def test_each_turn_is_written_once_with_every_stage_timing(hotline: Hotline) -> None:
    call = make_call(hotline, no_speech_timeout_ms=2000, no_speech_reprompts=0)
    call.speech.events.put_nowait(utterance("社保卡丢了怎么办"))
    await call.session.run()
    await call.turn_log.flush()
    assert call.turn_log.written == [1]  # one write per turn: no second write patches the timings in
    turn = hotline.database.get_call(call.session.party.call_id).turns[0]
    assert set(turn.timings_ms) == {"speech_ms", "endpoint_wait_ms", "asr_final_ms", "answer_ms",
                                    "tts_first_audio_ms", "voice_to_voice_ms"}
    # The scripted speech plays its first audio at 0.0; the utterance ended at 1.0 and its final came at 1.71.
    assert turn.timings_ms["voice_to_voice_ms"] == -1000.0 and turn.timings_ms["tts_first_audio_ms"] == -1710.0
    assert turn.timings_ms["speech_ms"] == 1000.0 and turn.timings_ms["endpoint_wait_ms"] == 700.0


class RecordingHandoff:
    """A handoff target that keeps the requests it was given."""

    def __init__(self) -> None:
        self.requests: list[HandoffRequest] = []

    async def offer(self, request: HandoffRequest) -> HandoffOutcome:
        self.requests.append(request)
        return HandoffOutcome("好的，马上为您转接。", transferred=True)


async def test_a_handoff_gets_the_call_as_a_value_and_its_outcome_is_spoken(hotline: Hotline) -> None:
    call = make_call(hotline, no_speech_timeout_ms=2000)
    target = RecordingHandoff()
    call.session.handoff = target
    for event in (utterance("社保卡丢了怎么办"), utterance("我要转人工")):
        call.speech.events.put_nowait(event)
    assert await call.session.run() == "handoff"
    [request] = target.requests
    assert request.call_id == call.session.party.call_id and request.caller_number == "caller-1"
    assert request.transcript == ("社保卡丢了怎么办", "我要转人工")
    assert request.last_answer is not None and request.last_answer.action.value == "handoff"
    assert request.trigger == request.last_answer.reason
    assert call.tts.said[-1] == "好的，马上为您转接。" and call.hangups == ["hung up"]


async def test_key_zero_opens_a_callback_ticket_on_the_callers_number(hotline: Hotline) -> None:
    call = make_call(hotline, no_speech_timeout_ms=2000)
    call.speech.events.put_nowait(DtmfPressed("0", 0.0))
    assert await call.session.run() == "handoff"
    stored = hotline.database.get_call(call.session.party.call_id)
    assert [(ticket.reason, ticket.callback_number) for ticket in stored.handoff_tickets] == [
        ("caller pressed 0", "caller-1")]
    [ticket] = stored.handoff_tickets
    assert call.tts.said[-1] == prompts.HANDOFF_REGISTERED_NUMBER.format(ticket=ticket.id) and stored.turns == []


def test_dialogue_state_table_rejects_illegal_moves() -> None:
    assert next_state(DialogueState.GREETING, DialogueState.LISTENING) is DialogueState.LISTENING
    assert next_state(DialogueState.RESPONDING, DialogueState.ENDING) is DialogueState.ENDING
    with pytest.raises(IllegalTransition, match="from ended to listening"):
        next_state(DialogueState.ENDED, DialogueState.LISTENING)
    with pytest.raises(IllegalTransition, match="from ending to responding"):
        next_state(DialogueState.ENDING, DialogueState.RESPONDING)
    # What the ASR returns for noise is not a question; one syllable is a reply only when one is expected.
    assert not usable("", False) and not usable("。，", False)
    assert not usable("嗯", False) and usable("是", True) and not usable("啊", True)
    assert usable("社保卡丢了", False)


class FailingAnswerTts(TranscriptTts):
    """No engine can render the answer (its sentences fail); the fixed prompts come from the cache."""

    def __init__(self, fails: str) -> None:
        super().__init__()
        self.fails = fails

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.said.append(text)
        if self.fails in text:
            raise TtsUnavailable("every engine failed")
        yield bytes(320)


async def test_an_answer_no_engine_can_speak_is_replaced_by_a_spoken_apology_not_silence(hotline: Hotline) -> None:
    call = make_call(hotline, no_speech_timeout_ms=20, no_speech_reprompts=0)
    call.session.tts = call.tts = FailingAnswerTts("挂失")
    call.speech.events.put_nowait(utterance("社保卡丢了怎么办"))
    await call.session.run()
    answer = next(text for text in call.tts.said if "挂失" in text)
    after = call.tts.said[call.tts.said.index(answer) + 1:]
    assert after[0] == prompts.SPEECH_FAILED and after[1] == prompts.ANYTHING_ELSE, call.tts.said
    call.turn_log.close()
    await call.turn_log.flush()
    [turn] = hotline.database.get_call(call.session.party.call_id).turns
    assert turn.action == "answer" and "挂失" in turn.spoken_text  # the record keeps what should have been said

"""The phone dialogue on its own: scripted caller events, the real answer engine and database, no audio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from telephony import prompts
from telephony.call import CallSession, DialogueConfig, DialogueState, IllegalTransition, next_state, usable
from telephony.service import HotlineService
from telephony.settings import Settings
from telephony.store import CallChannel, Database
from voice.session import PlaybackResult, ReplyKind, TurnTimings, UtteranceEnded


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


@pytest.fixture
def service(settings: Settings) -> HotlineService:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    database.migrate()
    return HotlineService(settings, database)


def make_call(service: HotlineService, **config) -> tuple[CallSession, ScriptedSpeech, TranscriptTts, list[str]]:
    call_id = service.database.start_call(CallChannel.TWILIO, "caller-1").id
    speech, tts, hangups = ScriptedSpeech(), TranscriptTts(), []

    async def hang_up() -> None:
        hangups.append("hung up")

    session = CallSession(call_id, CallChannel.TWILIO, speech, tts, service,
                          DialogueConfig(centre_name="测试社保中心", **config), caller_number="caller-1",
                          hangup=hang_up)
    return session, speech, tts, hangups


async def test_silence_gets_reprompts_then_a_polite_goodbye(service: HotlineService) -> None:
    session, _speech, tts, hangups = make_call(service, no_speech_timeout_ms=20, no_speech_reprompts=2)
    assert await session.run() == "no_speech"
    assert tts.said == [prompts.GREETING.format(centre="测试社保中心"), prompts.SILENCE_REPROMPT,
                        prompts.SILENCE_REPROMPT, prompts.SILENCE_GOODBYE]
    assert "AI助手" in tts.said[0] and "转人工" in tts.said[0]
    assert hangups == ["hung up"] and session.state is DialogueState.ENDED


async def test_a_question_is_answered_stored_and_the_caller_can_say_goodbye(service: HotlineService) -> None:
    session, speech, tts, hangups = make_call(service, no_speech_timeout_ms=2000)
    for event in (utterance(""), utterance("社保卡丢了怎么办"), utterance("没有了，谢谢")):
        speech.events.put_nowait(event)
    assert await session.run() == "caller_done"
    await session.flush()
    assert tts.said[1] == prompts.REPEAT_PLEASE  # nothing usable was recognised
    assert "挂失" in tts.said[2] and tts.said[3] == prompts.ANYTHING_ELSE
    assert tts.said[-1] == prompts.GOODBYE and hangups == ["hung up"]
    stored = service.database.get_call(session.call_id)
    assert [turn.action for turn in stored.turns] == ["repeat", "answer", "goodbye"]
    answered = stored.turns[1]
    assert answered.item_ids == ["card-loss-report"] and "0773-0000000" in answered.sms_text
    assert {"endpoint_wait_ms", "asr_final_ms", "answer_ms", "voice_to_voice_ms"} <= set(answered.timings_ms)


async def test_a_clarifying_choice_carries_into_the_next_turn(service: HotlineService) -> None:
    session, speech, tts, _ = make_call(service, no_speech_timeout_ms=2000, no_speech_reprompts=0)
    speech.events.put_nowait(utterance("我想办社保卡"))
    speech.events.put_nowait(utterance("第二个"))
    await session.run()
    await session.flush()
    assert tts.said[1].startswith("请问您问的是")
    assert speech.expected_replies[:2] == [ReplyKind.SHORT, ReplyKind.QUESTION]  # "第二个" was taken as a reply
    stored = service.database.get_call(session.call_id)
    assert stored.turns[0].action == "clarify" and stored.turns[1].action == "answer"
    assert stored.turns[1].item_ids == [stored.turns[0].item_ids[1]]


async def test_the_call_ends_at_its_maximum_length(service: HotlineService) -> None:
    session, _speech, tts, hangups = make_call(service, no_speech_timeout_ms=5000, max_call_s=0)
    assert await session.run() == "max_call_length"
    assert tts.said[-1] == prompts.MAX_LENGTH_GOODBYE and hangups == ["hung up"]


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

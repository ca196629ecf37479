"""SpeechSession with the real Silero VAD and synthesized Mandarin: endpointing, barge-in, coughs, DTMF, limits.

The ASR is scripted here (its real engine has its own tests); time is the audio pushed, so results are exact.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.voicefixtures import cough, padded, synthesize_mandarin
from voice.audio import silence
from voice.base import FRAME_BYTES, AsrCapabilities, Transcript
from voice.session import (
    CallerSpeechStarted,
    DtmfPressed,
    EndpointConfig,
    PartialTranscript,
    ReplyKind,
    SpeechSession,
    UtteranceEnded,
    looks_complete,
)
from voice.testing.fakes import AudioClock, RecordingSink, ScriptedAsr
from voice.vad import DetectorConfig, SileroModel, SileroVad, SpeechDetector


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def make_session(model: SileroModel, asr: ScriptedAsr, config: EndpointConfig = EndpointConfig()):
    clock = AudioClock()
    sink = RecordingSink(clock)
    detector = SpeechDetector(SileroVad(model), DetectorConfig(min_silence_ms=250))
    return SpeechSession(detector, asr, sink, config, clock=clock), clock, sink


async def push(session: SpeechSession, clock: AudioClock, pcm16: bytes) -> None:
    for offset in range(0, len(pcm16) - FRAME_BYTES + 1, FRAME_BYTES):
        clock.frames += 1
        await session.push_audio(pcm16[offset:offset + FRAME_BYTES])
        await asyncio.sleep(0)  # let the ASR task take the frame (no wall-clock wait)


async def utterance_after(session: SpeechSession, clock: AudioClock, audio: bytes, limit_ms: int = 3000):
    await push(session, clock, audio)
    events = []
    for _ in range(limit_ms // 20):
        while not session.events.empty():
            events.append(session.events.get_nowait())
        if any(isinstance(event, UtteranceEnded) for event in events):
            return events
        await push(session, clock, silence(20))
    raise AssertionError(f"no end of utterance; events: {events}")


def test_complete_question_detection() -> None:
    assert looks_complete("社保卡丢了怎么办") and looks_complete("能不能补缴吗？")
    assert looks_complete("失业金怎么领") and looks_complete("工伤认定要什么材料")
    assert not looks_complete("我想问一下那个") and not looks_complete("")
    assert not looks_complete("失业金怎么领还是") and not looks_complete("社保卡的")


@pytest.mark.parametrize(("partial", "expected_wait_ms"), [("我想问一下那个", 700), ("社保卡丢了怎么办", 300)])
async def test_end_of_turn_is_shorter_when_the_question_is_complete(model, partial, expected_wait_ms) -> None:
    session, clock, _ = make_session(model, ScriptedAsr(partial, "社保卡丢了怎么办"))
    events = await utterance_after(session, clock, padded(synthesize_mandarin("社保卡丢了怎么办"), 500, 0))
    ended = next(event for event in events if isinstance(event, UtteranceEnded))
    assert ended.text == "社保卡丢了怎么办" and ended.reason == "silence"
    # Within one 32 ms VAD window of the configured silence (frames are 20 ms, VAD windows 32 ms).
    assert expected_wait_ms - 32 <= ended.timings.endpoint_wait_ms <= expected_wait_ms + 60
    assert ended.timings.speech_ms > 800  # the whole sentence, not a fragment
    assert isinstance(events[0], CallerSpeechStarted) and not events[0].barged_in
    assert any(isinstance(event, PartialTranscript) for event in events)
    await session.close()


async def test_a_short_reply_is_taken_quickly_after_a_clarifying_question(model) -> None:
    session, clock, _ = make_session(model, ScriptedAsr("", "是的"))
    assert not session.expects_short_reply
    session.expect_reply(ReplyKind.SHORT)
    assert session.expects_short_reply
    events = await utterance_after(session, clock, padded(synthesize_mandarin("是的"), 300, 0))
    ended = next(event for event in events if isinstance(event, UtteranceEnded))
    assert ended.text == "是的" and 300 - 32 <= ended.timings.endpoint_wait_ms <= 360
    await session.close()


async def test_caller_speech_stops_playback_at_once_and_clears_the_far_end(model) -> None:
    config = EndpointConfig(playback_lead_ms=60_000)  # everything is sent ahead: only barge-in can stop it
    session, clock, sink = make_session(model, ScriptedAsr("", "转人工"), config)
    tone = (np.sin(np.arange(8000 * 5) * 2 * np.pi * 440 / 8000) * 3000).astype(np.int16).tobytes()

    async def one_chunk():
        yield tone

    playing = asyncio.create_task(session.play(one_chunk()))
    while not session.playing or sink.sent == 0:
        await asyncio.sleep(0)
    speech = synthesize_mandarin("转人工")
    onset = clock() + 0.3
    await push(session, clock, padded(speech, 300, 600))
    result = await playing
    assert not result.completed and len(sink.clears) == 1
    started = [event for event in _drain(session) if isinstance(event, CallerSpeechStarted)]
    assert started and started[0].barged_in
    # Cleared in the same frame the VAD confirmed speech: min_speech_ms after the onset, plus one window.
    assert sink.clears[0] == started[0].at and sink.clears[0] - onset <= 0.2 + 0.064 + 0.1
    await session.close()


async def test_a_cough_does_not_interrupt_playback(model) -> None:
    config = EndpointConfig(playback_lead_ms=60_000)
    session, clock, sink = make_session(model, ScriptedAsr("", ""), config)

    async def one_second():
        yield silence(1000)

    playing = asyncio.create_task(session.play(one_second()))
    while sink.sent == 0:
        await asyncio.sleep(0)
    await push(session, clock, padded(cough(120), 200, 500))
    assert sink.clears == [] and session.playing
    assert not any(isinstance(event, CallerSpeechStarted) for event in _drain(session))
    await session.stop_playback()
    assert not (await playing).completed
    await session.close()


async def test_long_speech_is_cut_at_the_maximum_utterance_length(model) -> None:
    session, clock, _ = make_session(model, ScriptedAsr("", "很长的话"), EndpointConfig(max_utterance_ms=1000))
    speech = synthesize_mandarin("我想问一下我们单位给职工交社保的时候基数是怎么定的还有比例是多少")
    await push(session, clock, padded(speech, 300, 0))
    ended = [event for event in _drain(session) if isinstance(event, UtteranceEnded)]
    assert ended and ended[0].reason == "max_length"
    await session.close()


async def test_dtmf_is_an_event(model) -> None:
    session, _, _ = make_session(model, ScriptedAsr("", ""))
    await session.push_dtmf("*")
    event = session.events.get_nowait()
    assert isinstance(event, DtmfPressed) and event.digit == "*"
    await session.close()


def _drain(session: SpeechSession) -> list:
    events = []
    while not session.events.empty():
        events.append(session.events.get_nowait())
    return events


class PeekingAsr(ScriptedAsr):
    """Its streaming partial lags (an unfinished sentence) but a final decode at a pause has the whole question."""

    capabilities = AsrCapabilities(speculative_final=True)

    def __init__(self) -> None:
        super().__init__("我想问一下社保卡", "")
        self.peeks = self.finishes = self.discards = 0

    async def peek(self) -> Transcript:
        self.peeks += 1
        return Transcript("我想问一下社保卡丢了怎么办", False)

    async def finish(self) -> Transcript:
        self.finishes += 1
        return await super().finish()

    async def discard(self) -> None:
        self.discards += 1


async def test_a_speculative_final_decode_at_the_pause_ends_the_turn_early(model) -> None:
    asr = PeekingAsr()
    session, clock, _ = make_session(model, asr)
    events = await utterance_after(session, clock, padded(synthesize_mandarin("我想问一下社保卡丢了怎么办"), 500, 0))
    ended = next(event for event in events if isinstance(event, UtteranceEnded))
    assert ended.text == "我想问一下社保卡丢了怎么办"  # the peeked text, without a second decode
    assert asr.peeks >= 1 and asr.discards == 1 and asr.finishes == 0
    assert ended.timings.endpoint_wait_ms <= 300 + 60  # not the 700 ms an unfinished partial would need
    await session.close()


async def test_a_stream_without_the_capability_is_never_asked_for_a_speculative_final(model) -> None:
    asr = PeekingAsr()
    asr.capabilities = AsrCapabilities()  # it could peek, but does not say so
    session, clock, _ = make_session(model, asr)
    events = await utterance_after(session, clock, padded(synthesize_mandarin("我想问一下社保卡丢了怎么办"), 500, 0))
    ended = next(event for event in events if isinstance(event, UtteranceEnded))
    assert (asr.peeks, asr.discards, asr.finishes) == (0, 0, 1)
    assert ended.timings.endpoint_wait_ms >= 700 - 32  # the unfinished partial needs the full silence
    await session.close()


class StallingAsr(ScriptedAsr):
    """An ASR whose final never comes while `stalled` is set (a wedged model or a server that stopped answering)."""

    def __init__(self, partial: str, final: str) -> None:
        super().__init__(partial, final)
        self.stalled = True
        self.finishes = 0

    async def finish(self) -> Transcript:
        self.finishes += 1
        if self.stalled:
            await asyncio.Event().wait()  # never set: only cancellation ends it
        return await super().finish()


async def test_a_final_that_misses_its_deadline_ends_the_turn_without_text_and_the_next_turn_is_heard(model) -> None:
    asr = StallingAsr("", "社保卡丢了怎么办")
    deadline = asyncio.Event()
    waited: list[float] = []

    async def sleep(seconds: float) -> None:  # the watchdog's time, released by the test
        waited.append(seconds)
        await deadline.wait()

    clock = AudioClock()
    detector = SpeechDetector(SileroVad(model), DetectorConfig(min_silence_ms=250))
    session = SpeechSession(detector, asr, RecordingSink(clock), EndpointConfig(final_deadline_ms=900), clock=clock,
                            sleep=sleep)
    question = padded(synthesize_mandarin("社保卡丢了怎么办"), 500, 0)
    await push(session, clock, question)
    for _ in range(100):  # the turn is declared over: the final is asked for and never comes
        await push(session, clock, silence(20))
        if asr.finishes:
            break
    # The deadline runs from the last voiced audio: the end-of-turn silence already waited is part of it.
    assert asr.finishes == 1 and len(waited) == 1 and 0.2 < waited[0] < 0.9
    assert not any(isinstance(event, UtteranceEnded) for event in list(session.events._queue))
    deadline.set()
    for _ in range(20):
        await asyncio.sleep(0)
    ended = [event for event in list(session.events._queue) if isinstance(event, UtteranceEnded)]
    assert [event.text for event in ended] == [""] and session.asr_overdue == 1 and session.asr_errors == 1
    # The engine is back: the next turn goes through a fresh ASR task and is recognised.
    asr.stalled = False
    deadline = asyncio.Event()  # not released this time: the final must come on its own
    while not session.events.empty():
        session.events.get_nowait()
    events = await utterance_after(session, clock, question)
    assert [event.text for event in events if isinstance(event, UtteranceEnded)] == ["社保卡丢了怎么办"]
    assert session.asr_overdue == 1
    await session.close()

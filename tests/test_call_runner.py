"""The call runner on a line that is not a websocket: any `CallTransport` gets the same speech session, dialogue,
recordings, turn log and call record. Real Silero VAD on synthesized Mandarin, a scripted ASR, the real answer
engine and SQLite; the TTS double says each sentence as 20 ms of tone so playback takes no time."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from telephony.app import Hotline, call_config
from telephony.calls import prompts
from telephony.calls.base import CallerAudio, CallInfo, KeyPressed, LineEvent
from telephony.calls.runner import CallRunner, VoiceEngines
from telephony.handoff.callback import CallbackTickets
from telephony.settings import Settings
from telephony.store import CallChannel, CallStatus
from tests.voicefixtures import padded, synthesize_mandarin
from voice.audio import silence
from voice.base import FRAME_BYTES
from voice.testing.fakes import ScriptedAsr
from voice.vad import SileroModel, SileroVad

QUESTION = "社保卡丢了怎么办"


class QueueLine:
    """A `CallTransport` fed by the test: caller events go in a queue; what the assistant sends is kept."""

    def __init__(self, caller_number: str) -> None:
        self.info = CallInfo(CallChannel.SIP, caller_number=caller_number, called_number="12333")
        self.inbound: asyncio.Queue[LineEvent | None] = asyncio.Queue()
        self.sent = bytearray()
        self.clears = 0
        self.hung_up = asyncio.Event()

    def caller_says(self, pcm16: bytes) -> None:
        for offset in range(0, len(pcm16) - len(pcm16) % FRAME_BYTES, FRAME_BYTES):
            self.inbound.put_nowait(CallerAudio(pcm16[offset:offset + FRAME_BYTES]))

    def drop(self) -> None:
        self.inbound.put_nowait(None)

    async def events(self) -> AsyncIterator[LineEvent]:
        while not self.hung_up.is_set():
            event = await self.inbound.get()
            if event is None:
                return
            yield event

    async def send_audio(self, pcm16: bytes) -> None:
        self.sent += pcm16

    async def clear(self) -> None:
        self.clears += 1

    async def transfer(self, target: str) -> None:
        raise AssertionError("no transfer expected")

    async def hang_up(self) -> None:
        self.hung_up.set()
        self.inbound.put_nowait(None)


class ScriptedAsrEngine:
    """An ASR engine whose every utterance is recognised as one fixed text."""

    name = "scripted"

    def __init__(self, text: str) -> None:
        self.text = text

    async def warm_up(self) -> None:
        return None

    def open_stream(self, hotwords=()) -> ScriptedAsr:
        return ScriptedAsr(partial="", final=self.text)

    async def close(self) -> None:
        return None


class ToneTts:
    """Says every sentence as 20 ms of audio and keeps what was said; `said_event` fires on a chosen sentence."""

    name = "tone"
    voice = "none"

    def __init__(self, wait_for: str) -> None:
        self.said: list[str] = []
        self.wait_for = wait_for
        self.said_event = asyncio.Event()

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.said.append(text)
        if text == self.wait_for:
            self.said_event.set()
        yield b"\x10\x00" * (FRAME_BYTES // 2)


@pytest.fixture(scope="module")
def vad_model() -> SileroModel:
    return SileroModel()


def runner_for(hotline: Hotline, vad_model: SileroModel, tts: ToneTts, asr: ScriptedAsrEngine | None) -> CallRunner:
    engines = VoiceEngines(new_vad=lambda: SileroVad(vad_model), tts=tts, asr=asr,
                           asr_error=None if asr else "no model")
    return CallRunner(engines, call_config(hotline.settings), hotline.answers, hotline.database, hotline.writer,
                      CallbackTickets(hotline.database))


def wav_ms(path: Path) -> int:
    with wave.open(str(path)) as reader:
        return reader.getnframes() * 1000 // reader.getframerate()


async def test_a_question_on_another_line_is_answered_recorded_and_stored(settings: Settings,
                                                                          vad_model: SileroModel) -> None:
    hotline = Hotline.open(settings)
    tts = ToneTts(wait_for=prompts.ANYTHING_ELSE)
    runner = runner_for(hotline, vad_model, tts, ScriptedAsrEngine(QUESTION))
    line = QueueLine("13800000000")
    speech = padded(synthesize_mandarin(QUESTION), before_ms=300, after_ms=1500)
    line.caller_says(speech)
    call = asyncio.create_task(runner.run(line))
    await asyncio.wait_for(tts.said_event.wait(), 60)
    assert runner.active_calls == 1
    line.drop()
    assert await asyncio.wait_for(call, 30) == "caller_hangup"
    assert runner.active_calls == 0

    [stored] = hotline.database.recent_calls()
    stored = hotline.database.get_call(stored.id)
    assert stored.channel is CallChannel.SIP and stored.caller_number == "13800000000"
    assert stored.status is CallStatus.ENDED and stored.end_reason == "caller_hangup"
    [turn] = stored.turns
    assert (turn.caller_text, turn.action, turn.item_ids) == (QUESTION, "answer", ["card-loss-report"])
    assert {"endpoint_wait_ms", "answer_ms", "voice_to_voice_ms"} <= set(turn.timings_ms)
    assert tts.said[0] == prompts.GREETING.format(centre=settings.centre_name) and "挂失" in tts.said[1]
    # Both tracks are recorded where audio crosses the line: all the caller sent, all the assistant sent.
    assert wav_ms(Path(stored.recording_caller_path)) == len(speech) // FRAME_BYTES * 20
    assert len(line.sent) == len(tts.said) * FRAME_BYTES
    assert wav_ms(Path(stored.recording_assistant_path)) >= len(line.sent) * 1000 // 16000
    hotline.close()


async def test_without_asr_the_caller_hears_an_apology_gets_a_ticket_and_is_recorded(settings: Settings,
                                                                                     vad_model: SileroModel) -> None:
    hotline = Hotline.open(settings)
    tts = ToneTts(wait_for=prompts.VOICE_UNAVAILABLE)
    runner = runner_for(hotline, vad_model, tts, None)
    line = QueueLine("13900000000")
    line.caller_says(silence(400))
    line.inbound.put_nowait(KeyPressed("1"))
    assert await asyncio.wait_for(runner.run(line), 30) == "asr_unavailable"
    assert line.hung_up.is_set() and tts.said == [prompts.VOICE_UNAVAILABLE]
    stored = hotline.database.get_call(hotline.database.recent_calls()[0].id)
    assert stored.end_reason == "asr_unavailable"
    assert [(ticket.reason, ticket.callback_number) for ticket in stored.handoff_tickets] == [
        ("ASR unavailable: no model", "13900000000")]
    # The caller's audio is recorded in degraded mode too; the apology follows it on the shared timeline.
    assert wav_ms(Path(stored.recording_caller_path)) == 400
    assert wav_ms(Path(stored.recording_assistant_path)) == 400 + 20
    hotline.close()

"""The call runner on a line that is not a websocket: any `CallTransport` gets the same speech session, dialogue,
recordings, turn log and call record. Real Silero VAD on synthesized Mandarin, a scripted ASR, the real answer
engine and SQLite; the TTS double says each sentence as 20 ms of tone so playback takes no time."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kb.keypad_menu import load_menu
from telephony.app import Hotline, call_config
from telephony.calls import prompts
from telephony.calls.base import CallerAudio, CallInfo, KeyPressed, LineEvent
from telephony.calls.keypad import area_options, top_options
from telephony.calls.runner import CallRunner, VoiceEngines
from telephony.errors import StorageError
from telephony.handoff.callback import CallbackTickets
from telephony.settings import Settings
from telephony.store import CallChannel, CallStatus, SmsKind
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


def call_asking(runner: CallRunner) -> tuple[QueueLine, bytes, asyncio.Task]:
    """A call on a new line whose caller asks QUESTION once: (the line, the caller's audio, the call's task)."""
    line = QueueLine("13800000000")
    speech = padded(synthesize_mandarin(QUESTION), before_ms=300, after_ms=1500)
    line.caller_says(speech)
    return line, speech, asyncio.create_task(runner.run(line))


def wav_ms(path: Path) -> int:
    with wave.open(str(path)) as reader:
        return reader.getnframes() * 1000 // reader.getframerate()


async def test_a_question_on_another_line_is_answered_recorded_and_stored(settings: Settings,
                                                                          vad_model: SileroModel) -> None:
    hotline = Hotline.open(settings)
    tts = ToneTts(wait_for=prompts.ANYTHING_ELSE)
    runner = runner_for(hotline, vad_model, tts, ScriptedAsrEngine(QUESTION))
    line, speech, call = call_asking(runner)
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


class PacedToneTts(ToneTts):
    """Says every sentence as 100 ms of tone: long enough that pacing shows in the call record."""

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.said.append(text)
        yield b"\x10\x00" * (SENTENCE_BYTES // 2)


SENTENCE_BYTES = 5 * FRAME_BYTES  # 100 ms


async def after_hearing(tts: PacedToneTts, line: QueueLine, text: str) -> None:
    """Wait until `text` was said and all the audio said so far went to the line, and the far end played the lead
    sent ahead of real time (200 ms), so that the caller's next key does not cut a sentence short."""
    while text not in tts.said or len(line.sent) < len(tts.said) * SENTENCE_BYTES:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)


async def test_without_asr_the_caller_uses_the_keypad_menu_and_the_record_is_honest(settings: Settings,
                                                                                   vad_model: SileroModel) -> None:
    hotline = Hotline.open(settings)
    tts = PacedToneTts(wait_for="")
    engines = VoiceEngines(new_vad=lambda: SileroVad(vad_model), tts=tts, asr=None, asr_error="no model")
    runner = CallRunner(engines, call_config(hotline.settings), hotline.answers, hotline.database, hotline.writer,
                        CallbackTickets(hotline.database, hotline.sms), sms=hotline.sms,
                        keypad_menu=load_menu())
    line = QueueLine("13900000000")
    call = asyncio.create_task(runner.run(line))
    menu = runner.menu()
    retirement = hotline.answers.kb.get("normal-retirement-application")
    caller_ms = 0
    for heard, key in ((top_options(menu), "2"), (area_options(menu.area("2")), "1"),
                       (prompts.SMS_OFFER_KEYS, "1"), (prompts.MENU_AFTER_SERVICE, "0")):
        await asyncio.wait_for(after_hearing(tts, line, heard), 30)
        line.caller_says(silence(200))  # the caller's line is never silent in the recording
        caller_ms += 200
        line.inbound.put_nowait(KeyPressed(key))
    assert await asyncio.wait_for(call, 30) == "handoff"
    assert line.hung_up.is_set() and line.clears == 0  # no sentence was cut

    stored = hotline.database.get_call(hotline.database.recent_calls()[0].id)
    [ticket] = stored.handoff_tickets
    assert tts.said == [prompts.GREETING_KEYPAD.format(centre=settings.centre_name), top_options(menu),
                        "养老保险，请按键选择：", area_options(menu.area("2")),
                        retirement.spoken, prompts.SMS_OFFER_KEYS,
                        prompts.SMS_SENT.format(tail="0000"), prompts.MENU_AFTER_SERVICE,
                        prompts.HANDOFF_REGISTERED_SMS.format(ticket=ticket.id)]
    guides = [message for message in hotline.sms.outbox.listing(call_id=stored.id) if message.kind is SmsKind.GUIDE]
    assert [(message.item_id, message.phone) for message in guides] == [(retirement.id, "13900000000")]
    assert ticket.trigger == "asr_unavailable" and ticket.callback_number == "13900000000"
    assert [(turn.caller_text, turn.action) for turn in stored.turns] == [
        ("按键2", "menu"), ("按键1", "menu"), ("按键1", "sms"), ("按键0", "handoff")]
    assert stored.end_reason == "handoff" and stored.status is CallStatus.ENDED
    # Every sentence went out paced, none cut: the call lasted at least as long as the audio the caller heard, and
    # its end is when the last of it was played, not when the record was written.
    sent_ms = len(line.sent) * 1000 // 16000
    assert sent_ms == len(tts.said) * 100
    assert wav_ms(Path(stored.recording_assistant_path)) >= sent_ms
    assert (stored.ended_at - stored.started_at).total_seconds() * 1000 >= sent_ms
    # The caller's audio is recorded from the first frame to the last, in this mode too.
    assert wav_ms(Path(stored.recording_caller_path)) == caller_ms
    hotline.close()


def test_the_call_record_keeps_the_end_time_it_is_given(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    hotline = Hotline.open(settings)
    call = hotline.database.start_call(CallChannel.SIP, "13900000000")
    ended = call.started_at + dt.timedelta(seconds=7.8)  # the last audio played, well before the record is written
    hotline.database.end_call(call.id, "handoff", ended_at=ended)
    assert hotline.database.get_call(call.id).ended_at == ended
    hotline.close()


async def test_a_slow_database_does_not_keep_the_caller_waiting_and_the_record_is_complete_when_it_answers(
        settings: Settings, vad_model: SileroModel) -> None:
    """The database takes the call's record only after the caller was greeted, answered and hung up: the caller
    hears everything without waiting for it, and once it answers the record holds the call, its recordings, its turn
    and the end time of when the line dropped."""
    hotline = Hotline.open(settings)
    database_answers = threading.Event()
    start_call = hotline.database.start_call

    def slow_start_call(*args, **kwargs):
        database_answers.wait(30)
        return start_call(*args, **kwargs)

    hotline.database.start_call = slow_start_call  # the runner and the turn writer share this database
    tts = ToneTts(wait_for=prompts.ANYTHING_ELSE)
    runner = runner_for(hotline, vad_model, tts, ScriptedAsrEngine(QUESTION))
    line, speech, call = call_asking(runner)
    await asyncio.wait_for(tts.said_event.wait(), 60)
    assert not database_answers.is_set() and hotline.database.recent_calls() == []
    assert tts.said[0] == prompts.GREETING.format(centre=settings.centre_name) and "挂失" in tts.said[1]
    line.drop()
    await asyncio.sleep(0.2)
    dropped = dt.datetime.now(dt.UTC)
    database_answers.set()
    assert await asyncio.wait_for(call, 30) == "caller_hangup"

    [stored] = hotline.database.recent_calls()
    stored = hotline.database.get_call(stored.id)
    assert stored.status is CallStatus.ENDED and stored.end_reason == "caller_hangup"
    assert stored.ended_at < dropped  # when the line dropped, not when the database answered
    [turn] = stored.turns
    assert (turn.caller_text, turn.action, turn.item_ids) == (QUESTION, "answer", ["card-loss-report"])
    assert wav_ms(Path(stored.recording_caller_path)) == len(speech) // FRAME_BYTES * 20
    assert stored.id in stored.recording_caller_path
    hotline.close()


async def test_a_call_whose_record_cannot_be_created_keeps_its_turns_in_one_record(settings: Settings,
                                                                                   vad_model: SileroModel) -> None:
    """The database refuses the call's record, then takes the turns: the call goes on, and its two turns are stored
    in one call (started by the first turn), not in a call each."""
    hotline = Hotline.open(settings)
    start_call = hotline.database.start_call
    refused: list[str] = []

    def refuse_once(*args, **kwargs):
        if not refused:
            refused.append(kwargs.get("call_id"))
            raise StorageError("database refused the call")
        return start_call(*args, **kwargs)

    hotline.database.start_call = refuse_once
    tts = ToneTts(wait_for="")
    runner = runner_for(hotline, vad_model, tts, ScriptedAsrEngine(QUESTION))
    line, speech, call = call_asking(runner)
    for count in (1, 2):
        while tts.said.count(prompts.ANYTHING_ELSE) < count:
            await asyncio.sleep(0.02)
        if count == 1:
            line.caller_says(speech)  # the same question again
    line.drop()
    assert await asyncio.wait_for(call, 30) == "caller_hangup"
    assert len(refused) == 1
    [stored] = hotline.database.recent_calls()
    assert [turn.caller_text for turn in hotline.database.get_call(stored.id).turns] == [QUESTION, QUESTION]
    hotline.close()

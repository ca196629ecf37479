"""The turn log: an observer of the dialogue's typed turn events that measures each stage and writes one row per turn.

Like pipecat's latency observers and livekit's metrics, the dialogue only reports what happened and when; nothing
threads timings or storage through the answer path. A turn is written once, when its reply's first audio has gone
out (so the write's Python work never competes with the reply for the GIL) or, with no audio, when the reply ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from rag.base import Answer
from telephony.store.models import CallChannel
from telephony.store.turns import TurnRecord, TurnWriter
from voice.session import UtteranceEnded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallerTurnEnded:
    """The caller finished speaking; a new turn begins."""

    utterance: UtteranceEnded


@dataclass(frozen=True)
class QuestionAsked:
    at: float  # monotonic seconds, the dialogue's clock


@dataclass(frozen=True)
class AnswerReady:
    answer: Answer
    kb_version: str
    at: float


@dataclass(frozen=True)
class TurnSettled:
    """The dialogue replied by itself (请再说一遍, goodbye, the SMS offer's exchange) without asking the answer engine."""

    action: str
    reason: str
    spoken: str = ""
    item_ids: tuple[str, ...] = ()
    sms_consent: bool | None = None
    sms_to: str | None = None  # masked
    sms_message_id: int | None = None
    caller_text: str | None = None  # replaces the transcript (a phone number is stored masked)


@dataclass(frozen=True)
class ReplyAudioStarted:
    at: float  # the first audio of the reply reached the transport


@dataclass(frozen=True)
class ReplyEnded:
    """The reply is over (played, cut short, or no audio could be made)."""


TurnEvent = CallerTurnEnded | QuestionAsked | AnswerReady | TurnSettled | ReplyAudioStarted | ReplyEnded


class TurnObserver(Protocol):
    def on_turn_event(self, event: TurnEvent) -> None: ...


def _ms(later: float, earlier: float) -> float:
    return round((later - earlier) * 1000, 1)


@dataclass
class _OpenTurn:
    utterance: UtteranceEnded
    asked_at: float | None = None
    answer: AnswerReady | None = None
    settled: TurnSettled | None = None

    @property
    def kb_version(self) -> str | None:
        return self.answer.kb_version if self.answer is not None else None

    def record(self, first_audio_at: float | None) -> TurnRecord:
        timings = self.utterance.timings
        stages = {"speech_ms": timings.speech_ms, "endpoint_wait_ms": timings.endpoint_wait_ms,
                  "asr_final_ms": timings.asr_final_ms}
        if self.answer is not None and self.asked_at is not None:
            stages["answer_ms"] = _ms(self.answer.at, self.asked_at)
        if first_audio_at is not None:
            stages["tts_first_audio_ms"] = _ms(first_audio_at, timings.final_at)
            stages["voice_to_voice_ms"] = _ms(first_audio_at, timings.speech_ended_at)
        if self.answer is not None:
            return TurnRecord.of_answer(self.answer.answer, stages)
        settled = self.settled
        assert settled is not None
        return TurnRecord(caller_text=settled.caller_text or self.utterance.text, action=settled.action,
                          reason=settled.reason, spoken_text=settled.spoken, item_ids=settled.item_ids,
                          timings_ms=stages, sms_consent=settled.sms_consent, sms_to=settled.sms_to,
                          sms_message_id=settled.sms_message_id)


class TurnLog:
    """Implements `TurnObserver` for one call: collects each turn's events and writes it in the background, in order."""

    def __init__(self, writer: TurnWriter, channel: CallChannel, call_id: str | None,
                 record: Callable[[], Awaitable[str | None]] | None = None) -> None:
        """`record`: when the call's record was not there at the start, awaits it and gives its id (None: no
        record; the first turn written starts one, and the call's later turns go in it)."""
        self.writer = writer
        self.channel = channel
        self.call_id = call_id
        self._record = record
        self._turn: _OpenTurn | None = None
        self._lock = asyncio.Lock()  # asyncio locks are FIFO: turns are written in the order they closed
        self._writes: set[asyncio.Task] = set()
        self.written: list[int | None] = []  # turn numbers, None where a turn went to the journal

    def on_turn_event(self, event: TurnEvent) -> None:
        if isinstance(event, CallerTurnEnded):
            self._turn = _OpenTurn(event.utterance)  # a turn never settled (a rejected question) is not stored
            return
        turn = self._turn
        if turn is None:
            return
        if isinstance(event, QuestionAsked):
            turn.asked_at = event.at
        elif isinstance(event, AnswerReady):
            turn.answer = event
        elif isinstance(event, TurnSettled):
            turn.settled = event
        elif isinstance(event, ReplyAudioStarted | ReplyEnded) and (turn.answer or turn.settled):
            self._turn = None
            first_audio_at = event.at if isinstance(event, ReplyAudioStarted) else None
            self._write(turn.record(first_audio_at), turn.kb_version)

    def close(self) -> None:
        """The call is over: a turn that was answered or settled but whose reply never ended is written now."""
        turn, self._turn = self._turn, None
        if turn is not None and (turn.answer or turn.settled):
            self._write(turn.record(None), turn.kb_version)

    def _write(self, record: TurnRecord, kb_version: str | None) -> None:
        async def write() -> None:
            async with self._lock:
                if self._record is not None:
                    self.call_id, self._record = await self._record(), None
                call_id, seq = await asyncio.to_thread(self.writer.write, self.channel, self.call_id, record,
                                                       kb_version)
                self.call_id = self.call_id or call_id
                self.written.append(seq)

        task = asyncio.create_task(write(), name=f"turn-write-{self.call_id}")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def flush(self) -> None:
        """Wait for the writes still in flight (at hang-up)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

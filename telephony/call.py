"""The phone dialogue: greeting, listen, answer or clarify, "还有其他问题吗", goodbye, as an explicit state machine."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from rag.base import Action, Answer, ConversationContext, ConversationTurn
from rag.errors import InvalidQuestionError
from telephony import prompts
from telephony.errors import StorageError, TelephonyError
from telephony.recording import CallRecorder
from telephony.service import HotlineService
from telephony.store import CallChannel
from voice.base import TtsEngine, VoiceError
from voice.session import (
    CallerSpeechStarted,
    DtmfPressed,
    PartialTranscript,
    PlaybackResult,
    SpeechSession,
    UtteranceEnded,
)

log = logging.getLogger(__name__)

GOODBYE_INTENT = re.compile(r"^(没有了?|没了|没得了?|不用了?|没事了?|就这些|就这样|再见|拜拜|好的?谢谢|谢谢你?|可以了|行了|好了)")
# Text an ASR gives for noise: nothing, or one syllable that is not an answer word.
SHORT_ANSWER_WORDS = re.compile(r"^(是|对|嗯|好|不|没|要|行)$")


class DialogueState(StrEnum):
    GREETING = "greeting"
    LISTENING = "listening"
    RESPONDING = "responding"
    ENDING = "ending"
    ENDED = "ended"


TRANSITIONS: dict[DialogueState, frozenset[DialogueState]] = {
    DialogueState.GREETING: frozenset({DialogueState.LISTENING, DialogueState.ENDING, DialogueState.ENDED}),
    DialogueState.LISTENING: frozenset({DialogueState.RESPONDING, DialogueState.ENDING, DialogueState.ENDED}),
    DialogueState.RESPONDING: frozenset({DialogueState.LISTENING, DialogueState.ENDING, DialogueState.ENDED}),
    DialogueState.ENDING: frozenset({DialogueState.ENDED}),
    DialogueState.ENDED: frozenset(),
}


class IllegalTransition(TelephonyError):
    pass


def next_state(current: DialogueState, target: DialogueState) -> DialogueState:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"dialogue cannot go from {current.value} to {target.value}")
    return target


@dataclass(frozen=True)
class DialogueConfig:
    no_speech_timeout_ms: int = 8000
    no_speech_reprompts: int = 2  # reprompts before a polite hang-up
    max_call_s: int = 600
    centre_name: str = "社保中心"


# What happens after an answer or on a handoff. The SMS and handoff issues replace these defaults.
AfterAnswer = Callable[[Answer], Awaitable[str]]
Handoff = Callable[["CallSession", Answer | None, str], Awaitable[str]]


async def ask_anything_else(_answer: Answer) -> str:
    return prompts.ANYTHING_ELSE


class CallSession:
    """Runs one call over a SpeechSession until goodbye, hang-up or the maximum length."""

    def __init__(self, call_id: str, channel: CallChannel, speech: SpeechSession, tts: TtsEngine,
                 service: HotlineService, config: DialogueConfig, recorder: CallRecorder | None = None,
                 caller_number: str | None = None, after_answer: AfterAnswer = ask_anything_else,
                 handoff: Handoff | None = None, hangup: Callable[[], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.call_id = call_id
        self.channel = channel
        self.speech = speech
        self.tts = tts
        self.service = service
        self.config = config
        self.recorder = recorder
        self.caller_number = caller_number
        self.after_answer = after_answer
        self.handoff = handoff or register_handoff
        self.hangup = hangup
        self.clock = clock
        self.state = DialogueState.GREETING
        self.end_reason: str | None = None
        self.last_spoken = ""
        self.turns = 0
        self._asked_anything_else = False
        self._started = clock()
        self._caller_mid_utterance = False
        self._pending_writes: set[asyncio.Future] = set()
        self._write_lock = asyncio.Lock()  # this call's turn writes, in order
        self._conversation: list[ConversationTurn] = []

    def _move(self, target: DialogueState) -> None:
        self.state = next_state(self.state, target)

    # -- speaking --------------------------------------------------------------------------------

    async def _audio(self, texts: tuple[str, ...]) -> AsyncIterator[bytes]:
        for text in texts:
            if not text:
                continue
            try:
                async for chunk in self.tts.synthesize(text):
                    if self.recorder is not None:
                        self.recorder.assistant(chunk)
                    yield chunk
            except VoiceError as exc:
                log.error("call %s: no audio for %r: %s", self.call_id, text, exc)

    async def say(self, *texts: str, on_first_audio: Callable[[float], None] | None = None) -> PlaybackResult:
        """Speak sentences one after another; each is synthesized (and cached) on its own."""
        self.last_spoken = "".join(texts)
        return await self.speech.play(self._audio(texts), on_first_audio)

    # -- the dialogue ----------------------------------------------------------------------------

    async def run(self) -> str:
        """Returns why the call ended."""
        try:
            await self.say(prompts.GREETING.format(centre=self.config.centre_name))
            self._move(DialogueState.LISTENING)
            silent_prompts = 0
            while self.state is DialogueState.LISTENING:
                remaining_s = self.config.max_call_s - (self.clock() - self._started)
                if remaining_s <= 0:
                    await self._finish(prompts.MAX_LENGTH_GOODBYE, "max_call_length")
                    break
                timeout_s = min(self.config.no_speech_timeout_ms / 1000, remaining_s)
                try:
                    event = await asyncio.wait_for(self.speech.events.get(), timeout_s)
                except asyncio.TimeoutError:
                    if self.speech.playing or self._caller_mid_utterance:
                        continue
                    if self.clock() - self._started >= self.config.max_call_s:
                        continue  # handled at the top of the loop
                    silent_prompts += 1
                    if silent_prompts > self.config.no_speech_reprompts:
                        await self._finish(prompts.SILENCE_GOODBYE, "no_speech")
                        break
                    await self._respond_with(prompts.SILENCE_REPROMPT)
                    continue
                if isinstance(event, CallerSpeechStarted):
                    self._caller_mid_utterance = True
                elif isinstance(event, PartialTranscript):
                    continue
                elif isinstance(event, DtmfPressed):
                    silent_prompts = 0
                    await self._on_key(event.digit)
                elif isinstance(event, UtteranceEnded):
                    self._caller_mid_utterance = False
                    silent_prompts = 0
                    await self._on_utterance(event)
        except asyncio.CancelledError:
            self.end_reason = self.end_reason or "caller_hangup"
            raise
        finally:
            if self.state is not DialogueState.ENDED:
                self.state = DialogueState.ENDED
        return self.end_reason or "caller_hangup"

    async def _respond_with(self, text: str) -> None:
        self._move(DialogueState.RESPONDING)
        await self.say(text)
        if self.state is DialogueState.RESPONDING:
            self._move(DialogueState.LISTENING)

    async def _finish(self, text: str, reason: str) -> None:
        self.end_reason = reason
        self._move(DialogueState.ENDING)
        await self.say(text)
        self._move(DialogueState.ENDED)
        if self.hangup is not None:
            await self.hangup()

    async def _on_key(self, digit: str) -> None:
        if digit == "*":
            await self._respond_with(self.last_spoken or prompts.NOTHING_TO_REPEAT)
        elif digit == "0":
            await self._hand_off(None, "caller pressed 0")

    async def _on_utterance(self, event: UtteranceEnded) -> None:
        text = event.text.strip()
        timings = {
            "speech_ms": event.timings.speech_ms,
            "endpoint_wait_ms": event.timings.endpoint_wait_ms,
            "asr_final_ms": event.timings.asr_final_ms,
        }
        if not usable(text, self.speech.expect_short_reply):
            self._store_system_turn(text, "repeat", "no usable speech recognised", timings)
            await self._respond_with(prompts.REPEAT_PLEASE)
            return
        if self._asked_anything_else and GOODBYE_INTENT.search(text):
            self._store_system_turn(text, "goodbye", "caller has no more questions", timings)
            await self._finish(prompts.GOODBYE, "caller_done")
            return
        self._move(DialogueState.RESPONDING)
        try:
            first_audio_out = asyncio.Event()
            result = await self.service.ask(text, self.channel, self.call_id, context=self.context(),
                                            stage_timings=timings, background_store=True,
                                            store_after=first_audio_out, write_lock=self._write_lock)
        except InvalidQuestionError:
            await self.say(prompts.REPEAT_PLEASE)
            self._move(DialogueState.LISTENING)
            return
        self.turns += 1
        answer = result.answer
        self._remember(answer)
        if result.stored is not None:
            self._pending_writes.add(result.stored)
            result.stored.add_done_callback(self._pending_writes.discard)
        self.speech.expect_short_reply = answer.action is Action.CLARIFY
        self._asked_anything_else = False
        if answer.action is Action.HANDOFF:
            await self._hand_off(answer, answer.reason, spoken_first=answer.spoken, stored=result.stored,
                                 event=event, first_audio_out=first_audio_out)
            return
        follow = ""
        if answer.action is Action.ANSWER:
            follow = await self.after_answer(answer)
            self._asked_anything_else = True
        await self.say(answer.spoken, follow,
                       on_first_audio=self._first_audio_recorder(result.stored, event, first_audio_out))
        if self.state is DialogueState.RESPONDING:
            self._move(DialogueState.LISTENING)

    def _first_audio_recorder(self, stored: asyncio.Task | None, event: UtteranceEnded,
                              first_audio_out: asyncio.Event | None = None) -> Callable[[float], None]:
        """Adds the reply's first-audio timings to the stored turn as soon as audio goes out."""

        def record(first_audio_at: float) -> None:
            if first_audio_out is not None:
                first_audio_out.set()
            if stored is None:
                return
            timings = {
                "tts_first_audio_ms": round((first_audio_at - event.timings.final_at) * 1000, 1),
                "voice_to_voice_ms": round((first_audio_at - event.timings.speech_ended_at) * 1000, 1),
            }
            task = asyncio.create_task(self._store_timings(stored, timings))
            self._pending_writes.add(task)
            task.add_done_callback(self._pending_writes.discard)

        return record

    async def _store_timings(self, stored: asyncio.Task, timings: dict[str, float]) -> None:
        _call_id, seq = await stored
        if seq is None:
            return
        try:
            await asyncio.to_thread(self.service.database.update_turn_timings, self.call_id, seq, timings)
        except StorageError as exc:
            log.warning("call %s: timings of turn %s not stored: %s", self.call_id, seq, exc)

    def context(self) -> ConversationContext:
        return ConversationContext.from_turns(self._conversation)

    def _remember(self, answer: Answer) -> None:
        """The conversation so far, kept in memory (the database is written in the background)."""
        self._conversation.append(answer.as_turn())

    async def flush(self) -> None:
        """Wait for turn writes still in flight (at hang-up)."""
        if self._pending_writes:
            await asyncio.gather(*self._pending_writes, return_exceptions=True)

    async def _hand_off(self, answer: Answer | None, reason: str, spoken_first: str = "",
                        stored: asyncio.Task | None = None, event: UtteranceEnded | None = None,
                        first_audio_out: asyncio.Event | None = None) -> None:
        """Say the handoff sentence at once; the ticket is written meanwhile, then its closing is said."""
        self.end_reason = "handoff"
        if self.state is not DialogueState.ENDING:
            self._move(DialogueState.ENDING)

        async def register() -> str:
            if stored is not None:
                await stored  # the ticket refers to the stored call
            return await self.handoff(self, answer, reason)

        registering = asyncio.create_task(register())
        if spoken_first:
            recorder = self._first_audio_recorder(stored, event, first_audio_out) if event is not None else None
            await self.say(spoken_first, on_first_audio=recorder)
        await self.say(await registering)
        self._move(DialogueState.ENDED)
        if self.hangup is not None:
            await self.hangup()

    def _store_system_turn(self, text: str, action: str, reason: str, timings: dict[str, float]) -> None:
        """A turn the dialogue answered by itself (请再说一遍, goodbye), written in the background."""

        async def store() -> None:
            async with self._write_lock:
                try:
                    await asyncio.to_thread(self.service.database.add_turn, self.call_id, caller_text=text,
                                            spoken_text="", action=action, reason=reason, timings_ms=timings)
                except StorageError as exc:
                    log.warning("call %s: turn not stored: %s", self.call_id, exc)

        task = asyncio.create_task(store())
        self._pending_writes.add(task)
        task.add_done_callback(self._pending_writes.discard)


def usable(text: str, expect_short_reply: bool) -> bool:
    """Whether an ASR result is worth answering (not empty noise); short words count only as replies."""
    letters = re.sub(r"[\W_]+", "", text)
    if not letters:
        return False
    if len(letters) == 1:
        return expect_short_reply and bool(SHORT_ANSWER_WORDS.match(letters))
    return True


async def register_handoff(session: CallSession, answer: Answer | None, reason: str) -> str:
    """Default handoff until live transfer exists: a ticket for a callback, and say so."""
    try:
        await asyncio.to_thread(session.service.database.open_handoff_ticket, session.call_id, reason,
                                session.caller_number)
    except StorageError as exc:
        log.error("call %s: handoff ticket not stored: %s", session.call_id, exc)
    return prompts.HANDOFF_REGISTERED

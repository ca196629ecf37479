"""One caller's speech turn-taking: VAD, streaming ASR, endpointing, barge-in and DTMF; playback is delegated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum

from voice.base import FRAME_BYTES, FRAME_MS, AsrStream, AudioBacklog, VoiceError
from voice.playback import AudioSink, PacedPlayback, PlaybackResult
from voice.vad import SpeechDetector, SpeechStarted

log = logging.getLogger(__name__)

# A partial transcript that reads as a whole question lets the turn end on a shorter silence: it asks something
# (an interrogative or a request for a human) and does not stop on a word that announces more to come.
MAX_MERGED_FRAMES = 300  # 6 s of 20 ms frames: the most caller audio that goes to the ASR in one push
# How long `close` lets the ASR task work through what is queued (a final decode under way on a busy model) before
# cancelling it: about twice a final's worst latency under load, so a hung engine or server cannot hold up the
# hang-up's clean-up, while a final that is merely slow still finishes and leaves the stream in a clean state.
ASR_CLOSE_WAIT_S = 2.0

QUESTION_WORDS = re.compile(r"怎么|咋|怎样|如何|什么|啥|哪|多少|几|吗|呢|能不能|可不可以|是不是|有没有|要不要|行不行|"
                            r"可以不|能否|转人工|人工")
HANGING_ENDINGS = re.compile(r"(的|地|得|和|跟|与|还有|就是|那个|这个|然后|因为|但是|如果|要是|我想|我要|想问|请问|"
                             r"一下|问问|关于|对于|还是|或者|[，、,])$")


def looks_complete(text: str) -> bool:
    body = text.strip().rstrip("？?。！!")
    return len(body) >= 3 and bool(QUESTION_WORDS.search(body)) and not HANGING_ENDINGS.search(body)


@dataclass(frozen=True)
class EndpointConfig:
    """When a caller's turn is over. Silences are trailing silence after the last voiced window."""

    end_of_turn_silence_ms: int = 700
    complete_question_silence_ms: int = 300  # the partial transcript already reads as a whole question
    short_reply_silence_ms: int = 300  # after "是不是…？" or "A还是B？" a "是" / "对" / "第二个" is expected
    max_utterance_ms: int = 20_000
    pre_roll_ms: int = 400  # audio kept from before the VAD fired, so the first syllable reaches the ASR
    playback_lead_ms: int = 200  # how far ahead of real time audio is sent to the transport
    speculative_final: bool = True  # at the first pause, a final decode on a copy of the ASR cache (see _should_peek)
    # The longest a caller waits for the ASR's final text, counted from the caller's last voiced audio (so the
    # end-of-turn silence is part of it). A final that is not there by then (a stalled model, a server that stopped
    # answering) ends the turn with no text, so the dialogue speaks at once (asks again, then the keypad menu)
    # instead of leaving the caller in silence; the ASR task that was stuck is abandoned and a fresh one takes the
    # queued audio.
    final_deadline_ms: int = 1300


@dataclass(frozen=True)
class TurnTimings:
    """Wall-clock facts of one caller turn (monotonic seconds) and the stage durations derived from them."""

    speech_started_at: float
    speech_ended_at: float  # arrival of the last voiced audio
    endpoint_at: float  # the turn was declared over
    final_at: float  # the ASR final transcript was ready

    @property
    def endpoint_wait_ms(self) -> float:
        return round((self.endpoint_at - self.speech_ended_at) * 1000, 1)

    @property
    def asr_final_ms(self) -> float:
        return round((self.final_at - self.endpoint_at) * 1000, 1)

    @property
    def speech_ms(self) -> float:
        return round((self.speech_ended_at - self.speech_started_at) * 1000, 1)


@dataclass(frozen=True)
class CallerSpeechStarted:
    at: float
    barged_in: bool  # it interrupted the assistant's playback


@dataclass(frozen=True)
class PartialTranscript:
    text: str
    at: float


@dataclass(frozen=True)
class UtteranceEnded:
    text: str
    reason: str  # "silence" or "max_length"
    timings: TurnTimings


@dataclass(frozen=True)
class DtmfPressed:
    digit: str
    at: float


SpeechEvent = CallerSpeechStarted | PartialTranscript | UtteranceEnded | DtmfPressed


class ReplyKind(StrEnum):
    """What the dialogue expects the caller to say next; a short reply ends the turn on a shorter silence."""

    QUESTION = "question"
    SHORT = "short"  # after "是不是…？" or "A还是B？": "是", "对", "第二个"


@dataclass
class _Utterance:
    started_at: float
    voiced_until: float
    partial: str = ""
    frames: int = 0
    peeked_at_voice: float | None = None  # voiced_until when a speculative final decode was asked for
    early_final: str | None = None  # that decode's text, when it read as a whole question
    reported: bool = False  # its UtteranceEnded went out (from the final, or from the deadline without text)


# The ASR task's work, in the order the audio path queued it.
@dataclass(frozen=True)
class AsrAudio:
    """Caller audio for the stream (the pre-roll, then the utterance's frames)."""

    pcm16: bytes


@dataclass(frozen=True)
class AsrPeek:
    """A speculative final decode at a pause (only for streams with `capabilities.speculative_final`)."""

    utterance: _Utterance


@dataclass(frozen=True)
class AsrFinish:
    """The turn is over: take the final text and report the utterance."""

    utterance: _Utterance
    endpoint_at: float
    reason: str


@dataclass(frozen=True)
class AsrClose:
    """The call is over: the ASR task stops after the work queued before it."""


AsrWork = AsrAudio | AsrPeek | AsrFinish | AsrClose


def _audio_of(work: AsrWork) -> bytes | None:
    return work.pcm16 if isinstance(work, AsrAudio) else None


class SpeechSession:
    """Feed caller audio in with `push_audio`; read turn events from `events`; speak with `play`."""

    def __init__(self, detector: SpeechDetector, asr: AsrStream, sink: AudioSink,
                 config: EndpointConfig = EndpointConfig(), clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = asyncio.sleep) -> None:
        self.detector = detector
        self.asr = asr
        self.sink = sink
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.events: asyncio.Queue[SpeechEvent] = asyncio.Queue()
        self._expected_reply = ReplyKind.QUESTION
        self._pre_roll: deque[bytes] = deque(maxlen=max(1, config.pre_roll_ms // FRAME_MS))
        self._utterance: _Utterance | None = None
        self._asr_queue: asyncio.Queue[AsrWork] = asyncio.Queue()
        self._asr_task: asyncio.Task | None = None
        self._partial = ""  # the ASR's latest partial of the current utterance (read by the ASR task only)
        self._playback = PacedPlayback(sink, config.playback_lead_ms, clock)
        self._carry = b""
        self._watchdogs: set[asyncio.Task] = set()
        self._abandoned: set[asyncio.Task] = set()  # ASR tasks replaced after a missed final deadline
        self.asr_errors = 0
        self.asr_overdue = 0  # finals that missed `final_deadline_ms`: the turn ended without text

    def expect_reply(self, kind: ReplyKind) -> None:
        """The dialogue says what it expects next: after a clarifying question, a short reply."""
        self._expected_reply = kind

    @property
    def expects_short_reply(self) -> bool:
        return self._expected_reply is ReplyKind.SHORT

    # -- caller side ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._asr_task is None:
            self._asr_task = asyncio.create_task(self._run_asr(), name="speech-session-asr")

    async def push_audio(self, pcm16: bytes) -> None:
        """One chunk of caller audio (8 kHz PCM, any length) as it arrives from the transport."""
        self.start()
        data = self._carry + pcm16
        usable = len(data) - len(data) % FRAME_BYTES
        self._carry = data[usable:]
        for offset in range(0, usable, FRAME_BYTES):
            await self._push_frame(data[offset:offset + FRAME_BYTES])

    async def _push_frame(self, frame: bytes) -> None:
        now = self.clock()
        for event in await self.detector.push_async(frame):
            if isinstance(event, SpeechStarted) and self._utterance is None:
                barged_in = self.playing
                if barged_in:
                    await self.stop_playback()
                # The VAD fires after min_speech_ms of voice: start the utterance where the voice began.
                self._utterance = _Utterance(started_at=now, voiced_until=now)
                for buffered in self._pre_roll:
                    self._asr_queue.put_nowait(AsrAudio(buffered))
                self._pre_roll.clear()
                self.events.put_nowait(CallerSpeechStarted(now, barged_in))
        utterance = self._utterance
        if utterance is None:
            self._pre_roll.append(frame)
            return
        utterance.frames += 1
        self._asr_queue.put_nowait(AsrAudio(frame))
        if self.detector.in_speech and self.detector.silence_ms == 0:
            utterance.voiced_until = now
            utterance.early_final = None  # the caller went on: the speculative text is out of date
        if (now - utterance.started_at) * 1000 >= self.config.max_utterance_ms:
            self._end_utterance(now, "max_length")
        elif not self.detector.in_speech or self.detector.silence_ms > 0:
            if self.detector.silence_ms >= self._silence_needed(utterance):
                self._end_utterance(now, "silence")
            elif self._should_peek(utterance):
                utterance.peeked_at_voice = utterance.voiced_until
                self._asr_queue.put_nowait(AsrPeek(utterance))

    def _should_peek(self, utterance: _Utterance) -> bool:
        """At the first short pause, ask the ASR what the whole utterance says so far (its partials lag a
        stride behind): if that reads as a question, the turn can end on the short silence."""
        return (self.config.speculative_final and self.asr.capabilities.speculative_final
                and not self.expects_short_reply
                and self.detector.silence_ms >= self.config.complete_question_silence_ms
                and utterance.peeked_at_voice != utterance.voiced_until and not looks_complete(utterance.partial))

    def _silence_needed(self, utterance: _Utterance) -> int:
        if self.expects_short_reply:
            return self.config.short_reply_silence_ms
        if looks_complete(utterance.early_final or utterance.partial):
            return self.config.complete_question_silence_ms
        return self.config.end_of_turn_silence_ms

    def _end_utterance(self, now: float, reason: str) -> None:
        utterance = self._utterance
        assert utterance is not None
        self._utterance = None
        if self.asr.capabilities.expedite:
            self.asr.expedite()  # the final is awaited now: its remaining decodes go before other calls' partials
        self._asr_queue.put_nowait(AsrFinish(utterance, now, reason))
        watchdog = asyncio.create_task(self._final_deadline(utterance, now, reason), name="speech-session-final")
        self._watchdogs.add(watchdog)
        watchdog.add_done_callback(self._watchdogs.discard)

    async def _final_deadline(self, utterance: _Utterance, endpoint_at: float, reason: str) -> None:
        """The final did not come in time: the turn ends without text and the stuck ASR task is replaced."""
        await self.sleep(max(0.0, utterance.voiced_until + self.config.final_deadline_ms / 1000 - self.clock()))
        if utterance.reported:
            return
        utterance.reported = True
        self.asr_errors += 1
        self.asr_overdue += 1
        log.warning("ASR final not ready %d ms after the caller's last words: the turn ends without text",
                    self.config.final_deadline_ms)
        stuck = self._asr_task
        if stuck is not None and not stuck.done():
            stuck.cancel()  # kept until it has ended: an engine call that ignores cancellation must not be collected
            self._abandoned.add(stuck)
            stuck.add_done_callback(self._abandoned.discard)
            self._asr_task = asyncio.create_task(self._run_asr(), name="speech-session-asr")
        self._partial = ""
        timings = TurnTimings(utterance.started_at, utterance.voiced_until, endpoint_at, self.clock())
        self.events.put_nowait(UtteranceEnded("", reason, timings))

    async def push_dtmf(self, digit: str) -> None:
        """A keypad press interrupts the assistant like speech does (callers press keys to skip prompts)."""
        if self.playing:
            await self.stop_playback()
        self.events.put_nowait(DtmfPressed(digit, self.clock()))

    async def _run_asr(self) -> None:
        """Feeds the ASR off the audio path, so VAD and barge-in never wait for decoding."""
        # When the ASR falls behind (a busy model), the audio that piled up goes in one push.
        backlog = AudioBacklog(self._asr_queue, _audio_of, MAX_MERGED_FRAMES)
        while True:
            work, audio = await backlog.next()
            match work:
                case AsrAudio():
                    assert audio is not None  # an audio item comes with its audio, merged with any piled up behind
                    await self._transcribe(audio)
                case AsrPeek(utterance):
                    await self._peek(utterance)
                case AsrFinish(utterance, endpoint_at, reason):
                    await self._finish(utterance, endpoint_at, reason)
                case AsrClose():
                    return

    async def _transcribe(self, pcm16: bytes) -> None:
        try:
            transcript = await self.asr.push(pcm16)
        except VoiceError as exc:
            self.asr_errors += 1
            log.warning("ASR push failed: %s", exc)
            return
        if transcript is not None and transcript.text != self._partial:
            self._partial = transcript.text
            if self._utterance is not None and self._utterance.early_final is None:
                self._utterance.partial = self._partial
            self.events.put_nowait(PartialTranscript(self._partial, self.clock()))

    async def _peek(self, utterance: _Utterance) -> None:
        try:
            peeked = (await self.asr.peek()).text
        except VoiceError as exc:
            log.warning("ASR peek failed: %s", exc)
            return
        if looks_complete(peeked) and utterance.voiced_until == utterance.peeked_at_voice:
            utterance.early_final = utterance.partial = peeked

    async def _finish(self, utterance: _Utterance, endpoint_at: float, reason: str) -> None:
        try:
            if utterance.early_final is not None and utterance.voiced_until == utterance.peeked_at_voice:
                text = utterance.early_final  # only silence came after it: no second decode
                await self.asr.discard()
            else:
                text = (await self.asr.finish()).text
        except VoiceError as exc:
            self.asr_errors += 1
            log.warning("ASR final failed: %s", exc)
            text = ""
        self._partial = ""
        if utterance.reported:  # the deadline already ended this turn without text; the late text is dropped
            return
        utterance.reported = True
        timings = TurnTimings(utterance.started_at, utterance.voiced_until, endpoint_at, self.clock())
        self.events.put_nowait(UtteranceEnded(text.strip(), reason, timings))

    # -- assistant side -------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        return self._playback.playing

    async def play(self, chunks: AsyncIterator[bytes],
                   on_first_audio: Callable[[float], None] | None = None) -> PlaybackResult:
        """Send the audio to the transport in real time (a small lead ahead), until done or interrupted."""
        return await self._playback.play(chunks, on_first_audio)

    async def stop_playback(self) -> None:
        """Barge-in or hang-up: stop sending and make the far end drop its buffered audio."""
        await self._playback.stop()

    async def close(self) -> None:
        for watchdog in list(self._watchdogs):
            watchdog.cancel()
        await self.stop_playback()
        if self._asr_task is not None:
            self._asr_queue.put_nowait(AsrClose())
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._asr_task, ASR_CLOSE_WAIT_S)
            if not self._asr_task.done():
                self._asr_task.cancel()
        with contextlib.suppress(VoiceError):
            await self.asr.close()

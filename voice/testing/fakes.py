"""Shared test doubles for the voice package: a scripted ASR stream, a recording audio sink and audio-driven time."""

from __future__ import annotations

from collections.abc import Callable

from voice.base import FRAME_MS, SAMPLE_WIDTH_BYTES, TELEPHONY_RATE_HZ, AsrCapabilities, Transcript

SCRIPTED_PARTIAL_AFTER_BYTES = TELEPHONY_RATE_HZ * SAMPLE_WIDTH_BYTES // 2  # 500 ms of audio


class ScriptedAsr:
    """An `AsrStream` that returns a fixed partial once 500 ms of audio arrived, and a fixed final text."""

    capabilities = AsrCapabilities()

    def __init__(self, partial: str, final: str) -> None:
        self.partial, self.final = partial, final
        self.received = 0

    async def push(self, pcm16: bytes) -> Transcript | None:
        self.received += len(pcm16)
        heard_enough = self.received >= SCRIPTED_PARTIAL_AFTER_BYTES
        return Transcript(self.partial, False) if self.partial and heard_enough else None

    async def finish(self) -> Transcript:
        self.received = 0
        return Transcript(self.final, True)

    async def close(self) -> None:
        return None


class RecordingSink:
    """An `AudioSink` that counts the bytes sent and records when the far end was told to clear its buffer."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.sent = 0
        self.clears: list[float] = []

    async def send_audio(self, pcm16: bytes) -> None:
        self.sent += len(pcm16)

    async def clear(self) -> None:
        self.clears.append(self.clock())


class AudioClock:
    """Session time that advances with the audio pushed: one frame (20 ms) per `frames` step, no wall clock."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self) -> float:
        return self.frames * FRAME_MS / 1000


class SequenceAsrEngine:
    """An `AsrEngine` that recognises a call's utterances as `texts`, one after another (shared by all its streams)."""

    name = "scripted-sequence"

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)

    async def warm_up(self) -> None:
        return None

    def open_stream(self, hotwords=()) -> ScriptedAsr:
        engine = self

        class Stream(ScriptedAsr):
            async def finish(self) -> Transcript:
                self.final = engine.texts.pop(0) if engine.texts else ""
                return await super().finish()

        return Stream(partial="", final="")

    async def close(self) -> None:
        return None

"""The voice package's engine interfaces (ASR, TTS, VAD), its typed events and its exception root."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

# Telephony audio inside the voice package is 16-bit signed little-endian mono PCM at 8 kHz;
# engines that need another rate resample at their own edge.
TELEPHONY_RATE_HZ = 8000
SAMPLE_WIDTH_BYTES = 2
FRAME_MS = 20
FRAME_SAMPLES = TELEPHONY_RATE_HZ * FRAME_MS // 1000  # 160
FRAME_BYTES = FRAME_SAMPLES * SAMPLE_WIDTH_BYTES  # 320


class VoiceError(Exception):
    """Root of every error the voice package raises; third-party errors are translated into these."""


class AudioFormatError(VoiceError):
    """Audio that cannot be decoded or has the wrong shape (odd byte count, unknown codec, bad WAV)."""


class AsrUnavailable(VoiceError):
    """No ASR model could be loaded or the ASR server cannot be reached."""


class TtsUnavailable(VoiceError):
    """A TTS engine failed (network, service error, missing binary) or missed its deadline."""


@dataclass(frozen=True)
class Transcript:
    """Recognised text of the current utterance so far (cumulative), final once the utterance is closed."""

    text: str
    is_final: bool


@dataclass(frozen=True)
class AsrCapabilities:
    """What an ASR stream offers beyond push, finish and close; callers read this instead of probing for methods."""

    speculative_final: bool = False  # `peek` and `discard`: a final decode at a pause without ending the utterance
    expedite: bool = False  # `expedite`: the ended utterance's queued decodes go before other streams' chunks


class AsrStream(Protocol):
    """One caller utterance at a time; reusable for the next utterance after `finish()`.

    `peek`, `discard` and `expedite` are optional: a stream defines them only when its `capabilities` say so, and
    callers check `capabilities` before calling them.
    """

    @property
    def capabilities(self) -> AsrCapabilities: ...

    async def push(self, pcm16: bytes) -> Transcript | None:
        """Feed 8 kHz PCM; returns the cumulative partial when new text was decoded, else None."""

    async def finish(self) -> Transcript:
        """Decode what is buffered and return the final text of the utterance; resets for the next one."""

    async def close(self) -> None: ...

    async def peek(self) -> Transcript:
        """With `capabilities.speculative_final`: the text if the utterance ended now, without ending it."""

    async def discard(self) -> None:
        """With `capabilities.speculative_final`: end the utterance without decoding (its text came from `peek`)."""

    def expedite(self) -> None:
        """With `capabilities.expedite`: the turn has ended and `finish` follows; decode this stream's audio first."""


class AsrEngine(Protocol):
    name: str

    async def warm_up(self) -> None:
        """Load the model (or connect) and run one inference so the first caller waits for nothing."""

    def open_stream(self, hotwords: Sequence[str] = ()) -> AsrStream: ...

    async def close(self) -> None: ...


class TtsEngine(Protocol):
    name: str
    voice: str
    rate: str  # the speaking rate as the engine spells it ("+0%", "200wpm"); part of a cached render's identity

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """8 kHz PCM chunks of the spoken text, the first as early as the engine can produce it."""


class Vad(Protocol):
    """A VAD may also offer `async probability_async(window)`, which `SpeechDetector.push_async` prefers (Silero's
    batches the windows of every call on the event loop)."""

    window_samples: int  # samples per decision at 8 kHz

    def probability(self, window: bytes) -> float:
        """Speech probability (0..1) of exactly one window of 8 kHz PCM; keeps state across windows."""

    def reset(self) -> None: ...


Item = TypeVar("Item")


class AudioBacklog(Generic[Item]):
    """Reads a queue of audio and control items in order; audio items that piled up behind a busy consumer (an ASR
    model decoding other calls) come out as one piece, so the model decodes their strides in one call."""

    def __init__(self, queue: asyncio.Queue[Item], audio_of: Callable[[Item], bytes | None], max_items: int) -> None:
        self.queue = queue
        self.audio_of = audio_of  # the item's audio, or None for a control item
        self.max_items = max_items
        self._waiting: deque[Item] = deque()

    async def next(self) -> tuple[Item, bytes | None]:
        """The next item, and its audio merged with the audio items right behind it (None for a control item)."""
        if not self._waiting:
            self._waiting.append(await self.queue.get())
        while not self.queue.empty():
            self._waiting.append(self.queue.get_nowait())
        item = self._waiting.popleft()
        audio = self.audio_of(item)
        if audio is None:
            return item, None
        pieces = [audio]
        while self._waiting and len(pieces) < self.max_items:
            more = self.audio_of(self._waiting[0])
            if more is None:
                break
            pieces.append(more)
            self._waiting.popleft()
        return item, b"".join(pieces) if len(pieces) > 1 else audio

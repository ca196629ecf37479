"""The voice package's engine interfaces (ASR, TTS, VAD), its typed events and its exception root."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

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


class AsrStream(Protocol):
    """One caller utterance at a time; reusable for the next utterance after `finish()`."""

    async def push(self, pcm16: bytes) -> Transcript | None:
        """Feed 8 kHz PCM; returns the cumulative partial when new text was decoded, else None."""

    async def finish(self) -> Transcript:
        """Decode what is buffered and return the final text of the utterance; resets for the next one."""

    async def close(self) -> None: ...


class AsrEngine(Protocol):
    name: str

    async def warm_up(self) -> None:
        """Load the model (or connect) and run one inference so the first caller waits for nothing."""

    def open_stream(self, hotwords: Sequence[str] = ()) -> AsrStream: ...

    async def close(self) -> None: ...


class TtsEngine(Protocol):
    name: str
    voice: str

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """8 kHz PCM chunks of the spoken text, the first as early as the engine can produce it."""


class Vad(Protocol):
    window_samples: int  # samples per decision at 8 kHz

    def probability(self, window: bytes) -> float:
        """Speech probability (0..1) of exactly one window of 8 kHz PCM; keeps state across windows."""

    def reset(self) -> None: ...

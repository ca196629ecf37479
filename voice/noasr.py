"""An ASR stream for calls while no ASR engine could be loaded: it hears nothing, so a `SpeechSession` can still run a
call (paced playback, DTMF, barge-in by keys) and every utterance that reaches it ends with empty text."""

from __future__ import annotations

from voice.base import AsrCapabilities, Transcript


class NoAsrStream:
    """Implements `AsrStream`: no partials, an empty final, nothing to close."""

    capabilities = AsrCapabilities()

    async def push(self, pcm16: bytes) -> Transcript | None:
        return None

    async def finish(self) -> Transcript:
        return Transcript("", True)

    async def close(self) -> None:
        return None

"""The assistant's side of a call: a reply's audio paced to the transport in real time, and stopped at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from voice.base import FRAME_BYTES, FRAME_MS

FRAMES_PER_MESSAGE = 5  # 100 ms per transport message keeps 100 calls cheap


class AudioSink(Protocol):
    """Where the assistant's audio goes (a transport); `clear` drops what the far end has buffered."""

    async def send_audio(self, pcm16: bytes) -> None: ...

    async def clear(self) -> None: ...


@dataclass
class PlaybackResult:
    completed: bool  # False when barge-in or stop() cut it short
    sent_ms: int = 0
    first_audio_at: float | None = None
    stopped_at: float | None = None


@dataclass
class _Playback:
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    result: PlaybackResult = field(default_factory=lambda: PlaybackResult(False))
    on_first_audio: Callable[[float], None] | None = None


class PacedPlayback:
    """Plays one reply at a time into `sink`, `lead_ms` ahead of real time, until done or `stop`ped."""

    def __init__(self, sink: AudioSink, lead_ms: int, clock: Callable[[], float]) -> None:
        self.sink = sink
        self.lead_ms = lead_ms
        self.clock = clock
        self._playback: _Playback | None = None

    @property
    def playing(self) -> bool:
        return self._playback is not None

    async def play(self, chunks: AsyncIterator[bytes],
                   on_first_audio: Callable[[float], None] | None = None) -> PlaybackResult:
        """Send the audio to the transport in real time (a small lead ahead), until done or interrupted."""
        playback = _Playback(on_first_audio=on_first_audio)
        self._playback = playback
        result = playback.result
        started = self.clock()
        lead_s = self.lead_ms / 1000
        pending = b""
        try:
            async for chunk in chunks:
                if playback.stop.is_set():
                    break
                pending += chunk
                usable = len(pending) - len(pending) % FRAME_BYTES
                if usable == 0:
                    continue
                block, pending = pending[:usable], pending[usable:]
                if not await self._send_paced(playback, block, started, lead_s):
                    break
            if pending and not playback.stop.is_set():
                await self._send_paced(playback, pending + bytes(FRAME_BYTES - len(pending)), started, lead_s)
            result.completed = not playback.stop.is_set()
            if result.completed:
                # Wait until the far end has played what was sent ahead, so "listening" starts on time.
                remaining = started + result.sent_ms / 1000 - self.clock()
                if remaining > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(playback.stop.wait(), remaining)
                    result.completed = not playback.stop.is_set()
        finally:
            if self._playback is playback:
                self._playback = None
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:  # a reply cut short: its synthesis (an engine stream, a process) ends now
                with contextlib.suppress(Exception):
                    await aclose()
        return result

    async def _send_paced(self, playback: _Playback, block: bytes, started: float, lead_s: float) -> bool:
        message_bytes = FRAME_BYTES * FRAMES_PER_MESSAGE
        for offset in range(0, len(block), message_bytes):
            if playback.stop.is_set():
                return False
            piece = block[offset:offset + message_bytes]
            ahead = started + playback.result.sent_ms / 1000 - self.clock()
            if ahead > lead_s:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(playback.stop.wait(), ahead - lead_s)
                if playback.stop.is_set():
                    return False
            await self.sink.send_audio(piece)
            if playback.result.first_audio_at is None:
                playback.result.first_audio_at = self.clock()
                if playback.on_first_audio is not None:
                    playback.on_first_audio(playback.result.first_audio_at)
            playback.result.sent_ms += len(piece) // FRAME_BYTES * FRAME_MS
        return True

    async def stop(self) -> None:
        """Barge-in or hang-up: stop sending and make the far end drop its buffered audio."""
        playback = self._playback
        if playback is None or playback.stop.is_set():
            return
        playback.stop.set()
        playback.result.stopped_at = self.clock()
        await self.sink.clear()

"""Call recordings: the caller's and the assistant's audio as two time-aligned 8 kHz WAV files per call."""

from __future__ import annotations

import threading
import wave
from collections.abc import AsyncIterator
from pathlib import Path

from telephony.calls.base import CallerAudio, CallInfo, CallTransport, LineEvent

SAMPLE_RATE_HZ = 8000
SAMPLE_WIDTH_BYTES = 2
HEADER_REFRESH_BYTES = SAMPLE_RATE_HZ * SAMPLE_WIDTH_BYTES  # rewrite the WAV length fields once per second of audio


class CallRecorder:
    """Appends audio as it flows; the assistant track is padded with silence so both tracks share one timeline."""

    def __init__(self, directory: Path, call_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.caller_path = directory / f"{call_id}-caller.wav"
        self.assistant_path = directory / f"{call_id}-assistant.wav"
        self._caller = self._open(self.caller_path)
        self._assistant = self._open(self.assistant_path)
        self._caller_bytes = 0
        self._assistant_bytes = 0
        self._lock = threading.Lock()
        self.closed = False

    @staticmethod
    def _open(path: Path) -> wave.Wave_write:
        writer = wave.open(str(path), "wb")
        writer.setnchannels(1)
        writer.setsampwidth(SAMPLE_WIDTH_BYTES)
        writer.setframerate(SAMPLE_RATE_HZ)
        return writer

    def caller(self, pcm16: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            self._caller.writeframesraw(pcm16)
            self._caller_bytes = self._refreshed(self._caller, self._caller_bytes, len(pcm16))

    def assistant(self, pcm16: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            gap = self._caller_bytes - self._assistant_bytes
            if gap > 0:  # the assistant was silent while the caller's audio flowed
                gap -= gap % SAMPLE_WIDTH_BYTES
                self._assistant.writeframesraw(bytes(gap))
                self._assistant_bytes = self._refreshed(self._assistant, self._assistant_bytes, gap)
            self._assistant.writeframesraw(pcm16)
            self._assistant_bytes = self._refreshed(self._assistant, self._assistant_bytes, len(pcm16))

    @staticmethod
    def _refreshed(writer: wave.Wave_write, before: int, added: int) -> int:
        """Keep the file playable if the process dies: the header is brought up to date every second of audio,
        not on every 20 ms frame (two extra writes per frame add up over a hundred calls)."""
        after = before + added
        if after // HEADER_REFRESH_BYTES != before // HEADER_REFRESH_BYTES:
            writer.writeframes(b"")  # the wave module patches the length fields when they are stale
        return after

    @property
    def caller_ms(self) -> int:
        return self._caller_bytes * 1000 // (SAMPLE_RATE_HZ * SAMPLE_WIDTH_BYTES)

    @property
    def assistant_ms(self) -> int:
        return self._assistant_bytes * 1000 // (SAMPLE_RATE_HZ * SAMPLE_WIDTH_BYTES)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._caller.close()
            self._assistant.close()


class RecordingTransport:
    """A `CallTransport` that records both sides as they cross the line: the caller's audio as it arrives (from the
    first frame, whatever the dialogue does with it) and the assistant's audio as it is sent (what was cut by a
    barge-in was never heard, so it is not recorded)."""

    def __init__(self, line: CallTransport, recorder: CallRecorder) -> None:
        self.line = line
        self.recorder = recorder

    @property
    def info(self) -> CallInfo:
        return self.line.info

    async def events(self) -> AsyncIterator[LineEvent]:
        async for event in self.line.events():
            if isinstance(event, CallerAudio):
                self.recorder.caller(event.pcm16)
            yield event

    async def send_audio(self, pcm16: bytes) -> None:
        self.recorder.assistant(pcm16)
        await self.line.send_audio(pcm16)

    async def clear(self) -> None:
        await self.line.clear()

    async def transfer(self, target: str) -> None:
        await self.line.transfer(target)

    async def hang_up(self) -> None:
        await self.line.hang_up()

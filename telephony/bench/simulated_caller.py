"""A simulated phone caller over the Media Streams websocket, in real time: speaks recorded questions,
interrupts the assistant, and measures end of its speech → first reply audio (for tests and the benchmark)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import websockets

from telephony.transports.twilio.protocol import (
    connected_message,
    dtmf_message,
    inbound_media_message,
    start_message,
    stop_message,
)
from voice.audio import ulaw_decode, ulaw_encode
from voice.base import FRAME_BYTES, FRAME_MS

VOICED_RMS = 300.0  # int16 RMS above which a 20 ms frame counts as the caller's voice
LATE_TOLERANCE_MS = 40.0  # reply audio arriving this much after its play-out time would be heard as a gap


def voiced_frames(pcm16: bytes) -> np.ndarray:
    """Per whole 20 ms frame: whether its RMS is above VOICED_RMS."""
    samples = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % FRAME_BYTES], dtype=np.int16).astype(np.float64)
    frames = samples.reshape(-1, FRAME_BYTES // 2)
    return np.sqrt((frames ** 2).mean(axis=1)) > VOICED_RMS


def last_voiced_frame(pcm16: bytes) -> int:
    voiced = np.flatnonzero(voiced_frames(pcm16))
    return int(voiced[-1]) if voiced.size else len(pcm16) // FRAME_BYTES - 1


@dataclass
class TurnMeasurement:
    speech_end_sent_at: float
    first_reply_at: float | None = None
    barge_in_clear_ms: float | None = None  # caller voice onset → the server's clear, when it interrupted

    @property
    def latency_ms(self) -> float | None:
        if self.first_reply_at is None:
            return None
        return round((self.first_reply_at - self.speech_end_sent_at) * 1000, 1)


@dataclass
class CallReport:
    call_sid: str
    caller: str = ""
    turns: list[TurnMeasurement] = field(default_factory=list)
    frames_sent: int = 0
    late_sends: int = 0  # caller frames this client could not send on time (client overload)
    media_received_ms: float = 0.0
    late_reply_chunks: int = 0
    reply_chunks: int = 0
    clears: int = 0
    closed_by_server: bool = False
    received_audio: bytearray = field(default_factory=bytearray)
    started_at: float = 0.0
    ended_at: float = 0.0


class _Receiver:
    def __init__(self, report: CallReport) -> None:
        self.report = report
        self.media_times: list[float] = []
        self.clear_times: list[float] = []
        self.playout_start: float | None = None
        self.playout_ms = 0.0
        self.closed = asyncio.Event()

    async def run(self, socket) -> None:
        try:
            async for raw in socket:
                now = time.monotonic()
                message = json.loads(raw)
                if message.get("event") == "media":
                    pcm = ulaw_decode(base64.b64decode(message["media"]["payload"]))
                    duration = len(pcm) / 2 / 8000 * 1000
                    self._account(now, duration)
                    self.media_times.append(now)
                    self.report.media_received_ms += duration
                    self.report.received_audio.extend(pcm)
                elif message.get("event") == "clear":
                    self.clear_times.append(now)
                    self.report.clears += 1
                    self.playout_start = None
        except websockets.ConnectionClosed:
            pass
        finally:
            self.report.closed_by_server = True
            self.closed.set()

    def _account(self, now: float, duration_ms: float) -> None:
        """A jitter-buffer model: audio plays back-to-back from its first arrival; late chunks are gaps."""
        self.report.reply_chunks += 1
        if self.playout_start is None or now > self.playout_start + (self.playout_ms + 1000) / 1000:
            self.playout_start, self.playout_ms = now, 0.0  # a new utterance
        due = self.playout_start + self.playout_ms / 1000
        if (now - due) * 1000 > LATE_TOLERANCE_MS:
            self.report.late_reply_chunks += 1
        self.playout_ms += duration_ms


async def simulated_call(url: str, questions: list[bytes], *, interrupt_after_ms: int = 800,
                         reply_wait_s: float = 10.0, caller: str = "simulated",
                         press_after: str | None = None, headers: dict[str, str] | None = None) -> CallReport:
    """Call, and for each question: wait until the assistant speaks, let it talk `interrupt_after_ms`, then speak
    the question over it (barge-in) and wait for the reply. Stops early if the server hangs up."""
    call_sid = "CA" + uuid.uuid4().hex
    stream_sid = "MZ" + uuid.uuid4().hex
    report = CallReport(call_sid, caller, started_at=time.monotonic())
    silence_frame = bytes(FRAME_BYTES)
    async with websockets.connect(url, max_size=2 ** 20, additional_headers=headers or {}) as socket:
        receiver = _Receiver(report)
        receiving = asyncio.create_task(receiver.run(socket))
        await socket.send(connected_message())
        await socket.send(start_message(stream_sid, call_sid, {"from": caller}))
        started = time.monotonic()
        sent = 0

        async def send(frame: bytes) -> bool:
            nonlocal sent
            due = started + sent * FRAME_MS / 1000
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # real-time pacing of a phone line, not waiting for a result
            elif delay < -FRAME_MS / 1000:
                report.late_sends += 1
            if receiver.closed.is_set():
                return False
            try:
                await socket.send(inbound_media_message(stream_sid, sent, sent * FRAME_MS, ulaw_encode(frame)))
            except websockets.ConnectionClosed:
                return False
            sent += 1
            report.frames_sent += 1
            return True

        async def silence_until(condition, limit_s: float) -> bool:
            deadline = time.monotonic() + limit_s
            while not condition():
                if time.monotonic() > deadline or not await send(silence_frame):
                    return False
            return True

        for question in questions:
            # The assistant speaks (greeting or previous reply): let it, then interrupt.
            seen = len(receiver.media_times)
            if not await silence_until(lambda: len(receiver.media_times) > seen, reply_wait_s):
                break
            spoken_from = time.monotonic()
            if not await silence_until(lambda: time.monotonic() - spoken_from >= interrupt_after_ms / 1000, 5):
                break
            clears_before = len(receiver.clear_times)
            voice_onset = time.monotonic()
            last_voiced = last_voiced_frame(question)
            frames = [question[i:i + FRAME_BYTES] for i in range(0, len(question) - FRAME_BYTES + 1, FRAME_BYTES)]
            turn: TurnMeasurement | None = None
            for index, frame in enumerate(frames):
                if not await send(frame):
                    break
                if index == last_voiced:
                    turn = TurnMeasurement(time.monotonic())
            if turn is None:
                break
            if len(receiver.clear_times) > clears_before:
                turn.barge_in_clear_ms = round((receiver.clear_times[clears_before] - voice_onset) * 1000, 1)
            report.turns.append(turn)
            end = turn.speech_end_sent_at
            await silence_until(lambda: any(t > end for t in receiver.media_times), reply_wait_s)
            turn.first_reply_at = next((t for t in receiver.media_times if t > end), None)
            if turn.first_reply_at is None:
                break
        if press_after and not receiver.closed.is_set():
            with contextlib.suppress(websockets.ConnectionClosed):
                await socket.send(dtmf_message(stream_sid, press_after))
        if not receiver.closed.is_set():
            with contextlib.suppress(websockets.ConnectionClosed):
                await socket.send(stop_message(stream_sid, call_sid))
                await socket.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(receiving, 5)
    report.ended_at = time.monotonic()
    return report

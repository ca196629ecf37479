"""Client of a FunASR runtime server speaking the 2pass websocket protocol (ASR on other, e.g. GPU, machines)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from voice.audio import float_resampler, float_to_pcm16, pcm16_to_float
from voice.base import (
    SAMPLE_WIDTH_BYTES, TELEPHONY_RATE_HZ, AsrCapabilities, AsrUnavailable, AudioFormatError, Transcript,
)
from voice.funasr.protocol import (
    CHUNK_UNIT_MS, CLIENT_MODES, DEFAULT_CHUNK_SIZE, END_OF_SPEECH_JSON, SUPPORTED_AUDIO_RATES_HZ,
    WEBSOCKET_SUBPROTOCOL, AsrProtocolError, RecognitionResult, ServerError, StreamConfig, checked_chunk_size,
    parse_server_message,
)

logger = logging.getLogger(__name__)


class FunAsrServerEngine:
    """A client of a FunASR runtime server speaking the 2pass websocket protocol (GPU servers, many workers)."""

    name = "funasr-server"

    def __init__(self, url: str, *, mode: str = "2pass", chunk_size: Sequence[int] = DEFAULT_CHUNK_SIZE,
                 chunk_interval: int = 10, audio_fs: int = TELEPHONY_RATE_HZ, connect_timeout_s: float = 3.0,
                 final_timeout_s: float = 5.0, hotwords: Sequence[str] = ()) -> None:
        if mode not in CLIENT_MODES:
            raise ValueError(f"mode must be one of {', '.join(CLIENT_MODES)}, got {mode!r}")
        if audio_fs not in SUPPORTED_AUDIO_RATES_HZ:
            raise ValueError(f"audio_fs must be 8000 or 16000, got {audio_fs}")
        self.url = url
        self.mode = mode
        self.chunk_size = checked_chunk_size(chunk_size)
        self.chunk_interval = chunk_interval
        self.audio_fs = audio_fs  # 8000: the C++ server resamples; 16000: this client upsamples (python server)
        self.connect_timeout_s = connect_timeout_s
        self.final_timeout_s = final_timeout_s
        self.hotwords = tuple(hotwords)
        # FunASR clients send chunk_size[1] × 60 ms / chunk_interval per binary frame (60 ms by default).
        stride_ms = self.chunk_size[1] * CHUNK_UNIT_MS
        self.piece_bytes = SAMPLE_WIDTH_BYTES * (stride_ms * audio_fs // 1000 // max(chunk_interval, 1))
        self._utterances = 0
        self._closing: set[asyncio.Task] = set()  # connections of finished utterances, closing in the background

    async def warm_up(self) -> None:
        """Connect and recognise 600 ms of silence, so a dead server shows up before the first call."""
        stream = self.open_stream()
        try:
            await stream.push(bytes(2 * TELEPHONY_RATE_HZ * 600 // 1000))
            await stream.finish()
        finally:
            await stream.close()

    def open_stream(self, hotwords: Sequence[str] = ()) -> FunAsrServerStream:
        return FunAsrServerStream(self, (*self.hotwords, *hotwords))

    async def close(self) -> None:
        """Wait for the connections of finished utterances to close (each stream owns its connection)."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def close_later(self, closing: Any) -> None:
        """Run a connection's closing handshake without anyone waiting for it."""
        task = asyncio.ensure_future(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def next_wav_name(self) -> str:
        self._utterances += 1
        return f"hotline-{self._utterances}"


@dataclass
class _ServerUtterance:
    """What one connection has received; its receiver task writes only here."""

    connection: Any
    committed_text: str = ""  # offline results: the corrected text of finished segments
    online_text: str = ""  # online results since the last offline one
    reported_text: str = ""
    end_sent: bool = False
    final_received: asyncio.Event = field(default_factory=asyncio.Event)
    error: AsrUnavailable | None = None
    receiver: asyncio.Task | None = None


class FunAsrServerStream:
    """One websocket per utterance, opened by the first push and closed once the final result arrived.

    A fresh connection per utterance behaves the same on every FunASR server (they differ in what state they keep
    after {"is_speaking": false}), and costs about a millisecond on a LAN.
    """

    capabilities = AsrCapabilities()  # the protocol has no speculative final, and the server expedites by itself

    def __init__(self, engine: FunAsrServerEngine, hotwords: tuple[str, ...]) -> None:
        self.engine = engine
        self.hotwords = hotwords
        self._utterance: _ServerUtterance | None = None
        self._reset_audio()

    def _reset_audio(self) -> None:
        self._unsent = bytearray()
        # float32, not int16: soxr's chunked int16 output differs by up to 2 LSB from run to run (measured).
        self._resampler = float_resampler(TELEPHONY_RATE_HZ, self.engine.audio_fs, "HQ")

    def _resample(self, pcm16: bytes, *, last: bool = False) -> bytes:
        if self._resampler is None:
            return pcm16
        return float_to_pcm16(self._resampler.resample_chunk(pcm16_to_float(pcm16), last=last))

    async def push(self, pcm16: bytes) -> Transcript | None:
        if len(pcm16) % SAMPLE_WIDTH_BYTES:
            raise AudioFormatError(f"16-bit PCM must have an even byte count, got {len(pcm16)} bytes")
        utterance = self._utterance or await self._connect()
        if utterance.error is not None:
            raise utterance.error
        self._unsent += self._resample(pcm16)
        piece = self.engine.piece_bytes
        while len(self._unsent) >= piece:
            await self._send(utterance, bytes(self._unsent[:piece]))
            del self._unsent[:piece]
        text = utterance.committed_text + utterance.online_text
        if not text or text == utterance.reported_text:
            return None
        utterance.reported_text = text
        return Transcript(text, is_final=False)

    async def finish(self) -> Transcript:
        utterance = self._utterance
        if utterance is None:
            self._reset_audio()
            return Transcript("", is_final=True)
        try:
            self._unsent += self._resample(b"", last=True)
            if self._unsent:
                await self._send(utterance, bytes(self._unsent))
            utterance.end_sent = True
            await self._send(utterance, END_OF_SPEECH_JSON)
            try:
                await asyncio.wait_for(utterance.final_received.wait(), self.engine.final_timeout_s)
            except TimeoutError:
                raise AsrUnavailable(f"no final result from the FunASR server at {self.engine.url} within "
                                     f"{self.engine.final_timeout_s} s") from None
            if utterance.error is not None:
                raise utterance.error
            text = utterance.online_text if self.engine.mode == "online" else utterance.committed_text
            return Transcript(text, is_final=True)
        finally:
            # The final is in hand: the closing handshake (a round trip to a busy server) is not the caller's wait.
            utterance, self._utterance = self._utterance, None
            self._reset_audio()
            if utterance is not None:
                self.engine.close_later(self._shut(utterance))

    async def close(self) -> None:
        utterance, self._utterance = self._utterance, None
        self._reset_audio()
        if utterance is not None:
            await self._shut(utterance)

    @staticmethod
    async def _shut(utterance: _ServerUtterance) -> None:
        if utterance.receiver is not None:
            utterance.receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await utterance.receiver
        await utterance.connection.close()

    async def _connect(self) -> _ServerUtterance:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        try:
            connection = await connect(
                self.engine.url, subprotocols=[WEBSOCKET_SUBPROTOCOL], open_timeout=self.engine.connect_timeout_s,
                ping_interval=None, compression=None, proxy=None)
        except (OSError, TimeoutError, WebSocketException) as error:
            raise AsrUnavailable(f"cannot connect to the FunASR server at {self.engine.url}: "
                                 f"{type(error).__name__}: {error}") from error
        utterance = self._utterance = _ServerUtterance(connection)
        utterance.receiver = asyncio.create_task(self._receive(utterance))
        config = StreamConfig(mode=self.engine.mode, chunk_size=self.engine.chunk_size,
                              chunk_interval=self.engine.chunk_interval, wav_name=self.engine.next_wav_name(),
                              audio_fs=self.engine.audio_fs, hotwords=self.hotwords)
        await self._send(utterance, config.to_json())
        return utterance

    async def _send(self, utterance: _ServerUtterance, message: str | bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await utterance.connection.send(message)
        except ConnectionClosed as error:
            raise utterance.error or AsrUnavailable(
                f"the FunASR server at {self.engine.url} closed the connection: {error}") from error

    async def _receive(self, utterance: _ServerUtterance) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in utterance.connection:
                if isinstance(message, bytes):
                    continue
                try:
                    result = parse_server_message(message)
                except AsrProtocolError as error:
                    logger.warning("ignoring a FunASR server message: %s", error)
                    continue
                if isinstance(result, ServerError):
                    utterance.error = AsrUnavailable(f"the FunASR server at {self.engine.url} reported: "
                                                     f"{result.message}")
                    break
                self._apply(utterance, result)
        except ConnectionClosed:
            pass
        if not utterance.final_received.is_set():
            if utterance.error is None and not (utterance.end_sent and self.engine.mode == "online"):
                utterance.error = AsrUnavailable(f"the FunASR server at {self.engine.url} closed the connection "
                                                 "before the final result")
            utterance.final_received.set()

    def _apply(self, utterance: _ServerUtterance, result: RecognitionResult) -> None:
        offline = result.is_offline
        if offline:
            utterance.committed_text += result.text
            utterance.online_text = ""
        else:
            utterance.online_text += result.text
        # The python server's is_final means "still speaking", so the end is recognised by mode where possible.
        if utterance.end_sent and (offline or (self.engine.mode == "online" and result.is_final)):
            utterance.final_received.set()

"""A local fake of the edge-tts read-aloud websocket service on 127.0.0.1 that speaks its wire protocol with espeak-ng audio.

Point edge-tts at it with `EdgeTtsEngine(endpoint_url=server.endpoint_url)`. `behaviour` picks what it does:
"normal", "slow_first_audio" (waits `first_audio_delay_s` before the first audio frame), "error_before_audio"
(closes the websocket with code 1011 after turn.start), "error_mid_stream" (half the audio, then closes), "hang"
(accepts and never answers). It runs in its own thread and event loop, so sync and async tests can both use it:
`with FakeEdgeTtsServer() as server:` or `async with FakeEdgeTtsServer() as server:`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from xml.sax.saxutils import unescape

import av
import numpy as np
import soxr
from aiohttp import WSMsgType, web

BEHAVIOURS = ("normal", "slow_first_audio", "error_before_audio", "error_mid_stream", "hang")
SERVICE_PATH = "/consumer/speech/synthesize/readaloud/edge/v1"
MP3_RATE_HZ = 24000  # the service's fixed "audio-24khz-48kbitrate-mono-mp3"
MP3_BITRATE_BPS = 48000
TICKS_PER_SECOND = 10_000_000
_VOICE = re.compile(r"<voice name='([^']*)'>")
_PROSODY = re.compile(r"<prosody pitch='([^']*)' rate='([^']*)' volume='([^']*)'>(.*)</prosody>", re.DOTALL)
_SERVICE_VOICE = re.compile(r"Microsoft Server Speech Text to Speech Voice \((\w+-\w+), (.+)\)")


@dataclass(frozen=True)
class EdgeTtsRequest:
    """One synthesis request as the fake service saw it."""

    voice: str  # short form, e.g. zh-CN-XiaoxiaoNeural
    service_voice: str  # as sent: Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)
    rate: str
    pitch: str
    volume: str
    text: str
    output_format: str
    query: dict[str, str] = field(default_factory=dict)


def _espeak_wav_samples(text: str, speed_wpm: int) -> tuple[np.ndarray, int]:
    wav = subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-s", str(speed_wpm), "--stdout"],
                         input=text.encode("utf-8"), capture_output=True, check=True).stdout
    data_at = wav.index(b"data") + 8
    sample_rate = int.from_bytes(wav[24:28], "little")
    usable = len(wav) - data_at - (len(wav) - data_at) % 2
    return np.frombuffer(wav[data_at:data_at + usable], dtype="<i2"), sample_rate


@functools.lru_cache(maxsize=64)
def render_mp3(text: str, rate: str = "+0%") -> bytes:
    """The MP3 the fake serves for a text: espeak-ng speech as 24 kHz mono 48 kbps CBR MP3, like the real service."""
    speed_wpm = max(80, round(175 * (1 + int(rate.rstrip("%")) / 100)))
    samples, sample_rate = _espeak_wav_samples(text, speed_wpm)
    samples = soxr.resample(samples, sample_rate, MP3_RATE_HZ)
    encoder = av.CodecContext.create("libmp3lame", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = MP3_RATE_HZ, "mono", "s16p", MP3_BITRATE_BPS
    encoder.open()
    mp3 = bytearray()
    for start in range(0, len(samples), encoder.frame_size):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, start:start + encoder.frame_size]),
                                           format="s16p", layout="mono")
        frame.sample_rate = MP3_RATE_HZ
        mp3 += b"".join(bytes(packet) for packet in encoder.encode(frame))
    mp3 += b"".join(bytes(packet) for packet in encoder.encode(None))
    return bytes(mp3)


def _text_message(request_id: str, path: str, body: dict) -> str:
    return (f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n"
            + json.dumps(body, ensure_ascii=False))


def _audio_message(request_id: str, mp3: bytes) -> bytes:
    """Binary frame: 2-byte big-endian header length, the header ending in CRLF, then the audio (none = end of audio).

    edge-tts slices `frame[:length]` (length prefix included) for the headers, so the header's last 2 bytes must be CRLF.
    """
    content_type = "Content-Type:audio/mpeg\r\n" if mp3 else ""  # the end-of-audio frame has no Content-Type
    header = f"X-RequestId:{request_id}\r\n{content_type}X-StreamId:1\r\nPath:audio\r\n".encode()
    return len(header).to_bytes(2, "big") + header + mp3


def _split_message(message: str) -> tuple[dict[str, str], str]:
    head, _, body = message.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


class FakeEdgeTtsServer:
    def __init__(self, behaviour: str = "normal", *, first_audio_delay_s: float = 1.0, frame_interval_s: float = 0.0,
                 audio_chunk_bytes: int = 2880) -> None:
        self.behaviour = behaviour
        self.first_audio_delay_s, self.frame_interval_s, self.audio_chunk_bytes = first_audio_delay_s, frame_interval_s, audio_chunk_bytes
        self.requests: list[EdgeTtsRequest] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._websockets: set[web.WebSocketResponse] = set()

    @property
    def behaviour(self) -> str:
        return self._behaviour

    @behaviour.setter
    def behaviour(self, value: str) -> None:
        if value not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {value!r}; choose one of {', '.join(BEHAVIOURS)}")
        self._behaviour = value

    @property
    def endpoint_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{SERVICE_PATH}?TrustedClientToken=FAKE0000000000000000000000000000"

    # --- lifecycle ---

    def start(self) -> FakeEdgeTtsServer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-edge-tts", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_site(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop_site(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FakeEdgeTtsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeEdgeTtsServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    async def _start_site(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get(SERVICE_PATH, self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()

    async def _stop_site(self) -> None:
        self._stopping.set()
        for websocket in list(self._websockets):
            await websocket.close()
        await self._runner.cleanup()

    # --- protocol ---

    async def _pause(self, seconds: float) -> bool:
        """Wait unless the server is stopping; True when it is stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _read_request(self, websocket: web.WebSocketResponse, query: dict[str, str]) -> tuple[str, EdgeTtsRequest] | None:
        output_format = ""
        async for message in websocket:
            if message.type != WSMsgType.TEXT:
                return None
            headers, body = _split_message(message.data)
            if headers.get("Path") == "speech.config":
                output_format = json.loads(body)["context"]["synthesis"]["audio"]["outputFormat"]
            elif headers.get("Path") == "ssml":
                voice, prosody = _VOICE.search(body), _PROSODY.search(body)
                short = _SERVICE_VOICE.fullmatch(voice[1])
                request = EdgeTtsRequest(
                    voice=f"{short[1]}-{short[2]}" if short else voice[1], service_voice=voice[1], rate=prosody[2],
                    pitch=prosody[1], volume=prosody[3], text=unescape(prosody[4]), output_format=output_format, query=query)
                return headers["X-RequestId"], request
        return None

    async def _handle(self, http_request: web.Request) -> web.WebSocketResponse:
        websocket = web.WebSocketResponse()
        await websocket.prepare(http_request)
        self._websockets.add(websocket)
        try:
            received = await self._read_request(websocket, dict(http_request.query))
            if received is not None:
                request_id, request = received
                self.requests.append(request)
                await self._respond(websocket, request_id, request, self.behaviour)
        except (ConnectionError, RuntimeError):
            pass  # the client went away (it gave up on a slow or hanging turn)
        finally:
            self._websockets.discard(websocket)
        return websocket

    async def _respond(self, websocket: web.WebSocketResponse, request_id: str, request: EdgeTtsRequest, behaviour: str) -> None:
        if behaviour == "hang":
            async for _ in websocket:  # until the client gives up or the server stops
                pass
            return
        context = {"context": {"serviceTag": "fake-edge-tts"}}
        await websocket.send_str(_text_message(request_id, "turn.start", {**context, "webrtc": {"connectionString": ""}}))
        if behaviour == "error_before_audio":
            await websocket.close(code=1011, message=b"internal server error")
            return
        await websocket.send_str(_text_message(request_id, "response", {**context, "audio": {"type": "inline", "streamId": "1"}}))
        mp3 = await asyncio.to_thread(render_mp3, request.text, request.rate)
        if behaviour == "slow_first_audio" and await self._pause(self.first_audio_delay_s):
            return
        chunks = [mp3[start:start + self.audio_chunk_bytes] for start in range(0, len(mp3), self.audio_chunk_bytes)]
        if behaviour == "error_mid_stream":
            chunks = chunks[:max(1, len(chunks) // 2)]
        for index, chunk in enumerate(chunks):
            await websocket.send_bytes(_audio_message(request_id, chunk))
            if index == 0:
                duration_ticks = len(mp3) * 8 * TICKS_PER_SECOND // MP3_BITRATE_BPS
                boundary = {"Offset": 1_000_000, "Duration": duration_ticks,
                            "text": {"Text": request.text, "Length": len(request.text), "BoundaryType": "SentenceBoundary"}}
                await websocket.send_str(_text_message(request_id, "audio.metadata",
                                                    {"Metadata": [{"Type": "SentenceBoundary", "Data": boundary}]}))
            if self.frame_interval_s and await self._pause(self.frame_interval_s):
                return
        if behaviour == "error_mid_stream":
            await websocket.close(code=1011, message=b"internal server error")
            return
        await websocket.send_bytes(_audio_message(request_id, b""))
        await websocket.send_str(_text_message(request_id, "turn.end", context))
        async for _ in websocket:  # edge-tts closes its side after turn.end
            pass

"""Microsoft Edge read-aloud voices over edge-tts, each engine with its own endpoint routed without a global."""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import AsyncIterator

import aiohttp
import edge_tts
import edge_tts.communicate
from edge_tts.data_classes import TTSConfig
from edge_tts.exceptions import EdgeTTSException

from voice.audio import Mp3Decoder
from voice.base import TELEPHONY_RATE_HZ, AudioFormatError, TtsUnavailable

# edge-tts 7.x reads the module global `edge_tts.communicate.WSS_URL` inside an f-string when it connects. To give
# each engine its own endpoint without mutating that global per call, the global is wrapped once in a str whose
# formatting returns the endpoint stored in a ContextVar; each synthesis runs its Communicate in a task with its own
# context copy, so concurrent engines never see each other's endpoint and code without an override gets the real URL.
_ENDPOINT_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("edge_tts_endpoint_url", default=None)


class _ContextRoutedUrl(str):
    def __format__(self, format_spec: str) -> str:
        override = _ENDPOINT_OVERRIDE.get()
        return format(str(self) if override is None else override, format_spec)


def _install_endpoint_routing() -> None:
    if not isinstance(edge_tts.communicate.WSS_URL, _ContextRoutedUrl):
        edge_tts.communicate.WSS_URL = _ContextRoutedUrl(edge_tts.communicate.WSS_URL)


class EdgeTtsEngine:
    """Microsoft Edge read-aloud voices over edge-tts: 24 kHz MP3 streamed, decoded and resampled to 8 kHz as it arrives."""

    name = "edge"

    def __init__(self, voice: str = "zh-CN-XiaoxiaoNeural", rate: str = "+0%", *, endpoint_url: str | None = None,
                 connect_timeout_s: float = 3.0, receive_timeout_s: float = 5.0, proxy: str | None = None) -> None:
        TTSConfig(voice, rate, "+0%", "+0Hz", "SentenceBoundary")  # raises ValueError on a malformed voice or rate
        if endpoint_url is not None:
            if "?" not in endpoint_url:  # edge-tts appends "&ConnectionId=..." to the URL
                raise ValueError(f"edge-tts endpoint URL must contain a query string: {endpoint_url!r}")
            _install_endpoint_routing()
        self.voice, self.rate, self.endpoint_url, self.proxy = voice, rate, endpoint_url, proxy
        self.connect_timeout_s, self.receive_timeout_s = connect_timeout_s, receive_timeout_s

    def _where(self) -> str:
        return self.endpoint_url.split("?", 1)[0] if self.endpoint_url else "the Microsoft edge-tts service"

    async def _produce(self, text: str, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        communicate = edge_tts.Communicate(
            text, self.voice, rate=self.rate, proxy=self.proxy,
            connect_timeout=max(1, math.ceil(self.connect_timeout_s)),
            receive_timeout=max(1, math.ceil(self.receive_timeout_s)))
        decoder, received_bytes = Mp3Decoder(TELEPHONY_RATE_HZ), 0
        try:
            async for message in communicate.stream():
                if message["type"] == "audio":
                    received_bytes += len(message["data"])
                    if pcm := decoder.feed(message["data"]):
                        queue.put_nowait(pcm)
            if tail := decoder.flush():
                queue.put_nowait(tail)
            # edge-tts 7.x ends quietly when the socket closes after some audio but before turn.end; it only moves a
            # piece's bytes into cumulative_audio_bytes on turn.end, so a shortfall means the audio was cut off.
            if communicate.state.get("cumulative_audio_bytes", received_bytes) != received_bytes:
                raise TtsUnavailable(f"edge-tts stream from {self._where()} ended before turn.end (audio cut off)")
            queue.put_nowait(None)
        except TtsUnavailable as error:
            queue.put_nowait(error)
        except (aiohttp.ClientError, EdgeTTSException, OSError, AudioFormatError) as error:  # OSError covers TimeoutError
            queue.put_nowait(TtsUnavailable(f"edge-tts failed at {self._where()}: {type(error).__name__}: {error}"))
        except Exception as error:  # noqa: BLE001 - an unexpected bug still reaches the consumer instead of hanging it
            queue.put_nowait(error)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        if not text.strip():
            return
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        context = contextvars.copy_context()
        context.run(_ENDPOINT_OVERRIDE.set, self.endpoint_url)
        producer = asyncio.get_running_loop().create_task(self._produce(text, queue), context=context)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.receive_timeout_s):  # edge-tts alone waits 60 s on a silent server
                        item = await queue.get()
                except TimeoutError:
                    raise TtsUnavailable(f"edge-tts sent no audio for {self.receive_timeout_s:g} s from {self._where()}") from None
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()
            await asyncio.wait({producer})

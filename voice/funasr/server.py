"""A FunASR 2pass websocket server for an in-process engine (`hotline asr-server`): a thin adapter over protocol.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from voice.base import AsrUnavailable, AudioBacklog, AudioFormatError, VoiceError
from voice.funasr.engine import FunAsrEngine, FunAsrEnginePool, FunAsrStream
from voice.funasr.protocol import (
    DEFAULT_PORT, WEBSOCKET_SUBPROTOCOL, AsrProtocolError, EndOfSpeech, RecognitionResult, ServerError, SessionState,
    StreamConfig, is_end_of_speech, next_state, offline_result_mode, online_result_mode, parse_client_message,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # 8 s of 16 kHz PCM; clients send 60 ms pieces
MAX_MERGED_FRAMES = 100  # audio frames that piled up are pushed together: up to 6 s of 60 ms pieces
INBOX_FRAMES = 2000  # frames read ahead of the model per connection (2 minutes of 60 ms pieces), then backpressure
WEBSOCKET_MESSAGE_TOO_BIG = 1009  # close codes of RFC 6455 §7.4.1
WEBSOCKET_INTERNAL_ERROR = 1011


class _Session:
    """One websocket connection: the protocol state, the open engine stream and the text sent so far."""

    def __init__(self, engine: FunAsrEngine | FunAsrEnginePool) -> None:
        self.engine = engine
        self.state = SessionState.AWAITING_CONFIG
        self.config = StreamConfig()
        self.stream: FunAsrStream | None = None
        self.sent_text = ""
        self.ends_ahead = 0  # ends of speech read off the socket but not yet handled

    def end_of_speech_read(self) -> None:
        """The reader saw an end of speech: this utterance's decodes still to come are urgent."""
        self.ends_ahead += 1
        if self.stream is not None:
            self.stream.expedite()

    async def receive(self, message: str | bytes) -> list[str]:
        """Handle one frame; returns the JSON replies to send."""
        if isinstance(message, bytes):
            self.state = next_state(self.state, "audio")
            assert self.stream is not None
            if self.ends_ahead:
                self.stream.expedite()  # the reader saw this utterance's end before the stream was opened
            try:
                transcript = await self.stream.push(message)
            except AudioFormatError as error:
                raise AsrProtocolError(str(error)) from None
            if transcript is None or self.config.mode == "offline":
                return []
            return [self._online(transcript.text, is_final=False)]
        event = parse_client_message(message)
        if isinstance(event, EndOfSpeech):
            self.ends_ahead = max(0, self.ends_ahead - 1)
            return await self._end()
        self.state = next_state(self.state, "config")
        await self.close()
        self.config = event
        self.stream = self.engine.open_stream(
            event.hotwords, sample_rate_hz=event.audio_fs, chunk_size=event.chunk_size,
            encoder_chunk_look_back=event.encoder_chunk_look_back,
            decoder_chunk_look_back=event.decoder_chunk_look_back)
        return [] if event.is_speaking else await self._end()

    async def _end(self) -> list[str]:
        self.state = next_state(self.state, "end")
        assert self.stream is not None
        final = await self.stream.finish()
        mode = self.config.mode
        if mode == "online":
            replies = [self._online(final.text, is_final=True)]
        else:
            replies = [RecognitionResult(offline_result_mode(mode), final.text, self.config.wav_name, True).to_json()]
        self.sent_text = ""
        return replies

    def _online(self, cumulative: str, *, is_final: bool) -> str:
        """FunASR's online results carry only the text decoded since the previous one."""
        new_text = cumulative[len(self.sent_text):] if cumulative.startswith(self.sent_text) else cumulative
        self.sent_text = cumulative
        return RecognitionResult(online_result_mode(self.config.mode), new_text, self.config.wav_name,
                                 is_final).to_json()

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
            self.stream = None
        self.sent_text = ""


class FunAsrWebsocketServer:
    """Serves the 2pass protocol from an in-process `FunAsrEngine` (online partials, final text at the end).

    There is no server-side VAD: each utterance ends when the client sends {"is_speaking": false}, and the
    "2pass-offline" text is the streaming model's final text (punctuated when the engine has a punctuation model).
    """

    def __init__(self, engine: FunAsrEngine | FunAsrEnginePool, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and accept connections; port 0 picks a free port, readable from `port` afterwards."""
        from websockets.asyncio.server import serve

        # The library closes frames over twice our limit itself (close code 1009); ours get an error JSON first.
        try:
            self._server = await serve(self._handle, self.host, self.port, subprotocols=[WEBSOCKET_SUBPROTOCOL],
                                       max_size=2 * self.max_message_bytes, ping_interval=None, compression=None)
        except OSError as error:
            raise AsrUnavailable(f"cannot listen on {self.url}: {error.strerror or error}") from error
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("FunASR 2pass server listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def serve(self) -> None:
        """Start and serve until cancelled."""
        await self.start()
        try:
            await self._server.serve_forever()
        finally:
            await self.stop()

    async def _handle(self, websocket: Any) -> None:
        """A reader task takes frames off the socket as they come while this loop handles them in order, so an
        end of speech is seen (and its stream expedited) even while earlier audio waits for the busy model. Audio
        that piled up meanwhile is pushed as one piece: the model decodes its strides in one call."""
        session = _Session(self.engine)
        peer = websocket.remote_address
        inbox: asyncio.Queue[str | bytes | _Oversized | None] = asyncio.Queue(INBOX_FRAMES)
        reader = asyncio.create_task(self._read(websocket, session, inbox, self.max_message_bytes))
        backlog = AudioBacklog(inbox, lambda item: item if isinstance(item, bytes) else None, MAX_MERGED_FRAMES)
        try:
            while True:
                message, audio = await backlog.next()
                if message is None:
                    break
                if isinstance(message, _Oversized):
                    reason = f"message of {message.size} bytes exceeds the limit of {self.max_message_bytes}"
                    logger.warning("ASR client %s: %s", peer, reason)
                    await websocket.send(ServerError(reason).to_json())
                    await websocket.close(code=WEBSOCKET_MESSAGE_TOO_BIG, reason="message too big")
                    return
                if audio is not None:
                    message = audio
                try:
                    replies = await session.receive(message)
                except AsrProtocolError as error:
                    logger.warning("ASR client %s: %s", peer, error)
                    replies = [ServerError(str(error)).to_json()]
                except VoiceError as error:  # the engine failed: report it and drop this connection
                    logger.error("ASR client %s: %s", peer, error)
                    await websocket.send(ServerError(str(error)).to_json())
                    await websocket.close(code=WEBSOCKET_INTERNAL_ERROR, reason="ASR engine failure")
                    return
                for reply in replies:
                    await websocket.send(reply)
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await session.close()

    @staticmethod
    async def _read(websocket: Any, session: _Session, inbox: asyncio.Queue, max_message_bytes: int) -> None:
        try:
            async for message in websocket:
                if len(message) > max_message_bytes:
                    await inbox.put(_Oversized(len(message)))
                    return
                if isinstance(message, str) and is_end_of_speech(message):
                    session.end_of_speech_read()
                await inbox.put(message)
        except ConnectionClosed:
            pass
        finally:
            # Never blocks for long: the handler is draining the inbox, or has returned and cancelled this task.
            await inbox.put(None)


@dataclass(frozen=True)
class _Oversized:
    size: int



async def serve_engine(engine: FunAsrEngine | FunAsrEnginePool, host: str, port: int) -> None:
    """Warm the engine up, then serve until SIGINT or SIGTERM."""
    await engine.warm_up()
    server = FunAsrWebsocketServer(engine, host, port)
    task = asyncio.create_task(server.serve())
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logger.info("FunASR 2pass server stopped")
    finally:
        await engine.close()


def run_asr_server(model_dir: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                   punctuation_model: str | Path | None = None, device: str = "cpu",
                   chunk_size: Sequence[int] = (0, 10, 5), engines: int = 1) -> None:
    """Blocking entry point for `hotline asr-server`: load the model (`engines` copies, each decoding on its own
    thread), then serve ws://host:port until stopped."""
    options = {"device": device, "chunk_size": chunk_size, "punctuation_model": punctuation_model}
    engine = FunAsrEngine(model_dir, **options) if engines == 1 else FunAsrEnginePool.of(engines, model_dir, **options)
    try:
        import uvloop  # installed with uvicorn[standard]: less event-loop overhead per audio frame
    except ImportError:
        asyncio.run(serve_engine(engine, host, port))
    else:
        uvloop.run(serve_engine(engine, host, port))

"""The FunASR runtime 2pass websocket protocol: its messages as pure code, and a server for an in-process engine."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from voice.base import AsrUnavailable, AudioBacklog, AudioFormatError, VoiceError

if TYPE_CHECKING:
    from voice.asr import FunAsrEngine, FunAsrEnginePool, FunAsrStream

logger = logging.getLogger(__name__)

# Wire format of FunASR's runtime/docs/websocket_protocol.md (python server funasr_wss_server.py, C++ 2pass server).
WEBSOCKET_SUBPROTOCOL = "binary"
DEFAULT_PORT = 10095
END_OF_SPEECH_JSON = '{"is_speaking": false}'
CLIENT_MODES = ("2pass", "online", "offline")
DEFAULT_HOTWORD_WEIGHT = 20
SUPPORTED_AUDIO_RATES_HZ = (8000, 16000)
PROTOCOL_DEFAULT_AUDIO_RATE_HZ = 16000  # what FunASR servers assume when audio_fs is absent
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # 8 s of 16 kHz PCM; clients send 60 ms pieces
MAX_MERGED_FRAMES = 100  # audio frames that piled up are pushed together: up to 6 s of 60 ms pieces
INBOX_FRAMES = 2000  # frames read ahead of the model per connection (2 minutes of 60 ms pieces), then backpressure


class AsrProtocolError(VoiceError):
    """A message that breaks the 2pass protocol (bad JSON, unknown mode, audio before configuration)."""


@dataclass(frozen=True)
class StreamConfig:
    """The client's first JSON text frame; None fields are left to the server's defaults."""

    mode: str = "2pass"
    chunk_size: tuple[int, int, int] = (5, 10, 5)
    chunk_interval: int = 10
    wav_name: str = "hotline"
    audio_fs: int = PROTOCOL_DEFAULT_AUDIO_RATE_HZ
    hotwords: tuple[str, ...] = ()
    encoder_chunk_look_back: int | None = None
    decoder_chunk_look_back: int | None = None
    is_speaking: bool = True

    def to_json(self) -> str:
        message: dict[str, Any] = {
            "mode": self.mode, "chunk_size": list(self.chunk_size), "chunk_interval": self.chunk_interval,
            "wav_name": self.wav_name, "wav_format": "pcm", "audio_fs": self.audio_fs, "is_speaking": self.is_speaking,
            "hotwords": json.dumps({word: DEFAULT_HOTWORD_WEIGHT for word in self.hotwords}, ensure_ascii=False),
            "itn": True}
        for key in ("encoder_chunk_look_back", "decoder_chunk_look_back"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return json.dumps(message, ensure_ascii=False)


@dataclass(frozen=True)
class EndOfSpeech:
    """`{"is_speaking": false}` (the C++ server also accepts `{"is_finished": true}`)."""


@dataclass(frozen=True)
class RecognitionResult:
    """A server result: "2pass-online" carries new text only, "2pass-offline" the whole corrected utterance."""

    mode: str
    text: str
    wav_name: str
    is_final: bool  # servers disagree on its meaning (the python one sends is_speaking); rely on `mode`

    def to_json(self) -> str:
        return json.dumps({"mode": self.mode, "text": self.text, "wav_name": self.wav_name,
                           "is_final": self.is_final}, ensure_ascii=False)


@dataclass(frozen=True)
class ServerError:
    """This server's error report, `{"mode": "error", "message": ...}` (not part of FunASR's protocol)."""

    message: str

    def to_json(self) -> str:
        return json.dumps({"mode": "error", "message": self.message}, ensure_ascii=False)


def _load_object(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except json.JSONDecodeError as error:
        raise AsrProtocolError(f"text frame is not JSON: {error.msg} at character {error.pos}") from None
    if not isinstance(message, dict):
        raise AsrProtocolError(f"text frame must be a JSON object, got {type(message).__name__}")
    return message


def parse_hotwords(value: Any) -> tuple[str, ...]:
    """Hotwords as FunASR clients send them: a JSON object string {"word": weight} or words split by spaces."""
    if value in (None, ""):
        return ()
    if isinstance(value, str) and value.lstrip().startswith("{"):
        value = _load_object(value)
    if isinstance(value, dict):
        return tuple(str(word) for word in value)
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    raise AsrProtocolError(f"hotwords must be a string, got {type(value).__name__}")


def _parse_chunk_size(value: Any) -> tuple[int, int, int]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        sizes = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 3 or sizes[1] <= 0 or min(sizes) < 0:
        raise AsrProtocolError(f"chunk_size must be three non-negative integers like [5, 10, 5], got {value!r}")
    return sizes  # type: ignore[return-value]


def parse_client_message(text: str) -> StreamConfig | EndOfSpeech:
    """A client text frame: a configuration (it has "mode") or the end of speech."""
    message = _load_object(text)
    if "mode" not in message:
        if message.get("is_speaking") is False or message.get("is_finished") is True:
            return EndOfSpeech()
        raise AsrProtocolError('expected a configuration with "mode" or {"is_speaking": false}')
    mode = message["mode"]
    if mode not in CLIENT_MODES:
        raise AsrProtocolError(f"mode must be one of {', '.join(CLIENT_MODES)}, got {mode!r}")
    audio_fs = message.get("audio_fs", PROTOCOL_DEFAULT_AUDIO_RATE_HZ)
    if audio_fs not in SUPPORTED_AUDIO_RATES_HZ:
        raise AsrProtocolError(f"audio_fs must be 8000 or 16000, got {audio_fs!r}")
    look_backs = {}
    for key in ("encoder_chunk_look_back", "decoder_chunk_look_back"):
        if key in message:
            if not isinstance(message[key], int) or message[key] < 0:
                raise AsrProtocolError(f"{key} must be a non-negative integer, got {message[key]!r}")
            look_backs[key] = message[key]
    return StreamConfig(mode=mode, chunk_size=_parse_chunk_size(message.get("chunk_size", [5, 10, 5])),
                        chunk_interval=int(message.get("chunk_interval", 10)),
                        wav_name=str(message.get("wav_name", "")), audio_fs=audio_fs,
                        hotwords=parse_hotwords(message.get("hotwords")),
                        is_speaking=message.get("is_speaking", True) is not False, **look_backs)


def parse_server_message(text: str) -> RecognitionResult | ServerError:
    message = _load_object(text)
    if message.get("mode") == "error":
        return ServerError(str(message.get("message", "")))
    if not isinstance(message.get("mode"), str) or not isinstance(message.get("text", ""), str):
        raise AsrProtocolError(f"server result needs string mode and text: {text[:200]}")
    return RecognitionResult(mode=message["mode"], text=message.get("text", ""),
                             wav_name=str(message.get("wav_name", "")), is_final=bool(message.get("is_final")))


class SessionState(enum.Enum):
    AWAITING_CONFIG = "awaiting config"
    CONFIGURED = "configured"  # between utterances
    SPEAKING = "speaking"


# (state, event) → next state; anything missing is a protocol error with this message.
_TRANSITIONS: dict[tuple[SessionState, str], SessionState] = {
    (SessionState.AWAITING_CONFIG, "config"): SessionState.CONFIGURED,
    (SessionState.CONFIGURED, "config"): SessionState.CONFIGURED,
    (SessionState.CONFIGURED, "audio"): SessionState.SPEAKING,
    (SessionState.CONFIGURED, "end"): SessionState.CONFIGURED,
    (SessionState.SPEAKING, "audio"): SessionState.SPEAKING,
    (SessionState.SPEAKING, "end"): SessionState.CONFIGURED,
}
_ILLEGAL = {
    (SessionState.AWAITING_CONFIG, "audio"): "binary audio before the JSON configuration frame",
    (SessionState.AWAITING_CONFIG, "end"): "end of speech before the JSON configuration frame",
    (SessionState.SPEAKING, "config"): 'a new configuration in the middle of an utterance; send {"is_speaking": false} first',
}


def next_state(state: SessionState, event: str) -> SessionState:
    if (state, event) in _TRANSITIONS:
        return _TRANSITIONS[(state, event)]
    raise AsrProtocolError(_ILLEGAL.get((state, event), f"{event} is not allowed while {state.value}"))


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
            result_mode = "2pass-offline" if mode == "2pass" else "offline"
            replies = [RecognitionResult(result_mode, final.text, self.config.wav_name, True).to_json()]
        self.sent_text = ""
        return replies

    def _online(self, cumulative: str, *, is_final: bool) -> str:
        """FunASR's online results carry only the text decoded since the previous one."""
        new_text = cumulative[len(self.sent_text):] if cumulative.startswith(self.sent_text) else cumulative
        self.sent_text = cumulative
        mode = "2pass-online" if self.config.mode == "2pass" else "online"
        return RecognitionResult(mode, new_text, self.config.wav_name, is_final).to_json()

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
                    await websocket.close(code=1009, reason="message too big")
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
                    await websocket.close(code=1011, reason="ASR engine failure")
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
                if isinstance(message, str) and _is_end_of_speech(message):
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


def _is_end_of_speech(text: str) -> bool:
    try:
        return isinstance(parse_client_message(text), EndOfSpeech)
    except AsrProtocolError:
        return False


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
    from voice.asr import FunAsrEngine, FunAsrEnginePool

    options = {"device": device, "chunk_size": chunk_size, "punctuation_model": punctuation_model}
    engine = FunAsrEngine(model_dir, **options) if engines == 1 else FunAsrEnginePool.of(engines, model_dir, **options)
    try:
        import uvloop  # installed with uvicorn[standard]: less event-loop overhead per audio frame
    except ImportError:
        asyncio.run(serve_engine(engine, host, port))
    else:
        uvloop.run(serve_engine(engine, host, port))

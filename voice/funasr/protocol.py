"""The FunASR runtime 2pass websocket protocol as pure code: messages, their parsers and the session state table."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voice.base import VoiceError

# Wire format of FunASR's runtime/docs/websocket_protocol.md (python server funasr_wss_server.py, C++ 2pass server).
WEBSOCKET_SUBPROTOCOL = "binary"
DEFAULT_PORT = 10095
END_OF_SPEECH_JSON = '{"is_speaking": false}'
CLIENT_MODES = ("2pass", "online", "offline")
OFFLINE_RESULT_MODES = ("2pass-offline", "offline")  # results that carry the whole corrected utterance
DEFAULT_HOTWORD_WEIGHT = 20
SUPPORTED_AUDIO_RATES_HZ = (8000, 16000)
PROTOCOL_DEFAULT_AUDIO_RATE_HZ = 16000  # what FunASR servers assume when audio_fs is absent
DEFAULT_CHUNK_SIZE = (5, 10, 5)  # FunASR's clients: 300 ms look-back, 600 ms stride, 300 ms look-ahead
CHUNK_UNIT_MS = 60  # chunk_size counts 60 ms units: [5, 10, 5] decodes 600 ms strides


class AsrProtocolError(VoiceError):
    """A message that breaks the 2pass protocol (bad JSON, unknown mode, audio before configuration)."""


def parse_chunk_size(value: Any) -> tuple[int, int, int] | None:
    """FunASR's chunk_size, a list or a "5,10,5" string: three non-negative integers with a positive middle (the
    stride), or None when it is not that."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        sizes = tuple(int(part) for part in parts)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        return None
    if len(sizes) != 3 or sizes[1] <= 0 or min(sizes) < 0:
        return None
    return sizes[0], sizes[1], sizes[2]


def checked_chunk_size(chunk_size: Sequence[int]) -> tuple[int, int, int]:
    """`parse_chunk_size` for a constructor argument: ValueError when it breaks the rule."""
    sizes = parse_chunk_size(chunk_size)
    if sizes is None:
        raise ValueError(f"chunk_size must be three non-negative integers with a positive middle, got {chunk_size}")
    return sizes


def online_result_mode(client_mode: str) -> str:
    """The mode of the results that carry the text decoded while the caller speaks."""
    return "2pass-online" if client_mode == "2pass" else "online"


def offline_result_mode(client_mode: str) -> str:
    """The mode of the result that carries a whole utterance ("2pass" and "offline" streams end with one)."""
    return "2pass-offline" if client_mode == "2pass" else "offline"


@dataclass(frozen=True)
class StreamConfig:
    """The client's first JSON text frame; None fields are left to the server's defaults."""

    mode: str = "2pass"
    chunk_size: tuple[int, int, int] = DEFAULT_CHUNK_SIZE
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

    @property
    def is_offline(self) -> bool:
        return self.mode in OFFLINE_RESULT_MODES

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
    except (ValueError, RecursionError) as error:  # a number past the digit limit, nesting past the recursion limit
        raise AsrProtocolError(f"text frame is not readable JSON: {type(error).__name__}: {str(error)[:200]}") from None
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
    chunk_size = parse_chunk_size(message.get("chunk_size", DEFAULT_CHUNK_SIZE))
    if chunk_size is None:
        raise AsrProtocolError("chunk_size must be three non-negative integers like [5, 10, 5], "
                               f"got {message.get('chunk_size')!r}")
    try:
        chunk_interval = int(message.get("chunk_interval", 10))
    except (TypeError, ValueError, OverflowError):
        given = repr(message.get("chunk_interval"))[:100]
        raise AsrProtocolError(f"chunk_interval must be an integer, got {given}") from None
    return StreamConfig(mode=mode, chunk_size=chunk_size, chunk_interval=chunk_interval,
                        wav_name=str(message.get("wav_name", "")), audio_fs=audio_fs,
                        hotwords=parse_hotwords(message.get("hotwords")),
                        is_speaking=message.get("is_speaking", True) is not False, **look_backs)


def is_end_of_speech(text: str) -> bool:
    """True for a well-formed end-of-speech frame; anything else (malformed included) is False."""
    try:
        return isinstance(parse_client_message(text), EndOfSpeech)
    except AsrProtocolError:
        return False


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

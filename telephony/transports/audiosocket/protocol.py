"""The AudioSocket wire format (Asterisk `res_audiosocket`), pure: an incremental parser and the encoders.

Every message is `type:uint8, length:uint16 big-endian, payload[length]`. From Asterisk: the UUID first (16 raw
bytes), then audio (signed linear 16-bit, 8 kHz, mono, little-endian), DTMF digits (1 ASCII byte, Asterisk releases
from 2025 on), a hangup or an error. Towards Asterisk only audio and hangup are understood: Asterisk ends the
AudioSocket application on any other type.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from telephony.errors import TelephonyError
from voice.base import FRAME_BYTES

HEADER = struct.Struct(">BH")
HEADER_BYTES = HEADER.size  # 3
MAX_PAYLOAD_BYTES = 0xFFFF
UUID_BYTES = 16

# Error codes Asterisk sends in a 0xFF message, bit-packed.
ERROR_CALLER_HUNG_UP = 0x01
ERROR_FRAME_FORWARDING = 0x02
ERROR_MEMORY = 0x04
_ERROR_NAMES = ((ERROR_CALLER_HUNG_UP, "caller hung up"), (ERROR_FRAME_FORWARDING, "frame forwarding error"),
                (ERROR_MEMORY, "memory error"))


class Kind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO = 0x10
    ERROR = 0xFF


class AudioSocketProtocolError(TelephonyError):
    """The peer broke the AudioSocket framing: the connection cannot be trusted any further."""


@dataclass(frozen=True)
class Hangup:
    """The peer ends the call (a socket close means the same)."""


@dataclass(frozen=True)
class CallId:
    """The call's UUID: the first message of every connection."""

    value: uuid.UUID

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Audio:
    pcm16: bytes  # 8 kHz signed 16-bit little-endian mono; any even length


@dataclass(frozen=True)
class Error:
    """Asterisk reports a failure on its side; `code` is bit-packed (see `describe_error`)."""

    code: int

    @property
    def reasons(self) -> tuple[str, ...]:
        return describe_error(self.code)

    @property
    def caller_hung_up(self) -> bool:
        return bool(self.code & ERROR_CALLER_HUNG_UP)


@dataclass(frozen=True)
class Unknown:
    """A message type this side does not know (higher sample rates, later additions): skipped by the line."""

    kind: int
    payload: bytes


Message = Hangup | CallId | Dtmf | Audio | Error | Unknown


def describe_error(code: int) -> tuple[str, ...]:
    """The reasons packed in an error code, for logs; unknown bits are named by value."""
    reasons = [name for bit, name in _ERROR_NAMES if code & bit]
    rest = code & ~sum(bit for bit, _ in _ERROR_NAMES)
    if rest:
        reasons.append(f"unknown error bits 0x{rest:02x}")
    return tuple(reasons) if reasons else ("no error code",)


def _decode(kind: int, payload: bytes) -> Message:
    if kind == Kind.AUDIO:
        if len(payload) % 2:
            raise AudioSocketProtocolError(f"audio payload of odd length {len(payload)}")
        return Audio(payload)
    if kind == Kind.HANGUP:
        return Hangup()  # the length should be 0; a payload is ignored
    if kind == Kind.UUID:
        if len(payload) != UUID_BYTES:
            raise AudioSocketProtocolError(f"UUID payload of {len(payload)} bytes, expected {UUID_BYTES}")
        return CallId(uuid.UUID(bytes=payload))
    if kind == Kind.DTMF:
        if len(payload) != 1 or not 0x20 < payload[0] < 0x7F:
            raise AudioSocketProtocolError(f"DTMF payload {payload!r} is not one printable ASCII byte")
        return Dtmf(chr(payload[0]))
    if kind == Kind.ERROR:
        return Error(payload[0] if payload else 0)  # the code is optional
    return Unknown(kind, payload)


class AudioSocketParser:
    """Fed bytes as they arrive (any chunking), returns the complete messages in them.

    With `expect_uuid` (the server side), the first message must be the UUID. After an
    `AudioSocketProtocolError` the parser stays broken: the stream has lost its framing.
    """

    def __init__(self, expect_uuid: bool = True) -> None:
        self._buffer = bytearray()
        self._expect_uuid = expect_uuid
        self._broken: AudioSocketProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes of a message not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        messages: list[Message] = []
        try:
            if self._expect_uuid and self._buffer and self._buffer[0] != Kind.UUID:
                raise AudioSocketProtocolError(f"first message is type 0x{self._buffer[0]:02x}, not the UUID")
            while len(self._buffer) >= HEADER_BYTES:
                kind, length = HEADER.unpack_from(self._buffer)
                end = HEADER_BYTES + length
                if len(self._buffer) < end:
                    break
                payload = bytes(self._buffer[HEADER_BYTES:end])
                del self._buffer[:end]
                messages.append(_decode(kind, payload))
                self._expect_uuid = False
        except AudioSocketProtocolError as exc:
            self._broken = exc
            self._buffer.clear()
            raise
        return messages

    def end_of_stream(self) -> None:
        """The socket closed: raises when it cut a message short (a truncated header or payload)."""
        if self._buffer and self._broken is None:
            size = len(self._buffer)
            self._buffer.clear()
            self._broken = AudioSocketProtocolError(f"connection closed inside a message ({size} bytes pending)")
            raise self._broken


def encode(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_audio(pcm16: bytes) -> bytes:
    """One audio message (Asterisk takes any even length; this side sends 20 ms frames, see `audio_frames`)."""
    if len(pcm16) % 2:
        raise ValueError(f"audio of odd length {len(pcm16)}")
    return encode(Kind.AUDIO, pcm16)


def encode_hangup() -> bytes:
    return encode(Kind.HANGUP)


def encode_uuid(call_id: uuid.UUID) -> bytes:
    return encode(Kind.UUID, call_id.bytes)


def encode_dtmf(digit: str) -> bytes:
    return encode(Kind.DTMF, digit.encode("ascii"))


def encode_error(code: int | None = None) -> bytes:
    """An error message; its code is optional. Sent to Asterisk it makes `AudioSocket()` fail (Asterisk takes
    only audio and hangup), which a `TryExec` in the dialplan can route on."""
    return encode(Kind.ERROR, b"" if code is None else bytes([code]))


def audio_frames(pcm16: bytes) -> Iterator[bytes]:
    """`pcm16` in 20 ms frames (320 bytes); a short last frame is padded with silence, an odd byte dropped."""
    usable = len(pcm16) - len(pcm16) % 2
    for offset in range(0, usable, FRAME_BYTES):
        frame = pcm16[offset:min(offset + FRAME_BYTES, usable)]
        yield frame if len(frame) == FRAME_BYTES else frame + bytes(FRAME_BYTES - len(frame))

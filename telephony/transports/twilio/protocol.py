"""Twilio Media Streams wire format (bidirectional): JSON text messages to typed events and back, no I/O.

Inbound: connected, start, media, dtmf, mark, stop. Outbound: media, mark, clear.
Reference: https://www.twilio.com/docs/voice/media-streams/websocket-messages
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from urllib.parse import urlencode

from telephony.errors import TelephonyError

MAX_MESSAGE_BYTES = 64 * 1024  # a 20 ms μ-law frame is ~250 bytes of JSON; anything this large is not media
AUDIO_ENCODING = "audio/x-mulaw"
SAMPLE_RATE_HZ = 8000


class MediaStreamProtocolError(TelephonyError):
    """A message that does not follow the Media Streams format; the stream goes on without it."""


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    encoding: str
    sample_rate_hz: int
    channels: int
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes  # μ-law bytes


@dataclass(frozen=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True)
class Stop:
    stream_sid: str
    call_sid: str


InboundEvent = Connected | Start | Media | Dtmf | Mark | Stop
DTMF_DIGITS = frozenset("0123456789*#ABCD")


def _field(message: dict, name: str, kind: type = str):
    value = message.get(name)
    if not isinstance(value, kind):
        raise MediaStreamProtocolError(f"'{name}' must be a {kind.__name__}")
    return value


def parse_message(text: str | bytes) -> InboundEvent:
    """One websocket text message → a typed event, or MediaStreamProtocolError saying exactly what is wrong."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise MediaStreamProtocolError(f"message of {len(text)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also bytes not UTF-8, numbers past the digit limit, deep nesting
        raise MediaStreamProtocolError(f"not JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(message, dict):
        raise MediaStreamProtocolError("message must be a JSON object")
    event = message.get("event")
    if event == "connected":
        return Connected(str(message.get("protocol", "")), str(message.get("version", "")))
    if event == "start":
        start = _field(message, "start", dict)
        media_format = start.get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise MediaStreamProtocolError("'mediaFormat' must be an object")
        parameters = start.get("customParameters") or {}
        if not isinstance(parameters, dict):
            raise MediaStreamProtocolError("'customParameters' must be an object")
        tracks = start.get("tracks") or ["inbound"]
        if not isinstance(tracks, list):
            raise MediaStreamProtocolError("'tracks' must be a list")
        try:
            sample_rate_hz = int(media_format.get("sampleRate", SAMPLE_RATE_HZ))
            channels = int(media_format.get("channels", 1))
        except (TypeError, ValueError, OverflowError) as exc:
            raise MediaStreamProtocolError("'sampleRate' and 'channels' must be integers") from exc
        return Start(
            stream_sid=str(message.get("streamSid") or start.get("streamSid") or ""),
            call_sid=str(start.get("callSid", "")),
            account_sid=str(start.get("accountSid", "")),
            tracks=tuple(str(track) for track in tracks),
            encoding=str(media_format.get("encoding", AUDIO_ENCODING)),
            sample_rate_hz=sample_rate_hz,
            channels=channels,
            custom_parameters={str(key): str(value) for key, value in parameters.items()},
        )
    if event == "media":
        media = _field(message, "media", dict)
        try:
            payload = base64.b64decode(_field(media, "payload"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaStreamProtocolError(f"media payload is not base64: {exc}") from exc
        try:
            chunk = int(media.get("chunk", 0))
            timestamp = int(media.get("timestamp", 0))
        except (TypeError, ValueError, OverflowError) as exc:
            raise MediaStreamProtocolError("media chunk and timestamp must be integers") from exc
        return Media(str(message.get("streamSid", "")), str(media.get("track", "inbound")), chunk, timestamp, payload)
    if event == "dtmf":
        digit = str(_field(message, "dtmf", dict).get("digit", ""))
        if digit not in DTMF_DIGITS:
            raise MediaStreamProtocolError(f"unknown DTMF digit {digit!r}")
        return Dtmf(str(message.get("streamSid", "")), digit)
    if event == "mark":
        return Mark(str(message.get("streamSid", "")), str(_field(message, "mark", dict).get("name", "")))
    if event == "stop":
        stop = message.get("stop") if isinstance(message.get("stop"), dict) else {}
        return Stop(str(message.get("streamSid", "")), str(stop.get("callSid", "")))
    raise MediaStreamProtocolError(f"unknown event {event!r}")


def media_message(stream_sid: str, mulaw: bytes) -> str:
    return json.dumps({"event": "media", "streamSid": stream_sid,
                       "media": {"payload": base64.b64encode(mulaw).decode("ascii")}})


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


# -- client side (simulated callers, the softphone's protocol, tests) ----------------------------

def connected_message() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(stream_sid: str, call_sid: str, custom_parameters: dict[str, str] | None = None) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
        "streamSid": stream_sid, "callSid": call_sid, "accountSid": "AC" + "0" * 32, "tracks": ["inbound"],
        "mediaFormat": {"encoding": AUDIO_ENCODING, "sampleRate": SAMPLE_RATE_HZ, "channels": 1},
        "customParameters": custom_parameters or {}}})


def inbound_media_message(stream_sid: str, chunk: int, timestamp_ms: int, mulaw: bytes) -> str:
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {
        "track": "inbound", "chunk": str(chunk), "timestamp": str(timestamp_ms),
        "payload": base64.b64encode(mulaw).decode("ascii")}})


def dtmf_message(stream_sid: str, digit: str) -> str:
    return json.dumps({"event": "dtmf", "streamSid": stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}})


def stop_message(stream_sid: str, call_sid: str) -> str:
    return json.dumps({"event": "stop", "streamSid": stream_sid, "stop": {"callSid": call_sid}})


# -- authentication ----------------------------------------------------------------------------

def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the full URL followed by the sorted POST parameters."""
    payload = url + "".join(f"{key}{value}" for key, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_valid(auth_token: str, url: str, signature: str, params: dict[str, str] | None = None) -> bool:
    return hmac.compare_digest(twilio_signature(auth_token, url, params), signature)


def stream_url(base: str, token: str | None = None, **query: str) -> str:
    if token is not None:
        query = {"token": token, **query}
    return f"{base}?{urlencode(query)}" if query else base

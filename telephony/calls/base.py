"""The seam every phone line implements (`CallTransport`), the events it delivers, and the call's typed values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from telephony.errors import TelephonyError
from telephony.store.models import CallChannel


class TransferUnavailable(TelephonyError):
    """This line cannot transfer a call (no PBX, no transfer webhook configured)."""


@dataclass(frozen=True)
class CallerAudio:
    """Caller audio as it arrives: 8 kHz 16-bit mono PCM, any length."""

    pcm16: bytes


@dataclass(frozen=True)
class KeyPressed:
    """A keypad press (RFC 4733 telephone-event, SIP INFO or the media stream's dtmf message)."""

    digit: str


@dataclass(frozen=True)
class Transferred:
    """The caller is with `target` now (a REFER was accepted, or a bridged leg answered): the assistant's part of the
    call is over. The line yields it last; the call record ends as "transferred"."""

    target: str


LineEvent = CallerAudio | KeyPressed | Transferred


@dataclass(frozen=True)
class CallInfo:
    """Who is calling whom, as the line reports it when the call is answered."""

    channel: CallChannel
    caller_number: str | None = None  # caller ID (From / P-Asserted-Identity / the stream's custom parameters)
    called_number: str | None = None
    line_call_id: str | None = None  # the line's own id (Twilio CallSid, SIP Call-ID), for logs


class CallTransport(Protocol):
    """One phone leg, answered. Iterating `events()` yields the caller's audio and key presses and ends when the line
    drops; the assistant's audio goes out with `send_audio` (paced by the caller of it, in real time)."""

    info: CallInfo

    def events(self) -> AsyncIterator[LineEvent]: ...

    async def send_audio(self, pcm16: bytes) -> None:
        """8 kHz PCM to the caller; a dropped line makes this a no-op, never an exception."""

    async def clear(self) -> None:
        """Drop audio the far end has buffered but not played (barge-in)."""

    async def transfer(self, target: str) -> None:
        """Hand the caller to `target` (an extension, a SIP URI); raises `TransferUnavailable` where the line can't."""

    async def hang_up(self) -> None: ...

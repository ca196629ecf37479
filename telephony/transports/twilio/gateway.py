"""The media-stream websocket as a `CallTransport`: JSON messages in and out through `protocol`, μ-law at the edge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from xml.sax.saxutils import escape

import httpx
from fastapi import WebSocket, WebSocketDisconnect

from telephony.calls.base import CallerAudio, CallInfo, KeyPressed, LineEvent, Transferred, TransferUnavailable
from telephony.store.models import CallChannel
from telephony.transports.base import LineState, LineStatus
from telephony.transports.twilio.protocol import (
    Dtmf,
    Media,
    MediaStreamProtocolError,
    Start,
    Stop,
    clear_message,
    media_message,
    parse_message,
)
from voice.audio import ulaw_decode, ulaw_encode

log = logging.getLogger(__name__)

# Caller audio that arrives before the start message (a client that starts streaming at once) is kept for the call,
# up to this many frames (2 s of 20 ms frames); beyond that the oldest go, so a client that never starts costs little.
EARLY_MEDIA_FRAMES = 100

# Custom parameters a TwiML <Stream> (or the softphone) passes the caller's number in.
CALLER_PARAMETERS = ("from", "caller")
CALLED_PARAMETERS = ("to", "called")


@dataclass(frozen=True)
class TransferWebhook:
    """Where a media-stream call is transferred: the stream itself cannot move the call, the gateway's call control
    can. The hotline POSTs JSON — call_sid, stream_sid, target, caller and `twiml` (a ready `<Response><Dial>`, for a
    relay to pass to Twilio's Calls API as the call's new TwiML) — with an optional bearer token. A 2xx means the
    gateway takes the call there (the stream then stops); anything else leaves the caller with the assistant."""

    url: str
    token: str | None = None
    timeout_s: float = 5.0

    async def request(self, call_sid: str, stream_sid: str, target: str, caller: str | None) -> None:
        body = {"call_sid": call_sid, "stream_sid": stream_sid, "target": target, "caller": caller,
                "twiml": f"<Response><Dial>{escape(target)}</Dial></Response>"}
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                response = await client.post(self.url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransferUnavailable(f"transfer webhook unreachable: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise TransferUnavailable(f"transfer webhook answered {response.status_code}: {response.text[:200]}")


class MediaStreamLine:
    """The media-stream line of this worker: its counters for /readyz and its transfer webhook, shared by its
    connections."""

    name = "media-stream"

    def __init__(self, transfers: TransferWebhook | None = None) -> None:
        self.bad_messages = 0
        self.transfers = transfers
        self.transferred = 0
        self.transfer_failures = 0

    def status(self) -> LineStatus:
        parts = [f"{self.bad_messages} malformed messages ignored"] if self.bad_messages else []
        if self.transfers is not None:
            parts.append(f"transfers through the webhook: {self.transferred} done, {self.transfer_failures} failed")
        return LineStatus(LineState.LISTENING, "; ".join(parts))


class MediaStreamTransport:
    """One accepted websocket. `answer()` reads up to the start message (which names the call); then `events()`
    yields caller audio and keys until stop or disconnect. Malformed messages are counted and skipped."""

    def __init__(self, websocket: WebSocket, channel: CallChannel, line: MediaStreamLine) -> None:
        self.websocket = websocket
        self.channel = channel
        self.line = line
        self.info = CallInfo(channel)
        self.stream_sid = ""
        self.closed = False
        self.transferred_to: str | None = None  # the webhook took the call there: the assistant's part is over
        # Set while the transfer webhook is asked: the gateway may stop the stream before the webhook's answer is
        # back, and that stop is the transfer, not the caller hanging up.
        self.transfer_pending: asyncio.Event | None = None
        self.early_media: deque[bytes] = deque(maxlen=EARLY_MEDIA_FRAMES)  # μ-law before start, the call's first audio
        self.early_media_dropped = 0

    async def _messages(self) -> AsyncIterator[Media | Dtmf | Start | Stop]:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = (message.get("bytes") or b"").decode("utf-8", errors="replace")
            try:
                event = parse_message(raw)
            except MediaStreamProtocolError as exc:
                self.line.bad_messages += 1
                log.warning("stream %s: bad media-stream message ignored: %s", self.stream_sid or "-", exc)
                continue
            if isinstance(event, Media | Dtmf | Start | Stop):
                yield event

    async def answer(self) -> bool:
        """Wait for the start message; False when the stream ended (or stopped) before it."""
        async for event in self._messages():
            if isinstance(event, Start):
                self.stream_sid = event.stream_sid
                parameters = event.custom_parameters
                self.info = CallInfo(
                    self.channel,
                    caller_number=next((parameters[key] for key in CALLER_PARAMETERS if parameters.get(key)), None),
                    called_number=next((parameters[key] for key in CALLED_PARAMETERS if parameters.get(key)), None),
                    line_call_id=event.call_sid or None)
                return True
            if isinstance(event, Stop):
                return False
            if isinstance(event, Media):  # the caller's first audio: recorded and heard once the call starts
                if len(self.early_media) == self.early_media.maxlen:
                    self.early_media_dropped += 1
                self.early_media.append(event.payload)
        return False

    async def events(self) -> AsyncIterator[LineEvent]:
        if self.early_media_dropped:
            log.warning("stream %s: %d frames of caller audio before the start message were more than %d kept",
                        self.stream_sid, self.early_media_dropped, EARLY_MEDIA_FRAMES)
        while self.early_media:
            yield CallerAudio(ulaw_decode(self.early_media.popleft()))
        async for event in self._messages():
            if self.transferred_to is not None:  # the gateway is moving the call; what still arrives isn't ours
                break
            if isinstance(event, Media):
                yield CallerAudio(ulaw_decode(event.payload))
            elif isinstance(event, Dtmf):
                yield KeyPressed(event.digit)
            elif isinstance(event, Stop):
                break
            else:
                log.warning("stream %s: second start event ignored", self.stream_sid)
        pending = self.transfer_pending
        if self.transferred_to is None and pending is not None and not pending.is_set():
            # The stream ended while the webhook was being asked: its answer decides whether the call was moved.
            assert self.line.transfers is not None  # only the webhook sets a transfer pending
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pending.wait(), self.line.transfers.timeout_s + 1)
        if self.transferred_to is not None:
            yield Transferred(self.transferred_to)

    async def _send(self, text: str) -> None:
        if self.closed:
            return
        try:
            await self.websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError):
            self.closed = True

    async def send_audio(self, pcm16: bytes) -> None:
        if self.transferred_to is not None:
            return
        await self._send(media_message(self.stream_sid, ulaw_encode(pcm16)))

    async def clear(self) -> None:
        await self._send(clear_message(self.stream_sid))

    async def transfer(self, target: str) -> None:
        webhook = self.line.transfers
        if webhook is None:
            raise TransferUnavailable(f"the media-stream line cannot transfer to {target}: no transfer webhook is set "
                                      "(HOTLINE_TWILIO_TRANSFER_WEBHOOK)")
        if self.closed:
            raise TransferUnavailable("the caller has already hung up")
        self.transfer_pending = asyncio.Event()
        try:
            await webhook.request(self.info.line_call_id or "", self.stream_sid, target, self.info.caller_number)
        except TransferUnavailable:
            self.line.transfer_failures += 1
            raise
        else:
            self.line.transferred += 1
            self.transferred_to = target
        finally:
            self.transfer_pending.set()

    async def hang_up(self) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.websocket.close()

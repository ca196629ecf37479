"""The AudioSocket server: Asterisk connects once per call (`AudioSocket(<uuid>,host:port)` in its dialplan, or
`Dial(AudioSocket/host:port/<uuid>)`); each connection becomes an `AudioSocketTransport` run by the `CallRunner`.

What the line cannot do, by the protocol: it carries no caller ID (`caller_number` is None), and nothing can be set
back on the Asterisk channel, so a call cannot be transferred from here. After this side hangs up (0x00), the
`AudioSocket()` application returns to the dialplan with success; the dialplan decides what follows (see
`deploy/asterisk/`). The hotline's handoff on this line is therefore a callback ticket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from telephony.calls.base import CallerAudio, CallInfo, CallTransport, KeyPressed, LineEvent, TransferUnavailable
from telephony.store.models import CallChannel
from telephony.transports.audiosocket.protocol import (
    Audio,
    AudioSocketParser,
    AudioSocketProtocolError,
    CallId,
    Dtmf,
    Error,
    Hangup,
    Message,
    Unknown,
    audio_frames,
    encode_audio,
    encode_error,
    encode_hangup,
)
from telephony.transports.base import CallHandler, LineState, LineStatus
from voice.base import FRAME_MS

log = logging.getLogger(__name__)

UUID_TIMEOUT_S = 5.0  # a connection that has not named its call by then is dropped
READ_BYTES = 8192
FRAME_S = FRAME_MS / 1000
# The writer sends one frame every 20 ms; when it falls further behind than this (the queue ran dry between replies,
# or the event loop stalled), it restarts its clock instead of bursting to catch up.
LATE_RESET_S = 0.06
HANGUP_FLUSH_S = 2.0  # at hang-up, audio still queued (a goodbye's last frames) gets this long to go out
WRITE_TIMEOUT_S = 1.0  # a hangup message or a refusal that Asterisk does not take by then is given up
CLOSE_WAIT_S = 2.0  # at `AudioSocketLine.close()`, calls get this long to end before their tasks are cancelled


@dataclass
class AudioSocketCounters:
    calls_now: int = 0
    calls_total: int = 0
    refused_busy: int = 0
    malformed: int = 0  # connections closed for breaking the framing (first message not the UUID, odd audio…)
    no_uuid: int = 0  # connections closed or timed out before naming their call
    unknown_messages: int = 0  # skipped message types
    frames_in: int = 0
    frames_out: int = 0
    dtmf: int = 0


class AudioSocketTransport:
    """One AudioSocket connection, its UUID read, as a `CallTransport`.

    `events()` yields caller audio and key presses until Asterisk hangs up (0x00), reports an error (0xFF), closes
    the socket or breaks the framing. `send_audio` queues 20 ms frames and a writer task sends one every 20 ms:
    the speech session's playback runs up to a few hundred ms ahead in 100 ms blocks, and Asterisk writes every
    AudioSocket frame to the channel the moment it arrives (no jitter buffer, no re-timing), so the pacing to the
    frame happens here. `clear()` drops the queued frames (barge-in).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, call_id: str,
                 parser: AudioSocketParser, pending: list[Message] | None = None,
                 counters: AudioSocketCounters | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = parser
        self.counters = counters if counters is not None else AudioSocketCounters()
        self.info = CallInfo(CallChannel.AUDIOSOCKET, caller_number=None, line_call_id=call_id)
        self.end_reason: str | None = None  # why the caller's side ended, for logs
        self._pending = list(pending or ())  # messages that came in the same read as the UUID
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._writer_task: asyncio.Task | None = None
        self._hanging_up = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the caller's side ------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[LineEvent]:
        messages, self._pending = self._pending, []
        while True:
            for message in messages:
                if isinstance(message, Audio):
                    if message.pcm16:
                        self.counters.frames_in += 1
                        yield CallerAudio(message.pcm16)
                elif isinstance(message, Dtmf):
                    self.counters.dtmf += 1
                    yield KeyPressed(message.digit)
                elif isinstance(message, Hangup):
                    self._ended("hangup")
                    return
                elif isinstance(message, Error):
                    self._ended("error: " + ", ".join(message.reasons))
                    return
                elif isinstance(message, Unknown):
                    self.counters.unknown_messages += 1
                    log.info("audiosocket %s: message type 0x%02x (%d bytes) skipped", self.info.line_call_id,
                             message.kind, len(message.payload))
                elif isinstance(message, CallId):
                    self.counters.unknown_messages += 1
                    log.warning("audiosocket %s: second UUID %s ignored", self.info.line_call_id, message)
            if self._closed:
                self._ended("closed here")
                return
            try:
                data = await self.reader.read(READ_BYTES)
            except (ConnectionError, OSError) as exc:
                self._ended(f"connection lost: {exc}")
                return
            try:
                if not data:
                    if self._closed or self._hanging_up:
                        self._ended("closed here")
                        return
                    self.parser.end_of_stream()
                    self._ended("socket closed")
                    return
                messages = self.parser.feed(data)
            except AudioSocketProtocolError as exc:
                self.counters.malformed += 1
                log.warning("audiosocket %s: malformed stream, connection closed: %s", self.info.line_call_id, exc)
                self._ended(f"malformed: {exc}")
                await self.hang_up()
                return

    def _ended(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            log.info("audiosocket %s: caller side ended: %s", self.info.line_call_id, reason)

    # -- the assistant's side ---------------------------------------------------------------------

    async def send_audio(self, pcm16: bytes) -> None:
        if self._closed or self._hanging_up:
            return
        if self._writer_task is None:
            self._writer_task = asyncio.create_task(self._write_frames(),
                                                    name=f"audiosocket-writer-{self.info.line_call_id}")
        for frame in audio_frames(pcm16):
            self._frames.put_nowait(frame)

    async def _write_frames(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                frame = await self._frames.get()
                if frame is None:
                    return  # hang-up: everything queued before it has gone out
                now = loop.time()
                if now - next_at > LATE_RESET_S:
                    next_at = now
                elif next_at > now:
                    await asyncio.sleep(next_at - now)
                self.writer.write(encode_audio(frame))
                await self.writer.drain()
                self.counters.frames_out += 1
                next_at += FRAME_S
        except (ConnectionError, OSError) as exc:
            log.info("audiosocket %s: audio not sent, the connection is gone: %s", self.info.line_call_id, exc)
            self._closed = True

    async def clear(self) -> None:
        """Barge-in: drop the frames queued here. Asterisk keeps no buffer of its own for AudioSocket audio (each
        frame goes to the channel as it arrives), so what was queued here is all that can still be stopped."""
        kept_hangup = False
        while not self._frames.empty():
            if self._frames.get_nowait() is None:
                kept_hangup = True
        if kept_hangup:
            self._frames.put_nowait(None)

    async def transfer(self, target: str) -> None:
        # AudioSocket has no message to set anything on the Asterisk channel: the dialplan after AudioSocket() is
        # all there is, and it cannot tell a handoff from a goodbye. Handoff on this line is a callback ticket.
        raise TransferUnavailable(f"the AudioSocket line cannot transfer to {target}: the protocol has no transfer")

    async def hang_up(self, *, failed: bool = False) -> None:
        """Send the audio still queued, then the hangup message (0x00), then close: Asterisk's `AudioSocket()`
        returns to the dialplan with success. `failed` (the line is shutting down mid-call) sends an error (0xFF)
        instead, so `AudioSocket()` fails and the dialplan can queue the caller for an agent."""
        if self._closed or self._hanging_up:
            return
        self._hanging_up = True
        task = self._writer_task
        if task is not None and not task.done():
            self._frames.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(task), HANGUP_FLUSH_S)
            except TimeoutError:
                log.warning("audiosocket %s: queued audio not sent within %.0f s of hang-up",
                            self.info.line_call_id, HANGUP_FLUSH_S)
        if not self._closed:
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                self.writer.write(encode_error() if failed else encode_hangup())
                await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT_S)
        await self.close()

    async def close(self) -> None:
        """Close the socket without a hangup message (Asterisk takes a close as a hangup too)."""
        self._closed = True
        task = self._writer_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await task
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), WRITE_TIMEOUT_S)


class AudioSocketLine:
    """The AudioSocket line of this worker (`ServedLine`): a TCP server on `host:port` for Asterisk's AudioSocket
    connections, at most `max_calls` at once.

    A connection over the limit (or while closing) is sent an error message (0xFF) and closed at once, and counted:
    Asterisk then fails `AudioSocket()` (TRYSTATUS=FAILED under `TryExec`), so the dialplan can queue the caller for
    an agent rather than drop them. A connection that breaks the framing or names no call is sent a hangup."""

    name = "audiosocket"

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, max_calls: int = 30,
                 uuid_timeout_s: float = UUID_TIMEOUT_S) -> None:
        self.host = host
        self.port = port  # 0: any free port; the bound one is here after `start`
        self.max_calls = max_calls
        self.uuid_timeout_s = uuid_timeout_s
        self.counters = AudioSocketCounters()
        self._calls: CallHandler | None = None
        self._server: asyncio.Server | None = None
        self._failure: str | None = None
        self._closing = False
        self._connections: set[asyncio.Task] = set()
        self._transports: set[AudioSocketTransport] = set()

    def status(self) -> LineStatus:
        if self._failure is not None:
            return LineStatus(LineState.FAILED, self._failure, asdict(self.counters))
        if self._closing:
            return LineStatus(LineState.FAILED, "closed", asdict(self.counters))
        if self._server is None:
            return LineStatus(LineState.STARTING, "not started")
        c = self.counters
        detail = (f"{self.host}:{self.port}; {c.calls_now} calls now, {c.calls_total} taken, "
                  f"{c.refused_busy} refused busy, {c.malformed} malformed, {c.no_uuid} without UUID")
        return LineStatus(LineState.LISTENING, detail, asdict(c))

    async def start(self, calls: CallHandler) -> None:
        """Listen; a bind failure (port in use, bad address) is kept in `status()`, not raised."""
        self._calls = calls
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            self._failure = f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            log.error("AudioSocket line failed to start: %s", self._failure)
            return
        if self.port == 0 and self._server.sockets:
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("AudioSocket line listening on %s:%d (at most %d calls)", self.host, self.port, self.max_calls)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        except Exception:  # one connection's failure must never reach the server
            log.exception("audiosocket connection failed")
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = self.counters
        peer = writer.get_extra_info("peername")
        if self._closing or self._calls is None or c.calls_now >= self.max_calls:
            c.refused_busy += 1
            log.warning("audiosocket connection from %s refused: %s", peer,
                        "the line is closing" if self._closing else f"{c.calls_now} calls already (capacity "
                                                                    f"{self.max_calls})")
            await _refuse(writer, encode_error())
            return
        c.calls_now += 1
        transport: AudioSocketTransport | None = None
        try:
            parser = AudioSocketParser()
            try:
                first = await asyncio.wait_for(_read_call_id(reader, parser), self.uuid_timeout_s)
            except TimeoutError:
                c.no_uuid += 1
                log.warning("audiosocket connection from %s closed: no UUID within %g s", peer,
                            self.uuid_timeout_s)
                await _refuse(writer)
                return
            except AudioSocketProtocolError as exc:
                c.malformed += 1
                log.warning("audiosocket connection from %s closed: %s", peer, exc)
                await _refuse(writer)
                return
            except (ConnectionError, OSError) as exc:
                c.no_uuid += 1
                log.info("audiosocket connection from %s lost before its UUID: %s", peer, exc)
                await _refuse(writer)
                return
            if first is None:
                c.no_uuid += 1
                log.info("audiosocket connection from %s closed before its UUID", peer)
                await _refuse(writer)
                return
            call_id, pending = first
            c.calls_total += 1
            transport = AudioSocketTransport(reader, writer, str(call_id), parser, pending, c)
            self._transports.add(transport)
            log.info("audiosocket call %s from %s", call_id, peer)
            line: CallTransport = transport
            reason = await self._calls.run(line)
            log.info("audiosocket call %s ended: %s (caller side: %s)", call_id, reason, transport.end_reason)
        finally:
            c.calls_now -= 1
            if transport is not None:
                self._transports.discard(transport)
                await transport.hang_up()  # a no-op when the call already hung up or closed

    async def close(self) -> None:
        """Stop listening, end the calls on the line with an error (their `AudioSocket()` fails, so the dialplan can
        queue them for an agent), and wait a little for their records to close."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        transports = list(self._transports)
        for transport in transports:
            await transport.clear()
        await asyncio.gather(*(transport.hang_up(failed=True) for transport in transports), return_exceptions=True)
        connections = list(self._connections)
        if connections:
            _, late = await asyncio.wait(connections, timeout=CLOSE_WAIT_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=CLOSE_WAIT_S)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_WAIT_S)


async def _read_call_id(reader: asyncio.StreamReader,
                        parser: AudioSocketParser) -> tuple[CallId, list[Message]] | None:
    """The connection's UUID and whatever complete messages came with it; None when the socket closed first.
    Raises `AudioSocketProtocolError` when the first message is anything else."""
    while True:
        data = await reader.read(READ_BYTES)
        if not data:
            return None
        messages = parser.feed(data)
        if messages:
            first, rest = messages[0], messages[1:]
            assert isinstance(first, CallId)  # the parser refuses any other first message
            return first, rest


async def _refuse(writer: asyncio.StreamWriter, last_message: bytes | None = None) -> None:
    """End a connection that gets no call: a hangup (Asterisk's `AudioSocket()` returns success) or the message
    given, then close."""
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        writer.write(encode_hangup() if last_message is None else last_message)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_S)

"""Asterisk's side of an AudioSocket connection, written from the protocol description alone (it does not use
`telephony.transports.audiosocket.protocol`, so the two cannot share a mistake).

Every message is `type:uint8, length:uint16 big-endian, payload`. The client sends the 16-byte UUID first (0x01),
then caller audio (0x10, 8 kHz signed 16-bit little-endian mono, 320-byte frames every 20 ms like a channel does),
DTMF (0x03, one ASCII byte), and ends with a hangup (0x00) or an error (0xFF, 0x01: the caller hung up). It keeps
all the audio the server sends and whether the server sent a hangup.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid

HANGUP, UUID, DTMF, AUDIO, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
FRAME_BYTES = 320  # 20 ms at 8 kHz, 16-bit
FRAME_S = 0.02


def message(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


class AudioSocketClient:
    def __init__(self, host: str, port: int, call_id: uuid.UUID | None = None) -> None:
        self.host = host
        self.port = port
        self.call_id = call_id or uuid.uuid4()
        self.received = bytearray()  # all audio the server sent, in order
        self.frame_sizes: list[int] = []
        self.other_messages: list[tuple[int, bytes]] = []  # anything the server sent that is not audio or hangup
        self.hangup_received = asyncio.Event()
        self.closed_by_server = asyncio.Event()  # the server closed the socket (with or without a hangup)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._receiving: asyncio.Task | None = None
        self._audio_arrived = asyncio.Event()
        self._closing = False

    async def connect(self, send_uuid: bool = True) -> AudioSocketClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._receiving = asyncio.create_task(self._receive())
        if send_uuid:
            await self.send(message(UUID, self.call_id.bytes))
        return self

    async def send(self, data: bytes) -> None:
        """Raw bytes on the socket (for malformed messages too); a closed socket is ignored."""
        assert self._writer is not None
        if self._writer.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError):
            self._writer.write(data)
            await self._writer.drain()

    async def stream(self, pcm16: bytes, paced: bool = True) -> None:
        """Caller audio in 320-byte frames, one every 20 ms (absolute deadlines, like a channel), or all at once."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index, offset in enumerate(range(0, len(pcm16), FRAME_BYTES)):
            if paced:
                delay = started + index * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if self.closed_by_server.is_set():
                return
            frame = pcm16[offset:offset + FRAME_BYTES]
            await self.send(message(AUDIO, frame + bytes(FRAME_BYTES - len(frame))))

    async def silence(self, ms: int, paced: bool = True) -> None:
        await self.stream(bytes(ms * 16), paced)

    async def press(self, digit: str) -> None:
        await self.send(message(DTMF, digit.encode("ascii")))

    async def hang_up(self) -> None:
        await self.send(message(HANGUP))
        await self.close()

    async def error(self, code: int = 0x01) -> None:
        await self.send(message(ERROR, bytes([code])))
        await self.close()

    async def wait_for_audio(self, nbytes: int, timeout_s: float) -> None:
        """Until the server has sent at least `nbytes` of audio (TimeoutError after `timeout_s`)."""
        async with asyncio.timeout(timeout_s):
            while len(self.received) < nbytes:
                self._audio_arrived.clear()
                await self._audio_arrived.wait()

    async def wait_for_silence(self, quiet_s: float, timeout_s: float) -> None:
        """Until the server has sent no audio for `quiet_s` (the assistant finished speaking)."""
        async with asyncio.timeout(timeout_s):
            while True:
                self._audio_arrived.clear()
                try:
                    async with asyncio.timeout(quiet_s):
                        await self._audio_arrived.wait()
                except TimeoutError:
                    return

    async def _receive(self) -> None:
        assert self._reader is not None
        try:
            while True:
                kind, length = struct.unpack(">BH", await self._reader.readexactly(3))
                payload = await self._reader.readexactly(length) if length else b""
                if kind == AUDIO:
                    self.received += payload
                    self.frame_sizes.append(length)
                    self._audio_arrived.set()
                elif kind == HANGUP:
                    self.hangup_received.set()
                else:
                    self.other_messages.append((kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            if not self._closing:
                self.closed_by_server.set()
            if self._writer is not None:
                self._writer.close()  # as Asterisk does when the server goes away
            self._audio_arrived.set()

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        if self._receiving is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._receiving, 2)

"""Audio between pjsua2's media thread and asyncio: reading a frame's bytes fast, and the outgoing audio buffer."""

from __future__ import annotations

import ctypes
import threading

FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit mono, the conference bridge's frame
MAX_BUFFERED_S = 30  # outgoing audio beyond this is dropped (the dialogue paces playback, so this is a safety bound)


def _vector_bytes_ctypes(vector) -> bytes:
    # A SWIG ByteVector wraps a libstdc++ std::vector<unsigned char>: its first two words are begin and end.
    address = int(vector.this)
    begin = ctypes.c_void_p.from_address(address).value
    end = ctypes.c_void_p.from_address(address + ctypes.sizeof(ctypes.c_void_p)).value
    if not begin or end is None or end < begin:
        return b""
    return ctypes.string_at(begin, end - begin)


def _vector_bytes_iterating(vector) -> bytes:
    return bytes(tuple(vector))  # correct everywhere, but ~250 µs a frame


def _pick_reader():
    """SWIG's own conversion iterates element by element (~250 µs per 20 ms frame, too slow for many calls); read
    the vector's storage directly when a self-check proves the layout, else fall back to iterating."""
    try:
        import pjsua2 as pj

        probe = bytes(range(256)) + b"\x00\x7f\x80\xff"
        if _vector_bytes_ctypes(pj.ByteVector(probe)) == probe and _vector_bytes_ctypes(pj.ByteVector(b"")) == b"":
            return _vector_bytes_ctypes
    except Exception:  # noqa: BLE001 - any surprise in the layout check means: use the slow, safe path
        pass
    return _vector_bytes_iterating


vector_bytes = _pick_reader()


class OutgoingAudio:
    """PCM waiting to be sent: filled from asyncio by `send_audio`, drained 20 ms at a time by the media thread."""

    def __init__(self, sample_rate: int = 8000) -> None:
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._limit = sample_rate * 2 * MAX_BUFFERED_S
        self.frames_sent = 0
        self.dropped_bytes = 0

    def write(self, pcm16: bytes) -> None:
        with self._lock:
            room = self._limit - len(self._buffer)
            if len(pcm16) > room:
                self.dropped_bytes += len(pcm16) - max(room, 0)
                pcm16 = pcm16[:max(room, 0)]
            self._buffer += pcm16

    def clear(self) -> None:
        with self._lock:
            self._buffer.clear()

    def next_frame(self) -> bytes | None:
        """The next 20 ms, padded with silence at the end of a reply; None when nothing is waiting."""
        with self._lock:
            if not self._buffer:
                return None
            frame = bytes(self._buffer[:FRAME_BYTES])
            del self._buffer[:FRAME_BYTES]
        self.frames_sent += 1
        if len(frame) < FRAME_BYTES:
            frame += b"\x00" * (FRAME_BYTES - len(frame))
        return frame

    @property
    def buffered_ms(self) -> int:
        with self._lock:
            return len(self._buffer) // 16

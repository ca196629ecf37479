"""Pure audio plumbing for 8 kHz int16 telephony PCM: G.711, resampling, MP3 decoding, framing and WAV files."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soxr

if TYPE_CHECKING:
    import av

from voice.base import FRAME_BYTES, SAMPLE_WIDTH_BYTES, TELEPHONY_RATE_HZ, AudioFormatError

INT16_FULL_SCALE = 32768.0

# --- G.711 (ITU-T G.711), bit-exact with CPython's audioop, which is removed in Python 3.13 ---------------------------
# audioop feeds μ-law a 14-bit value (sample >> 2) and A-law a 13-bit value (sample >> 3); the segment end points,
# bias and clip below are the ones in audioop.c (after Sun Microsystems' g711.c).
ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
ULAW_BIAS_14BIT = 0x84 >> 2
ULAW_CLIP_14BIT = 8159
ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _build_ulaw_encode_table() -> np.ndarray:
    # Indexed by the int16 sample's bit pattern read as uint16.
    value = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32) >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), ULAW_CLIP_14BIT) + ULAW_BIAS_14BIT
    segment = np.searchsorted(ULAW_SEGMENT_ENDS, magnitude, side="left")
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _build_ulaw_decode_table() -> np.ndarray:
    inverted = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((inverted & 0x0F) << 3) + 0x84) << ((inverted & 0x70) >> 4)
    return np.where(inverted & 0x80, 0x84 - magnitude, magnitude - 0x84).astype("<i2")


def _build_alaw_encode_table() -> np.ndarray:
    value = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32) >> 3
    mask = np.where(value >= 0, 0xD5, 0x55)
    magnitude = np.where(value >= 0, value, -value - 1)
    segment = np.searchsorted(ALAW_SEGMENT_ENDS, magnitude, side="left")
    shift = np.where(segment < 2, 1, np.minimum(segment, 7))
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((magnitude >> shift) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode_table() -> np.ndarray:
    toggled = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (toggled & 0x70) >> 4
    magnitude = ((toggled & 0x0F) << 4) + np.where(segment == 0, 8, 0x108)
    magnitude = np.where(segment > 1, magnitude << np.maximum(segment - 1, 0), magnitude)
    return np.where(toggled & 0x80, magnitude, -magnitude).astype("<i2")


ULAW_ENCODE_TABLE = _build_ulaw_encode_table()
ULAW_DECODE_TABLE = _build_ulaw_decode_table()
ALAW_ENCODE_TABLE = _build_alaw_encode_table()
ALAW_DECODE_TABLE = _build_alaw_decode_table()


def _samples(pcm16: bytes) -> np.ndarray:
    if len(pcm16) % SAMPLE_WIDTH_BYTES:
        raise AudioFormatError(f"16-bit PCM must have an even byte count, got {len(pcm16)} bytes")
    return np.frombuffer(pcm16, dtype="<i2")


def ulaw_encode(pcm16: bytes) -> bytes:
    return ULAW_ENCODE_TABLE[_samples(pcm16).view("<u2")].tobytes()


def ulaw_decode(data: bytes) -> bytes:
    return ULAW_DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def alaw_encode(pcm16: bytes) -> bytes:
    return ALAW_ENCODE_TABLE[_samples(pcm16).view("<u2")].tobytes()


def alaw_decode(data: bytes) -> bytes:
    return ALAW_DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)].tobytes()


# --- sample helpers --------------------------------------------------------------------------------------------------


def pcm16_to_float(pcm16: bytes) -> np.ndarray:
    """Samples scaled to [-1, 1) as float32."""
    return _samples(pcm16).astype(np.float32) / INT16_FULL_SCALE


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to int16 PCM, clipping (not wrapping) anything beyond full scale."""
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * INT16_FULL_SCALE)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def frames(pcm16: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """Split into equal frames; the last partial frame is padded with silence so every frame has the same length."""
    _samples(pcm16)
    if frame_bytes <= 0 or frame_bytes % SAMPLE_WIDTH_BYTES:
        raise AudioFormatError(f"frame size must be a positive even byte count, got {frame_bytes}")
    padding = -len(pcm16) % frame_bytes
    padded = pcm16 + bytes(padding)
    return [padded[offset:offset + frame_bytes] for offset in range(0, len(padded), frame_bytes)]


def silence(ms: int, rate: int = TELEPHONY_RATE_HZ) -> bytes:
    return bytes(rate * ms // 1000 * SAMPLE_WIDTH_BYTES)


def duration_ms(pcm16: bytes, rate: int = TELEPHONY_RATE_HZ) -> float:
    return len(_samples(pcm16)) * 1000 / rate


def rms_dbfs(pcm16: bytes) -> float:
    """Root-mean-square level relative to a full-scale square wave; -inf for empty or digital silence."""
    samples = _samples(pcm16).astype(np.float64)
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(samples * samples)))
    return 20 * math.log10(rms / INT16_FULL_SCALE) if rms > 0 else -math.inf


# --- streaming resampling and MP3 decoding ---------------------------------------------------------------------------


def float_resampler(from_hz: int, to_hz: int, quality: str = "HQ") -> soxr.ResampleStream | None:
    """A soxr stream of float32 mono samples (deterministic and independent of chunking), None when the rates match.

    float32, not int16: soxr's int16 path rounds differently depending on how the input is chunked, so the same audio
    would not give the same bytes twice (cache checks, tests and the ASR client compare renders).
    """
    if from_hz == to_hz:
        return None
    return soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32", quality=quality)


class Resampler:
    """Streaming int16 mono resampler (soxr keeps filter state between chunks); `flush` drains its delay line.

    soxr holds output back by its filter delay: about 66 ms for 8→16 kHz and 21 ms for 24→8 kHz at "HQ";
    "MQ" roughly halves that where latency matters more than stop-band rejection.
    """

    def __init__(self, from_hz: int, to_hz: int, quality: str = "HQ") -> None:
        self.from_hz, self.to_hz = from_hz, to_hz
        self._carry = b""
        self._stream = float_resampler(from_hz, to_hz, quality)

    def process(self, pcm16: bytes) -> bytes:
        # A chunk may split a sample between two calls (sockets do not respect sample boundaries).
        data = self._carry + pcm16
        usable = len(data) - len(data) % SAMPLE_WIDTH_BYTES
        self._carry = data[usable:]
        return self._resample(np.frombuffer(data[:usable], dtype="<i2"), last=False)

    def flush(self) -> bytes:
        if self._carry:
            raise AudioFormatError("16-bit PCM stream ended in the middle of a sample (odd byte count)")
        return self._resample(np.zeros(0, dtype=np.int16), last=True)

    def _resample(self, samples: np.ndarray, last: bool) -> bytes:
        if self._stream is None:
            return samples.astype("<i2").tobytes()
        resampled = self._stream.resample_chunk(samples.astype(np.float32) / 32768.0, last=last)
        return np.clip(np.round(resampled * 32768.0), -32768, 32767).astype("<i2").tobytes()


def _mono_int16(frame: av.AudioFrame) -> np.ndarray:
    samples = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        samples = samples.reshape(-1, channels).T
    if np.issubdtype(samples.dtype, np.integer):  # s16 or s32: scale to [-1, 1) before mixing channels
        samples = samples / float(np.iinfo(samples.dtype).max + 1)
    return np.clip(np.rint(samples.mean(axis=0) * INT16_FULL_SCALE), -32768, 32767).astype(np.int16)


ID3V2_HEADER_BYTES = 10


class Mp3Decoder:
    """Push decoder: MP3 bytes split anywhere in, int16 mono PCM at `out_rate_hz` out as soon as whole frames decode."""

    def __init__(self, out_rate_hz: int = TELEPHONY_RATE_HZ) -> None:
        import av  # PyAV only where MP3 is decoded (the TTS path), not in ASR-only processes

        self.out_rate_hz = out_rate_hz
        self._codec = av.CodecContext.create("mp3", "r")
        self._resampler: Resampler | None = None
        self._received_bytes = 0
        self._decoded_samples = 0
        self._head = b""  # stream start, held back until a leading ID3v2 tag can be recognised and skipped
        self._skip_bytes = 0
        self._head_done = False

    def feed(self, chunk: bytes) -> bytes:
        self._received_bytes += len(chunk)
        return self._decode(self._strip_id3(chunk), final=False)

    def flush(self) -> bytes:
        pending, self._head, self._head_done = self._head, b"", True
        output = self._decode(pending, final=False) + self._decode(b"", final=True)
        if self._decoded_samples == 0 and self._received_bytes > 0:
            raise AudioFormatError(f"no MP3 audio frames found in {self._received_bytes} bytes")
        return output

    def _strip_id3(self, chunk: bytes) -> bytes:
        # Files carry an ID3v2 tag that FFmpeg's raw mp3 parser hands over as a packet the decoder rejects.
        if self._skip_bytes:
            skipped = min(self._skip_bytes, len(chunk))
            self._skip_bytes -= skipped
            chunk = chunk[skipped:]
        if self._head_done:
            return chunk
        self._head += chunk
        if len(self._head) < ID3V2_HEADER_BYTES and b"ID3".startswith(self._head[:3]):
            return b""
        head, self._head, self._head_done = self._head, b"", True
        if head.startswith(b"ID3"):
            size = head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]  # syncsafe integer (ID3v2.4 §3.1)
            footer = ID3V2_HEADER_BYTES if head[5] & 0x10 else 0
            tag_bytes = ID3V2_HEADER_BYTES + size + footer
            self._skip_bytes = max(0, tag_bytes - len(head))
            head = head[tag_bytes:]
        return head

    def _decode(self, data: bytes, final: bool) -> bytes:
        import av

        if not data and not final:
            return b""
        try:
            decoded = [frame for packet in self._codec.parse(data) for frame in self._codec.decode(packet)]
            if final:
                decoded += self._codec.decode(None)
        except av.FFmpegError as error:
            raise AudioFormatError(f"corrupt MP3 data after {self._received_bytes} bytes received: {error}") from error
        output = []
        for frame in decoded:
            if self._resampler is not None and self._resampler.from_hz != frame.sample_rate:
                output.append(self._resampler.flush())  # the stream changed its sample rate mid-way
                self._resampler = None
            if self._resampler is None:
                self._resampler = Resampler(frame.sample_rate, self.out_rate_hz)
            samples = _mono_int16(frame)
            self._decoded_samples += samples.size
            output.append(self._resampler.process(samples.tobytes()))
        if final and self._resampler is not None:
            output.append(self._resampler.flush())
        return b"".join(output)


# --- WAV files -------------------------------------------------------------------------------------------------------

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_IEEE_FLOAT = 3
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def parse_wav(data: bytes) -> tuple[bytes, int]:
    """RIFF/WAVE bytes to (mono int16 PCM, sample rate); mixes channels down and converts 8/24/32-bit and float."""
    if len(data) < 12 or data[0:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError("not a RIFF/WAVE file")
    offset, fmt = 12, None
    while offset + 8 <= len(data):
        chunk_id, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = data[offset + 8:offset + 8 + size]  # streamed WAVs (espeak-ng --stdout) claim sizes past the end
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise AudioFormatError("WAV fmt chunk is shorter than 16 bytes")
            fmt = struct.unpack_from("<HHIIHH", body)
            if fmt[0] == WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                fmt = (struct.unpack_from("<H", body, 24)[0], *fmt[1:])  # sub-format GUID starts with the format tag
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioFormatError("WAV data chunk comes before its fmt chunk")
            return _wav_samples_to_pcm16(body, fmt), fmt[2]
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    raise AudioFormatError("WAV file has no data chunk")


def _wav_samples_to_pcm16(body: bytes, fmt: tuple[int, ...]) -> bytes:
    format_tag, channels, _rate, _byte_rate, block_align, bits = fmt
    width = bits // 8
    if channels < 1 or width < 1 or block_align != channels * width:
        raise AudioFormatError(f"inconsistent WAV format: {channels} channels, {bits} bits, block {block_align}")
    body = body[:len(body) - len(body) % block_align]
    if format_tag == WAVE_FORMAT_IEEE_FLOAT and width in (4, 8):
        samples = np.frombuffer(body, dtype=f"<f{width}").astype(np.float64) * INT16_FULL_SCALE
    elif format_tag == WAVE_FORMAT_PCM and width == 1:
        samples = (np.frombuffer(body, dtype=np.uint8).astype(np.float64) - 128) * 256  # 8-bit WAV is unsigned
    elif format_tag == WAVE_FORMAT_PCM and width in (2, 3, 4):
        raw = np.frombuffer(body, dtype=np.uint8).reshape(-1, width)
        # Keep the two most significant bytes of each little-endian sample.
        samples = raw[:, -2:].copy().view("<i2")[:, 0].astype(np.float64)
    else:
        raise AudioFormatError(f"unsupported WAV encoding: format tag {format_tag}, {bits} bits")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()


def read_wav(path: str | Path) -> tuple[bytes, int]:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AudioFormatError(f"cannot read WAV file {path}: {error}") from error
    return parse_wav(data)


def write_wav(path: str | Path, pcm16: bytes, rate: int = TELEPHONY_RATE_HZ) -> None:
    _samples(pcm16)
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm16), b"WAVE", b"fmt ", 16, WAVE_FORMAT_PCM, 1,
                         rate, rate * SAMPLE_WIDTH_BYTES, SAMPLE_WIDTH_BYTES, 16, b"data", len(pcm16))
    Path(path).write_bytes(header + pcm16)

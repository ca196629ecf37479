"""Streamed WAV (espeak-ng's output) to 8 kHz telephony PCM, as it arrives."""

from __future__ import annotations

from voice.audio import Resampler
from voice.base import SAMPLE_WIDTH_BYTES, TELEPHONY_RATE_HZ, AudioFormatError


class WavStreamToTelephonyPcm:
    """Streamed WAV from espeak-ng (a canonical 44-byte header with unknown sizes, then 16-bit mono PCM) to 8 kHz."""

    _HEADER_BYTES = 44

    def __init__(self) -> None:
        self._buffer = b""
        self._resampler: Resampler | None = None

    def feed(self, data: bytes, last: bool = False) -> bytes:
        self._buffer += data
        if self._resampler is None:
            if len(self._buffer) < self._HEADER_BYTES:
                if last:
                    raise AudioFormatError(f"WAV stream ended inside its header ({len(self._buffer)} bytes)")
                return b""
            header, self._buffer = self._buffer[:self._HEADER_BYTES], self._buffer[self._HEADER_BYTES:]
            audio_format, channels = int.from_bytes(header[20:22], "little"), int.from_bytes(header[22:24], "little")
            if (header[0:4], header[8:16], header[36:40]) != (b"RIFF", b"WAVEfmt ", b"data") or (audio_format, channels,
                                                                                               header[34]) != (1, 1, 16):
                raise AudioFormatError(f"expected a canonical 16-bit mono PCM WAV header, got {header[:40]!r}")
            self._resampler = Resampler(int.from_bytes(header[24:28], "little"), TELEPHONY_RATE_HZ)
        usable = len(self._buffer) - len(self._buffer) % SAMPLE_WIDTH_BYTES
        samples, self._buffer = self._buffer[:usable], self._buffer[usable:]
        converted = self._resampler.process(samples)
        return converted + self._resampler.flush() if last else converted

"""Test audio: Mandarin speech from espeak-ng (needs the Debian espeak-ng binary), coughs, noise and MP3 encoding."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest

from voice.audio import Resampler, parse_wav, silence
from voice.base import TELEPHONY_RATE_HZ

# Debian 12's plain `cmn` voice reads hanzi as English-spelled pinyin; `cmn-latn-pinyin` speaks real Mandarin tones
# (research/speech_stack.md §6.1).
ESPEAK_MANDARIN_VOICE = "cmn-latn-pinyin"
ESPEAK_TIMEOUT_S = 30

_speech_cache: dict[tuple[str, int, int], bytes] = {}


def require_espeak() -> str:
    """Path of espeak-ng, or skip the calling test where it is not installed (CI installs it)."""
    path = shutil.which("espeak-ng")
    if path is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return path


def synthesize_mandarin(text: str, rate_hz: int = TELEPHONY_RATE_HZ, speed: int = 200) -> bytes:
    """Int16 mono PCM of `text` spoken by espeak-ng at `speed` words per minute, resampled to `rate_hz`; cached."""
    key = (text, rate_hz, speed)
    if key not in _speech_cache:
        completed = subprocess.run([require_espeak(), "-v", ESPEAK_MANDARIN_VOICE, "-s", str(speed), "--stdout", text],
                                   capture_output=True, check=True, timeout=ESPEAK_TIMEOUT_S)
        pcm16, source_rate_hz = parse_wav(completed.stdout)
        resampler = Resampler(source_rate_hz, rate_hz)
        _speech_cache[key] = resampler.process(pcm16) + resampler.flush()
    return _speech_cache[key]


def noise(ms: int, dbfs: float, rate_hz: int = TELEPHONY_RATE_HZ, seed: int = 0) -> bytes:
    """Gaussian white noise whose RMS level is `dbfs` (relative to full scale); deterministic for a seed."""
    count = rate_hz * ms // 1000
    samples = np.random.default_rng(seed).standard_normal(count) * 32768.0 * 10 ** (dbfs / 20)
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()


def cough(ms: int = 120, rate_hz: int = TELEPHONY_RATE_HZ, seed: int = 1) -> bytes:
    """A loud click followed by a burst of low-passed noise that decays over `ms`, like a cough into a handset."""
    count = rate_hz * ms // 1000
    rng = np.random.default_rng(seed)
    burst = np.convolve(rng.standard_normal(count), np.ones(4) / 4, mode="same")  # coughs carry little treble
    envelope = np.exp(-np.linspace(0.0, 5.0, count))
    samples = burst / np.max(np.abs(burst)) * envelope * 0.7 * 32767
    samples[: max(1, rate_hz // 1000)] = 0.9 * 32767  # the opening click
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()


def concatenate(*pieces: bytes) -> bytes:
    return b"".join(pieces)


def padded(pcm16: bytes, before_ms: int, after_ms: int, rate_hz: int = TELEPHONY_RATE_HZ) -> bytes:
    """Speech with digital silence before and after it."""
    return silence(before_ms, rate_hz) + pcm16 + silence(after_ms, rate_hz)


def mixed(pcm16: bytes, other: bytes) -> bytes:
    """Sample-wise sum (saturating) of two PCM strings; the shorter one is padded with silence."""
    first, second = np.frombuffer(pcm16, "<i2").astype(np.int32), np.frombuffer(other, "<i2").astype(np.int32)
    total = np.zeros(max(first.size, second.size), dtype=np.int32)
    total[: first.size] += first
    total[: second.size] += second
    return np.clip(total, -32768, 32767).astype("<i2").tobytes()


def encode_mp3(pcm16: bytes, rate_hz: int, bit_rate: int = 48_000, right_channel: bytes | None = None) -> bytes:
    """MP3 bytes of int16 PCM via PyAV's libmp3lame, stereo when `right_channel` is given (same length).

    Skips the calling test when this PyAV build lacks libmp3lame.
    """
    import av

    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this PyAV build has no libmp3lame encoder")
    output = io.BytesIO()
    with av.open(output, "w", format="mp3") as container:
        layout = "mono" if right_channel is None else "stereo"
        stream = container.add_stream("libmp3lame", rate=rate_hz, layout=layout)
        stream.bit_rate = bit_rate
        channels = [pcm16] if right_channel is None else [pcm16, right_channel]
        planes = np.stack([np.frombuffer(channel, "<i2") for channel in channels])
        frame = av.AudioFrame.from_ndarray(planes, format="s16p", layout=layout)
        frame.sample_rate = rate_hz
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return output.getvalue()

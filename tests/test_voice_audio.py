"""Audio plumbing: G.711 against stdlib audioop, resampling, incremental MP3 decoding, helpers and WAV files."""

from __future__ import annotations

import math
import struct
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.voicefixtures import encode_mp3, synthesize_mandarin
from voice.audio import (
    Mp3Decoder,
    Resampler,
    alaw_decode,
    alaw_encode,
    duration_ms,
    float_to_pcm16,
    frames,
    parse_wav,
    pcm16_to_float,
    read_wav,
    rms_dbfs,
    silence,
    ulaw_decode,
    ulaw_encode,
    write_wav,
)
from voice.base import FRAME_BYTES, AudioFormatError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop is deprecated in 3.11 and gone in 3.13
    try:
        import audioop
    except ImportError:
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="stdlib audioop was removed in Python 3.13")

EVERY_SAMPLE = np.arange(-32768, 32768, dtype="<i2")
EVERY_CODE = bytes(range(256))


def tone(frequency_hz: float, ms: int, rate_hz: int, amplitude: float = 0.5) -> bytes:
    time_s = np.arange(rate_hz * ms // 1000) / rate_hz
    return float_to_pcm16(amplitude * np.sin(2 * np.pi * frequency_hz * time_s))


def dominant_frequency_hz(pcm16: bytes, rate_hz: int) -> float:
    samples = pcm16_to_float(pcm16)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate_hz / samples.size)


def as_int(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, "<i2").astype(np.int32)


# --- G.711 ----------------------------------------------------------------------------------------------------------


@needs_audioop
def test_ulaw_matches_audioop_for_every_sample_and_code() -> None:
    assert ulaw_encode(EVERY_SAMPLE.tobytes()) == audioop.lin2ulaw(EVERY_SAMPLE.tobytes(), 2)
    assert ulaw_decode(EVERY_CODE) == audioop.ulaw2lin(EVERY_CODE, 2)


@needs_audioop
def test_alaw_matches_audioop_for_every_sample_and_code() -> None:
    assert alaw_encode(EVERY_SAMPLE.tobytes()) == audioop.lin2alaw(EVERY_SAMPLE.tobytes(), 2)
    assert alaw_decode(EVERY_CODE) == audioop.alaw2lin(EVERY_CODE, 2)


def test_g711_silence_codes_are_the_standard_idle_patterns() -> None:
    assert ulaw_encode(silence(20)) == b"\xff" * 160
    assert alaw_encode(silence(20)) == b"\xd5" * 160
    assert ulaw_decode(b"\xff\x7f") == bytes(4)  # both μ-law zeros decode to 0


# Below 256 units μ-law steps by 8 or 16 units and audioop first drops the 2 low bits (error up to 8 + 3); A-law steps
# by 16 (error up to 8). Louder samples keep a near-constant relative error (logarithmic segments).
@pytest.mark.parametrize(("encode", "decode", "small_error", "relative_error"), [
    (ulaw_encode, ulaw_decode, 11, 0.036),
    (alaw_encode, alaw_decode, 8, 0.032),
])
def test_g711_round_trip_error_is_bounded(encode, decode, small_error: int, relative_error: float) -> None:
    original = EVERY_SAMPLE.astype(np.int32)
    error = np.abs(as_int(decode(encode(EVERY_SAMPLE.tobytes()))) - original)
    small = np.abs(original) < 256
    assert error[small].max() == small_error
    loud = np.abs(original) >= 1024
    assert (error[loud] / np.abs(original[loud])).max() <= relative_error


def test_g711_codes_survive_decode_then_encode() -> None:
    assert alaw_encode(alaw_decode(EVERY_CODE)) == EVERY_CODE
    # μ-law has a negative zero (0x7F) that re-encodes as the positive one (0xFF); every other code is unchanged.
    expected = bytearray(EVERY_CODE)
    expected[0x7F] = 0xFF
    assert ulaw_encode(ulaw_decode(EVERY_CODE)) == bytes(expected)


@pytest.mark.parametrize("function", [ulaw_encode, alaw_encode, pcm16_to_float, duration_ms, rms_dbfs, frames])
def test_odd_byte_counts_are_rejected(function) -> None:
    with pytest.raises(AudioFormatError, match="even byte count, got 321 bytes"):
        function(bytes(321))


# --- helpers --------------------------------------------------------------------------------------------------------


def test_frames_pads_the_last_partial_frame_with_silence() -> None:
    audio = b"\x01\x02" * 165  # 330 bytes: one whole frame and 10 bytes over
    split = frames(audio)
    assert [len(frame) for frame in split] == [FRAME_BYTES, FRAME_BYTES]
    assert split[0] == audio[:FRAME_BYTES]
    assert split[1] == audio[FRAME_BYTES:] + bytes(FRAME_BYTES - 10)
    assert frames(b"") == []
    assert frames(bytes(1024), frame_bytes=512) == [bytes(512), bytes(512)]


def test_silence_and_duration() -> None:
    assert silence(20) == bytes(FRAME_BYTES)
    assert len(silence(1000, rate=16000)) == 32000
    assert duration_ms(silence(1500)) == 1500
    assert duration_ms(bytes(640), rate=16000) == 20


def test_rms_dbfs_of_known_signals() -> None:
    assert rms_dbfs(silence(100)) == -math.inf
    assert rms_dbfs(b"") == -math.inf
    assert rms_dbfs(tone(1000, 1000, 8000, amplitude=1.0)) == pytest.approx(-3.01, abs=0.02)
    assert rms_dbfs(tone(1000, 1000, 8000, amplitude=0.1)) == pytest.approx(-23.01, abs=0.02)


def test_float_conversion_round_trips_and_clips() -> None:
    assert float_to_pcm16(pcm16_to_float(EVERY_SAMPLE.tobytes())) == EVERY_SAMPLE.tobytes()
    assert pcm16_to_float(b"\x00\x80\xff\x7f").tolist() == [-1.0, 32767 / 32768]
    assert pcm16_to_float(b"").dtype == np.float32
    assert as_int(float_to_pcm16(np.array([1.5, -1.5, 0.5]))).tolist() == [32767, -32768, 16384]


# --- resampling -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("from_hz", "to_hz"), [(8000, 16000), (24000, 8000), (22050, 8000), (16000, 8000)])
def test_resampler_streams_one_second_to_the_exact_length(from_hz: int, to_hz: int) -> None:
    resampler = Resampler(from_hz, to_hz)
    chunk = tone(440, 20, from_hz)
    streamed = b"".join(resampler.process(chunk) for _ in range(50))
    block_samples = to_hz * 20 // 1000
    assert abs(len(streamed) // 2 - to_hz) <= 6 * block_samples  # soxr holds back its filter delay until flush
    total = streamed + resampler.flush()
    assert len(total) // 2 == to_hz


def test_resampler_keeps_frequency_and_level() -> None:
    resampler = Resampler(24000, 8000)
    original = tone(1000, 1000, 24000)
    output = resampler.process(original) + resampler.flush()
    assert dominant_frequency_hz(output, 8000) == pytest.approx(1000, abs=2)
    assert rms_dbfs(output) == pytest.approx(rms_dbfs(original), abs=0.2)


def assert_same_audio(first: bytes, second: bytes) -> None:
    """Equal length and at most 2 units apart: soxr's int16 rounding shifts slightly with chunk boundaries."""
    assert len(first) == len(second)
    assert np.abs(as_int(first) - as_int(second)).max() <= 2


def test_resampler_output_does_not_depend_on_chunking() -> None:
    original = tone(300, 500, 8000)
    whole = Resampler(8000, 16000)
    expected = whole.process(original) + whole.flush()
    odd = Resampler(8000, 16000)
    pieces = [odd.process(original[offset:offset + 77]) for offset in range(0, len(original), 77)]
    assert_same_audio(b"".join(pieces) + odd.flush(), expected)


def test_resampler_at_the_same_rate_is_the_identity() -> None:
    resampler = Resampler(8000, 8000)
    audio = tone(440, 100, 8000)
    assert resampler.process(audio[:101]) + resampler.process(audio[101:]) + resampler.flush() == audio


def test_resampler_rejects_a_stream_ending_mid_sample() -> None:
    resampler = Resampler(8000, 16000)
    resampler.process(bytes(321))
    with pytest.raises(AudioFormatError, match="middle of a sample"):
        resampler.flush()


# --- MP3 ------------------------------------------------------------------------------------------------------------


def decode_in_chunks(mp3: bytes, chunk_bytes: int) -> bytes:
    decoder = Mp3Decoder()
    pieces = [decoder.feed(mp3[offset:offset + chunk_bytes]) for offset in range(0, len(mp3), chunk_bytes)]
    return b"".join(pieces) + decoder.flush()


def test_mp3_tone_decodes_to_8khz_with_its_pitch_and_length() -> None:
    mp3 = encode_mp3(tone(440, 2000, 24000), 24000)  # edge-tts sends 24 kHz 48 kbit/s mono MP3
    pcm = decode_in_chunks(mp3, 4608)
    # LAME adds its encoder delay, padding and an info frame: at most a few MP3 frames (24 ms each) of extra audio.
    assert 2000 <= duration_ms(pcm) <= 2150
    assert dominant_frequency_hz(pcm, 8000) == pytest.approx(440, abs=3)
    assert rms_dbfs(pcm) == pytest.approx(-9.0, abs=1.0)


def test_mp3_speech_streams_out_before_the_end_and_ignores_chunk_boundaries() -> None:
    speech = synthesize_mandarin("您好，欢迎致电社保服务热线", rate_hz=24000)
    mp3 = encode_mp3(speech, 24000)
    decoder = Mp3Decoder()
    first = decoder.feed(mp3[:4608])
    assert len(first) > 0  # whole MP3 frames are decoded as soon as they arrive
    whole = decode_in_chunks(mp3, len(mp3))
    assert_same_audio(decode_in_chunks(mp3, 1), whole)
    assert_same_audio(decode_in_chunks(mp3, 4608), whole)
    pcm = decode_in_chunks(mp3, 4608)
    assert duration_ms(speech, 24000) <= duration_ms(pcm) <= duration_ms(speech, 24000) + 150
    assert rms_dbfs(pcm) == pytest.approx(rms_dbfs(speech), abs=1.5)


def test_mp3_with_another_output_rate() -> None:
    mp3 = encode_mp3(tone(1000, 1000, 24000), 24000)
    decoder = Mp3Decoder(out_rate_hz=16000)
    pcm = decoder.feed(mp3) + decoder.flush()
    assert dominant_frequency_hz(pcm, 16000) == pytest.approx(1000, abs=3)
    assert 1000 <= duration_ms(pcm, 16000) <= 1150


CORRUPT_MP3 = [np.random.default_rng(7).bytes(5000), bytes(5000), b"<html>503 Service Unavailable</html>" * 40]


def test_stereo_mp3_is_mixed_down_to_mono() -> None:
    mp3 = encode_mp3(tone(440, 1000, 24000), 24000, bit_rate=96_000, right_channel=silence(1000, 24000))
    pcm = decode_in_chunks(mp3, 4608)
    assert dominant_frequency_hz(pcm, 8000) == pytest.approx(440, abs=3)
    assert rms_dbfs(pcm) == pytest.approx(-9.0 - 6.0, abs=1.0)  # one silent channel halves the amplitude


@pytest.mark.parametrize("corrupt", CORRUPT_MP3, ids=["random", "zeros", "html"])
def test_corrupt_mp3_raises_audio_format_error(corrupt: bytes) -> None:
    decoder = Mp3Decoder()
    with pytest.raises(AudioFormatError, match="MP3"):
        decoder.feed(corrupt)
        decoder.flush()


def test_garbage_inside_an_mp3_stream_raises_audio_format_error() -> None:
    mp3 = encode_mp3(tone(440, 1000, 24000), 24000)
    damaged = mp3[:2000] + np.random.default_rng(3).bytes(2000) + mp3[4000:]
    with pytest.raises(AudioFormatError, match=r"corrupt MP3 data after \d+ bytes"):
        decode_in_chunks(damaged, 1000)


def test_empty_mp3_stream_is_silence_and_a_tag_alone_is_an_error() -> None:
    assert Mp3Decoder().flush() == b""
    decoder = Mp3Decoder()
    decoder.feed(b"ID3\x04\x00\x00\x00\x00\x00\x05" + bytes(5))
    with pytest.raises(AudioFormatError, match="no MP3 audio frames found in 15 bytes"):
        decoder.flush()


# --- WAV ------------------------------------------------------------------------------------------------------------


def test_wav_round_trip(tmp_path: Path) -> None:
    audio = tone(440, 300, 8000)
    write_wav(tmp_path / "tone.wav", audio)
    assert read_wav(tmp_path / "tone.wav") == (audio, 8000)
    with wave.open(str(tmp_path / "tone.wav")) as reader:  # readable by the stdlib too
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 8000)
        assert reader.readframes(reader.getnframes()) == audio


def write_with_wave_module(path: Path, channels: int, width: int, rate: int, raw: bytes) -> None:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)


def test_read_wav_mixes_stereo_down_to_mono(tmp_path: Path) -> None:
    left, right = np.array([1000, -2000, 300], "<i2"), np.array([3000, 2000, -301], "<i2")
    write_with_wave_module(tmp_path / "stereo.wav", 2, 2, 16000, np.stack([left, right], axis=1).tobytes())
    pcm, rate = read_wav(tmp_path / "stereo.wav")
    assert rate == 16000
    assert as_int(pcm).tolist() == [2000, 0, 0]


def test_read_wav_converts_8_24_and_32_bit_and_float(tmp_path: Path) -> None:
    write_with_wave_module(tmp_path / "u8.wav", 1, 1, 8000, bytes([128, 255, 0]))
    assert as_int(read_wav(tmp_path / "u8.wav")[0]).tolist() == [0, 32512, -32768]
    write_with_wave_module(tmp_path / "s24.wav", 1, 3, 8000, b"\xff\x34\x12" + b"\x00\x00\x80")
    assert as_int(read_wav(tmp_path / "s24.wav")[0]).tolist() == [0x1234, -32768]
    write_with_wave_module(tmp_path / "s32.wav", 1, 4, 8000, struct.pack("<ii", 0x12345678, -(1 << 31)))
    assert as_int(read_wav(tmp_path / "s32.wav")[0]).tolist() == [0x1234, -32768]
    samples = np.array([0.5, -0.25], "<f4").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(samples), b"WAVE", b"fmt ", 16, 3, 1, 8000, 32000, 4,
                         32, b"data", len(samples))
    assert as_int(parse_wav(header + samples)[0]).tolist() == [16384, -8192]


def test_parse_wav_tolerates_streamed_sizes_and_skips_other_chunks() -> None:
    audio = tone(440, 100, 8000)
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk with its pad byte
    streamed = b"RIFF\xff\xff\xff\x7fWAVE" + fmt + extra + b"data\xff\xff\xff\x7f" + audio  # as espeak-ng --stdout
    assert parse_wav(streamed) == (audio, 8000)


@pytest.mark.parametrize(("data", "message"), [
    (b"not a wav file at all", "not a RIFF/WAVE file"),
    (b"RIFF\x04\x00\x00\x00WAVE", "no data chunk"),
    (b"RIFF\x0c\x00\x00\x00WAVEdata\x00\x00\x00\x00", "data chunk comes before its fmt chunk"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt " + struct.pack("<IHHIIHH", 16, 2, 1, 8000, 16000, 2, 16) + b"data\x00\x00\x00\x00",
     "unsupported WAV encoding: format tag 2"),
])
def test_bad_wav_raises_audio_format_error(data: bytes, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        parse_wav(data)


def test_missing_wav_file_and_odd_write_raise_audio_format_error(tmp_path: Path) -> None:
    with pytest.raises(AudioFormatError, match="cannot read WAV file"):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(AudioFormatError, match="even byte count"):
        write_wav(tmp_path / "odd.wav", bytes(3))

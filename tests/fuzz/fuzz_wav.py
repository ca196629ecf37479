"""Fuzz the WAV reader (`voice.audio.parse_wav`), which reads what TTS engines and audio files hand over.

Property: (mono 16-bit PCM of even length, a sample rate) or `AudioFormatError`; any other exception is a crash.

    python tests/fuzz/fuzz_wav.py -max_total_time=30 CORPUS_COPY tests/fuzz/corpus/wav
"""

import sys
import warnings

import atheris
import numpy  # noqa: F401 - imported outside the instrumentation

with atheris.instrument_imports(include=["voice"]):
    from voice.audio import parse_wav
    from voice.base import AudioFormatError

warnings.simplefilter("ignore", RuntimeWarning)  # NaN/inf float samples are clipped: numpy warns, the result stands


def test_one_input(data: bytes) -> None:
    try:
        pcm, rate = parse_wav(data)
    except AudioFormatError:
        return
    assert isinstance(pcm, bytes) and len(pcm) % 2 == 0
    assert isinstance(rate, int) and rate >= 0


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

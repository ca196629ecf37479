"""Silero VAD without torch and the streaming speech detector: real synthesized Mandarin plus scripted probabilities."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.voicefixtures import concatenate, cough, noise, padded, synthesize_mandarin
from voice.audio import duration_ms, silence
from voice.base import AudioFormatError, VoiceError
from voice.vad import (
    SILERO_CONTEXT_SAMPLES,
    SILERO_WINDOW_SAMPLES,
    DetectorConfig,
    SileroModel,
    SileroVad,
    SpeechDetector,
    SpeechEnded,
    SpeechStarted,
    VadEvent,
    VadUnavailable,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "你好，我想问一下社保卡丢了怎么办"
WINDOW_BYTES = 512
WINDOW_MS = 32


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def detect(model: SileroModel, audio: bytes, chunk_bytes: int = 320, **config) -> list[VadEvent]:
    detector = SpeechDetector(SileroVad(model), DetectorConfig(**config))
    events: list[VadEvent] = []
    for offset in range(0, len(audio), chunk_bytes):
        events += detector.push(audio[offset:offset + chunk_bytes])
    return events


def voiced_extent_ms(pcm16: bytes, level: int = 500) -> tuple[float, float]:
    """First and last sample louder than `level`, in ms: where espeak's speech really starts and stops."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm16, "<i2").astype(np.int32)) > level)
    return loud[0] / 8, loud[-1] / 8


# --- the model ------------------------------------------------------------------------------------------------------


def test_loading_the_model_does_not_import_torch_or_the_silero_package() -> None:
    script = ("import sys; from voice.vad import SileroModel, SileroVad; vad = SileroVad(SileroModel()); "
              "vad.probability(bytes(512)); print(sorted(m for m in ('torch', 'silero_vad') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                               check=True, timeout=60)
    assert completed.stdout.strip() == "[]"


def test_missing_model_file_raises_vad_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "silero_vad.onnx"
    with pytest.raises(VadUnavailable, match="Silero VAD model file not found: .*silero_vad.onnx") as caught:
        SileroModel(missing)
    assert isinstance(caught.value, VoiceError)


def test_unreadable_model_file_raises_vad_unavailable(tmp_path: Path) -> None:
    broken = tmp_path / "silero_vad.onnx"
    broken.write_bytes(b"this is not an onnx model")
    with pytest.raises(VadUnavailable, match="onnxruntime cannot load Silero VAD model"):
        SileroModel(broken)


def test_probabilities_lie_between_zero_and_one(model: SileroModel) -> None:
    vad = SileroVad(model)
    audio = concatenate(silence(500), synthesize_mandarin(SENTENCE), noise(500, -20), cough())
    usable = len(audio) - len(audio) % WINDOW_BYTES
    probabilities = [vad.probability(audio[offset:offset + WINDOW_BYTES]) for offset in range(0, usable, WINDOW_BYTES)]
    assert all(0.0 <= probability <= 1.0 for probability in probabilities)
    assert max(probabilities) > 0.9  # the sentence is recognised as speech
    assert max(probabilities[:15]) < 0.1  # the leading silence is not


def test_window_of_the_wrong_size_is_rejected(model: SileroModel) -> None:
    with pytest.raises(AudioFormatError, match="exactly 512 bytes, got 320"):
        SileroVad(model).probability(bytes(320))


# --- the detector on real speech ------------------------------------------------------------------------------------


def test_one_sentence_gives_one_start_and_one_end(model: SileroModel) -> None:
    speech = synthesize_mandarin(SENTENCE)
    voice_start_ms, voice_end_ms = voiced_extent_ms(speech)
    audio = padded(speech, 1000, 1000)
    detector = SpeechDetector(SileroVad(model))
    events = detector.push(audio)
    assert [type(event) for event in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert abs(started.at_ms - 1000) <= 250
    assert abs(started.at_ms - (1000 + voice_start_ms)) <= 100
    assert abs(ended.at_ms - (1000 + voice_end_ms)) <= 250
    assert ended.speech_ms == ended.at_ms - started.at_ms
    assert not detector.in_speech
    assert detector.silence_ms == detector.stream_ms - ended.at_ms >= 900  # trailing silence keeps counting


def test_a_cough_alone_gives_no_events(model: SileroModel) -> None:
    assert detect(model, padded(cough(120), 1000, 1000)) == []


def test_digital_silence_and_quiet_noise_give_no_events(model: SileroModel) -> None:
    detector = SpeechDetector(SileroVad(model))
    assert detector.push(silence(3000)) == []
    assert detector.push(noise(2000, -45)) == []
    assert (detector.in_speech, detector.silence_ms) == (False, 0)
    assert detector.stream_ms == 4992  # whole 32 ms windows only; the rest waits for more audio


def test_speech_fragments_shorter_than_min_speech_do_not_start_a_turn(model: SileroModel) -> None:
    speech = synthesize_mandarin(SENTENCE)
    for start_ms in (200, 900, 1500):
        fragment = padded(speech[start_ms * 16:(start_ms + 120) * 16], 1000, 1000)
        assert len(detect(model, fragment, min_speech_ms=0)) == 2  # Silero does hear the 120 ms as speech
        assert detect(model, fragment) == []


def test_two_phrases_separated_by_silence_give_two_segments(model: SileroModel) -> None:
    first, second = synthesize_mandarin("你好"), synthesize_mandarin("我想问一下社保卡丢了怎么办")
    events = detect(model, concatenate(silence(1000), first, silence(1500), second, silence(1000)))
    assert [type(event) for event in events] == [SpeechStarted, SpeechEnded, SpeechStarted, SpeechEnded]
    second_start_ms = 1000 + duration_ms(first) + 1500
    assert abs(events[0].at_ms - 1000) <= 250
    assert abs(events[2].at_ms - second_start_ms) <= 250
    assert events[1].at_ms < events[2].at_ms


def test_events_do_not_depend_on_how_the_audio_is_chunked(model: SileroModel) -> None:
    audio = padded(synthesize_mandarin(SENTENCE), 1000, 1000)
    expected = detect(model, audio, chunk_bytes=len(audio))
    assert detect(model, audio, chunk_bytes=320) == expected
    assert detect(model, audio, chunk_bytes=333) == expected  # odd sizes split samples between pushes


def test_a_shared_model_serves_interleaved_calls_independently(model: SileroModel) -> None:
    call_a = padded(synthesize_mandarin(SENTENCE), 1000, 1000)
    call_b = concatenate(silence(300), synthesize_mandarin("你好"), silence(1500), cough(), silence(1200))
    alone = detect(model, call_a), detect(model, call_b)
    detector_a, detector_b = SpeechDetector(SileroVad(model)), SpeechDetector(SileroVad(model))
    events_a: list[VadEvent] = []
    events_b: list[VadEvent] = []
    for offset in range(0, max(len(call_a), len(call_b)), 320):
        events_a += detector_a.push(call_a[offset:offset + 320])
        events_b += detector_b.push(call_b[offset:offset + 320])
    assert (events_a, events_b) == alone
    assert len(alone[0]) == 2 and len(alone[1]) == 2


def test_a_shared_model_runs_calls_on_parallel_threads(model: SileroModel) -> None:
    calls = [padded(synthesize_mandarin(SENTENCE), 1000, 1000), concatenate(silence(700), synthesize_mandarin("你好"),
                                                                           silence(1000))]
    alone = [detect(model, call) for call in calls]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda call: detect(model, call), calls * 4))
    assert parallel == alone * 4


def test_calls_on_one_event_loop_share_batched_inference_with_the_same_results() -> None:
    model = SileroModel()  # its own, to count its batches
    calls = [padded(synthesize_mandarin(SENTENCE), 1000, 1000), concatenate(silence(300), synthesize_mandarin("你好"),
                                                                           silence(1500), cough(), silence(1200))]
    calls.append(noise(len(calls[0]) // 16, dbfs=-30))
    alone = [detect(model, call) for call in calls]

    async def call(audio: bytes) -> tuple[list[VadEvent], list[float]]:
        detector = SpeechDetector(SileroVad(model))
        events: list[VadEvent] = []
        probabilities: list[float] = []
        for offset in range(0, len(audio), 320):
            events += await detector.push_async(audio[offset:offset + 320])
            probabilities.append(detector.last_probability)
            await asyncio.sleep(0)  # frames arrive one at a time, as from a socket
        return events, probabilities

    async def all_calls() -> list[tuple[list[VadEvent], list[float]]]:
        return await asyncio.gather(*(call(audio) for audio in calls * 3))

    results = asyncio.run(all_calls())
    assert [events for events, _ in results] == alone * 3
    # The three copies of a call saw bit-identical probabilities although they shared batches with other calls.
    assert results[0][1] == results[3][1] == results[6][1]
    windows = sum(len(audio) // WINDOW_BYTES for audio in calls) * 3
    assert model.batched_windows == windows
    assert model.batches <= windows / 3  # nine calls per pass, not one window per model run


def test_a_failing_batch_fails_every_waiting_call_with_a_voice_error(model: SileroModel) -> None:
    vads = [SileroVad(model) for _ in range(2)]
    window_input = np.zeros((1, SILERO_CONTEXT_SAMPLES + SILERO_WINDOW_SAMPLES), dtype=np.float32)
    corrupt_state = np.zeros((2, 1, 64), dtype=np.float32)  # half the state size: it breaks the whole batch

    async def all_windows() -> list[object]:
        return await asyncio.gather(vads[0].probability_async(bytes(WINDOW_BYTES)),
                                    model.run_async(window_input, corrupt_state),
                                    vads[1].probability_async(bytes(WINDOW_BYTES)), return_exceptions=True)

    results = asyncio.run(all_windows())
    assert len(results) == 3
    assert all(isinstance(result, VoiceError) and "Silero VAD inference failed" in str(result) for result in results)
    assert 0.0 <= asyncio.run(SileroVad(model).probability_async(bytes(WINDOW_BYTES))) <= 1.0  # the model still works


def test_reset_starts_a_fresh_stream(model: SileroModel) -> None:
    audio = padded(synthesize_mandarin("你好"), 500, 800)
    detector = SpeechDetector(SileroVad(model))
    first = detector.push(audio)
    detector.push(synthesize_mandarin(SENTENCE)[:16001])  # leave it mid-speech with half a sample buffered
    assert detector.in_speech
    detector.reset()
    assert (detector.in_speech, detector.silence_ms, detector.stream_ms) == (False, 0, 0)
    assert detector.push(audio) == first


# --- hysteresis, with scripted probabilities ------------------------------------------------------------------------


class ScriptedVad:
    """A `Vad` that returns the given probabilities window by window, so the timing rules can be checked exactly."""

    window_samples = 256

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = probabilities
        self.position = 0

    def probability(self, window: bytes) -> float:
        self.position += 1
        return self.probabilities[self.position - 1]

    def reset(self) -> None:
        self.position = 0


def scripted(probabilities: list[float], config: DetectorConfig = DetectorConfig()) -> tuple[SpeechDetector,
                                                                                           list[VadEvent]]:
    detector = SpeechDetector(ScriptedVad(probabilities), config)
    return detector, detector.push(bytes(WINDOW_BYTES * len(probabilities)))


def test_speech_starts_after_min_speech_ms_above_threshold_dated_from_its_first_window() -> None:
    # 6 windows are 192 ms: not enough for 200 ms; a gap resets the count; then 7 windows (224 ms) are.
    detector, events = scripted([0.1] * 3 + [0.9] * 6 + [0.2] + [0.6] * 7)
    assert events == [SpeechStarted(at_ms=10 * WINDOW_MS)]
    assert detector.in_speech and detector.silence_ms == 0
    assert detector.last_probability == 0.6


def test_speech_ends_after_min_silence_ms_below_the_release_threshold() -> None:
    # Speech from window 0; 0.4 lies between 0.35 and 0.5, so it keeps speech going; 10 windows of 0.1 are 320 ms.
    probabilities = [0.9] * 8 + [0.4] * 3 + [0.1] * 9
    detector, events = scripted(probabilities)
    assert events == [SpeechStarted(0)]
    assert detector.in_speech and detector.silence_ms == 9 * WINDOW_MS
    detector.vad.probabilities += [0.1]
    assert detector.push(bytes(WINDOW_BYTES)) == [SpeechEnded(at_ms=11 * WINDOW_MS, speech_ms=11 * WINDOW_MS)]
    assert not detector.in_speech and detector.silence_ms == 10 * WINDOW_MS


def test_a_voiced_window_during_silence_restarts_the_silence_count() -> None:
    _detector, events = scripted([0.9] * 7 + [0.1] * 8 + [0.8] + [0.1] * 10)
    assert events == [SpeechStarted(0), SpeechEnded(at_ms=16 * WINDOW_MS, speech_ms=16 * WINDOW_MS)]


def test_a_middling_window_after_silence_began_does_not_stop_it() -> None:
    _detector, events = scripted([0.9] * 7 + [0.1] * 5 + [0.4] * 5)
    assert events == [SpeechStarted(0), SpeechEnded(at_ms=7 * WINDOW_MS, speech_ms=7 * WINDOW_MS)]


def test_a_blip_after_speech_ended_restarts_silence_without_starting_speech() -> None:
    # The session ends a turn on silence_ms; voice-like audio, even too short to be speech, is not silence.
    detector, events = scripted([0.9] * 7 + [0.1] * 15 + [0.9] * 2 + [0.1] * 3)
    assert events == [SpeechStarted(0), SpeechEnded(at_ms=7 * WINDOW_MS, speech_ms=7 * WINDOW_MS)]
    assert not detector.in_speech and detector.silence_ms == 3 * WINDOW_MS


def test_config_changes_the_timing_and_is_validated() -> None:
    config = DetectorConfig(threshold=0.7, min_speech_ms=64, min_silence_ms=64)
    _detector, events = scripted([0.6] * 4 + [0.8] * 2 + [0.5] + [0.3] * 2, config)
    assert events == [SpeechStarted(4 * WINDOW_MS), SpeechEnded(at_ms=6 * WINDOW_MS, speech_ms=2 * WINDOW_MS)]
    assert config.release_threshold == pytest.approx(0.55)
    with pytest.raises(ValueError, match="threshold"):
        DetectorConfig(threshold=1.5)
    with pytest.raises(ValueError, match="must not be negative"):
        DetectorConfig(min_silence_ms=-1)

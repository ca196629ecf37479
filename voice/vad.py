"""Voice activity detection: Silero VAD on onnxruntime (no torch) and a streaming speech start/end detector."""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from voice.base import SAMPLE_WIDTH_BYTES, TELEPHONY_RATE_HZ, AudioFormatError, Vad, VoiceError

# Silero VAD runs natively at 8 kHz on 256-sample (32 ms) windows, each prefixed by the previous window's last
# 32 samples; its recurrent state has shape (2, batch, 128). See research/speech_stack.md §3.1.
SILERO_WINDOW_SAMPLES = 256
SILERO_CONTEXT_SAMPLES = 32
SILERO_STATE_SHAPE = (2, 1, 128)
SILERO_MODEL_FILE = "silero_vad.onnx"


class VadUnavailable(VoiceError):
    """The Silero VAD model file is missing or onnxruntime cannot load it."""


def default_model_path() -> Path:
    """The ONNX file shipped inside the silero-vad wheel, located without importing the package (it imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VadUnavailable("the silero-vad package is not installed (pip install --no-deps silero-vad)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / SILERO_MODEL_FILE


class SileroModel:
    """One loaded Silero ONNX session shared by every call; onnxruntime allows concurrent `run` calls on a session.

    `run_async` batches: the windows that every call submits during one pass of the event loop go through the model
    as one batch on the next pass (the model takes a batch dimension; each row's result is the same as alone). At
    100 calls that is ~3,000 windows a second, and a batch costs ~21 µs a window against ~70 µs one at a time.
    """

    def __init__(self, model_path: Path | None = None, intra_op_threads: int = 1) -> None:
        self.model_path = model_path if model_path is not None else default_model_path()
        if not self.model_path.is_file():
            raise VadUnavailable(f"Silero VAD model file not found: {self.model_path} "
                                 "(reinstall silero-vad: pip install --no-deps silero-vad)")
        options = onnxruntime.SessionOptions()
        # One thread per inference: a 32 ms window is too small to split, and many calls run side by side.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # onnxruntime's load errors (InvalidProtobuf, NoSuchFile, Fail, …) derive from Exception directly.
        try:
            self._session = onnxruntime.InferenceSession(str(self.model_path), sess_options=options,
                                                         providers=["CPUExecutionProvider"])
        except Exception as error:
            raise VadUnavailable(f"onnxruntime cannot load Silero VAD model {self.model_path}: {error}") from error
        self._sample_rate = np.array(TELEPHONY_RATE_HZ, dtype=np.int64)
        # Windows waiting for the next batch, per event loop (tests may run several loops on several threads).
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[np.ndarray, np.ndarray, asyncio.Future]]] = {}
        self.batches = 0  # batched runs so far, and the windows they carried: the mean batch size at a glance
        self.batched_windows = 0

    def run(self, model_input: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One window: input (1, context + window) float32 and state (2, 1, 128) → (probability, next state)."""
        probabilities, next_state = self.run_batch(model_input, state)
        return float(probabilities[0]), next_state

    def run_batch(self, inputs: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Many independent windows: inputs (B, context + window), states (2, B, 128) → (B probabilities, states)."""
        output, next_states = self._session.run(None, {"input": inputs, "state": states, "sr": self._sample_rate})
        return output[:, 0], next_states

    async def run_async(self, model_input: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Like `run`, batched with the other windows submitted in the same pass of the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[float, np.ndarray]] = loop.create_future()
        pending = self._pending.setdefault(loop, [])
        pending.append((model_input.copy(), state, future))
        if len(pending) == 1:
            loop.call_soon(self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, [])
        if not batch:
            return
        try:
            probabilities, states = self.run_batch(np.concatenate([row[0] for row in batch]),
                                                   np.concatenate([row[1] for row in batch], axis=1))
        except Exception as error:  # onnxruntime's errors derive from Exception directly
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(VoiceError(f"Silero VAD inference failed: {error}"))
            return
        self.batches += 1
        self.batched_windows += len(batch)
        for row, (_, _, future) in enumerate(batch):
            if not future.done():  # a call that hung up meanwhile cancelled its wait
                future.set_result((float(probabilities[row]), states[:, row:row + 1]))


class SileroVad:
    """Per-call Silero state (recurrent state and audio context) over a shared `SileroModel`; not thread-safe."""

    window_samples = SILERO_WINDOW_SAMPLES

    def __init__(self, model: SileroModel) -> None:
        self.model = model
        self._input = np.zeros((1, SILERO_CONTEXT_SAMPLES + SILERO_WINDOW_SAMPLES), dtype=np.float32)
        self._state = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)

    def probability(self, window: bytes) -> float:
        self._load(window)
        probability, self._state = self.model.run(self._input, self._state)
        return probability

    async def probability_async(self, window: bytes) -> float:
        """`probability`, batched with other calls' windows (see `SileroModel.run_async`)."""
        self._load(window)
        probability, self._state = await self.model.run_async(self._input, self._state)
        return probability

    def _load(self, window: bytes) -> None:
        expected_bytes = SILERO_WINDOW_SAMPLES * SAMPLE_WIDTH_BYTES
        if len(window) != expected_bytes:
            raise AudioFormatError(f"Silero VAD needs windows of exactly {expected_bytes} bytes, got {len(window)}")
        # The tail of the previous input becomes this window's context.
        self._input[0, :SILERO_CONTEXT_SAMPLES] = self._input[0, -SILERO_CONTEXT_SAMPLES:]
        self._input[0, SILERO_CONTEXT_SAMPLES:] = np.frombuffer(window, dtype="<i2") / np.float32(32768.0)

    def reset(self) -> None:
        self._input.fill(0.0)
        self._state = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)


# --- streaming speech start/end detection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorConfig:
    """Hysteresis of the speech detector; defaults follow Silero's VADIterator, with a longer minimum speech."""

    threshold: float = 0.5  # a window at or above this probability sounds like speech
    release_margin: float = 0.15  # silence is a window below threshold - release_margin
    min_speech_ms: int = 200  # a cough or a click is shorter and must not start a turn
    min_silence_ms: int = 300  # silence after which the speech segment is closed

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0 or not 0.0 <= self.release_margin < self.threshold:
            raise ValueError(f"need 0 < threshold < 1 and 0 <= release_margin < threshold, got {self}")
        if self.min_speech_ms < 0 or self.min_silence_ms < 0:
            raise ValueError(f"durations must not be negative, got {self}")

    @property
    def release_threshold(self) -> float:
        return self.threshold - self.release_margin


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int  # stream time where the voice began; the event is emitted min_speech_ms later


@dataclass(frozen=True)
class SpeechEnded:
    at_ms: int  # stream time where the last voiced window ended; emitted min_silence_ms later
    speech_ms: int


VadEvent = SpeechStarted | SpeechEnded


class SpeechDetector:
    """Feeds any amount of 8 kHz PCM through a `Vad` window by window and reports speech starts and ends.

    Times are milliseconds of audio pushed since construction or `reset()`, so results do not depend on the clock.
    """

    def __init__(self, vad: Vad, config: DetectorConfig = DetectorConfig()) -> None:
        self.vad = vad
        self.config = config
        self._window_bytes = vad.window_samples * SAMPLE_WIDTH_BYTES
        self.reset()

    def reset(self) -> None:
        self.vad.reset()
        self._buffer = b""
        self._processed_samples = 0
        self.in_speech = False
        self.last_probability = 0.0
        self._candidate_start_ms: int | None = None  # first voiced window of a run not yet long enough
        self._speech_start_ms = 0
        self._last_voice_end_ms: int | None = None  # None until the first speech segment
        self._silence_started = False

    @property
    def stream_ms(self) -> int:
        return self._processed_samples * 1000 // TELEPHONY_RATE_HZ

    @property
    def silence_ms(self) -> int:
        """Trailing silence since the last voiced window of (or after) a speech segment; 0 before any speech."""
        if self._last_voice_end_ms is None:
            return 0
        return self.stream_ms - self._last_voice_end_ms

    def push(self, pcm16: bytes) -> list[VadEvent]:
        events = (self._window(self.vad.probability(window)) for window in self._windows(pcm16))
        return [event for event in events if event is not None]

    async def push_async(self, pcm16: bytes) -> list[VadEvent]:
        """`push` for the event loop: a VAD with `probability_async` batches its windows with other calls'."""
        probability_async = getattr(self.vad, "probability_async", None)
        if probability_async is None:
            return self.push(pcm16)
        events: list[VadEvent] = []
        for window in self._windows(pcm16):
            event = self._window(await probability_async(window))
            if event is not None:
                events.append(event)
        return events

    def _windows(self, pcm16: bytes) -> list[bytes]:
        """Whole windows of the buffered audio; the remainder waits for the next push."""
        self._buffer += pcm16
        size = self._window_bytes
        count = len(self._buffer) // size
        windows = [self._buffer[index * size:(index + 1) * size] for index in range(count)]
        self._buffer = self._buffer[count * size:]
        return windows

    def _window(self, probability: float) -> VadEvent | None:
        window_start_ms = self.stream_ms
        self._processed_samples += self.vad.window_samples
        now_ms = self.stream_ms
        self.last_probability = probability
        config = self.config
        if not self.in_speech:
            if probability < config.threshold:
                self._candidate_start_ms = None
                return None
            # Voice-like audio after a segment is not silence, even before it is long enough to count as speech.
            if self._last_voice_end_ms is not None:
                self._last_voice_end_ms = now_ms
            if self._candidate_start_ms is None:
                self._candidate_start_ms = window_start_ms
            if now_ms - self._candidate_start_ms < config.min_speech_ms:
                return None
            self.in_speech, self._silence_started = True, False
            self._speech_start_ms, self._candidate_start_ms = self._candidate_start_ms, None
            self._last_voice_end_ms = now_ms
            return SpeechStarted(self._speech_start_ms)
        # Between the two thresholds the window keeps the current state (Silero's VADIterator does the same).
        if probability >= config.threshold or (probability >= config.release_threshold and not self._silence_started):
            self._silence_started = False
            self._last_voice_end_ms = now_ms
            return None
        self._silence_started = True
        if self.silence_ms < config.min_silence_ms:
            return None
        self.in_speech = False
        end_ms = self._last_voice_end_ms if self._last_voice_end_ms is not None else now_ms
        return SpeechEnded(end_ms, end_ms - self._speech_start_ms)

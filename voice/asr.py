"""Streaming speech recognition with FunASR: the in-process Paraformer engine and the 2pass websocket client."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from voice.audio import pcm16_to_float
from voice.base import TELEPHONY_RATE_HZ, AsrUnavailable, Transcript

logger = logging.getLogger(__name__)

MODEL_RATE_HZ = 16000  # Paraformer's frontend (WavFrontendOnline) expects 16 kHz
SAMPLES_PER_CHUNK_UNIT = 960  # chunk_size[1] counts 60 ms units at 16 kHz: 10 → 600 ms = 9600 samples
HUB_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
ResultType = TypeVar("ResultType")


def is_hub_name(model: str | Path) -> bool:
    """True when `model` can only mean a ModelScope name ("paraformer-zh-streaming", "iic/name"), not a path.

    Path objects, absolute paths, "~", "./", "../" and anything with more than one "/" are local paths, so a
    mistyped directory fails at once instead of after funasr's 20 s of download retries.
    """
    return isinstance(model, str) and not Path(model).exists() and HUB_NAME_PATTERN.match(model) is not None


class _FunAsrInfoFilter(logging.Filter):
    """Drops funasr's INFO chatter, which it logs on the root logger itself ("Loading ckpt ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "funasr" not in record.pathname


_FUNASR_INFO_FILTER = _FunAsrInfoFilter()


@contextlib.contextmanager
def quiet_funasr() -> Iterator[None]:
    """Swallow funasr's prints and undo the logging.basicConfig() that its import and AutoModel() call."""
    root = logging.getLogger()
    if _FUNASR_INFO_FILTER not in root.filters:
        root.addFilter(_FUNASR_INFO_FILTER)  # root logger filters see only records logged on root itself
    handlers, level = list(root.handlers), root.level
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


@dataclass
class _Job:
    function: Callable[..., Any]
    arguments: tuple
    future: Future
    owner: object | None


class DecodeQueue:
    """One worker thread that runs an engine's decodes, urgent work first.

    Urgent work is what a caller is waiting for: the final transcript at the end of a turn (and the speculative one at
    a pause). Streaming chunks only refresh partials, so under load they wait and the finals overtake them; a stream
    whose turn has ended is `expedite`d, which moves its queued chunk to the urgent lane (its final needs it first).
    """

    def __init__(self, name: str = "funasr") -> None:
        self._name = name
        self._condition = threading.Condition()
        self._urgent: deque[_Job] = deque()
        self._streaming: deque[_Job] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, function: Callable[..., Any], *arguments: Any, urgent: bool = False,
               owner: object | None = None) -> Future:
        job = _Job(function, arguments, Future(), owner)
        with self._condition:
            if self._closed:
                raise RuntimeError("the decode queue is shut down")
            (self._urgent if urgent else self._streaming).append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._condition.notify()
        return job.future

    def expedite(self, owner: object) -> None:
        """Move `owner`'s waiting jobs to the urgent lane, in their order."""
        with self._condition:
            moving = [job for job in self._streaming if job.owner is owner]
            if moving:
                self._streaming = deque(job for job in self._streaming if job.owner is not owner)
                self._urgent.extend(moving)

    def depth(self) -> tuple[int, int]:
        """Jobs waiting: (urgent, streaming)."""
        with self._condition:
            return tuple(sum(not job.future.cancelled() for job in lane)  # type: ignore[return-value]
                         for lane in (self._urgent, self._streaming))

    def shutdown(self) -> None:
        """Run what is queued, then stop the worker."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._urgent and not self._streaming and not self._closed:
                    self._condition.wait()
                if not self._urgent and not self._streaming:
                    return
                job = (self._urgent or self._streaming).popleft()
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                result = job.function(*job.arguments)
            except BaseException as error:  # handed to the awaiting coroutine, which decides
                job.future.set_exception(error)
            else:
                job.future.set_result(result)


class FunAsrEngine:
    """A streaming Paraformer (FunASR `AutoModel`) in this process; one model shared by all streams.

    Inference runs off the event loop. `AutoModel.generate()` writes each call's options (the stream's cache,
    is_final) into the model's shared kwargs dict, so two threads calling it at once would mix streams: calls are
    serialised by a lock and run on one worker thread (a `DecodeQueue`, finals before streaming chunks). One model
    decodes one chunk at a time: run several engines (`FunAsrEnginePool`, one per core or GPU) for more streams.
    """

    name = "funasr"

    def __init__(self, model: str | Path, *, device: str = "cpu", chunk_size: Sequence[int] = (0, 10, 5),
                 encoder_chunk_look_back: int = 4, decoder_chunk_look_back: int = 1,
                 punctuation_model: str | Path | None = None, resample_quality: str = "HQ",
                 torch_threads: int | None = 1) -> None:
        self.model_source = model
        self.torch_threads = torch_threads
        self.device = device
        self.decode_options = _decode_options(chunk_size, encoder_chunk_look_back, decoder_chunk_look_back)
        self.punctuation_source = punctuation_model
        self.resample_quality = resample_quality  # soxr: "HQ" holds partials back 60-100 ms, "QQ" ~0
        self.queue = DecodeQueue()
        self._load_lock = threading.Lock()
        self._inference_lock = threading.Lock()
        self._model: Any = None
        self._punctuation: Any = None
        self.load_seconds: float | None = None

    async def warm_up(self) -> None:
        """Load the model (and punctuation model) on the decode thread, then decode 600 ms of silence."""
        await self.run(self._load, urgent=True)

    def open_stream(self, hotwords: Sequence[str] = (), *, sample_rate_hz: int = TELEPHONY_RATE_HZ,
                    chunk_size: Sequence[int] | None = None, encoder_chunk_look_back: int | None = None,
                    decoder_chunk_look_back: int | None = None) -> FunAsrStream:
        """A stream of `sample_rate_hz` PCM (8000 or 16000); chunk options default to the engine's.

        Hotwords are kept on the stream but the streaming Paraformer has no hotword biasing (only the offline
        SeACo-Paraformer has), so they do not change the text.
        """
        overrides = {"chunk_size": chunk_size, "encoder_chunk_look_back": encoder_chunk_look_back,
                     "decoder_chunk_look_back": decoder_chunk_look_back}
        merged = {**self.decode_options, **{key: value for key, value in overrides.items() if value is not None}}
        return FunAsrStream(self, tuple(hotwords), sample_rate_hz, _decode_options(**merged))

    async def close(self) -> None:
        await asyncio.to_thread(self.queue.shutdown)

    async def run(self, function: Callable[..., ResultType], *arguments: Any, urgent: bool = False,
                  owner: object | None = None) -> ResultType:
        """Run `function` on the engine's decode thread; `urgent` work goes before streaming chunks."""
        return await asyncio.wrap_future(self.queue.submit(function, *arguments, urgent=urgent, owner=owner))

    def decode(self, samples: np.ndarray, cache: dict, is_final: bool, options: dict) -> str:
        """Decode 16 kHz float samples with a stream's cache; returns only the newly decoded text."""
        self._load()
        return self._generate(self._model, input=samples, cache=cache, is_final=is_final, **options)

    def punctuate(self, text: str) -> str:
        self._load()
        return self._generate(self._punctuation, input=text) if self._punctuation is not None and text else text

    def _generate(self, model: Any, **arguments: Any) -> str:
        with self._inference_lock:
            try:
                results = model.generate(key="stream", **arguments)
            except Exception as error:  # torch and funasr raise anything; callers get one VoiceError
                raise AsrUnavailable(f"ASR inference with {self.model_source} failed: "
                                     f"{type(error).__name__}: {error}") from error
        return results[0]["text"] if results else ""

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            if self.device == "cpu" and self.torch_threads is not None:
                import torch

                # torch's intra-op pool spins on every core; in a server process it takes them from the event loop
                # that carries every call's audio. One thread per engine leaves the other cores to the calls.
                torch.set_num_threads(self.torch_threads)
            model = _load_auto_model(self.model_source, self.device)
            punctuation = None
            if self.punctuation_source is not None:
                punctuation = _load_auto_model(self.punctuation_source, self.device)
            silence = np.zeros(self.decode_options["chunk_size"][1] * SAMPLES_PER_CHUNK_UNIT, dtype=np.float32)
            try:
                self._generate(model, input=silence, cache={}, is_final=True, **self.decode_options)
            except AsrUnavailable as error:
                raise AsrUnavailable(f"ASR model {self.model_source} loaded but a test decode failed: "
                                     f"{error.__cause__}") from error.__cause__
            self._model, self._punctuation = model, punctuation
            _release_freed_memory()
            self.load_seconds = time.perf_counter() - started
            logger.info("ASR model %s ready in %.2f s", self.model_source, self.load_seconds)


def _release_freed_memory() -> None:
    """Hand the checkpoint copy freed after loading back to the OS (glibc keeps it: 3.1 → 1.4 GB for the real model)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _decode_options(chunk_size: Sequence[int], encoder_chunk_look_back: int, decoder_chunk_look_back: int) -> dict:
    sizes = [int(value) for value in chunk_size]
    if len(sizes) != 3 or sizes[1] <= 0 or min(sizes) < 0:
        raise ValueError(f"chunk_size must be three non-negative integers with a positive middle, got {chunk_size}")
    return {"chunk_size": sizes, "encoder_chunk_look_back": int(encoder_chunk_look_back),
            "decoder_chunk_look_back": int(decoder_chunk_look_back)}


def _load_auto_model(source: str | Path, device: str) -> Any:
    """funasr's AutoModel for a local directory, or a hub name fetched once; every failure is AsrUnavailable."""
    from_hub = is_hub_name(source)
    if not from_hub:
        directory = Path(source).expanduser().absolute()
        if not directory.is_dir():
            raise AsrUnavailable(f"ASR model directory {directory} does not exist")
        if not (directory / "config.yaml").is_file() and not (directory / "configuration.json").is_file():
            raise AsrUnavailable(f"ASR model directory {directory} has no config.yaml (nor configuration.json)")
        if (directory / "config.yaml").is_file() and not (directory / "model.pt").is_file():
            raise AsrUnavailable(f"ASR model directory {directory} has config.yaml but no model.pt")
        source = str(directory)
    else:
        logger.info("%s is not a local directory: fetching it from ModelScope (once; needs internet)", source)
    try:
        with quiet_funasr():
            import funasr
            from funasr import AutoModel
    except ImportError as error:
        raise AsrUnavailable(f"funasr cannot be imported ({error}); install funasr and kaldi-native-fbank") from error
    try:
        with quiet_funasr():
            return AutoModel(model=str(source), device=device, disable_update=True, disable_pbar=True,
                             log_level="ERROR")
    except Exception as error:  # funasr raises RuntimeError, AssertionError, yaml and torch errors
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if from_hub:
            raise AsrUnavailable(
                f"ASR model {source!r} is not a local directory, so funasr tried to download it from ModelScope, "
                f"and that failed (no internet? pass the path of a downloaded model directory instead): {reason}"
            ) from error
        hint = ""
        if "is not registered" in reason:  # a missing dependency silently unregisters the model class
            failed = sorted(name for name in getattr(funasr, "get_import_errors", dict)() if ".models." in name)
            hint = f"; funasr model modules that failed to import: {failed[:5]}" if failed else ""
        raise AsrUnavailable(f"cannot load ASR model from {source}: {reason}{hint}") from error


def _float_resampler(from_hz: int, to_hz: int, quality: str) -> Any:
    """A soxr stream of float32 samples (deterministic and independent of chunking), None when the rates match."""
    if from_hz == to_hz:
        return None
    import soxr

    return soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32", quality=quality)


@dataclass
class _Utterance:
    """A stream's state for one utterance; the worker thread writes only into the object it was given."""

    resampler: Any
    pending: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))  # 16 kHz, < one stride
    cache: dict = field(default_factory=dict)
    text: str = ""
    has_audio: bool = False


class FunAsrStream:
    """One utterance at a time: buffers 16 kHz audio and decodes each whole stride (600 ms by default)."""

    def __init__(self, engine: FunAsrEngine, hotwords: tuple[str, ...], sample_rate_hz: int, options: dict) -> None:
        if sample_rate_hz not in (TELEPHONY_RATE_HZ, MODEL_RATE_HZ):
            raise ValueError(f"sample_rate_hz must be {TELEPHONY_RATE_HZ} or {MODEL_RATE_HZ}, got {sample_rate_hz}")
        self.engine = engine
        self.hotwords = hotwords
        self.sample_rate_hz = sample_rate_hz
        self.options = options
        self.stride_samples = options["chunk_size"][1] * SAMPLES_PER_CHUNK_UNIT
        self.closed = False
        self._expedited = False  # the turn has ended: this utterance's remaining decodes are urgent
        self._lock = asyncio.Lock()
        self._utterance = self._new_utterance()

    def _new_utterance(self) -> _Utterance:
        return _Utterance(_float_resampler(self.sample_rate_hz, MODEL_RATE_HZ, self.engine.resample_quality))

    async def push(self, pcm16: bytes) -> Transcript | None:
        samples = pcm16_to_float(pcm16)
        async with self._lock:
            utterance = self._utterance
            utterance.has_audio = utterance.has_audio or samples.size > 0
            if utterance.resampler is not None:
                samples = utterance.resampler.resample_chunk(samples)
            pending = np.concatenate((utterance.pending, samples))
            whole = len(pending) // self.stride_samples * self.stride_samples
            utterance.pending = pending[whole:]
            if whole == 0:
                return None
            # The worker appends the text itself, so a cancelled push loses nothing.
            new_text = await self.engine.run(self._decode_into, utterance, pending[:whole], False,
                                             urgent=self._expedited, owner=self)
            return Transcript(utterance.text, is_final=False) if new_text else None

    def expedite(self) -> None:
        """The caller's turn has ended and `finish` follows: decode this utterance's remaining audio before other
        streams' chunks (call it at once, before the pushes still queued for this stream are awaited)."""
        if self._expedited:
            return  # its queued chunk was moved already, and later ones are submitted as urgent
        self._expedited = True
        self.engine.queue.expedite(self)

    async def finish(self) -> Transcript:
        async with self._lock:
            utterance, self._utterance = self._utterance, self._new_utterance()
            self._expedited = False
            if not utterance.has_audio:
                return Transcript("", is_final=True)
            tail = np.empty(0, dtype=np.float32)
            if utterance.resampler is not None:
                tail = utterance.resampler.resample_chunk(tail, last=True)
            await self.engine.run(self._decode_into, utterance, np.concatenate((utterance.pending, tail)), True,
                                  urgent=True, owner=self)
            text = utterance.text
            if self.engine.punctuation_source is not None:
                text = await self.engine.run(self.engine.punctuate, text, urgent=True, owner=self)
            return Transcript(text, is_final=True)

    async def peek(self) -> Transcript:
        """The text if the utterance ended now, without ending it: a final decode on a copy of the stream's cache.

        At a pause this gives the caller's last words, which the streaming partials show only after the next
        600 ms stride and its look-ahead. The resampler's last few milliseconds are left out.
        """
        async with self._lock:
            utterance = self._utterance
            if not utterance.has_audio:
                return Transcript("", is_final=False)
            cache, pending = copy.deepcopy(utterance.cache), utterance.pending.copy()
            tail = await self.engine.run(self.engine.decode, pending, cache, True, self.options,
                                         urgent=True, owner=self)
            return Transcript(utterance.text + tail, is_final=False)

    async def discard(self) -> None:
        """End the utterance without decoding (its text was already taken from `peek`)."""
        async with self._lock:
            self._utterance = self._new_utterance()
            self._expedited = False

    async def close(self) -> None:
        async with self._lock:
            self._utterance = self._new_utterance()
            self._expedited = False
            self.closed = True

    def _decode_into(self, utterance: _Utterance, samples: np.ndarray, is_final: bool) -> str:
        new_text = self.engine.decode(samples, utterance.cache, is_final, self.options)
        utterance.text += new_text
        return new_text


class FunAsrEnginePool:
    """Several `FunAsrEngine` copies of one model, each decoding on its own thread: more streams per process where
    there are cores (or a GPU) to run them. A new stream goes to the engine with the fewest open streams."""

    name = "funasr"

    def __init__(self, engines: Sequence[FunAsrEngine]) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine")
        self.engines = list(engines)
        self._streams: dict[int, set[FunAsrStream]] = {id(engine): set() for engine in self.engines}

    @classmethod
    def of(cls, count: int, model: str | Path, **options: Any) -> FunAsrEnginePool:
        return cls([FunAsrEngine(model, **options) for _ in range(count)])

    @property
    def load_seconds(self) -> float | None:
        times = [engine.load_seconds for engine in self.engines]
        return None if None in times else sum(times)  # type: ignore[arg-type]

    async def warm_up(self) -> None:
        """Load the engines one after another (loading all at once would multiply the peak memory)."""
        for engine in self.engines:
            await engine.warm_up()

    def open_stream(self, hotwords: Sequence[str] = (), **options: Any) -> FunAsrStream:
        live = {key: {s for s in streams if not s.closed} for key, streams in self._streams.items()}
        self._streams = live
        engine = min(self.engines, key=lambda candidate: len(live[id(candidate)]))
        stream = engine.open_stream(hotwords, **options)
        live[id(engine)].add(stream)
        return stream

    def open_streams(self) -> list[int]:
        """Open streams per engine, in engine order."""
        return [sum(1 for stream in self._streams[id(engine)] if not stream.closed) for engine in self.engines]

    async def close(self) -> None:
        for engine in self.engines:
            await engine.close()


ASR_ENGINE_KINDS = ("funasr", "funasr-server")


def create_asr_engine(kind: str, **options: Any) -> Any:
    """`create_asr_engine("funasr", model=path)` or `create_asr_engine("funasr-server", url="ws://...")`."""
    if kind == "funasr":
        return FunAsrEngine(**options)
    if kind == "funasr-server":
        from voice.asr_client import FunAsrServerEngine

        return FunAsrServerEngine(**options)
    raise ValueError(f"unknown ASR engine {kind!r}; choose one of {', '.join(ASR_ENGINE_KINDS)}")


"""The in-process FunASR engine: a streaming Paraformer shared by every call's stream, and a pool of copies."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soxr

from voice.audio import float_resampler, pcm16_to_float
from voice.base import TELEPHONY_RATE_HZ, AsrCapabilities, AsrUnavailable, Transcript
from voice.funasr.decode_queue import DecodeQueue
from voice.funasr.loading import load_auto_model, release_freed_memory
from voice.funasr.protocol import CHUNK_UNIT_MS, checked_chunk_size

logger = logging.getLogger(__name__)

MODEL_RATE_HZ = 16000  # Paraformer's frontend (WavFrontendOnline) expects 16 kHz
SAMPLES_PER_CHUNK_UNIT = MODEL_RATE_HZ * CHUNK_UNIT_MS // 1000  # 960: chunk_size[1] = 10 → 600 ms = 9600 samples
ResultType = TypeVar("ResultType")


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
            model = load_auto_model(self.model_source, self.device)
            punctuation = None
            if self.punctuation_source is not None:
                punctuation = load_auto_model(self.punctuation_source, self.device)
            silence = np.zeros(self.decode_options["chunk_size"][1] * SAMPLES_PER_CHUNK_UNIT, dtype=np.float32)
            try:
                self._generate(model, input=silence, cache={}, is_final=True, **self.decode_options)
            except AsrUnavailable as error:
                raise AsrUnavailable(f"ASR model {self.model_source} loaded but a test decode failed: "
                                     f"{error.__cause__}") from error.__cause__
            self._model, self._punctuation = model, punctuation
            release_freed_memory()
            self.load_seconds = time.perf_counter() - started
            logger.info("ASR model %s ready in %.2f s", self.model_source, self.load_seconds)


def _decode_options(chunk_size: Sequence[int], encoder_chunk_look_back: int, decoder_chunk_look_back: int) -> dict:
    return {"chunk_size": list(checked_chunk_size(chunk_size)), "encoder_chunk_look_back": int(encoder_chunk_look_back),
            "decoder_chunk_look_back": int(decoder_chunk_look_back)}


@dataclass
class _Utterance:
    """A stream's state for one utterance; the worker thread writes only into the object it was given."""

    resampler: soxr.ResampleStream | None  # None when the stream already has the model's rate
    pending: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))  # 16 kHz, < one stride
    cache: dict = field(default_factory=dict)
    text: str = ""
    has_audio: bool = False


class FunAsrStream:
    """One utterance at a time: buffers 16 kHz audio and decodes each whole stride (600 ms by default)."""

    capabilities = AsrCapabilities(speculative_final=True, expedite=True)

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
        return _Utterance(float_resampler(self.sample_rate_hz, MODEL_RATE_HZ, self.engine.resample_quality))

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
        times = [engine.load_seconds for engine in self.engines if engine.load_seconds is not None]
        return sum(times) if len(times) == len(self.engines) else None

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

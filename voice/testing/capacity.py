"""`hotline bench asr-capacity`: how many real-time streams a FunASR engine holds on this machine.

Each simulated stream pushes one chunk of 8 kHz audio every chunk period (600 ms by default) in real time and
ends its utterance every few chunks, as a caller does. Streams are spread round-robin over one or more engines
(model copies) in this process. Reported per run: chunk decode latency, end-of-utterance (final) latency, and the
share of chunks that took longer than the chunk period (the stream falls behind real time).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voice.audio import TELEPHONY_RATE_HZ
from voice.funasr import FunAsrEngine, FunAsrStream

CHUNK_MS = 600


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def caller_like_audio(seconds: float, seed: int = 0) -> bytes:
    """Seeded 8 kHz PCM16 with a voiced-speech-like spectrum (harmonics with a wandering pitch, noise bursts)."""
    rng = np.random.default_rng(seed)
    samples = int(seconds * TELEPHONY_RATE_HZ)
    t = np.arange(samples) / TELEPHONY_RATE_HZ
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / TELEPHONY_RATE_HZ
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    signal = 0.25 * voiced * syllables + 0.02 * rng.standard_normal(samples)
    return (np.clip(signal, -1, 1) * 32767 * 0.5).astype("<i2").tobytes()


def _memory() -> dict[str, float | None]:
    rss = None
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except ImportError:
        pass
    return {"rss_mb": rss, "gpu_peak_allocated_mb": gpu}


async def _single_stream(engine: FunAsrEngine, audio: bytes, chunk_bytes: int, chunks: int) -> dict[str, Any]:
    stream = engine.open_stream()
    chunk_ms: list[float] = []
    final_ms: list[float] = []
    for index in range(chunks):
        start = time.perf_counter()
        await stream.push(audio[(index % 8) * chunk_bytes:(index % 8 + 1) * chunk_bytes])
        chunk_ms.append((time.perf_counter() - start) * 1000)
        if index % 4 == 3:
            start = time.perf_counter()
            await stream.finish()
            final_ms.append((time.perf_counter() - start) * 1000)
    await stream.close()
    return {"chunk_ms_p50": _percentile(chunk_ms, 50), "chunk_ms_p95": _percentile(chunk_ms, 95),
            "final_ms_p50": _percentile(final_ms, 50), "final_ms_p95": _percentile(final_ms, 95)}


async def _paced_stream(stream: FunAsrStream, audio: bytes, chunk_bytes: int, offset_s: float, until: float,
                        chunk_s: float, chunk_ms: list[float], final_ms: list[float], behind: list[int],
                        utterance_chunks: int) -> None:
    await asyncio.sleep(offset_s)
    due = time.perf_counter()
    index = 0
    while due < until:
        start = time.perf_counter()
        await stream.push(audio[(index % 8) * chunk_bytes:(index % 8 + 1) * chunk_bytes])
        elapsed = time.perf_counter() - start
        chunk_ms.append(elapsed * 1000)
        behind.append(int(elapsed > chunk_s))
        index += 1
        if index % utterance_chunks == 0:
            start = time.perf_counter()
            await stream.finish()
            final_ms.append((time.perf_counter() - start) * 1000)
        due += chunk_s
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
    await stream.close()


async def _concurrent(engines: list[FunAsrEngine], streams: int, seconds: float, audio: bytes, chunk_bytes: int,
                      chunk_s: float, utterance_chunks: int) -> dict[str, Any]:
    chunk_ms: list[float] = []
    final_ms: list[float] = []
    behind: list[int] = []
    until = time.perf_counter() + seconds
    tasks = [
        _paced_stream(engines[n % len(engines)].open_stream(), audio, chunk_bytes, chunk_s * n / streams, until,
                      chunk_s, chunk_ms, final_ms, behind, utterance_chunks)
        for n in range(streams)
    ]
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    audio_seconds = len(chunk_ms) * chunk_s
    return {
        "streams": streams, "engines": len(engines), "chunks": len(chunk_ms), "finals": len(final_ms),
        "chunk_ms_p50": _percentile(chunk_ms, 50), "chunk_ms_p95": _percentile(chunk_ms, 95),
        "final_ms_p50": _percentile(final_ms, 50), "final_ms_p95": _percentile(final_ms, 95),
        "behind_real_time": round(sum(behind) / len(behind), 4) if behind else None,
        "audio_s_per_wall_s": round(audio_seconds / wall, 2),
    }


async def measure_capacity(model: Path, *, device: str, streams: Sequence[int], engines: Sequence[int],
                           seconds: float, utterance_chunks: int = 4) -> dict[str, Any]:
    chunk_s = CHUNK_MS / 1000
    chunk_bytes = int(TELEPHONY_RATE_HZ * chunk_s) * 2
    audio = caller_like_audio(chunk_s * 8)
    loaded: list[FunAsrEngine] = []
    load_s: list[float] = []
    torch_threads = 1 if device == "cpu" else None
    try:
        for _ in range(max(engines)):
            engine = FunAsrEngine(model, device=device, torch_threads=torch_threads)
            await engine.warm_up()
            loaded.append(engine)
            load_s.append(round(engine.load_seconds or 0.0, 2))
        memory_loaded = _memory()
        single = await _single_stream(loaded[0], audio, chunk_bytes, chunks=24)
        runs = []
        for engine_count in engines:
            for stream_count in streams:
                runs.append(await _concurrent(loaded[:engine_count], stream_count, seconds, audio, chunk_bytes, chunk_s,
                                              utterance_chunks))
        return {"model": str(model), "device": device, "chunk_ms": CHUNK_MS, "utterance_chunks": utterance_chunks,
                "load_s": load_s, "memory_after_load": memory_loaded, "memory_peak": _memory(),
                "single_stream": single, "runs": runs}
    finally:
        for engine in loaded:
            await engine.close()

"""The hotline server as `hotline bench faults` runs it: the product's own app (`create_app`) with its engines from
the composition root, wrapped in switches the benchmark flips through a small JSON control file.

- `ScriptedTranscripts` wraps the ASR engine: every frame still goes to the real engine (in process, or the FunASR
  server through its client), so the engine's faults are the caller's faults; the final text is the one the benchmark
  wrote in the control file for this question (the tiny test model cannot recognise speech), or random characters
  when the `asr` switch says `garbage`.
- `FaultyAsr` and `FaultyTts` are the switches for the engines that live in the hotline's process (the in-process
  Paraformer, espeak-ng): `kill` raises the engine's own error, `stall` waits without end (until the switch is back
  at `pass`), `garbage` returns random text or noise.
- `SpokenLog` is the `ResilientTts` the call flow speaks through, recording each utterance's text, its first audio
  time (monotonic, comparable with the benchmark's clock on the same machine) and the engine that rendered it, so the
  benchmark can say which prompt the caller heard and when.

Tooling: nothing in the product imports this module."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from voice.base import AsrCapabilities, AsrUnavailable, Transcript, TtsUnavailable
from voice.tts import ResilientTts

CONTROL_ENV = "FAULT_BENCH_CONTROL"  # the control file's path (not a HOTLINE_ setting: the product never reads it)
SPOKEN_LOG_ENV = "FAULT_BENCH_SPOKEN_LOG"
POLL_S = 0.05  # how often a stalled engine looks at the control file again
GARBAGE_CHARACTERS = ("的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以"
                      "会家可下而过天去能对小多然于心学么之都好看起发当没成只如事把还用第样道想作种开美"
                      "总从无情己面最女但现前些所同日手又行意动方期它头经长儿回位分爱老因很给名法间斯知"
                      "世什两次使身者被高已亲其进此话常与活正感")


class Control:
    """The control file, read again when it changed (mtime), cheap enough to ask on every frame."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._values: dict = {}
        self._lock = threading.Lock()

    def get(self, key: str, default: str = "pass") -> str:
        with self._lock:
            try:
                stamp = self.path.stat().st_mtime_ns
                if stamp != self._stamp:
                    self._values = json.loads(self.path.read_text(encoding="utf-8") or "{}")
                    self._stamp = stamp
            except (OSError, ValueError):
                pass  # a file being rewritten: keep the last values
            return str(self._values.get(key, default))

    async def stalled(self, key: str) -> None:
        """Wait while the switch says `stall` (an engine that hangs until it is fixed)."""
        while self.get(key) == "stall":
            await asyncio.sleep(POLL_S)


def write_control(path: Path, **values: str) -> None:
    """Update the control file atomically (the benchmark's side)."""
    current = {}
    if path.exists():
        try:
            current = json.loads(path.read_text(encoding="utf-8") or "{}")
        except ValueError:
            current = {}
    current.update(values)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(current, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)


def garbage_text(length: int = 8) -> str:
    return "".join(random.choice(GARBAGE_CHARACTERS) for _ in range(length))


# -- ASR -------------------------------------------------------------------------------------------


class FaultyAsr:
    """An in-process ASR engine behind the `asr` switch."""

    def __init__(self, inner, control: Control) -> None:
        self.inner = inner
        self.control = control
        self.name = inner.name

    async def warm_up(self) -> None:
        await self.inner.warm_up()

    def open_stream(self, hotwords=()):
        return _FaultyAsrStream(self.inner.open_stream(hotwords), self.control)

    async def close(self) -> None:
        await self.inner.close()


class _FaultyAsrStream:
    def __init__(self, inner, control: Control) -> None:
        self.inner = inner
        self.control = control

    @property
    def capabilities(self) -> AsrCapabilities:
        return AsrCapabilities(speculative_final=False, expedite=self.inner.capabilities.expedite)

    def expedite(self) -> None:
        self.inner.expedite()

    async def _fault(self) -> None:
        await self.control.stalled("asr")
        if self.control.get("asr") == "kill":
            raise AsrUnavailable("in-process ASR engine is down (fault injected)")

    async def push(self, pcm16: bytes):
        await self._fault()
        return await self.inner.push(pcm16)

    async def finish(self):
        await self._fault()
        return await self.inner.finish()

    async def close(self) -> None:
        await self.inner.close()


class ScriptedTranscripts:
    """The real engine decodes every frame; the final text is the benchmark's (`transcript` in the control file)."""

    name = "scripted-transcripts"

    def __init__(self, inner, control: Control) -> None:
        self.inner = inner
        self.control = control

    async def warm_up(self) -> None:
        await self.inner.warm_up()

    def open_stream(self, hotwords=()):
        return _ScriptedStream(self.inner.open_stream(hotwords), self.control)

    async def close(self) -> None:
        await self.inner.close()


class _ScriptedStream:
    def __init__(self, inner, control: Control) -> None:
        self.inner = inner
        self.control = control
        self.pushed = 0

    @property
    def capabilities(self) -> AsrCapabilities:
        return AsrCapabilities(speculative_final=False, expedite=self.inner.capabilities.expedite)

    def expedite(self) -> None:
        self.inner.expedite()

    async def push(self, pcm16: bytes):
        await self.inner.push(pcm16)
        self.pushed += len(pcm16)
        return None

    async def finish(self) -> Transcript:
        await self.inner.finish()
        spoken, self.pushed = self.pushed, 0
        if not spoken:
            return Transcript("", True)
        if self.control.get("asr") == "garbage" or self.control.get("transcript_mode") == "garbage":
            return Transcript(garbage_text(), True)
        return Transcript(self.control.get("transcript", ""), True)

    async def close(self) -> None:
        await self.inner.close()


# -- TTS -------------------------------------------------------------------------------------------


class FaultyTts:
    """An in-process TTS engine (espeak-ng) behind the `tts` switch; same name, voice and rate, so the cache and the
    prerendered prompts are the engine's own."""

    def __init__(self, inner, control: Control) -> None:
        self.inner = inner
        self.control = control
        self.name, self.voice, self.rate = inner.name, inner.voice, inner.rate

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        await self.control.stalled("tts")
        mode = self.control.get("tts")
        if mode == "kill":
            raise TtsUnavailable(f"{self.name} is down (fault injected)")
        async for chunk in self.inner.synthesize(text):
            yield os.urandom(len(chunk)) if mode == "garbage" else chunk


class SpokenLog(ResilientTts):
    """A `ResilientTts` that appends one JSON line per utterance: text, first audio time, bytes, engine."""

    def __init__(self, *args, log_path: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_path = log_path
        self._lock = threading.Lock()

    def synthesize(self, text: str):  # type: ignore[override]
        synthesis = super().synthesize(text)
        return self._logged(text, synthesis)

    async def _logged(self, text: str, synthesis) -> AsyncIterator[bytes]:
        """One line at the first audio (the caller may hang up before the utterance ends), or one at a failure."""
        requested_at, started = time.monotonic(), False
        try:
            async for chunk in synthesis:
                if not started:
                    started = True
                    self._write(text, requested_at, time.monotonic(), synthesis.outcome, None)
                yield chunk
        except TtsUnavailable as exc:
            if not started:
                self._write(text, requested_at, None, synthesis.outcome, str(exc))
            raise
        else:
            if not started:
                self._write(text, requested_at, None, synthesis.outcome, "no audio")

    def _write(self, text: str, requested_at: float, first_at: float | None, outcome, error: str | None) -> None:
        line = {"text": text, "requested_at": requested_at, "first_at": first_at,
                "engine": outcome.engine if outcome else None, "from_cache": outcome.from_cache if outcome else None,
                "fallback_reason": outcome.fallback_reason if outcome else None, "error": error}
        with self._lock, self.log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(line, ensure_ascii=False) + "\n")


# -- the server ------------------------------------------------------------------------------------


def serve_fault_target() -> None:
    """Server entry point (settings from the environment, the control file from FAULT_BENCH_CONTROL)."""
    import uvicorn

    from telephony.app import build_asr
    from telephony.settings import Settings, TtsChoice
    from telephony.web.app import create_app
    from voice.tts import EdgeTtsEngine, EspeakTtsEngine, TtsCache

    settings = Settings()
    control = Control(Path(os.environ[CONTROL_ENV]))
    spoken_log = Path(os.environ[SPOKEN_LOG_ENV])
    asr = ScriptedTranscripts(FaultyAsr(build_asr(settings), control), control)
    cache = TtsCache(settings.data_dir / "tts-cache")
    espeak = FaultyTts(EspeakTtsEngine(), control)
    if settings.tts_engine is TtsChoice.ESPEAK:
        primary = espeak
    else:
        primary = EdgeTtsEngine(settings.tts_voice, settings.tts_rate, endpoint_url=settings.tts_edge_url)
    tts = SpokenLog(primary, espeak, cache, settings.tts_first_audio_deadline_ms, log_path=spoken_log)
    uvicorn.run(create_app(settings, asr=asr, tts=tts), host=settings.host, port=settings.port, log_level="warning",
                ws_per_message_deflate=False)

"""The phone line's TTS: the primary engine under a first-audio deadline, a fallback, a cooldown and cached clauses."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from voice.base import SAMPLE_WIDTH_BYTES, TELEPHONY_RATE_HZ, TtsEngine, TtsUnavailable
from voice.tts.cache import TtsCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthesisOutcome:
    """Where one utterance's audio came from and why."""

    engine: str  # name of the engine whose audio was played
    from_cache: bool
    complete: bool  # False when the primary failed after audio had been sent and the utterance was cut short
    fallback_reason: str | None = None


@dataclass(frozen=True)
class TtsStatus:
    """A `ResilientTts`'s engines and whether its primary is set aside; times are on the `ResilientTts`'s clock."""

    primary: str
    fallback: str
    primary_cooling_down_since: float | None = None  # set aside after repeated failures at this time ...
    primary_cooling_down_until: float | None = None  # ... until this time; both None while the primary is tried

    @property
    def primary_available(self) -> bool:
        return self.primary_cooling_down_until is None


@dataclass(frozen=True)
class PrerenderReport:
    rendered: int
    cached: int
    failed: int
    failed_texts: tuple[str, ...] = ()


Report = Callable[[SynthesisOutcome], None]


class Synthesis(AsyncIterator[bytes]):
    """One utterance's audio from `ResilientTts.synthesize`, and where it came from.

    `outcome` belongs to this utterance alone (concurrent calls share the engine, not the outcome). It is None until
    known: a cached reply knows it before the first chunk, the primary at its first audio (and again if it then fails
    mid-stream), the fallback when it takes over.
    """

    def __init__(self, render: Callable[[Report], AsyncGenerator[bytes, None]]) -> None:
        self.outcome: SynthesisOutcome | None = None
        self._chunks = render(self._report)

    def _report(self, outcome: SynthesisOutcome) -> None:
        self.outcome = outcome

    async def __anext__(self) -> bytes:
        return await anext(self._chunks)

    async def aclose(self) -> None:
        """Stop early (barge-in): the engine's stream is closed and nothing is cached."""
        await self._chunks.aclose()


# Cache writes have threads of their own: the loop's default executor also runs the database's blocking calls, and a
# stalled database fills it; a reply's synthesis ends with its cache write, so it must never queue behind them.
_CACHE_WRITES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tts-cache-write")


async def _store(cache: TtsCache, key: str, pcm: bytes) -> bool:
    """Write off the event loop; a full or read-only disk costs the cache entry, never the call."""
    try:
        await asyncio.get_running_loop().run_in_executor(_CACHE_WRITES, cache.put, key, pcm)
    except OSError as error:
        logger.warning("TTS cache write failed: %s", error)
        return False
    return True


_CLAUSE_END = re.compile(r"(?<=[，；。？！])")


def clauses(text: str) -> list[str]:
    """The text cut after each clause mark (，；。？！), marks kept: the units a reply can be stitched from."""
    return [part for part in _CLAUSE_END.split(text) if part.strip()]


def _engine_key(engine: TtsEngine, text: str) -> str:
    return TtsCache.key_for(engine.name, engine.voice, engine.rate, text)


async def _close_stream(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)  # an AsyncIterator need not have aclose; async generators do
    if close is not None:
        await close()


class ResilientTts:
    """The primary engine with a first-audio deadline, the fallback for whole utterances it misses, and a cache.

    Only complete primary renders are cached (keyed by the primary's name, voice and rate); fallback audio never is.
    A primary that fails after audio was already played cannot be patched mid-sentence: the utterance ends early and
    its `Synthesis.outcome.complete` is False. After `failures_before_cooldown` consecutive primary failures the
    primary is skipped for `primary_cooldown_s`, so callers do not wait for the deadline on every sentence while it is
    down; `status()` shows it.
    """

    name = "resilient"

    def __init__(self, primary: TtsEngine, fallback: TtsEngine, cache: TtsCache | None = None,
                 first_audio_deadline_ms: int = 800, *, cached_chunk_ms: int = 40, failures_before_cooldown: int = 3,
                 primary_cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 fallback_deadline_ms: int | None = None) -> None:
        self.primary, self.fallback, self.cache = primary, fallback, cache
        self.first_audio_deadline_ms, self.cached_chunk_ms = first_audio_deadline_ms, cached_chunk_ms
        # The fallback's first audio: 3× the primary's deadline, at least 2 s (the last engine is given time).
        self.fallback_deadline_ms = fallback_deadline_ms or max(3 * first_audio_deadline_ms, 2000)
        self.failures_before_cooldown, self.primary_cooldown_s, self._clock = failures_before_cooldown, primary_cooldown_s, clock
        self._consecutive_failures = 0
        self._cooldown_since: float | None = None
        self._cooldown_until = -math.inf

    @property
    def voice(self) -> str:
        return self.primary.voice

    @property
    def rate(self) -> str:
        return self.primary.rate

    def status(self) -> TtsStatus:
        """The engines, and since and until when the primary is skipped (None when it is tried)."""
        if self._clock() < self._cooldown_until:
            return TtsStatus(self.primary.name, self.fallback.name, self._cooldown_since, self._cooldown_until)
        return TtsStatus(self.primary.name, self.fallback.name)

    def _primary_failed(self) -> None:
        self._consecutive_failures += 1
        if self._consecutive_failures >= self.failures_before_cooldown:
            self._cooldown_since = self._clock()
            self._cooldown_until = self._cooldown_since + self.primary_cooldown_s
            logger.warning("TTS %s failed %d times in a row; using %s only for %g s",
                           self.primary.name, self._consecutive_failures, self.fallback.name, self.primary_cooldown_s)
            self._consecutive_failures = 0

    def _cached(self, text: str) -> bytes | None:
        """The text's audio from the cache: rendered whole, or stitched from its clauses when every clause is
        cached (a clarifying question naming any two services is then as fast as a fixed prompt)."""
        if self.cache is None:
            return None
        whole = self.cache.get(_engine_key(self.primary, text))
        if whole is not None:
            return whole
        parts = clauses(text)
        if len(parts) < 2:
            return None
        pieces = []
        for part in parts:
            piece = self.cache.get(_engine_key(self.primary, part))
            if piece is None:
                return None
            pieces.append(piece)
        return b"".join(pieces)

    def synthesize(self, text: str) -> Synthesis:
        """The text's audio in 8 kHz PCM chunks; the returned `Synthesis` also says where it came from."""
        return Synthesis(lambda report: self._render(text, report))

    async def _render(self, text: str, report: Report) -> AsyncGenerator[bytes, None]:
        key = _engine_key(self.primary, text)
        cached = self._cached(text)
        if cached is not None:
            report(SynthesisOutcome(self.primary.name, from_cache=True, complete=True))
            step = TELEPHONY_RATE_HZ * self.cached_chunk_ms // 1000 * SAMPLE_WIDTH_BYTES
            for offset in range(0, len(cached), step):
                yield cached[offset:offset + step]
            return
        if self._clock() < self._cooldown_until:
            reason = f"{self.primary.name} is cooling down after repeated failures"
        else:
            stream = self.primary.synthesize(text)
            try:
                try:
                    async with asyncio.timeout(self.first_audio_deadline_ms / 1000):
                        first = await anext(stream)
                except TimeoutError:
                    reason = f"no audio within {self.first_audio_deadline_ms} ms"
                except StopAsyncIteration:
                    reason = "no audio at all"
                except TtsUnavailable as error:
                    reason = str(error)
                else:
                    self._consecutive_failures = 0
                    report(SynthesisOutcome(self.primary.name, from_cache=False, complete=True))
                    pieces = [first]
                    yield first
                    try:
                        async for chunk in stream:
                            pieces.append(chunk)
                            yield chunk
                    except TtsUnavailable as error:
                        played_ms = sum(map(len, pieces)) * 1000 // (TELEPHONY_RATE_HZ * SAMPLE_WIDTH_BYTES)
                        logger.warning("TTS %s failed after %d ms of audio; the utterance ends early: %s",
                                       self.primary.name, played_ms, error)
                        report(SynthesisOutcome(self.primary.name, from_cache=False, complete=False))
                        self._primary_failed()
                        return
                    if self.cache is not None:
                        await _store(self.cache, key, b"".join(pieces))
                    return
            finally:
                await _close_stream(stream)
            self._primary_failed()
        logger.warning("TTS falls back from %s to %s for this utterance: %s", self.primary.name, self.fallback.name, reason)
        report(SynthesisOutcome(self.fallback.name, from_cache=False, complete=True, fallback_reason=reason))
        # The fallback has a first-audio deadline too (a looser one: it is the last engine): a hung fallback (espeak-ng
        # stopped, the disk frozen) fails the utterance, so the call goes on to its next sentence instead of holding
        # dead air for ever.
        stream = self.fallback.synthesize(text)
        try:
            try:
                async with asyncio.timeout(self.fallback_deadline_ms / 1000):
                    first = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise TtsUnavailable(f"both TTS engines failed: {self.primary.name}: {reason}; {self.fallback.name}: "
                                     f"no audio within {self.fallback_deadline_ms} ms") from None
            yield first
            async for chunk in stream:
                yield chunk
        except TtsUnavailable as error:
            if str(error).startswith("both TTS engines failed"):
                raise
            raise TtsUnavailable(f"both TTS engines failed: {self.primary.name}: {reason}; {self.fallback.name}: {error}") from error
        finally:
            await _close_stream(stream)

    async def prerender(self, texts: Iterable[str], concurrency: int = 4) -> PrerenderReport:
        """Render texts with the primary into the cache (no deadline, no fallback); already cached texts are skipped."""
        if self.cache is None:
            raise ValueError("prerender needs a TtsCache")
        cache, semaphore = self.cache, asyncio.Semaphore(concurrency)

        async def render(text: str) -> str:
            key = _engine_key(self.primary, text)
            if cache.get(key) is not None:
                return "cached"
            async with semaphore:
                try:
                    pcm = b"".join([chunk async for chunk in self.primary.synthesize(text)])
                except TtsUnavailable as error:
                    logger.warning("prerender failed for %r: %s", text[:40], error)
                    return "failed"
            return "rendered" if pcm and await _store(cache, key, pcm) else "failed"

        unique = list(dict.fromkeys(text for text in texts if text.strip()))
        outcomes = await asyncio.gather(*(render(text) for text in unique))
        return PrerenderReport(
            rendered=outcomes.count("rendered"), cached=outcomes.count("cached"), failed=outcomes.count("failed"),
            failed_texts=tuple(text for text, outcome in zip(unique, outcomes) if outcome == "failed"))

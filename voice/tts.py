"""Text-to-speech for the phone line: edge-tts and espeak-ng engines, a PCM disk cache and a deadline-driven fallback."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import edge_tts
import edge_tts.communicate
from edge_tts.data_classes import TTSConfig
from edge_tts.exceptions import EdgeTTSException

from voice.audio import Mp3Decoder, Resampler
from voice.base import SAMPLE_WIDTH_BYTES, TELEPHONY_RATE_HZ, AudioFormatError, TtsEngine, TtsUnavailable

logger = logging.getLogger(__name__)

ESPEAK_INSTALL_HINT = "apt-get install espeak-ng"
_STDOUT_READ_BYTES = 8192

# --- Audio conversion at this module's edge (MP3 or WAV in, 8 kHz int16 mono out) -----------------------------------


class _WavStreamToTelephonyPcm:
    """Streamed WAV from espeak-ng (a canonical 44-byte header with unknown sizes, then 16-bit mono PCM) to 8 kHz."""

    _HEADER_BYTES = 44

    def __init__(self) -> None:
        self._buffer = b""
        self._resampler: Resampler | None = None

    def feed(self, data: bytes, last: bool = False) -> bytes:
        self._buffer += data
        if self._resampler is None:
            if len(self._buffer) < self._HEADER_BYTES:
                if last:
                    raise AudioFormatError(f"WAV stream ended inside its header ({len(self._buffer)} bytes)")
                return b""
            header, self._buffer = self._buffer[:self._HEADER_BYTES], self._buffer[self._HEADER_BYTES:]
            audio_format, channels = int.from_bytes(header[20:22], "little"), int.from_bytes(header[22:24], "little")
            if (header[0:4], header[8:16], header[36:40]) != (b"RIFF", b"WAVEfmt ", b"data") or (audio_format, channels,
                                                                                               header[34]) != (1, 1, 16):
                raise AudioFormatError(f"expected a canonical 16-bit mono PCM WAV header, got {header[:40]!r}")
            self._resampler = Resampler(int.from_bytes(header[24:28], "little"), TELEPHONY_RATE_HZ)
        usable = len(self._buffer) - len(self._buffer) % SAMPLE_WIDTH_BYTES
        samples, self._buffer = self._buffer[:usable], self._buffer[usable:]
        converted = self._resampler.process(samples)
        return converted + self._resampler.flush() if last else converted


# --- edge-tts --------------------------------------------------------------------------------------------------------

# edge-tts 7.x reads the module global `edge_tts.communicate.WSS_URL` inside an f-string when it connects. To give
# each engine its own endpoint without mutating that global per call, the global is wrapped once in a str whose
# formatting returns the endpoint stored in a ContextVar; each synthesis runs its Communicate in a task with its own
# context copy, so concurrent engines never see each other's endpoint and code without an override gets the real URL.
_ENDPOINT_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("edge_tts_endpoint_url", default=None)


class _ContextRoutedUrl(str):
    def __format__(self, format_spec: str) -> str:
        override = _ENDPOINT_OVERRIDE.get()
        return format(str(self) if override is None else override, format_spec)


def _install_endpoint_routing() -> None:
    if not isinstance(edge_tts.communicate.WSS_URL, _ContextRoutedUrl):
        edge_tts.communicate.WSS_URL = _ContextRoutedUrl(edge_tts.communicate.WSS_URL)


class EdgeTtsEngine:
    """Microsoft Edge read-aloud voices over edge-tts: 24 kHz MP3 streamed, decoded and resampled to 8 kHz as it arrives."""

    name = "edge"

    def __init__(self, voice: str = "zh-CN-XiaoxiaoNeural", rate: str = "+0%", *, endpoint_url: str | None = None,
                 connect_timeout_s: float = 3.0, receive_timeout_s: float = 5.0, proxy: str | None = None) -> None:
        TTSConfig(voice, rate, "+0%", "+0Hz", "SentenceBoundary")  # raises ValueError on a malformed voice or rate
        if endpoint_url is not None:
            if "?" not in endpoint_url:  # edge-tts appends "&ConnectionId=..." to the URL
                raise ValueError(f"edge-tts endpoint URL must contain a query string: {endpoint_url!r}")
            _install_endpoint_routing()
        self.voice, self.rate, self.endpoint_url, self.proxy = voice, rate, endpoint_url, proxy
        self.connect_timeout_s, self.receive_timeout_s = connect_timeout_s, receive_timeout_s

    def _where(self) -> str:
        return self.endpoint_url.split("?", 1)[0] if self.endpoint_url else "the Microsoft edge-tts service"

    async def _produce(self, text: str, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        communicate = edge_tts.Communicate(
            text, self.voice, rate=self.rate, proxy=self.proxy,
            connect_timeout=max(1, math.ceil(self.connect_timeout_s)),
            receive_timeout=max(1, math.ceil(self.receive_timeout_s)))
        decoder, received_bytes = Mp3Decoder(TELEPHONY_RATE_HZ), 0
        try:
            async for message in communicate.stream():
                if message["type"] == "audio":
                    received_bytes += len(message["data"])
                    if pcm := decoder.feed(message["data"]):
                        queue.put_nowait(pcm)
            if tail := decoder.flush():
                queue.put_nowait(tail)
            # edge-tts 7.x ends quietly when the socket closes after some audio but before turn.end; it only moves a
            # piece's bytes into cumulative_audio_bytes on turn.end, so a shortfall means the audio was cut off.
            if communicate.state.get("cumulative_audio_bytes", received_bytes) != received_bytes:
                raise TtsUnavailable(f"edge-tts stream from {self._where()} ended before turn.end (audio cut off)")
            queue.put_nowait(None)
        except TtsUnavailable as error:
            queue.put_nowait(error)
        except (aiohttp.ClientError, EdgeTTSException, OSError, AudioFormatError) as error:  # OSError covers TimeoutError
            queue.put_nowait(TtsUnavailable(f"edge-tts failed at {self._where()}: {type(error).__name__}: {error}"))
        except Exception as error:  # noqa: BLE001 - an unexpected bug still reaches the consumer instead of hanging it
            queue.put_nowait(error)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        if not text.strip():
            return
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        context = contextvars.copy_context()
        context.run(_ENDPOINT_OVERRIDE.set, self.endpoint_url)
        producer = asyncio.get_running_loop().create_task(self._produce(text, queue), context=context)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.receive_timeout_s):  # edge-tts alone waits 60 s on a silent server
                        item = await queue.get()
                except TimeoutError:
                    raise TtsUnavailable(f"edge-tts sent no audio for {self.receive_timeout_s:g} s from {self._where()}") from None
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()
            await asyncio.wait({producer})


# --- espeak-ng -------------------------------------------------------------------------------------------------------

_DIGIT_READINGS = str.maketrans("0123456789", "零幺二三四五六七八九")  # phone numbers say 幺 for 1
_DECIMAL_DIGIT_READINGS = str.maketrans("0123456789", "零一二三四五六七八九")  # digits after 点 are read one by one
_FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")
_URL = re.compile(r"(?:https?://|www\.)[^\s，。；！？、）)]*", re.IGNORECASE)
_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LINE_MARKERS = re.compile(r"^\s*(?:#+|>+|[-*+]\s|\d+\.\s)\s*", re.MULTILINE)
_SYMBOLS_READ_ALOUD = re.compile(r"[*#_`~|\\<>{}\[\]^=@&$]+")
_HYPHENATED_PHONE = re.compile(r"(?<!\d)(\d{3,4})-(\d{7,8})(?!\d)")
_LONG_DIGITS = re.compile(r"(?<![\d.])\d{7,}(?![\d.元块])")  # phone, ID and account numbers, not amounts
_SERVICE_NUMBER = re.compile(r"(?<![\d.])123\d\d(?![\d.%元块万])")  # 12333, 12345, ... government hotlines
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")


def _digit_groups(digits: str) -> str:
    """Digit by digit in the groups people say: mobile 3-4-4, 7-digit local 3-4, anything else in fours."""
    if len(digits) == 11 and digits.startswith("1"):
        sizes: tuple[int, ...] = (3, 4, 4)
    else:
        sizes = (3, 4) if len(digits) == 7 else (4,) * math.ceil(len(digits) / 4)
    groups, position = [], 0
    for size in sizes:
        groups.append(digits[position:position + size].translate(_DIGIT_READINGS))
        position += size
    return " ".join(group for group in groups if group)


def normalize_text_for_speech(text: str) -> str:
    """Rewrite text so a rule-based synthesizer reads it naturally: numbers as people say them, no URLs or markup."""
    text = text.translate(_FULL_WIDTH_DIGITS)
    text = _MARKDOWN_LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _LINE_MARKERS.sub("", text)
    text = _SYMBOLS_READ_ALOUD.sub(" ", text)
    text = "".join(character for character in text if unicodedata.category(character) != "So")  # emoji
    text = _HYPHENATED_PHONE.sub(lambda match: f"{_digit_groups(match[1])} {_digit_groups(match[2])}", text)
    text = _LONG_DIGITS.sub(lambda match: _digit_groups(match[0]), text)
    text = _SERVICE_NUMBER.sub(lambda match: match[0].translate(_DIGIT_READINGS), text)
    text = _PERCENT.sub(r"百分之\1", text)  # espeak-ng says "percent" in English
    text = _DECIMAL.sub(lambda match: f"{match[1]}点{match[2].translate(_DECIMAL_DIGIT_READINGS)}", text)
    return re.sub(r"\s+", " ", text).strip()


class EspeakTtsEngine:
    """Offline fallback: espeak-ng (formant synthesis, robotic but intelligible) run as a subprocess per utterance."""

    name = "espeak"

    def __init__(self, voice: str = "cmn-latn-pinyin", speed_wpm: int = 200, binary: str = "espeak-ng") -> None:
        # Debian 12's espeak-ng 1.51 reads hanzi as English-spelled pinyin with "-v cmn"; cmn-latn-pinyin has tones right.
        self.voice, self.speed_wpm, self.binary = voice, speed_wpm, binary
        self.rate = f"{speed_wpm}wpm"

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        spoken = normalize_text_for_speech(text)
        if not spoken:
            return
        executable = shutil.which(self.binary)
        if executable is None:
            raise TtsUnavailable(f"espeak-ng binary {self.binary!r} not found; install it with: {ESPEAK_INSTALL_HINT}")
        try:
            process = await asyncio.create_subprocess_exec(
                executable, "-v", self.voice, "-s", str(self.speed_wpm), "--stdout",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as error:
            raise TtsUnavailable(f"cannot start {executable}: {error}; install it with: {ESPEAK_INSTALL_HINT}") from error
        stderr_reader = asyncio.ensure_future(process.stderr.read())
        try:
            process.stdin.write(spoken.encode("utf-8"))  # buffered by the transport: no deadlock with a full stdout pipe
            process.stdin.close()
            converter = _WavStreamToTelephonyPcm()
            while data := await process.stdout.read(_STDOUT_READ_BYTES):
                if pcm := converter.feed(data):
                    yield pcm
            return_code = await process.wait()
            errors = (await stderr_reader).decode("utf-8", "replace").strip()
            if return_code != 0:
                raise TtsUnavailable(f"espeak-ng exited with {return_code} (voice {self.voice!r}): {errors[:200]}")
            if tail := converter.feed(b"", last=True):
                yield tail
        except AudioFormatError as error:
            raise TtsUnavailable(f"espeak-ng output unreadable (voice {self.voice!r}): {error}") from error
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            stderr_reader.cancel()


# --- Cache, fallback and prerendering --------------------------------------------------------------------------------

_CACHE_MAGIC = b"TTSPCM01"  # magic, sha256 of the PCM, then the PCM: a torn or corrupted file fails the digest


class TtsCache:
    """Rendered 8 kHz PCM on disk, one file per (engine, voice, rate, text); optional size cap evicts least recently used."""

    def __init__(self, directory: Path, max_bytes: int | None = None) -> None:
        self.directory, self.max_bytes = Path(directory), max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key_for(engine_name: str, voice: str, rate: str, text: str) -> str:
        identity = json.dumps([engine_name, voice, rate, text], ensure_ascii=False)
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"cache key must be a sha256 hex digest: {key!r}")
        return self.directory / f"{key}.pcm"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:  # an unreadable cache must not stop the call: render again instead
            logger.warning("TTS cache file %s unreadable: %s", path.name, error)
            return None
        header = len(_CACHE_MAGIC) + 32
        pcm = content[header:]
        if (content[:len(_CACHE_MAGIC)] != _CACHE_MAGIC or hashlib.sha256(pcm).digest() != content[len(_CACHE_MAGIC):header]
                or len(pcm) % SAMPLE_WIDTH_BYTES):
            logger.warning("TTS cache file %s is corrupted; it will be rendered again", path.name)
            path.unlink(missing_ok=True)
            return None
        if self.max_bytes is not None:
            os.utime(path)  # recency for eviction
        return pcm

    def put(self, key: str, pcm: bytes) -> None:
        if len(pcm) % SAMPLE_WIDTH_BYTES:
            raise AudioFormatError(f"PCM must be whole int16 samples, got {len(pcm)} bytes")
        path = self._path(key)
        temporary = path.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
        try:
            temporary.write_bytes(_CACHE_MAGIC + hashlib.sha256(pcm).digest() + pcm)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        if self.max_bytes is not None:
            self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        entries = []
        for path in self.directory.glob("*.pcm"):
            try:
                status = path.stat()
            except FileNotFoundError:
                continue
            entries.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda entry: entry[0]):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size


@dataclass(frozen=True)
class SynthesisOutcome:
    """Where the last utterance's audio came from and why."""

    engine: str  # name of the engine whose audio was played
    from_cache: bool
    complete: bool  # False when the primary failed after audio had been sent and the utterance was cut short
    fallback_reason: str | None = None


@dataclass(frozen=True)
class PrerenderReport:
    rendered: int
    cached: int
    failed: int
    failed_texts: tuple[str, ...] = ()


async def _store(cache: TtsCache, key: str, pcm: bytes) -> bool:
    """Write off the event loop; a full or read-only disk costs the cache entry, never the call."""
    try:
        await asyncio.to_thread(cache.put, key, pcm)
    except OSError as error:
        logger.warning("TTS cache write failed: %s", error)
        return False
    return True


_CLAUSE_END = re.compile(r"(?<=[，；。？！])")


def clauses(text: str) -> list[str]:
    """The text cut after each clause mark (，；。？！), marks kept: the units a reply can be stitched from."""
    return [part for part in _CLAUSE_END.split(text) if part.strip()]


def _engine_key(engine: TtsEngine, text: str) -> str:
    return TtsCache.key_for(engine.name, engine.voice, str(getattr(engine, "rate", "")), text)


async def _close_stream(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


class ResilientTts:
    """The primary engine with a first-audio deadline, the fallback for whole utterances it misses, and a cache.

    Only complete primary renders are cached (keyed by the primary's name, voice and rate); fallback audio never is.
    A primary that fails after audio was already played cannot be patched mid-sentence: the utterance ends early and
    `last_outcome.complete` is False. After `failures_before_cooldown` consecutive primary failures the primary is
    skipped for `primary_cooldown_s`, so callers do not wait for the deadline on every sentence while it is down.
    """

    name = "resilient"

    def __init__(self, primary: TtsEngine, fallback: TtsEngine, cache: TtsCache | None = None,
                 first_audio_deadline_ms: int = 800, *, cached_chunk_ms: int = 40, failures_before_cooldown: int = 3,
                 primary_cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.primary, self.fallback, self.cache = primary, fallback, cache
        self.first_audio_deadline_ms, self.cached_chunk_ms = first_audio_deadline_ms, cached_chunk_ms
        self.failures_before_cooldown, self.primary_cooldown_s, self._clock = failures_before_cooldown, primary_cooldown_s, clock
        self.last_outcome: SynthesisOutcome | None = None
        self._consecutive_failures, self._primary_skipped_until = 0, -math.inf

    @property
    def voice(self) -> str:
        return self.primary.voice

    @property
    def last_engine(self) -> str | None:
        return None if self.last_outcome is None else self.last_outcome.engine

    def _primary_failed(self) -> None:
        self._consecutive_failures += 1
        if self._consecutive_failures >= self.failures_before_cooldown:
            self._primary_skipped_until = self._clock() + self.primary_cooldown_s
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

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        key = _engine_key(self.primary, text)
        cached = self._cached(text)
        if cached is not None:
            self.last_outcome = SynthesisOutcome(self.primary.name, from_cache=True, complete=True)
            step = TELEPHONY_RATE_HZ * self.cached_chunk_ms // 1000 * SAMPLE_WIDTH_BYTES
            for offset in range(0, len(cached), step):
                yield cached[offset:offset + step]
            return
        if self._clock() < self._primary_skipped_until:
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
                    self.last_outcome = SynthesisOutcome(self.primary.name, from_cache=False, complete=True)
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
                        self.last_outcome = SynthesisOutcome(self.primary.name, from_cache=False, complete=False)
                        self._primary_failed()
                        return
                    if self.cache is not None:
                        await _store(self.cache, key, b"".join(pieces))
                    return
            finally:
                await _close_stream(stream)
            self._primary_failed()
        logger.warning("TTS falls back from %s to %s for this utterance: %s", self.primary.name, self.fallback.name, reason)
        self.last_outcome = SynthesisOutcome(self.fallback.name, from_cache=False, complete=True, fallback_reason=reason)
        try:
            async for chunk in self.fallback.synthesize(text):
                yield chunk
        except TtsUnavailable as error:
            raise TtsUnavailable(f"both TTS engines failed: {self.primary.name}: {reason}; {self.fallback.name}: {error}") from error

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


def create_tts_engine(kind: str, **options: object) -> TtsEngine:
    """An engine by settings name: "edge" (EdgeTtsEngine options) or "espeak" (EspeakTtsEngine options)."""
    engines = {"edge": EdgeTtsEngine, "espeak": EspeakTtsEngine}
    if kind not in engines:
        raise ValueError(f"unknown TTS engine {kind!r}; choose one of {', '.join(engines)}")
    return engines[kind](**options)

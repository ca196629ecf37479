"""Rendered 8 kHz PCM on disk, one checksummed file per (engine, voice, rate, text), optionally size-capped."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path

from voice.base import SAMPLE_WIDTH_BYTES, AudioFormatError

logger = logging.getLogger(__name__)

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

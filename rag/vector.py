"""The vector channel: item keys and summaries embedded into a chromadb collection per KB version."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import chromadb
import httpx
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.types import EmbeddingFunction
from chromadb.config import Settings as ChromaSettings

from rag.errors import RetrievalError

log = logging.getLogger(__name__)

READ_PAGE = 5_000  # texts per read when the whole collection is read back
RIDGE_ALPHA = 1.0  # the classifier's L2 penalty; embeddings are unit length, so XᵀX's diagonal sums to the text count


@dataclass(frozen=True)
class ItemProfiles:
    item_ids: list[str]
    centroids: np.ndarray  # (items, d): unit-length mean embedding of each item's texts
    classifier: np.ndarray  # (d, items): ridge-regression weights; embedding @ classifier scores every item


# How long one request to a chromadb server may take. chromadb's HTTP client waits without limit, and retrieval
# runs on the call's event loop: a server that accepts and never answers froze every call until it came back
# (`hotline bench faults`, vector stall). A query takes milliseconds; a populate batch of 512 texts well under a
# second. After a timeout the other channels answer alone for VECTOR_RETRY_S (rag/hybrid.py).
HTTP_TIMEOUT_S = 2.0


def chroma_client(path: str | None = None, host: str | None = None, port: int = 8000,
                  timeout_s: float = HTTP_TIMEOUT_S) -> ClientAPI:
    """PersistentClient in a folder (embedded default), HttpClient for a server (each request limited to
    `timeout_s`), or in-memory."""
    settings = ChromaSettings(anonymized_telemetry=False)
    if host:
        client = chromadb.HttpClient(host=host, port=port, settings=settings)
        limit_requests(client, timeout_s)
        return client
    if path:
        return chromadb.PersistentClient(path=path, settings=settings)
    return chromadb.EphemeralClient(settings=settings)


def limit_requests(client: ClientAPI, timeout_s: float) -> None:
    """Give a chromadb HttpClient's httpx session a timeout (chromadb creates it with `timeout=None` and has no
    setting for it)."""
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(timeout_s)


class VectorIndex:
    """One collection holding (text, item id) pairs; queried by embedding, best score per item."""

    def __init__(self, client: ClientAPI, collection_name: str, embedding: EmbeddingFunction) -> None:
        self.embedding = embedding
        # The embedding function is always passed: chroma's own default would try to download a model.
        self.collection = client.get_or_create_collection(
            collection_name, embedding_function=embedding, configuration={"hnsw": {"space": "cosine"}},
        )
        self._count: int | None = None  # texts in the collection, read once: it changes only through populate

    def populate(self, texts: Sequence[str], item_ids: Sequence[str], batch_size: int = 512, progress=None) -> None:
        """Fill an empty collection (a populated one is reused: collections are named by content)."""
        self._count = None
        try:
            if self.collection.count() == len(texts):
                return
            while self.collection.count():
                existing = self.collection.get(include=[], limit=READ_PAGE)["ids"]
                self.collection.delete(ids=existing)
            for start in range(0, len(texts), batch_size):
                end = min(start + batch_size, len(texts))
                self.collection.add(
                    ids=[str(index) for index in range(start, end)],
                    documents=list(texts[start:end]),
                    metadatas=[{"item_id": item_id} for item_id in item_ids[start:end]],
                )
                if progress is not None:
                    progress(end - start)
        except RetrievalError:
            raise
        except httpx.HTTPError as exc:  # a chromadb server that is down, stalled or answers garbage
            raise RetrievalError(f"filling the vector collection failed: {type(exc).__name__}: {exc}") from exc

    def embed(self, text: str) -> np.ndarray:
        try:
            return np.asarray(self.embedding([text])[0], dtype=np.float32)
        except RetrievalError:
            raise
        except Exception as exc:  # noqa: BLE001 - an embedding backend can fail in many ways
            raise RetrievalError(f"embedding the question failed: {exc}") from exc

    def item_profiles(self, ridge_alpha: float = RIDGE_ALPHA) -> ItemProfiles:
        """Per item, from the stored embeddings (read back from the collection once): the unit-length mean of its
        texts, and a one-vs-rest ridge-regression classifier over all texts.

        The classifier has a closed form: W = (XᵀX + αI)⁻¹ XᵀY with Y the one-hot item of each text, and XᵀY is
        just each item's sum of embeddings, so it costs a d×d solve (d = 512), not a pass per item.
        """
        owners: list[str] = []
        pages: list[np.ndarray] = []
        try:
            # In pages: one read of a large collection (the 2.2M-character KB has ~55,000 texts) exceeds the
            # SQLite variable limit of chroma's local store ("too many SQL variables").
            while True:
                stored = self.collection.get(include=["embeddings", "metadatas"], limit=READ_PAGE,
                                             offset=len(owners))
                owners += [str(metadata["item_id"]) for metadata in stored["metadatas"]]
                pages.append(np.asarray(stored["embeddings"], dtype=np.float64))
                if len(stored["metadatas"]) < READ_PAGE:
                    break
        except Exception as exc:  # noqa: BLE001
            raise RetrievalError(f"reading the vector collection failed: {exc}") from exc
        item_ids = sorted(set(owners))
        if not item_ids:
            raise RetrievalError("the vector collection is empty")
        row_of = {item_id: row for row, item_id in enumerate(item_ids)}
        vectors = np.concatenate([page for page in pages if page.size])
        sums = np.zeros((len(item_ids), vectors.shape[1]), dtype=np.float64)
        np.add.at(sums, [row_of[owner] for owner in owners], vectors)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        gram = vectors.T @ vectors + ridge_alpha * np.eye(vectors.shape[1])
        classifier = np.linalg.solve(gram, sums.T)
        return ItemProfiles(item_ids, (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32),
                            classifier.astype(np.float32))

    def nearest(self, embedding: np.ndarray, limit: int = 30) -> dict[str, float]:
        """Cosine similarity (0..1) of the best-matching text of each item among the nearest `limit` texts."""
        try:
            if self._count is None:  # asking chroma for the count costs ~2 ms on a large collection
                self._count = self.collection.count()
            result = self.collection.query(query_embeddings=[embedding], n_results=min(limit, self._count),
                                           include=["metadatas", "distances"])
        except Exception as exc:  # noqa: BLE001 - chroma raises several unrelated types
            raise RetrievalError(f"vector query failed: {exc}") from exc
        best: dict[str, float] = {}
        for metadata, distance in zip(result["metadatas"][0], result["distances"][0], strict=True):
            item_id = str(metadata["item_id"])
            similarity = max(0.0, 1.0 - float(distance))
            if similarity > best.get(item_id, 0.0):
                best[item_id] = similarity
        return best

"""Hybrid retrieval over KB items: BM25 on jieba words, character bigrams and pinyin bigrams, alias
matching (characters and pinyin), and an optional vector channel in chromadb, fused with named weights."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import bm25s
import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from kb.loader import KnowledgeBase
from kb.schema import ServiceItem
from rag.base import ScoredItem
from rag.errors import RetrievalError
from rag.text import SoundCorrector, TextProcessor, register_words
from rag.vector import ItemProfiles, VectorIndex

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)

# Sections that describe what a service *is*; the rest adds noise to the index.
INDEXED_SECTIONS = ("conditions", "materials", "steps", "notes", "faq", "handled_by")
VECTOR_CHANNELS = ("vector", "vector_centroid", "vector_classifier")  # the channels that need an embedding
VECTOR_RETRY_S = 30.0  # after the vector index fails, the other channels answer alone this long before a retry
# How long a question waits for the vector index's nearest texts (milliseconds when it is healthy, local or on a
# chromadb server). Retrieval runs on the call's event loop: a chromadb server that stalls or answers garbage held
# every call for its whole request timeout (`hotline bench faults`, vector stall); past this deadline the question
# is answered by the other channels and the query finishes, or times out, in its thread.
VECTOR_DEADLINE_S = 0.5
_VECTOR_QUERIES = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="vector-query")
SIBLINGS = 30  # the lexical classifier trains each item against this many nearest items (chosen on dev data)
KEY_REPEAT = 3  # keys (title, aliases) are repeated in the BM25 document so they outweigh long sections


@dataclass(frozen=True)
class FusionWeights:
    """How much each channel counts in the fused score; a zero weight switches a channel off.

    The class defaults are hand-set starting points; the weights served are the ones `hotline tune` fits on
    development data (hit@1 over held-out caller questions and their homophone-noise variants), stored in the
    calibration file (`rag.calibration`). alias_match still names the matched key and feeds confidence.
    """

    words_bm25: float = 0.15
    chars_bm25: float = 0.20
    pinyin_bm25: float = 0.15
    alias_match: float = 0.0
    alias_pinyin: float = 0.10
    centroid: float = 0.50
    lexical_classifier: float = 0.0  # per item, a linear SVM against its nearest items' phrasings
    vector: float = 0.40
    vector_centroid: float = 0.0  # the query's embedding against each item's mean embedding
    vector_classifier: float = 0.0  # a ridge-regression classifier over the items' text embeddings

    @classmethod
    def from_mapping(cls, weights: dict[str, float]) -> FusionWeights:
        known = {field.name for field in fields(cls)}
        unknown = set(weights) - known
        if unknown:
            raise RetrievalError(f"unknown retrieval channel(s) {sorted(unknown)}; known: {sorted(known)}")
        if any(value < 0 for value in weights.values()):
            raise RetrievalError("retrieval weights must not be negative")
        return cls(**weights)

    @property
    def uses_vectors(self) -> bool:
        return any(getattr(self, name) > 0 for name in VECTOR_CHANNELS)

    def without_vectors(self) -> FusionWeights:
        return replace(self, **{name: 0.0 for name in VECTOR_CHANNELS})

    def as_dict(self) -> dict[str, float]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def with_overrides(self, overrides: dict[str, float]) -> FusionWeights:
        """These weights with some channels set by name (settings); unknown names and negatives are errors."""
        merged = {**self.as_dict(), **overrides}
        return FusionWeights.from_mapping(merged)


def item_keys(item: ServiceItem) -> list[str]:
    """The short texts a caller's question is matched against: title, aliases, audience phrasings."""
    keys = [item.title, *item.aliases]
    for audience in item.audiences:
        keys.extend(audience.phrasings)
    return keys


def item_phrasings(item: ServiceItem) -> list[str]:
    """Everything that reads like a caller's question about the item: keys, callers' questions, FAQ questions,
    spoken summary."""
    return [*item_keys(item), *item.questions, *re.findall(r"\*\*问：(.+?)\*\*", item.section("faq")), item.spoken]


def item_document(item: ServiceItem) -> str:
    keys = "\n".join(item_keys(item))
    body = "\n".join(item.section(name) for name in INDEXED_SECTIONS)
    return "\n".join([*([keys] * KEY_REPEAT), item.spoken, body])


class _KeyMatcher:
    """Bigram-overlap similarity of a query to every key, maximised per item, with sparse algebra."""

    def __init__(self, key_grams: list[list[str]], key_items: list[int], item_count: int) -> None:
        self.vocabulary: dict[str, int] = {}
        rows, cols = [], []
        for row, grams in enumerate(key_grams):
            for gram in set(grams):
                rows.append(row)
                cols.append(self.vocabulary.setdefault(gram, len(self.vocabulary)))
        shape = (len(key_grams), max(1, len(self.vocabulary)))
        self.matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
        self.key_sizes = np.asarray(self.matrix.sum(axis=1)).ravel()
        order = np.argsort(np.asarray(key_items), kind="stable")
        self.order = order
        sorted_items = np.asarray(key_items)[order]
        self.group_starts = np.searchsorted(sorted_items, np.arange(item_count))
        self.group_sizes = np.diff(np.append(self.group_starts, len(sorted_items)))
        self.key_group = sorted_items  # item of each key, in sorted order
        self.item_count = item_count

    def scores(self, query_grams: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per item: best key similarity (0..1) and the index of that key."""
        columns = sorted({self.vocabulary[gram] for gram in query_grams if gram in self.vocabulary})
        unique_query = len(set(query_grams))
        if not columns or unique_query == 0:
            return np.zeros(self.item_count), np.full(self.item_count, -1)
        shared = np.asarray(self.matrix[:, columns].sum(axis=1)).ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            dice = np.where(self.key_sizes > 0, 2 * shared / (unique_query + self.key_sizes), 0.0)
            covered = np.where(self.key_sizes > 0, shared / self.key_sizes, 0.0)
        per_key = (0.5 * dice + 0.5 * covered)[self.order]
        best = np.maximum.reduceat(per_key, self.group_starts)
        # The first key of each item that reaches the item's best score (np.argmax per item, vectorised).
        at_best = np.flatnonzero(per_key == best[self.key_group])
        groups, first = np.unique(self.key_group[at_best], return_index=True)
        best_key = np.full(self.item_count, -1, dtype=np.int64)
        best_key[groups] = self.order[at_best[first]]
        empty = self.group_sizes == 0
        best[empty] = 0.0  # reduceat repeats the next group's value for an item without keys
        return best, best_key


class _CentroidMatcher:
    """TF-IDF (character 1–3-grams and pinyin bigrams) of each item's phrasings, averaged per item."""

    def __init__(self, phrasings: list[list[str]], text: TextProcessor) -> None:
        self.text = text
        samples = [self.text.normalize(p) for group in phrasings for p in group]
        owners = np.asarray([index for index, group in enumerate(phrasings) for _ in group])
        self.chars = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
        self.sounds = TfidfVectorizer(analyzer=str.split, sublinear_tf=True, token_pattern=None)
        self.matrix = self._features(samples, fit=True)  # one row per phrasing
        self.owners = owners
        rows = sparse.csr_matrix((np.ones(len(owners)), (owners, np.arange(len(owners)))),
                                 shape=(len(phrasings), len(owners)))
        self.centroids = normalize(rows @ self.matrix)
        self._centroids_t = self.centroids.T.tocsr()  # transposed once, not per query (the conversion dominated)

    def _features(self, texts: list[str], fit: bool = False) -> sparse.csr_matrix:
        sounds = [" ".join(self.text.pinyin_bigrams_of_normalized(t)) or "∅" for t in texts]
        if fit:
            return normalize(sparse.hstack([self.chars.fit_transform(texts), self.sounds.fit_transform(sounds)]).tocsr())
        return normalize(sparse.hstack([self.chars.transform(texts), self.sounds.transform(sounds)]).tocsr())

    def query_features(self, normalized_query: str) -> sparse.csr_matrix:
        return self._features([normalized_query])

    def scores(self, query: sparse.csr_matrix) -> np.ndarray:
        return np.asarray((query @ self._centroids_t).todense()).ravel()


class _SiblingClassifier:
    """A linear SVM per item that tells its phrasings from those of its nearest items (by centroid cosine).

    The lexical channels score what a question shares with each item; this one learns, from the callers' questions,
    which words tell an item from its siblings (给孩子 vs 成人, 单位 vs 个人, 补办 vs 挂失). Training against the
    `neighbours` nearest items only, not all of them, keeps the build linear in the number of items (a full
    one-vs-rest over the 2.2M-character KB took minutes) and loses nothing on the development questions.
    """

    def __init__(self, matcher: _CentroidMatcher, neighbours: int = SIBLINGS, regularization: float = 2.0) -> None:
        count = matcher.centroids.shape[0]
        owners = matcher.owners
        rows_of = [np.flatnonzero(owners == index) for index in range(count)]
        centroids_t = matcher.centroids.T.tocsr()
        keep = min(neighbours, count - 1)
        coefficients, self.bias = [], np.zeros(count)
        for index in range(count):
            similarity = np.asarray((matcher.centroids[index] @ centroids_t).todense()).ravel()
            similarity[index] = -np.inf
            nearest = np.argpartition(-similarity, keep - 1)[:keep] if keep > 0 else []
            rows = np.concatenate([rows_of[index], *(rows_of[other] for other in nearest)]).astype(np.int64)
            labels = (owners[rows] == index).astype(np.int64)
            if len(rows_of[index]) == 0 or labels.all():
                coefficients.append(sparse.csr_matrix((1, matcher.matrix.shape[1])))
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # liblinear's convergence notice on tiny, separable problems
                model = LinearSVC(C=regularization, random_state=0).fit(matcher.matrix[rows], labels)
            coefficients.append(sparse.csr_matrix(model.coef_.astype(np.float32)))
            self.bias[index] = float(model.intercept_[0])
        self.weights_t = sparse.vstack(coefficients).T.tocsr()  # features x items

    def scores(self, query: sparse.csr_matrix) -> np.ndarray:
        """Per item: exp(margin - best margin), 1.0 for the item whose classifier is surest; zeros for a query with
        no known feature (the biases alone would pick an item)."""
        if query.nnz == 0:
            return np.zeros(len(self.bias))
        # The rows of the query's features, weighted: ~30x faster than a sparse-by-sparse product on 1,287 items.
        margins = self.weights_t[query.indices].T @ query.data + self.bias
        return np.exp(margins - margins.max())


@dataclass(frozen=True)
class ChannelScores:
    channels: dict[str, np.ndarray]  # channel name -> per-item score
    best_keys: np.ndarray  # per item: index of the best-matching key, -1 for none
    cosine: np.ndarray  # per item: raw centroid cosine (absolute, for confidence)


class HybridRetriever:
    def __init__(self, kb: KnowledgeBase, text: TextProcessor, weights: FusionWeights,
                 vector: VectorIndex | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.kb = kb
        self.text = text
        self.weights = weights
        self.clock = clock  # seconds, for the vector channel's back-off
        self.vector = vector if weights.uses_vectors else None
        self.items = list(kb.items)
        if not self.items:
            raise RetrievalError("the knowledge base has no items to retrieve from")
        register_words(key for item in self.items for key in item_keys(item) if 2 <= len(key) <= 6)
        documents = [self.text.normalize(item_document(item)) for item in self.items]
        self._words = self._bm25([self.text.words_of_normalized(doc) for doc in documents])
        self._chars = self._bm25([self.text.bigrams_of_normalized(doc) for doc in documents])
        self._pinyin = self._bm25([self.text.pinyin_bigrams_of_normalized(doc) for doc in documents])
        self.keys: list[str] = []
        key_items: list[int] = []
        for index, item in enumerate(self.items):
            for key in item_keys(item):
                self.keys.append(key)
                key_items.append(index)
        normalized_keys = [self.text.normalize(key) for key in self.keys]
        self._alias_chars = _KeyMatcher([self.text.bigrams_of_normalized(k) for k in normalized_keys], key_items, len(self.items))
        self._alias_pinyin = _KeyMatcher([self.text.pinyin_bigrams_of_normalized(k) for k in normalized_keys], key_items,
                                         len(self.items))
        self._centroids = _CentroidMatcher([item_phrasings(item) for item in self.items], self.text)
        self._siblings = _SiblingClassifier(self._centroids)
        lexicon = self.text.lexicon
        self._sounds = SoundCorrector([*lexicon.hotwords, *lexicon.synonyms, *lexicon.synonyms.values(),
                                       *lexicon.domain_terms, *self.keys])
        self._index_of = {item.id: index for index, item in enumerate(self.items)}
        self._profiles: tuple[VectorIndex, np.ndarray, ItemProfiles] | None = None
        self._vector_down_until = 0.0  # on `clock`; a failing index (chroma down) is not retried on every query

    @staticmethod
    def _bm25(corpus: list[list[str]]) -> bm25s.BM25:
        index = bm25s.BM25()
        index.index([tokens or ["∅"] for tokens in corpus], show_progress=False)
        return index

    def vector_documents(self) -> tuple[list[str], list[str]]:
        """(text, item id) pairs for the vector channels: every phrasing of each item (`item_phrasings`)."""
        texts, item_ids = [], []
        for item in self.items:
            for key in item_phrasings(item):
                texts.append(self.text.normalize(key))
                item_ids.append(item.id)
        return texts, item_ids

    def channel_scores(self, query: str) -> ChannelScores:
        """Each channel's per-item score (0..1 within the channel), the best-matching alias key per item and the
        raw centroid cosine per item."""
        normalized = self.text.normalize(self._sounds.correct(self.text.normalize(query)))
        words = self.text.words_of_normalized(normalized)
        grams = self.text.bigrams_of_normalized(normalized)
        syllables = self.text.pinyin_bigrams_of_normalized(normalized)
        count = len(self.items)
        channels: dict[str, np.ndarray] = {}
        channels["words_bm25"] = self._normalized(self._words.get_scores(words)) if words else np.zeros(count)
        channels["chars_bm25"] = self._normalized(self._chars.get_scores(grams)) if grams else np.zeros(count)
        channels["pinyin_bm25"] = self._normalized(self._pinyin.get_scores(syllables)) if syllables else np.zeros(count)
        channels["alias_match"], best_keys = self._alias_chars.scores(grams)
        channels["alias_pinyin"], _ = self._alias_pinyin.scores(syllables)
        query_features = self._centroids.query_features(normalized)
        cosine = self._centroids.scores(query_features)
        channels["centroid"] = self._normalized(cosine)
        channels["lexical_classifier"] = self._siblings.scores(query_features)
        vector_scores, vector_centroid, vector_classifier = np.zeros(count), np.zeros(count), np.zeros(count)
        if self.vector is not None and normalized.strip() and self.clock() >= self._vector_down_until:
            try:
                embedding = self.vector.embed(normalized)
                for item_id, similarity in self._nearest(embedding).items():
                    if item_id in self._index_of:
                        vector_scores[self._index_of[item_id]] = similarity
                rows, profiles = self._vector_profiles()
                vector_centroid[rows] = np.clip(profiles.centroids @ embedding, 0.0, 1.0)
                vector_classifier[rows] = embedding @ profiles.classifier
                vector_classifier = self._normalized(np.clip(vector_classifier, 0.0, None))
            except RetrievalError as exc:
                self._vector_down_until = self.clock() + VECTOR_RETRY_S
                log.warning("vector channel skipped for %.0f s: %s", VECTOR_RETRY_S, exc)
        channels["vector"] = vector_scores
        channels["vector_centroid"] = vector_centroid
        channels["vector_classifier"] = vector_classifier
        return ChannelScores(channels, best_keys, cosine)

    def _nearest(self, embedding: np.ndarray) -> dict[str, float]:
        query = _VECTOR_QUERIES.submit(self.vector.nearest, embedding)
        try:
            return query.result(timeout=VECTOR_DEADLINE_S)
        except concurrent.futures.TimeoutError:
            raise RetrievalError(f"the vector index gave no answer within {VECTOR_DEADLINE_S:g} s") from None

    def _vector_profiles(self) -> tuple[np.ndarray, ItemProfiles]:
        """(item rows, profiles) of the items the vector collection holds, computed once per index."""
        vector = self.vector
        if self._profiles is None or self._profiles[0] is not vector:
            profiles = vector.item_profiles()
            known = [n for n, item_id in enumerate(profiles.item_ids) if item_id in self._index_of]
            rows = np.asarray([self._index_of[profiles.item_ids[n]] for n in known], dtype=np.int64)
            profiles = ItemProfiles([profiles.item_ids[n] for n in known], profiles.centroids[known],
                                    profiles.classifier[:, known])
            self._profiles = (vector, rows, profiles)
        return self._profiles[1], self._profiles[2]

    def retrieve(self, query: str, limit: int = 5, on: dt.date | None = None) -> list[ScoredItem]:
        """Rank the items in effect on `on` (today by default) for the query; [] for an empty query."""
        if not self.text.normalize(query).strip():
            return []
        return self.rank(self.channel_scores(query), limit, on)

    def rank(self, scored: ChannelScores, limit: int = 5, on: dt.date | None = None) -> list[ScoredItem]:
        """Fuse channel scores with the current weights into the ranked items in effect on `on`."""
        channels, best_keys, cosine = scored.channels, scored.best_keys, scored.cosine
        weights = self.weights.as_dict()
        fused = sum(weights[name] * scores for name, scores in channels.items())
        day = on or dt.date.today()
        ranked = []
        for index in np.argsort(-fused, kind="stable"):
            item = self.items[index]
            if not item.is_effective(day):
                continue
            key_index = int(best_keys[index])
            scores = {name: float(values[index]) for name, values in channels.items()}
            scores["centroid_cosine"] = float(cosine[index])  # absolute, for confidence; not fused
            ranked.append(ScoredItem(item.id, float(fused[index]), scores,
                                     self.keys[key_index] if key_index >= 0 else None))
            if len(ranked) == limit:
                break
        return ranked

    @staticmethod
    def _normalized(scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        top = float(scores.max()) if scores.size else 0.0
        return scores / top if top > 0 else np.zeros_like(scores)

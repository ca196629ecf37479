"""Lexical retrieval over KB items: BM25 on jieba words, BM25 on character bigrams, alias matching."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rank_bm25 import BM25Okapi

from kb.loader import KnowledgeBase
from kb.schema import ServiceItem
from rag.base import ScoredItem
from rag.text import TextProcessor, register_words

# Sections that describe what a service *is*; long procedural sections add noise to the index.
INDEXED_SECTIONS = ("conditions", "materials", "steps", "notes", "faq", "handled_by")


@dataclass(frozen=True)
class LexicalWeights:
    """How much each lexical channel counts in the fused score (they need not sum to 1)."""

    words_bm25: float = 0.35
    chars_bm25: float = 0.25
    alias_match: float = 0.40


def item_keys(item: ServiceItem) -> list[str]:
    """The short texts a caller's question is matched against: title, aliases, audience phrasings."""
    keys = [item.title, *item.aliases]
    for audience in item.audiences:
        keys.extend(audience.phrasings)
    return keys


def item_document(item: ServiceItem) -> str:
    """The text indexed for BM25; the keys are repeated so that they outweigh long sections."""
    keys = "\n".join(item_keys(item))
    body = "\n".join(item.section(name) for name in INDEXED_SECTIONS)
    return "\n".join([keys, keys, keys, item.spoken, body])


def _coverage(query_grams: set[str], key_grams: set[str]) -> float:
    """Dice overlap of two bigram sets, weighted towards covering the whole key."""
    if not query_grams or not key_grams:
        return 0.0
    shared = len(query_grams & key_grams)
    dice = 2 * shared / (len(query_grams) + len(key_grams))
    key_covered = shared / len(key_grams)
    return 0.5 * dice + 0.5 * key_covered


class LexicalRetriever:
    """BM25 (words and bigrams) plus alias similarity, fused with named weights."""

    def __init__(self, kb: KnowledgeBase, text: TextProcessor, weights: LexicalWeights = LexicalWeights()) -> None:
        self.kb = kb
        self.text = text
        self.weights = weights
        self.items = list(kb.items)
        register_words(key for item in self.items for key in item_keys(item) if len(key) <= 6)
        documents = [item_document(item) for item in self.items]
        self._words_index = BM25Okapi([text.words(doc) or ["∅"] for doc in documents])
        self._chars_index = BM25Okapi([text.bigrams(doc) or ["∅"] for doc in documents])
        self._keys = [
            [(key, set(text.bigrams(key))) for key in item_keys(item)] for item in self.items
        ]

    def retrieve(self, query: str, limit: int = 5, on: dt.date | None = None) -> list[ScoredItem]:
        """Rank the items in effect on `on` (today by default) for the query."""
        query_words = self.text.words(query)
        query_grams = self.text.bigrams(query)
        if not query_words and not query_grams:
            return []
        word_scores = self._normalized(self._words_index.get_scores(query_words)) if query_words else None
        char_scores = self._normalized(self._chars_index.get_scores(query_grams)) if query_grams else None
        gram_set = set(query_grams)
        day = on or dt.date.today()
        results = []
        for index, item in enumerate(self.items):
            if not item.is_effective(day):
                continue
            best_alias, alias_score = None, 0.0
            for key, key_grams in self._keys[index]:
                score = _coverage(gram_set, key_grams)
                if score > alias_score:
                    best_alias, alias_score = key, score
            channels = {
                "words_bm25": float(word_scores[index]) if word_scores is not None else 0.0,
                "chars_bm25": float(char_scores[index]) if char_scores is not None else 0.0,
                "alias_match": alias_score,
            }
            fused = sum(getattr(self.weights, name) * value for name, value in channels.items())
            results.append(ScoredItem(item.id, fused, channels, best_alias))
        results.sort(key=lambda scored: scored.score, reverse=True)
        return results[:limit]

    @staticmethod
    def _normalized(scores) -> list[float]:
        top = float(max(scores)) if len(scores) else 0.0
        if top <= 0:
            return [0.0] * len(scores)
        return [float(score) / top for score in scores]

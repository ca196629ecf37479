"""Calibrated confidence: a logistic model over retrieval features, fitted on development data (`hotline tune`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rag.base import ScoredItem

FEATURES = ("fused", "lead", "gap", "alias_match", "alias_pinyin", "vector", "vector_gap", "cosine", "cosine_gap",
            "words_bm25_second", "vector_centroid", "vector_centroid_gap", "lexical_classifier",
            "lexical_classifier_second")


def score_lead(ranked: Sequence[ScoredItem]) -> float:
    """How far the top item leads the runner-up, as a share of the top score: 1.0 when there is no runner-up (or
    the top score is not positive), 0.0 for a tie."""
    if len(ranked) < 2 or ranked[0].score <= 0:
        return 1.0
    return (ranked[0].score - ranked[1].score) / ranked[0].score


def features(ranked: list[ScoredItem]) -> list[float]:
    """What the model sees: the top candidate's channel scores and its lead over the runner-up."""
    if not ranked:
        return [0.0] * len(FEATURES)
    top = ranked[0]
    second = ranked[1] if len(ranked) > 1 else None

    def channel(scored: ScoredItem | None, name: str) -> float:
        return scored.channel_scores.get(name, 0.0) if scored is not None else 0.0

    return [
        top.score,
        score_lead(ranked),
        top.score - (second.score if second is not None else 0.0),
        channel(top, "alias_match"),
        channel(top, "alias_pinyin"),
        channel(top, "vector"),
        channel(top, "vector") - channel(second, "vector"),
        channel(top, "centroid_cosine"),
        channel(top, "centroid_cosine") - channel(second, "centroid_cosine"),
        channel(second, "words_bm25"),
        channel(top, "vector_centroid"),
        channel(top, "vector_centroid") - channel(second, "vector_centroid"),
        channel(top, "lexical_classifier"),
        channel(second, "lexical_classifier"),
    ]


@dataclass(frozen=True)
class ConfidenceModel:
    weights: tuple[float, ...]
    bias: float

    def __call__(self, ranked: list[ScoredItem]) -> float:
        return self.probability(features(ranked)) if ranked else 0.0

    def probability(self, row: list[float]) -> float:
        z = self.bias + sum(w * x for w, x in zip(self.weights, row, strict=True))
        return 1.0 / (1.0 + math.exp(-z))


def fit(samples: list[list[float]], labels: list[int], regularization: float = 1.0) -> ConfidenceModel:
    """L2-regularised logistic regression on standardised features, folded back into raw-feature weights."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(set(y.tolist())) < 2:
        raise ValueError("calibration needs both right and wrong top answers in the labelled set")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=regularization, max_iter=5000).fit((x - mean) / scale, y)
    weights = model.coef_[0] / scale
    bias = float(model.intercept_[0] - np.sum(model.coef_[0] * mean / scale))
    return ConfidenceModel(tuple(float(w) for w in weights), bias)

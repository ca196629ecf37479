"""Calibrated confidence: a logistic model over retrieval features, fitted on the labelled set."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.base import ScoredItem

DEFAULT_CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration.json"
FEATURES = ("fused", "lead", "alias_match", "alias_pinyin", "vector", "words_bm25_second")


def features(ranked: list[ScoredItem]) -> list[float]:
    """What the model sees: the top candidate's channel scores and its lead over the runner-up."""
    if not ranked:
        return [0.0] * len(FEATURES)
    top = ranked[0]
    second = ranked[1] if len(ranked) > 1 else None
    lead = (top.score - second.score) / top.score if second is not None and top.score > 0 else 1.0
    return [
        top.score,
        lead,
        top.channel_scores.get("alias_match", 0.0),
        top.channel_scores.get("alias_pinyin", 0.0),
        top.channel_scores.get("vector", 0.0),
        second.channel_scores.get("words_bm25", 0.0) if second is not None else 0.0,
    ]


@dataclass(frozen=True)
class ConfidenceModel:
    weights: tuple[float, ...]
    bias: float

    def __call__(self, ranked: list[ScoredItem]) -> float:
        if not ranked:
            return 0.0
        z = self.bias + sum(w * x for w, x in zip(self.weights, features(ranked), strict=True))
        return 1.0 / (1.0 + math.exp(-z))

    @classmethod
    def load(cls, path: Path = DEFAULT_CALIBRATION_FILE) -> ConfidenceModel:
        if not path.exists():
            return cls.default()
        data = json.loads(path.read_text(encoding="utf-8"))
        if tuple(data.get("features", ())) != FEATURES:
            return cls.default()
        return cls(tuple(float(w) for w in data["weights"]), float(data["bias"]))

    @classmethod
    def default(cls) -> ConfidenceModel:
        # Hand-set before any calibration: alias agreement and a clear lead drive confidence.
        return cls((2.0, 3.0, 4.0, 1.0, 1.0, -0.5), -4.0)

    def save(self, path: Path = DEFAULT_CALIBRATION_FILE, samples: int = 0) -> None:
        path.write_text(json.dumps({"features": FEATURES, "weights": self.weights, "bias": self.bias,
                                    "samples": samples}, indent=1), encoding="utf-8")


def fit(samples: list[list[float]], labels: list[int], epochs: int = 4000, rate: float = 0.5,
        l2: float = 0.01) -> ConfidenceModel:
    """Plain logistic regression by gradient descent (few features, a few hundred samples)."""
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    weights = np.zeros(x.shape[1])
    bias = 0.0
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        gradient = x.T @ (p - y) / len(y) + l2 * weights
        weights -= rate * gradient
        bias -= rate * float(np.mean(p - y))
    return ConfidenceModel(tuple(float(w) for w in weights), bias)

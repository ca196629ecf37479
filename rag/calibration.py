"""The retrieval calibration `hotline tune` fits on development data: fusion weights and the confidence model, one file.

The file travels with the KB build it was fitted for (`kb/builds.py`); whoever builds the answer stack loads it and
passes both halves in, so no retriever or engine reads a file by itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rag.confidence import FEATURES, ConfidenceModel
from rag.errors import CalibrationError, RetrievalError
from rag.hybrid import FusionWeights


@dataclass(frozen=True)
class Calibration:
    weights: FusionWeights  # how much each retrieval channel counts
    confidence: ConfidenceModel  # fitted on rankings made with these weights: the two belong together


def load_calibration(path: Path) -> Calibration:
    """The calibration stored at `path`; CalibrationError names the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CalibrationError(f"calibration {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CalibrationError(f"calibration {path} is not a JSON object")
    if tuple(data.get("features") or ()) != FEATURES:
        raise CalibrationError(f"calibration {path} was fitted on other confidence features "
                               f"({data.get('features')}); run `hotline tune` again")
    try:
        weights = tuple(float(weight) for weight in data["weights"])
        bias = float(data["bias"])
        fusion = {name: float(value) for name, value in data["fusion_weights"].items()}
        if len(weights) != len(FEATURES):
            raise ValueError(f"{len(weights)} confidence weights for {len(FEATURES)} features")
        fusion_weights = FusionWeights.from_mapping(fusion)
    except KeyError as exc:
        raise CalibrationError(f"calibration {path} has no {exc.args[0]!r}") from exc
    except (TypeError, ValueError, AttributeError, RetrievalError) as exc:
        raise CalibrationError(f"calibration {path}: {exc}") from exc
    return Calibration(fusion_weights, ConfidenceModel(weights, bias))


def save_calibration(calibration: Calibration, path: Path, samples: int = 0) -> None:
    """Write the calibration (`samples`: how many development rankings the confidence model was fitted on)."""
    data = {"features": FEATURES, "weights": calibration.confidence.weights, "bias": calibration.confidence.bias,
            "samples": samples, "fusion_weights": calibration.weights.as_dict()}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

"""The calibration file: the shipped one loads, a written one reads back the same, a bad one fails by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb.builds import DEFAULT_CALIBRATION_FILE
from rag.calibration import Calibration, load_calibration, save_calibration
from rag.confidence import FEATURES, ConfidenceModel
from rag.errors import CalibrationError
from rag.hybrid import FusionWeights


def shipped_data() -> dict:
    return json.loads(DEFAULT_CALIBRATION_FILE.read_text(encoding="utf-8"))


def test_the_shipped_calibration_loads_as_written() -> None:
    data = shipped_data()
    calibration = load_calibration(DEFAULT_CALIBRATION_FILE)
    assert calibration.weights.as_dict() == data["fusion_weights"]
    assert calibration.confidence == ConfidenceModel(tuple(data["weights"]), data["bias"])


def test_a_saved_calibration_reads_back_the_same(tmp_path: Path) -> None:
    calibration = Calibration(FusionWeights(vector=0.0, centroid=1.5),
                              ConfidenceModel(tuple(float(n) for n in range(len(FEATURES))), -2.5))
    path = tmp_path / "calibration.json"
    save_calibration(calibration, path, samples=12)
    assert load_calibration(path) == calibration
    assert json.loads(path.read_text(encoding="utf-8"))["samples"] == 12


def test_the_shipped_file_is_byte_for_byte_what_save_writes(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    save_calibration(load_calibration(DEFAULT_CALIBRATION_FILE), path, samples=shipped_data()["samples"])
    assert path.read_bytes() == DEFAULT_CALIBRATION_FILE.read_bytes()


def broken(tmp_path: Path, change) -> Path:
    data = shipped_data()
    change(data)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda data: data.update(features=["fused", "lead"]), "was fitted on other confidence features"),
    (lambda data: data.pop("bias"), "has no 'bias'"),
    (lambda data: data.pop("fusion_weights"), "has no 'fusion_weights'"),
    (lambda data: data.update(weights=[1.0, 2.0]), "2 confidence weights for 14 features"),
    (lambda data: data["fusion_weights"].update(telepathy=1.0), "unknown retrieval channel(s) ['telepathy']"),
    (lambda data: data["fusion_weights"].update(vector=-1.0), "retrieval weights must not be negative"),
    (lambda data: data.update(bias="high"), "could not convert string to float: 'high'"),
])
def test_a_bad_calibration_names_the_file_and_the_fault(tmp_path: Path, change, message: str) -> None:
    path = broken(tmp_path, change)
    with pytest.raises(CalibrationError) as raised:
        load_calibration(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_a_missing_or_garbled_calibration_file_is_a_calibration_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="cannot read calibration .*missing.json: No such file"):
        load_calibration(tmp_path / "missing.json")
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json", encoding="utf-8")
    with pytest.raises(CalibrationError, match="garbled.json is not JSON"):
        load_calibration(garbled)
    listed = tmp_path / "list.json"
    listed.write_text("[]", encoding="utf-8")
    with pytest.raises(CalibrationError, match="list.json is not a JSON object"):
        load_calibration(listed)

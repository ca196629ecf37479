"""`hotline tune`: fusion weights and the confidence model from held-out KB questions, never the eval set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb.lexicon import load_lexicon
from kb.loader import load_knowledge_base
from rag.evaluation import tuning
from kb.builds import DEFAULT_CALIBRATION_FILE
from rag.calibration import load_calibration
from tests.kbfixtures import CARD_QUESTIONS, PENSION_QUESTIONS, make_mini_kb, make_tunable_kb

@pytest.fixture()
def tuned_kb(tmp_path: Path):
    kb = load_knowledge_base(make_tunable_kb(tmp_path / "items"))
    assert not kb.errors
    return kb


def test_folds_hold_out_each_question_exactly_once(tuned_kb) -> None:
    folds = tuning.folds_of(tuned_kb, 3)
    questions = [case.question for fold in folds for case in fold]
    assert sorted(questions) == sorted(CARD_QUESTIONS + PENSION_QUESTIONS)
    assert [len(fold) for fold in folds] == [4, 4, 4]
    held_out = {case.question for case in folds[0]}
    remaining = tuning.without_questions(tuned_kb, held_out)
    kept = [q for item in remaining.items for q in item.questions]
    assert len(kept) == 8 and not held_out & set(kept)


def test_tune_writes_weights_and_model_from_dev_data_only(tuned_kb, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    dev = tmp_path / "devset"
    dev.mkdir()
    (dev / "out_of_scope.yaml").write_text(
        "- {q: 明天桂林下不下雨, expect: [handoff], category: out_of_scope}\n"
        "- {q: 驾驶证到期了去哪换, expect: [handoff], category: out_of_scope}\n"
        "- {q: 你给我讲个笑话, expect: [handoff], category: out_of_scope}\n"
        "- {q: 商业养老保险哪家公司的好, expect: [handoff], category: out_of_scope}\n"
        "- {q: 帮我转人工, expect: [handoff], category: human_request}\n", encoding="utf-8")
    read_sets: list[Path] = []
    real_loader = tuning.load_eval_set
    monkeypatch.setattr(tuning, "load_eval_set", lambda path: read_sets.append(path) or real_loader(path))
    output = tmp_path / "calibration.json"

    shipped = load_calibration(DEFAULT_CALIBRATION_FILE)
    report = tuning.tune(tuned_kb, load_lexicon(), start=shipped.weights, output=output, folds=2, with_vectors=False,
                         dev_set=dev)

    assert read_sets == [dev]  # the evaluation set is never read
    assert report["questions"] == {"kb_question": 12, "kb_question_noise": 12, "out_of_scope": 4, "human_request": 1}
    # The engine's rules settle the human request and the three questions naming nothing the hotline deals with
    # before any gate, so the confidence model sees only the 24 KB questions and 商业养老保险.
    assert report["confidence_samples"] == 25
    stored = json.loads(output.read_text(encoding="utf-8"))
    assert stored["fusion_weights"] == report["fusion_weights"] and stored["samples"] == 25
    assert stored["fusion_weights"]["vector"] == stored["fusion_weights"]["vector_centroid"] == 0.0  # no vectors
    calibration = load_calibration(output)
    assert calibration.weights.as_dict() == report["fusion_weights"]
    assert calibration.confidence.weights == tuple(stored["weights"])
    assert len(stored["weights"]) == len(stored["features"])
    assert calibration.confidence != shipped.confidence
    # Two clearly different services: held-out questions land on their own item.
    assert report["dev_hit_at_1"] >= 0.9
    # The low-gate table: one row per candidate gate, shares that only grow with the gate.
    handoff = report["handoff_gates"]
    assert [row["gate"] for row in handoff] == list(tuning.HANDOFF_GATE_STEPS)
    for name in ("answerable_handed_off", "out_of_scope_handed_off"):
        shares = [row[name] for row in handoff]
        assert all(0.0 <= share <= 1.0 for share in shares) and shares == sorted(shares)


def test_handoff_gate_table_counts_each_kind_of_question_below_the_gate() -> None:
    table = tuning.handoff_gate_table([0.05, 0.12, 0.3, 0.9, 0.08, 0.5], [False, False, False, False, True, True])
    rows = {row["gate"]: row for row in table}
    assert rows[0.1] == {"gate": 0.1, "answerable_handed_off": 0.25, "out_of_scope_handed_off": 0.5}
    assert rows[0.15]["answerable_handed_off"] == 0.5 and rows[0.4]["answerable_handed_off"] == 0.75
    assert rows[0.4]["out_of_scope_handed_off"] == 0.5
    assert tuning.handoff_gate_table([0.2], [False])[0]["out_of_scope_handed_off"] is None


def test_tune_refuses_a_kb_without_caller_questions(tmp_path: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    with pytest.raises(ValueError, match="too few caller questions"):
        tuning.tune(kb, load_lexicon(), start=load_calibration(DEFAULT_CALIBRATION_FILE).weights,
                    output=tmp_path / "c.json", folds=2, with_vectors=False)

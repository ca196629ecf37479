"""Tuning on development data only (`hotline tune`): fusion weights and the confidence model.

The labelled set in `rag/evaluation/evalset/` is the test set and is never used here. Development data:

- the callers' questions in the KB items (`questions:`), held out by folds: for each fold the retriever is built
  without that fold's questions and ranks them, so every question is scored by a retriever that never saw it;
- the same questions with homophone noise (`rag/evaluation/asr_noise.py`, its own seed);
- `rag/evaluation/devset/*.yaml`: questions no item answers (expected `handoff`), for the confidence gate's negatives.

The result is a calibration file (`rag.calibration`): the fusion weights (`fusion_weights`) and the logistic
confidence model fitted on the out-of-fold rankings with those weights. `hotline tune` writes it to
`<data_dir>/calibration.json`, where the next `hotline kb build` takes it from; the shipped `kb/calibration.json` is
updated only when a developer asks for it (`--output kb/calibration.json`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from chromadb.api.types import EmbeddingFunction

from kb.lexicon import Lexicon
from kb.loader import KnowledgeBase
from rag.calibration import Calibration, save_calibration
from rag.confidence import features, fit
from rag.embeddings import MultilingualUseEmbedding
from rag.engine import reaches_the_gates
from rag.evaluation.evaluation import EvalCase, load_eval_set, with_asr_noise
from rag.hybrid import ChannelScores, FusionWeights, HybridRetriever
from rag.text import TextProcessor
from rag.vector import VectorIndex, chroma_client

DEFAULT_DEV_SET = Path(__file__).resolve().parent / "devset"
NOISE_SEED = 20261124  # not the evaluation's seed: the dev noise variants differ from the test set's
WEIGHT_STEPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
HANDOFF_GATE_STEPS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
GATE_STEPS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.955, 0.96, 0.965, 0.97, 0.98)
MAX_WRONG_SHARE = 0.0105  # confidently wrong ≤ 1% of questions (rounded as reported)
NAMED_GATE_STEPS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The middle band answers by name (with the runner-up offered) from the lowest gate at which at least this share of
# those answers is about the right service: four in five callers get their answer at once, the fifth says 「另一个」.
MIN_NAMED_PRECISION = 0.8


def without_questions(kb: KnowledgeBase, held_out: set[str]) -> KnowledgeBase:
    items = tuple(item.model_copy(update={"questions": tuple(q for q in item.questions if q not in held_out)})
                  for item in kb.items)
    return KnowledgeBase(root=kb.root, items=items, content_hash=f"{kb.content_hash}-fold")


def folds_of(kb: KnowledgeBase, folds: int) -> list[list[EvalCase]]:
    """Each item's questions dealt round-robin into `folds` groups, as cases expecting that item."""
    groups: list[list[EvalCase]] = [[] for _ in range(folds)]
    for item in kb.items:
        for index, question in enumerate(item.questions):
            groups[index % folds].append(EvalCase(question, (item.id,), "kb_question"))
    return groups


@dataclass
class DevSample:
    case: EvalCase
    channels: ChannelScores
    retriever: HybridRetriever  # the fold's retriever (item order is the same in every fold)


def _fold_retriever(kb: KnowledgeBase, lexicon: Lexicon, weights: FusionWeights, name: str,
                    embedding: EmbeddingFunction | None) -> HybridRetriever:
    retriever = HybridRetriever(kb, TextProcessor(lexicon), weights)
    if embedding is not None:
        index = VectorIndex(chroma_client(), name, embedding)
        index.populate(*retriever.vector_documents())
        retriever.vector = index
    return retriever


def development_samples(kb: KnowledgeBase, lexicon: Lexicon, *, weights: FusionWeights, folds: int = 4,
                        with_vectors: bool = True, dev_set: Path = DEFAULT_DEV_SET,
                        progress: Callable[[str], None] | None = None,
                        embedding: EmbeddingFunction | None = None) -> list[DevSample]:
    """Channel scores of every held-out KB question (and its noisy copy) and of every dev-set question.

    `weights` are the folds' retrievers' weights (channel scores do not depend on them; `rank` does). `embedding` is
    the vector channel's embedding function, the one the service will use (the offline default when None); tune with
    the embedding you deploy, since the weights and the confidence model depend on it."""
    if with_vectors and embedding is None:
        embedding = MultilingualUseEmbedding()
    if sum(len(item.questions) for item in kb.items) < folds:
        raise ValueError("the knowledge base has too few caller questions (`questions:`) to tune on")
    corpus = [item.authored_text() for item in kb.items]
    extra = load_eval_set(dev_set) if dev_set.exists() else []
    samples: list[DevSample] = []
    for number, fold in enumerate(folds_of(kb, folds)):
        held_out = {case.question for case in fold}
        retriever = _fold_retriever(without_questions(kb, held_out), lexicon, weights, f"dev-fold-{number}",
                                    embedding if with_vectors else None)
        noisy = with_asr_noise([replace(case, category="colloquial") for case in fold], corpus, seed=NOISE_SEED + number)
        cases = [*fold, *(replace(case, category="kb_question_noise") for case in noisy)]
        if number == 0:
            cases += extra  # questions no item answers: ranked once, by any fold's retriever
        for case in cases:
            samples.append(DevSample(case, retriever.channel_scores(case.question), retriever))
        if progress:
            progress(f"fold {number + 1}/{folds}: {len(cases)} questions")
    return samples


def _ranking(sample: DevSample, weights: dict[str, float]) -> np.ndarray:
    fused = sum(weights[name] * values for name, values in sample.channels.channels.items())
    return np.argsort(-fused, kind="stable")


def retrieval_score(samples: list[DevSample], weights: FusionWeights) -> tuple[float, float]:
    """(hit@1, MRR) over the answerable development questions."""
    w = weights.as_dict()
    answerable = [sample for sample in samples if not sample.case.expects_handoff]
    hits, reciprocal = 0, 0.0
    for sample in answerable:
        order = _ranking(sample, w)[:10]
        items = sample.retriever.items
        ranks = [rank for rank, index in enumerate(order, 1) if items[index].id in sample.case.expect]
        hits += bool(ranks and ranks[0] == 1)
        reciprocal += 1 / ranks[0] if ranks else 0.0
    return hits / len(answerable), reciprocal / len(answerable)


def tune_weights(samples: list[DevSample], start: FusionWeights, rounds: int = 3,
                 progress: Callable[[str], None] | None = None) -> tuple[FusionWeights, tuple[float, float]]:
    """Coordinate search over the channel weights from `start`, maximising hit@1 (ties: MRR) on the development
    questions."""
    best = start
    best_score = retrieval_score(samples, best)
    for _ in range(rounds):
        improved = False
        for name in best.as_dict():
            for value in WEIGHT_STEPS:
                candidate = replace(best, **{name: value})
                if sum(candidate.as_dict().values()) == 0:
                    continue
                score = retrieval_score(samples, candidate)
                if score > best_score:
                    best, best_score, improved = candidate, score, True
        if progress:
            progress(f"hit@1 {best_score[0]:.4f} MRR {best_score[1]:.4f} with {best.as_dict()}")
        if not improved:
            break
    return best, best_score


def confidence_samples(samples: list[DevSample], weights: FusionWeights, lexicon: Lexicon | None = None,
                       folds: int = 4) -> tuple[list[list[float]], list[int], list[int], list[bool]]:
    """Confidence features of each development ranking, labelled 1 when the top item is right, and a fold number per
    row for held-out checks (a KB question and its noisy copy share their retriever's fold; questions no item answers
    are dealt round-robin), and whether each row is a question no item answers. Only questions that reach the gates count: with a lexicon, the engine's rules settle the
    others first (see `reaches_the_gates`)."""
    rows, labels, groups, out_of_scope = [], [], [], []
    retrievers: list[HybridRetriever] = []
    negatives = 0
    for sample in samples:
        if lexicon is not None and not reaches_the_gates(sample.case.question, lexicon):
            continue
        sample.retriever.weights = weights
        ranked = sample.retriever.rank(sample.channels, limit=5)
        if not ranked:
            continue
        rows.append(features(ranked))
        labels.append(int(not sample.case.expects_handoff and ranked[0].item_id in sample.case.expect))
        out_of_scope.append(sample.case.expects_handoff)
        if sample.case.expects_handoff:
            groups.append(negatives % folds)
            negatives += 1
        else:
            if sample.retriever not in retrievers:
                retrievers.append(sample.retriever)
            groups.append(retrievers.index(sample.retriever) % folds)
    return rows, labels, groups, out_of_scope


def held_out_probabilities(rows: list[list[float]], labels: list[int], groups: list[int]) -> list[float]:
    """Each row's confidence from a model fitted without its fold (a KB question and its noisy copy are never split,
    they are near-duplicate rows): the gate table is read from these, not from the rows the model was fitted on."""
    probabilities = [0.0] * len(rows)
    for fold in sorted(set(groups)):
        train = [index for index, group in enumerate(groups) if group != fold]
        test = [index for index, group in enumerate(groups) if group == fold]
        train_labels = [labels[index] for index in train]
        if len(set(train_labels)) < 2:
            continue
        model = fit([rows[index] for index in train], train_labels)
        for index in test:
            probabilities[index] = model.probability(rows[index])
    return probabilities


def gate_table(probabilities: list[float], labels: list[int]) -> list[dict]:
    """For candidate answer gates: share of development questions answered at once, and share answered wrongly."""
    p = np.asarray(probabilities)
    y = np.asarray(labels)
    table = []
    for gate in GATE_STEPS:
        answered = p >= gate
        table.append({"gate": gate, "answered_share": round(float(answered.mean()), 4),
                      "wrong_share": round(float((answered & (y == 0)).mean()), 4),
                      "precision": round(float(y[answered].mean()), 4) if answered.any() else None})
    return table


def named_gate_table(probabilities: list[float], labels: list[int], low: float, high: float) -> list[dict]:
    """For candidate gates of the middle band's answer-by-name: of the development questions between the handoff gate
    `low` and the answer gate `high`, the share that would be answered by name, the share still asked which service
    they mean, and how often the named service is the right one."""
    p = np.asarray(probabilities)
    y = np.asarray(labels)
    middle = (p >= low) & (p < high)
    table = []
    for gate in NAMED_GATE_STEPS:
        named = middle & (p >= gate)
        table.append({"gate": gate, "named_share": round(float(named.mean()), 4),
                      "asked_share": round(float((middle & ~named).mean()), 4),
                      "named_wrong_share": round(float((named & (y == 0)).mean()), 4),
                      "named_precision": round(float(y[named].mean()), 4) if named.any() else None})
    return table


def handoff_gate_table(probabilities: list[float], out_of_scope: list[bool]) -> list[dict]:
    """For candidate low gates: share of the answerable development questions that would be handed off as "not
    sure", and share of the questions no item answers (those the rules leave to the gates) that would be."""
    p = np.asarray(probabilities)
    outside = np.asarray(out_of_scope, dtype=bool)
    table = []
    for gate in HANDOFF_GATE_STEPS:
        below = p < gate
        table.append({"gate": gate,
                      "answerable_handed_off": round(float(below[~outside].mean()), 4) if (~outside).any() else None,
                      "out_of_scope_handed_off": round(float(below[outside].mean()), 4) if outside.any() else None})
    return table


def tune(kb: KnowledgeBase, lexicon: Lexicon, *, start: FusionWeights, output: Path, folds: int = 4,
         with_vectors: bool = True, dev_set: Path = DEFAULT_DEV_SET, progress: Callable[[str], None] | None = None,
         embedding: EmbeddingFunction | None = None, low: float = 0.25, high: float = 0.95) -> dict:
    """Fit the weights (a coordinate search from `start`) and the confidence model; write them to `output`."""
    samples = development_samples(kb, lexicon, weights=start, folds=folds, with_vectors=with_vectors,
                                  dev_set=dev_set, progress=progress, embedding=embedding)
    start = start if with_vectors else start.without_vectors()
    start_score = retrieval_score(samples, start)
    weights, score = tune_weights(samples, start, progress=progress)
    rows, labels, groups, out_of_scope = confidence_samples(samples, weights, lexicon, folds)
    model = fit(rows, labels)
    save_calibration(Calibration(weights, model), output, samples=len(rows))
    from sklearn.metrics import roc_auc_score

    probabilities = held_out_probabilities(rows, labels, groups)
    gates = gate_table(probabilities, labels)
    suggested = next((row["gate"] for row in gates if row["wrong_share"] <= MAX_WRONG_SHARE), None)
    named = named_gate_table(probabilities, labels, low, high)
    suggested_named = next((row["gate"] for row in named
                            if row["named_precision"] is not None and row["named_precision"] >= MIN_NAMED_PRECISION),
                           None)
    by_category: dict[str, int] = {}
    for sample in samples:
        by_category[sample.case.category] = by_category.get(sample.case.category, 0) + 1
    return {
        "questions": by_category,
        "folds": folds,
        "dev_hit_at_1_before": round(start_score[0], 4),
        "dev_hit_at_1": round(score[0], 4),
        "dev_mrr": round(score[1], 4),
        "fusion_weights": weights.as_dict(),
        "confidence_samples": len(rows),
        "confidence_right_at_top": int(sum(labels)),
        "confidence_auc_held_out": round(float(roc_auc_score(labels, probabilities)), 4),
        "answer_gates": gates,
        "handoff_gates": handoff_gate_table(probabilities, out_of_scope),
        "suggested_answer_gate": suggested,
        "named_gates": named,
        "suggested_named_gate": suggested_named,
        "written": str(output),
    }


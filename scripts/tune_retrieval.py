"""Coordinate search over the retrieval fusion weights on the labelled set (developer tool).

Prints the weights that maximise hit@1 (ties broken by MRR) over the answerable questions, with
homophone-noise variants included. Copy the result into `rag/hybrid.py:FusionWeights` deliberately.
"""

from __future__ import annotations

import json
from dataclasses import replace

from kb.lexicon import load_lexicon
from kb.loader import load_knowledge_base
from rag.embeddings import NgramHashEmbedding
from rag.evaluation import DEFAULT_EVAL_SET, load_eval_set, with_asr_noise
from rag.hybrid import FusionWeights, HybridRetriever
from rag.text import TextProcessor
from rag.vector import VectorIndex, chroma_client


def main() -> None:
    kb = load_knowledge_base()
    cases = load_eval_set(DEFAULT_EVAL_SET)
    cases = [c for c in cases + with_asr_noise(cases, (i.authored_text() for i in kb.items))
             if not c.expects_handoff and not c.context_items and c.category != "calculator"]
    retriever = HybridRetriever(kb, TextProcessor(load_lexicon()))
    index = VectorIndex(chroma_client(), "tune-vectors", NgramHashEmbedding())
    index.populate(*retriever.vector_documents())
    retriever.vector = index
    # Channel scores do not depend on the weights: compute them once per question.
    channels = [(retriever.channel_scores(case.question), case) for case in cases]
    positions = {item.id: n for n, item in enumerate(retriever.items)}

    def score(weights: FusionWeights) -> tuple[float, float]:
        w = weights.as_dict()
        hits, reciprocal = 0, 0.0
        for scores, case in channels:
            fused = sum(w[name] * values for name, values in scores.items())
            order = (-fused).argsort(kind="stable")
            ranks = [rank for rank, idx in enumerate(order[:10], 1) if retriever.items[idx].id in case.expect]
            if ranks and ranks[0] == 1:
                hits += 1
            reciprocal += 1 / ranks[0] if ranks else 0
        return hits / len(channels), reciprocal / len(channels)

    best = FusionWeights()
    best_score = score(best)
    print("start", best_score, flush=True)
    for _ in range(3):
        for name in best.as_dict():
            for value in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5):
                candidate = replace(best, **{name: value})
                result = score(candidate)
                if result > best_score:
                    best, best_score = candidate, result
        print("round", best_score, best.as_dict(), flush=True)
    print(json.dumps({"hit_at_1": best_score[0], "mrr": best_score[1], "weights": best.as_dict()}))


if __name__ == "__main__":
    main()

"""Retrieval benchmark: latency on the shipped KB and on a synthetic KB scaled to 2.2 million characters."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

from kb.lexicon import Lexicon
from kb.loader import KnowledgeBase
from kb.schema import ServiceItem
from rag.embeddings import MultilingualUseEmbedding
from rag.hybrid import FusionWeights, HybridRetriever
from rag.text import TextProcessor
from rag.vector import VectorIndex, chroma_client

TARGET_CHARACTERS = 2_200_000
# Place names used only to make synthetic copies distinct; the synthetic KB is never served.
_VARIANTS = ("秀峰区", "叠彩区", "象山区", "七星区", "雁山区", "临桂区", "阳朔县", "灵川县", "全州县", "兴安县",
             "永福县", "灌阳县", "龙胜县", "资源县", "平乐县", "荔浦市", "恭城县", "城区", "乡镇", "园区")


def synthetic_kb(kb: KnowledgeBase, target_characters: int = TARGET_CHARACTERS) -> KnowledgeBase:
    """Copies of every item, each tagged with a different district, until the text reaches the target."""
    items: list[ServiceItem] = list(kb.items)
    total = sum(len(item.authored_text()) for item in items)
    round_number = 0
    while total < target_characters:
        variant = _VARIANTS[round_number % len(_VARIANTS)] + (str(round_number // len(_VARIANTS)) if round_number >= len(_VARIANTS) else "")
        for item in kb.items:
            copy = item.model_copy(update={
                "id": f"{item.id}-syn{round_number}",
                "title": f"{variant}{item.title}",
                "aliases": tuple(f"{variant}{alias}" for alias in item.aliases),
                # distinct texts everywhere, so no embedding is reused from another copy
                "questions": tuple(f"{variant}{question}" for question in item.questions),
                "spoken": f"{variant}{item.spoken}",
                "sections": {name: f"{variant}：{text}" for name, text in item.sections.items()},
                "related": (),
            })
            items.append(copy)
            total += len(copy.authored_text())
            if total >= target_characters:
                break
        round_number += 1
    return KnowledgeBase(root=kb.root, items=tuple(items), content_hash=f"synthetic-{len(items)}")


@dataclass
class LatencyReport:
    items: int
    characters: int
    index_build_s: float
    queries: int
    p50_ms: float
    p95_ms: float
    max_ms: float

    def to_dict(self) -> dict:
        return {key: round(value, 3) if isinstance(value, float) else value for key, value in self.__dict__.items()}


def measure(kb: KnowledgeBase, lexicon: Lexicon, weights: FusionWeights, questions: list[str],
            with_vectors: bool = True, rounds: int = 3) -> LatencyReport:
    started = time.perf_counter()
    retriever = HybridRetriever(kb, TextProcessor(lexicon), weights)
    if with_vectors:
        folder = tempfile.mkdtemp(prefix="hotline-bench-chroma-")
        embedding = MultilingualUseEmbedding()
        index = VectorIndex(chroma_client(path=folder), f"bench-{kb.content_hash[:40]}", embedding)
        texts, item_ids = retriever.vector_documents()
        index.populate(texts, item_ids)
        retriever.vector = index
    retriever.retrieve("社保卡")  # the first query reads the collection back for the per-item channels: part of the build
    build_s = time.perf_counter() - started
    for question in questions[:20]:  # warm caches (jieba, pinyin) before timing
        retriever.retrieve(question)
    timings = []
    for _ in range(rounds):
        for question in questions:
            begin = time.perf_counter()
            retriever.retrieve(question)
            timings.append((time.perf_counter() - begin) * 1000)
    timings.sort()
    return LatencyReport(
        items=len(kb.items), characters=sum(len(item.authored_text()) for item in kb.items),
        index_build_s=build_s, queries=len(timings), p50_ms=statistics.median(timings),
        p95_ms=timings[int(0.95 * (len(timings) - 1))], max_ms=timings[-1],
    )

"""The vector channel: the offline sentence encoder, chromadb collections and the per-item mean-embedding channel."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings as ChromaSettings

from kb.lexicon import load_lexicon
from kb.loader import load_knowledge_base
from rag import embeddings, hybrid
from rag.embeddings import MultilingualUseEmbedding, NgramHashEmbedding
from rag.errors import RetrievalError
from rag.hybrid import FusionWeights, HybridRetriever
from rag.text import TextProcessor
from rag import vector
from rag.vector import VectorIndex, chroma_client
from telephony.app import embedding_function
from telephony.bench.fault_proxy import FaultProxy
from telephony.bench.turn_latency import _free_port, _wait_port
from telephony.settings import EmbeddingBackend, Settings
from tests.kbfixtures import make_mini_kb


def test_offline_encoder_puts_a_paraphrase_nearer_than_another_service() -> None:
    embed = MultilingualUseEmbedding()
    question, same, other = embed(["失业了每个月能领的那个钱怎么申请", "失业保险金申领", "社会保障卡补换"])
    assert question.shape == (512,) and abs(float(np.linalg.norm(question)) - 1.0) < 1e-4
    assert float(question @ same) > float(question @ other) + 0.1
    # The n-gram hash shares no characters between 钱 and 保险金, so it cannot tell the two apart as well.
    hashed = NgramHashEmbedding()(["失业了每个月能领的那个钱怎么申请", "失业保险金申领", "社会保障卡补换"])
    assert float(question @ same) - float(question @ other) > float(hashed[0] @ hashed[1]) - float(hashed[0] @ hashed[2])


def test_encoder_cache_returns_the_same_vectors_and_handles_empty_text(monkeypatch: pytest.MonkeyPatch) -> None:
    embed = MultilingualUseEmbedding()
    first = embed(["社保卡丢了怎么办", "", "  "])
    assert all(vector.shape == (512,) for vector in first)
    monkeypatch.setattr(embeddings, "_use_model", lambda threads: pytest.fail("cached texts must not be re-encoded"))
    again = embed(["社保卡丢了怎么办", ""])
    assert np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[1])


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "USE_CACHE_ENTRIES", 3)
    monkeypatch.setattr(embeddings, "_USE_CACHE", embeddings.OrderedDict())
    MultilingualUseEmbedding()(["一", "二", "三", "四", "五"])
    assert list(embeddings._USE_CACHE) == ["三", "四", "五"]  # the oldest dropped


def test_collection_reopens_with_the_project_embedding_from_its_stored_config(tmp_path: Path) -> None:
    client = chroma_client(path=str(tmp_path / "chroma"))
    index = VectorIndex(client, "kb-test-use", MultilingualUseEmbedding())
    index.populate(["社保卡挂失", "养老金资格认证"], ["card", "pension"])
    # A second process opening the folder without naming an embedding gets ours back, not chroma's downloader.
    reopened = chromadb.PersistentClient(path=str(tmp_path / "chroma"), settings=ChromaSettings(anonymized_telemetry=False))
    collection = reopened.get_collection("kb-test-use")
    assert collection.configuration_json["embedding_function"]["name"] == "hotline-use-multilingual-v3"
    result = collection.query(query_texts=["卡丢了"], n_results=1, include=["metadatas"])
    assert result["metadatas"][0][0]["item_id"] == "card"


def test_item_profiles_hold_unit_means_and_a_ridge_classifier() -> None:
    index = VectorIndex(chroma_client(), "profiles-test", MultilingualUseEmbedding())
    texts = ["社保卡丢了", "社保卡挂失怎么办", "养老金认证", "退休工资每年认证"]
    owners = ["card", "card", "pension", "pension"]
    index.populate(texts, owners)
    profiles = index.item_profiles(ridge_alpha=0.5)
    vectors = np.asarray(MultilingualUseEmbedding()(texts), dtype=np.float64)
    expected_card = (vectors[0] + vectors[1]) / np.linalg.norm(vectors[0] + vectors[1])
    assert profiles.item_ids == ["card", "pension"]
    assert np.allclose(profiles.centroids[0], expected_card, atol=1e-5)
    # The closed form equals ridge regression on one-hot targets.
    from sklearn.linear_model import Ridge

    one_hot = np.asarray([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    reference = Ridge(alpha=0.5, fit_intercept=False).fit(vectors, one_hot).coef_.T
    assert np.allclose(profiles.classifier, reference, atol=1e-4)
    assert int(np.argmax(vectors[1] @ profiles.classifier)) == 0 and int(np.argmax(vectors[3] @ profiles.classifier)) == 1


def test_a_collection_larger_than_one_read_is_read_back_in_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    index = VectorIndex(chroma_client(), "pages-test", MultilingualUseEmbedding())
    texts = ["社保卡丢了", "社保卡挂失怎么办", "养老金认证", "退休工资每年认证", "失业金怎么领", "失业保险金申领", "工伤认定"]
    owners = ["card", "card", "pension", "pension", "jobless", "jobless", "injury"]
    index.populate(texts, owners)
    whole = index.item_profiles()
    monkeypatch.setattr(vector, "READ_PAGE", 3)  # pages of 3, 3 and 1 texts, as ~55,000 texts go in pages of 5,000
    paged = index.item_profiles()
    assert paged.item_ids == whole.item_ids == ["card", "injury", "jobless", "pension"]
    assert np.allclose(paged.centroids, whole.centroids) and np.allclose(paged.classifier, whole.classifier)
    index.populate(texts[:2], owners[:2])  # a changed KB: the old texts go, page by page
    assert index.collection.count() == 2 and index.item_profiles().item_ids == ["card"]


def test_retriever_vector_channels_rank_a_paraphrase(tmp_path: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    weights = FusionWeights(words_bm25=0, chars_bm25=0, pinyin_bm25=0, alias_match=0, alias_pinyin=0, centroid=0,
                            vector=0, vector_centroid=1.0, vector_classifier=1.0)
    retriever = HybridRetriever(kb, TextProcessor(load_lexicon()), weights)
    assert retriever.vector is None  # nothing attached yet
    index = VectorIndex(chroma_client(), "retriever-test", MultilingualUseEmbedding())
    index.populate(*retriever.vector_documents())
    retriever.vector = index
    scores = retriever.channel_scores("我爸每年都要弄的那个领退休工资的认证，手机上能搞吗").channels
    pension = [item.id for item in retriever.items].index("pension-certification-test")
    assert int(np.argmax(scores["vector_centroid"])) == pension
    assert int(np.argmax(scores["vector"])) == pension
    assert int(np.argmax(scores["vector_classifier"])) == pension and scores["vector_classifier"].max() == 1.0
    assert retriever.retrieve("我爸每年都要弄的那个领退休工资的认证，手机上能搞吗")[0].item_id == "pension-certification-test"


def retriever_with_vectors(tmp_path: Path, collection: str,
                           clock: Callable[[], float] = time.monotonic) -> tuple[HybridRetriever, VectorIndex]:
    """The mini KB's retriever with a populated vector index attached (all lexical channels plus vector_centroid)."""
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    retriever = HybridRetriever(kb, TextProcessor(load_lexicon()), FusionWeights(vector_centroid=1.0), clock=clock)
    index = VectorIndex(chroma_client(), collection, MultilingualUseEmbedding())
    index.populate(*retriever.vector_documents())
    retriever.vector = index
    return retriever, index


def test_retriever_keeps_lexical_channels_when_the_vector_index_fails(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    retriever, index = retriever_with_vectors(tmp_path, "failing-test")
    index.collection.delete(ids=index.collection.get(include=[])["ids"])  # an emptied collection cannot be queried
    ranked = retriever.retrieve("社保卡丢了怎么挂失")
    assert ranked[0].item_id == "card-loss-report"
    assert all(ranked[0].channel_scores[name] == 0.0 for name in ("vector", "vector_centroid", "vector_classifier"))
    assert "vector channel skipped" in caplog.text


def test_a_failing_vector_index_is_not_retried_on_every_question(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    retriever, index = retriever_with_vectors(tmp_path, "down-test", clock=lambda: now[0])
    calls: list[str] = []

    def unreachable(text: str) -> np.ndarray:
        calls.append(text)
        raise RetrievalError("embedding the question failed: connection refused")

    monkeypatch.setattr(index, "embed", unreachable)
    for question in ("社保卡丢了怎么挂失", "社保卡密码忘了", "养老金认证怎么做"):
        assert retriever.retrieve(question)  # the lexical channels still answer
    assert len(calls) == 1  # tried once, then left alone
    now[0] += hybrid.VECTOR_RETRY_S
    monkeypatch.setattr(index, "embed", lambda text: calls.append(text) or MultilingualUseEmbedding()([text])[0])
    ranked = retriever.retrieve("社保卡丢了怎么挂失")
    assert len(calls) == 2 and ranked[0].channel_scores["vector_centroid"] > 0  # back after the pause


def test_the_offline_encoder_is_the_default_embedding() -> None:
    settings = Settings(_env_file=None)
    assert settings.embedding_backend is EmbeddingBackend.USE
    assert isinstance(embedding_function(settings), MultilingualUseEmbedding)
    assert isinstance(embedding_function(Settings(_env_file=None, embedding_backend="ngram")), NgramHashEmbedding)


@pytest.fixture
def chroma_server(tmp_path: Path):
    """`chroma run` on 127.0.0.1 (the server deployments point HOTLINE_CHROMA_HOST at)."""
    port = _free_port()
    process = subprocess.Popen([str(Path(sys.executable).with_name("chroma")), "run", "--path", str(tmp_path / "srv"),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, process, 60)
        yield port
    finally:
        process.kill()
        process.wait(10)


async def test_a_stalled_chroma_server_costs_one_bounded_wait_then_the_lexical_channels_answer(
        tmp_path: Path, chroma_server: int) -> None:
    """A chromadb server that accepts and never answers (`hotline bench faults`, vector stall): the query gives up
    after the request timeout instead of holding the event loop (and every call on it) until the server returns."""
    with FaultProxy(chroma_server) as proxy:
        kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
        retriever = HybridRetriever(kb, TextProcessor(load_lexicon()), FusionWeights(vector_centroid=1.0))
        index = VectorIndex(chroma_client(host="127.0.0.1", port=proxy.port, timeout_s=0.5), "stall-test",
                            MultilingualUseEmbedding())
        index.populate(*retriever.vector_documents())
        retriever.vector = index
        proxy.set_mode("stall")
        ranked = await asyncio.wait_for(asyncio.to_thread(retriever.retrieve, "社保卡丢了怎么挂失"), 30)
        proxy.set_mode("pass")
    assert ranked[0].item_id == "card-loss-report"
    assert ranked[0].channel_scores["vector"] == 0.0 and ranked[0].channel_scores["vector_centroid"] == 0.0


def test_a_vector_query_past_its_deadline_leaves_the_question_to_the_other_channels(tmp_path: Path) -> None:
    """The query waits VECTOR_DEADLINE_S, not the chromadb client's request timeout: retrieval runs on the call's
    event loop, so every call on the worker would wait with it."""
    retriever, index = retriever_with_vectors(tmp_path, "deadline-test")
    release = threading.Event()
    answer = index.nearest

    def hung(embedding, limit: int = 30):
        release.wait(10)
        return answer(embedding, limit)

    index.nearest = hung
    try:
        ranked = retriever.retrieve("社保卡丢了怎么挂失")
    finally:
        release.set()
    assert ranked[0].item_id == "card-loss-report"
    assert ranked[0].channel_scores["vector"] == 0.0

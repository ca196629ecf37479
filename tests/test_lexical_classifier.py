"""The lexical classifier channel: per item, a linear SVM against its nearest items' phrasings."""

from __future__ import annotations

import numpy as np

from kb.lexicon import load_lexicon
from rag.hybrid import _CentroidMatcher, _SiblingClassifier
from rag.text import TextProcessor

# Two sibling services that share almost every word, and one unrelated service.
CHILD = ["给孩子办社保卡", "小孩的社保卡怎么办理", "孩子办社保卡要带户口本吗", "宝宝的社保卡在哪里办", "未成年人办社保卡"]
ADULT = ["我自己办社保卡", "成年人第一次办社保卡", "本人办社保卡要带身份证吗", "大人的社保卡在哪里办", "我想办一张社保卡"]
PENSION = ["养老金每年怎么认证", "退休金认证在手机上弄", "帮老人刷脸认证", "领养老金要年年认证吗", "养老待遇资格认证"]


def _channel(phrasings: list[list[str]], neighbours: int = 15) -> tuple[TextProcessor, _CentroidMatcher,
                                                                        _SiblingClassifier]:
    text = TextProcessor(load_lexicon())
    matcher = _CentroidMatcher(phrasings, text)
    return text, matcher, _SiblingClassifier(matcher, neighbours=neighbours)


def _scores(text: TextProcessor, matcher: _CentroidMatcher, classifier: _SiblingClassifier, query: str) -> np.ndarray:
    return classifier.scores(matcher.query_features(text.normalize(query)))


def test_the_word_that_tells_siblings_apart_decides() -> None:
    text, matcher, classifier = _channel([CHILD, ADULT, PENSION])
    child = _scores(text, matcher, classifier, "我家小孩要办社保卡，去哪里办")
    adult = _scores(text, matcher, classifier, "我本人要办社保卡，去哪里办")
    assert int(np.argmax(child)) == 0 and child[0] == 1.0 and child[1] < 0.7
    assert int(np.argmax(adult)) == 1 and adult[1] == 1.0 and adult[0] < 0.9
    pension = _scores(text, matcher, classifier, "退休了养老金认证怎么弄")
    assert int(np.argmax(pension)) == 2 and pension[0] < 0.5 and pension[1] < 0.5


def test_each_item_is_trained_only_against_its_nearest_items() -> None:
    # With one neighbour, the pension classifier sees the pension phrasings and those of one card item only:
    # the words only the other card item uses never reach it.
    text, matcher, classifier = _channel([CHILD, ADULT, PENSION], neighbours=1)

    def used_by(item: int) -> set[int]:
        return set(matcher.matrix[np.flatnonzero(matcher.owners == item)].indices)

    child_only = used_by(0) - used_by(1) - used_by(2)
    adult_only = used_by(1) - used_by(0) - used_by(2)
    pension = set(classifier.weights_t.T.tocsr()[2].indices)
    assert child_only and adult_only and pension
    assert bool(pension & child_only) != bool(pension & adult_only)
    full = _channel([CHILD, ADULT, PENSION], neighbours=15)[2]
    assert set(full.weights_t.T.tocsr()[2].indices) >= child_only | adult_only


def test_a_single_item_or_an_item_without_phrasings_still_scores() -> None:
    text, matcher, classifier = _channel([CHILD])
    assert _scores(text, matcher, classifier, "孩子办社保卡").tolist() == [1.0]
    text, matcher, classifier = _channel([CHILD, [], PENSION])
    scores = _scores(text, matcher, classifier, "孩子办社保卡")
    assert scores.shape == (3,) and int(np.argmax(scores)) == 0


def test_a_query_sharing_nothing_with_the_phrasings_scores_zero() -> None:
    text, matcher, classifier = _channel([CHILD, ADULT, PENSION])
    assert _scores(text, matcher, classifier, "hello").tolist() == [0.0, 0.0, 0.0]


def test_the_build_is_deterministic() -> None:
    first = _channel([CHILD, ADULT, PENSION])
    second = _channel([CHILD, ADULT, PENSION])
    query = "小孩社保卡在哪办"
    assert np.array_equal(_scores(*first, query), _scores(*second, query))

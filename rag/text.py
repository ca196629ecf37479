"""Query and document text processing: cleanup, lexicon normalisation, jieba words, character n-grams."""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Iterable

import jieba
from pypinyin import lazy_pinyin

from kb.lexicon import Lexicon

# Fillers callers wrap around a question; they carry no meaning for retrieval.
FILLER_PATTERN = re.compile(
    r"怎么办|怎么弄|怎么样|怎么搞|咋办|咋弄|咋整|喂+|你好+啊?|您好|请问一下|请问|我想问一下|我想问问|想问一下|问一下|麻烦问一下|麻烦你|那个|这个嘛|就是说|嗯+|啊+|呀|哈|吧|呢|嘛|哦+|噢+"
)
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)
_STOPWORDS = frozenset("的 了 是 我 你 他 她 在 要 有 和 就 都 也 还 吗 么 啥 什么 怎么 怎样 如何 可以 能 能不能 可不可以 一下 一个 这 那 个 去 到 给 把 被 让 会 又 些 多少".split())

_jieba_lock = threading.Lock()
_jieba_words: set[str] = set()
logging.getLogger("jieba").setLevel(logging.WARNING)


def clean(text: str) -> str:
    """NFKC-normalise (full-width digits and letters), lower-case, drop fillers and punctuation."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = FILLER_PATTERN.sub(" ", text)
    return _NON_WORD.sub(" ", text).strip()


def register_words(words: Iterable[str]) -> None:
    """Teach jieba domain words (idempotent, thread-safe)."""
    with _jieba_lock:
        for word in words:
            word = word.strip()
            if len(word) >= 2 and word not in _jieba_words:
                jieba.add_word(word, freq=200000)
                _jieba_words.add(word)


def words(text: str) -> list[str]:
    """jieba search-mode tokens of cleaned text, without stopwords and spaces."""
    tokens = []
    for chunk in text.split():
        tokens.extend(token for token in jieba.cut_for_search(chunk) if token.strip() and token not in _STOPWORDS)
    return tokens


def char_ngrams(text: str, n: int = 2) -> list[str]:
    """Character n-grams inside each whitespace-separated chunk (single characters for short chunks)."""
    grams: list[str] = []
    for chunk in text.split():
        if len(chunk) < n:
            grams.append(chunk)
            continue
        grams.extend(chunk[index:index + n] for index in range(len(chunk) - n + 1))
    return grams


def pinyin_bigrams(text: str) -> list[str]:
    """Toneless pinyin syllable bigrams inside each chunk: 公伤 and 工伤 both give 'gong|shang'."""
    grams: list[str] = []
    for chunk in text.split():
        syllables = lazy_pinyin(chunk, errors=lambda chars: list(chars))
        if len(syllables) == 1:
            grams.append(syllables[0])
        grams.extend(f"{syllables[i]}|{syllables[i + 1]}" for i in range(len(syllables) - 1))
    return grams


class SoundCorrector:
    """Rewrites ASR homophones of known domain terms ("失叶金" → "失业金", "公伤" → "工伤") in query text.

    A span is rewritten only when its toneless pinyin equals exactly one vocabulary term and the span itself is
    not a common word in jieba's dictionary ("事业" stays "事业"), so correct text is left alone.
    """

    MIN_CHARS = 2
    MAX_CHARS = 8
    # jieba dictionary frequency from which a span counts as a real word (公伤 3, 工商 1684, 事业 10025).
    KNOWN_WORD_FREQUENCY = 100

    def __init__(self, vocabulary: Iterable[str]) -> None:
        by_sound: dict[tuple[str, ...], set[str]] = {}
        for term in vocabulary:
            term = term.strip()
            if self.MIN_CHARS <= len(term) <= self.MAX_CHARS and all("\u4e00" <= char <= "\u9fff" for char in term):
                by_sound.setdefault(tuple(lazy_pinyin(term)), set()).add(term)
        self.table = {sound: next(iter(terms)) for sound, terms in by_sound.items() if len(terms) == 1}
        self.lengths = sorted({len(sound) for sound in self.table}, reverse=True)

    def correct(self, text: str) -> str:
        syllables = lazy_pinyin(text, errors=lambda chars: list(chars))
        if len(syllables) != len(text):
            return text
        out: list[str] = []
        index = 0
        while index < len(text):
            for length in self.lengths:
                term = self.table.get(tuple(syllables[index:index + length]))
                if term is None:
                    continue
                span = text[index:index + length]
                known = (jieba.dt.FREQ.get(span) or 0) >= self.KNOWN_WORD_FREQUENCY
                out.append(span if span == term or known else term)
                index += length
                break
            else:
                out.append(text[index])
                index += 1
        return "".join(out)


class TextProcessor:
    """Turns raw caller or document text into the token streams the retrieval channels index."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        register_words(lexicon.dictionary_words())

    def normalize(self, text: str) -> str:
        return self.lexicon.normalize(clean(text))

    def words(self, text: str) -> list[str]:
        return words(self.normalize(text))

    def bigrams(self, text: str) -> list[str]:
        return char_ngrams(self.normalize(text), 2)

    # The *_of_normalized forms skip normalisation for text that is already normalised.
    @staticmethod
    def words_of_normalized(text: str) -> list[str]:
        return words(text)

    @staticmethod
    def bigrams_of_normalized(text: str) -> list[str]:
        return char_ngrams(text, 2)

    @staticmethod
    def pinyin_bigrams_of_normalized(text: str) -> list[str]:
        return pinyin_bigrams(text)

"""Full-text search over call transcripts that works for Chinese, with one query API over both databases.

Chinese has no spaces, so neither SQLite's FTS5 tokenizers nor PostgreSQL's text parser can find words in it. The
transcript is segmented here instead, with jieba's search mode (a long word and the shorter words inside it:
工伤认定 → 工伤, 认定, 工伤认定), and stored as those tokens separated by spaces (`call_reviews.search_text`). Both
databases then index plain words: an FTS5 table with the unicode61 tokenizer on SQLite, a GIN index over a
stored to_tsvector('simple', search_text) column (`search_vector`) on PostgreSQL (migration 0006).

A query is segmented the same way, in jieba's default mode; each word must match, either whole or as all the
shorter words inside it (so 工伤认定 finds a call where the segmenter kept 工伤 and 认定 apart). Personal numbers
(身份证号, mobiles, bank cards) are masked before indexing: the index never holds them, so a search cannot find a
caller by their ID number, and a purge of the transcript leaves nothing behind in the index.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache

import jieba
from sqlalchemy import ColumnElement, func, literal_column, select, text

from telephony.review.privacy import mask_personal
from telephony.store.models import CallReview

MAX_QUERY_CHARS = 100
MAX_QUERY_WORDS = 12
_WORD = re.compile(r"[\w\u3400-\u9fff]+")  # a token worth indexing: letters, digits, CJK; no punctuation or space
_DIGITS = re.compile(r"^\d+$")


class SearchQueryError(ValueError):
    """A search that cannot be run (empty after segmentation, too long)."""


jieba.setLogLevel(60)  # its "Building prefix dict" chatter on stderr


@lru_cache(maxsize=16384)
def _text_tokens(raw: str) -> tuple[str, ...]:
    """The index words of one text (cached: the replies of an item repeat call after call)."""
    words: dict[str, None] = {}
    for sentence in re.split(r"[。！？!?；;，,\s]+", mask_personal(raw)):
        if not sentence:
            continue
        for token in jieba.cut_for_search(sentence):
            token = token.strip().lower()
            if token and _WORD.fullmatch(token):
                words[token] = None
    return tuple(words)


def index_tokens(texts: Iterable[str]) -> str:
    """The `search_text` of a transcript: its distinct words (search mode), lower-cased, space-separated."""
    words: dict[str, None] = {}
    for raw in texts:
        if raw:
            words.update(dict.fromkeys(_text_tokens(raw)))
    return " ".join(words)


def query_words(query: str) -> list[tuple[str, tuple[str, ...]]]:
    """The words of a query, each with the shorter words inside it (empty when it has none)."""
    query = query.strip()
    if len(query) > MAX_QUERY_CHARS:
        raise SearchQueryError(f"搜索内容最多{MAX_QUERY_CHARS}个字")
    words: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for word in jieba.cut(query):
        word = word.strip().lower()
        if not word or not _WORD.fullmatch(word) or word in seen:
            continue
        seen.add(word)
        inner = tuple(part.lower() for part in jieba.cut_for_search(word) if part != word and _WORD.fullmatch(part))
        # The pieces must cover the word to stand for it: 工伤认定 = 工伤 + 认定, not 伤认 alone.
        if inner and not _covers(word, inner):
            inner = ()
        words.append((word, inner))
    if not words:
        raise SearchQueryError("请输入要搜索的词语")
    if len(words) > MAX_QUERY_WORDS:
        raise SearchQueryError(f"搜索词最多{MAX_QUERY_WORDS}个")
    return words


def _covers(word: str, parts: tuple[str, ...]) -> bool:
    """Whether some of `parts`, in order and without overlap, spell `word` exactly."""
    reachable = {0}
    for end in range(1, len(word) + 1):
        if any(start in reachable and word[start:end] in parts for start in range(end)):
            reachable.add(end)
    return len(word) in reachable


def _fts5_quote(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def _tsquery_quote(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def _expression(words: list[tuple[str, tuple[str, ...]]], quote: Callable[[str], str], and_: str, or_: str) -> str:
    """Every word, each whole or as all its inner words, in a dialect's syntax."""
    clauses = []
    for word, inner in words:
        whole = quote(word)
        clauses.append(f"({whole}{or_}({and_.join(quote(p) for p in inner)}))" if inner else whole)
    return and_.join(clauses)


def fts5_query(words: list[tuple[str, tuple[str, ...]]]) -> str:
    """The FTS5 MATCH expression."""
    return _expression(words, _fts5_quote, " AND ", " OR ")


def tsquery(words: list[tuple[str, tuple[str, ...]]]) -> str:
    """The PostgreSQL to_tsquery('simple', …) text of the same expression."""
    return _expression(words, _tsquery_quote, " & ", " | ")


def matches(dialect: str, query: str) -> ColumnElement[bool]:
    """A WHERE clause on CallReview: its transcript matches `query` (`SearchQueryError` for an empty query)."""
    words = query_words(query)
    if dialect == "sqlite":
        hits = select(literal_column("rowid")).select_from(text("call_search")).where(
            text("call_search MATCH :fts_query").bindparams(fts_query=fts5_query(words)))
        return CallReview.doc_id.in_(hits)
    if dialect == "postgresql":
        return literal_column("call_reviews.search_vector").op("@@")(
            func.to_tsquery(literal_column("'simple'::regconfig"), tsquery(words)))
    # Another database: a substring scan over the tokens (correct, not fast).
    clause = None
    for word, _inner in words:
        condition = CallReview.search_text.contains(word)
        clause = condition if clause is None else clause & condition
    return clause

"""Colloquial-to-standard word map and ASR hotwords, read from `kb/lexicon.yaml`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml
from pypinyin import lazy_pinyin

from kb.errors import KbFileError

DEFAULT_LEXICON_FILE = Path(__file__).resolve().parent / "lexicon.yaml"
_TERM_SOUNDS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _sounds(text: str) -> str:
    """Toneless pinyin of the text with a separator around every syllable ("|gong|shang|")."""
    return "|" + "|".join(lazy_pinyin(text)) + "|"


@dataclass(frozen=True)
class Lexicon:
    synonyms: dict[str, str]
    hotwords: tuple[str, ...]
    domain_terms: tuple[str, ...] = ()
    out_of_scope_terms: tuple[str, ...] = ()
    service_subjects: tuple[str, ...] = ()

    def subjects(self, text: str) -> tuple[str, ...]:
        """The services the text names as its subject (社保卡, 失业金, 工伤 …), as said or in standard terms: a short
        question that names one the previous answer was not about is a new question, not a follow-up."""
        normalized = self.normalize(text)
        return tuple(term for term in self.service_subjects if term in text or term in normalized)

    def names_social_insurance(self, text: str) -> bool:
        """Whether the text names social-insurance business itself (any ASR hotword, e.g. 社保, 养老保险)."""
        normalized = self.normalize(text)
        return any(word in text or word in normalized for word in self.hotwords)

    def out_of_scope_term(self, text: str) -> str | None:
        """The first term naming another office's business or chat with the assistant, if any."""
        return next((term for term in self.out_of_scope_terms if term in text), None)

    def in_domain(self, text: str) -> bool:
        """Whether the text mentions anything the hotline deals with (always true without a term list).

        Terms of two or more characters also match by sound, so ASR homophones ("公伤", "丧脏费") pass.
        """
        if not self.domain_terms:
            return True
        normalized = self.normalize(text)
        if any(term in text or term in normalized for term in self.domain_terms):
            return True
        spoken = _sounds(normalized)
        return any(sound in spoken for sound in self._term_sounds())

    def _term_sounds(self) -> tuple[str, ...]:
        cached = _TERM_SOUNDS.get(self.domain_terms)
        if cached is None:
            cached = tuple(_sounds(term) for term in self.domain_terms if len(term) >= 2 and not term.isascii())
            _TERM_SOUNDS[self.domain_terms] = cached
        return cached

    def normalize(self, text: str) -> str:
        """Replace colloquial words by standard terms, longest first, in one left-to-right pass."""
        if not self.synonyms:
            return text
        table, pattern = self._rewriter
        return pattern.sub(lambda match: table[match.group(0)], text)

    @cached_property
    def _rewriter(self) -> tuple[dict[str, str], re.Pattern[str]]:
        # Standard terms map to themselves so that "资格认证" is not rewritten by the key "认证". A regex tries the
        # alternatives in order at each position, so listing the keys longest first gives the longest match.
        table = {value: value for value in self.synonyms.values()} | self.synonyms
        keys = sorted(table, key=len, reverse=True)
        return table, re.compile("|".join(re.escape(key) for key in keys))

    def dictionary_words(self) -> set[str]:
        """Words jieba should keep whole."""
        return set(self.hotwords) | set(self.synonyms.values()) | set(self.synonyms)


def load_lexicon(path: Path | str = DEFAULT_LEXICON_FILE) -> Lexicon:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KbFileError(str(path), f"cannot read lexicon: {exc}") from exc
    synonyms = {str(key): str(value) for key, value in (data.get("synonyms") or {}).items()}
    hotwords = tuple(str(word) for word in (data.get("hotwords") or []))
    domain_terms = tuple(str(term) for term in (data.get("domain_terms") or []))
    out_of_scope = tuple(str(term) for term in (data.get("out_of_scope_terms") or []))
    subjects = tuple(str(term) for term in (data.get("service_subjects") or []))
    return Lexicon(synonyms=synonyms, hotwords=hotwords, domain_terms=domain_terms, out_of_scope_terms=out_of_scope,
                   service_subjects=subjects)

"""A homophone model of ASR errors: swap characters for others with the same toneless pinyin.

Mandarin ASR on 8 kHz calls mostly errs towards homophones (工伤→公伤, 失业金→失叶金, 丧葬费→丧脏费).
Substitutes are drawn from the knowledge base's own characters, so the noise uses real, common
characters; a fixed seed makes the variants reproducible.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable

from pypinyin import lazy_pinyin

DEFAULT_RATE = 0.15
DEFAULT_SEED = 12333


def homophone_table(corpus: Iterable[str]) -> dict[str, list[str]]:
    """Toneless pinyin -> the Han characters of the corpus that read that way."""
    by_sound: dict[str, set[str]] = defaultdict(set)
    for text in corpus:
        for char in set(text):
            if "\u4e00" <= char <= "\u9fff":
                by_sound[lazy_pinyin(char)[0]].add(char)
    return {sound: sorted(chars) for sound, chars in by_sound.items() if len(chars) > 1}


class HomophoneNoise:
    def __init__(self, table: dict[str, list[str]], rate: float = DEFAULT_RATE, seed: int = DEFAULT_SEED) -> None:
        self.table = table
        self.rate = rate
        self.random = random.Random(seed)

    def corrupt(self, text: str) -> str:
        """Replace about `rate` of the Han characters that have a homophone; at least one when possible."""
        positions = [i for i, char in enumerate(text)
                     if "\u4e00" <= char <= "\u9fff" and len(self.table.get(lazy_pinyin(char)[0], ())) > 1]
        if not positions:
            return text
        count = max(1, round(len(positions) * self.rate))
        chars = list(text)
        for index in self.random.sample(positions, min(count, len(positions))):
            options = [c for c in self.table[lazy_pinyin(chars[index])[0]] if c != chars[index]]
            chars[index] = self.random.choice(options)
        return "".join(chars)

"""The study's alliteration reward and the diversity measures reported per group."""

from __future__ import annotations

from typing import Sequence


def raw_reward(text: str) -> int:
    """Adjacent word pairs (`text.split()`) whose first letters match, case-insensitive.

    "goose gopher giraffe gorilla" -> 3, "duck goose duck" -> 0.
    """
    words = text.split()
    return sum(a[0].lower() == b[0].lower() for a, b in zip(words, words[1:]))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all texts divided by their total (0 when there is none)."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_fraction(texts: Sequence[str]) -> float:
    """Distinct texts divided by texts."""
    return len(set(texts)) / len(texts) if texts else 0.0

"""The study's alliteration reward."""

from __future__ import annotations


def raw_reward(text: str) -> int:
    """Adjacent word pairs (`text.split()`) whose first letters match, case-insensitive.

    "goose gopher giraffe gorilla" -> 3, "duck goose duck" -> 0.
    """
    words = text.split()
    return sum(a[0].lower() == b[0].lower() for a, b in zip(words, words[1:]))

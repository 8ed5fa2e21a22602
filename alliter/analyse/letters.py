"""Which letters alliterate: at each value's final point, and at the unmodified model, the share of alliterating
word pairs by their first letter, and how spread they are (the entropy of those shares, in bits).

The study's policies alliterate with t and s ("tall tree", "she saw"): the unmodified model starts a word with t
more often than with any other letter, so RLOO reinforces what it already samples. The rows are pooled over a
value's trials (seeds): their final evaluations' stories, else (a trial without evaluations) its last training
window's texts.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from typing import Any, Sequence

import pandas as pd

from alliter.analyse.frames import Trial
from alliter.knob import VALUE
from alliter.train.reward import alliterating_letters, raw_reward

UNMODIFIED = "unmodified"
COMMON = ("t", "s")  # the study's two letters
LETTERS = tuple(string.ascii_lowercase)


def letter_counts(texts: Sequence[str]) -> dict[str, int]:
    """How many alliterating word pairs each first letter makes, over all texts (alliter.train.reward's pairs)."""
    return dict(Counter(c for t in texts for c in alliterating_letters(t)))


def letter_entropy(counts: dict[str, int]) -> float:
    """How spread the alliterating pairs are over first letters: the entropy of their shares, in bits (0: one
    letter only; log2(26) = 4.70: all letters alike); NaN without a pair."""
    total = sum(counts.values())
    if not total:
        return math.nan
    return -sum(n / total * math.log2(n / total) for n in counts.values() if n)


def top_letters(counts: dict[str, int], n: int = 3) -> str:
    """"t 52%, s 18%, h 7%": the n letters with the most alliterating pairs, with their shares (those of 1% or
    more, as rounded)."""
    total = sum(counts.values())
    if not total:
        return "-"
    ranked = [(c, k) for c, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n] if k / total >= 0.005]
    return ", ".join(f"{c} {k / total:.0%}" for c, k in ranked)


def trial_texts(trial: Trial, window: int) -> tuple[int, list[str]]:
    """A trial's texts at its final point: its final evaluation's stories, else its last `window` training texts.
    Returns (generations, texts)."""
    e = trial.evaluations
    if len(e):
        at = int(e["generations"].max())
        return at, e.loc[e["generations"] == at, "text"].tolist()
    g = trial.generations
    if not len(g):
        return trial.done, []
    last = int(g["generation"].max())
    return trial.done, g.loc[g["generation"] > last - window, "text"].tolist()


def letter_row(texts: list[str]) -> dict[str, Any]:
    """The letters of some texts: pairs, their shares by letter, spread, the top letters, t and s's share, and
    the study's raw reward (the mean alliterating pairs a text, whatever reward the trial ran with)."""
    counts = letter_counts(texts)
    total = sum(counts.values())
    return {
        "stories": len(texts),
        "raw_alliteration": sum(raw_reward(t) for t in texts) / len(texts) if texts else math.nan,
        "pairs": total,
        "letter_entropy": letter_entropy(counts),
        "t_s_share": sum(counts.get(c, 0) for c in COMMON) / total if total else math.nan,
        "top_letters": top_letters(counts),
        **{c: counts.get(c, 0) / total if total else math.nan for c in LETTERS},
    }


def letter_frame(trials: list[Trial], window: int) -> pd.DataFrame:
    """One row for the unmodified model (the evaluation at generation 0), then one per varied value (VALUE) at its
    trials' final points."""
    rows = []
    # every trial's generation 0 is the same stories (one eval seed), unless their settings differ: each story once
    first = [t.evaluations.loc[t.evaluations["generations"] == 0, ["sample", "text"]] for t in trials if len(t.evaluations)]
    unmodified = pd.concat(first).drop_duplicates()["text"].tolist() if first else []
    if unmodified:
        rows.append({"row": UNMODIFIED, VALUE: math.nan, "generations": 0, **letter_row(unmodified)})
    values = sorted({t.value for t in trials})
    for value in values:
        mine = [t for t in trials if t.value == value]
        at, texts = [], []
        for t in mine:
            g, own = trial_texts(t, window)
            at.append(g)
            texts += own
        rows.append({"row": f"{value:g}", VALUE: value, "generations": max(at), **letter_row(texts)})
    return pd.DataFrame(rows)

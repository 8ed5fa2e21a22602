"""What "collapsed" means: one definition, used by the sweep's trials (to stop early), the search (to
bracket the balanced beta) and best_beta (to judge and choose).

A trial has collapsed at generation g when its diversity, averaged group by group over the running
window of generations (g - window, g], falls under `diversity_share` x its first group's diversity. The first
group is sampled before any update, so it is the unmodified model's diversity, measured the same way.
Averaging group by group matters: distinct-n grows with the amount of text it is measured over, so a
window of groups compares with one group only as a mean of per-group values.

The default (distinct-2, 80%, 200 generations) is best_beta's rule. On the bundled model at 2000
generations beta 1 keeps 1% of its distinct-2 while its ten texts still all differ (they differ by a
word), which is why the unique fraction is not the default measure.

This module is torch-free and pandas-free, so that the driver, the trials and the analysis all import
it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from alliter.config import DEFAULT_WINDOW, AlliterError

# per-group diversity measures the trainer reports (best_beta also has self-BLEU, from the texts)
TRAINER_MEASURES = ("distinct_1", "distinct_2", "unique_fraction")
ALL_MEASURES = (*TRAINER_MEASURES, "self_bleu")
DEFAULT_MEASURE = "distinct_2"
DEFAULT_SHARE = 0.8


@dataclass
class CollapseRule:
    """The rule's knobs, shared by the sweep's flags and best_beta's (both dataclasses extend this one)."""

    diversity_measure: str = DEFAULT_MEASURE
    """The diversity the rule uses: distinct_1, distinct_2, unique_fraction, or (best_beta only) self_bleu,
    counted as 1 - self-BLEU."""
    diversity_share: float = DEFAULT_SHARE
    """A trial keeps its diversity while the running mean stays at or above this share of the unmodified
    model's; under it, it has collapsed."""
    window: int = DEFAULT_WINDOW
    """Generations of the running window the diversity is averaged over (best_beta: also the final window
    every measure is averaged over, and the windows along training)."""
    max_collapse_rate: float = 0.0
    """With seeds: a beta counts as kept while at most this share of its seeds collapsed (0: kept in every seed)."""

    def rule(self) -> "CollapseRule":
        """The rule alone, without the fields of a dataclass that extends it."""
        return CollapseRule(**{f.name: getattr(self, f.name) for f in fields(CollapseRule)})

    def validate_rule(self, measures: Sequence[str] = ALL_MEASURES) -> None:
        if self.diversity_measure not in measures:
            raise AlliterError(f"diversity_measure must be one of {', '.join(measures)}, got {self.diversity_measure!r}")
        if not 0 < self.diversity_share <= 1:
            raise AlliterError(f"diversity_share must be in (0, 1], got {self.diversity_share}")
        if self.window < 1:
            raise AlliterError(f"window must be at least 1 generation, got {self.window}")
        if not 0 <= self.max_collapse_rate < 1:
            raise AlliterError(f"max_collapse_rate must be in [0, 1), got {self.max_collapse_rate}")

    def kept_shares(self, generations: Sequence[float], diversity: Sequence[float]) -> np.ndarray:
        """Per group (in order of generations): the mean diversity over the running window ending at
        that group, as a share of the first group's. NaN values (no text to measure) are skipped."""
        g = np.asarray(generations, dtype=float)
        d = np.asarray(diversity, dtype=float)
        if not len(g):
            return np.zeros(0)
        valid = ~np.isnan(d)
        sums = np.concatenate([[0.0], np.cumsum(np.where(valid, d, 0.0))])
        counts = np.concatenate([[0], np.cumsum(valid)])
        start = np.searchsorted(g, g - self.window, side="right")  # first group inside (g - window, g]
        end = np.arange(1, len(g) + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (sums[end] - sums[start]) / (counts[end] - counts[start])
            return means / d[0] if d[0] > 0 else np.full(len(g), math.nan)

    def collapsed_at(self, generations: Sequence[float], diversity: Sequence[float]) -> float:
        """The first generation at which the trial has collapsed, NaN if it never did (so far)."""
        shares = self.kept_shares(generations, diversity)
        below = shares < self.diversity_share
        return float(np.asarray(generations, dtype=float)[below.argmax()]) if below.any() else math.nan

    def describe(self) -> str:
        return (f"{self.diversity_measure} under {self.diversity_share:.0%} of the unmodified model's "
                f"(running mean over {self.window} generations)")


class CollapseWatch:
    """A trial's running verdict, group by group: the same `CollapseRule.kept_shares` on the history so far."""

    def __init__(self, rule: CollapseRule, history: Sequence[dict] = ()):
        self.rule = rule
        self.generations: list[float] = []
        self.diversity: list[float] = []
        for metrics in history:
            self.add(metrics)

    def add(self, metrics: dict) -> dict[str, float | bool]:
        """Take a group's metrics; return the verdict so far (`verdict`)."""
        self.generations.append(float(metrics["generations"]))
        self.diversity.append(float(metrics[self.rule.diversity_measure]))
        return self.verdict()

    def verdict(self) -> dict[str, float | bool]:
        """The running share of the unmodified model's diversity at the last group, and whether the trial
        has collapsed (at that group or before)."""
        shares = self.rule.kept_shares(self.generations, self.diversity)
        if not len(shares):
            return {"diversity_kept": math.nan, "collapsed": False}
        return {"diversity_kept": float(shares[-1]), "collapsed": bool((shares < self.rule.diversity_share).any())}

"""What a kept point is: one rule, used by the sweep's trials (to stop early), the search (to bracket the balanced
beta) and best_beta (to judge, choose and export).

A point of a trial is judged by its evaluation (`alliter.train.evaluate`: fresh stories of the policy at that point,
sampled with the same random numbers at every point) against the trial's evaluation at generation 0, the
unmodified model's:
- *collapsed* (repetition): its diversity (`diversity_measure`, distinct-2 by default) is under `diversity_share`
  of the unmodified model's;
- *degenerate* (non-words): its diversity holds, but its fluency, the unmodified model's mean token
  cross-entropy of its stories, is more than `fluency_margin` nats above the unmodified model's own stories';
- *narrowed* (one topic): its stories read as fluent and as varied within a group, but together they use one word
  of 4+ letters more than `max_overuse` times as often as the unmodified model's stories do (alliter.measures'
  top_overuse: "the tree" in most stories);
- *kept* otherwise.
Non-words are all distinct, so distinct-n alone calls gibberish diverse: the fluency check is what catches it. A
story about a tree has few repeated pairs, and 50 stories about trees share a word, not pairs: distinct-n, measured
inside a group, calls a one-topic policy as varied as the unmodified model, and the over-use check is what catches it.

A trial has failed at its first point that is not kept, and stays failed. A point is *stable* when it is kept and
so is the trial's next evaluated point: the best point is chosen among stable points only, so it is never the last
kept point before a collapse, nor a trial's last point, whose future nobody saw (bench/recipes.py, 2026-12-07: of
12 trials run to 7000 generations, 4 were kept at 2000 and failed by 2400, the last point a 2000-generation trial
would have called stable; of 254 kept points whose next evaluation was kept, 7 failed within 400 generations).

A trial without evaluations (`--eval-samples 0`, or run before alliter had them) is judged the same way on
*training points*: the training groups' measures averaged over each `window` of generations, against the
trial's first group. Training groups lag their policy (a window still holds the varied groups of before a
collapse), which is why evaluations are the default.

With seeds, a beta has failed when more than `max_collapse_rate` of its seeds failed (`seeds_failed`).

This module is torch-free and pandas-free, so that the driver, the trials and the analysis all import it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from alliter import measures as M
from alliter.cli import AlliterError
from alliter.config import DEFAULT_WINDOW

KEPT, COLLAPSED, DEGENERATE, NARROWED = "kept", "collapsed", "degenerate", "narrowed"
FAILED = (COLLAPSED, DEGENERATE, NARROWED)
DEFAULT_MEASURE = "distinct_2"
DEFAULT_SHARE = 0.8
DEFAULT_FLUENCY_MARGIN = 0.3
DEFAULT_MAX_OVERUSE = 6.0

# a training group's column -> the point measure it stands for (training points, the fallback)
TRAINING_MEASURES = {m.group: m.name for m in M.MEASURES if m.group}


def as_diversity(value: Any, measure: str) -> Any:
    """A measure's value as a diversity, higher = more diverse (1 - it for a measure of sameness); a number, a
    pandas column or frame alike."""
    return 1 - value if measure in M.SAMENESS else value


def diversity(point: dict[str, Any], measure: str) -> float:
    """A point's diversity by `measure` (as_diversity), NaN where the point lacks it."""
    value = point.get(measure)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    return float(as_diversity(value, measure))


@dataclass
class Judgement:
    """A trial's points judged in order: each point's verdict and stability, and where the trial failed."""

    generations: list[int]
    verdicts: list[str]
    stable: list[bool]
    diversity_kept: list[float]
    fluency_gap: list[float]
    failed_at: int | None = None  # the first generation whose point is not kept
    failed_as: str | None = None  # its verdict: collapsed, degenerate or narrowed
    notes: list[str] = field(default_factory=list)

    @property
    def kept(self) -> bool:
        return self.failed_at is None

    def report(self) -> dict[str, Any]:
        """What a trial reports to Tune: its verdict so far, and its latest point's share of the unmodified model's
        diversity and fluency gap."""
        return {
            "verdict": self.failed_as or KEPT, "kept": self.kept,
            "failed_at": math.nan if self.failed_at is None else float(self.failed_at),
            "diversity_kept": self.diversity_kept[-1] if self.diversity_kept else math.nan,
            "fluency_gap": self.fluency_gap[-1] if self.fluency_gap else math.nan,
        }


@dataclass
class CollapseRule:
    """The rule's knobs, shared by the sweep's flags and best_beta's (both dataclasses extend this one)."""

    diversity_measure: str = DEFAULT_MEASURE
    """The diversity the rule uses: distinct_1, distinct_2, unique_fraction, or (best_beta only) self_bleu,
    counted as 1 - self-BLEU; each measured per group of group_size stories."""
    diversity_share: float = DEFAULT_SHARE
    """A point keeps its diversity while it is at or above this share of the unmodified model's; under it, the
    trial has collapsed (repetition)."""
    fluency_margin: float = DEFAULT_FLUENCY_MARGIN
    """A point whose stories' mean token cross-entropy under the unmodified model is more than this many nats
    above the unmodified model's own stories' is degenerate (non-words); see README, "What kept means"."""
    max_overuse: float = DEFAULT_MAX_OVERUSE
    """A point whose stories together use a word of 4+ letters (in at least 1 of 5 stories) more than this many times
    as often as the unmodified model's is narrowed (one topic; the unmodified model against itself reaches 4x, a one-topic
    policy 12x and more: README, "What kept means"); 0: no such check."""
    window: int = DEFAULT_WINDOW
    """Generations of a training point (trials without evaluations) and of the final window of the training
    measures in best_beta's table."""
    max_collapse_rate: float = 0.0
    """With seeds: a beta counts as kept while at most this share of its seeds failed (0: kept in every seed)."""

    def rule(self) -> "CollapseRule":
        """The rule alone, without the fields of a dataclass that extends it."""
        return CollapseRule(**{f.name: getattr(self, f.name) for f in fields(CollapseRule)})

    def validate_rule(self, measures: Sequence[str] = M.DIVERSITY_MEASURES) -> None:
        if self.diversity_measure not in measures:
            raise AlliterError(f"diversity_measure must be one of {', '.join(measures)}, got {self.diversity_measure!r}")
        if not 0 < self.diversity_share <= 1:
            raise AlliterError(f"diversity_share must be in (0, 1], got {self.diversity_share}")
        if not (math.isfinite(self.fluency_margin) and self.fluency_margin >= 0):
            raise AlliterError(f"fluency_margin must be a finite number of nats >= 0, got {self.fluency_margin}")
        if not (math.isfinite(self.max_overuse) and (self.max_overuse == 0 or self.max_overuse > 1)):
            raise AlliterError(f"max_overuse must be a ratio above 1 (a word used this many times as often as by the "
                               f"unmodified model), or 0 for no check, got {self.max_overuse}")
        if self.window < 1:
            raise AlliterError(f"window must be at least 1 generation, got {self.window}")
        if not 0 <= self.max_collapse_rate < 1:
            raise AlliterError(f"max_collapse_rate must be in [0, 1), got {self.max_collapse_rate}")

    def judge(self, point: dict[str, Any], baseline: dict[str, Any]) -> str:
        """kept, collapsed (diversity under the share), degenerate (fluency over the margin) or narrowed (a word
        over-used past max_overuse; a point measured before alliter had it: not judged so)."""
        d, d0 = diversity(point, self.diversity_measure), diversity(baseline, self.diversity_measure)
        if d < self.diversity_share * d0:
            return COLLAPSED
        if point["fluency"] - baseline["fluency"] > self.fluency_margin:
            return DEGENERATE
        overuse = point.get("top_overuse")
        if self.max_overuse and overuse is not None and not _isnan(overuse) and overuse > self.max_overuse:
            return NARROWED
        return KEPT

    def judge_trial(self, points: Sequence[dict[str, Any]]) -> Judgement:
        """Judge a trial's points (in order of generations; the first is the unmodified model's, at generation 0)."""
        if not points:
            return Judgement([], [], [], [], [])
        baseline = points[0]
        verdicts, failed_at, failed_as = [], None, None
        for point in points:
            verdict = self.judge(point, baseline)
            if verdict != KEPT and failed_at is None:
                failed_at, failed_as = int(point["generations"]), verdict
            verdicts.append(verdict)
        ok = [v == KEPT and (failed_at is None or int(p["generations"]) < failed_at) for v, p in zip(verdicts, points)]
        stable = [ok[i] and i + 1 < len(ok) and ok[i + 1] for i in range(len(ok))]  # the last point: never
        d0 = diversity(baseline, self.diversity_measure)
        kept = [diversity(p, self.diversity_measure) / d0 if d0 > 0 else math.nan for p in points]
        gaps = [p["fluency"] - baseline["fluency"] for p in points]
        return Judgement([int(p["generations"]) for p in points], verdicts, stable, kept, gaps, failed_at, failed_as)

    def seeds_failed(self, failed: Sequence[bool]) -> bool:
        """A beta's verdict over its seeds: failed when more than `max_collapse_rate` of them failed."""
        return bool(failed) and sum(failed) / len(failed) > self.max_collapse_rate + 1e-12

    def describe(self) -> str:
        return (f"{self.diversity_measure} under {self.diversity_share:.0%} of the unmodified model's (collapsed), "
                f"fluency more than {self.fluency_margin:g} nats worse than its (degenerate)"
                + (f", or a word used more than {self.max_overuse:g}x as often as by it (narrowed)" if self.max_overuse
                   else ""))


def seeds_failed_at(failed_at: Sequence[float], max_collapse_rate: float) -> float:
    """When a beta fails: the generation at which more than `max_collapse_rate` of its trials (seeds) have
    failed (NaN in `failed_at`: never), NaN if they never do."""
    times = sorted(math.inf if (t is None or math.isnan(t)) else t for t in failed_at)
    if not times:
        return math.nan
    at = times[int(math.floor(max_collapse_rate * len(times) + 1e-9))]
    return float(at) if math.isfinite(at) else math.nan


def training_points(groups: Sequence[dict[str, Any]], window: int, partial: bool = True) -> list[dict[str, Any]]:
    """A trial's training points (the fallback when it has no evaluations), from its groups' metrics in order: the
    first group as the unmodified model's point (generation 0), then the mean of each window of generations
    (0, w], (w, 2w], ... and (`partial`) of the window ending at the last group, when that is off this grid."""
    rows = [g for g in groups if g.get("generations") is not None]
    if not rows:
        return []

    def point(chunk: Sequence[dict[str, Any]], generations: int) -> dict[str, Any]:
        out: dict[str, Any] = {"generations": generations}
        for column, name in TRAINING_MEASURES.items():
            values = [float(g[column]) for g in chunk if g.get(column) is not None and not _isnan(g[column])]
            out[name] = sum(values) / len(values) if values else math.nan
        kl = [-float(g["kl_penalty_mean"]) for g in chunk if g.get("kl_penalty_mean") is not None]
        out["kl"] = sum(kl) / len(kl) if kl else math.nan
        return out

    points = [point(rows[:1], 0)]
    last = int(rows[-1]["generations"])
    ends = list(range(window, last + 1, window)) + ([last] if last % window and partial else [])
    for end in ends:
        chunk = [g for g in rows if end - window < int(g["generations"]) <= end]
        if chunk:
            points.append(point(chunk, end))
    return points


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)

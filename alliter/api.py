"""alliter from Python (a notebook): `alliter.run_sweep(**flags)` runs a sweep and returns its folder,
`alliter.load(folder, **rule_settings)` reads it into one SweepAnalysis.

    import alliter
    folder = alliter.run_sweep(betas=[0, 10], max_generations=200)
    result = alliter.load(folder)
    result.choice.value, result.summary, result.plot("pareto")

The settings are the command lines' own: run_sweep's keywords are `alliter sweep`'s flags (`max_generations=200` is
`--max-generations 200`), parsed by the same parser (alliter.sweep.command.parse), and load's are best_beta's rule
flags (alliter.analyse.judge.AnalysisConfig). The names are verbs, so they do not shadow the packages alliter.sweep
and alliter.analyse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from matplotlib.figure import Figure

from alliter.analyse.judge import Analysis, AnalysisConfig, BestPoint, Choice, analyse
from alliter.cli import AlliterError


def sweep_argv(flags: dict[str, Any]) -> list[str]:
    """Keywords -> the sweep's command-line tokens: `max_generations=200` -> `--max-generations 200`, a list or tuple
    -> its items joined by commas, a bool -> true or false; None is left out (the flag's default)."""
    argv = []
    for name, value in flags.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        else:
            text = str(value)
        argv += [f"--{name.replace('_', '-')}", text]
    return argv


def run_sweep(**flags: Any) -> Path | str:
    """Run (or, with resume=True, continue) a sweep with `alliter sweep`'s flags as keywords; returns its folder (its
    URI for a bucket's). Raises AlliterError for a bad setting, and when a trial errored or the sweep was interrupted
    (the message says how to continue it)."""
    import ray

    from alliter.sweep.command import parse
    from alliter.sweep.run import run_sweep as run

    sweep, base, rule, given = parse(sweep_argv(flags))
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the sweep's warnings, as its command prints them
    ours = not ray.is_initialized()
    try:
        outcome = run(sweep, base, given, rule)
    finally:
        if ours and ray.is_initialized():  # a Ray this call started ends with it: the next call starts its own
            ray.shutdown()
    if outcome.status in ("errored", "interrupted"):
        raise AlliterError(f"the sweep at {outcome.exp_path} {outcome.status} (the lines above say why); continue it "
                           "with run_sweep(resume=True, name=..., storage=...) and the same settings")
    return outcome.exp_path if "://" in outcome.exp_path else Path(outcome.exp_path)


@dataclass
class SweepAnalysis:
    """A sweep's analysis as best_beta makes it: the frames, the choice and the best point (typed), the stories at a
    point and the plots as figures. `analysis` is the whole of it (alliter.analyse.judge.Analysis)."""

    analysis: Analysis

    @property
    def folder(self) -> Path:
        return self.analysis.sweep

    @property
    def knob(self) -> str:
        """What the sweep varies: "beta", or "kl_target" (the frames hold its values in their "value" column)."""
        return self.analysis.knob.name

    @property
    def points(self) -> pd.DataFrame:
        """One row per (trial, evaluated point): its measures and the rule's verdict."""
        return self.analysis.points

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial: its final point, where it failed and as what."""
        return self.analysis.per_trial

    @property
    def summary(self) -> pd.DataFrame:
        """One row per value of the knob (seeds pooled): the verdict, the Pareto front, the chosen one."""
        return self.analysis.summary

    @property
    def choice(self) -> Choice | None:
        return self.analysis.choice

    @property
    def best_point(self) -> BestPoint | None:
        return self.analysis.best_point

    @property
    def notes(self) -> list[str]:
        return self.analysis.notes

    def reason(self) -> str:
        """The choice and why, in best_beta's sentences."""
        from alliter.analyse.report import reason

        return reason(self.analysis)

    def stories(self, value: float | None = None, generations: int | None = None) -> pd.DataFrame:
        """The evaluation stories of a value (default: the best point's, else the choice's) at `generations` (default:
        the best point's, else the value's final point), of its trial with the lowest seed; best_beta's
        `examples` of them (load(..., examples=N))."""
        from alliter.analyse.report import point_stories

        if value is None:
            chosen = self.best_point or self.choice
            if chosen is None:
                raise AlliterError("the sweep has no best point and no choice: pass a value")
            value = chosen.value
            if generations is None and self.best_point is not None:
                generations = self.best_point.generations
        if not any(t.value == value for t in self.analysis.trials):
            values = ", ".join(f"{t.value:g}" for t in self.analysis.trials)
            raise AlliterError(f"{self.knob} {value:g} is not in the sweep (its values: {values})")
        return pd.DataFrame(point_stories(self.analysis, value, generations)[1])

    def plot(self, name: str) -> Figure:
        """One of best_beta's plots as a matplotlib Figure: evaluations, frontier, letters, raw_reward, kl_penalty,
        diversity or pareto."""
        from alliter.analyse.plots import plot

        return plot(self.analysis, name)

    @property
    def plots(self) -> Sequence[str]:
        """The names plot() takes."""
        from alliter.analyse.plots import PLOTS

        return [p.removesuffix(".png") for p in PLOTS]


def load(folder: str | Path, **rule_settings: Any) -> SweepAnalysis:
    """A sweep's folder (or a sweep URI, copied to results/ first as best_beta does) read and judged by the rule,
    with best_beta's rule flags as keywords (`diversity_share=0.5`)."""
    from dataclasses import fields

    from alliter.analyse.command import local_sweep

    known = {f.name for f in fields(AnalysisConfig)}
    unknown = sorted(set(rule_settings) - known)
    if unknown:
        raise AlliterError(f"load() has no setting {unknown[0]!r}; the rule's: {', '.join(sorted(known))}")
    return SweepAnalysis(analyse(local_sweep(str(folder)), AnalysisConfig(**rule_settings)))

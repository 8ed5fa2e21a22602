"""Pick the beta, and the point in training, that balances alliteration against diversity and fluency.

    python analysis/best_beta.py                        # the newest sweep under ./results
    python analysis/best_beta.py results/coarse --json  # the choice, machine-readable, on stdout
    python analysis/best_beta.py s3://bucket/prefix/SWEEP  # copied to results/SWEEP first (no checkpoints)

The sweep's frames (alliter.analyse.frames) with the rule (alliter.rule) applied: per point, per trial, per beta,
the choice and the best point.

Points are judged by the rule of alliter.rule, on their evaluations (fresh stories of the policy at that point,
the same random numbers at every point): kept, collapsed (repetition) or degenerate (non-words). A trial fails at
its first point that is not kept.

The choice: among the betas that never failed (in more than --max-collapse-rate of their seeds), the one with the
highest alliteration (mean raw reward) at its final evaluation. Kept betas whose alliteration gain over the
unmodified model is under `under_optimised_share` of the best such gain, or under `min_gain`, are
under-optimised. The best point, the default export: the stable point (kept, and so is the trial's next
evaluated point) with the highest alliteration, over every beta and generation. Trials of the same beta (seeds)
are averaged point by point.

Near-duplicates are measured with self-BLEU (sacrebleu's sentence BLEU of each text against the rest of its
group, 0: nothing shared, 1: copies): distinct-n and the unique fraction see exact copies and repeated n-grams,
self-BLEU also scores stories that differ in a few words as nearly the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alliter import measures as M
from alliter.analyse.frames import Trial, group_frame, load_trials, read_search, sweep_knob, window_frame
from alliter.analyse.letters import UNMODIFIED, letter_frame
from alliter.cli import AlliterError
from alliter.config import TrainConfig
from alliter.knob import BETA, VALUE, Knob
from alliter.rule import CollapseRule, Judgement, as_diversity, seeds_failed_at, training_points


@dataclass
class AnalysisConfig(CollapseRule):
    """The collapse rule's knobs (alliter.rule.CollapseRule, shared with the sweep) and the report's."""

    under_optimised_share: float = 0.5
    """A kept beta is under-optimised when its alliteration gain over the unmodified model
    is below this share of the best such gain."""
    min_gain: float = 0.5
    """Alliteration gain (mean raw reward) under which a beta is under-optimised in any case."""
    examples: int = 3
    """Evaluation stories of every beta shown in the report, at its final point (and its last training
    generations)."""

    def validate(self) -> "AnalysisConfig":
        self.validate_rule()
        if not 0 <= self.under_optimised_share <= 1:
            raise AlliterError("under_optimised_share must be in [0, 1]")
        if self.examples < 0:
            raise AlliterError(f"examples must be >= 0, got {self.examples}")
        return self


@dataclass(frozen=True)
class Choice:
    """best_beta's choice: the knob's value (a beta, or a KL target) that never failed with the highest alliteration
    at its final point; its summary row's main measures as attributes, the whole row in `row`."""

    knob: Knob  # what the sweep varies
    value: float  # the knob's value
    verdict: str  # "balanced" or "under-optimised"
    point: int  # the generations of its final point
    generations: int  # the most generations its trials ran
    trials: int  # its trials (seeds)
    failed_seeds: int
    alliteration: float  # mean raw reward at the final point (mean over seeds)
    alliteration_se: float | None  # its standard error over seeds; None with one seed
    alliteration_gain: float  # over the unmodified model
    diversity: float
    diversity_kept: float  # a share of the unmodified model's
    fluency_gap: float  # nats over the unmodified model's
    beta: float | None  # the beta (of a KL-target sweep: its trials' final beta)
    row: dict[str, Any] = field(repr=False, compare=False)  # the summary's row, JSON-ready (best_beta --json)

    @classmethod
    def from_row(cls, row: dict[str, Any], knob: Knob) -> "Choice":
        """From the summary's row (plain Python values)."""
        return cls(knob, float(row[VALUE]), row["verdict"], int(row["point"]), int(row["generations"]),
                   int(row["trials"]), int(row["failed_seeds"]), row["alliteration"], row["alliteration_se"],
                   row["alliteration_gain"], row["diversity"], row["diversity_kept"], row["fluency_gap"], row.get("beta"),
                   row)

    def as_dict(self) -> dict[str, Any]:
        """The choice as best_beta's JSON writes it: the summary's row as summary.csv names it, with "knob" (its
        name) and "value"."""
        named = {k: v for k, v in self.row.items() if k not in (VALUE, self.knob.name)}
        return {self.knob.name: self.value, **named, "knob": self.knob.name, "value": self.value}


@dataclass(frozen=True)
class BestPoint:
    """The stable point with the highest alliteration over every value and generation (seeds averaged), the default
    export (alliter.analyse.judge.best_point)."""

    knob: Knob
    value: float  # the knob's value
    beta: float  # the beta there (a KL-target sweep's: its trials' mean beta at that point)
    generations: int
    alliteration: float
    diversity: float
    diversity_kept: float
    fluency_gap: float
    top_overuse: float
    trials: int
    stable_trials: int
    next: int | None  # the next evaluated point's generations (kept too); None at a trial's end
    diversity_threshold: float
    failed_at: float | None  # where the value fails (seeds: as the rule counts them); None: never
    source: str  # "evaluation", or "training" (points from training windows)
    overused: list[Any]  # its stories' over-used words against the unmodified model's (alliter.measures)
    stories: int  # how many stories, pooled over the value's seeds

    def as_dict(self) -> dict[str, Any]:
        """The point as best_beta's JSON writes it (its keys in this order)."""
        return {
            "overused": self.overused, "stories": self.stories, "knob": self.knob.name, "value": self.value,
            self.knob.name: self.value, "beta": self.beta, "generations": self.generations,
            "alliteration": self.alliteration, "diversity": self.diversity, "diversity_kept": self.diversity_kept,
            "fluency_gap": self.fluency_gap, "top_overuse": self.top_overuse, "trials": self.trials,
            "stable_trials": self.stable_trials, "next": self.next, "diversity_threshold": self.diversity_threshold,
            "failed_at": self.failed_at, "source": self.source,
        }


@dataclass(frozen=True)
class Overused:
    """A point's over-used words: its value's seeds' stories pooled, against their unmodified model's (generation 0)."""

    words: list[list]  # alliter.measures.overused_words' rows, most over-used first (at most 5)
    stories: int
    base_stories: int


class PointWords:
    """Each point's over-used words, computed once however many readers ask (the best point, the report, the study's
    write-up), as `analysis.overused(value, generations)`. A point pools its value's trials (seeds), a search's
    dropped ones left out."""

    def __init__(self, trials: list[Trial], window: int) -> None:
        self._trials, self._window = trials, window
        self._seen: dict[tuple[float, int], Overused] = {}

    def __call__(self, value: float, generations: int) -> Overused:
        key = (value, generations)
        if key not in self._seen:
            mine = [t for t in self._trials if t.value == value]
            pool = [t for t in mine if not t.dropped] or mine
            texts = [x for t in pool for x in t.stories(generations, self._window)["text"]]
            base = [x for t in pool for x in t.stories(0, self._window)["text"]]
            self._seen[key] = Overused(M.overused_words(texts, base), len(texts), len(base))
        return self._seen[key]


@dataclass
class Analysis:
    cfg: AnalysisConfig
    sweep: Path  # the sweep's folder
    knob: Knob  # what the sweep varies: the frames hold its values in their VALUE column
    trials: list[Trial]
    groups: pd.DataFrame  # one row per (trial, group): the trainer's metrics and the text measures
    generations: pd.DataFrame  # one row per generated text
    points: pd.DataFrame  # one row per (trial, evaluated point): its measures and the rule's verdict
    windows: pd.DataFrame  # one row per (value, window along training)
    summary: pd.DataFrame  # one row per value: its final points, the verdict
    choice: Choice | None
    best_point: BestPoint | None
    notes: list[str] = field(default_factory=list)
    search: dict[str, Any] | None = None  # a search sweep's path (alliter/search.py's search.json)
    letters: pd.DataFrame = field(default_factory=pd.DataFrame)  # which letters alliterate (alliter.analyse.letters)
    recipe: TrainConfig = field(default_factory=TrainConfig)  # the first trial's config, its recipe's knobs filled in
    trl_units: dict[str, Any] | None = None  # the best point's beta in TRL's KL units (`trl_units`)
    per_trial: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per trial (`trial_frame`)
    overused: PointWords = field(default=None, repr=False)  # type: ignore[assignment]  # None: made from the trials

    def __post_init__(self) -> None:
        if self.overused is None:
            self.overused = PointWords(self.trials, self.cfg.window)

    @property
    def reward(self) -> dict[str, Any]:
        """The reward the trials ran with (alliter.train.reward's describe()), the first trial's."""
        return self.trials[0].reward


# --- points, the rule ---------------------------------------------------------------------------------

LETTER_COLUMNS = ("raw_alliteration", "top_letters", "letter_entropy", "t_s_share")  # the summary's, per value
POINT_MEASURES = M.POINT_MEASURES


def trial_points(trial: Trial, groups: pd.DataFrame, cfg: AnalysisConfig, bleu: Any) -> tuple[list[dict], str]:
    """A trial's points in order of generations (the first: the unmodified model's) and where they come from:
    its evaluations, else (none) its training groups, a point per window (alliter.rule.training_points)."""
    if len(trial.evaluations):
        return M.evaluation_measures(trial.evaluations.to_dict("records"), trial.group_size, bleu), "evaluation"
    rows = groups[groups["trial"] == trial.name].sort_values("generations").to_dict("records")
    points = training_points(rows, cfg.window)
    base = trial.stories(0, cfg.window)["text"].tolist()
    for point in points if base else []:  # the window's texts together, against the first group's
        point.update(M.pooled_measures(trial.stories(point["generations"], cfg.window)["text"].tolist(), base))
    return points, "training"


def point_frame(trials: list[Trial], groups: pd.DataFrame, cfg: AnalysisConfig) -> tuple[pd.DataFrame, dict[str, Judgement]]:
    """One row per (trial, point): the point's measures, its share of the unmodified model's diversity, its
    fluency gap, the rule's verdict and whether it is stable; and each trial's judgement."""
    bleu = M.bleu()
    frames, judgements = [], {}
    for t in trials:
        points, source = trial_points(t, groups, cfg, bleu)
        judgement = cfg.judge_trial(points)
        judgements[t.name] = judgement
        if not points:
            continue
        frame = pd.DataFrame(points).assign(
            trial=t.name, **{VALUE: t.value}, seed=t.seed, source=source, verdict=judgement.verdicts, stable=judgement.stable,
            diversity_kept=judgement.diversity_kept, fluency_gap=judgement.fluency_gap,
        )
        frames.append(frame)
    columns = ["trial", VALUE, "seed", "generations", *POINT_MEASURES, "diversity_kept", "fluency_gap",
               "verdict", "stable", "source"]
    if not frames:
        return pd.DataFrame(columns=columns), judgements
    points = pd.concat(frames, ignore_index=True)
    for name in POINT_MEASURES:
        if name not in points:
            points[name] = math.nan
    points["diversity"] = as_diversity(points[cfg.diversity_measure], cfg.diversity_measure)
    return points[[*columns, "diversity"]], judgements


def trial_frame(trials: list[Trial], groups: pd.DataFrame, points: pd.DataFrame, judgements: dict[str, Judgement],
                cfg: AnalysisConfig) -> pd.DataFrame:
    """Per trial: its final point's measures and the unmodified model's (its first point), where it failed (NaN:
    it never did) and as what, the training measures over its final window, and whether a search dropped it."""
    rows = []
    for t in trials:
        mine = points[points["trial"] == t.name].sort_values("generations")
        g = groups[groups["trial"] == t.name]
        last = g["generations"].max()
        final_window = g[g["generations"] > last - cfg.window]
        judgement = judgements[t.name]
        betas = g["beta"] if "beta" in g else pd.Series([t.beta])  # a KL-target trial's beta, group by group
        row: dict[str, Any] = {VALUE: t.value, "trial": t.name, "seed": t.seed, "generations": t.done,
                               "dropped": t.dropped, "status": t.status,
                               "kl_penalty": final_window["kl_penalty_mean"].mean(),
                               "ce_ref": final_window["ce_ref_mean"].mean(),
                               "failed_at": math.nan if judgement.failed_at is None else float(judgement.failed_at),
                               "failed_as": judgement.failed_as, "failed": not judgement.kept,
                               "source": mine["source"].iloc[0] if len(mine) else None}
        final = mine.iloc[-1] if len(mine) > 1 else None  # a trial with its baseline alone has no final point
        base = mine.iloc[0] if len(mine) else None
        for name in (*POINT_MEASURES, "diversity", "diversity_kept", "fluency_gap"):
            row[name] = final[name] if final is not None else math.nan
        row["point"] = int(final["generations"]) if final is not None else math.nan
        for name in ("alliteration", "diversity", "fluency"):
            row[f"{name}_baseline"] = base[name] if base is not None else math.nan
        if t.kl_target is not None:
            row.update(beta=float(betas.iloc[-1]), beta_min=float(betas.min()), beta_max=float(betas.max()))
        else:
            row["beta"] = t.beta
        rows.append(row)
    return pd.DataFrame(rows)


def summary_frame(trials: list[Trial], groups: pd.DataFrame, points: pd.DataFrame, judgements: dict[str, Judgement],
                  cfg: AnalysisConfig) -> pd.DataFrame:
    """Per value of the sweep's knob (a beta, or a KL target), over its trials (seeds): the final point's measures
    (mean, and standard error when there are several seeds), the unmodified model's, the failure rate and the
    generation of the failure, the verdict and the Pareto front; a KL-target sweep adds its trials' final beta and
    the range their beta moved in."""
    per_trial = trial_frame(trials, groups, points, judgements, cfg)
    dropped = per_trial.groupby(VALUE)["dropped"].all()  # a value the search only ever ran to drop it
    used = per_trial[~per_trial["dropped"] | per_trial[VALUE].map(dropped)]
    by_beta = used.drop(columns=["trial", "dropped", "status", "source", "failed_as", "seed"]).groupby(VALUE)
    s = by_beta.mean(numeric_only=True)
    for name in ("alliteration", "diversity"):  # NaN for one seed: no interval
        s[f"{name}_se"] = by_beta[name].std(ddof=1) / np.sqrt(by_beta[name].count())
    s["failed_seeds"] = by_beta["failed"].sum().astype(int)
    s["collapse_rate"] = by_beta["failed"].mean()
    status = pd.DataFrame([(t.value, t.status) for t in trials], columns=[VALUE, "status"]).groupby(VALUE)["status"]
    s.insert(0, "trials", used.groupby(VALUE).size())
    s.insert(1, "status", status.agg(lambda v: ", ".join(sorted(set(v)))))
    s["generations"] = by_beta["generations"].max()
    s["point"] = by_beta["point"].max()
    if "beta_min" in used:  # the range over its seeds
        s["beta_min"], s["beta_max"] = by_beta["beta_min"].min(), by_beta["beta_max"].max()
    s["source"] = used.groupby(VALUE)["source"].agg(lambda v: ", ".join(sorted({x for x in v if x})) or None)
    s["alliteration_gain"] = s["alliteration"] - s["alliteration_baseline"]
    s["diversity_threshold"] = cfg.diversity_share * s["diversity_baseline"]
    s["fluency_limit"] = s["fluency_baseline"] + cfg.fluency_margin
    s["failed_at"] = [seeds_failed_at(list(g["failed_at"]), cfg.max_collapse_rate) for _, g in by_beta]
    failures = used[used["failed"]].groupby(VALUE)["failed_as"]
    s["failed_as"] = failures.agg(lambda v: v.mode().sort_values().iloc[0]).reindex(s.index)  # ties: collapsed

    failed = pd.Series([cfg.seeds_failed(list(g["failed"])) for _, g in by_beta], index=s.index)
    measured = s["alliteration"].notna()
    kept = ~failed & measured & ~dropped
    best_gain = s.loc[kept, "alliteration_gain"].max()
    gain = s["alliteration_gain"]
    learned = kept & (gain >= cfg.min_gain) & (gain >= cfg.under_optimised_share * best_gain)
    verdict = np.where(failed, s["failed_as"].fillna("collapsed"), np.where(learned, "balanced", "under-optimised"))
    s["verdict"] = np.where(dropped, "dropped", np.where(~measured, "unmeasured", verdict))
    s["pareto"] = pareto_front(s["alliteration"].where(~dropped), s["diversity"].where(~dropped))
    s["chosen"] = False
    if kept.any():
        s.loc[s.loc[kept, "alliteration"].idxmax(), "chosen"] = True
    return s.reset_index()


def pareto_front(alliteration: pd.Series, diversity: pd.Series) -> pd.Series:
    """True where no other value has at least as much of both and more of one."""
    a, d = alliteration.to_numpy(), diversity.to_numpy()

    def dominated(i: int) -> bool:
        return bool(np.any((a >= a[i]) & (d >= d[i]) & ((a > a[i]) | (d > d[i]))))

    on = [bool(np.isfinite(a[i]) and np.isfinite(d[i])) and not dominated(i) for i in range(len(a))]
    return pd.Series(on, index=alliteration.index)


def point_means(points: pd.DataFrame, cfg: AnalysisConfig, dropped: set[str] = frozenset()) -> pd.DataFrame:
    """Per (value, generations) after generation 0: the points' measures averaged over the value's trials
    (seeds), how many of them are stable there, and whether the value's point is stable (at most
    `max_collapse_rate` of its seeds are not); trials a search dropped are left out."""
    p = points[(points["generations"] > 0) & ~points["trial"].isin(dropped)]
    if not len(p):
        return pd.DataFrame(columns=[VALUE, "generations", "trials", "stable_trials", "stable", *POINT_MEASURES])
    by = p.groupby([VALUE, "generations"])
    means = by[[*POINT_MEASURES, "diversity", "diversity_kept", "fluency_gap"]].mean()
    means["trials"] = by.size()
    means["stable_trials"] = by["stable"].sum().astype(int)
    means["stable"] = [not cfg.seeds_failed([not s for s in g["stable"]]) for _, g in by]
    return means.reset_index()


def best_point(points: pd.DataFrame, summary: pd.DataFrame, trials: list[Trial], groups: pd.DataFrame,
               cfg: AnalysisConfig, overused: PointWords) -> BestPoint | None:
    """The stable point with the highest alliteration over every value and generation (seeds averaged): kept, and
    so is the next evaluated point of its trials, so it never sits on the edge of a collapse. `value` is the
    knob's (a beta, or a KL target: then `beta` is the trials' mean beta at that point)."""
    knob = sweep_knob(trials)
    dropped = {t.name for t in trials if t.dropped}
    means = point_means(points, cfg, dropped)
    stable = means[means["stable"]]
    if not len(stable):
        return None
    row = stable.loc[stable["alliteration"].idxmax()]
    value, g = float(row[VALUE]), int(row["generations"])
    mine = points[(points[VALUE] == value) & ~points["trial"].isin(dropped)].sort_values("generations")
    later = sorted(int(x) for x in mine["generations"].unique() if x > g)
    s = summary.set_index(VALUE).loc[value]
    names = set(mine["trial"])
    at = groups[groups["trial"].isin(names) & (groups["generations"] == g)]
    beta = float(at["beta"].mean()) if knob is not BETA and len(at) else value
    words = overused(value, g)  # pooled over the seeds
    v = plain({"alliteration": row["alliteration"], "diversity": row["diversity"],
               "diversity_kept": row["diversity_kept"], "fluency_gap": row["fluency_gap"], "top_overuse": row["top_overuse"],
               "diversity_threshold": s["diversity_threshold"], "failed_at": s["failed_at"]})
    return BestPoint(knob=knob, value=value, beta=beta, generations=g, trials=int(row["trials"]),
                     stable_trials=int(row["stable_trials"]), next=later[0] if later else None,
                     source=", ".join(sorted(set(mine["source"]))),
                     overused=words.words, stories=words.stories, **v)


def trial_config(trial: Trial) -> TrainConfig:
    """A trial's TrainConfig as it ran (its recipe's knobs filled in)."""
    return TrainConfig.from_dict(trial.config).with_recipe()


def trl_units(groups: pd.DataFrame, value: float, generations: int, beta: float) -> dict[str, Any] | None:
    """How a beta of the study's KL units (the per-token mean over the sample) reads in TRL's (the KL summed over the
    completion's tokens), measured on the value's own training samples up to `generations`: the ratio of the two
    KLs, each summed over those groups (so that the groups of a larger KL weigh more); None where either KL is not
    above 0 there, or the trials of before alliter recorded the completion's KL."""
    g = groups[(groups[VALUE] == value) & (groups["generations"] <= generations)]
    if "kl_completion_sum_mean" not in g or g["kl_completion_sum_mean"].isna().any():
        return None
    summed, per_token = float(g["kl_completion_sum_mean"].sum()), float(-g["kl_penalty_mean"].sum())
    if not (summed > 0 and per_token > 0):
        return None
    ratio = summed / per_token
    return {"ratio": ratio, "beta": beta, "beta_trl": beta / ratio, "generations": generations}


def analyse(sweep: str | Path, cfg: AnalysisConfig | None = None) -> Analysis:
    """Read every trial of a sweep's folder and apply the rule; raises AlliterError for a user error."""
    cfg = (cfg or AnalysisConfig()).validate()
    sweep = Path(sweep)
    trials, notes = load_trials(sweep)
    groups, generations = group_frame(trials, cfg.diversity_measure)
    points, judgements = point_frame(trials, groups, cfg)
    knob = sweep_knob(trials)
    windows = window_frame(groups, cfg.window, trials)
    summary = summary_frame(trials, groups, points, judgements, cfg)
    letters = letter_frame(trials, cfg.window)
    per_value = letters[letters["row"] != UNMODIFIED].set_index(VALUE)
    for column in LETTER_COLUMNS:
        summary[column] = summary[VALUE].map(per_value[column])
    chosen = summary[summary["chosen"]]
    choice = Choice.from_row(plain(chosen.iloc[0].to_dict()), knob) if len(chosen) else None
    words = PointWords(trials, cfg.window)
    point = best_point(points, summary, trials, groups, cfg, words)
    recipe = trial_config(trials[0])
    if len({trial_config(t).describe_recipe() for t in trials}) > 1:
        notes.append("the trials ran with different recipes or knobs: they are not one sweep; the report names the "
                     "first trial's")
    units = None
    if point is not None and recipe.kl_reduction == "mean":
        units = trl_units(groups, point.value, point.generations, point.beta)
    return Analysis(cfg, sweep, knob, trials, groups, generations, points, windows, summary, choice, point, notes,
                    read_search(sweep), letters, recipe, plain(units),
                    trial_frame(trials, groups, points, judgements, cfg), words)


def plain(value: Any) -> Any:
    """numpy scalars and NaN -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value

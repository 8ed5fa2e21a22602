"""Pick the beta, and the point in training, that balances alliteration against diversity and fluency.

    python analysis/best_beta.py                        # the newest sweep under ./results
    python analysis/best_beta.py results/coarse --json  # the choice, machine-readable, on stdout
    python analysis/best_beta.py s3://bucket/prefix/SWEEP  # copied to results/SWEEP first (no checkpoints)

Reads the trial folders of a sweep (any folder holding metrics.jsonl or config.json), so it works on a finished
sweep, on one still running, on errored trials, and on single runs of `python -m alliter.train`. metrics.jsonl is
the per-group record (Ray's result.json is not read: it can hold duplicated rows after a restore),
generations.jsonl the training texts, evaluations.jsonl the stories of every evaluation.

Points are judged by the rule of alliter.collapse, on their evaluations (fresh stories of the policy at that point,
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

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from alliter import reward as R
from alliter.collapse import CollapseRule, Judgement, seeds_failed_at, training_points
from alliter.config import (
    CONFIG_FILE,
    DROPPED_PREFIX,
    EVALUATIONS_FILE,
    GENERATIONS_FILE,
    METRICS_FILE,
    RESULTS_DIR,
    SEARCH_FILE,
    STOP_REASON_FILE,
    AlliterError,
)

RAY_ERROR_FILE = "error.txt"
RAY_PARAMS_FILE = "params.json"
# every file of a sweep that the analysis reads (a sweep in a bucket is copied with these only)
SWEEP_FILES = (CONFIG_FILE, RAY_PARAMS_FILE, METRICS_FILE, GENERATIONS_FILE, EVALUATIONS_FILE, RAY_ERROR_FILE,
               STOP_REASON_FILE, SEARCH_FILE, "experiment_state-*.json")

# training window name -> per-group column; every one is averaged over a window's groups
MEASURES = {
    "alliteration": "raw_reward_mean",
    "distinct_1": "distinct_1",
    "distinct_2": "distinct_2",
    "unique_fraction": "unique_fraction",
    "self_bleu": "self_bleu",
    "repeated_4grams": "repeated_4grams",
    "kl_penalty": "kl_penalty_mean",
    "ce_ref": "ce_ref_mean",
    "diversity": "diversity",
}


@dataclass
class AnalysisConfig(CollapseRule):
    """The collapse rule's knobs (alliter.collapse.CollapseRule, shared with the sweep) and the report's."""

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


@dataclass
class Trial:
    path: Path
    name: str
    beta: float
    max_generations: int | None
    metrics: pd.DataFrame
    generations: pd.DataFrame
    evaluations: pd.DataFrame  # the stories of every evaluation (generations, sample, text, raw_reward, ce_ref, ...)
    seed: int = 0
    group_size: int = 10
    error: str | None = None  # the last line of Ray's error.txt
    stop_reason: str | None = None  # why the sweep stopped the trial early
    damaged: list[str] = field(default_factory=list)  # lines of its files that could not be read

    @property
    def done(self) -> int:
        return int(self.metrics["generations"].max()) if len(self.metrics) else 0

    @property
    def status(self) -> str:
        if not len(self.metrics):
            return "no data"
        if self.max_generations is not None and self.done >= self.max_generations:
            return "complete"  # Ray keeps error.txt of a failure that a restart recovered from
        if self.error is not None:
            return "errored"
        if self.max_generations is not None:
            return "stopped" if self.stop_reason else "incomplete"
        return "complete"

    @property
    def dropped(self) -> bool:
        """A search stopped it because its beta could no longer move the bracket: it says nothing about its beta."""
        return self.status == "stopped" and str(self.stop_reason).startswith(DROPPED_PREFIX)

    def notes(self) -> list[str]:
        """Lines for the user about a trial that is not simply complete."""
        where = f"trial beta={self.beta:g} ({self.name})"
        of = f"{self.done} of {self.max_generations}" if self.max_generations else f"{self.done}"
        notes = {
            "no data": f"{where}: no metrics yet; left out",
            "errored": f"{where}: errored ({self.error}); using its {of} generations",
            "incomplete": f"{where}: incomplete, {of} generations (still running, or stopped); using what it has",
            "stopped": f"{where}: stopped by the sweep ({self.stop_reason}); using its {of} generations",
        }
        out = [notes[self.status]] if self.status in notes else []
        if self.status != "no data" and not len(self.generations):
            out.append(f"{where}: no {GENERATIONS_FILE}; self-BLEU, repetition and its texts are missing")
        if self.status != "no data" and not len(self.evaluations):
            out.append(f"{where}: no evaluations ({EVALUATIONS_FILE}); judged on its training groups, which lag its "
                       "policy")
        out += [f"{where}: {line}" for line in self.damaged]
        return out


@dataclass
class Analysis:
    cfg: AnalysisConfig
    sweep: Path  # the sweep's folder
    trials: list[Trial]
    groups: pd.DataFrame  # one row per (trial, group): the trainer's metrics and the text measures
    generations: pd.DataFrame  # one row per generated text
    points: pd.DataFrame  # one row per (trial, evaluated point): its measures and the rule's verdict
    windows: pd.DataFrame  # one row per (beta, window along training)
    summary: pd.DataFrame  # one row per beta: the final window, the verdict
    choice: dict[str, Any] | None
    best_point: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    search: dict[str, Any] | None = None  # a search sweep's path (alliter/search.py's search.json)


# --- reading trials ------------------------------------------------------------------------------


def read_jsonl(path: Path, damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file. A torn last line (a trial still writing it) is skipped; any other line that is
    not a JSON object is skipped too, and named in `damaged`: a damaged line loses that line, not the trial."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows, bad = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif i != len(lines) - 1 or line.rstrip().endswith("}"):
            bad.append(i + 1)
    if bad and damaged is not None:
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        damaged.append(f"{path.name}: line{'s' if len(bad) > 1 else ''} {shown} damaged (not JSON); left out")
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except json.JSONDecodeError:
        raise AlliterError(f"{path} is not JSON") from None
    return value if isinstance(value, dict) else {}


def is_trial(path: Path) -> bool:
    """A trial folder holds the trainer's metrics.jsonl, or (before its first group) a config with a beta:
    the trainer's config.json or Ray's params.json."""
    if (path / METRICS_FILE).exists():
        return True
    for name in (CONFIG_FILE, RAY_PARAMS_FILE):
        try:
            if "beta" in _read_json(path / name):
                return True
        except AlliterError:
            return True  # a damaged config: read_trial says so
    return False


def find_trials(root: Path) -> list[Path]:
    """Trial folders under root, root included; trials do not nest, so the walk stops at one."""
    found = []
    for folder, subfolders, _ in os.walk(root):
        if is_trial(Path(folder)):
            found.append(Path(folder))
            subfolders.clear()
        else:  # Ray's checkpoint_* folders and hidden ones hold no trial
            subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "checkpoint_")))
    return found


REQUIRED = {
    METRICS_FILE: {"generations", "group", "raw_reward_mean", "kl_penalty_mean", "ce_ref_mean"},
    GENERATIONS_FILE: {"generation", "group", "text", "raw_reward"},
    EVALUATIONS_FILE: {"generations", "sample", "text", "raw_reward", "ce_ref", "ce_policy", "new_tokens"},
}


def _rows(path: Path, damaged: list[str]) -> pd.DataFrame:
    """A trial file's rows as a frame; rows without the fields the analysis needs are damaged lines too."""
    rows = read_jsonl(path, damaged)
    need = REQUIRED[path.name]
    whole = [r for r in rows if need <= r.keys()]
    if len(whole) < len(rows):
        damaged.append(f"{path.name}: {len(rows) - len(whole)} line(s) without {', '.join(sorted(need))}; left out")
    return pd.DataFrame(whole)


def read_trial(path: Path, root: Path) -> Trial:
    config = _read_json(path / CONFIG_FILE) or _read_json(path / RAY_PARAMS_FILE)
    damaged: list[str] = []
    metrics = _rows(path / METRICS_FILE, damaged)
    generations = _rows(path / GENERATIONS_FILE, damaged)
    evaluations = _rows(path / EVALUATIONS_FILE, damaged)
    beta = config.get("beta", metrics["beta"].iloc[0] if "beta" in metrics else None)
    if beta is None:
        raise AlliterError(f"{path}: no beta in {CONFIG_FILE}, {RAY_PARAMS_FILE} or {METRICS_FILE}")
    if len(metrics):
        metrics = metrics.drop_duplicates("group", keep="last").sort_values("group", ignore_index=True)
    if len(generations):
        generations = generations.drop_duplicates("generation", keep="last")
        generations = generations.sort_values("generation", ignore_index=True)
    if len(evaluations):
        evaluations = evaluations.drop_duplicates(["generations", "sample"], keep="last")
        evaluations = evaluations.sort_values(["generations", "sample"], ignore_index=True)
    name = str(Path(root.resolve().name) / path.relative_to(root))  # the sweep's name, then the trial's
    max_generations = int(config["max_generations"]) if config.get("max_generations") else None
    error, stop_reason = _last_line(path / RAY_ERROR_FILE), _last_line(path / STOP_REASON_FILE)
    return Trial(path, name, float(beta), max_generations, metrics, generations, evaluations,
                 int(config.get("seed") or 0), int(config.get("group_size") or 10), error, stop_reason, damaged)


def _last_line(path: Path) -> str | None:
    """The last non-empty line of a file (a traceback's is the exception), or None without the file."""
    if not path.exists():
        return None
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else f"{path.name} is empty")[:200]


def load_trials(root: Path) -> tuple[list[Trial], list[str]]:
    """Every trial with data of one sweep (a folder of trial folders, or one trial folder), and a note for each
    one that is not complete. A folder that holds the trials of several sweeps is refused: pooled, they would be
    one table of trials of other grids, models and days."""
    if not root.is_dir():
        raise AlliterError(f"no such folder: {root}")
    found = find_trials(root)
    if not found:
        raise AlliterError(f"no trials under {root} (a trial folder holds {METRICS_FILE} or {CONFIG_FILE})")
    sweeps = sorted({p.parent for p in found if p != root})
    if len(sweeps) > 1:
        shown = ", ".join(str(s.relative_to(root)) for s in sweeps[:8]) + (f" and {len(sweeps) - 8} more" if len(sweeps) > 8 else "")
        raise AlliterError(f"{root} holds {len(sweeps)} sweeps ({shown}); best_beta analyses one: pass its folder")
    trials, notes = [], []
    listed = tune_trial_dirs(found[0].parent) if found[0] != root else None
    for path in found:
        if listed is not None and path.name not in listed:
            notes.append(f"{path}: not in the sweep's Tune state (it started after the state was last saved: "
                         "the sweep is still running, or its driver was killed and the resumed sweep runs it "
                         "again); left out")
            continue
        try:
            trial = read_trial(path, root)
        except AlliterError as err:
            notes.append(f"{err}; left out")
            continue
        notes += trial.notes()
        trials.append(trial)
    with_data = [t for t in trials if t.status != "no data"]
    if not with_data:
        raise AlliterError(f"none of the {len(trials)} trials under {root} has any metrics yet; nothing to analyse")
    return with_data, notes


def tune_trial_dirs(sweep: Path) -> set[str] | None:
    """The trial folders that a Tune sweep's newest experiment state lists; None for a folder that is not a
    Tune sweep (single runs of alliter.train, hand-made folders)."""
    states = sorted(sweep.glob("experiment_state-*.json"))  # one per driver session; the names sort by time
    if not states:
        return None
    try:
        state = json.loads(states[-1].read_text(encoding="utf-8"))
        return {json.loads(trial)["relative_logdir"] for trial, _ in state["trial_data"]}
    except (json.JSONDecodeError, KeyError, TypeError):
        return None  # an unreadable state hides nothing


def read_search(root: Path) -> dict[str, Any] | None:
    """The search's path (alliter.search) when the folder is a search sweep."""
    path = root / SEARCH_FILE
    return _read_json(path) or None if path.exists() else None


def newest_sweep(results: Path = Path(RESULTS_DIR)) -> Path:
    """The most recently modified folder directly under ./results that holds trials."""
    if not results.is_dir():
        raise AlliterError(f"no {results}/ folder here; pass the sweep folder: best_beta.py RESULTS_DIR")
    sweeps = [p for p in results.iterdir() if p.is_dir() and find_trials(p)]
    if not sweeps:
        raise AlliterError(f"no sweep with trials under {results}/")
    return max(sweeps, key=lambda p: p.stat().st_mtime)


# --- measures --------------------------------------------------------------------------------------


def text_measures(generations: pd.DataFrame) -> pd.DataFrame:
    """Per (trial, group): distinct-n, unique fraction and self-BLEU of the group's texts, and repetition."""
    bleu = R.bleu()
    rows = []
    for (trial, group), texts in generations.groupby(["trial", "group"], sort=False)["text"]:
        texts = list(texts)
        rows.append({
            "trial": trial,
            "group": int(group) + 1,  # generations.jsonl counts groups from 0, metrics.jsonl from 1
            "distinct_1": R.distinct_n(texts, 1),
            "distinct_2": R.distinct_n(texts, 2),
            "unique_fraction": R.unique_fraction(texts),
            "self_bleu": R.self_bleu(texts, bleu),
            "repeated_4grams": float(np.mean([R.repeated_4grams(t) for t in texts])),
        })
    measures = ["distinct_1", "distinct_2", "unique_fraction", "self_bleu", "repeated_4grams"]
    return pd.DataFrame(rows, columns=["trial", "group", *measures]).astype({"group": int, **dict.fromkeys(measures, float)})


def group_frame(trials: list[Trial], measure: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy per-group frame (metrics joined with beta and the text measures), and all generations."""
    metrics = pd.concat([t.metrics.assign(trial=t.name, beta=t.beta) for t in trials], ignore_index=True)
    gens = [t.generations.assign(trial=t.name, beta=t.beta) for t in trials if len(t.generations)]
    no_texts = pd.DataFrame(columns=["trial", "beta", "generation", "group", "text", "raw_reward"])
    generations = pd.concat(gens, ignore_index=True) if gens else no_texts
    groups = metrics.merge(text_measures(generations), on=["trial", "group"], how="left", suffixes=("_trainer", ""))
    for name in ("distinct_1", "distinct_2", "unique_fraction"):  # a trial without texts keeps the trainer's
        if f"{name}_trainer" in groups:
            groups[name] = groups[name].fillna(groups.pop(f"{name}_trainer"))
    groups["diversity"] = 1 - groups["self_bleu"] if measure == "self_bleu" else groups[measure]
    return groups, generations


# --- points, the rule ---------------------------------------------------------------------------------

POINT_MEASURES = ("alliteration", "distinct_1", "distinct_2", "unique_fraction", "self_bleu", "repeated_4grams",
                  "fluency", "kl", "new_tokens")


def trial_points(trial: Trial, groups: pd.DataFrame, cfg: AnalysisConfig, bleu: Any) -> tuple[list[dict], str]:
    """A trial's points in order of generations (the first: the unmodified model's) and where they come from:
    its evaluations, else (none) its training groups, a point per window (alliter.collapse.training_points)."""
    if len(trial.evaluations):
        points = []
        for g, stories in trial.evaluations.groupby("generations", sort=True):
            rows = stories.sort_values("sample").to_dict("records")
            points.append({"generations": int(g), **R.point_measures(rows, trial.group_size, bleu)})
        return points, "evaluation"
    rows = groups[groups["trial"] == trial.name].sort_values("generations").to_dict("records")
    return training_points(rows, cfg.window), "training"


def point_frame(trials: list[Trial], groups: pd.DataFrame, cfg: AnalysisConfig) -> tuple[pd.DataFrame, dict[str, Judgement]]:
    """One row per (trial, point): the point's measures, its share of the unmodified model's diversity, its
    fluency gap, the rule's verdict and whether it is stable; and each trial's judgement."""
    bleu = R.bleu()
    frames, judgements = [], {}
    for t in trials:
        points, source = trial_points(t, groups, cfg, bleu)
        judgement = cfg.judge_trial(points, complete=t.status == "complete")
        judgements[t.name] = judgement
        if not points:
            continue
        frame = pd.DataFrame(points).assign(
            trial=t.name, beta=t.beta, seed=t.seed, source=source, verdict=judgement.verdicts, stable=judgement.stable,
            diversity_kept=judgement.diversity_kept, fluency_gap=judgement.fluency_gap,
        )
        frames.append(frame)
    columns = ["trial", "beta", "seed", "generations", *POINT_MEASURES, "diversity_kept", "fluency_gap", "verdict",
               "stable", "source"]
    if not frames:
        return pd.DataFrame(columns=columns), judgements
    points = pd.concat(frames, ignore_index=True)
    for name in POINT_MEASURES:
        if name not in points:
            points[name] = math.nan
    points["diversity"] = 1 - points["self_bleu"] if cfg.diversity_measure == "self_bleu" else points[cfg.diversity_measure]
    return points[[*columns, "diversity"]], judgements


def _means(groups: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    agg = {name: (col, "mean") for name, col in MEASURES.items() if col in groups}
    return groups.groupby(by, sort=True).agg(generations=("generations", "max"), **agg)


def window_frame(groups: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per (beta, window end): the training measures over the window's groups, averaged over trials of a beta."""
    tiled = groups.assign(window=(np.ceil(groups["generations"] / window) * window).astype(int))
    per_trial = _means(tiled, ["beta", "trial", "window"]).reset_index().drop(columns="trial")
    per_beta = per_trial.groupby(["beta", "window"])
    return per_beta.mean().assign(generations=per_beta["generations"].max()).reset_index()


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
        row: dict[str, Any] = {"beta": t.beta, "trial": t.name, "seed": t.seed, "generations": t.done,
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
        rows.append(row)
    return pd.DataFrame(rows)


def summary_frame(trials: list[Trial], groups: pd.DataFrame, points: pd.DataFrame, judgements: dict[str, Judgement],
                  cfg: AnalysisConfig) -> pd.DataFrame:
    """Per beta, over its trials (seeds): the final point's measures (mean, and standard error when there are
    several seeds), the unmodified model's, the failure rate and the generation of the failure, the verdict and
    the Pareto front."""
    per_trial = trial_frame(trials, groups, points, judgements, cfg)
    dropped = per_trial.groupby("beta")["dropped"].all()  # a beta the search only ever ran to drop it
    used = per_trial[~per_trial["dropped"] | per_trial["beta"].map(dropped)]
    by_beta = used.drop(columns=["trial", "dropped", "status", "source", "failed_as", "seed"]).groupby("beta")
    s = by_beta.mean(numeric_only=True)
    for name in ("alliteration", "diversity"):  # NaN for one seed: no interval
        s[f"{name}_se"] = by_beta[name].std(ddof=1) / np.sqrt(by_beta[name].count())
    s["failed_seeds"] = by_beta["failed"].sum().astype(int)
    s["collapse_rate"] = by_beta["failed"].mean()
    status = pd.DataFrame([(t.beta, t.status) for t in trials], columns=["beta", "status"]).groupby("beta")["status"]
    s.insert(0, "trials", used.groupby("beta").size())
    s.insert(1, "status", status.agg(lambda v: ", ".join(sorted(set(v)))))
    s["generations"] = by_beta["generations"].max()
    s["point"] = by_beta["point"].max()
    s["source"] = used.groupby("beta")["source"].agg(lambda v: ", ".join(sorted({x for x in v if x})) or None)
    s["alliteration_gain"] = s["alliteration"] - s["alliteration_baseline"]
    s["diversity_threshold"] = cfg.diversity_share * s["diversity_baseline"]
    s["fluency_limit"] = s["fluency_baseline"] + cfg.fluency_margin
    s["failed_at"] = [seeds_failed_at(list(g["failed_at"]), cfg.max_collapse_rate) for _, g in by_beta]
    failures = used[used["failed"]].groupby("beta")["failed_as"]
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
    """True where no other beta has at least as much of both and more of one."""
    a, d = alliteration.to_numpy(), diversity.to_numpy()

    def dominated(i: int) -> bool:
        return bool(np.any((a >= a[i]) & (d >= d[i]) & ((a > a[i]) | (d > d[i]))))

    on = [bool(np.isfinite(a[i]) and np.isfinite(d[i])) and not dominated(i) for i in range(len(a))]
    return pd.Series(on, index=alliteration.index)


def point_means(points: pd.DataFrame, cfg: AnalysisConfig, dropped: set[str] = frozenset()) -> pd.DataFrame:
    """Per (beta, generations) after generation 0: the points' measures averaged over the beta's trials (seeds),
    how many of them are stable there, and whether the beta's point is stable (at most `max_collapse_rate` of its
    seeds are not); trials a search dropped are left out."""
    p = points[(points["generations"] > 0) & ~points["trial"].isin(dropped)]
    if not len(p):
        return pd.DataFrame(columns=["beta", "generations", "trials", "stable_trials", "stable", *POINT_MEASURES])
    by = p.groupby(["beta", "generations"])
    means = by[[*POINT_MEASURES, "diversity", "diversity_kept", "fluency_gap"]].mean()
    means["trials"] = by.size()
    means["stable_trials"] = by["stable"].sum().astype(int)
    means["stable"] = [not cfg.seeds_failed([not s for s in g["stable"]]) for _, g in by]
    return means.reset_index()


def best_point(points: pd.DataFrame, summary: pd.DataFrame, trials: list[Trial], cfg: AnalysisConfig) -> dict[str, Any] | None:
    """The stable point with the highest alliteration over every beta and generation (seeds averaged): kept, and
    so is the next evaluated point of its trials, so it never sits on the edge of a collapse."""
    dropped = {t.name for t in trials if t.dropped}
    means = point_means(points, cfg, dropped)
    stable = means[means["stable"]]
    if not len(stable):
        return None
    row = stable.loc[stable["alliteration"].idxmax()]
    beta, g = float(row["beta"]), int(row["generations"])
    mine = points[(points["beta"] == beta) & ~points["trial"].isin(dropped)].sort_values("generations")
    later = sorted(int(x) for x in mine["generations"].unique() if x > g)
    s = summary.set_index("beta").loc[beta]
    return {
        "beta": beta, "generations": g, "alliteration": row["alliteration"], "diversity": row["diversity"],
        "diversity_kept": row["diversity_kept"], "fluency_gap": row["fluency_gap"], "trials": int(row["trials"]),
        "stable_trials": int(row["stable_trials"]), "next": later[0] if later else None,
        "diversity_threshold": s["diversity_threshold"], "failed_at": s["failed_at"],
        "source": ", ".join(sorted(set(mine["source"]))),
    }


def analyse(sweep: str | Path, cfg: AnalysisConfig | None = None) -> Analysis:
    """Read every trial of a sweep's folder and apply the rule; raises AlliterError for a user error."""
    cfg = (cfg or AnalysisConfig()).validate()
    sweep = Path(sweep)
    trials, notes = load_trials(sweep)
    groups, generations = group_frame(trials, cfg.diversity_measure)
    points, judgements = point_frame(trials, groups, cfg)
    windows = window_frame(groups, cfg.window)
    summary = summary_frame(trials, groups, points, judgements, cfg)
    chosen = summary[summary["chosen"]]
    choice = plain(chosen.iloc[0].to_dict()) if len(chosen) else None
    point = plain(best_point(points, summary, trials, cfg))
    return Analysis(cfg, sweep, trials, groups, generations, points, windows, summary, choice, point, notes,
                    read_search(sweep))


def plain(value: Any) -> Any:
    """numpy scalars and NaN -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value

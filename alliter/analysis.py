"""Pick the beta, and the point in training, that balances alliteration against diversity.

    python analysis/best_beta.py                        # the newest sweep under ./results
    python analysis/best_beta.py results/coarse --json  # the choice, machine-readable, on stdout
    python analysis/best_beta.py s3://bucket/prefix/SWEEP  # copied to results/SWEEP first (no checkpoints)

Reads trial directories (any folder under RESULTS_DIR holding metrics.jsonl or config.json), so it
works on a finished sweep, on one still running, on errored trials, and on single runs of
`python -m alliter.train`. metrics.jsonl is the per-group record (Ray's result.json is not read: it
can hold duplicated rows after a restore); generations.jsonl gives the texts.

Every measure is a mean over a window of generations, taken group by group: diversity depends on how
many texts it is measured over, and the unmodified model's is measured on one group (the trial's
first, sampled before any update), so each window's groups are measured the same way and averaged.

The rule: among the betas whose diversity over the final window stays at or above
`diversity_share` of the unmodified model's, pick the one with the highest alliteration (mean raw
reward). Betas under the threshold are collapsed; those above it whose alliteration gain over the
unmodified model is under `under_optimised_share` of the best such gain, or under `min_gain`, are
under-optimised. The best point in training is, among the betas, the one with the highest
alliteration at the latest window before its diversity first falls under the threshold. Trials of the
same beta (seeds) are averaged.

Near-duplicates are measured with self-BLEU (sacrebleu's sentence BLEU of each text against the rest
of its group, 0: nothing shared, 1: copies), not n-gram entropy: distinct-n and the unique fraction
see exact copies and repeated n-grams, self-BLEU also scores stories that differ in a few words as
nearly the same; it is the diversity measure of the text-generation literature, and its scale reads
without knowing the texts' length or vocabulary, which entropy's does not.
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
from alliter.collapse import CollapseRule
from alliter.config import (
    CONFIG_FILE,
    DROPPED_PREFIX,
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
SWEEP_FILES = (CONFIG_FILE, RAY_PARAMS_FILE, METRICS_FILE, GENERATIONS_FILE, RAY_ERROR_FILE, STOP_REASON_FILE, SEARCH_FILE,
               "experiment_state-*.json")

# summary name -> per-group column; every one is averaged over a window's groups
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
    """A beta that keeps its diversity is under-optimised when its alliteration gain over the unmodified model
    is below this share of the best such gain."""
    min_gain: float = 0.5
    """Alliteration gain (mean raw reward) under which a beta is under-optimised in any case."""
    examples: int = 2
    """Last generations of every beta shown in the report."""

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
    error: str | None = None  # the last line of Ray's error.txt
    stop_reason: str | None = None  # why the sweep stopped the trial early

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
        return out


@dataclass
class Analysis:
    cfg: AnalysisConfig
    trials: list[Trial]
    groups: pd.DataFrame  # one row per (trial, group): the trainer's metrics and the text measures
    generations: pd.DataFrame  # one row per generated text
    windows: pd.DataFrame  # one row per (beta, window along training)
    summary: pd.DataFrame  # one row per beta: the final window, the verdict
    choice: dict[str, Any] | None
    best_point: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    search: dict[str, Any] | None = None  # a search sweep's path (alliter/search.py's search.json)


# --- reading trials ------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a torn last line (a trial still writing it) is skipped."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise AlliterError(f"{path} line {i + 1} is not JSON; the file is damaged") from None
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
}


def read_trial(path: Path, root: Path) -> Trial:
    config = _read_json(path / CONFIG_FILE) or _read_json(path / RAY_PARAMS_FILE)
    metrics = pd.DataFrame(read_jsonl(path / METRICS_FILE))
    generations = pd.DataFrame(read_jsonl(path / GENERATIONS_FILE))
    for file, frame in ((METRICS_FILE, metrics), (GENERATIONS_FILE, generations)):
        if len(frame) and not REQUIRED[file] <= set(frame.columns):
            raise AlliterError(f"{path / file} lacks {', '.join(sorted(REQUIRED[file] - set(frame.columns)))}")
    beta = config.get("beta", metrics["beta"].iloc[0] if "beta" in metrics else None)
    if beta is None:
        raise AlliterError(f"{path}: no beta in {CONFIG_FILE}, {RAY_PARAMS_FILE} or {METRICS_FILE}")
    if len(metrics):
        metrics = metrics.drop_duplicates("group", keep="last").sort_values("group", ignore_index=True)
    if len(generations):
        generations = generations.drop_duplicates("generation", keep="last")
        generations = generations.sort_values("generation", ignore_index=True)
    name = str(Path(root.resolve().name) / path.relative_to(root))  # the sweep's name, then the trial's
    max_generations = int(config["max_generations"]) if config.get("max_generations") else None
    error, stop_reason = _last_line(path / RAY_ERROR_FILE), _last_line(path / STOP_REASON_FILE)
    return Trial(path, name, float(beta), max_generations, metrics, generations, error, stop_reason)


def _last_line(path: Path) -> str | None:
    """The last non-empty line of a file (a traceback's is the exception), or None without the file."""
    if not path.exists():
        return None
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else f"{path.name} is empty")[:200]


def load_trials(paths: Sequence[Path]) -> tuple[list[Trial], list[str]]:
    """Every trial with data under the paths, and a note for each one that is not complete."""
    trials, notes = [], []
    for root in paths:
        if not root.is_dir():
            raise AlliterError(f"no such folder: {root}")
        found = find_trials(root)
        if not found:
            raise AlliterError(f"no trials under {root} (a trial folder holds {METRICS_FILE} or {CONFIG_FILE})")
        for path in found:
            if path.resolve() in {t.path.resolve() for t in trials}:
                continue  # the same folder given twice, or once inside another
            listed = tune_trial_dirs(path.parent)
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
            if trial.name in {t.name for t in trials}:
                trial.name = str(path)  # two sweeps of one name: the full path tells them apart
            notes += trial.notes()
            trials.append(trial)
    with_data = [t for t in trials if t.status != "no data"]
    if not with_data:
        raise AlliterError(
            f"none of the {len(trials)} trials under {', '.join(map(str, paths))} has any metrics yet; nothing to analyse"
        )
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


def read_search(paths: Sequence[Path]) -> dict[str, Any] | None:
    """The search's path (alliter.search) when the first folder is a search sweep."""
    path = paths[0] / SEARCH_FILE
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


def repeated_4grams(text: str) -> float:
    """Share of a text's word 4-grams that repeat one seen earlier in it (0 for under 4 words)."""
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], bleu: Any) -> float:
    """Mean BLEU of each text against the others as references, in [0, 1]; high = near-duplicates.

    Equal to the mean of `bleu.sentence_score(text, others)` (tests/test_analysis.py), with each text's n-grams
    counted once per group: sentence_score counts every reference again for each hypothesis, which made
    best_beta take 2 minutes, instead of 46 s, on a 24-trial sweep."""
    if len(texts) < 2:
        return math.nan
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    segments = [bleu._preprocess_segment(t) for t in texts]
    grams = [extract_all_word_ngrams(s, 1, bleu.max_ngram_order) for s in segments]  # (Counter, length) each
    # BLEU clips a hypothesis n-gram's count by the most any one reference has. The most among "the others" is
    # the group's highest count, unless the hypothesis holds it: then the second highest.
    top: dict[tuple[str, ...], tuple[int, int, int]] = {}  # n-gram -> (highest count, its text, second highest)
    for j, (counts, _) in enumerate(grams):
        for g, c in counts.items():
            high, who, second = top.get(g, (0, -1, 0))
            top[g] = (c, j, high) if c > high else (high, who, max(second, c))
    scores = []
    for i, segment in enumerate(segments):
        ref_ngrams = {}
        for g in grams[i][0]:
            high, who, second = top[g]
            ref_ngrams[g] = high if who != i else second
        ref_lens = [n for j, (_, n) in enumerate(grams) if j != i]
        stats = bleu._compute_segment_statistics(segment, {"ref_ngrams": ref_ngrams, "ref_lens": ref_lens})
        scores.append(bleu._compute_score_from_stats(stats).score)
    return float(np.mean(scores)) / 100


def text_measures(generations: pd.DataFrame) -> pd.DataFrame:
    """Per (trial, group): distinct-n, unique fraction and self-BLEU of the group's texts, and repetition."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)  # sentence-level BLEU without zeroing texts short of 4-gram matches
    rows = []
    for (trial, group), texts in generations.groupby(["trial", "group"], sort=False)["text"]:
        texts = list(texts)
        rows.append({
            "trial": trial,
            "group": int(group) + 1,  # generations.jsonl counts groups from 0, metrics.jsonl from 1
            "distinct_1": R.distinct_n(texts, 1),
            "distinct_2": R.distinct_n(texts, 2),
            "unique_fraction": R.unique_fraction(texts),
            "self_bleu": self_bleu(texts, bleu),
            "repeated_4grams": float(np.mean([repeated_4grams(t) for t in texts])),
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


# --- windows, the rule ------------------------------------------------------------------------------


def _means(groups: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    agg = {name: (col, "mean") for name, col in MEASURES.items() if col in groups}
    return groups.groupby(by, sort=True).agg(generations=("generations", "max"), **agg)


def window_frame(groups: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per (beta, window end): the measures over the window's groups, averaged over trials of a beta."""
    tiled = groups.assign(window=(np.ceil(groups["generations"] / window) * window).astype(int))
    per_trial = _means(tiled, ["beta", "trial", "window"]).reset_index().drop(columns="trial")
    per_beta = per_trial.groupby(["beta", "window"])
    return per_beta.mean().assign(generations=per_beta["generations"].max()).reset_index()


def trial_frame(trials: list[Trial], groups: pd.DataFrame, cfg: AnalysisConfig) -> pd.DataFrame:
    """Per trial: the final window's measures, the unmodified model's (its first group), the first generation
    at which it collapsed by the rule of alliter.collapse (NaN: it never did), and whether a search dropped it."""
    last = groups.groupby("trial")["generations"].transform("max")
    final = _means(groups[groups["generations"] > last - cfg.window], ["beta", "trial"])
    first = groups.loc[groups.groupby("trial")["group"].idxmin()].set_index(["beta", "trial"])
    final["alliteration_baseline"] = first["raw_reward_mean"]
    final["diversity_baseline"] = first["diversity"]
    collapsed_at = {
        key: cfg.collapsed_at(g["generations"], g["diversity"])
        for key, g in groups.sort_values("generations").groupby(["beta", "trial"])
    }
    final["collapsed_at"] = pd.Series(collapsed_at, dtype=float)
    final["collapsed"] = final["collapsed_at"].notna()
    dropped = {t.name for t in trials if t.dropped}
    return final.reset_index().assign(dropped=lambda f: f["trial"].isin(dropped))


def beta_collapse(collapsed_at: pd.Series, max_collapse_rate: float) -> float:
    """When a beta collapses: the generation at which more than `max_collapse_rate` of its trials (seeds)
    have collapsed, NaN if they never do."""
    times = np.sort(collapsed_at.fillna(np.inf).to_numpy())
    at = times[int(math.floor(max_collapse_rate * len(times) + 1e-9))]
    return float(at) if np.isfinite(at) else math.nan


def summary_frame(
    trials: list[Trial], groups: pd.DataFrame, windows: pd.DataFrame, cfg: AnalysisConfig
) -> pd.DataFrame:
    """Per beta, over its trials (seeds): the final window's measures (mean, and standard error when there
    are several seeds), the unmodified model's, the collapse rate, the verdict and the Pareto front."""
    per_trial = trial_frame(trials, groups, cfg)
    dropped = per_trial.groupby("beta")["dropped"].all()  # a beta the search only ever ran to drop it
    by_beta = per_trial[~per_trial["dropped"] | per_trial["beta"].map(dropped)].drop(columns=["trial", "dropped"])
    by_beta = by_beta.groupby("beta")
    s = by_beta.mean(numeric_only=True)
    for name in ("alliteration", "diversity"):  # NaN for one seed: no interval
        s[f"{name}_se"] = by_beta[name].std(ddof=1) / np.sqrt(by_beta[name].count())
    s["collapse_rate"] = by_beta["collapsed"].mean()
    s["collapsed_seeds"] = by_beta["collapsed"].sum().astype(int)
    status = pd.DataFrame([(t.beta, t.status) for t in trials], columns=["beta", "status"]).groupby("beta")["status"]
    s.insert(0, "trials", status.size())
    s.insert(1, "status", status.agg(lambda v: ", ".join(sorted(set(v)))))
    s["generations"] = by_beta["generations"].max()
    s["alliteration_gain"] = s["alliteration"] - s["alliteration_baseline"]
    s["diversity_threshold"] = cfg.diversity_share * s["diversity_baseline"]
    s["diversity_kept"] = s["diversity"] / s["diversity_baseline"]
    s["diversity_fell_at"] = [beta_collapse(g["collapsed_at"], cfg.max_collapse_rate) for _, g in by_beta]
    s["diverse_until"] = [diverse_until(windows[windows["beta"] == b], s.at[b, "diversity_fell_at"]) for b in s.index]

    kept = (s["collapse_rate"] <= cfg.max_collapse_rate) & s["diversity"].notna() & ~dropped
    best_gain = s.loc[kept, "alliteration_gain"].max()
    gain = s["alliteration_gain"]
    learned = kept & (gain >= cfg.min_gain) & (gain >= cfg.under_optimised_share * best_gain)
    verdict = np.where(~kept, "collapsed", np.where(learned, "balanced", "under-optimised"))
    s["verdict"] = np.where(dropped, "dropped", np.where(s["diversity"].isna(), "unmeasured", verdict))
    s["pareto"] = pareto_front(s["alliteration"].where(~dropped), s["diversity"].where(~dropped))
    s["chosen"] = False
    if kept.any():
        s.loc[s.loc[kept, "alliteration"].idxmax(), "chosen"] = True
    return s.reset_index()


def diverse_until(windows: pd.DataFrame, fell_at: float) -> float:
    """The end of the latest window along training before the beta collapsed (its last window if it never
    did); NaN when it collapsed inside its first window."""
    ends = windows["generations"].to_numpy(dtype=float)
    if windows["diversity"].isna().all():  # no texts to measure it on
        return math.nan
    before = ends[ends < fell_at] if math.isfinite(fell_at) else ends
    return float(before.max()) if len(before) else math.nan


def pareto_front(alliteration: pd.Series, diversity: pd.Series) -> pd.Series:
    """True where no other beta has at least as much of both and more of one."""
    a, d = alliteration.to_numpy(), diversity.to_numpy()

    def dominated(i: int) -> bool:
        return bool(np.any((a >= a[i]) & (d >= d[i]) & ((a > a[i]) | (d > d[i]))))

    on = [bool(np.isfinite(a[i]) and np.isfinite(d[i])) and not dominated(i) for i in range(len(a))]
    return pd.Series(on, index=alliteration.index)


def best_point(summary: pd.DataFrame, windows: pd.DataFrame) -> dict[str, Any] | None:
    """Of each beta's latest window before its diversity falls, the one with the highest alliteration."""
    points = []
    for row in summary.dropna(subset=["diverse_until"]).itertuples():
        w = windows[(windows["beta"] == row.beta) & (windows["generations"] == row.diverse_until)].iloc[0]
        points.append({
            "beta": row.beta, "generations": int(w["generations"]), "alliteration": w["alliteration"],
            "diversity": w["diversity"], "diversity_threshold": row.diversity_threshold, "fell_at": row.diversity_fell_at,
        })
    return max(points, key=lambda p: p["alliteration"]) if points else None


def analyse(paths: Sequence[str | Path], cfg: AnalysisConfig | None = None) -> Analysis:
    """Read every trial under the paths and apply the rule; raises AlliterError for a user error."""
    cfg = (cfg or AnalysisConfig()).validate()
    paths = [Path(p) for p in paths]
    trials, notes = load_trials(paths)
    groups, generations = group_frame(trials, cfg.diversity_measure)
    windows = window_frame(groups, cfg.window)
    summary = summary_frame(trials, groups, windows, cfg)
    chosen = summary[summary["chosen"]]
    choice = plain(chosen.iloc[0].to_dict()) if len(chosen) else None
    point = plain(best_point(summary, windows))
    return Analysis(cfg, trials, groups, generations, windows, summary, choice, point, notes, read_search(paths))


def plain(value: Any) -> Any:
    """numpy scalars and NaN -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value

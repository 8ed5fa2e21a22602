"""Reading a sweep into pandas frames: its trial folders (finished, running, errored, single runs of
`python -m alliter.train`), one row per training group, per text, per evaluation story, and per window.

metrics.jsonl is the per-group record (Ray's result.json is not read: it can hold duplicated rows after a restore),
generations.jsonl the training texts, evaluations.jsonl the stories of every evaluation (alliter.schema names
them, alliter.storage reads them; Tune's saved state and what a trial folder is: alliter.schema, as the sweep reads
them).
Diversity is measured group by group: it depends on how many texts it is measured over, and the unmodified
model's is measured on as many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alliter import measures as M
from alliter.cli import AlliterError
from alliter.config import DEFAULT_REWARD, DEFAULT_WINDOW
from alliter.knob import BETA, KNOBS, TARGET, VALUE, Knob
from alliter.rule import as_diversity
from alliter.train.reward import describe_reward, raw_reward
from alliter.schema import (
    CONFIG_FILE, DROPPED, EVALUATIONS_FILE, EXPERIMENT_STATE_GLOB, GENERATIONS_FILE, LEGACY_STOP_FILE, METRICS_FILE,
    RAY_ERROR_FILE, RAY_PARAMS_FILE, RESULTS_DIR, REWARD_FILE, SEARCH_FILE, STOP_FILE, SWEEP_STATS_FILE, find_trials,
    newest_sweep, read_stop, tune_trials,
)
from alliter.storage import read_json, read_jsonl, read_text

# every file of a sweep that the analysis reads (a sweep in a bucket is copied with these only)
SWEEP_FILES = (CONFIG_FILE, RAY_PARAMS_FILE, METRICS_FILE, GENERATIONS_FILE, EVALUATIONS_FILE, RAY_ERROR_FILE,
               STOP_FILE, LEGACY_STOP_FILE, SEARCH_FILE, REWARD_FILE, EXPERIMENT_STATE_GLOB, SWEEP_STATS_FILE)

# training window name -> per-group column; every one is averaged over a window's groups (the registry's names, and
# the training KL term and the rule's diversity, which no point has)
MEASURES = {**{m.name: m.group for m in M.MEASURES if m.group}, "kl_penalty": "kl_penalty_mean", "diversity": "diversity"}


@dataclass
class Trial:
    path: Path
    name: str
    beta: float  # its beta: fixed, or where its KL-target controller started
    max_generations: int | None
    metrics: pd.DataFrame
    generations: pd.DataFrame
    evaluations: pd.DataFrame  # the stories of every evaluation (generations, sample, text, raw_reward, ce_ref, ...)
    seed: int = 0
    group_size: int = 10
    error: str | None = None  # the last line of Ray's error.txt
    stop: dict[str, Any] | None = None  # why the sweep stopped the trial early (alliter.schema's stop.json)
    damaged: list[str] = field(default_factory=list)  # lines of its files that could not be read
    kl_target: float | None = None  # a KL-target trial's target (its beta moved along training)
    reward: dict[str, Any] = field(default_factory=lambda: describe_reward(DEFAULT_REWARD))  # its reward.json
    config: dict[str, Any] = field(default_factory=dict)  # its config.json (else Ray's params.json)
    swept: str | None = None  # what its sweep recorded varying (sweep.json's knob); None: not recorded

    @property
    def knob(self) -> Knob:
        """What a sweep of this trial varies: as its sweep recorded, else (a sweep of before, a single run) its
        fixed beta, or its KL target."""
        return KNOBS[self.swept] if self.swept else BETA if self.kl_target is None else TARGET

    @property
    def value(self) -> float:
        """The knob's value (the frames' VALUE column): the trial's beta, or its KL target."""
        return self.beta if self.knob is BETA else self.kl_target

    @property
    def label(self) -> str:
        return self.knob.named(self.value)

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
            return "stopped" if self.stop else "incomplete"
        return "complete"

    @property
    def dropped(self) -> bool:
        """A search stopped it because its beta could no longer move the bracket: it says nothing about its beta."""
        return self.status == "stopped" and bool(self.stop) and self.stop.get("stopped") == DROPPED

    def stories(self, generations: int | None = None, window: int = DEFAULT_WINDOW) -> pd.DataFrame:
        """The stories a point of the trial is judged on, in order: its evaluation at `generations` (default: its last
        point), or, for a trial without evaluations, the training texts of the point's window (`window` generations
        up to it; at 0, the first group's, the unmodified model's): the rows of evaluations.jsonl or
        generations.jsonl."""
        if len(self.evaluations):
            e = self.evaluations
            at = int(e["generations"].max()) if generations is None else generations
            return e[e["generations"] == at].sort_values("sample")
        g = self.generations
        if not len(g):
            return g
        at = int(g["generation"].max()) + 1 if generations is None else generations
        lo, hi = (0, self.group_size) if at == 0 else (at - window, at)
        return g[(g["generation"] >= lo) & (g["generation"] < hi)].sort_values("generation")

    def notes(self) -> list[str]:
        """Lines for the user about a trial that is not simply complete."""
        where = f"trial {self.label} ({self.name})"
        of = f"{self.done} of {self.max_generations}" if self.max_generations else f"{self.done}"
        notes = {
            "no data": f"{where}: no metrics yet; left out",
            "errored": f"{where}: errored ({self.error}); using its {of} generations",
            "incomplete": f"{where}: incomplete, {of} generations (still running, or stopped); using what it has",
            "stopped": f"{where}: stopped by the sweep ({(self.stop or {}).get('why')}); using its {of} generations",
        }
        out = [notes[self.status]] if self.status in notes else []
        if self.status != "no data" and not len(self.generations):
            out.append(f"{where}: no {GENERATIONS_FILE}; self-BLEU, repetition and its texts are missing")
        if self.status != "no data" and not len(self.evaluations):
            out.append(f"{where}: no evaluations ({EVALUATIONS_FILE}); judged on its training groups, which lag its "
                       "policy")
        out += [f"{where}: {line}" for line in self.damaged]
        return out


# --- reading trials ------------------------------------------------------------------------------


def _config(path: Path) -> dict[str, Any]:
    """A trial's config table ({} without the file); a damaged one is an AlliterError (read_trial names it)."""
    if not path.exists():
        return {}
    value = read_json(path)
    if value is None:
        raise AlliterError(f"{path} is not JSON")
    return value


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
    config = _config(path / CONFIG_FILE) or _config(path / RAY_PARAMS_FILE)
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
    target = config.get("kl_target")
    # a trial of before user rewards ran with the study's
    reward = read_json(path / REWARD_FILE) or describe_reward(config.get("reward", DEFAULT_REWARD))
    return Trial(path, name, float(beta), max_generations, metrics, generations, evaluations,
                 int(config.get("seed") or 0), int(config.get("group_size") or 10), _last_line(path / RAY_ERROR_FILE),
                 read_stop(path), damaged, None if target is None else float(target), reward, config)


def _last_line(path: Path) -> str | None:
    """The last non-empty line of a file (a traceback's is the exception), or None without the file."""
    text = read_text(path)
    if text is None:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else f"{path.name} is empty")[:200]


def load_trials(root: Path) -> tuple[list[Trial], list[str]]:
    """Every trial with data of one sweep (a folder of trial folders, or one trial folder), and a note for each
    one that is not complete. A folder that holds the trials of several sweeps is refused: pooled, they would be
    one table of trials of other grids, models and days."""
    if not root.is_dir():
        raise AlliterError(f"{root} is a file, not a sweep folder" if root.exists() else f"no such folder: {root}")
    found = find_trials(root)
    if not found:
        raise AlliterError(f"no trials under {root} (a trial folder holds {METRICS_FILE} or {CONFIG_FILE})")
    sweeps = sorted({p.parent for p in found if p != root})
    if len(sweeps) > 1:
        shown = ", ".join(str(s.relative_to(root)) for s in sweeps[:8]) + (f" and {len(sweeps) - 8} more" if len(sweeps) > 8 else "")
        raise AlliterError(f"{root} holds {len(sweeps)} sweeps ({shown}); best_beta analyses one: pass its folder")
    trials, notes = [], []
    swept = (read_json(root / SWEEP_STATS_FILE) or {}).get("knob")
    tune = tune_trials(found[0].parent) if found[0] != root else None
    listed = None if tune is None else {t["dir"]: t["status"] for t in tune}
    for gone in sorted(set(listed or {}) - {p.name for p in found}):
        if listed[gone] != "PENDING":  # a pending trial has no folder yet
            notes.append(f"{found[0].parent / gone}: in the sweep's Tune state ({listed[gone]}), but its folder is gone "
                         f"(deleted or moved); the analysis is of the {len(found)} trial(s) left")
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
        trial.swept = swept
        trials.append(trial)
    with_data = [t for t in trials if t.status != "no data"]
    if not with_data:
        raise AlliterError(f"none of the {len(trials)} trials under {root} has any metrics yet; nothing to analyse")
    if len({t.knob for t in with_data}) > 1:
        raise AlliterError(f"{root} holds trials of fixed betas and trials of KL targets: one sweep varies one knob; "
                           "analyse them as two sweeps")
    return with_data, notes


def sweep_knob(trials: list[Trial]) -> Knob:
    """What a sweep varies (its frames hold the value in their VALUE column): a beta, or a KL target."""
    return trials[0].knob


def read_search(root: Path) -> dict[str, Any] | None:
    """The search's path (alliter.sweep.search) when the folder is a search sweep."""
    return read_json(root / SEARCH_FILE)


def default_sweep(results: Path = Path(RESULTS_DIR)) -> Path:
    """The sweep best_beta analyses when it is given none: the newest folder under ./results that holds trials
    (alliter.schema.newest_sweep)."""
    if not results.is_dir():
        raise AlliterError(f"no {results}/ folder here; pass the sweep folder (RESULTS_DIR) or run where results/ is")
    name = newest_sweep(results, resumable=False)
    if name is None:
        raise AlliterError(f"no sweep with trials under {results}/")
    return results / name


# --- measures --------------------------------------------------------------------------------------


def study_alliteration(trials: list[Trial]) -> pd.DataFrame:
    """Per (trial, evaluated point): the study's alliteration count (raw_reward) of its evaluation stories, whatever
    reward trained the trial (a trial's evaluations score its own reward: novel-alliteration's is not the study's
    count, and two recipes compare on one measure)."""
    rows = [(t.name, int(g), float(np.mean([raw_reward(x) for x in e["text"]])))
            for t in trials if len(t.evaluations) for g, e in t.evaluations.groupby("generations")]
    return pd.DataFrame(rows, columns=["trial", "generations", "alliteration"])


def text_measures(generations: pd.DataFrame) -> pd.DataFrame:
    """Per (trial, group): the group's diversity measures (alliter.measures.group_measures, self-BLEU included) and
    repetition inside its texts."""
    bleu = M.bleu()
    rows = []
    for (trial, _), g in generations.groupby(["trial", "group"], sort=False):
        texts = list(g["text"])
        rows.append({
            "trial": trial,
            "generations": int(g["generation"].max()) + 1,  # the step counter after the group, as in its metrics
            **M.group_measures(texts, bleu),
            "repeated_4grams": float(np.mean([M.repeated_4grams(t) for t in texts])),
        })
    measures = [*M.group_measures([], bleu), "repeated_4grams"]
    return pd.DataFrame(rows, columns=["trial", "generations", *measures]).astype(
        {"generations": int, **dict.fromkeys(measures, float)})


def group_frame(trials: list[Trial], measure: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy per-group frame (metrics joined with the varied value, VALUE, and the text measures), and all
    generations. A KL-target trial's `beta` column is its controller's beta group by group."""
    metrics = pd.concat([t.metrics.assign(trial=t.name, **{VALUE: t.value}) for t in trials], ignore_index=True)
    gens = [t.generations.assign(trial=t.name, **{VALUE: t.value}) for t in trials if len(t.generations)]
    no_texts = pd.DataFrame(columns=["trial", VALUE, "generation", "group", "text", "raw_reward"])
    generations = pd.concat(gens, ignore_index=True) if gens else no_texts
    # joined by the group's generations: metrics.jsonl counted groups from 1 before alliter.schema, from 0 since
    groups = metrics.merge(text_measures(generations), on=["trial", "generations"], how="left", suffixes=("_trainer", ""))
    for name in ("distinct_1", "distinct_2", "unique_fraction"):  # a trial without texts keeps the trainer's
        if f"{name}_trainer" in groups:
            groups[name] = groups[name].fillna(groups.pop(f"{name}_trainer"))
    groups["diversity"] = as_diversity(groups[measure], measure)
    return groups, generations


def _means(groups: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    agg = {name: (col, "mean") for name, col in MEASURES.items() if col in groups}
    return groups.groupby(by, sort=True).agg(generations=("generations", "max"), **agg)


def window_frame(groups: pd.DataFrame, window: int, trials: list[Trial] = ()) -> pd.DataFrame:
    """Per (varied value, window end): the training measures over the window's groups, and the measures of the window's
    texts together against the trial's unmodified model's stories (alliter.measures.pooled_measures; its evaluation
    at generation 0, else its first group), averaged over trials of a value."""
    tiled = groups.assign(window=(np.ceil(groups["generations"] / window) * window).astype(int))
    per_trial = _means(tiled, [VALUE, "trial", "window"]).reset_index()
    pooled = []
    for t in trials:
        base = t.stories(0, window)["text"].tolist()
        g = t.generations
        if not base or not len(g):
            continue
        ends = (np.floor(g["generation"] / window) * window + window).astype(int)  # generation i is in (end - w, end]
        pooled += [{"trial": t.name, "window": end, **M.pooled_measures(chunk["text"].tolist(), base)}
                   for end, chunk in g.groupby(ends)]
    if pooled:
        per_trial = per_trial.merge(pd.DataFrame(pooled), on=["trial", "window"], how="left")
    per_value = per_trial.drop(columns="trial").groupby([VALUE, "window"])
    return per_value.mean().assign(generations=per_value["generations"].max()).reset_index()

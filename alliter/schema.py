"""The run folder: the files a trial and a sweep write, the fields of their records, and the reading of a record
(a stop, Tune's saved state, what a trial folder is, the newest sweep), over alliter.storage (the one file layer:
a folder or a URI). One home, so that the trainer, the sweep, best_beta and the tests name each thing alike.

A trial folder holds
  config.json          the resolved TrainConfig (model, tokenizer and lr as they ran)
  generations.jsonl    one record per generated text (GENERATION_FIELDS), appended and flushed per group
  metrics.jsonl        one record per group (METRIC_NAMES), the metrics reported to Tune
  evaluations.jsonl    one record per story of every evaluation (EVALUATION_FIELDS; alliter.train.evaluate)
  reward.json          the reward it ran with: name, source, a file's SHA-256 (alliter.train.reward)
  events.out.tfevents  TensorBoard: the metrics against generations, the evaluations, a group's texts
  snapshots/           the policy every `snapshot_every` generations, and the model files to load it
  stop.json            why a sweep ended the trial early (STOPPED_AS): it failed the rule, or a search dropped it
and, in a sweep, Ray's result.json, params.json, error.txt and checkpoint_*/checkpoint.pt (CHECKPOINT_FILE).

Group numbers: a record's `group` counts groups from 0, in generations.jsonl and in metrics.jsonl alike; a
group's `generations` is the step counter after it (group 0 of K samples: K). Runs of alliter before this
schema counted metrics.jsonl's groups from 1, so the analysis joins a group's records by their generations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from alliter.storage import files, filesystem, folders, join, read_json, read_text

# a trial's files
CONFIG_FILE = "config.json"
GENERATIONS_FILE = "generations.jsonl"
METRICS_FILE = "metrics.jsonl"
EVALUATIONS_FILE = "evaluations.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
STOP_FILE = "stop.json"
LEGACY_STOP_FILE = "stop_reason.txt"  # alliter before stop.json: one line of text
NODE_FILE = "node.json"  # the node, host and process that ran the trial
REWARD_FILE = "reward.json"  # the trial's reward: its name, source and (a file's) SHA-256
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_FILE = "generations={:06d}.safetensors"
SNAPSHOT_PATTERN = r"generations=(\d+)\.safetensors"
EVENTS_PATTERN = "events.out.tfevents.*"  # TensorBoard's files (tensorboardX names them so)
RAY_ERROR_FILE = "error.txt"
RAY_PARAMS_FILE = "params.json"

# what an attempt of a trial writes as it trains: a retry from scratch starts them afresh
ATTEMPT_FILES = (GENERATIONS_FILE, METRICS_FILE, EVALUATIONS_FILE, STOP_FILE, EVENTS_PATTERN,
                 f"{SNAPSHOT_DIR}/generations=*.safetensors")

# a sweep's files, beside Tune's experiment state
SWEEP_STATS_FILE = "sweep.json"  # its wall time, group time, efficiency, evaluation time, per driver session; its
# "knob": what it varies, beta or kl_target (alliter.knob; a sweep of before it has none: its trials tell)
SEARCH_FILE = "search.json"  # a search's path (alliter.sweep.search)
TRACKERS_FILE = "trackers.json"  # the sweep's --mlflow and --wandb settings: a resume checks them again
PROMPTS_FILE = "prompts.txt"  # --prompts' text, once per sweep (the trials get it through Tune's object store)
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"  # Tune's record of a sweep
RESULTS_DIR = "results"  # the sweeps' folder when --storage and $ALLITER_STORAGE are not given

# an exported model folder's record of where it comes from
EXPORT_INFO_FILE = "alliter.json"

GENERATION_FIELDS = ("generation", "group", "beta", "text", "raw_reward", "kl_penalty", "reward", "advantage",
                     "new_tokens", "ce_policy", "ce_ref")
METRIC_NAMES = ("generations", "group", "beta", "raw_reward_mean", "raw_reward_max", "kl_penalty_mean",
                "scaled_kl_penalty_mean", "kl_completion_sum_mean", "reward_mean", "ce_policy_mean", "ce_ref_mean",
                "advantage_std", "loss", "grad_norm", "distinct_1", "distinct_2", "unique_fraction", "mean_new_tokens", "seconds_per_group",
                "generations_per_second")
# kl_completion_sum_mean: the group's KL in TRL's units (k1 summed over the completion's tokens), whatever the recipe;
# with a gradient clip (--max-grad-norm), also grad_norm_clipped: the norm after it; with a remedy against a reward
# hack (README, "Which recipe holds"), its state: entropy, entropy_coef (the bonus's coefficient) and, with
# --entropy-target, entropy_coef_applied (the one this group's loss used: 0 where the control had the bonus off);
# darling_diversity_mean and darling_memory_stories (the earlier groups' stories compared with, --darling-memory);
# overuse_damping_mean (--overuse-cap's factors, averaged over the group); ref_synced_at (the generation of the reference's last reset before the group, 0: none yet)
EVALUATION_FIELDS = ("generations", "sample", "text", "raw_reward", "new_tokens", "ce_policy", "ce_ref")
# with --prompts, generations.jsonl's and evaluations.jsonl's records also say their "prompt"; with --darling,
# generations.jsonl's their "diversity", with --overuse-cap their "damping" (raw_reward stays the task's: reward =
# raw_reward x diversity x damping + the KL term)
# stop.json's `stopped`: the trial failed the rule (alliter.rule), or a search no longer needed its beta
FAILED, DROPPED = "failed", "dropped"


# --- a record read ------------------------------------------------------------------------------------------


def stop_record(stopped: str, why: str, generations: int | None) -> str:
    """stop.json's text: how (FAILED or DROPPED) and why a sweep ended a trial, and at which generation."""
    return json.dumps({"stopped": stopped, "why": why, "generations": generations}) + "\n"


def read_stop(folder: Path) -> dict[str, Any] | None:
    """A trial's stop.json, or its legacy stop_reason.txt read the way alliter wrote it; None: not stopped."""
    stop = read_json(folder / STOP_FILE)
    if stop is not None:
        return stop
    legacy = (read_text(folder / LEGACY_STOP_FILE) or "").strip()
    if not legacy:
        return None
    return {"stopped": DROPPED if legacy.startswith("not needed") else FAILED, "why": legacy, "generations": None}


# --- a trial folder, and Tune's saved state of a sweep -----------------------------------------------------------


def is_trial(path: Path) -> bool:
    """A trial folder holds the trainer's metrics.jsonl, or (before its first group) a config with a beta: the
    trainer's config.json or Ray's params.json (a damaged one too: the analysis says so)."""
    if (path / METRICS_FILE).exists():
        return True
    for name in (CONFIG_FILE, RAY_PARAMS_FILE):
        config = read_json(path / name)
        if (config is None and (path / name).exists()) or (config is not None and "beta" in config):
            return True
    return False


def find_trials(root: Path) -> list[Path]:
    """Trial folders under a local root, root included; trials do not nest, so the walk stops at one."""
    found = []
    for folder, subfolders, _ in os.walk(root):
        if is_trial(Path(folder)):
            found.append(Path(folder))
            subfolders.clear()
        else:  # Ray's checkpoint_* folders and hidden ones hold no trial
            subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "checkpoint_")))
    return found


def tune_trials(exp_path: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The trials of a sweep's newest Tune state (one per driver session; the names sort by time), on a folder or a
    URI: each {"dir": its folder's name, "status": PENDING, RUNNING, TERMINATED or ERROR, "config": its config, {}
    where the state has none}; None where there is no readable Tune state (single runs of alliter.train, hand-made
    folders: an unreadable state hides nothing). The sweep's resume and its end read it, and the analysis."""
    states = files(str(exp_path), EXPERIMENT_STATE_GLOB)
    if not states:
        return None
    state = read_json(join(str(exp_path), states[-1][0]))
    try:
        trials = [json.loads(t) for t, _ in (state or {})["trial_data"]]
        return [{"dir": t["relative_logdir"], "status": t["status"], "config": t.get("config") or {}} for t in trials]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def newest_sweep(storage: str | os.PathLike, resumable: bool) -> str | None:
    """The name of the newest sweep directly under a folder or URI, or None.

    Two rules, for two questions. resumable (the sweep's --resume without --name): a folder with Tune's saved state,
    the one whose state was written last; only a Tune sweep can be resumed, and its driver rewrites the state as its
    trials go on, so its time is the sweep's last work, on a bucket too (where a folder has no time). Not resumable
    (best_beta without a folder, on a local one): a folder that holds trials, the one modified last; it may be single
    runs of alliter.train, which have no Tune state."""
    if resumable:
        newest = {}
        for name, _ in folders(str(storage)):
            times = [t for _, t in files(join(str(storage), name), EXPERIMENT_STATE_GLOB) if t is not None]
            if times:
                newest[name] = max(times)
    else:
        root = Path(filesystem(str(storage))[1])
        newest = {name: t for name, t in folders(str(storage)) if t is not None and find_trials(root / name)}
    return max(newest, key=newest.get) if newest else None

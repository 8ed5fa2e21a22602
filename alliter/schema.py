"""The run folder: the files a trial and a sweep write, the fields of their records, and the helpers that read
and write them. One home, so that the trainer, the sweep, best_beta and the tests name each thing alike.

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
from typing import Any, Callable, Iterable

from alliter.cli import AlliterError

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


# --- reading and writing -------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A file's text, "" when it is not there."""
    return path.read_text(encoding="utf-8") if path.exists() else ""


def write_atomic(path: Path, content: str | Callable[[str], None], tmp_dir: Path | None = None) -> None:
    """Write a file whole or not at all: through a temporary file (in `tmp_dir`, else beside it), renamed. `content`
    is the text, or a function that writes the file at the path it is given."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.tmp"
    try:
        if callable(content):
            content(str(tmp))
        else:
            tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def read_jsonl(path: Path, damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file. A torn last line (a trial still writing it) is skipped; any other line that is
    not a JSON object is skipped too, and named in `damaged`: a damaged line loses that line, not the file."""
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


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's table; None when it is not there, not JSON or not a table."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def json_table(path: Path) -> dict[str, Any] | None:
    """A JSON file's table, None when it is not there; AlliterError in one line when it is there but damaged (a file
    a command cannot go on without: a trial's config, an export's card)."""
    if not path.exists():
        return None
    value = read_json(path)
    if value is None:
        raise AlliterError(f"{path} is damaged (not a JSON table); restore it, or write it again")
    return value


def stop_record(stopped: str, why: str, generations: int | None) -> str:
    """stop.json's text: how (FAILED or DROPPED) and why a sweep ended a trial, and at which generation."""
    return json.dumps({"stopped": stopped, "why": why, "generations": generations}) + "\n"


def read_stop(folder: Path) -> dict[str, Any] | None:
    """A trial's stop.json, or its legacy stop_reason.txt read the way alliter wrote it; None: not stopped."""
    stop = read_json(folder / STOP_FILE)
    if stop is not None:
        return stop
    legacy = read_text(folder / LEGACY_STOP_FILE).strip()
    if not legacy:
        return None
    return {"stopped": DROPPED if legacy.startswith("not needed") else FAILED, "why": legacy, "generations": None}

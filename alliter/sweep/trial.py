"""The trial of a sweep: the Tune function trainable around the core trainer (alliter.train.trainer.Trainer), its
options, and the callback that keeps Tune from retrying what a retry would meet again.

The trial reports every group (at most every `report_seconds`, and always with a checkpoint and at its end),
judges its points by the rule of alliter.rule, and ends itself once it has failed when the sweep asks for that.
Torch and transformers are imported inside the trial's process only: the driver imports this module.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from alliter.cli import AlliterError
from alliter.config import TrainConfig
from alliter.rule import CollapseRule, training_points
from alliter.train.reward import load_reward
from alliter.schema import ATTEMPT_FILES, CHECKPOINT_FILE, FAILED, METRICS_FILE, NODE_FILE, STOP_FILE, stop_record
from alliter.storage import read_jsonl

FATAL = "alliter_error"  # a trial's last report when an error of alliter's own ended it (NoRetry)


@dataclass
class TrialOptions:
    """What the sweep tells each trial beside its TrainConfig: one typed object in the trial's config, under
    OPTIONS_KEY, so that it travels with the trial to whichever node runs it (and with Tune's state to a resume)."""

    cpus_per_trial: float
    """The trial's CPUs, and so its torch threads when the config leaves them at 0."""
    rule: dict[str, Any]
    """The rule of alliter.rule (CollapseRule's fields)."""
    stop_on_collapse: bool
    """End the trial at its first point that is not kept."""
    seed_in_name: bool
    """Trial folders say their seed (a sweep of several seeds)."""
    report_seconds: float
    """Report to Tune at most this often (and always with a checkpoint, and at the end)."""
    reward_sha256: str | None = None
    """A reward file's SHA-256 when the sweep started: the trial imports the copy Ray shipped, which must be it."""
    prompts_sha256: str | None = None
    """With --prompts: their text's SHA-256. The text is kept once, in the sweep's prompts.txt, and reaches each trial
    through Tune's object store (tune.with_parameters), not in Tune's config, which every result row repeats."""


OPTIONS_KEY = "_alliter"


def rloo_trial(config: dict[str, Any], prompts: str | None = None) -> None:
    """Tune function trainable: the core trainer, reporting every group, checkpointing every N, and ending itself
    once it has collapsed when the sweep asks for that. An error of alliter's own (a bad setting, a non-finite
    loss, a corrupt checkpoint: what a retry would meet again) is reported as FATAL before it is raised, so that
    the driver (NoRetry) does not retry the trial and prints its cause. `prompts`: the text of --prompts, given by
    tune.with_parameters."""
    try:
        opts = TrialOptions(**config[OPTIONS_KEY])
        cfg = TrainConfig.from_dict(config)
        if opts.prompts_sha256 is not None:
            if prompts is None or text_sha256(prompts) != opts.prompts_sha256:
                raise AlliterError("the trial's prompts are not the sweep's (their SHA-256 differs)")
            cfg = dataclasses.replace(cfg, prompts=prompts)
        _run_trial(cfg, opts)
    except AlliterError as err:
        tune.report({FATAL: str(err)})
        raise


def _run_trial(cfg: TrainConfig, opts: TrialOptions) -> None:
    from alliter.train.trainer import Trainer  # torch and transformers: in the trial's process only

    # Ray's line per checkpoint ("Checkpoint successfully created at ..."), which the driver's console would show
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)

    if cfg.threads == 0:
        cfg = dataclasses.replace(cfg, threads=max(1, int(opts.cpus_per_trial)))
    run_dir = Path.cwd()  # Tune runs the trial in its working directory and syncs it to storage
    reward = load_reward(cfg.reward, opts.reward_sha256) if opts.reward_sha256 else None
    trainer = Trainer(cfg, run_dir, reward)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            trainer.load_checkpoint(Path(d) / CHECKPOINT_FILE)
    else:
        _discard_stored_attempt()
    _write_node_info(run_dir)
    rule = CollapseRule(**opts.rule)
    history = read_jsonl(run_dir / METRICS_FILE)

    def judged() -> dict[str, Any]:  # the trial's verdict so far, by the rule of alliter.rule, and its latest point
        points = trainer.points if trainer.evaluating else training_points(history, rule.window, partial=trainer.done)
        latest = {"point": points[-1]["generations"], "point_alliteration": points[-1]["alliteration"]} if points else {}
        return {**rule.judge_trial(points).report(), **latest}

    if history and (trainer.done or (opts.stop_on_collapse and not judged()["kept"])):
        # restored from the final checkpoint: report the last group again, once
        tune.report({**history[-1], **judged()})
        return
    reported = -math.inf
    # this process's totals, for the sweep's efficiency and what evaluations cost
    session = {"session_groups": 0, "session_group_seconds": 0.0, "session_eval_seconds": 0.0}
    for metrics in trainer.groups():
        session["session_groups"] += 1
        session["session_group_seconds"] += metrics["seconds_per_group"]
        session["session_eval_seconds"] = trainer.eval_seconds
        history.append(metrics)
        metrics.update(judged(), **session)
        stop = opts.stop_on_collapse and not metrics["kept"] and not trainer.done
        if stop:
            why = f"{metrics['verdict']} at {metrics['failed_at']:.0f} generations: {rule.describe()}"
            (run_dir / STOP_FILE).write_text(stop_record(FAILED, why, trainer.generations))
        if trainer.checkpoint_due or stop:  # the last group is due too
            with tempfile.TemporaryDirectory() as d:
                trainer.save_checkpoint(Path(d) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            reported = time.monotonic()
        elif time.monotonic() - reported >= opts.report_seconds or any(k.startswith("eval_") for k in metrics):
            # a group that carries an evaluation is always reported: the console and the trackers show every point
            tune.report(metrics)
            reported = time.monotonic()
        if stop:
            trainer.close()
            return


class NoRetry(tune.Callback):
    """A trial that reported FATAL failed with an error a retry would meet again: Tune does not retry it (its
    max_failures drops to 0 before the error that follows the report arrives), and its cause is one line of the
    sweep's summary, without Ray's traceback above it (`quiet`)."""

    fatal: set[str] = set()  # the driver's trials that reported FATAL (a class's: a restored Tuner unpickles its own)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(FATAL):
            trial.max_failures = 0
            NoRetry.fatal.add(str(trial))

    @staticmethod
    def quiet(record: logging.LogRecord) -> bool:
        """A logging filter for Tune's controller: its traceback of a FATAL trial's error goes (error.txt keeps it)."""
        message = record.getMessage()
        return not (message.startswith(TRIAL_FAILED) and message[len(TRIAL_FAILED):] in NoRetry.fatal)


TRIAL_FAILED = "Trial task failed for trial "  # how Tune's controller logs a trial's error, with its traceback
TUNE_CONTROLLER_LOG = "ray.tune.execution.tune_controller"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _discard_stored_attempt() -> None:
    """A trial that starts from scratch removes, from the sweep's storage, the files an earlier attempt of it
    uploaded before dying (before its first checkpoint): Tune uploads a trial's folder and never deletes there, so
    the dead attempt's TensorBoard file would stay beside the new one. The trainer empties the local folder."""
    import pyarrow.fs

    storage = tune.get_context().get_storage()  # Ray's DeveloperAPI: the trial's folder on the sweep's storage
    fs, root = storage.storage_filesystem, storage.trial_fs_path
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)):
        relative = info.path[len(root):].lstrip("/")
        if info.type == pyarrow.fs.FileType.File and any(fnmatch.fnmatchcase(relative, p) for p in ATTEMPT_FILES):
            fs.delete_file(info.path)


def _write_node_info(run_dir: Path) -> None:
    info = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid()}
    (run_dir / NODE_FILE).write_text(json.dumps(info) + "\n")


def trial_name(trial: Any) -> str:
    """Tune's name and folder of a trial: beta=50_seed=1_<id>, or target=0.1_beta=50_<id> for a KL target."""
    c = trial.config
    return trial_dirname(c["beta"], c["seed"], c[OPTIONS_KEY]["seed_in_name"], trial.trial_id, c.get("kl_target"))


def trial_dirname(beta: float, seed: int, seed_in_name: bool, trial_id: str, kl_target: float | None = None) -> str:
    target = "" if kl_target is None else f"target={kl_target:g}_"
    return f"{target}beta={beta:g}{f'_seed={seed}' if seed_in_name else ''}_{trial_id}"

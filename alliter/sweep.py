"""A beta sweep on Ray Tune: one RLOO trial per beta, on this machine or a Ray cluster.

Tune does the scheduling (one trial per GPU, or a fraction of one), the retries of crashed trials
from their last checkpoint, and the restore of an interrupted sweep; the trial is the core trainer
(`alliter.trainer.Trainer`) reporting every group.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from alliter.config import CHECKPOINT_FILE as CHECKPOINT
from alliter.config import METRICS_FILE, STOP_REASON_FILE, AlliterError, TrainConfig, grid_betas
from alliter.model import check_model_folder
from alliter.trainer import Trainer

log = logging.getLogger("alliter")

# Ray's progress table: the columns that matter for a beta sweep
PROGRESS_COLUMNS = {
    "generations": "gens",
    "raw_reward_mean": "raw_reward",
    "kl_penalty_mean": "kl_penalty",
    "distinct_2": "distinct_2",
    "unique_fraction": "unique",
}
# test-only: make a trial's worker process die after this many groups, once, before any restore
CRASH_ENV = "ALLITER_TEST_CRASH_AFTER_GROUPS"


@dataclass
class SweepConfig:
    grid: str = "coarse"
    """Named grid of betas: coarse (0 .. 100), fine (20 .. 90), extended (40, to 7000 generations)."""
    betas: str | None = None
    """Comma-separated betas to sweep instead of a grid, e.g. 5,15,25."""
    name: str | None = None
    """Sweep name (its folder under --storage); default: rloo-GRID-DATE, or with --resume the newest sweep."""
    storage: str | None = None
    """Where results go: a folder (shared by all nodes on a cluster) or a URI such as s3://bucket/prefix; default: $ALLITER_STORAGE, else ./results."""
    address: str | None = None
    """Ray cluster to run on ('auto', host:port, ray://...); default: $RAY_ADDRESS, else a Ray started on this machine."""
    gpus_per_trial: float | None = None
    """GPUs per trial, fractions pack several trials on one GPU (0.25 = four); default: $ALLITER_GPUS_PER_TRIAL (cluster.yaml sets 1), else 1 when the cluster has GPUs, else 0."""
    cpus_per_trial: float = 1.0
    """CPUs per trial (also the trial's torch threads)."""
    max_failures: int = 3
    """Times Tune restarts a crashed trial from its last checkpoint."""
    resume: bool = False
    """Continue an interrupted sweep: finished trials are kept, the others continue from their checkpoints."""
    stop_on_collapse: bool = False
    """Stop a trial whose unique_fraction stayed at or under --collapse-threshold for --collapse-window groups."""
    collapse_threshold: float = 0.2
    """unique_fraction at or under which a group counts as collapsed."""
    collapse_window: int = 10
    """Collapsed groups in a row that stop a trial (with --stop-on-collapse)."""


def rloo_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: the core trainer, reporting every group, checkpointing every N."""
    cfg = TrainConfig.from_dict(config)
    if cfg.threads == 0:
        cfg = dataclasses.replace(cfg, threads=max(1, int(config.get("_cpus_per_trial", 1))))
    run_dir = Path.cwd()  # Tune runs the trial in its working directory and syncs it to storage
    trainer = Trainer(cfg, run_dir)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            trainer.load_checkpoint(Path(d) / CHECKPOINT)
    _write_node_info(run_dir)
    if trainer.done:  # restored from the final checkpoint: report the last group again, once
        tune.report(json.loads((run_dir / METRICS_FILE).read_text().splitlines()[-1]))
        return
    crash_after = int(os.environ.get(CRASH_ENV, "0"))
    for metrics in trainer.groups():
        if trainer.checkpoint_due:
            with tempfile.TemporaryDirectory() as d:
                trainer.save_checkpoint(Path(d) / CHECKPOINT)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
        if crash_after and restored is None and trainer.group == crash_after:
            os._exit(1)


def _write_node_info(run_dir: Path) -> None:
    info = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid()}
    (run_dir / "node.json").write_text(json.dumps(info) + "\n")


class CollapseStopper(tune.Stopper):
    """Stop a trial whose unique_fraction stayed <= threshold for `window` groups in a row."""

    def __init__(self, threshold: float, window: int):
        self.threshold, self.window = threshold, window
        self.streak: dict[str, int] = defaultdict(int)
        self.reasons: dict[str, str] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        collapsed = result.get("unique_fraction", 1.0) <= self.threshold
        self.streak[trial_id] = self.streak[trial_id] + 1 if collapsed else 0
        if self.streak[trial_id] >= self.window:
            self.reasons[trial_id] = (
                f"collapsed: unique_fraction <= {self.threshold} for {self.window} groups "
                f"(stopped at {result.get('generations')} generations)"
            )
            return True
        return False

    def stop_all(self) -> bool:
        return False


def _check_address(address: str) -> None:
    """Fail fast, in one line, on a host:port nobody answers on (ray.init would retry for a minute)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as err:
        raise AlliterError(f"cannot reach a Ray cluster at {address!r} ({err}); check --address or RAY_ADDRESS") from None


def _storage_root(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def _newest_sweep(storage: str) -> str | None:
    root = Path(storage)
    runs = [p for p in root.glob("*/") if list(p.glob("experiment_state-*.json"))] if root.is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime).name if runs else None


def run_sweep(sweep: SweepConfig, base: TrainConfig, given: dict[str, Any] | None = None) -> Path | str:
    """Run (or resume) a sweep and return its folder. `given` = trainer fields set on the command line."""
    betas, grid_generations = grid_betas(None if sweep.betas else sweep.grid, sweep.betas)
    if grid_generations and "max_generations" not in (given or {}):
        base = dataclasses.replace(base, max_generations=grid_generations)
    base = base.resolved()  # fail on a bad model path or lr now, not inside six trials
    check_model_folder(base.model)
    storage = _storage_root(sweep.storage or os.environ.get("ALLITER_STORAGE") or "results")
    name = sweep.name
    if sweep.resume:
        name = name or (_newest_sweep(storage) if "://" not in storage else None)
        if not name:
            raise AlliterError(f"--resume: no sweep to resume under {storage} (pass --name of an existing sweep)")
        exp_path = f"{storage.rstrip('/')}/{name}"
        if "://" not in storage and not list(Path(exp_path).glob("experiment_state-*.json")):
            raise AlliterError(f"--resume: {exp_path} holds no Tune sweep to resume")
    else:
        name = name or f"rloo-{sweep.grid if not sweep.betas else 'betas'}-{time.strftime('%Y%m%d-%H%M%S')}"
        exp_path = f"{storage.rstrip('/')}/{name}"
        if "://" not in storage and Path(exp_path).exists():
            raise AlliterError(f"{exp_path} exists already; pass --resume to continue it, or another --name")

    address = sweep.address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_address(address)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table, with our columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        ray.init(address=address, include_dashboard=False if not address else None, log_to_driver=True)
    except (ConnectionError, RuntimeError) as err:
        raise AlliterError(f"cannot start or join Ray at {address or 'this machine'}: {err}") from None

    gpus = sweep.gpus_per_trial
    if gpus is None and os.environ.get("ALLITER_GPUS_PER_TRIAL"):
        gpus = float(os.environ["ALLITER_GPUS_PER_TRIAL"])
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if gpus == 0:
        log.warning("alliter: no GPUs in this Ray cluster: the trials run on CPUs (%s each)", sweep.cpus_per_trial)
    trainable = tune.with_resources(rloo_trial, {"cpu": sweep.cpus_per_trial, "gpu": gpus})
    stopper = CollapseStopper(sweep.collapse_threshold, sweep.collapse_window) if sweep.stop_on_collapse else None

    print(f"alliter sweep {name}: betas {betas}, model {base.model}, tokenizer {base.tokenizer}, lr {base.lr}, "
          f"{base.max_generations} generations each, {gpus:g} GPU and {sweep.cpus_per_trial:g} CPU per trial")
    print(f"results: {exp_path}")
    if sweep.resume:
        tuner = tune.Tuner.restore(exp_path, trainable, resume_errored=True)
    else:
        space = {**base.to_dict(), "beta": tune.grid_search(betas), "_cpus_per_trial": sweep.cpus_per_trial}
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name, reuse_actors=False
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                stop=stopper,
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                sync_config=tune.SyncConfig(sync_artifacts=True, sync_period=10),
                progress_reporter=tune.CLIReporter(
                    parameter_columns=["beta"], metric_columns=PROGRESS_COLUMNS, max_report_frequency=15
                ),
                verbose=1,
            ),
        )
    results = tuner.fit()
    if stopper and stopper.reasons:
        _record_stop_reasons(results, stopper.reasons)
    _print_summary(results, exp_path)
    return exp_path


def _trial_name(trial) -> str:
    return f"beta={trial.config['beta']:g}_{trial.trial_id}"


def _record_stop_reasons(results, reasons: dict[str, str]) -> None:
    for r in results:
        trial_id = r.metrics.get("trial_id") if r.metrics else None
        if trial_id in reasons:
            with r.filesystem.open_output_stream(f"{r.path}/{STOP_REASON_FILE}") as f:
                f.write((reasons[trial_id] + "\n").encode())
            print(f"  {Path(r.path).name}: {reasons[trial_id]}")


def _print_summary(results, exp_path: str) -> None:
    df = results.get_dataframe()
    cols = [c for c in ["config/beta", "generations", "raw_reward_mean", "kl_penalty_mean", "distinct_2", "unique_fraction"]
            if c in df.columns]
    if cols:
        print(df[cols].sort_values(cols[0]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    errors = [r for r in results if r.error]
    for r in errors:
        print(f"  ERROR in {Path(r.path).name}: {str(r.error).splitlines()[0][:200]}")
    print(f"\nresults:     {exp_path}")
    print(f"tensorboard: tensorboard --logdir {exp_path}")
    print(f"next:        python analysis/best_beta.py {exp_path}")
    if errors:
        print(f"{len(errors)} trial(s) errored; continue them with: python tune_jobs/sweep.py --resume --name {Path(exp_path).name}")

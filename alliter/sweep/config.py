"""What a sweep is asked to run: SweepConfig, the sweep's own flags (every trial's are alliter.config.TrainConfig),
each checked alone before anything starts."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from alliter.cli import AlliterError

STUDY_STEP = "ALLITER_STUDY_STEP"  # set by alliter study for its steps' sweeps: it runs what comes next itself


@dataclass
class SweepConfig:
    grid: str | None = None
    """Named grid of betas: coarse (0 .. 100, the default), fine (20 .. 90), extended (40, to 7000 generations)."""
    betas: str | None = None
    """Comma-separated betas to sweep instead of a grid, e.g. 5,15,25."""
    search: bool = False
    """Search for the balanced beta instead of running a grid: collapsed trials stop early, and each free
    trial slot gets a simple number near the geometric midpoint of the widest gap between the highest
    collapsed and the lowest kept beta (README, "Search mode")."""
    search_start: str | None = None
    """The search's first values (log-spaced; tried from the safest on, skipping those already implied); default:
    betas 1,10,100, or with --search-targets targets 0.03,0.1,0.3."""
    kl_targets: str | None = None
    """A grid of KL targets instead of betas, e.g. 0.05,0.1,0.2: KL-target trials (--kl-target), each starting at
    every beta of --betas."""
    search_targets: bool = False
    """With --search: search the KL target instead of beta (high targets collapse: the other way round), every trial
    starting at the one beta of --betas."""
    precision: float = 1.25
    """The search stops when the bracket (lowest kept beta / highest collapsed beta) is at most this ratio wide
    (1.25: as fine as the fine grid is around 40-50)."""
    budget: int = 12
    """The most betas the search tries (each runs one trial per seed)."""
    concurrency: int = 0
    """Trials at once, the others waiting their turn (a grid's, or those the search suggests); 0: as many as the
    cluster has trial slots now (at least 1). Fewer than the slots leave cores and memory free."""
    seeds: str | None = None
    """Run every beta with several seeds: a count N (seeds 0 .. N-1) or a list such as 0,1,2; default: --seed alone."""
    stop_on_collapse: bool = False
    """Grids: stop a trial once it has collapsed (the --diversity-* rule; the search always does)."""
    name: str | None = None
    """Sweep name (its folder under --storage); default: rloo-MODE-DATE, or with --resume the newest sweep."""
    storage: str | None = None
    """Where results go: a folder (shared by all nodes on a cluster) or a URI such as s3://bucket/prefix; default: $ALLITER_STORAGE, else ./results."""
    address: str | None = None
    """Ray cluster to run on ('auto', host:port, ray://...); default: $RAY_ADDRESS, else a Ray started on this machine."""
    gpus_per_trial: float | None = None
    """GPUs per trial, fractions pack several trials on one GPU (0.25 = four); default: $ALLITER_GPUS_PER_TRIAL (cluster.yaml sets 1), else 1 when the cluster has GPUs, else 0."""
    cpus_per_trial: float = 1.0
    """CPUs per trial (also the trial's torch threads; a resume may change the CPUs, the threads stay as started)."""
    max_failures: int = 3
    """Times Tune restarts a crashed trial from its last checkpoint."""
    resume: bool = False
    """Continue an interrupted or errored sweep as it was started: finished trials are kept, the others continue from
    their checkpoints (errored ones too); it takes --name, --storage, --address and the resources only."""
    mlflow: str | None = None
    """Log every trial to MLflow (pip install "alliter[mlflow]"): a folder, sqlite:///path.db or http://host:port;
    one run per trial, its config as params, every group's metrics stepped by generations (each group is reported,
    whatever --report-seconds says)."""
    mlflow_experiment: str | None = None
    """The MLflow experiment of --mlflow's runs; default: the sweep's name."""
    wandb: str | None = None
    """Log every trial to this Weights & Biases project (pip install "alliter[wandb]"; WANDB_MODE=offline needs no
    network); each group is reported, whatever --report-seconds says."""
    wandb_group: str | None = None
    """The W&B group of --wandb's runs; default: the sweep's name."""
    report_seconds: float = 1.0
    """A trial reports its newest group to Tune at most this often (and always with a checkpoint, and at its
    end): each report waits for the driver, which counts when a group is short. metrics.jsonl and
    TensorBoard keep every group."""

    @property
    def mode(self) -> str:
        if self.search:
            return "target-search" if self.search_targets else "search"
        return "targets" if self.kl_targets else "betas" if self.betas else self.grid or "coarse"

    def validate(self) -> "SweepConfig":
        """Raise AlliterError, in one line, for a value Ray would take and then fail on, minutes later."""
        gpus, cpus = self.gpus_per_trial, self.cpus_per_trial
        if gpus is not None and not (math.isfinite(gpus) and gpus >= 0):
            raise AlliterError(f"gpus_per_trial must be a finite number >= 0, got {gpus:g}")
        if gpus is not None and gpus > 1 and gpus != int(gpus):
            raise AlliterError(f"gpus_per_trial above 1 must be a whole number (whole GPUs, or a share of one), got {gpus:g}")
        if not (math.isfinite(cpus) and cpus > 0):
            raise AlliterError(f"cpus_per_trial must be a finite number > 0, got {cpus:g}")
        if self.max_failures < -1:
            raise AlliterError(f"max_failures must be >= 0 (or -1: retry forever), got {self.max_failures}")
        if self.concurrency < 0:
            raise AlliterError(f"--concurrency must be >= 0 (0: the cluster's trial slots), got {self.concurrency}")
        if not (math.isfinite(self.report_seconds) and self.report_seconds >= 0):
            raise AlliterError(f"report_seconds must be a finite number >= 0, got {self.report_seconds:g}")
        return self

    def resolved(self) -> "SweepConfig":
        """The config with $ALLITER_GPUS_PER_TRIAL applied (a flag wins), validated."""
        env = os.environ.get("ALLITER_GPUS_PER_TRIAL")
        if self.gpus_per_trial is None and env:
            try:
                return dataclasses.replace(self, gpus_per_trial=float(env)).validate()
            except ValueError:
                raise AlliterError(f"ALLITER_GPUS_PER_TRIAL must be a number, got {env!r}") from None
        return self.validate()

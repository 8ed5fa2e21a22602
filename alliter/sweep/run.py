"""Running a sweep, in five steps: plan (every check, before anything starts) -> lock the sweep's folder ->
connect (start or join Ray, size the trials) -> build the Tuner -> run it -> summarise.

A grid runs every beta of a named grid or a list; a search (alliter.sweep.search.BetaSearch, a Tune Searcher)
chooses the betas as outcomes come in. Tune does the scheduling (one trial per GPU, or a fraction of one),
reuses trial workers between trials, restarts crashed trials from their last checkpoint and restores an
interrupted sweep; the trial is alliter.sweep.trial.rloo_trial. The driver never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from alliter import storage as store
from alliter.cli import AlliterError, InactiveFlag
from alliter.config import TrainConfig, check_given
from alliter.measures import TRAINER_DIVERSITY
from alliter.rule import CollapseRule
from alliter.schema import PROMPTS_FILE, RESULTS_DIR, SEARCH_FILE, SWEEP_STATS_FILE, TRACKERS_FILE
from alliter.sweep import cluster, trial
from alliter.sweep.console import Console, say, say_command
from alliter.sweep.grids import MAX_TRIALS, compact, grid_betas, knob_values, parse_seeds
from alliter.sweep.search import BetaSearch, SearchSettings, SearchStopper
from alliter.sweep.trial import FATAL, OPTIONS_KEY, NoRetry, TrialOptions, text_sha256
from alliter.train import preflight
from alliter.train.reward import file_sha256, parse_reward, reward_to_ship
from alliter.train.snapshots import check_disk, snapshot_plan

log = logging.getLogger("alliter")

STUDY_STEP = "ALLITER_STUDY_STEP"  # set by alliter study for its steps' sweeps: it runs what comes next itself
# the flags a resume takes: where and how the trials run (resources, not the threads: those stay the trials')
RESUME_FLAGS = {"resume", "name", "storage", "address", "gpus_per_trial", "cpus_per_trial"}


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


def sweep_stats(results: tune.ResultGrid, started: float, wall: float, slots: int) -> dict[str, float]:
    """The sweep's efficiency: the trials' group time over (Tune's wall time x trial slots), for this driver's
    session (`started`: the wall-clock time Tune started), and the trials' time in evaluations. What is lost is
    the trials' start-up (workers, imports, model loads), evaluations, checkpoints, reporting, and idle slots.
    Each trial reports its process's running totals (`session_groups`, `session_group_seconds`,
    `session_eval_seconds`); a trial restarted within the session starts them again."""
    busy, evaluating, groups = 0.0, 0.0, 0
    for r in results:
        rows = r.metrics_dataframe
        if rows is None or "session_group_seconds" not in rows:
            continue
        rows = rows[rows["timestamp"] >= math.floor(started)].dropna(subset=["session_groups"])
        last = rows["session_groups"].shift(-1, fill_value=-1) < rows["session_groups"]  # each run's last report
        busy += float(rows.loc[last, "session_group_seconds"].sum())
        if "session_eval_seconds" in rows:
            evaluating += float(rows.loc[last, "session_eval_seconds"].fillna(0).sum())
        groups += int(rows.loc[last, "session_groups"].sum()) * int(r.config.get("group_size", 0))
    return {"wall_seconds": wall, "group_seconds": busy, "eval_seconds": evaluating, "slots": slots,
            "generations": groups, "efficiency": busy / (wall * slots) if wall > 0 and slots else math.nan}


# --- checks before anything starts -------------------------------------------------------------------------


def _check_address(address: str) -> None:
    """Fail fast, in one line, on a host:port nobody answers on (ray.init would retry for a minute)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise AlliterError(f"--address {address!r} is not host:port, auto or ray://host:port; check --address or "
                           "RAY_ADDRESS")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as err:
        raise AlliterError(f"cannot reach a Ray cluster at {address!r} ({err}); check --address or RAY_ADDRESS") from None


def _local_gpus() -> int | None:
    """GPUs on this machine by Ray's own count (None: another Ray, that cannot say)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        return get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    except Exception:  # noqa: BLE001 - the check after ray.init still runs
        return None


def skip_tunes_callback_census() -> None:
    """Tune counts the callbacks it is given, for Ray's usage statistics, by importing every integration it knows
    (mlflow, wandb, comet, aim): 1.3 s of each sweep's driver where they are installed, trackers asked for or not.
    alliter's callbacks are its own, so the count is skipped (a private API, checked in tests/test_house.py)."""
    from ray.air._internal import usage

    usage.tag_callbacks = lambda callbacks: False


def _check_devices(address: str | None, gpus: float | None, cpus: float, device: str) -> None:
    """The GPUs and CPUs a trial asks for must be here, before a Ray is started on this machine; a trial that asks
    torch for CUDA must be given a GPU."""
    cpus_here = None if address else os.cpu_count()
    if cpus_here and cpus > cpus_here:
        raise AlliterError(f"--cpus-per-trial {cpus:g}, but this machine has {cpus_here} CPUs and no Ray cluster was "
                           "given (--address); pass --cpus-per-trial 1")
    here = None if address else _local_gpus()
    if here is not None and (gpus or 0) > here:
        raise AlliterError(
            f"--gpus-per-trial {gpus:g}, but this machine has {here} GPU(s) and no Ray cluster was given (--address); "
            "pass --gpus-per-trial 0 to run the trials on CPUs"
        )
    if device.startswith("cuda") and (gpus == 0 or (gpus is None and here == 0)):
        raise AlliterError(f"--device {device}, but the trials get no GPU (--gpus-per-trial 0, or none here); "
                           "pass --gpus-per-trial 1, or --device auto")


def _check_cluster_fits(required: dict[str, float], address: str | None) -> None:
    """A trial must fit on a node of the cluster, or on a node its autoscaler may add (then say, once, that
    the trials wait for it); otherwise Tune would leave every trial PENDING forever, in silence."""
    fits_now = any(cluster.fits(required, node) for node in cluster.node_resources())
    scaler = cluster.find_autoscaler(0 if fits_now else cluster.STATUS_WAIT_S) if address else None  # none if started here
    if scaler:
        say(scaler.line())
    if fits_now:
        return
    types = scaler.node_types if scaler else []
    if types is None or any(cluster.fits(required, t) for t in types):
        log.warning("alliter: no node of the Ray cluster has %s for a trial yet: the trials wait for the autoscaler "
                    "to add one (`ray status` shows its progress)%s", cluster.describe(required),
                    "" if types is not None else "; if none of its node types has that, they wait forever")
        return
    have = "; ".join(cluster.describe({k: n.get(k, 0) for k in required}) for n in cluster.node_resources())
    ray.shutdown()  # nothing was started on the cluster
    raise AlliterError(
        f"no node of the Ray cluster at {address or 'this machine'} has {cluster.describe(required)} for a trial "
        f"(its nodes: {have or 'none'}) and {'no autoscaler' if not types else 'no node type of its autoscaler'} can "
        "add one; lower --gpus-per-trial / --cpus-per-trial (--gpus-per-trial 0 runs on CPUs)"
    )


SEARCH_STARTS = {"beta": "1,10,100", "kl_target": "0.03,0.1,0.3"}


def _search_settings(sweep: SweepConfig, seeds: list[int], rule: CollapseRule, base: TrainConfig) -> SearchSettings:
    knob = "kl_target" if sweep.search_targets else "beta"
    units = {"recipe": base.recipe, "kl_reduction": base.kl_reduction, "max_length": base.max_length}
    start = knob_values(SEARCH_STARTS[knob] if sweep.search_start is None else sweep.search_start, "--search-start", knob,
                        TrainConfig(**units))
    return SearchSettings(start, sweep.precision, sweep.budget, seeds, rule.max_collapse_rate,
                          max(sweep.concurrency, 1), knob, units).validate()


def parse_targets(text: str, units: TrainConfig | None = None) -> list[float]:
    """`--kl-targets 0.05,0.1` -> [0.05, 0.1]: numbers > 0 within the bound of `units`' KL units, none twice."""
    return knob_values(text, "--kl-targets", "kl_target", units)


def _trial_slots(sweep: SweepConfig, gpus: float) -> int:
    """Trials this Ray cluster runs at once now."""
    resources = ray.cluster_resources()
    slots = math.floor(resources.get("CPU", 0) / sweep.cpus_per_trial + 1e-9) if sweep.cpus_per_trial > 0 else 10**6
    if gpus > 0:
        slots = min(slots, math.floor(resources.get("GPU", 0) / gpus + 1e-9))
    return max(1, slots)


# --- plan -> lock -> connect -> build the Tuner -> run -> summarise ------------------------------------------


@dataclass
class Plan:
    """Everything a sweep will run, checked before anything starts."""

    sweep: SweepConfig
    base: TrainConfig  # the trials' config (a resume: as the sweep was started)
    rule: CollapseRule
    seeds: list[int]
    betas: list[float]  # a grid's; empty for a search
    settings: SearchSettings | None  # a search's
    storage: str
    name: str
    exp_path: str
    address: str | None
    options: TrialOptions
    snapshots: str = ""  # the line about the snapshots' disk
    stored: list[dict[str, Any]] = field(default_factory=list)  # a resume: the trials of the sweep's Tune state
    finished: bool = False  # a resume: every trial of the sweep finished (and a search has ended): nothing to do
    targets: list[float] = field(default_factory=list)  # a grid of KL targets (each trial starting at each beta)
    reward_file: Path | None = None  # a user's reward file, which Ray ships to every node (py_modules)
    prompts: str | None = None  # --prompts' text: in the sweep's prompts.txt, and to the trials by with_parameters
    trackers: dict[str, str | None] = field(default_factory=dict)  # --mlflow, --wandb: in the sweep's trackers.json

    @property
    def targeting(self) -> bool:
        """Its trials hold KL targets (a grid of them, one for all, or a search over them), beta their start."""
        return bool(self.targets) or self.base.kl_target is not None or bool(self.settings and self.settings.knob != "beta")

    @property
    def resume_command(self) -> str:
        """The command that continues this sweep, as it can be pasted from anywhere: the installed package's (a
        checkout's tune_jobs/ is not where a wheel's user is)."""
        address = f" --address {shlex.quote(self.address)}" if self.address else ""
        return (f"alliter sweep --resume --name {shlex.quote(self.name)} "
                f"--storage {shlex.quote(self.storage)}{address}")


def plan_sweep(sweep: SweepConfig, base: TrainConfig, given: Collection[str] = (), rule: CollapseRule | None = None,
               preflight_model: bool = True) -> Plan:
    """Check a sweep's flags, model, tokenizer, storage and name, and plan it; starts nothing. `given`: the names of
    the flags set on the command line (a resume refuses those it cannot change); `preflight_model` False skips the
    model's checks in a process of its own (a study's later steps: the same model as its first step's)."""
    sweep = sweep.resolved()  # fail on bad resources now, not when Ray schedules the first trial
    rule = rule or CollapseRule()
    rule.validate_rule(TRAINER_DIVERSITY)  # self-BLEU is best_beta's alone: the trainer does not measure it
    storage = store.storage_root(sweep.storage or os.environ.get("ALLITER_STORAGE") or RESULTS_DIR)
    address = sweep.address or os.environ.get("RAY_ADDRESS") or None
    check_name(sweep.name)
    store.check_writable(storage)  # a URI answers within seconds, or the sweep stops here
    if sweep.resume:
        return _plan_resume(sweep, given, rule, storage, address)
    check_given(given)
    unused = [f for f in SEARCH_FLAGS if f in given or (f == "search_targets" and sweep.search_targets)]
    if unused and not sweep.search:
        raise AlliterError(f"{flag_name(unused[0])} is a setting of the search: pass --search too, or leave it out (a grid "
                           "runs the values it is given)")
    if sweep.search and "stop_on_collapse" in given:
        raise InactiveFlag("--stop-on-collapse", "--stop-on-collapse does nothing with --search: a search always stops "
                           "a failed trial; leave it out")
    targets = parse_targets(sweep.kl_targets, base) if sweep.kl_targets is not None else []
    if (targets or sweep.search_targets or base.kl_target is not None) and sweep.betas is None:
        raise AlliterError("KL-target trials start at a beta: pass --betas START (e.g. --betas 50; several make a "
                           "grid of starts)")
    if targets and (sweep.search or base.kl_target is not None):
        raise AlliterError("--kl-targets is a grid: leave out --search and --kl-target")
    if sweep.search and (sweep.grid or (sweep.betas is not None and not sweep.search_targets)):
        raise AlliterError("--search chooses its own betas: leave out --grid and --betas")
    seeds = parse_seeds(sweep.seeds, base.seed)
    if len(seeds) == 1 and "max_collapse_rate" in given:
        raise InactiveFlag("--max-collapse-rate", "--max-collapse-rate does nothing with one seed (a value's verdict is "
                           "its one trial's); pass --seeds N, or leave it out")
    settings = _search_settings(sweep, seeds, rule, base) if sweep.search else None
    betas, grid_generations = ([], None) if sweep.search and not sweep.search_targets else grid_betas(
        None if sweep.betas is not None else sweep.grid or "coarse", sweep.betas)
    if sweep.search_targets and len(betas) != 1:
        raise AlliterError(f"--search-targets starts every trial at one beta: pass one --betas, got {sweep.betas!r}")
    if betas and (targets or sweep.search_targets or base.kl_target is not None) and min(betas) <= 0:
        raise AlliterError("the KL-target controller multiplies beta: start it above 0 (--betas, e.g. 50)")
    if sweep.search_targets:  # checked as its trials will be: a target of the search's, its one start beta
        base = dataclasses.replace(base, beta=betas[0], kl_target=settings.start[0])
    if grid_generations and "max_generations" not in given:
        base = dataclasses.replace(base, max_generations=grid_generations)
    if targets or base.kl_target is not None:  # checked as its trials will be: a target, the lowest start beta
        base = dataclasses.replace(base, kl_target=targets[0] if targets else base.kl_target, beta=min(betas))
    else:  # beta's knobs checked at the sweep's highest beta (all of them 0: no KL term for them to act on)
        base = dataclasses.replace(base, beta=max(settings.start if settings else betas))
    base = base.resolved()  # fail on a bad model folder or lr now, not inside six trials
    base.check_knobs_act(given)
    reward, reward_file, reward_sha256 = reward_to_ship(base.reward)
    base = dataclasses.replace(base, reward=reward)
    _check_devices(address, sweep.gpus_per_trial, sweep.cpus_per_trial, base.device)
    name = sweep.name or f"rloo-{sweep.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_path = store.join(storage, name)
    if store.exists(exp_path):
        raise AlliterError(f"{exp_path} exists already; pass --resume to continue it, or another --name")
    trials = (settings.budget if settings else len(betas) * max(1, len(targets))) * len(seeds)
    if trials > MAX_TRIALS:
        raise AlliterError(f"the sweep would run {trials} trials ({'the budget' if settings else 'values'} x seeds); "
                           f"alliter runs at most {MAX_TRIALS} in a sweep: fewer values or seeds, or several sweeps")
    snapshots, snapshot_total = snapshot_plan(base, trials, at_most=sweep.search)
    check_disk(storage, snapshot_total)
    if address:
        _check_address(address)
    trackers = _trackers(sweep, name)
    if any(trackers.values()) and "report_seconds" in given:
        raise InactiveFlag("--report-seconds", "--report-seconds does nothing with a tracker: every group is reported "
                           "to it; leave it out")
    if preflight_model:
        preflight.run_preflight(base)  # what every trial would find inside Ray, found here, in a few seconds
    # a tracker shows every group: each is reported
    report_seconds = 0.0 if any(trackers.values()) else sweep.report_seconds
    options = TrialOptions(sweep.cpus_per_trial, dataclasses.asdict(rule.rule()), sweep.search or sweep.stop_on_collapse,
                           sweep.seeds is not None, report_seconds, reward_sha256,
                           None if base.prompts is None else text_sha256(base.prompts))
    return Plan(sweep, base, rule, seeds, betas, settings, storage, name, exp_path, address, options, snapshots,
                targets=targets, reward_file=reward_file, prompts=base.prompts, trackers=trackers)


def _trackers(sweep: SweepConfig, name: str) -> dict[str, str | None]:
    """The sweep's trackers (TRACKERS_FILE's settings), each checked before Ray starts; {} for none. The tracker
    modules are imported only when one is asked for."""
    for flag, needs in (("mlflow_experiment", "mlflow"), ("wandb_group", "wandb")):
        if getattr(sweep, flag) is not None and getattr(sweep, needs) is None:
            raise AlliterError(f"{flag_name(flag)} names the {needs} of {flag_name(needs)}: pass {flag_name(needs)} too")
    if sweep.mlflow is None and sweep.wandb is None:
        return {}
    from alliter import trackers

    return trackers.check_trackers({"mlflow": sweep.mlflow, "mlflow_experiment": sweep.mlflow_experiment or name,
                                    "wandb": sweep.wandb, "wandb_group": sweep.wandb_group or name})


SEARCH_FLAGS = ("search_start", "search_targets", "precision", "budget")  # what only --search reads
MAX_NAME_BYTES = 200  # a sweep's folder name; its trials' names go inside it, and a file name has 255 bytes at most


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_name(name: str | None) -> None:
    """--name is one folder under --storage: not a path, not empty, not "." or ".."."""
    if name is None:
        return
    if name in ("", ".", "..") or any(c in name for c in "/\\\0\n") or name != name.strip():
        raise AlliterError(f"--name {name!r} is not a folder name: a sweep is one folder under --storage (no '/', not "
                           "'.' or '..'; pass --storage for another place)")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise AlliterError(f"--name is {len(name.encode())} bytes; at most {MAX_NAME_BYTES} (a file name has 255, and "
                           "the trials' folders go inside it)")


def _plan_resume(sweep: SweepConfig, given: Collection[str], rule: CollapseRule, storage: str, address: str | None) -> Plan:
    """A resume continues the sweep as it was started: only where and how its trials run may change."""
    fixed = sorted(set(given) - RESUME_FLAGS)
    if fixed:
        flags = ", ".join(map(flag_name, fixed))
        allowed = ", ".join(map(flag_name, sorted(RESUME_FLAGS - {"resume"})))
        raise AlliterError(f"--resume continues a sweep with the settings it was started with: {flags} cannot change "
                           f"(a resume takes {allowed}); start a new sweep (--name) for other settings")
    name = sweep.name or store.newest_sweep(storage)
    if not name:
        raise AlliterError(f"--resume: no sweep to resume under {storage} (pass --name of an existing sweep)")
    exp_path = store.join(storage, name)
    stored = store.sweep_trials(exp_path)
    if stored is None:
        raise AlliterError(f"--resume: {exp_path} holds no Tune sweep to resume")
    configs = [t["config"] for t in stored if OPTIONS_KEY in t["config"]]
    if not configs:
        raise AlliterError(f"--resume: the sweep {exp_path} was started by an older alliter (its trials have no "
                           f"{OPTIONS_KEY} options); resume it with that version")
    options = TrialOptions(**configs[0][OPTIONS_KEY])
    prompts = _prompts_again(exp_path, options.prompts_sha256)
    trackers = store.read_json(store.join(exp_path, TRACKERS_FILE)) or {}
    if trackers:  # Tune's state holds the trackers' callbacks, which go on in the same runs: they must work here too
        from alliter import trackers as tracking

        trackers = tracking.check_trackers(trackers)
    base = TrainConfig.from_dict({**configs[0], "prompts": prompts}).resolved()
    reward_file = _reward_file_again(base.reward, options.reward_sha256)
    search = store.read_json(store.join(exp_path, SEARCH_FILE))
    finished = all(t["status"] == "TERMINATED" for t in stored) and (search is None or bool(search.get("finished")))
    if not finished:
        _check_devices(address, sweep.gpus_per_trial, sweep.cpus_per_trial, base.device)
        if address:
            _check_address(address)
        preflight.run_preflight(base)
    betas = sorted({float(c["beta"]) for c in configs}) if search is None else []
    targets = sorted({float(c["kl_target"]) for c in configs if c.get("kl_target") is not None}) if search is None else []
    seeds = sorted({int(c["seed"]) for c in configs})
    settings = SearchSettings(**search["settings"]) if search else None
    rule = CollapseRule(**options.rule)
    sweep = dataclasses.replace(sweep, search=search is not None, seeds=",".join(map(str, seeds)) if options.seed_in_name else None)
    return Plan(sweep, base, rule, seeds, betas, settings, storage, name, exp_path, address, options, stored=stored,
                finished=finished, targets=targets, reward_file=reward_file, prompts=prompts, trackers=trackers)


def _prompts_again(exp_path: str, sha256: str | None) -> str | None:
    """A resumed sweep's prompts, from its prompts.txt, which must be those it started with."""
    if sha256 is None:
        return None
    text = store.read_text(store.join(exp_path, PROMPTS_FILE))
    if text is None or text_sha256(text) != sha256:
        raise AlliterError(f"--resume: the sweep's {store.join(exp_path, PROMPTS_FILE)} is "
                           f"{'gone' if text is None else 'changed'} since it started; restore it to resume")
    return text


def _reward_file_again(reward: str, sha256: str | None) -> Path | None:
    """A resumed sweep's reward file, which must be the one it started with."""
    if sha256 is None:
        return None
    path = Path(parse_reward(reward).where)
    if not path.is_file() or file_sha256(path) != sha256:
        raise AlliterError(f"--resume: the sweep's reward file {path} is {'changed' if path.is_file() else 'gone'} "
                           "since it started (its SHA-256 differs); restore it to resume")
    return path


def connect(plan: Plan) -> tuple[float, int]:
    """Start or join Ray, and size the trials: (GPUs per trial, trial slots now)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's classic output, which takes our reporter (Console)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's JSON and CSV logs (result.json, progress.csv), not its TensorBoard logger: the trials write their
    # own events, and a second file per trial would show every curve twice (and cost the driver every result)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if not plan.address:  # a Ray of this driver's own, on this machine: its token is made for it, no warning needed
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            lambda record: "Token authentication is enabled" not in record.getMessage())
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        runtime_env = {"py_modules": [str(plan.reward_file)]} if plan.reward_file else None
        # Ray's and Tune's INFO lines (its start, every save of the experiment's state) off the console: its own
        # warnings and the trials' lines stay
        ray.init(address=plan.address, include_dashboard=False if not plan.address else None, log_to_driver=True,
                 runtime_env=runtime_env, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as err:
        raise AlliterError(f"cannot start or join Ray at {plan.address or 'this machine'}: {err}") from None
    if callable(sigterm):  # ray.init put in its own (an exit: the sweep would end without Tune's save); the command's
        signal.signal(signal.SIGTERM, sigterm)  # (alliter.cli.stop_on_sigterm: Ctrl-C's path) goes back
    gpus = plan.sweep.gpus_per_trial  # the flag, else $ALLITER_GPUS_PER_TRIAL (resolved above)
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if gpus == 0:
        log.warning("alliter: no GPUs in this Ray cluster: the trials run on CPUs (%s each)", plan.sweep.cpus_per_trial)
    _check_cluster_fits({"GPU": gpus, "CPU": plan.sweep.cpus_per_trial}, plan.address)
    slots = _trial_slots(plan.sweep, gpus)
    limit = plan.sweep.concurrency or slots
    if plan.settings is not None:
        plan.settings.concurrency = limit
        return gpus, min(slots, limit)
    return gpus, min(slots, limit, len(plan.betas) * max(1, len(plan.targets)) * len(plan.seeds))


def build_tuner(plan: Plan, gpus: float) -> tune.Tuner:
    """The Tuner of a new sweep, or the restored one of a resumed sweep."""
    # the trainable is looked up now, so that a test's wrapper (tests/faulty_sweep.py) is what Tune runs
    logging.getLogger(trial.TUNE_CONTROLLER_LOG).addFilter(NoRetry.quiet)
    trainable = trial.rloo_trial if plan.prompts is None else tune.with_parameters(trial.rloo_trial, prompts=plan.prompts)
    trainable = tune.with_resources(trainable, {"cpu": plan.sweep.cpus_per_trial, "gpu": gpus})
    if plan.sweep.resume:
        return tune.Tuner.restore(plan.exp_path, trainable, resume_errored=True)
    # the prompts' text is not in Tune's config, which every result row repeats: TrialOptions.prompts_sha256
    space: dict[str, Any] = {**plan.base.to_dict(), "prompts": None, OPTIONS_KEY: dataclasses.asdict(plan.options)}
    stopper = None
    if plan.settings is not None:
        search_alg, num_samples = BetaSearch(plan.settings), -1
        stopper = SearchStopper(search_alg, plan.exp_path, plan.options.seed_in_name, plan.base.beta)
    else:
        space["beta"] = tune.grid_search(plan.betas)
        space["seed"] = tune.grid_search(plan.seeds) if plan.options.seed_in_name else plan.base.seed
        if plan.targets:
            space["kl_target"] = tune.grid_search(plan.targets)
        search_alg, num_samples = None, 1
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, num_samples=num_samples,
            max_concurrent_trials=plan.settings.concurrency if plan.settings else (plan.sweep.concurrency or None),
            trial_name_creator=trial.trial_name, trial_dirname_creator=trial.trial_name,
            reuse_actors=True,  # a worker keeps torch and transformers imported from one trial to the next
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            stop=stopper,
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), NoRetry(), *tracker_callbacks(plan)],
            failure_config=tune.FailureConfig(max_failures=plan.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            # on_checkpoint (Ray's default, said here because alliter.train.snapshots relies on it)
            sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True, sync_period=10),
            progress_reporter=Console(seeds=plan.options.seed_in_name),  # a line per trial, 100 columns
            verbose=1,
        ),
    )


def tracker_callbacks(plan: Plan) -> list:
    """Tune's callbacks of the sweep's trackers (alliter.sweep.trackers, imported only for a tracker)."""
    if not plan.trackers:
        return []
    from alliter import trackers

    return trackers.sweep_callbacks(plan.trackers, plan.exp_path)


@dataclass
class Outcome:
    """How a sweep ended: finished, errored (some trial failed), interrupted, or nothing to resume."""

    status: str
    exp_path: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"finished": 0, "nothing": 0, "errored": 1, "interrupted": 130}[self.status]


def run_sweep(sweep: SweepConfig, base: TrainConfig, given: Collection[str] = (),
              rule: CollapseRule | None = None) -> Outcome:
    """Run (or resume) a sweep: plan it, hold its lock, start or join Ray, run the Tuner, summarise."""
    start = time.perf_counter()
    plan = plan_sweep(sweep, base, given, rule)
    if plan.finished:
        say(f"alliter sweep {plan.name}: nothing to resume, every trial finished (results: {plan.exp_path})")
        return Outcome("nothing", plan.exp_path)
    with store.DriverLock(plan.exp_path):
        if plan.prompts is not None and not plan.sweep.resume:
            store.write_text(store.join(plan.exp_path, PROMPTS_FILE), plan.prompts)
        if plan.trackers and not plan.sweep.resume:
            store.write_text(store.join(plan.exp_path, TRACKERS_FILE), json.dumps(plan.trackers) + "\n")
        gpus, slots = connect(plan)
        if plan.settings is not None:
            what = ("a search of KL targets, every trial's beta starting at "
                    f"{plan.base.beta:g}" if plan.settings.knob == "kl_target" else "a search")
        elif plan.targeting:
            what = (f"KL targets {plan.targets or [plan.base.kl_target]}, each trial's beta starting at "
                    f"{', '.join(f'{b:g}' for b in plan.betas)}")
        else:
            what = f"betas {plan.betas}"
        say(f"alliter sweep {plan.name}: {'resuming ' if plan.sweep.resume else ''}{what}"
              f"{f', seeds {compact(plan.seeds)}' if plan.options.seed_in_name else ''}, model {plan.base.model}, tokenizer "
              f"{plan.base.tokenizer}, lr {plan.base.lr}, {plan.base.max_generations} generations each, "
              f"{gpus:g} GPU and {plan.sweep.cpus_per_trial:g} CPU per trial")
        say(f"update: {plan.base.describe_recipe()}")
        say(f"results: {plan.exp_path}")
        if plan.snapshots:
            say(plan.snapshots)
        tuner = build_tuner(plan, gpus)
        skip_tunes_callback_census()
        ray_start = time.perf_counter() - start  # Ray's own start (and the checks): paid once per driver
        fit_start, fit_started = time.perf_counter(), time.time()
        try:
            results = tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: Tune stops without its last save
            say_command("\ninterrupted; continue it with:", plan.resume_command, file=sys.stderr)
            return Outcome("interrupted", plan.exp_path)
        stats = {**sweep_stats(results, fit_started, time.perf_counter() - fit_start, slots),
                 "ray_start_seconds": ray_start}
        return summarise(plan, results, stats)


def trial_cause(result: Any) -> str:
    """The one line that says why a trial errored: alliter's own message, else the last line of Ray's error."""
    fatal = (result.metrics or {}).get(FATAL)
    if fatal:
        return str(fatal)
    lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(result.error).__name__)[:300]


def summarise(plan: Plan, results: tune.ResultGrid, stats: dict[str, Any]) -> Outcome:
    """Print the trials' table, the figures and what to run next; keep the figures in sweep.json."""
    df = results.get_dataframe()
    targets = "config/kl_target" in df.columns and df["config/kl_target"].notna().any()
    # at the last report, in the console's units: 100 columns at most (a KL-target trial: its start and its beta now)
    shown = {"config/kl_target": ("target", "{:g}"), "config/beta": ("start beta" if targets else "beta", "{:g}"),
             "beta": ("beta now", "{:.3g}"), "config/seed": ("seed", "{:.0f}"), "generations": ("generations", "{:.0f}"),
             "point_alliteration": ("alliteration", "{:.1f}"), "diversity_kept": ("distinct-2 kept", "{:.0%}"),
             "fluency_gap": ("fluency", "{:+.2f}"), "kl_penalty_mean": ("kl_penalty", "{:.3g}"), "verdict": ("verdict", "{}")}
    cols = [c for c in shown if c in df.columns and (targets or c not in ("config/kl_target", "beta"))]
    if cols:
        table = df[cols].sort_values(cols[:2])
        for c in cols:
            table[c] = [shown[c][1].format(v) if not (isinstance(v, float) and math.isnan(v)) else "-" for v in table[c]]
        print(table.rename(columns={c: shown[c][0] for c in cols}).to_string(index=False))
    errors = [r for r in results if r.error]
    # Tune's saved state tells an interrupted sweep: trials still RUNNING or PENDING, or a search not ended
    unfinished = sum(t["status"] not in ("TERMINATED", "ERROR") for t in store.sweep_trials(plan.exp_path) or [])
    searching = plan.settings is not None and not (store.read_json(store.join(plan.exp_path, SEARCH_FILE)) or {}).get("finished")
    status = "interrupted" if unfinished or (searching and not errors) else "errored" if errors else "finished"
    say(f"\nsweep efficiency: {stats['efficiency']:.2f} ({stats['group_seconds']:.0f} s of groups / {stats['slots']} "
          f"trial slots x {stats['wall_seconds']:.0f} s of Tune; Ray's start and checks: {stats['ray_start_seconds']:.0f} s)")
    if stats["eval_seconds"]:
        share = stats["eval_seconds"] / (stats["wall_seconds"] * stats["slots"])
        say(f"evaluations: {stats['eval_seconds']:.0f} s, {share:.0%} of the trial slots' time (--eval-samples sets "
              "their size, 0 turns them off)")
    quoted = shlex.quote(plan.exp_path)  # a URI's query string holds '&'
    say(f"results:     {plan.exp_path}")
    say(f"tensorboard: tensorboard --logdir {quoted}", shell=True)
    for r in errors:
        say(f"  ERROR in {Path(r.path).name}: {trial_cause(r)}", file=sys.stderr, indent=4)
    if status == "finished" and not os.environ.get(STUDY_STEP):  # a study's step: the study analyses it itself
        say(f"next:        alliter best-beta {quoted}", shell=True)
    elif status == "errored":
        say_command(f"{len(errors)} trial(s) errored (above); once the cause is fixed, run them again with:",
                    plan.resume_command, file=sys.stderr)
    elif os.environ.get(STUDY_STEP):  # the study says how to continue it, its own command
        say(f"interrupted with {unfinished} trial(s) unfinished", file=sys.stderr)
    else:
        say_command(f"interrupted with {unfinished} trial(s) unfinished; continue it with:", plan.resume_command,
                    file=sys.stderr)
    path = store.join(plan.exp_path, SWEEP_STATS_FILE)
    earlier = store.read_json(path) or {}
    sessions = [*earlier.pop("earlier", []), earlier] if earlier else []  # a resume keeps the figures of before
    mode = earlier.get("mode", plan.sweep.mode) if plan.sweep.resume else plan.sweep.mode
    store.write_text(path, json.dumps({**stats, "mode": mode, "resumed": plan.sweep.resume, "status": status,
                                       "earlier": sessions}) + "\n")
    return Outcome(status, plan.exp_path, stats)

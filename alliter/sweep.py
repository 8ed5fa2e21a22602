"""A beta sweep on Ray Tune: one RLOO trial per (beta, seed), on this machine or a Ray cluster.

A grid runs every beta of a named grid or a list; a search (`alliter.search.BetaSearch`, a Tune
Searcher) chooses the betas as outcomes come in. Tune does the scheduling (one trial per GPU, or a
fraction of one), reuses trial workers between trials, restarts crashed trials from their last
checkpoint and restores an interrupted sweep; the trial is the core trainer (`alliter.trainer.Trainer`)
reporting every group, and judging its own collapse by the one rule of `alliter.collapse`.

The driver never imports torch: the trainer is imported inside the trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from alliter import cluster, storage as store
from alliter.collapse import TRAINER_MEASURES, CollapseRule, CollapseWatch
from alliter.config import CHECKPOINT_FILE as CHECKPOINT
from alliter.config import (
    METRICS_FILE,
    RESULTS_DIR,
    STOP_REASON_FILE,
    SWEEP_STATS_FILE,
    AlliterError,
    TrainConfig,
    check_model_folder,
    grid_betas,
    parse_seeds,
)
from alliter.search import BetaSearch, SearchSettings
from alliter.snapshots import check_disk, snapshot_plan

log = logging.getLogger("alliter")

# Ray's progress table: the columns that matter for a beta sweep
PROGRESS_COLUMNS = {
    "generations": "gens",
    "raw_reward_mean": "raw_reward",
    "kl_penalty_mean": "kl_penalty",
    "distinct_2": "distinct_2",
    "diversity_kept": "div_kept",
}
# tests only: a fault in a trial's first process (never in one restored from a checkpoint), set on the
# driver and carried in the trial's config to whichever node runs it. "crash:N": the process loses its
# working folder, as a lost node would, and dies after group N; "hang:N": it stops after group N (and
# after that group's checkpoint, if one is due) until its node is killed.
FAULT_ENV = "ALLITER_TEST_FAULT"


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
    search_start: str = "1,10,100"
    """The search's first betas (log-spaced; tried from the highest down, skipping those already implied)."""
    precision: float = 1.25
    """The search stops when the bracket (lowest kept beta / highest collapsed beta) is at most this ratio wide
    (1.25: as fine as the fine grid is around 40-50)."""
    budget: int = 12
    """The most betas the search tries (each runs one trial per seed)."""
    concurrency: int = 0
    """Search trials at once; 0: as many as the cluster has trial slots now (at least 1)."""
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
    """CPUs per trial (also the trial's torch threads)."""
    max_failures: int = 3
    """Times Tune restarts a crashed trial from its last checkpoint."""
    resume: bool = False
    """Continue an interrupted sweep: finished trials are kept, the others continue from their checkpoints."""
    report_seconds: float = 1.0
    """A trial reports its newest group to Tune at most this often (and always with a checkpoint, and at its
    end): each report waits for the driver, a few ms that count when a group takes 0.1 s. metrics.jsonl and
    TensorBoard keep every group."""

    @property
    def mode(self) -> str:
        return "search" if self.search else "betas" if self.betas else self.grid or "coarse"

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


def rloo_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: the core trainer, reporting every group, checkpointing every N, and
    ending itself once it has collapsed when the sweep asks for that."""
    from alliter.trainer import Trainer  # torch and transformers: in the trial's process only

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
    rule, stop_on_collapse = CollapseRule(**config["_rule"]), bool(config.get("_stop_on_collapse"))
    history = [json.loads(line) for line in _read(run_dir / METRICS_FILE).splitlines() if line.strip()]
    watch = CollapseWatch(rule, history)
    if history and (trainer.done or (stop_on_collapse and watch.verdict()["collapsed"])):
        # restored from the final checkpoint: report the last group again, once
        tune.report({**history[-1], **watch.verdict()})
        return
    fault, _, fault_group = str(config.get("_fault") or "").partition(":")
    report_seconds, reported = float(config.get("_report_seconds", 0.0)), -math.inf
    session = {"session_groups": 0, "session_group_seconds": 0.0}  # this process's totals, for the sweep's efficiency
    for metrics in trainer.groups():
        session["session_groups"] += 1
        session["session_group_seconds"] += metrics["seconds_per_group"]
        metrics.update(watch.add(metrics), **session)
        stop = stop_on_collapse and metrics["collapsed"] and not trainer.done
        if stop:
            reason = f"collapsed: {rule.describe()} at {trainer.generations} generations"
            (run_dir / STOP_REASON_FILE).write_text(reason + "\n")
        if trainer.checkpoint_due or stop:  # the last group is due too
            with tempfile.TemporaryDirectory() as d:
                trainer.save_checkpoint(Path(d) / CHECKPOINT)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            reported = time.monotonic()
        elif time.monotonic() - reported >= report_seconds:
            tune.report(metrics)
            reported = time.monotonic()
        if fault and restored is None and trainer.group == int(fault_group):
            if fault == "crash":
                shutil.rmtree(run_dir, ignore_errors=True)
                os._exit(1)
            time.sleep(3600)
        if stop:
            trainer.close()
            return


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _write_node_info(run_dir: Path) -> None:
    info = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid()}
    (run_dir / "node.json").write_text(json.dumps(info) + "\n")


def sweep_stats(results: tune.ResultGrid, started: float, wall: float, slots: int) -> dict[str, float]:
    """The sweep's efficiency: the trials' group time over (Tune's wall time x trial slots), for this driver's
    session (`started`: the wall-clock time Tune started). What is lost is the trials' start-up (workers,
    imports, model loads), checkpoints, reporting, and idle slots. Each trial reports its process's running
    totals (`session_groups`, `session_group_seconds`); a trial restarted within the session starts them again."""
    busy, groups = 0.0, 0
    for r in results:
        rows = r.metrics_dataframe
        if rows is None or "session_group_seconds" not in rows:
            continue
        rows = rows[rows["timestamp"] >= math.floor(started)].dropna(subset=["session_groups"])
        last = rows["session_groups"].shift(-1, fill_value=-1) < rows["session_groups"]  # each run's last report
        busy += float(rows.loc[last, "session_group_seconds"].sum())
        groups += int(rows.loc[last, "session_groups"].sum()) * int(r.config.get("group_size", 0))
    return {"wall_seconds": wall, "group_seconds": busy, "slots": slots, "generations": groups,
            "efficiency": busy / (wall * slots) if wall > 0 and slots else math.nan}


def _check_address(address: str) -> None:
    """Fail fast, in one line, on a host:port nobody answers on (ray.init would retry for a minute)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as err:
        raise AlliterError(f"cannot reach a Ray cluster at {address!r} ({err}); check --address or RAY_ADDRESS") from None


def _check_local_gpus(address: str | None, gpus: float) -> None:
    """Before starting a Ray on this machine: the GPUs a trial asks for must be here (Ray's own count)."""
    if address or not gpus:
        return
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        here = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    except Exception:  # noqa: BLE001 - another Ray: the check after ray.init still runs
        return
    if here < gpus:
        raise AlliterError(
            f"--gpus-per-trial {gpus:g}, but this machine has {here} GPU(s) and no Ray cluster was given (--address); "
            "pass --gpus-per-trial 0 to run the trials on CPUs"
        )


def _check_cluster_fits(required: dict[str, float], address: str | None) -> None:
    """A trial must fit on a node of the cluster, or on a node its autoscaler may add (then say, once, that
    the trials wait for it); otherwise Tune would leave every trial PENDING forever, in silence."""
    fits_now = any(cluster.fits(required, node) for node in cluster.node_resources())
    scaler = cluster.find_autoscaler(0 if fits_now else cluster.STATUS_WAIT_S) if address else None  # none if started here
    if scaler:
        print(scaler.line())
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


def _search_settings(sweep: SweepConfig, seeds: list[int]) -> SearchSettings:
    try:
        start = [float(b) for b in sweep.search_start.split(",") if b.strip()]
    except ValueError:
        raise AlliterError(f"--search-start takes numbers separated by commas, got {sweep.search_start!r}") from None
    if sweep.concurrency < 0:
        raise AlliterError(f"--concurrency must be >= 0 (0: the cluster's trial slots), got {sweep.concurrency}")
    return SearchSettings(start, sweep.precision, sweep.budget, seeds, 0.0, max(sweep.concurrency, 1)).validate()


def _trial_slots(sweep: SweepConfig, gpus: float) -> int:
    """Trials this Ray cluster runs at once now."""
    resources = ray.cluster_resources()
    slots = math.floor(resources.get("CPU", 0) / sweep.cpus_per_trial + 1e-9) if sweep.cpus_per_trial > 0 else 10**6
    if gpus > 0:
        slots = min(slots, math.floor(resources.get("GPU", 0) / gpus + 1e-9))
    return max(1, slots)


def run_sweep(
    sweep: SweepConfig, base: TrainConfig, given: dict[str, Any] | None = None, rule: CollapseRule | None = None
) -> Path | str:
    """Run (or resume) a sweep and return its folder. `given` = trainer fields set on the command line."""
    start = time.perf_counter()
    sweep = sweep.resolved()  # fail on bad resources now, not when Ray schedules the first trial
    rule = rule or CollapseRule()
    rule.validate_rule(TRAINER_MEASURES)  # self-BLEU is best_beta's alone: the trainer does not measure it
    if sweep.search and (sweep.grid or sweep.betas):
        raise AlliterError("--search chooses its own betas: leave out --grid and --betas")
    seeds = parse_seeds(sweep.seeds, base.seed)
    if sweep.search:
        betas, grid_generations = [], None
        settings = _search_settings(sweep, seeds)
    else:
        betas, grid_generations = grid_betas(None if sweep.betas else sweep.grid or "coarse", sweep.betas)
    if grid_generations and "max_generations" not in (given or {}):
        base = dataclasses.replace(base, max_generations=grid_generations)
    base = base.resolved()  # fail on a bad model path or lr now, not inside six trials
    check_model_folder(base.model)
    storage = store.storage_root(sweep.storage or os.environ.get("ALLITER_STORAGE") or RESULTS_DIR)
    store.check_writable(storage)
    trials = (settings.budget if sweep.search else len(betas)) * len(seeds)
    snapshots, snapshot_total = snapshot_plan(base, trials, at_most=sweep.search)
    if not sweep.resume:
        check_disk(storage, snapshot_total)
    name = sweep.name
    if sweep.resume:
        name = name or store.newest_sweep(storage)
        if not name:
            raise AlliterError(f"--resume: no sweep to resume under {storage} (pass --name of an existing sweep)")
        exp_path = store.join(storage, name)
        if not store.is_sweep(exp_path):
            raise AlliterError(f"--resume: {exp_path} holds no Tune sweep to resume")
    else:
        name = name or f"rloo-{sweep.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
        exp_path = store.join(storage, name)
        if store.exists(exp_path):
            raise AlliterError(f"{exp_path} exists already; pass --resume to continue it, or another --name")

    address = sweep.address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_address(address)
    _check_local_gpus(address, sweep.gpus_per_trial or 0)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table, with our columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's JSON and CSV logs (result.json, progress.csv), not its TensorBoard logger: the trials write their
    # own events, and a second file per trial would show every curve twice (and cost the driver every result)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    try:
        ray.init(address=address, include_dashboard=False if not address else None, log_to_driver=True)
    except (ConnectionError, RuntimeError) as err:
        raise AlliterError(f"cannot start or join Ray at {address or 'this machine'}: {err}") from None

    gpus = sweep.gpus_per_trial  # the flag, else $ALLITER_GPUS_PER_TRIAL (resolved above)
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if gpus == 0:
        log.warning("alliter: no GPUs in this Ray cluster: the trials run on CPUs (%s each)", sweep.cpus_per_trial)
    _check_cluster_fits({"GPU": gpus, "CPU": sweep.cpus_per_trial}, address)
    trainable = tune.with_resources(rloo_trial, {"cpu": sweep.cpus_per_trial, "gpu": gpus})
    slots = _trial_slots(sweep, gpus)

    what = "a search" if sweep.search else f"betas {betas}"
    print(f"alliter sweep {name}: {what}{f', seeds {seeds}' if sweep.seeds else ''}, model {base.model}, "
          f"tokenizer {base.tokenizer}, lr {base.lr}, {base.max_generations} generations each, "
          f"{gpus:g} GPU and {sweep.cpus_per_trial:g} CPU per trial")
    print(f"results: {exp_path}")
    if not sweep.resume:
        print(snapshots)
    if sweep.resume:
        tuner = tune.Tuner.restore(exp_path, trainable, resume_errored=True)
    else:
        space: dict[str, Any] = {
            **base.to_dict(), "_cpus_per_trial": sweep.cpus_per_trial, "_rule": dataclasses.asdict(rule.rule()),
            "_stop_on_collapse": sweep.search or sweep.stop_on_collapse, "_seed_in_name": sweep.seeds is not None,
            "_report_seconds": sweep.report_seconds, "_fault": os.environ.get(FAULT_ENV),
        }
        stopper = None
        if sweep.search:
            settings.max_collapse_rate = rule.max_collapse_rate
            settings.concurrency = sweep.concurrency or slots
            search_alg, num_samples = BetaSearch(settings), -1
            stopper = SearchStopper(search_alg, exp_path, sweep.seeds is not None)
        else:
            space["beta"] = tune.grid_search(betas)
            space["seed"] = tune.grid_search(seeds) if sweep.seeds else base.seed
            search_alg, num_samples = None, 1
        slots = min(slots, settings.concurrency if sweep.search else len(betas) * len(seeds))
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, num_samples=num_samples,
                max_concurrent_trials=settings.concurrency if sweep.search else None,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                reuse_actors=True,  # a worker keeps torch and transformers imported from one trial to the next
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                stop=stopper,
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                # on_checkpoint (Ray's default, said here because alliter.snapshots relies on it)
                sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True, sync_period=10),
                progress_reporter=tune.CLIReporter(
                    parameter_columns=["beta", "seed"] if sweep.seeds else ["beta"], metric_columns=PROGRESS_COLUMNS,
                    max_report_frequency=15,
                ),
                verbose=1,
            ),
        )
    ray_start = time.perf_counter() - start  # Ray's own start (and the checks): paid once per driver
    fit_start, fit_started = time.perf_counter(), time.time()
    results = tuner.fit()
    stats = {**sweep_stats(results, fit_started, time.perf_counter() - fit_start, slots), "ray_start_seconds": ray_start}
    _print_summary(results, exp_path, stats)
    with results.filesystem.open_output_stream(f"{results.experiment_path}/{SWEEP_STATS_FILE}") as f:
        f.write((json.dumps({**stats, "mode": sweep.mode, "resumed": sweep.resume}) + "\n").encode())
    return exp_path


def _trial_name(trial) -> str:
    return trial_dirname(trial.config["beta"], trial.config["seed"], trial.config.get("_seed_in_name"), trial.trial_id)


def trial_dirname(beta: float, seed: int, seed_in_name: bool, trial_id: str) -> str:
    return f"beta={beta:g}{f'_seed={seed}' if seed_in_name else ''}_{trial_id}"


class SearchStopper(tune.Stopper):
    """Stops a search's trial once its beta can no longer move the bracket (BetaSearch.needless), and writes
    why into the trial's folder on the storage, so that best_beta leaves it out of the choice."""

    def __init__(self, search: BetaSearch, exp_path: str, seed_in_name: bool):
        self.search, self.exp_path, self.seed_in_name = search, exp_path, seed_in_name

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if trial_id in self.search.dropped:
            return True
        why = self.search.needless(trial_id)
        if why is None:
            return False
        self.search.dropped[trial_id] = why
        beta, seed = self.search.trials[trial_id]
        why += f" (stopped at {result.get('generations')} generations)"
        fs, root = pafs.FileSystem.from_uri(self.exp_path)
        folder = f"{root}/{trial_dirname(beta, seed, self.seed_in_name, trial_id)}"
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(f"{folder}/{STOP_REASON_FILE}") as f:
            f.write((why + "\n").encode())
        log.info("alliter search: stopped beta %g (seed %d): %s", beta, seed, why)
        return True

    def stop_all(self) -> bool:
        return False


def _print_summary(results, exp_path: str, stats: dict[str, float]) -> None:
    df = results.get_dataframe()
    cols = [c for c in ["config/beta", "config/seed", "generations", "raw_reward_mean", "kl_penalty_mean", "distinct_2",
                        "diversity_kept", "collapsed"] if c in df.columns]
    if cols:
        print(df[cols].sort_values(cols[:2]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    errors = [r for r in results if r.error]
    for r in errors:
        print(f"  ERROR in {Path(r.path).name}: {str(r.error).splitlines()[0][:200]}")
    print(f"\nsweep efficiency: {stats['efficiency']:.2f} ({stats['group_seconds']:.0f} s of group time over "
          f"{stats['slots']} trial slots x {stats['wall_seconds']:.0f} s of Tune's run; Ray's start and the checks "
          f"before it took {stats['ray_start_seconds']:.0f} s)")
    quoted = shlex.quote(exp_path)  # a URI's query string holds '&'
    print(f"results:     {exp_path}")
    print(f"tensorboard: tensorboard --logdir {quoted}")
    print(f"next:        python analysis/best_beta.py {quoted}")
    if errors:
        name = Path(exp_path.partition("?")[0]).name
        print(f"{len(errors)} trial(s) errored; continue them with: python tune_jobs/sweep.py --resume --name {name}")

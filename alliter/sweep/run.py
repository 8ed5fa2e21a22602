"""Running a sweep: plan it (alliter.sweep.plan: every check, before anything starts) -> lock the sweep's folder ->
connect (start or join Ray, size the trials) -> build the Tuner -> run it -> the outcome, summarised.

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
import signal
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
from alliter.cli import AlliterError
from alliter.config import TrainConfig
from alliter.knob import TARGET
from alliter.rule import CollapseRule
from alliter.schema import PROMPTS_FILE, SEARCH_FILE, SWEEP_STATS_FILE, TRACKERS_FILE, tune_trials
from alliter.sweep import cluster, console, trial
from alliter.sweep.config import SweepConfig
from alliter.sweep.console import Console, say, say_command
from alliter.sweep.plan import Plan, plan_sweep
from alliter.sweep.search import BetaSearch, SearchStopper
from alliter.sweep.trial import FATAL, OPTIONS_KEY, NoRetry

log = logging.getLogger("alliter")


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


def skip_tunes_callback_census() -> None:
    """Tune counts the callbacks it is given, for Ray's usage statistics, by importing every integration it knows
    (mlflow, wandb, comet, aim): 1.3 s of each sweep's driver where they are installed, trackers asked for or not.
    alliter's callbacks are its own, so the count is skipped (a private API, checked in tests/test_house.py)."""
    from ray.air._internal import usage

    usage.tag_callbacks = lambda callbacks: False


def connect(plan: Plan) -> tuple[float, int]:
    """Start or join Ray, and size the trials: (GPUs per trial, trial slots of the cluster now)."""
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
    cluster.check_fits({"GPU": gpus, "CPU": plan.sweep.cpus_per_trial}, plan.address)
    return gpus, cluster.trial_slots(plan.sweep.cpus_per_trial, gpus)


def build_tuner(plan: Plan, gpus: float, concurrency: int) -> tune.Tuner:
    """The Tuner of a new sweep, or the restored one of a resumed sweep; `concurrency`: a search's trials at once."""
    # the trainable is looked up now, so that a test's wrapper (tests/faulty_sweep.py) is what Tune runs
    logging.getLogger(trial.TUNE_CONTROLLER_LOG).addFilter(NoRetry.quiet)
    trainable = trial.rloo_trial if plan.prompts is None else tune.with_parameters(trial.rloo_trial, prompts=plan.prompts)
    trainable = tune.with_resources(trainable, {"cpu": plan.sweep.cpus_per_trial, "gpu": gpus})
    if plan.sweep.resume:
        return tune.Tuner.restore(plan.exp_path, trainable, resume_errored=True)
    # the prompts' text is not in Tune's config, which every result row repeats: TrialOptions.prompts_sha256
    space: dict[str, Any] = {**plan.base.to_dict(), "prompts": None, OPTIONS_KEY: dataclasses.asdict(plan.options)}
    stopper = None
    settings = None
    if plan.settings is not None:
        settings = dataclasses.replace(plan.settings, concurrency=concurrency)  # in search.json: a resume's default
        search_alg, num_samples = BetaSearch(settings), -1
        start = plan.betas[0] if plan.knob is TARGET else 0.0  # a search of KL targets: every trial's beta starts there
        if plan.knob is TARGET:
            space["beta"] = start
        stopper = SearchStopper(search_alg, plan.exp_path, plan.options.seed_in_name, start)
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
            max_concurrent_trials=concurrency if settings else (plan.sweep.concurrency or None),
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
    from alliter.sweep.trackers import sweep_callbacks

    return sweep_callbacks(plan.trackers, plan.exp_path)


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
        concurrency = plan.sweep.concurrency or slots
        slots = min(slots, concurrency, plan.trials or concurrency)  # the slots the sweep can fill
        console.say_start(plan.name, plan.what, plan.base, gpus, plan.sweep.cpus_per_trial, plan.exp_path,
                          plan.snapshots, plan.sweep.resume)
        tuner = build_tuner(plan, gpus, concurrency)
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
    console.say_trials(results.get_dataframe())
    errors = [r for r in results if r.error]
    # Tune's saved state tells an interrupted sweep: trials still RUNNING or PENDING, or a search not ended
    unfinished = sum(t["status"] not in ("TERMINATED", "ERROR") for t in tune_trials(plan.exp_path) or [])
    searching = plan.settings is not None and not (store.read_json(store.join(plan.exp_path, SEARCH_FILE)) or {}).get("finished")
    status = "interrupted" if unfinished or (searching and not errors) else "errored" if errors else "finished"
    console.say_end(status, stats, plan.exp_path, [(Path(r.path).name, trial_cause(r)) for r in errors], unfinished,
                    plan.resume_command)
    path = store.join(plan.exp_path, SWEEP_STATS_FILE)
    earlier = store.read_json(path) or {}
    sessions = [*earlier.pop("earlier", []), earlier] if earlier else []  # a resume keeps the figures of before
    mode = earlier.get("mode", plan.sweep.mode) if plan.sweep.resume else plan.sweep.mode
    store.write_text(path, json.dumps({**stats, "mode": mode, "knob": plan.knob.name, "resumed": plan.sweep.resume,
                                       "status": status, "earlier": sessions}) + "\n")
    return Outcome(status, plan.exp_path, stats)

"""A sweep's plan: every check a sweep can make before anything starts (its flags, model, tokenizer, reward, prompts,
storage, name, trackers, the machine's devices), and what it will run: the trials' config, the values and seeds, a
search's settings, and what Ray is to be given. A resume's plan is the sweep's as it was started, read back from its
folder. Nothing here starts Ray or writes a file."""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from alliter import storage as store
from alliter.cli import AlliterError, InactiveFlag
from alliter.config import TrainConfig, check_given
from alliter.knob import BETA, KNOBS, TARGET, Knob
from alliter.measures import TRAINER_DIVERSITY
from alliter.rule import CollapseRule
from alliter.schema import PROMPTS_FILE, RESULTS_DIR, SEARCH_FILE, TRACKERS_FILE, newest_sweep, tune_trials
from alliter.sweep import cluster
from alliter.sweep.config import SweepConfig
from alliter.sweep.grids import MAX_TRIALS, compact, grid_betas, knob_values, parse_seeds
from alliter.sweep.search import SearchSettings
from alliter.sweep.trial import OPTIONS_KEY, TrialOptions, text_sha256
from alliter.train import preflight
from alliter.train.reward import file_sha256, parse_reward, reward_to_ship
from alliter.train.snapshots import check_disk, snapshot_plan

# the flags a resume takes: where and how the trials run (resources, not the threads: those stay the trials')
RESUME_FLAGS = {"resume", "name", "storage", "address", "gpus_per_trial", "cpus_per_trial"}
SEARCH_STARTS = {"beta": "1,10,100", "kl_target": "0.03,0.1,0.3"}


def _search_settings(sweep: SweepConfig, seeds: list[int], rule: CollapseRule, base: TrainConfig,
                     knob: Knob) -> SearchSettings:
    units = {"recipe": base.recipe, "kl_reduction": base.kl_reduction, "max_length": base.max_length}
    start = knob_values(SEARCH_STARTS[knob.name] if sweep.search_start is None else sweep.search_start,
                        "--search-start", knob.name, TrainConfig(**units))
    return SearchSettings(start, sweep.precision, sweep.budget, seeds, rule.max_collapse_rate,
                          max(sweep.concurrency, 1), knob.name, units).validate()


def parse_targets(text: str, units: TrainConfig | None = None) -> list[float]:
    """`--kl-targets 0.05,0.1` -> [0.05, 0.1]: numbers > 0 within the bound of `units`' KL units, none twice."""
    return knob_values(text, "--kl-targets", "kl_target", units)


@dataclass
class Plan:
    """Everything a sweep will run, checked before anything starts."""

    sweep: SweepConfig
    base: TrainConfig  # what every trial shares (a resume: as the sweep was started); the Tuner sets the knob's values
    knob: Knob  # what the sweep varies: beta, or a KL target (beta then the controller's start)
    rule: CollapseRule
    seeds: list[int]
    betas: list[float]  # a grid's betas, or the start betas of KL targets; empty for a search of betas
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
    def trials(self) -> int | None:
        """How many trials a grid runs; None for a search (it chooses as it goes)."""
        return None if self.settings else len(self.betas) * max(1, len(self.targets)) * len(self.seeds)

    @property
    def what(self) -> str:
        """What it runs, for the sweep's header: its values (a KL target's start beta too) and seeds."""
        if self.settings is not None:
            what = f"a search of KL targets, every trial's beta starting at {self.betas[0]:g}" if self.knob is TARGET \
                else "a search"
        elif self.knob is TARGET:
            what = (f"KL targets {self.targets or [self.base.kl_target]}, each trial's beta starting at "
                    f"{', '.join(f'{b:g}' for b in self.betas)}")
        else:
            what = f"betas {self.betas}"
        return what + (f", seeds {compact(self.seeds)}" if self.options.seed_in_name else "")

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
    knob = TARGET if targets or sweep.search_targets or base.kl_target is not None else BETA  # decided here, once
    if knob is TARGET and sweep.betas is None:
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
    settings = _search_settings(sweep, seeds, rule, base, knob) if sweep.search else None
    betas, grid_generations = ([], None) if sweep.search and not sweep.search_targets else grid_betas(
        None if sweep.betas is not None else sweep.grid or "coarse", sweep.betas)
    if sweep.search_targets and len(betas) != 1:
        raise AlliterError(f"--search-targets starts every trial at one beta: pass one --betas, got {sweep.betas!r}")
    if betas and knob is TARGET and min(betas) <= 0:
        raise AlliterError("the KL-target controller multiplies beta: start it above 0 (--betas, e.g. 50)")
    if grid_generations and "max_generations" not in given:
        base = dataclasses.replace(base, max_generations=grid_generations)
    # the checks run on one trial's config, at the value where they bite: a KL target at the lowest start beta (a
    # search's first target); beta's knobs at the highest beta (all of them 0: no KL term for them to act on)
    if knob is TARGET:
        probe = dataclasses.replace(base, beta=min(betas), kl_target=settings.start[0] if settings else
                                    targets[0] if targets else base.kl_target)
    else:
        probe = dataclasses.replace(base, beta=max(settings.start if settings else betas))
    probe = probe.resolved()  # fail on a bad model folder or lr now, not inside six trials
    probe.check_knobs_act(given)
    reward, reward_file, reward_sha256 = reward_to_ship(probe.reward)
    probe = dataclasses.replace(probe, reward=reward)
    # what every trial shares: the knob's values are the plan's (betas, targets, a search's), the Tuner's to set
    base = dataclasses.replace(probe, beta=base.beta, kl_target=base.kl_target)
    cluster.check_devices(address, sweep.gpus_per_trial, sweep.cpus_per_trial, base.device)
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
        cluster.check_address(address)
    trackers = _trackers(sweep, name)
    if any(trackers.values()) and "report_seconds" in given:
        raise InactiveFlag("--report-seconds", "--report-seconds does nothing with a tracker: every group is reported "
                           "to it; leave it out")
    if preflight_model:
        preflight.run_preflight(probe)  # what every trial would find inside Ray, found here, in a few seconds
    # a tracker shows every group: each is reported
    report_seconds = 0.0 if any(trackers.values()) else sweep.report_seconds
    options = TrialOptions(sweep.cpus_per_trial, dataclasses.asdict(rule.rule()), sweep.search or sweep.stop_on_collapse,
                           sweep.seeds is not None, report_seconds, reward_sha256,
                           None if base.prompts is None else text_sha256(base.prompts))
    return Plan(sweep, base, knob, rule, seeds, betas, settings, storage, name, exp_path, address, options, snapshots,
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
    name = sweep.name or newest_sweep(storage, resumable=True)
    if not name:
        raise AlliterError(f"--resume: no sweep to resume under {storage} (pass --name of an existing sweep)")
    exp_path = store.join(storage, name)
    stored = tune_trials(exp_path)
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
        cluster.check_devices(address, sweep.gpus_per_trial, sweep.cpus_per_trial, base.device)
        if address:
            cluster.check_address(address)
        preflight.run_preflight(base)
    settings = SearchSettings(**search["settings"]) if search else None
    # its trials say what it varies (sweep.json records it only at a driver's end)
    knob = KNOBS[settings.knob] if settings else TARGET if any(c.get("kl_target") is not None for c in configs) else BETA
    betas = sorted({float(c["beta"]) for c in configs}) if search is None or knob is TARGET else []
    targets = sorted({float(c["kl_target"]) for c in configs if c.get("kl_target") is not None}) if search is None else []
    seeds = sorted({int(c["seed"]) for c in configs})
    rule = CollapseRule(**options.rule)
    sweep = dataclasses.replace(sweep, search=search is not None, seeds=",".join(map(str, seeds)) if options.seed_in_name else None)
    return Plan(sweep, base, knob, rule, seeds, betas, settings, storage, name, exp_path, address, options, stored=stored,
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

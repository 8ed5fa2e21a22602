"""The study in one command: the coarse grid, a fine grid placed from it, and the extended run of the fine grid's
choice to 7000 generations with seeds, with the study's recipe and with the recipe that holds; each step a sweep of
its own (`python -m alliter sweep ...`, its console and its files as ever) in one study folder, then the write-up
(alliter.study.writeup).

The study folder holds study.json (every step's command line, its status and wall time, the fine grid's placement and
the extended run's beta) and one sweep folder per step. A study interrupted anywhere is continued by `--resume`: the
finished steps are kept, an interrupted step's sweep is resumed (`--resume` of that sweep), the steps not started run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alliter.analyse.judge import Analysis, analyse
from alliter.cli import AlliterError
from alliter.knob import VALUE
from alliter.rule import FAILED
from alliter.schema import RESULTS_DIR, SWEEP_STATS_FILE
from alliter.storage import read_json, write_atomic
from alliter.sweep.console import say, say_command
from alliter.sweep.config import STUDY_STEP
from alliter.sweep.plan import check_name
from alliter.sweep.search import bracket

SWEEP = [sys.executable, "-m", "alliter", "sweep"]  # the installed package's sweep, from wherever the study runs
STUDY_FILE = "study.json"
STEPS = ("coarse", "fine", "extended", "holds")
FINE_VALUES = 8  # the fine grid: 8 betas evenly between the coarse bracket's ends (10 and 100: 20, 30, ..., 90)
# the recipe that holds (README, "Which recipe holds", bench/diversity.py's winner): AdamW with a clip; the KL-target
# controller with a short horizon, beta started and floored at half the fine grid's choice (the winner's 30, half the
# 60 the fine grid chose); the reward novel-alliteration, each sample's damped by its most over-used word
HOLDS = ["--optimizer", "adamw", "--lr", "1e-4", "--max-grad-norm", "1", "--kl-targets", "0.15", "--kl-horizon", "30",
         "--reward", "novel-alliteration", "--overuse-cap", "1.5"]
# what the later steps are checked with before the first runs (their own come from the steps before them): the
# reference study's fine grid and a beta of it
PLANNED_FINE = [float(b) for b in range(20, 100, 10)]
PLANNED_BETA = 50.0


@dataclass
class StudyConfig:
    name: str | None = None
    """The study's folder under --storage; default: study-DATE, or with --resume the newest study."""
    storage: str | None = None
    """Where the study's folder goes (a local folder); default: $ALLITER_STORAGE, else ./results."""
    seeds: int = 3
    """Seeds of the extended runs (the grids run one seed each, as the reference study did)."""
    extended_generations: int = 7000
    """Generations of the extended runs (the study's: 7000)."""
    grid_generations: int | None = None
    """Generations of the coarse and fine grids' trials; default: the grids' own (2000)."""
    resume: bool = False
    """Continue the newest (or --name's) study where it stopped."""


def fine_betas(verdicts: dict[float, bool]) -> dict[str, Any]:
    """The fine grid from the coarse grid's {beta: failed}: {lo, hi, betas, why}. The bracket is the cut between the
    highest failed and the lowest kept beta with the fewest betas on its wrong side (alliter.sweep.search.bracket),
    and the fine grid FINE_VALUES betas evenly inside it, two significant digits each. Every beta failed: the bracket
    goes to 10x the highest; none failed: from 0 to the smallest beta above 0. `why` says which, and names the betas
    on the wrong side of the cut (one seed: noise near the boundary)."""
    lo, hi, wrong = bracket(verdicts)
    if hi is None:
        hi, why = 10 * (lo or 1.0), f"every beta failed, {lo:g} the highest: the fine grid goes above it, to 10x"
    elif lo is None:
        lo, hi = 0.0, hi if hi > 0 else min((b for b in verdicts if b > 0), default=0.01)
        why = f"no beta failed where a cut can put it: the fine grid looks between 0 and {hi:g}"
    else:
        why = f"the balanced beta lies between {lo:g}, the highest beta that failed, and {hi:g}, the lowest that held"
    inside = sorted(b for b in verdicts if lo < b < hi)
    if inside:
        why = f"the balanced beta lies between {lo:g} and {hi:g}, the widest cut the coarse grid's verdicts allow"
    if wrong or inside:
        odd = [f"{_betas(wrong)} on the wrong side of that cut"] if wrong else []
        odd += [f"{_betas([b for b in inside if not verdicts[b]])} held and {_betas([b for b in inside if verdicts[b]])}"
                " failed inside it"] if inside else []
        why += f" ({'; '.join(odd)}: with one seed a beta near the boundary can go either way)"
    step = (hi - lo) / (FINE_VALUES + 1)
    values = sorted({float(f"{lo + k * step:.2g}") for k in range(1, FINE_VALUES + 1)})
    return {"lo": lo, "hi": hi, "betas": values, "why": why}


def _betas(values: list[float]) -> str:
    text = [f"{v:g}" for v in sorted(values)]
    return "beta " + text[0] if len(text) == 1 else "betas " + ", ".join(text[:-1]) + f" and {text[-1]}"


def failed_betas(result: Analysis) -> dict[float, bool]:
    """A sweep's betas and whether each failed (collapsed or degenerated, in more than the rule's share of seeds)."""
    s = result.summary
    return {float(b): v in FAILED for b, v in zip(s[VALUE], s["verdict"])
            if v not in ("dropped", "unmeasured")}


def step_flags(step: str, cfg: "StudyConfig", fine: list[float], beta: float) -> list[str]:
    """A step's sweep flags: the coarse grid; the fine grid's `fine` betas; `beta` to the extended generations with
    seeds, with the study's recipe and with the recipe that holds."""
    grid = ["--max-generations", str(cfg.grid_generations)] if cfg.grid_generations else []
    gens = ["--max-generations", str(cfg.extended_generations), "--seeds", str(cfg.seeds)]
    if step == "coarse":
        return ["--grid", "coarse", *grid]
    if step == "fine":
        return ["--betas", ",".join(f"{v:g}" for v in fine), *grid]
    if step == "extended":
        return ["--betas", f"{beta:g}", *gens]
    floor = float(f"{beta / 2:.2g}")
    return ["--betas", f"{floor:g}", "--kl-min-beta", f"{floor:g}", *HOLDS, *gens]


@dataclass
class Study:
    folder: Path
    passthrough: list[str]  # the flags every step's sweep gets (the model, its resources, ...)
    cfg: StudyConfig
    state: dict[str, Any]

    def save(self) -> None:
        write_atomic(self.folder / STUDY_FILE, json.dumps(self.state, indent=2) + "\n")

    def step_flags(self, step: str) -> list[str]:
        """A step's sweep flags, placed from the steps before it."""
        if step == "fine":
            self.state["placement"] = fine_betas(failed_betas(analyse(self.folder / "coarse")))
        fine = self.state.get("placement", {}).get("betas", [])
        return step_flags(step, self.cfg, fine, self.extended_beta() if step in ("extended", "holds") else 0.0)

    def extended_beta(self) -> float:
        """The fine grid's choice (best_beta's), else the coarse bracket's kept end; kept in study.json."""
        if "extended_beta" not in self.state:
            fine = analyse(self.folder / "fine")
            beta = fine.choice.value if fine.choice else self.state["placement"]["hi"]
            self.state["extended_beta"] = float(beta)
            self.state["extended_why"] = "the fine grid's choice" if fine.choice else \
                "no beta of the fine grid held: the coarse bracket's kept end"
        return self.state["extended_beta"]

    @property
    def resume_command(self) -> str:
        return f"alliter study --resume --name {shlex.quote(self.folder.name)} --storage {shlex.quote(str(self.folder.parent))}"

    def run(self) -> int:
        """Every step not finished, in order; stops at the first that does not finish, or at a Ctrl-C (exit 130)
        even when it came as a step ended."""
        for step in STEPS:
            record = self.state["steps"].setdefault(step, {})
            if record.get("status") == "finished":
                continue
            sweep_folder = self.folder / step
            if sweep_folder.exists():
                command = [*SWEEP, "--resume", "--name", step, "--storage", str(self.folder)]
            else:
                passthrough = self.state.get("step_passthrough", {}).get(step, self.passthrough)
                command = [*SWEEP, *self.step_flags(step), *passthrough, "--name", step, "--storage", str(self.folder)]
                record["flags"] = command[len(SWEEP):]
            record["status"] = "running"
            self.save()
            say(f"\nalliter study {self.folder.name}, step {STEPS.index(step) + 1} of {len(STEPS)} ({step}): "
                f"alliter sweep {shlex.join(command[len(SWEEP):])}")
            start = time.perf_counter()
            code, interrupted = run_step(command)
            record["wall_seconds"] = record.get("wall_seconds", 0.0) + time.perf_counter() - start
            stats = read_json(sweep_folder / SWEEP_STATS_FILE) or {}
            record["status"] = "finished" if code == 0 and stats.get("status") == "finished" else "interrupted"
            self.save()
            if interrupted:
                say_command(f"alliter study: interrupted in step {step}; continue with:", self.resume_command,
                            file=sys.stderr)
                return 130
            if record["status"] != "finished":
                say_command(f"alliter study: step {step} did not finish (exit status {code}); once its cause is fixed, "
                            "continue with:", self.resume_command, file=sys.stderr)
                return 130 if code == 130 else 1
        return 0


def run_step(command: list[str]) -> tuple[int, bool]:
    """A step's sweep in a process group of its own, a Ctrl-C (or a SIGTERM) of the study passed on to it as it came
    (Tune stops a sweep with its last save on the first Ctrl-C, without it on a second; a sweep takes one SIGTERM only,
    so the one `ray job stop` sends it and the study's are one stop): (the sweep's exit status, whether one came)."""
    child = subprocess.Popen(command, start_new_session=True, env={**os.environ, STUDY_STEP: "1"})
    interrupted = False

    def forward(signum: int, _: Any) -> None:
        nonlocal interrupted
        interrupted = True
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait(), interrupted
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def study_root(cfg: StudyConfig) -> Path:
    """The folder the study's folder goes in: --storage, else $ALLITER_STORAGE, else ./results (local only)."""
    where = cfg.storage or os.environ.get("ALLITER_STORAGE") or RESULTS_DIR
    if "://" in where:
        raise AlliterError(f"--storage {where}: a study's folder is local (its write-up is written there); pass a "
                           "folder, and give its sweeps a bucket by running them one by one (alliter sweep)")
    return Path(where).expanduser().absolute()


def new_study_folder(cfg: StudyConfig, root: Path) -> Path:
    """The new study's folder (not made yet): --name under the root, else study-DATE; one that exists is refused."""
    check_name(cfg.name)
    folder = root / (cfg.name or time.strftime("study-%Y%m%d-%H%M%S"))
    if folder.exists():
        raise AlliterError(f"{folder} exists already; pass --resume to continue it, or another --name")
    return folder


def open_study(cfg: StudyConfig, passthrough: list[str], folder: Path) -> Study:
    """A new study's folder and state, made (refused if another study made it first), or (--resume) the study in
    `folder` to continue."""
    if cfg.resume:
        state = read_json(folder / STUDY_FILE)
        if state is None:
            raise AlliterError(f"--resume: {folder} holds no study ({STUDY_FILE})")
        saved = StudyConfig(**{**state["config"], "resume": True})
        return Study(folder, state["passthrough"], saved, state)
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise AlliterError(f"{folder} exists already (another study took the name a moment ago); pass another --name")
    except OSError as err:
        raise AlliterError(f"cannot create the study's folder {folder}: {err.strerror or err}") from None
    state = {"config": dataclasses.asdict(cfg), "passthrough": passthrough, "steps": {},
             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    return Study(folder, passthrough, cfg, state)


def resumed_folder(cfg: StudyConfig, root: Path, passthrough: list[str]) -> Path:
    """The folder of the study --resume continues (--name's, else the newest under the root)."""
    if passthrough:
        raise AlliterError(f"--resume continues a study with the flags it was started with: leave out "
                           f"{' '.join(passthrough)}")
    check_name(cfg.name)
    return root / (cfg.name or _newest_study(root))


def _newest_study(root: Path) -> str:
    studies = [p for p in root.glob(f"*/{STUDY_FILE}")] if root.is_dir() else []
    if not studies:
        raise AlliterError(f"--resume: no study under {root} (pass --name of one)")
    return max(studies, key=lambda p: p.stat().st_mtime).parent.name


def wall_text(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s" if not math.isnan(seconds) else "-"

"""A sweep interrupted with Ctrl-C and resumed with the command it printed, once for the module: every generation
once, the tracker's runs go on, and a finished sweep stays as it was, taking from a resume only what can change."""

from __future__ import annotations

import importlib.util
import json
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import SWEEP, check_mlflow_runs, digest, generation_indices, printed_command, sweep, sweep_main

pytestmark = pytest.mark.slow

GENERATIONS = 100
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


@dataclass
class Interrupted:
    exp: Path
    mlflow: str | None  # the sweep's MLflow store (sqlite:///), where the extra is installed
    code: int  # the interrupted driver's exit status, its output, and its lock after it
    out: str
    err: str
    lock_left: bool
    resumed: subprocess.CompletedProcess  # the printed resume command, run as printed


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_gpt_neo) -> Interrupted:
    """Three betas, two trial slots: the driver gets Ctrl-C once two trials have their second checkpoint (the third
    not started), and the resume command it printed is run."""
    tmp_path = tmp_path_factory.mktemp("resume")
    mlflow = f"sqlite:///{tmp_path / 'mlflow.db'}" if HAS_MLFLOW else None
    trackers = ["--mlflow", mlflow, "--mlflow-experiment", "mine"] if mlflow else []
    driver = subprocess.Popen([*SWEEP, "--betas", "0,1,2", "--max-generations", str(GENERATIONS), "--model",
                               str(tiny_gpt_neo), "--checkpoint-every", "2", "--eval-samples", "10", *trackers,
                               "--storage", str(tmp_path), "--name", "cc"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exp = tmp_path / "cc"
    deadline = time.time() + 180
    while time.time() < deadline and not list(exp.glob("beta=*/checkpoint_000001")):
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=120)
    lock_left = (exp / "driver.lock").exists()
    hint = next((line for line in err.splitlines() if line.startswith("interrupted with ")), "")
    assert hint.endswith("continue it with:"), err[-2000:]
    resumed = sweep(*shlex.split(printed_command(err, "continue it with:"))[2:])
    return Interrupted(exp, mlflow, driver.returncode, out, err, lock_left, resumed)


def test_ctrl_c_says_interrupted_and_the_printed_resume_finishes_every_generation_once(interrupted):
    assert interrupted.code == 130, interrupted.err[-3000:]
    assert "next:" not in interrupted.out
    assert not interrupted.lock_left  # the lock went with the driver
    assert interrupted.resumed.returncode == 0, interrupted.resumed.stderr[-3000:]
    trials = list(interrupted.exp.glob("beta=*"))
    assert len(trials) == 3
    for trial in trials:
        assert generation_indices(trial) == list(range(GENERATIONS))
    stats = json.loads((interrupted.exp / "sweep.json").read_text())
    assert stats["status"] == "finished" and stats["earlier"][-1]["status"] == "interrupted"


@pytest.mark.skipif(not HAS_MLFLOW, reason="the mlflow extra (pip install \"alliter[mlflow]\") is not installed")
def test_the_resumed_sweep_goes_on_in_the_same_mlflow_runs(interrupted):
    """No server: a sqlite:/// store. Each trial's run holds each group once, those logged before the Ctrl-C and
    those after the resume, and the trial that had not started has a run of its own."""
    assert interrupted.resumed.returncode == 0, interrupted.resumed.stderr[-3000:]
    check_mlflow_runs(interrupted.mlflow, interrupted.exp, "mine")


def test_a_resume_takes_only_what_can_change_and_a_finished_sweep_stays_as_it_was(interrupted):
    exp = interrupted.exp
    before = {p.name: digest(p) for p in exp.iterdir() if p.is_file()}
    res = sweep_main("--resume", "--storage", str(exp.parent), "--name", exp.name, "--max-generations", "40")
    assert res.returncode == 2 and "--max-generations cannot change" in res.stderr and res.stderr.count("\n") == 1
    res = sweep("--resume", "--storage", str(exp.parent), "--name", exp.name)
    assert res.returncode == 0 and "nothing to resume, every trial finished" in res.stdout, res.stderr[-2000:]
    assert {p.name: digest(p) for p in exp.iterdir() if p.is_file()} == before  # sweep.json too

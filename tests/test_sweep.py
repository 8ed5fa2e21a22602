"""The Ray Tune sweep, end to end on a real local Ray: trials, faults, resume, several nodes, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alliter.sweep import CollapseStopper
from conftest import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, str(ROOT / "tune_jobs" / "sweep.py")]

pytestmark = pytest.mark.slow


def sweep(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SWEEP, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def trial_states(exp: Path) -> dict[float, dict]:
    """beta -> {status, num_failures, generations}, from Tune's own experiment state."""
    states = {}
    for f in sorted(exp.glob("experiment_state-*.json")):
        for trial, runtime in json.loads(f.read_text())["trial_data"]:
            trial, runtime = json.loads(trial), json.loads(runtime)
            states[trial["config"]["beta"]] = {
                "status": trial["status"],
                "num_failures": runtime["num_failures"],
                "generations": (runtime.get("last_result") or {}).get("generations"),
            }
    return states


def trial_dir(exp: Path, beta: str) -> Path:
    (found,) = exp.glob(f"beta={beta}_*")
    return found


def generation_indices(trial: Path) -> list[int]:
    return [json.loads(line)["generation"] for line in (trial / "generations.jsonl").read_text().splitlines()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_beta_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    storage = tmp_path_factory.mktemp("results")
    res = sweep("--betas", "0,10", "--max-generations", "30", "--checkpoint-every", "2",
                "--storage", str(storage), "--name", "two")
    return storage / "two", res


def test_two_beta_sweep_terminates_with_metrics_generations_events_and_checkpoints(two_beta_sweep):
    exp, res = two_beta_sweep
    assert res.returncode == 0, res.stderr[-3000:]
    assert {b: s["status"] for b, s in trial_states(exp).items()} == {0.0: "TERMINATED", 10.0: "TERMINATED"}
    for beta in ("0", "10"):
        trial = trial_dir(exp, beta)
        results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["generations"] for r in results] == [10, 20, 30]
        assert METRIC_NAMES <= set(results[0]) and results[0]["beta"] == float(beta)
        assert generation_indices(trial) == list(range(30))
        assert len((trial / "metrics.jsonl").read_text().splitlines()) == 3
        assert list(trial.glob("events.out.tfevents.*"))
        assert list(trial.glob("checkpoint_*/checkpoint.pt"))
    assert f"tensorboard --logdir {exp}" in res.stdout
    assert f"python analysis/best_beta.py {exp}" in res.stdout
    assert "raw_reward" in res.stdout and "unique" in res.stdout  # the progress table's columns


def test_killed_trial_worker_is_restarted_from_its_checkpoint(tmp_path):
    # the trial's process dies (os._exit) after group 3; its last checkpoint is at group 2
    res = sweep("--betas", "1", "--max-generations", "50", "--checkpoint-every", "2",
                "--storage", str(tmp_path), "--name", "fault", env={"ALLITER_TEST_CRASH_AFTER_GROUPS": "3"})
    assert res.returncode == 0, res.stderr[-3000:]
    exp = tmp_path / "fault"
    state = trial_states(exp)[1.0]
    assert state["status"] == "TERMINATED" and state["num_failures"] == 1 and state["generations"] == 50
    trial = trial_dir(exp, "1")
    assert generation_indices(trial) == list(range(50))  # every generation exactly once
    pids = {json.loads(line)["pid"] for line in (trial / "result.json").read_text().splitlines()}
    assert len(pids) == 2  # a second worker process finished the trial


def test_interrupted_driver_resumes_without_rerunning_finished_trials(tmp_path):
    # a trial takes every CPU of the local Ray, so the two run one after the other
    args = ["--betas", "0,10", "--max-generations", "60", "--checkpoint-every", "2", "--cpus-per-trial", str(os.cpu_count()),
            "--storage", str(tmp_path), "--name", "resume"]
    exp = tmp_path / "resume"
    driver = subprocess.Popen([*SWEEP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            states = trial_states(exp) if exp.exists() else {}
            if any(s["status"] == "TERMINATED" for s in states.values()):
                break
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, as a lost machine would
        driver.wait()
    states = trial_states(exp)
    (done,) = [b for b, s in states.items() if s["status"] == "TERMINATED"]
    unfinished = ({0.0, 10.0} - {done}).pop()
    assert states[unfinished]["status"] != "TERMINATED"
    finished_dir = trial_dir(exp, f"{done:g}")
    before = {name: digest(finished_dir / name) for name in ("generations.jsonl", "metrics.jsonl", "result.json")}

    res = sweep("--resume", "--storage", str(tmp_path), "--name", "resume")
    assert res.returncode == 0, res.stderr[-3000:]
    states = trial_states(exp)
    assert {s["status"] for s in states.values()} == {"TERMINATED"}
    assert {name: digest(finished_dir / name) for name in before} == before  # not run again
    assert generation_indices(trial_dir(exp, f"{unfinished:g}")) == list(range(60))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_spreads_over_two_ray_nodes(tmp_path):
    port = _free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    # a local ray.init() leaves a token in ~/.ray that a head started later enables, and `ray start
    # --address` does not send: on loopback, run this two-node cluster without token auth
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    head = ["start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=1",
            "--include-dashboard=false", "--disable-usage-stats"]
    worker = ["start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=1"]
    try:
        subprocess.run([*ray, *head], check=True, capture_output=True, env=env, timeout=120)
        subprocess.run([*ray, *worker], check=True, capture_output=True, env=env, timeout=120)
        # one (stand-in) GPU per node and one per trial: the two trials must land on different nodes
        res = sweep("--betas", "0,10", "--max-generations", "20", "--address", f"127.0.0.1:{port}",
                    "--storage", str(tmp_path), "--name", "nodes", env=env)
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    exp = tmp_path / "nodes"
    assert {s["status"] for s in trial_states(exp).values()} == {"TERMINATED"}
    nodes = set()
    for beta in ("0", "10"):
        trial = trial_dir(exp, beta)  # read through the storage path the driver sees
        assert generation_indices(trial) == list(range(20))
        assert list(trial.glob("events.out.tfevents.*"))
        nodes.add(json.loads((trial / "node.json").read_text())["node_id"])
    assert len(nodes) == 2


def test_stop_on_collapse_ends_the_trial_and_records_why(tmp_path):
    # a threshold of 1.0 counts every group as collapsed, so the trial stops after the window
    res = sweep("--betas", "0", "--max-generations", "200", "--stop-on-collapse", "--collapse-threshold", "1.0",
                "--collapse-window", "3", "--storage", str(tmp_path), "--name", "stop")
    assert res.returncode == 0, res.stderr[-3000:]
    state = trial_states(tmp_path / "stop")[0.0]
    assert state["status"] == "TERMINATED" and state["generations"] == 30
    reason = (trial_dir(tmp_path / "stop", "0") / "stop_reason.txt").read_text()
    assert "collapsed" in reason and "30 generations" in reason


def test_collapse_stopper_needs_a_full_window_in_a_row():
    stop = CollapseStopper(threshold=0.2, window=3)
    seq = [0.1, 0.1, 0.5, 0.1, 0.2, 0.1]
    assert [stop("t", {"unique_fraction": u, "generations": 10 * i}) for i, u in enumerate(seq)] == [
        False, False, False, False, False, True]
    assert "t" in stop.reasons and not stop.stop_all()


def sweep_main(*args: str) -> subprocess.CompletedProcess:
    """tune_jobs/sweep.py's main() in this process: these errors come before Ray starts."""
    spec = importlib.util.spec_from_file_location("sweep_cli", SWEEP[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = module.main(list(args))
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "medium"], "unknown grid 'medium'; known grids: coarse, fine, extended"),
        (["--betas", "5,-1"], "beta must be a finite number >= 0"),
        (["--betas", "1,nan"], "beta must be a finite number >= 0"),
        (["--resume"], "no sweep to resume"),
        (["--address", "127.0.0.1:9"], "cannot reach a Ray cluster at '127.0.0.1:9'"),
        (["--model", "/no/such/model"], "model folder '/no/such/model' does not exist; pass --model PATH"),
    ],
)
def test_bad_input_is_one_line_and_deletes_nothing(tmp_path, args, message):
    (tmp_path / "keep.txt").write_text("results of another day")
    res = sweep_main(*args, "--storage", str(tmp_path))
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_best_beta_reads_a_real_sweep(two_beta_sweep, tmp_path):
    """analysis/best_beta.py end to end on the folder a real sweep wrote."""
    exp, res = two_beta_sweep
    assert res.returncode == 0
    run = subprocess.run([sys.executable, str(ROOT / "analysis" / "best_beta.py"), str(exp), "--out", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    choice = json.loads(run.stdout)
    assert choice["choice"]["beta"] in (0.0, 10.0) and sorted(r["beta"] for r in choice["betas"]) == [0.0, 10.0]
    for name in ("summary.csv", "report.md", "report.html", "raw_reward.png", "kl_penalty.png", "diversity.png", "pareto.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "verdict" in run.stderr  # the table

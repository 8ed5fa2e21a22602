"""The Ray Tune sweep, end to end on a real local Ray: trials, faults, resume, several nodes, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from alliter.schema import tune_trials
from alliter.rule import CollapseRule
from alliter.train.evaluate import evaluation_points
from helpers import (
    METRIC_NAMES, ONE_AT_A_TIME, SWEEP, best_beta as run_best_beta, digest, generation_indices, local_gpus,
    read_jsonl, result_rows, sweep, sweep_main, trial_dir, trial_states, tune_betas, unfolded,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_beta_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    storage = tmp_path_factory.mktemp("results")
    res = sweep("--betas", "0,10", "--max-generations", "30", "--checkpoint-every", "2", *ONE_AT_A_TIME,
                "--storage", str(storage), "--name", "two")
    return storage / "two", res


def test_two_beta_sweep_terminates_with_metrics_generations_events_and_checkpoints(two_beta_sweep):
    exp, res = two_beta_sweep
    assert res.returncode == 0, res.stderr[-3000:]
    assert {b: s["status"] for b, s in trial_states(exp).items()} == {0.0: "TERMINATED", 10.0: "TERMINATED"}
    for beta in ("0", "10"):
        trial = trial_dir(exp, beta)
        results = result_rows(trial)
        assert [r["generations"] for r in results] == [10, 20, 30]
        assert METRIC_NAMES <= set(results[0]) and results[0]["beta"] == float(beta)
        assert {"verdict", "kept", "diversity_kept", "fluency_gap", "point_alliteration"} <= set(results[-1])
        assert generation_indices(trial) == list(range(30))
        assert [p["generations"] for p in evaluation_points(trial / "evaluations.jsonl", 10)] == [0, 30]
        assert len((trial / "metrics.jsonl").read_text().splitlines()) == 3
        assert len(list(trial.glob("events.out.tfevents.*"))) == 1  # the trainer's own; none of Tune's beside it
        assert list(trial.glob("checkpoint_*/checkpoint.pt"))
    printed = res.stdout.replace(" \\\n", " ")  # a command folded to the console's width, as a shell joins it
    assert f"tensorboard --logdir {exp}" in " ".join(printed.split())
    assert f"alliter best-beta {exp}" in " ".join(printed.split())
    # the console: a header and a line per trial, and every line 100 columns at most, its own and Ray's (Ray's INFO
    # lines off; tests/test_console.py has the rest)
    header = next(line for line in res.stdout.splitlines() if line.startswith("beta") and "alliteration" in line)
    assert header.split() == ["beta", "generations", "state", "point", "alliteration", "distinct-2", "fluency", "verdict"]
    assert all(len(line) <= 100 for line in res.stdout.splitlines()), max(res.stdout.splitlines(), key=len)
    # --concurrency 1: one trial after the other, in one slot
    assert "sweep efficiency: " in res.stdout and json.loads((exp / "sweep.json").read_text())["slots"] == 1
    first, second = sorted(([r["timestamp"] for r in result_rows(trial_dir(exp, b))] for b in ("0", "10")))
    assert first[-1] <= second[0]
    assert "evaluations: " in res.stdout and json.loads((exp / "sweep.json").read_text())["eval_seconds"] > 0


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, tiny_gpt_neo) -> tuple[Path, subprocess.CompletedProcess]:
    """A sweep whose workers die, a checkpoint every 5 groups: beta 1's at group 3, before the first checkpoint;
    beta 2's at group 8, between two; beta 3's at group 10, instead of reporting the checkpoint due then (a worker
    killed during a checkpoint); beta 4's after group 8, losing its working folder as a lost node would."""
    tmp_path = tmp_path_factory.mktemp("faulty")
    res = sweep("--betas", "1,2,3,4", "--max-generations", "150", "--checkpoint-every", "5", "--snapshot-every", "40",
                "--eval-samples", "10", "--report-seconds", "0", "--model", str(tiny_gpt_neo), *ONE_AT_A_TIME,
                "--storage", str(tmp_path), "--name", "die", fault="die:1=3,2=8,3=10;crash:4=8")
    return tmp_path / "die", res


def test_killed_trial_worker_is_restarted_from_its_checkpoint(faulty):
    exp, res = faulty
    assert res.returncode == 0, res.stderr[-3000:]
    state = trial_states(exp)[4.0]
    # a second worker finished it (result.json cannot tell: the restarted worker's upload replaces the lost one's)
    assert state["status"] == "TERMINATED" and state["num_failures"] == 1 and state["generations"] == 150
    trial = trial_dir(exp, "4")
    assert generation_indices(trial) == list(range(150))  # every generation exactly once
    # every snapshot once: the one before the checkpoint was synced with it, the restarted worker wrote the rest
    assert sorted(p.name for p in (trial / "snapshots").glob("*.safetensors")) == [
        f"generations={g:06d}.safetensors" for g in (40, 80, 120, 150)]
    assert any("snapshots: every 40 generations, 4 per trial x 122.6 KB (float32) = 490.5 KB per trial, 2.0 MB for 4 "
               "trials" in line for line in unfolded(res.stdout))


def test_a_retried_trial_has_every_generation_once(faulty):
    """Tune retries each dead worker's trial from the last checkpoint it has, or from scratch, and every trial's
    files hold every generation, group, evaluation and TensorBoard step exactly once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp, res = faulty
    assert res.returncode == 0, res.stderr[-3000:]
    for beta, restored_from in ((1.0, None), (2.0, 5), (3.0, 5)):
        state = trial_states(exp)[beta]
        assert state["status"] == "TERMINATED" and state["num_failures"] == 1
        trial = trial_dir(exp, f"{beta:g}")
        assert generation_indices(trial) == list(range(150))
        assert [m["group"] for m in read_jsonl(trial / "metrics.jsonl")] == list(range(15))
        assert [p["generations"] for p in evaluation_points(trial / "evaluations.jsonl", 10)] == [0, 40, 80, 120, 150]
        scalars = EventAccumulator(str(trial)).Reload().Scalars("raw_reward_mean")
        assert [e.step for e in scalars] == list(range(10, 151, 10))  # TensorBoard shows each group once
        # from scratch, nothing of the dead attempt's is left; from a checkpoint, its events up to there stay in its file
        assert len(list(trial.glob("events.out.tfevents.*"))) == (1 if restored_from is None else 2)


def test_stop_on_collapse_ends_the_trial_where_the_rule_says(tmp_path):
    # a share of 1: the first evaluation (every 20 generations) less diverse than generation 0's is a collapse
    res = sweep("--betas", "0", "--max-generations", "200", "--stop-on-collapse", "--diversity-share", "1.0",
                "--snapshot-every", "20", "--eval-samples", "20", "--storage", str(tmp_path), "--name", "stop")
    assert res.returncode == 0, res.stderr[-3000:]
    trial = trial_dir(tmp_path / "stop", "0")
    rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    judged = CollapseRule(diversity_share=1.0).judge_trial(evaluation_points(trial / "evaluations.jsonl", 10))
    expected = judged.failed_at
    assert expected is not None and rows[-1]["generations"] == expected < 200  # stopped at the failing point
    assert judged.generations[-1] == expected  # and evaluated nothing after it
    state = trial_states(tmp_path / "stop")[0.0]
    assert state["status"] == "TERMINATED" and state["generations"] == expected
    stop = json.loads((trial / "stop.json").read_text())
    assert stop["stopped"] == "failed" and stop["generations"] == expected
    assert stop["why"].startswith(f"collapsed at {expected} generations: distinct_2 under 100%"), stop


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "medium"], "unknown grid 'medium'; known grids: coarse, fine, extended"),
        (["--betas", "5,-1"], "beta must be a finite number >= 0"),
        (["--betas", "1,nan"], "beta must be a finite number >= 0"),
        (["--resume"], "no sweep to resume"),
        (["--address", "127.0.0.1:9"], "cannot reach a Ray cluster at '127.0.0.1:9'"),
        (["--model", "/no/such/model"], "model folder '/no/such/model' does not exist; pass --model PATH"),
        (["--search", "--grid", "fine"], "--search chooses its own betas: leave out --grid and --betas"),
        (["--search", "--betas", "1,2"], "--search chooses its own betas: leave out --grid and --betas"),
        (["--search", "--budget", "0"], "search budget must be at least 1 beta, got 0"),
        (["--search", "--precision", "1"], "search precision is a ratio and must be > 1"),
        (["--search", "--precision", "0.5"], "search precision is a ratio and must be > 1"),
        (["--search", "--search-start", "0,10"], "start betas must be finite and > 0"),
        (["--seeds", "0"], "--seeds N runs N seeds and needs N >= 1"),
        (["--seeds", "-2"], "--seeds N runs N seeds and needs N >= 1"),
        (["--seeds", "0,1.5"], "--seeds takes a count or integer seeds"),
        (["--seeds", "0,-1"], "seeds must be integers >= 0"),
        (["--seeds", "1,2,1"], "--seeds lists a seed twice"),
        (["--diversity-measure", "self_bleu"], "diversity_measure must be one of distinct_1, distinct_2, unique_fraction"),
        (["--gpus-per-trial", "-1"], "gpus_per_trial must be a finite number >= 0, got -1"),
        (["--gpus-per-trial", "1.5"], "gpus_per_trial above 1 must be a whole number"),
        (["--cpus-per-trial", "0"], "cpus_per_trial must be a finite number > 0, got 0"),
        # no --address: the trials would run on a Ray started on this machine, which has no GPU
        pytest.param(["--gpus-per-trial", "1"], "--gpus-per-trial 1, but this machine has 0 GPU(s)",
                     marks=pytest.mark.skipif(local_gpus() > 0, reason="this machine has a GPU")),
    ],
)
def test_bad_input_is_one_line_and_deletes_nothing(tmp_path, args, message):
    (tmp_path / "keep.txt").write_text("results of another day")
    res = sweep_main(*args, "--storage", str(tmp_path))
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("make", ["under_a_file", "read_only_folder"])
def test_unwritable_storage_is_one_line_and_deletes_nothing(tmp_path, make):
    (tmp_path / "keep.txt").write_text("results of another day")
    if make == "under_a_file":
        storage = tmp_path / "keep.txt" / "results"
        message = "keep.txt is not a folder"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        storage = tmp_path / "locked" / "results"
        storage.parent.mkdir(mode=0o555)
        message = "cannot write in"
    res = sweep_main("--betas", "1", "--storage", str(storage))
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["keep.txt"] + (["locked"] if make != "under_a_file" else []))
    assert (tmp_path / "keep.txt").read_text() == "results of another day"


def test_best_beta_reads_a_real_sweep(two_beta_sweep, tmp_path):
    """analysis/best_beta.py end to end on the folder a real sweep wrote."""
    exp, res = two_beta_sweep
    assert res.returncode == 0
    run = run_best_beta(str(exp), "--out", str(tmp_path), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    choice = json.loads(run.stdout)
    assert choice["choice"]["beta"] in (0.0, 10.0) and sorted(r["beta"] for r in choice["betas"]) == [0.0, 10.0]
    assert all(r["source"] == "evaluation" for r in choice["betas"])  # the trials evaluated themselves
    for name in ("summary.csv", "report.md", "report.html", "evaluations.png", "raw_reward.png", "kl_penalty.png",
                 "diversity.png", "pareto.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "verdict" in run.stderr  # the table


def best_beta(exp: Path, out: Path) -> tuple[dict, subprocess.CompletedProcess]:
    run = run_best_beta(str(exp), "--out", str(out), "--json", "--window", "20")
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout), run


SEARCH_GENERATIONS = 30


@pytest.fixture(scope="module")
def interrupted_search(tiny_gpt_neo, tmp_path_factory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess, Path]:
    """A search of two betas with two seeds each, one trial at a time, through a real local Ray: its driver is killed
    (with the Ray it started) once a trial has finished, and `--resume` (no --name: the newest sweep) goes on from
    the searcher's saved state. (the sweep, digests of the trials finished before the kill, the resume, its log)."""
    tmp_path = tmp_path_factory.mktemp("search")
    args = ["--search", "--search-start", "1,100", "--budget", "2", "--seeds", "2", "--concurrency", "1",
            "--max-generations", str(SEARCH_GENERATIONS), "--window", "20", "--checkpoint-every", "2",
            "--model", str(tiny_gpt_neo), "--storage", str(tmp_path)]
    exp = tmp_path / "resume"
    log = tmp_path / "driver.log"  # shown if an assertion fails: where the kill fell
    with log.open("w") as out:
        driver = subprocess.Popen([*SWEEP, *args, "--name", "resume"], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not (exp.exists() and "TERMINATED" in str(
                [s["status"] for s in trial_states(exp).values()])):
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait()
    finished = {t.name: digest(t / "generations.jsonl") for t in exp.glob("beta=*")
                if (t / "generations.jsonl").exists() and len(generation_indices(t)) == SEARCH_GENERATIONS}
    assert finished, log.read_text()[-3000:]
    return exp, finished, sweep("--resume", "--storage", str(tmp_path)), log


def test_interrupted_search_resumes_with_its_searcher_state(interrupted_search, tmp_path):
    """No beta runs twice, none is lost, a finished trial is not run again, the interrupted one goes on from its
    checkpoint."""
    exp, finished, res, log = interrupted_search
    try:
        assert res.returncode == 0
        path = json.loads((exp / "search.json").read_text())
        suggested = [s["beta"] for s in path["steps"] if s["event"] == "suggest"]
        assert path["finished"] and suggested == [100.0, 1.0]
        assert sorted(tune_betas(exp)) == [(1.0, 0), (1.0, 1), (100.0, 0), (100.0, 1)]  # one trial per seed, once
        state = json.loads(sorted(exp.glob("experiment_state-*.json"))[-1].read_text())
        assert {json.loads(t)["status"] for t, _ in state["trial_data"]} == {"TERMINATED"}
        assert {name: digest(exp / name / "generations.jsonl") for name in finished} == finished  # not run again
        for trial in (exp / t["dir"] for t in tune_trials(exp)):
            assert generation_indices(trial) == list(range(SEARCH_GENERATIONS))  # every generation once
        choice, _ = best_beta(exp, tmp_path / "out")
        assert sorted(b["beta"] for b in choice["betas"]) == sorted(suggested)  # a trial lost with the driver is left out
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- killed driver:\n{log.read_text()[-4000:]}\n--- resume:\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}") from e


def test_a_search_with_seeds_is_read_by_best_beta(interrupted_search, tmp_path):
    """The trials are the searcher's, one per seed, their folders named by it; their verdicts are best_beta's, and
    the report tells the search's path."""
    exp, _, res, _ = interrupted_search
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p.name.split("_")[1] for p in exp.glob("beta=*")} == {"seed=0", "seed=1"}  # folder names show the seed
    path = json.loads((exp / "search.json").read_text())
    outcomes = {(s["beta"], s["seed"]): s for s in path["steps"] if s["event"] == "outcome"}
    choice, run = best_beta(exp, tmp_path / "out")
    for row in choice["betas"]:  # a beta collapsed in any seed is collapsed, for the search as for best_beta
        searched = any(outcomes[(row["beta"], seed)]["verdict"] != "kept" for seed in (0, 1))
        assert (row["verdict"] in ("collapsed", "degenerate")) == searched, row
        assert row["trials"] == 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## The search" in report and "start: a wide, log-spaced set" in report
    header = next(line for line in run.stderr.splitlines() if line.startswith("beta "))
    assert header.split()[:2] == ["beta", "seeds"]  # the table's seeds column

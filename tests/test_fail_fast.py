"""A sweep that cannot work says so at once: what only a trial would find is found before Ray starts, in one line;
an error a retry would meet again is not retried; a sweep that did not finish never exits 0; best_beta, train and
sample keep the same standard."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alliter.analyse.command import main as best_beta_main
from alliter.cli import AlliterError
from alliter.sample import main as sample_main
from alliter.storage import DriverLock
from alliter.testing import build_tiny_gpt_neo
from alliter.train.__main__ import main as train_main
from helpers import (
    SWEEP, K, digest, generation_indices, local_gpus, sweep, sweep_main, trial_states, varied_groups, write_trial,
)


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, bundled_model) -> dict[str, Path]:
    """Model folders a careless user passes: garbage config, an empty folder, empty weights, no tokenizer."""
    root = tmp_path_factory.mktemp("broken")
    garbage = root / "garbage"
    shutil.copytree(bundled_model, garbage)
    (garbage / "config.json").write_text("{not json")
    (root / "empty").mkdir()
    weightless = root / "weightless"
    shutil.copytree(bundled_model, weightless)
    (weightless / "model.safetensors").write_bytes(b"")
    untokenized = root / "untokenized"
    untokenized.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bundled_model / name, untokenized / name)
    return {"garbage": garbage, "empty": root / "empty", "weightless": weightless, "untokenized": untokenized}


CASES = {
    "garbage config": (["--model", "{garbage}"], "cannot read the config of model"),
    "no tokenizer folder": (["--tokenizer", "/nonexistent"], "tokenizer folder '/nonexistent' does not exist"),
    "prompt longer than max_length": (["--max-length", "3"], "the prompt is 5 tokens, max_length 3 leaves none"),
    "max_length past the positions": (["--model", "{tiny}", "--max-length", "500"],
                                      "max_length 500 exceeds the 128 positions of"),
    "empty prompt": (["--prompt", ""], "the prompt is empty; pass --prompt TEXT"),
    "cuda without a GPU": (["--device", "cuda"], "--device cuda, but the trials get no GPU"),
    "empty folder": (["--model", "{empty}"], "has no config.json: not a saved model"),
    "empty weights": (["--model", "{weightless}"], "model.safetensors is not a readable safetensors file"),
    "folder without a tokenizer": (["--model", "{untokenized}"], "has no tokenizer (tokenizer.json or"),
    "empty --betas": (["--betas", ""], "--betas takes numbers separated by commas, got '': no beta to sweep"),
    "a beta twice": (["--betas", "1,1"], "--betas lists 1 twice"),
    "a beta twice, written two ways": (["--betas", "1,2,1.0"], "for several trials of a beta pass --seeds N"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_what_a_trial_would_find_is_one_line_before_ray_starts(case, tmp_path, broken_models, tiny_gpt_neo):
    if case == "cuda without a GPU" and local_gpus() > 0:
        pytest.skip("this machine has a GPU")
    args, message = CASES[case]
    paths = {**{k: str(v) for k, v in broken_models.items()}, "tiny": str(tiny_gpt_neo)}
    args = [a.format(**paths) for a in args]
    (tmp_path / "keep.txt").write_text("results of another day")
    res = sweep_main(*args, "--storage", str(tmp_path), *([] if "--betas" in args else ["--betas", "1"]))
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]  # nothing started, nothing written


def test_the_command_line_driver_checks_in_a_few_seconds_without_torch(tmp_path, broken_models):
    """The real command: the check runs in a subprocess (the driver never imports torch), in one line."""
    start = time.perf_counter()
    res = sweep("--model", str(broken_models["garbage"]), "--storage", str(tmp_path), timeout=120)
    seconds = time.perf_counter() - start
    assert res.returncode == 2 and res.stderr.startswith("error: cannot read the config of model") and \
        res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr and not list(tmp_path.iterdir())
    assert seconds < 60  # it was 109 to 169 s, four tracebacks per trial, and exit 0


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    """A tiny GPT-Neo whose final norm holds a NaN: everything loads, and the first group's loss is NaN."""
    from transformers import AutoModelForCausalLM

    path = build_tiny_gpt_neo(tmp_path_factory.mktemp("nan"))
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = float("nan")
    model.save_pretrained(path)
    return path


@pytest.mark.slow
def test_an_error_a_retry_meets_again_is_not_retried_and_the_sweep_exits_non_zero(tmp_path, nan_model):
    res = sweep("--betas", "1,2", "--max-generations", "20", "--model", str(nan_model), "--storage", str(tmp_path),
                "--name", "nan")
    assert res.returncode == 1, res.stderr[-3000:]
    states = trial_states(tmp_path / "nan")
    assert {s["status"] for s in states.values()} == {"ERROR"}
    assert {s["num_failures"] for s in states.values()} == {1}  # not retried (--max-failures 3 by default)
    causes = [line for line in res.stderr.splitlines() if line.startswith("  ERROR in beta=")]
    assert len(causes) == 2 and all("non-finite loss nan" in line for line in causes), res.stderr[-3000:]
    hint = next(line for line in res.stderr.splitlines() if "trial(s) errored" in line)
    assert hint.startswith("2 trial(s) errored (above)") and "next:" not in res.stdout
    command = hint.split("run them again with: ")[1]
    # the command that the Ctrl-C test below runs as printed
    assert command == f"python tune_jobs/sweep.py --resume --name nan --storage {tmp_path}"


@pytest.mark.slow
def test_ctrl_c_says_interrupted_and_the_printed_resume_finishes_every_generation_once(tmp_path, tiny_gpt_neo):
    driver = subprocess.Popen([*SWEEP, "--betas", "0,1,2", "--max-generations", "300", "--model", str(tiny_gpt_neo),
                               "--checkpoint-every", "2", "--storage", str(tmp_path), "--name", "cc"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exp = tmp_path / "cc"
    deadline = time.time() + 180
    while time.time() < deadline and not list(exp.glob("beta=*/checkpoint_000001")):
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-3000:]
    assert "next:" not in out
    hint = next((line for line in err.splitlines() if line.startswith("interrupted with ")), "")
    assert "continue it with: " in hint, err[-2000:]
    assert (exp / "driver.lock").exists() is False  # the lock went with the driver
    res = sweep(*shlex.split(hint.split("continue it with: ")[1])[2:])
    assert res.returncode == 0, res.stderr[-3000:]
    for trial in exp.glob("beta=*"):
        assert generation_indices(trial) == list(range(300))
    stats = json.loads((exp / "sweep.json").read_text())
    assert stats["status"] == "finished" and stats["earlier"][-1]["status"] == "interrupted"


@pytest.mark.slow
def test_a_resume_takes_only_what_can_change_and_a_finished_sweep_stays_as_it_was(tmp_path, tiny_gpt_neo):
    assert sweep("--betas", "1", "--max-generations", "10", "--model", str(tiny_gpt_neo), "--storage", str(tmp_path),
                 "--name", "done").returncode == 0
    before = {p.name: digest(p) for p in (tmp_path / "done").iterdir() if p.is_file()}
    res = sweep_main("--resume", "--storage", str(tmp_path), "--name", "done", "--max-generations", "40")
    assert res.returncode == 2 and "--max-generations cannot change" in res.stderr and res.stderr.count("\n") == 1
    res = sweep("--resume", "--storage", str(tmp_path), "--name", "done")
    assert res.returncode == 0 and "nothing to resume, every trial finished" in res.stdout, res.stderr[-2000:]
    assert {p.name: digest(p) for p in (tmp_path / "done").iterdir() if p.is_file()} == before  # sweep.json too


def test_a_second_driver_is_refused_and_a_dead_drivers_lock_is_taken_over(tmp_path):
    exp = str(tmp_path / "sweep")
    with DriverLock(exp):
        lock = json.loads((tmp_path / "sweep" / "driver.lock").read_text())
        assert lock["pid"] == os.getpid()
    assert not (tmp_path / "sweep").exists()  # a sweep that never started leaves no folder
    (tmp_path / "sweep").mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "sweep" / "driver.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": live.pid,
                                                                     "time": time.time()}))
        with pytest.raises(AlliterError, match=f"another driver runs this sweep \\(process {live.pid}"):
            DriverLock(exp).__enter__()
    finally:
        live.kill()
        live.wait()
    with DriverLock(exp):  # its process is gone: a dead driver's lock
        assert json.loads((tmp_path / "sweep" / "driver.lock").read_text())["pid"] == os.getpid()
    (tmp_path / "sweep" / "driver.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": time.time()}))
    with pytest.raises(AlliterError, match="on elsewhere"):  # another machine's, refreshed a moment ago
        DriverLock(exp).__enter__()
    (tmp_path / "sweep" / "driver.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    with DriverLock(exp):  # not refreshed for long: stale
        pass


def test_best_beta_analyses_one_sweep(tmp_path, capsys):
    rng = random.Random(1)
    for sweep_name in ("coarse", "fine"):
        write_trial(tmp_path / "results" / sweep_name / "beta1", 1.0, varied_groups(rng, 20, 2))
    assert best_beta_main([str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {tmp_path / 'results'} holds 2 sweeps (coarse, fine); best_beta analyses one: "
                           "pass its folder")
    assert not (tmp_path / "results" / "analysis").exists()
    assert best_beta_main([str(tmp_path / "results" / "coarse"), "--json"]) == 0  # one sweep
    assert best_beta_main([str(tmp_path / "results" / "coarse" / "beta1"), "--json"]) == 0  # one trial


def test_a_damaged_line_loses_that_line_not_the_trial(tmp_path, capsys):
    rng = random.Random(3)
    for beta, pairs in ((0.0, 1), (10.0, 3)):
        write_trial(tmp_path / "sweep" / f"beta{beta:g}", beta, varied_groups(rng, 20, pairs))
    assert best_beta_main([str(tmp_path / "sweep"), "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    metrics = tmp_path / "sweep" / "beta10" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[4] = lines[4][:30] + "\x00garbage"
    metrics.write_text("\n".join(lines) + "\n")
    assert best_beta_main([str(tmp_path / "sweep"), "--json"]) == 0
    out = capsys.readouterr()
    damaged = json.loads(out.out)
    assert damaged["choice"]["beta"] == clean["choice"]["beta"] == 10.0
    assert [b["beta"] for b in damaged["betas"]] == [0.0, 10.0]  # the trial is still there
    assert "beta=10 (sweep/beta10): metrics.jsonl: line 5 damaged (not JSON); left out" in out.err


@pytest.mark.parametrize("case", ["out is a file", "empty prompt", "max_length past the positions"])
def test_train_is_one_line_and_creates_nothing(case, tmp_path, tiny_gpt_neo, capsys):
    (tmp_path / "a-file").write_text("keep")
    out = tmp_path / ("a-file" if case == "out is a file" else "run")
    args, message = {
        "out is a file": ([], "is a file, not a run folder"),
        "empty prompt": (["--prompt", ""], "the prompt is empty"),
        "max_length past the positions": (["--model", str(tiny_gpt_neo), "--max-length", "500"],
                                          "max_length 500 exceeds the 128 positions"),
    }[case]
    assert train_main(["--quiet", "--threads", "1", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and (tmp_path / "a-file").read_text() == "keep"


def test_sample_refuses_a_generation_past_the_trials_end(tmp_path, bundled_model, capsys):
    assert train_main(["--quiet", "--threads", "1", "--max-generations", "20", "--snapshot-every", "10",
                       "--eval-samples", "0", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert sample_main([str(tmp_path / "run"), "--generations", "99999"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: generation 99999 is past the end of trial {tmp_path / 'run'} (20 generations)"

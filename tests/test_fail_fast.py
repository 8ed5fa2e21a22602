"""A sweep that cannot work says so at once: what only a trial would find is found before Ray starts, in one line;
an error a retry would meet again is not retried; a sweep that did not finish never exits 0; best_beta, train and
sample keep the same standard."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alliter import storage
from alliter.analyse.command import main as best_beta_main
from alliter.cli import AlliterError
from alliter.config import FIELDS, TrainConfig
from alliter.sample import main as sample_main
from alliter.storage import DriverLock
from alliter.testing import build_tiny_gpt_neo
from alliter.train.__main__ import main as train_main
from helpers import local_gpus, printed_command, sweep, sweep_main, trial_states, varied_groups, write_trial


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, bundled_model) -> dict[str, Path]:
    """Model folders and files a careless user passes: garbage config, an empty folder, empty weights, random bytes
    as weights, no tokenizer; a prompts file of 244,000 lines, a reward that returns text."""
    root = tmp_path_factory.mktemp("broken")
    garbage = root / "garbage"
    shutil.copytree(bundled_model, garbage)
    (garbage / "config.json").write_text("{not json")
    (root / "empty").mkdir()
    weightless = root / "weightless"
    shutil.copytree(bundled_model, weightless)
    (weightless / "model.safetensors").write_bytes(b"")
    noise = root / "noise"
    shutil.copytree(bundled_model, noise)
    (noise / "model.safetensors").write_bytes(random.Random(0).randbytes(100_000))
    untokenized = root / "untokenized"
    untokenized.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bundled_model / name, untokenized / name)
    (root / "big.txt").write_text("\n".join(f"Once upon a time {i}" for i in range(244_445)) + "\n")  # 5.6 MB
    (root / "prompts.txt").write_text("\ufeffOnce upon a time\nThe dog\n")  # with a byte-order mark
    (root / "text_reward.py").write_text("def score(texts):\n    return ['1'] * len(texts)\n")
    for name, file, text in (("damaged_card", "alliter.json", "{not json"),
                             ("damaged_sampling", "generation_config.json", "{not json"),
                             ("greedy", "generation_config.json", '{"temperature": 0, "top_k": 50, "max_length": 100}')):
        shutil.copytree(bundled_model, root / name)
        (root / name / file).write_text(text)
    (root / "damaged_trial" / "snapshots").mkdir(parents=True)
    (root / "damaged_trial" / "config.json").write_text("{not json")
    return {"garbage": garbage, "empty": root / "empty", "weightless": weightless, "noise": noise,
            "untokenized": untokenized, "big": root / "big.txt", "prompts": root / "prompts.txt",
            "text_reward": root / "text_reward.py", "damaged_card": root / "damaged_card",
            "damaged_sampling": root / "damaged_sampling", "greedy": root / "greedy",
            "damaged_trial": root / "damaged_trial"}


TOO_LARGE = "99999999999999999999"
# case -> (flags, the one line's words); a case without --betas, --search or --grid runs --betas 1
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
    "random bytes as weights": (["--model", "{noise}"], "model.safetensors is not a readable safetensors file"),
    "folder without a tokenizer": (["--model", "{untokenized}"], "has no tokenizer (tokenizer.json or"),
    "empty --betas": (["--betas", ""], "--betas takes numbers separated by commas, got '': no beta to sweep"),
    "a beta twice": (["--betas", "1,1"], "--betas lists 1 twice"),
    "a beta twice, written two ways": (["--betas", "1,2,1.0"], "for several trials of a beta pass --seeds N"),
    "an empty value in --betas": (["--betas", "1,,2"], "--betas has an empty value between two commas"),
    # numbers that are not finite or not sane
    "temperature nan": (["--temperature", "nan"], "temperature must be a finite number >= 0.01 and <= 10, got nan"),
    "temperature inf": (["--temperature", "inf"], "temperature must be a finite number >= 0.01 and <= 10, got inf"),
    "temperature 0": (["--temperature", "0"], "(below 0.01 sampling is greedy"),
    "a seed past 2**32": (["--seed", TOO_LARGE], "seed must be an integer >= 0 and <= 4294967295"),
    "a negative seed": (["--seed", "-1"], "seed must be an integer >= 0"),
    "a count of seeds past any bound": (["--seeds", TOO_LARGE], "--seeds runs at most 100 seeds of each value"),
    "3000 seeds": (["--seeds", "3000"], "--seeds runs at most 100 seeds of each value, got 3000"),
    "a seed of --seeds past 2**32": (["--seeds", f"0,{TOO_LARGE}"], "seed must be an integer >= 0 and <= 4294967295"),
    "a search start of 1e30": (["--search", "--search-start", "1e30"], "beta must be a finite number >= 0 and <= 10000"),
    "a beta of 1e30": (["--betas", "1e30"], "beta must be a finite number >= 0 and <= 10000, got 1e+30 (100x the"),
    "a KL target of 1e9": (["--kl-target", "1e9", "--betas", "50"], "kl_target must be a finite number > 0 and <= 10"),
    "an lr of 1e30": (["--lr", "1e30"], "lr must be a finite number >= 1e-09 and <= 1"),
    "100M evaluation stories": (["--eval-samples", "100000000"], "eval_samples must be an integer >= 0 and <= 1000"),
    "threads -1": (["--threads", "-1"], "threads must be an integer >= 0"),
    "a group of a million": (["--group-size", "1000000"], "group_size must be an integer >= 2 and <= 1024"),
    "a top-k past the vocabulary": (["--top-k", "1000000"], "top_k 1000000 is more than the 512 tokens"),
    "a CPU count past this machine's": (["--cpus-per-trial", "1e9"], "but this machine has"),
    # a name that leaves its storage
    "a name that leaves its storage": (["--name", "../escaped"], "--name '../escaped' is not a folder name"),
    "the parent as a name": (["--name", ".."], "--name '..' is not a folder name"),
    "an empty name": (["--name", ""], "--name '' is not a folder name"),
    # an input that would bloat every result
    "244,000 prompts": (["--prompts", "{big}"], "holds 244445 prompts; at most 10000"),
    # flags silently ignored or changed
    "--budget without --search": (["--budget", "3"], "--budget is a setting of the search: pass --search too"),
    "--precision without --search": (["--precision", "2"], "--precision is a setting of the search: pass --search"),
    "a negative --concurrency": (["--concurrency", "-1"], "--concurrency must be >= 0 (0: the cluster's trial slots)"),
    "--search-start without --search": (["--search-start", "1,10"], "--search-start is a setting of the search"),
    "an empty --search-start": (["--search", "--search-start", ""], "--search-start takes numbers separated by commas"),
    "--prompt beside --prompts": (["--prompt", "Hi", "--prompts", "{prompts}"], "--prompt and --prompts both given"),
    "25 generations in groups of 10": (["--max-generations", "25"], "max_generations 25 is not a whole number of "
                                       "groups of 10 (a group advances the counter by group_size): pass 20 or 30"),
    "an unknown flag": (["--betass", "1"], "unrecognized arguments: --betass 1 (see python tune_jobs/sweep.py --help)"),
    "a flag of the wrong type": (["--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    # a flag that does nothing in the configuration chosen
    "AdamW's epsilon with SGD": (["--adam-epsilon", "1e-6"], "--adam-epsilon does nothing here: it is AdamW's, and the "
                                 "optimizer is SGD"),
    "weight decay with SGD": (["--grid", "coarse", "--weight-decay", "0.01"], "--weight-decay does nothing here"),
    "AdamW's beta1 at its default with SGD": (["--adam-beta1", "0.9"], "--adam-beta1 does nothing here"),
    "the controller's horizon without a target": (["--kl-horizon", "30"], "--kl-horizon does nothing here: it is the "
                                                  "KL-target controller's, and no KL target is set"),
    "the controller's clip without a target": (["--kl-clip", "0.1"], "--kl-clip does nothing here"),
    "the controller's floor without a target": (["--kl-min-beta", "1"], "--kl-min-beta does nothing here"),
    "the KL in the loss at beta 0": (["--betas", "0", "--kl-loss"], "--kl-loss does nothing here: at beta 0"),
    "a KL estimator when every beta is 0": (["--betas", "0", "--kl-estimator", "k3"], "--kl-estimator does nothing"),
    "--stop-on-collapse with --search": (["--search", "--stop-on-collapse"], "--stop-on-collapse does nothing with "
                                         "--search"),
    "--max-collapse-rate with one seed": (["--max-collapse-rate", "0.5"], "--max-collapse-rate does nothing with one "
                                          "seed"),
    "--report-seconds with a tracker": (["--report-seconds", "5", "--mlflow", "sqlite:///{out}/m.db"],
                                        "--report-seconds does nothing with a tracker"),
    "an entropy target without its step": (["--entropy-target", "2"], "--entropy-target does nothing here: it is the "
                                           "adaptive entropy control's target, and no step is set"),
    "an entropy step without its target": (["--entropy-coef-step", "1e-4"], "--entropy-coef-step does nothing here"),
    "DARLING's memory without DARLING": (["--darling-memory", "3"], "--darling-memory does nothing here: it is "
                                         "DARLING's, and --darling is off"),
    "a reference mix without resets": (["--ref-sync-alpha", "0.5"], "--ref-sync-alpha does nothing here"),
    "reference resets when every beta is 0": (["--betas", "0", "--ref-sync-every", "200"], "--ref-sync-every does "
                                              "nothing here: at beta 0"),
    # a value that wrecks the run
    "AdamW's epsilon 1e300": (["--optimizer", "adamw", "--adam-epsilon", "1e300"], "adam_epsilon must be a finite "
                              "number > 0 and <= 1, got 1e+300 (AdamW divides each step by sqrt(v) + epsilon"),
    "weight decay 1e6": (["--optimizer", "adamw", "--lr", "1e-4", "--weight-decay", "1e6"],
                         "lr x weight_decay must be <= 0.01, got 0.0001 x 1000000"),
    "weight decay 1e6 at the recipe's lr": (["--recipe", "trl", "--weight-decay", "1e6"], "lr x weight_decay must be"),
    "an lr of 1e-300": (["--lr", "1e-300"], "lr must be a finite number >= 1e-09 and <= 1, got 1e-300 (below 1e-9"),
    "a clip of 1e-12": (["--max-grad-norm", "1e-12"], "max_grad_norm must be a finite number >= 0.001, got 1e-12"),
    "a controller's horizon of 1e9": (["--betas", "50", "--kl-targets", "0.1", "--kl-horizon", "1000000000"],
                                      "kl_horizon must be an integer >= 1 and <= 1000000"),
    "a KL target past TRL's units' bound": (["--recipe", "trl", "--betas", "0.5", "--kl-targets", "2000"],
                                            "kl_target must be a finite number > 0 and <= 1000"),
    "an entropy bonus of 100": (["--entropy-coef", "100"], "entropy_coef must be a finite number >= 0 and <= 10, got "
                                "100 (10,000x verl's default"),
    "a negative entropy bonus": (["--entropy-coef", "-0.01"], "entropy_coef must be a finite number >= 0"),
    "an entropy target the policy cannot reach": (["--entropy-target", "7", "--entropy-coef-step", "1e-4"],
                                                  "entropy_target 7 is not under 6.24 nats, the entropy of the uniform "
                                                  "distribution over the 512 tokens"),
    "the over-use damping's memory without a cap": (["--overuse-memory", "5"], "--overuse-memory does nothing here: "
                                                    "it is the over-use damping's"),
    "the over-use damping without evaluations": (["--overuse-cap", "3", "--eval-samples", "0"],
                                                 "--overuse-cap does nothing here: it measures over-use against the "
                                                 "unmodified model's stories of the evaluation at generation 0"),
    "an over-use cap under 1": (["--overuse-cap", "0.5"], "overuse_cap must be a finite number > 1 and <= 1000"),
    "a DARLING memory of a million groups": (["--darling", "--darling-memory", "1000000"],
                                             "darling_memory must be an integer >= 0 and <= 1000"),
    "a reference mix of 0": (["--ref-sync-every", "200", "--ref-sync-alpha", "0"], "ref_sync_alpha must be a finite "
                             "number > 0 and <= 1, got 0 (0 never moves the reference"),
    # a flag abbreviated
    "--max-gen for --max-generations": (["--max-gen", "40"], "unrecognized arguments: --max-gen 40"),
    "--see for --seeds": (["--see", "3"], "unrecognized arguments: --see 3"),
    # tracebacks where the cause is known
    "a reward that returns text": (["--reward", "{text_reward}:score"], "returned '1' (str); it must return a number"),
    "a storage filesystem that loses everything": (["--storage", "mock://x"], "mock:// is not a filesystem that keeps"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_what_a_trial_would_find_is_one_line_before_ray_starts(case, tmp_path, broken_models, tiny_gpt_neo):
    if case == "cuda without a GPU" and local_gpus() > 0:
        pytest.skip("this machine has a GPU")
    args, message = CASES[case]
    paths = {**{k: str(v) for k, v in broken_models.items()}, "tiny": str(tiny_gpt_neo), "out": str(tmp_path / "out")}
    args = [a.format(**paths) for a in args]
    (tmp_path / "keep.txt").write_text("results of another day")
    chosen = {"--betas", "--search", "--grid", "--betass"} & set(args)
    storage = [] if "--storage" in args else ["--storage", str(tmp_path / "sweeps")]
    res = sweep_main(*args, *storage, *([] if chosen else ["--betas", "1"]))
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]  # nothing started, nothing written


# flags that act in the configuration given, and bounds in its recipe's units: taken, not refused
MEANT = {
    "a KL target in TRL's units (per completion)": (["--recipe", "trl", "--betas", "0.5", "--kl-targets", "50"],
                                                    lambda plan: plan.targets == [50.0]),
    "a floor of the controller in a search over targets": (
        ["--search", "--search-targets", "--betas", "50", "--kl-min-beta", "50"],
        lambda plan: plan.base.kl_min_beta == 50 and plan.settings.knob == "kl_target"),
    "a KL estimator in a grid whose betas are not all 0": (["--grid", "coarse", "--kl-estimator", "k3"],
                                                            lambda plan: plan.betas[0] == 0),
    "AdamW's knobs under TRL's recipe": (["--recipe", "trl", "--betas", "1", "--weight-decay", "0.01"],
                                         lambda plan: plan.base.optimizer == "adamw"),
    "an entropy target with its step": (["--betas", "1", "--entropy-target", "2", "--entropy-coef-step", "1e-4"],
                                        lambda plan: plan.base.entropy_target == 2 and plan.base.entropy_coef_step),
    "DARLING's memory with DARLING": (["--betas", "1", "--darling", "--darling-memory", "3"],
                                      lambda plan: plan.base.darling and plan.base.darling_memory == 3),
    "reference resets in a grid whose betas are not all 0": (["--grid", "coarse", "--ref-sync-every", "200",
                                                              "--ref-sync-alpha", "0.5"],
                                                             lambda plan: plan.base.ref_sync_every == 200),
}


@pytest.mark.parametrize("case", list(MEANT))
def test_a_flag_that_acts_in_its_configuration_is_taken(case, tmp_path):
    from alliter.sweep.command import parse
    from alliter.sweep.plan import plan_sweep

    args, holds = MEANT[case]
    sweep_config, base, rule, given = parse([*args, "--storage", str(tmp_path)])
    assert holds(plan_sweep(sweep_config, base, given, rule))


BOUNDED = [name for name, f in FIELDS.items() if f.metadata.get("bounds")]


@pytest.mark.parametrize("name", BOUNDED)
def test_every_knob_with_bounds_refuses_a_value_past_them_and_takes_its_edges(name):
    """The bounds written beside a field (alliter.config.option) are the ones its flag is held to, whichever knob: a
    knob added with bounds is checked here with no test of its own."""
    f = FIELDS[name]
    b = f.metadata["bounds"]
    cfg = TrainConfig(beta=50.0, kl_target=0.1, optimizer="adamw", entropy_target=2.0, entropy_coef_step=1e-4,
                      darling=True, overuse_cap=2.0, ref_sync_every=200)  # every knob acts, so only bounds refuse
    kind = type(f.default) if f.default is not None else float
    high = b.high(cfg) if callable(b.high) else b.high
    past = [b.low if b.low_open else b.low - kind(1)] + ([high if b.high_open else high + kind(1)] if high is not None
                                                         else [])
    for value in past:
        with pytest.raises(AlliterError, match=f"^{name} must be "):
            dataclasses.replace(cfg, **{name: kind(value)}).validate()
    inside = [v for v in (b.low, high, b.off) if v is not None and not (v == b.low and b.low_open)
              and not (v == high and b.high_open)]
    for value in inside:  # the edges themselves are sane (other checks, beta 0 under a KL target, are not this test's)
        b.check(name, kind(value), cfg)


def test_a_storage_that_does_not_answer_is_one_line_within_seconds(tmp_path, monkeypatch):
    """An S3 endpoint that takes connections and never answers (as gs:// did with no network: minutes)."""
    server = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setattr(storage, "STORAGE_TIMEOUT_S", 3.0)
    try:
        uri = f"s3://bucket/sweeps?endpoint_override=127.0.0.1:{server.getsockname()[1]}&scheme=http"
        start = time.perf_counter()
        res = sweep_main("--betas", "1", "--storage", uri)
        assert time.perf_counter() - start < 10
    finally:
        server.close()
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith(f"error: --storage {uri}: no answer within 3 s"), res.stderr


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


THIRD_CALL_NAN = """calls = 0
def score(texts):
    global calls
    calls += 1
    return [float("nan") if calls == 3 else 1.0] * len(texts)
"""


def test_a_reward_that_returns_nan_later_in_a_trial_ends_it_with_an_error_of_alliter_s_own(tmp_path, tiny_gpt_neo):
    """The trainer raises the reward's one line as an AlliterError, which a trial reports as FATAL (not retried:
    the sweep below takes that path through Ray for every AlliterError)."""
    from alliter.config import TrainConfig
    from alliter.train.trainer import Trainer

    (tmp_path / "third_call.py").write_text(THIRD_CALL_NAN)
    trainer = Trainer(TrainConfig(model=str(tiny_gpt_neo), reward=f"{tmp_path / 'third_call.py'}:score", eval_samples=0,
                                  max_generations=50, threads=1), tmp_path / "trial")
    with pytest.raises(AlliterError, match="returned nan; it must return finite numbers") as err:
        for _ in trainer.groups():
            pass
    assert "\n" not in str(err.value) and trainer.generations == 20  # two groups, the third's update never made


@pytest.mark.slow
def test_an_error_a_retry_meets_again_is_not_retried_and_the_sweep_exits_non_zero(tmp_path, nan_model):
    """A NaN in the model: every trial's first loss is NaN, an error of alliter's own (as a reward's NaN, above)."""
    res = sweep("--betas", "1,2", "--max-generations", "40", "--model", str(nan_model), "--storage", str(tmp_path),
                "--name", "nan")
    assert res.returncode == 1, res.stderr[-3000:]
    states = trial_states(tmp_path / "nan")
    assert {s["status"] for s in states.values()} == {"ERROR"}
    assert {s["num_failures"] for s in states.values()} == {1}  # not retried (--max-failures 3 by default)
    causes = [line for line in res.stderr.splitlines() if line.startswith("  ERROR in beta=")]
    assert len(causes) == 2 and all("non-finite loss nan" in cause for cause in causes), res.stderr[-3000:]
    assert "Traceback" not in res.stderr  # the cause's line, without Ray's traceback above it (error.txt has it)
    hint = next(line for line in res.stderr.splitlines() if "trial(s) errored" in line)
    assert hint.startswith("2 trial(s) errored (above)") and "next:" not in res.stdout
    command = printed_command(res.stderr, "run them again with:")
    # the command that tests/test_resume.py runs as printed after a Ctrl-C
    assert command == f"alliter sweep --resume --name nan --storage {tmp_path}"


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


# the other commands: (command, its arguments, the one line's words); {out} is a new folder, {file} an existing
# 0-byte file, {noise} a model folder whose weights are random bytes, {prompts} a prompts file
OTHER_CASES = {
    "train: out is a file": ("train", ["--out", "{file}"], "is a file, not a run folder"),
    "train: out where nothing can be made": ("train", ["--out", "/proc/alliter-run"],
                                             "cannot create the run folder /proc/alliter-run"),
    "train: empty prompt": ("train", ["--prompt", "", "--out", "{out}"], "the prompt is empty"),
    "train: max_length past the positions": ("train", ["--model", "{tiny}", "--max-length", "500", "--out", "{out}"],
                                             "max_length 500 exceeds the 128 positions"),
    "train: temperature nan": ("train", ["--temperature", "nan", "--out", "{out}"], "temperature must be a finite"),
    "train: --prompt beside --prompts": ("train", ["--prompt", "Hi", "--prompts", "{prompts}", "--out", "{out}"],
                                         "--prompt and --prompts both given"),
    "train: an unknown flag": ("train", ["--bta", "1", "--out", "{out}"], "unrecognized arguments: --bta 1"),
    "sample: random bytes as weights": ("sample", ["{noise}"], "model.safetensors is not a readable safetensors file"),
    "sample: a file": ("sample", ["{file}"], "is a file, not a folder"),
    "sample: a billion stories": ("sample", ["{bundled}", "--n", "1000000000"], "n must be an integer >= 1 and <= 1000"),
    "sample: a seed past 2**32": ("sample", ["{bundled}", "--seed", TOO_LARGE], "seed must be an integer >= 0 and <="),
    "sample: an unknown device": ("sample", ["{bundled}", "--device", "tpu"], "device must be auto, cpu or cuda"),
    "sample: an export's damaged card": ("sample", ["{damaged_card}"], "alliter.json is damaged (not a JSON table)"),
    "sample: a damaged generation_config.json": ("sample", ["{damaged_sampling}"],
                                                 "generation_config.json is damaged (not a JSON table)"),
    "sample: temperature 0 in generation_config.json": ("sample", ["{greedy}"], "the sampling settings of "),
    "sample: a trial's damaged config.json": ("sample", ["{damaged_trial}", "--generations", "10"],
                                              "config.json is damaged (not a JSON table)"),
    "sample: a prompt longer than --max-length": ("sample", ["{bundled}", "--max-length", "3"],
                                                  "max_length 3 leaves none to generate; pass a larger --max-length"),
    "train: AdamW's epsilon with SGD": ("train", ["--adam-epsilon", "1e-6", "--out", "{out}"],
                                        "--adam-epsilon does nothing here"),
    "train: weight decay 1e6": ("train", ["--optimizer", "adamw", "--weight-decay", "1e6", "--out", "{out}"],
                                "lr x weight_decay must be <= 0.01"),
    "best_beta: a file": ("best_beta", ["{file}"], "is a file, not a sweep folder"),
    "best_beta: export to a 0-byte file": ("best_beta", ["{out}", "--export", "{file}"],
                                          "is a file, not a folder; nothing was written"),
}


@pytest.mark.parametrize("case", list(OTHER_CASES))
def test_train_sample_and_best_beta_are_one_line_and_create_nothing(case, tmp_path, tiny_gpt_neo, bundled_model,
                                                                    broken_models, capsys):
    command, args, message = OTHER_CASES[case]
    (tmp_path / "a-file").write_bytes(b"")
    paths = {"out": str(tmp_path / "run"), "file": str(tmp_path / "a-file"), "tiny": str(tiny_gpt_neo),
             "bundled": str(bundled_model), **{k: str(v) for k, v in broken_models.items()}}
    args = [a.format(**paths) for a in args]
    main = {"train": lambda a: train_main(["--quiet", "--threads", "1", *a]), "sample": sample_main,
            "best_beta": best_beta_main}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"] and not (tmp_path / "a-file").read_bytes()


def test_a_ctrl_c_is_exit_130_without_a_traceback(bundled_model):
    """A command interrupted at its work (sample here; every command's main has the same handler, alliter.cli.command;
    train, sweep and study say how to go on: their own tests)."""
    code = ("import sys; from alliter.cli import run; from alliter.sample import main; print('ready', flush=True); "
            "run(lambda: main(sys.argv[1:]))")
    child = subprocess.Popen([sys.executable, "-c", code, str(bundled_model), "--n", "1000"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    time.sleep(1.0)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "Traceback" not in err and err.strip().endswith("interrupted"), err[-2000:]


def test_what_a_careless_user_gives_that_can_be_taken_is_taken_as_meant(tmp_path, broken_models):
    """A byte-order mark is not part of the first prompt; NumPy's numbers are numbers."""
    from alliter.config import read_prompts
    from alliter.train.reward import Reward, parse_reward

    assert read_prompts(str(broken_models["prompts"])) == "Once upon a time\nThe dog"
    reward = Reward(parse_reward("numpy.py:score"), lambda texts: [np.float32(11.0), np.int64(2)])
    assert reward(["a", "b"]) == [11.0, 2] and [type(v) for v in reward(["a", "b"])] == [float, int]


def test_best_beta_names_a_trial_of_tune_s_state_whose_folder_is_gone(tmp_path, capsys):
    rng = random.Random(2)
    for beta in (0.0, 10.0):
        write_trial(tmp_path / "sweep" / f"beta={beta:g}_0000{int(beta)}", beta, varied_groups(rng, 20, 2))
    state = {"trial_data": [[json.dumps({"relative_logdir": f"beta={b:g}_0000{int(b)}", "status": "TERMINATED"}), ""]
                            for b in (0.0, 10.0, 20.0)]}
    (tmp_path / "sweep" / "experiment_state-2026-12-06_00-00-00.json").write_text(json.dumps(state))
    assert best_beta_main([str(tmp_path / "sweep"), "--json"]) == 0
    err = capsys.readouterr().err
    assert (f"note: {tmp_path / 'sweep' / 'beta=20_000020'}: in the sweep's Tune state (TERMINATED), but its folder is "
            "gone (deleted or moved); the analysis is of the 2 trial(s) left") in err, err


def test_sample_refuses_a_generation_past_the_trials_end(tmp_path, bundled_model, capsys):
    assert train_main(["--quiet", "--threads", "1", "--max-generations", "20", "--snapshot-every", "10",
                       "--eval-samples", "0", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert sample_main([str(tmp_path / "run"), "--generations", "99999"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: generation 99999 is past the end of trial {tmp_path / 'run'} (20 generations)"

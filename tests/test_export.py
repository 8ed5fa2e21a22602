"""Snapshots, the export of a point as a model folder, and sampling from it: on real trials of real models."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from alliter.train.reward import raw_reward
from alliter.analyse.command import main as best_beta
from alliter.cli import AlliterError
from alliter.config import TrainConfig
from alliter.sample import main as sample
from alliter.train.snapshots import (
    check_disk, list_snapshots, save_snapshot, snapshot_bytes, snapshot_path, write_model_files,
)
from alliter.train.trainer import Trainer, load_checkpoint_file
from helpers import COLLAPSED, K, REPO, run_trial, varied_text, write_trial


def cli(command, *args: str, capsys) -> tuple[int, str, str]:
    code = command(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, bundled_model) -> Path:
    """One real trial of the bundled model: beta 10, 40 generations, snapshots every 20."""
    folder = tmp_path_factory.mktemp("sweep")
    run_trial(folder / "beta10", bundled_model)
    return folder


@pytest.fixture(scope="module")
def exported(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    code = best_beta([str(sweep), "--window", "20", "--export", str(out), "--export-at", "10:20"])
    assert code == 0
    return out


def test_exported_weights_are_the_policy_at_that_generation(sweep, exported):
    at_20 = load_checkpoint_file(sweep / "beta10" / "checkpoint-20.pt")["policy"]
    at_40 = load_checkpoint_file(sweep / "beta10" / "checkpoint-40.pt")["policy"]
    weights = AutoModelForCausalLM.from_pretrained(exported).state_dict()
    assert same_weights(weights, at_20)
    assert not same_weights(weights, at_40)  # the policy moved: this is the point asked for, not another
    assert [p.name for p in list_snapshots(sweep / "beta10").values()] == [
        "generations=000020.safetensors", "generations=000040.safetensors"]


@pytest.mark.parametrize("model, dtype", [("bundled_model", "bfloat16"), ("tiny_gpt_neo", "float32")])
def test_export_keeps_the_dtype_and_the_architecture(tmp_path, model, dtype, request):
    path = request.getfixturevalue(model)
    run_trial(tmp_path / "sweep" / "trial", path, generations=20, snapshot_every=10, dtype=dtype)
    assert best_beta([str(tmp_path / "sweep"), "--window", "10", "--export", str(tmp_path / "out"), "--export-at", "10:10"]) == 0
    policy = load_checkpoint_file(tmp_path / "sweep" / "trial" / "checkpoint-10.pt")["policy"]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert same_weights(exported.state_dict(), policy)
    assert str(exported.dtype) == f"torch.{dtype}"


@pytest.mark.slow  # a second Python process: transformers imported without the hub
def test_the_folder_loads_offline_in_a_pipeline_and_its_card_names_the_point(sweep, exported):
    code = f"""
import json
from transformers import AutoModelForCausalLM, pipeline
AutoModelForCausalLM.from_pretrained({str(exported)!r})
generator = pipeline("text-generation", model={str(exported)!r})
print(json.dumps(generator("Once upon a time")))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = json.loads(res.stdout.splitlines()[-1])[0]["generated_text"]
    assert text.startswith("Once upon a time") and len(text.split()) > 8

    gen = json.loads((exported / "generation_config.json").read_text())
    assert (gen["do_sample"], gen["top_k"], gen["temperature"], gen["max_length"]) == (True, 50, 1.0, 100)
    card = (exported / "README.md").read_text()
    assert "beta=10 at 20 generations" in card and str(sweep) in card and "beta10" in card
    assert "chosen by: by hand: --export-at 10:20" in card
    assert re.search(r"\| alliteration .* \| \d+\.\d{3} \| \d+\.\d{3} \|", card)  # its metrics, and the unmodified model's
    assert (exported / "LICENSE").read_text().startswith("MIT License")  # the bundled model's


def test_sample_prints_stories_with_their_raw_reward_from_the_export_and_from_the_trial(sweep, exported, capsys):
    code, out, err = cli(sample, str(exported), "--n", "3", "--seed", "1", capsys=capsys)
    assert code == 0, err
    assert out.startswith("beta=10 at 20 generations")
    stories = re.findall(r"^\[(\d)\] raw reward (\d+)\n(.*?)\n\n", out, re.S | re.M)
    assert [s[0] for s in stories] == ["1", "2", "3"]
    assert all(int(reward) == raw_reward(text) for _, reward, text in stories)
    assert all(text.startswith("Once upon a time") for _, _, text in stories)
    # the trial folder at the same generation is the same policy: the same seed gives the same stories
    code, from_trial, err = cli(sample, str(sweep / "beta10"), "--generations", "20", "--n", "3", "--seed", "1", capsys=capsys)
    assert code == 0, err
    assert from_trial.split("\n", 1)[1] == out.split("\n", 1)[1]
    assert cli(sample, str(exported), "--n", "3", "--seed", "2", capsys=capsys)[1] != out


def hand_made_trial(folder: Path, bundled_model: Path, snapshots: dict[int, float], **trial) -> Path:
    """A trial folder built by hand (helpers.write_trial) with real snapshots of the bundled model: {generations:
    noise}, each snapshot the model with its embedding moved by that much."""
    trial = write_trial(folder, model=str(bundled_model), **trial)
    model = AutoModelForCausalLM.from_pretrained(bundled_model)
    write_model_files(model, AutoTokenizer.from_pretrained(bundled_model), trial)
    for generations, noise in snapshots.items():
        with torch.no_grad():
            torch.manual_seed(generations)
            moved = {k: v.clone() for k, v in model.state_dict().items()}
            model.get_input_embeddings().weight.add_(noise * torch.randn_like(model.get_input_embeddings().weight))
        save_snapshot(model, trial, generations, {"generations": generations})
        model.load_state_dict(moved)
    return trial


def test_a_point_without_a_snapshot_falls_back_to_the_nearest_earlier_one(tmp_path, bundled_model, capsys):
    # the analysis's best point is beta=40 at 400 generations (tests/test_analysis.py); snapshots at 300 and 800
    rng = random.Random(1)
    groups = [[varied_text(rng, 1 + i // 10) for _ in range(K)] for i in range(60)] + [[COLLAPSED] * K] * 40
    trial = hand_made_trial(tmp_path / "sweep" / "beta40", bundled_model, {300: 1e-3, 800: 1e-3}, beta=40.0,
                            groups=groups)
    code, out, err = cli(best_beta, str(tmp_path / "sweep"), "--export", str(tmp_path / "out"), capsys=capsys)
    assert code == 0, err
    assert ("note: no snapshot at generation 400 in sweep/beta40: using the nearest earlier one, at 300"
            in err.splitlines())
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    at_300 = load_file(snapshot_path(trial, 300))
    assert all(torch.equal(exported[k], v) for k, v in at_300.items())
    card = (tmp_path / "out" / "README.md").read_text()
    assert "beta=40 at 300 generations" in card and "asked for: 400" in card and "the analysis's best point" in card
    assert "The point is **kept**" in card


def test_a_point_that_fails_the_rule_is_refused_unless_forced(tmp_path, bundled_model, capsys):
    rng = random.Random(2)
    groups = [[varied_text(rng, 2) for _ in range(K)] for _ in range(40)]
    # the trial's own evaluation at 400 found non-words; its snapshot at 200 passed, but the weights are gibberish
    hand_made_trial(tmp_path / "sweep" / "beta5", bundled_model, {200: 3.0, 400: 1e-3}, beta=5.0, groups=groups,
                    fluency=lambda g: 1.2 if g < 400 else 3.0)
    analysis, out = tmp_path / "analysis", tmp_path / "out"
    for at, message in [("5:400", "beta=5 at 400 generations, by its evaluation, is degenerate (diversity 100% of the "
                                  "unmodified model's, fluency +1.80 nats); nothing was written - pass --force"),
                        ("5:200", "the exported folder, by its own evaluation, is ")]:
        code, _, err = cli(best_beta, str(tmp_path / "sweep"), "--out", str(analysis), "--export", str(out),
                           "--export-at", at, capsys=capsys)
        assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(".out.export-*"))  # nothing written, not even aside
    code, _, err = cli(best_beta, str(tmp_path / "sweep"), "--out", str(analysis), "--export", str(out),
                       "--export-at", "5:200", "--force", capsys=capsys)
    assert code == 0, err
    card = (out / "README.md").read_text()
    assert "exported with --force: the exported folder, by its own evaluation, is" in card
    assert "The point is **kept**" not in card
    assert json.loads((out / "alliter.json").read_text())["evaluation"]["verdict"] in ("collapsed", "degenerate")


def test_the_model_card_gives_the_evaluation_of_the_exported_folder(sweep, exported):
    """The card's numbers are what evaluating the folder as a user loads it gives, and the trial's own
    evaluation of that point: the same policy, the same random numbers."""
    from alliter.rule import CollapseRule
    from alliter.train.evaluate import evaluate_folder

    info = json.loads((exported / "alliter.json").read_text())
    again = evaluate_folder(exported, TrainConfig.from_dict(info["config"]), CollapseRule(**info["rule_settings"]))
    assert again == info["evaluation"]
    card = (exported / "README.md").read_text()
    assert f"| {again['point']['alliteration']:.3f} | {again['unmodified']['alliteration']:.3f} |" in card
    assert f"fluency {again['fluency_gap']:+.3f} nats" in card and again["stories"][0] in card
    mine = info["trial_evaluation"]
    assert mine["source"] == "evaluation" and mine["verdict"] == again["verdict"] == "kept"
    assert mine["alliteration"] == pytest.approx(again["point"]["alliteration"])
    assert mine["fluency_gap"] == pytest.approx(again["fluency_gap"], abs=1e-6)


@pytest.mark.parametrize("case", ["no sweep", "beta not in it", "past the end", "non-empty DIR", "bad point",
                                  "no snapshots"])
def test_bad_input_is_one_line_and_overwrites_nothing(sweep, tmp_path, case, capsys):
    out = tmp_path / "out"
    args, message = {
        "no sweep": ([str(tmp_path / "missing")], "no such folder"),
        "beta not in it": ([str(sweep), "--export-at", "7:20"], "beta 7 is not in the sweep (its betas: 10)"),
        "past the end": ([str(sweep), "--export-at", "10:400"], "generation 400 is past the end of trial"),
        "non-empty DIR": ([str(sweep), "--export-at", "10:20"], "exists and is not empty"),
        "bad point": ([str(sweep), "--export-at", "10"], "--export-at takes BETA:GENERATIONS"),
        "no snapshots": ([str(write_trial(tmp_path / "synthetic" / "t", 1.0, [[COLLAPSED] * K] * 3).parent),
                          "--export-at", "1:20"], "has no snapshots"),
    }[case]
    if case == "non-empty DIR":
        out.mkdir()
        (out / "keep.txt").write_text("another model")
    analysis_out = tmp_path / "analysis"
    code, stdout, err = cli(best_beta, *args, "--window", "20", "--out", str(analysis_out), "--export", str(out),
                            capsys=capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not analysis_out.exists()  # refused before any output
    assert (sorted(p.name for p in out.iterdir()) == ["keep.txt"]) if case == "non-empty DIR" else not out.exists()


@pytest.mark.slow  # a second Python process
def test_json_into_a_closed_pipe_ends_quietly(tmp_path):
    rng = random.Random(0)
    write_trial(tmp_path / "sweep" / "t", 1.0, [[varied_text(rng, 1) for _ in range(K)] for _ in range(3)])
    proc = subprocess.Popen([sys.executable, str(REPO / "analysis" / "best_beta.py"), str(tmp_path / "sweep"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `| head -1` does, before the JSON comes
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err and "verdict" in err


def test_a_resume_drops_the_snapshots_past_its_checkpoint_and_writes_them_again(sweep, tmp_path, bundled_model):
    trial = tmp_path / "trial"
    first = run_trial(trial, bundled_model, generations=30, snapshot_every=10)
    final = load_file(snapshot_path(trial, 30))
    resumed = Trainer(first.cfg, trial)
    resumed.load_checkpoint(trial / "checkpoint-10.pt")
    assert list(list_snapshots(trial)) == [10]  # 20 and 30 belong to a run past this checkpoint
    for _ in resumed.groups():
        pass
    assert list(list_snapshots(trial)) == [10, 20, 30]
    assert same_weights(load_file(snapshot_path(trial, 30)), final)


def test_snapshot_size_estimate_and_the_disk_check(tmp_path, bundled_model):
    trainer = run_trial(tmp_path / "t", bundled_model, generations=10, snapshot_every=10)
    size = snapshot_path(trainer.run_dir, 10).stat().st_size
    estimate = snapshot_bytes(str(bundled_model), "float32")
    assert estimate <= size < estimate * 1.01  # the tensors, and a header
    assert snapshot_bytes(str(bundled_model), "bfloat16") == estimate // 2
    with pytest.raises(AlliterError, match="the snapshots would take .* pass a larger --snapshot-every"):
        check_disk(str(tmp_path / "results"), needed=1e18)
    check_disk(str(tmp_path / "results"), needed=1e6)


def test_of_several_seeds_the_named_trial_else_the_lowest_seed_is_exported(tmp_path, bundled_model, capsys):
    from alliter.analyse.judge import analyse
    from alliter.analyse.export import resolve_point

    model = AutoModelForCausalLM.from_pretrained(bundled_model)
    tokenizer = AutoTokenizer.from_pretrained(bundled_model)
    rng = random.Random(5)
    for seed in (3, 1):
        trial = write_trial(tmp_path / "sweep" / f"beta10_seed{seed}", 10.0, [[varied_text(rng, 2) for _ in range(K)]] * 4,
                            seed=seed, model=str(bundled_model))
        write_model_files(model, tokenizer, trial)
        save_snapshot(model, trial, 40, {})
    code, out, err = cli(best_beta, str(tmp_path / "sweep"), "--export", str(tmp_path / "out"), "--export-at", "10:40",
                         "--window", "20", capsys=capsys)
    assert code == 0, err
    assert "2 trials have beta=10: exporting sweep/beta10_seed1, the one with the lowest seed (1)" in err
    assert "trial sweep/beta10_seed1" in out
    named = resolve_point(analyse(tmp_path / "sweep"), {"value": 10.0, "generations": 40, "trial": "sweep/beta10_seed3"}, "")
    assert named.trial.name == "sweep/beta10_seed3" and not named.notes

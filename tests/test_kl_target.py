"""KL-target mode: Ziegler et al.'s controller of beta, a resumed controller trial, and a target sweep end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alliter.cli import AlliterError
from alliter.config import TrainConfig
from alliter.train.rloo import kl_controller
from alliter.train.trainer import Trainer, load_checkpoint_file
from helpers import ONE_AT_A_TIME, read_jsonl, sweep, sweep_main


def test_the_controller_against_hand_computed_values():
    # e = clip(kl / target - 1, -0.2, 0.2); beta * (1 + e * K / horizon)
    assert kl_controller(50.0, 0.11, 0.1, 300, 0.2, 10) == pytest.approx(50 * (1 + 0.1 * 10 / 300))
    assert kl_controller(50.0, 0.5, 0.1, 300, 0.2, 10) == pytest.approx(50 * (1 + 0.2 * 10 / 300))  # clipped above
    assert kl_controller(50.0, 0.0, 0.1, 300, 0.2, 10) == pytest.approx(50 * (1 - 0.2 * 10 / 300))  # clipped below
    assert kl_controller(50.0, -0.3, 0.1, 300, 0.2, 10) == pytest.approx(50 * (1 - 0.2 * 10 / 300))  # a negative estimate
    assert kl_controller(50.0, 0.1, 0.1, 300, 0.2, 10) == 50.0  # on target: unchanged
    assert kl_controller(20.0, 0.15, 0.1, 100, 0.05, 10) == pytest.approx(20 * (1 + 0.05 * 10 / 100))


@pytest.mark.parametrize("values, message", [
    ({"kl_target": 0.0}, "kl_target must be a finite number > 0"),
    ({"kl_target": -0.1}, "kl_target must be a finite number > 0"),
    ({"kl_target": float("nan")}, "kl_target must be a finite number > 0"),
    ({"kl_target": 0.1, "kl_horizon": 0}, "kl_horizon must be an integer >= 1"),
    ({"kl_target": 0.1, "kl_clip": 0.0}, "kl_clip must be a finite number > 0 and < 1"),
    ({"kl_target": 0.1, "beta": 0.0}, "the KL-target controller multiplies beta: start it above 0"),
])
def test_a_controller_that_cannot_work_is_refused(values, message):
    with pytest.raises(AlliterError, match=message):
        TrainConfig(**{"beta": 50.0, **values}).validate()


def test_the_controller_holds_the_kl_of_its_recipe(tmp_path, bundled_model):
    """With --recipe trl, the KL a target is held at is TRL's: k1 summed over the completion's tokens (the group's
    kl_completion_sum_mean), about a hundred times the study's per-token mean; a target above the per-token bound
    (10 nats) is taken in these units."""
    # in float64: the same samples on any CPU
    trainer = Trainer(TrainConfig(beta=0.5, kl_target=20.0, recipe="trl", threads=1, max_generations=40,
                                  snapshot_every=0, eval_samples=0, dtype="float64"), tmp_path)
    for _ in trainer.groups():
        pass
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    for before, after, m in zip([m["beta"] for m in metrics], [m["beta"] for m in metrics[1:]], metrics):
        assert -m["kl_penalty_mean"] == pytest.approx(m["kl_completion_sum_mean"])  # the recipe's KL term
        assert after == pytest.approx(kl_controller(before, m["kl_completion_sum_mean"], 20.0, 300, 0.2, 10))
    summed = sum(abs(m["kl_completion_sum_mean"]) for m in metrics)
    assert summed > 10 * sum(abs(m["ce_policy_mean"] - m["ce_ref_mean"]) for m in metrics)  # its units: ~100x the study's


def run(folder: Path, generations: int, checkpoint: Path | None = None) -> Trainer:
    trainer = Trainer(TrainConfig(beta=50.0, kl_target=0.001, kl_horizon=30, threads=1, max_generations=generations,
                                  snapshot_every=0, eval_samples=0), folder)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
    for _ in trainer.groups():
        if trainer.generations == 30 and checkpoint is None:
            trainer.save_checkpoint(folder / "checkpoint.pt")
    return trainer


def test_a_resumed_controller_trial_equals_an_uninterrupted_one(tmp_path, bundled_model):
    straight = run(tmp_path / "straight", 60)
    metrics = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    betas = [m["beta"] for m in metrics]
    assert betas[0] == 50.0 and len(set(betas)) == len(betas)  # the controller moved beta after every group
    for before, after, m in zip(betas, betas[1:], metrics):
        assert after == pytest.approx(kl_controller(before, -m["kl_penalty_mean"], 0.001, 30, 0.2, 10))
    records = read_jsonl(tmp_path / "straight" / "generations.jsonl")
    assert [r["beta"] for r in records] == [b for b in betas for _ in range(10)]  # beta in every record
    assert all(r["reward"] == pytest.approx(r["raw_reward"] + r["beta"] * r["kl_penalty"]) for r in records)

    half = run(tmp_path / "half", 30)
    state = load_checkpoint_file(tmp_path / "half" / "checkpoint.pt")
    assert state["beta"] == half.beta == betas[3] and state["generations"] == 30
    resumed = run(tmp_path / "half", 60, tmp_path / "half" / "checkpoint.pt")
    assert resumed.beta == straight.beta
    assert (tmp_path / "half" / "generations.jsonl").read_text() == (tmp_path / "straight" / "generations.jsonl").read_text()


@pytest.mark.parametrize("args, message", [
    (["--kl-targets", "0.1"], "KL-target trials start at a beta: pass --betas START"),
    (["--kl-target", "0.1"], "KL-target trials start at a beta: pass --betas START"),
    (["--kl-targets", "0.1,0.1", "--betas", "50"], "--kl-targets lists 0.1 twice"),
    (["--kl-targets", "0,0.1", "--betas", "50"], "kl_target must be a finite number > 0"),
    (["--kl-targets", "0.1", "--betas", "0,50"], "the KL-target controller multiplies beta: start it above 0"),
    (["--search", "--search-targets", "--betas", "20,50"], "--search-targets starts every trial at one beta"),
    (["--search-targets", "--betas", "50"], "--search-targets is a setting of the search: pass --search too"),
])
def test_target_sweeps_that_cannot_work_are_one_line(tmp_path, args, message):
    res = sweep_main(*args, "--storage", str(tmp_path))
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_target_sweep_through_ray_is_analysed_by_its_targets(tmp_path, tiny_gpt_neo):
    res = sweep("--betas", "5", "--kl-targets", "0.001,1", "--max-generations", "40", "--snapshot-every", "20",
                "--eval-samples", "10", "--model", str(tiny_gpt_neo), *ONE_AT_A_TIME, "--storage", str(tmp_path),
                "--name", "kt")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "KL targets [0.001, 1.0], each trial's beta starting at 5" in res.stdout  # --betas is the start
    exp = tmp_path / "kt"
    folders = sorted(p.name.rsplit("_", 2)[0] for p in exp.glob("target=*"))
    assert folders == ["target=0.001_beta=5", "target=1_beta=5"]
    for trial in exp.glob("target=*"):
        metrics = read_jsonl(trial / "metrics.jsonl")
        records = read_jsonl(trial / "generations.jsonl")
        assert [r["beta"] for r in records] == [m["beta"] for m in metrics for _ in range(10)]
        assert metrics[0]["beta"] == 5.0 and metrics[-1]["beta"] != 5.0
    from helpers import best_beta

    run = best_beta(str(exp), "--json", "--window", "20")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["knob"] == "kl_target" and sorted(b["kl_target"] for b in result["betas"]) == [0.001, 1.0]
    header = run.stderr.splitlines()[0].split()
    assert header[0] == "kl_target" and header[-2:] == ["beta", "beta_range"]
    for row in result["betas"]:  # where each target's controller left beta, and the range it moved in
        assert row["beta_min"] <= row["beta"] <= row["beta_max"] and row["beta_min"] <= 5.0 <= row["beta_max"]

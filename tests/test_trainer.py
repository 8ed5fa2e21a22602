"""The single-trial trainer and its command line: files, metrics, exact resume, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alliter.cli import AlliterError
from alliter.config import TrainConfig
from alliter.train.__main__ import main
from alliter.train.evaluate import evaluation_points
from alliter.train.trainer import NonFiniteLossError, Trainer, load_checkpoint_file
from helpers import METRIC_NAMES, assert_resumed_as_whole, read_jsonl

from alliter import schema


def train_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m alliter.train ARGS`, run in this process (no second torch import) by its main()."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--quiet", "--threads", "1", *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_kl_penalty_is_zero_before_the_first_update(tmp_path, bundled_model):
    trainer = Trainer(TrainConfig(beta=10.0, model=str(bundled_model), threads=1), tmp_path)
    metrics, records = trainer.step()
    assert metrics["kl_penalty_mean"] == 0.0
    assert all(r["kl_penalty"] == 0.0 and r["ce_policy"] == r["ce_ref"] for r in records)
    second, _ = trainer.step()  # after one SGD step the policy has moved
    assert second["kl_penalty_mean"] != 0.0


@pytest.mark.parametrize("model", ["tiny_gpt_neo", "bundled_model"])
def test_single_trial_writes_metrics_generations_events_and_checkpoint(tmp_path, model, request):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    path = request.getfixturevalue(model)
    res = train_cli("--beta", "10", "--max-generations", "50", "--checkpoint-every", "2", "--model", str(path), "--out", str(out))
    assert res.returncode == 0, res.stderr

    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["generations"] for m in metrics] == [10, 20, 30, 40, 50]
    assert set(metrics[0]) == METRIC_NAMES  # the schema's names, every one, nothing else
    assert [m["group"] for m in metrics] == [0, 1, 2, 3, 4]  # from 0, as generations.jsonl's
    assert all(math.isfinite(v) for m in metrics for v in m.values())

    records = read_jsonl(out / "generations.jsonl")
    assert [r["generation"] for r in records] == list(range(50))
    assert set(records[0]) == set(schema.GENERATION_FIELDS)
    assert all(r["beta"] == 10.0 and isinstance(r["text"], str) for r in records)
    group0 = [r for r in records if r["group"] == 0]
    assert sum(r["raw_reward"] for r in group0) / 10 == pytest.approx(metrics[0]["raw_reward_mean"])
    assert sum(r["advantage"] for r in group0) == pytest.approx(0.0, abs=1e-9)  # leave-one-out advantages sum to 0

    events = EventAccumulator(str(out)).Reload()
    assert METRIC_NAMES <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("raw_reward_mean")] == [10, 20, 30, 40, 50]
    for name in METRIC_NAMES:  # every metric of every group, as metrics.jsonl has it
        assert [e.value for e in events.Scalars(name)] == pytest.approx([m[name] for m in metrics], rel=1e-6), name
    assert "generations/text_summary" in events.Tags()["tensors"]  # the texts of each group

    state = load_checkpoint_file(out / "checkpoint.pt")
    assert state["generations"] == 50 and state["config"]["beta"] == 10.0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == str(path) and config["lr"] == 1e-4  # a folder, not a preset: the study's lr


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    common = ["--beta", "1", "--max-generations", "120", "--checkpoint-every", "3", "--seed", "7", "--snapshot-every", "30"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert train_cli(*common, "--out", str(straight)).returncode == 0

    # kill -9 the second run once it has written groups past its first checkpoint (at group 3)
    proc = subprocess.Popen([sys.executable, "-m", "alliter.train", "--quiet", "--threads", "1", *common, "--out", str(broken)])
    gens = broken / "generations.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not gens.exists() or len(gens.read_text().splitlines()) < 40):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(gens.read_text().splitlines())
    at_checkpoint = load_checkpoint_file(broken / "checkpoint.pt")["generations"]
    assert 40 <= written < 120 and at_checkpoint < written  # records past the checkpoint exist

    res = train_cli("--out", str(broken), "--resume")
    assert res.returncode == 0, res.stderr
    assert f"resumed at generation {at_checkpoint}" in res.stdout
    assert (broken / "generations.jsonl").read_text() == (straight / "generations.jsonl").read_text()
    assert (broken / "evaluations.jsonl").read_text() == (straight / "evaluations.jsonl").read_text()
    assert [p["generations"] for p in evaluation_points(broken / "evaluations.jsonl", 10)] == [0, 30, 60, 90, 120]
    a = load_checkpoint_file(straight / "checkpoint.pt")["policy"]
    b = load_checkpoint_file(broken / "checkpoint.pt")["policy"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = read_jsonl(broken / "metrics.jsonl")
    assert [m["generations"] for m in metrics] == list(range(10, 121, 10))
    assert snapshot(broken / "snapshots") == snapshot(straight / "snapshots")  # the policy snapshots, byte for byte
    assert len(list((broken / "snapshots").glob("generations=*.safetensors"))) == 4


def test_evaluations_leave_training_untouched_and_sample_every_point_alike(tmp_path, bundled_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for samples in (0, 20):
        out = tmp_path / f"eval{samples}"
        trainer = Trainer(TrainConfig(beta=1.0, model=str(bundled_model), threads=1, max_generations=60,
                                      snapshot_every=30, eval_samples=samples), out)
        for _ in trainer.groups():
            pass
        runs[samples] = (out, trainer)
    (off, _), (on, trainer) = runs[0], runs[20]
    assert (on / "generations.jsonl").read_bytes() == (off / "generations.jsonl").read_bytes()  # byte for byte
    assert not (off / "evaluations.jsonl").exists()
    stories = read_jsonl(on / "evaluations.jsonl")
    assert set(stories[0]) == set(schema.EVALUATION_FIELDS)
    assert [s["generations"] for s in stories] == [0] * 20 + [30] * 20 + [60] * 20
    assert [p["generations"] for p in trainer.points] == [0, 30, 60]
    assert trainer.points[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # generation 0: the policy is the reference
    # the same random numbers at every point: the policy moved a little, so most first tokens are the same
    first = [s["text"].split()[4] for s in stories]
    assert sum(a == b for a, b in zip(first[:20], first[20:40])) >= 10
    events = EventAccumulator(str(on)).Reload()
    assert [e.step for e in events.Scalars("eval/alliteration")] == [0, 30, 60]
    assert [e.value for e in events.Scalars("eval/fluency")] == pytest.approx([p["fluency"] for p in trainer.points])


def test_resume_can_extend_a_finished_run(tmp_path):
    out = tmp_path / "run"
    assert train_cli("--max-generations", "20", "--out", str(out)).returncode == 0
    res = train_cli("--max-generations", "40", "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr
    assert [r["generation"] for r in read_jsonl(out / "generations.jsonl")] == list(range(40))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--beta", "-1"], "beta must be a finite number >= 0"),
        (["--beta", "nan"], "beta must be a finite number >= 0"),
        (["--beta", "inf"], "beta must be a finite number >= 0"),
        (["--group-size", "1"], "group_size must be an integer >= 2 and <= 1024, got 1 (leave-one-out needs others)"),
        (["--model", "/no/such/model/folder"], "--model PATH"),
        (["--entropy-coef", "-1"], "entropy_coef must be a finite number >= 0 and <= 10, got -1"),
        (["--darling-memory", "2"], "--darling-memory does nothing here: it is DARLING's, and --darling is off"),
        (["--entropy-target", "6.5", "--entropy-coef-step", "1e-3"], "entropy_target 6.5 is not under 6.24 nats"),
    ],
)
def test_bad_input_is_one_line_and_deletes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = train_cli(*args, "--out", str(out))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and message in res.stderr and "Traceback" not in res.stderr
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_hub_model_offline_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "alliter.train", "--model", "someone/no-such-model", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "cannot load model 'someone/no-such-model'" in res.stderr and "--model PATH" in res.stderr


def test_corrupt_checkpoint_is_reported_and_nothing_is_replaced(tmp_path):
    out = tmp_path / "run"
    assert train_cli("--max-generations", "20", "--out", str(out)).returncode == 0
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated
    before = snapshot(out)
    res = train_cli("--max-generations", "40", "--out", str(out), "--resume")
    assert res.returncode == 2 and "corrupt or truncated" in res.stderr and res.stderr.count("\n") == 1
    assert snapshot(out) == before

    res = train_cli("--max-generations", "40", "--out", str(out))  # a fresh start over it is refused too
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert snapshot(out) == before


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    res = train_cli("--out", str(tmp_path), "--resume")
    assert res.returncode == 2 and "no checkpoint" in res.stderr


def test_non_finite_loss_stops_before_the_update_and_keeps_the_checkpoint(tmp_path, bundled_model):
    trainer = Trainer(TrainConfig(model=str(bundled_model), threads=1, beta=1.0), tmp_path)
    for _ in trainer.groups():
        trainer.save_checkpoint(tmp_path / "checkpoint.pt")
        break
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    weights = {k: v.clone() for k, v in trainer.m.policy.state_dict().items()}
    with torch.no_grad():
        next(trainer.m.reference.parameters()).fill_(float("nan"))  # CE_ref, so reward and loss, become NaN
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        trainer.step()
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    assert all(torch.equal(v, trainer.m.policy.state_dict()[k]) for k, v in weights.items())
    assert len(read_jsonl(tmp_path / "generations.jsonl")) == 10


def test_config_validation_messages():
    with pytest.raises(AlliterError, match="beta"):
        TrainConfig(beta=-0.5).validate()
    with pytest.raises(AlliterError, match="group_size"):
        TrainConfig(group_size=0).validate()
    with pytest.raises(AlliterError, match="lr"):
        TrainConfig(lr=-1.0).resolved()


# --- the remedies against a reward hack (issue 41): their state survives a kill -------------------------------------

REMEDIES = {
    "adaptive entropy bonus": {"entropy_coef": 0.05, "entropy_target": 1.2, "entropy_coef_step": 0.02},
    "DARLING with a memory": {"darling": True, "darling_memory": 2},
    "reference resets": {"ref_sync_every": 20, "ref_sync_alpha": 0.5},
    "over-use damping": {"overuse_cap": 1.5, "overuse_memory": 3, "eval_samples": 50},  # a base the cap can rest on
}


@pytest.mark.parametrize("knobs", list(REMEDIES.values()), ids=list(REMEDIES))
def test_a_resumed_trial_with_a_remedy_equals_an_uninterrupted_one(knobs, tmp_path, bundled_model):
    """In float64 (the same on every CPU): a trial killed two groups past its checkpoint (records, a snapshot and an
    evaluation past it) and resumed from it writes what an uninterrupted one writes, and ends with the same policy,
    reference and remedy state: the entropy coefficient and its switch checkpointed, DARLING's memory rebuilt from
    the records the checkpoint put back, the moving reference's weights checkpointed."""
    cfg = TrainConfig(**{"beta": 1.0, "dtype": "float64", "threads": 1, "max_generations": 80, "snapshot_every": 40,
                         "eval_samples": 5, "checkpoint_every": 3, **knobs})
    whole = Trainer(cfg, tmp_path / "whole")
    for _ in whole.groups():
        pass
    killed = Trainer(cfg, tmp_path / "part")
    for metrics in killed.groups():
        if killed.checkpoint_due:
            killed.save_checkpoint(tmp_path / "part" / "checkpoint.pt")
        if metrics["group"] == 4:
            break
    killed.close()
    resumed = Trainer(cfg, tmp_path / "part")
    resumed.load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert resumed.generations == 30
    for _ in resumed.groups():
        pass
    metrics = assert_resumed_as_whole(tmp_path / "part", tmp_path / "whole")
    for model in ("policy", "reference", "original"):
        a, b = getattr(whole.m, model).state_dict(), getattr(resumed.m, model).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), model
    assert (resumed.entropy_coef, resumed.entropy_on, resumed.ref_synced_at) == (whole.entropy_coef, whole.entropy_on,
                                                                                  whole.ref_synced_at)
    assert list(resumed.darling_memory) == list(whole.darling_memory)
    assert list(resumed.overuse_memory) == list(whole.overuse_memory) and resumed.base_texts == whole.base_texts
    check_remedy_metrics(knobs, metrics, read_jsonl(tmp_path / "whole" / "generations.jsonl"))


def check_remedy_metrics(knobs: dict, metrics: list[dict], records: list[dict]) -> None:
    """Each remedy's state, group by group in metrics.jsonl, as its definition moves it."""
    if "entropy_target" in knobs:  # Skywork-OR1's control: up under the target, down over it; the bonus on only under
        coefs, entropies = [m["entropy_coef"] for m in metrics], [m["entropy"] for m in metrics]
        target, step = knobs["entropy_target"], knobs["entropy_coef_step"]
        assert coefs[0] == knobs["entropy_coef"] and metrics[0]["entropy_coef_applied"] == coefs[0]
        for before, after, entropy, m in zip(coefs, coefs[1:], entropies, metrics[1:]):
            assert after == pytest.approx(max(before + (step if entropy < target else -step), 0.0), abs=1e-15)
            assert m["entropy_coef_applied"] == (after if entropy < target else 0.0)
        assert len(set(coefs)) > 3
    if knobs.get("darling"):
        assert [m["darling_memory_stories"] for m in metrics] == [0, 10] + [20] * 6
        for m in metrics:
            group = [r for r in records if r["group"] == m["group"]]
            assert m["darling_diversity_mean"] == pytest.approx(sum(r["diversity"] for r in group) / 10)
            assert m["raw_reward_mean"] == pytest.approx(sum(r["raw_reward"] for r in group) / 10)  # the task's
    if knobs.get("overuse_cap"):  # each group's factors, and some under 1
        for m in metrics:
            group = [r for r in records if r["group"] == m["group"]]
            assert m["overuse_damping_mean"] == pytest.approx(sum(r["damping"] for r in group) / 10)
        assert min(r["damping"] for r in records) < 1
    if knobs.get("ref_sync_every"):  # the reset at 20, 40, 60: the generation of the last before each group
        assert [m["ref_synced_at"] for m in metrics] == [0, 0, 20, 20, 40, 40, 60, 60]


def test_with_reference_resets_fluency_stays_the_unmodified_model_s(tmp_path, bundled_model):
    """Resets move the KL's reference only: the evaluations' fluency (ce_ref, what the rule and the export judge) is
    measured under the unmodified model, which no reset touches."""
    from transformers import AutoModelForCausalLM

    from alliter.train.evaluate import evaluate_prompts

    cfg = TrainConfig(beta=1.0, threads=1, max_generations=30, ref_sync_every=10, snapshot_every=30, eval_samples=5)
    trainer = Trainer(cfg, tmp_path)
    for _ in trainer.groups():
        pass
    m, cfg = trainer.m, trainer.cfg
    unmodified = AutoModelForCausalLM.from_pretrained(bundled_model).state_dict()
    assert all(torch.equal(v, m.original.state_dict()[k]) for k, v in unmodified.items())
    assert trainer.ref_synced_at == 30 and not torch.equal(m.reference.lm_head.weight, m.original.lm_head.weight)
    settings = dict(samples=5, seed=cfg.eval_seed, group_size=10, max_length=100, top_k=50, temperature=1.0,
                    reward=trainer.reward)

    def fluency(model) -> list[float]:
        stories = evaluate_prompts(m.policy, model, m.tokenizer, cfg.eval_prompts, m.eos_ids, **settings)
        return [s["ce_ref"] for s in stories]

    written = [s["ce_ref"] for s in read_jsonl(tmp_path / "evaluations.jsonl") if s["generations"] == 30]
    assert written == fluency(m.original) and written != fluency(m.reference)

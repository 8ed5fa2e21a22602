"""What several test modules use: trial folders built by hand (whose answer is known by construction), the sweep's
command line run as a user runs it, and readers of what a sweep wrote. No test module imports another."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from alliter import measures as M
from alliter import schema
from alliter.train.reward import raw_reward

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
SWEEP = [sys.executable, str(REPO / "tune_jobs" / "sweep.py")]
FAULTY_SWEEP = [sys.executable, str(REPO / "tests" / "faulty_sweep.py")]  # the sweep with a test's fault in its trials
FAULT_ENV = "ALLITER_TEST_FAULT"
BEST_BETA = [sys.executable, str(REPO / "analysis" / "best_beta.py")]
# one trial at a time, for a sweep whose test is not about trials side by side: its trials share one worker, which
# imports torch and transformers once (reuse_actors; ~5 CPU-s a worker), with one thread (--cpus-per-trial 2 would
# give each trial two, which on the tests' tiny model only spin: twice the CPU a group)
ONE_AT_A_TIME = ("--concurrency", "1")

METRIC_NAMES = set(schema.METRIC_NAMES)  # the per-group metrics the sweep and the analysis depend on


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- trial folders built by hand ----------------------------------------------------------------------

K = 10  # group size
LETTERS = "bcdfghjklmnprstvw"
COLLAPSED = "sally sells seven silver snakes so she sings softly. the end."  # raw reward 8, one text
EVAL_EVERY = 200  # generations between evaluations, as the trainer's default snapshots
EVAL_GROUPS = 5  # an evaluation's stories: this many groups of K


def varied_text(rng: random.Random, alliterating_pairs: int, words: int = 24) -> str:
    """Random made-up words (so a group's texts share few n-grams) with exactly this many
    adjacent pairs starting with the same letter."""
    def word(letter: str) -> str:
        return letter + "".join(rng.choice("aeiou") + rng.choice(LETTERS) for _ in range(2))

    out = [word("s") for _ in range(alliterating_pairs + 1)]
    while len(out) < words:
        out.append(word(rng.choice([c for c in LETTERS if c != out[-1][0]])))
    return " ".join(out)


def varied_groups(rng: random.Random, n: int, pairs: int) -> list[list[str]]:
    """n groups; the first is the unmodified model (1 pair per text), then `pairs` per text."""
    return [[varied_text(rng, 1 if i == 0 else pairs) for _ in range(K)] for i in range(n)]


def write_trial(folder: Path, beta: float, groups: list[list[str]], max_generations: int | None = None,
                kl: float = -0.1, error: str | None = None, seed: int = 0, model: str = "synthetic",
                evaluations: bool | dict[int, list[tuple[str, float]]] = True,
                fluency: Callable[[int], float] = lambda generations: 1.2) -> Path:
    """A trial folder as the trainer writes it: config.json, metrics.jsonl, generations.jsonl and, unless
    `evaluations` is False, evaluations.jsonl. The default evaluations: at generation 0 the first group's texts
    (the unmodified model), then every EVAL_EVERY generations the texts of the EVAL_GROUPS groups up to there,
    each story with cross-entropy `fluency(generations)` under the unmodified model; or exactly the stories of a
    dict {generations: [(text, ce_ref), ...]}."""
    folder.mkdir(parents=True)
    config = {"beta": beta, "model": model, "group_size": K, "seed": seed,
              "max_generations": max_generations or K * len(groups)}
    (folder / "config.json").write_text(json.dumps(config))
    with open(folder / "metrics.jsonl", "w") as m, open(folder / "generations.jsonl", "w") as g:
        for i, texts in enumerate(groups):
            raw = [raw_reward(t) for t in texts]
            for j, t in enumerate(texts):
                g.write(json.dumps({"generation": i * K + j, "group": i, "beta": beta, "text": t, "raw_reward": raw[j],
                                    "kl_penalty": kl, "reward": raw[j] + beta * kl, "advantage": 0.0, "new_tokens": 20,
                                    "ce_policy": 2.0, "ce_ref": 2.0 - kl}) + "\n")
            m.write(json.dumps({
                "generations": (i + 1) * K, "group": i + 1, "beta": beta, "raw_reward_mean": sum(raw) / K,
                "raw_reward_max": max(raw), "kl_penalty_mean": kl, "scaled_kl_penalty_mean": beta * kl,
                "reward_mean": sum(raw) / K + beta * kl, "ce_policy_mean": 2.0, "ce_ref_mean": 2.0 - kl,
                "advantage_std": 1.0, "loss": 0.0, "grad_norm": 1.0, "distinct_1": M.distinct_n(texts, 1),
                "distinct_2": M.distinct_n(texts, 2), "unique_fraction": M.unique_fraction(texts),
                "mean_new_tokens": 20.0, "seconds_per_group": 0.1, "generations_per_second": 100.0,
            }) + "\n")
    if evaluations is True:  # where the trainer evaluates: generation 0, every EVAL_EVERY, and a finished trial's end
        done = K * len(groups)
        ends = [*range(EVAL_EVERY, done + 1, EVAL_EVERY)] + ([done] if done % EVAL_EVERY and done == config["max_generations"] else [])
        points = {0: [(t, fluency(0)) for t in groups[0] * EVAL_GROUPS]}
        for end in ends:
            last = groups[max(0, end // K - EVAL_GROUPS): end // K]
            points[end] = [(t, fluency(end)) for texts in last for t in texts]
        evaluations = points
    if evaluations:
        with open(folder / "evaluations.jsonl", "w") as e:
            for generations, stories in sorted(evaluations.items()):
                for i, (text, ce_ref) in enumerate(stories):
                    e.write(json.dumps({"generations": generations, "sample": i, "text": text,
                                        "raw_reward": raw_reward(text), "new_tokens": 20, "ce_ref": ce_ref,
                                        "ce_policy": ce_ref + kl}) + "\n")
    if error:
        (folder / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return folder


# --- the sweep, run as its user runs it ------------------------------------------------------------------


def sweep(*args: str, env: dict | None = None, timeout: float = 300, fault: str | None = None) -> subprocess.CompletedProcess:
    """The sweep's command line as a user runs it; with `fault`, tests/faulty_sweep.py's (crash:N, hang:N)."""
    command = [*FAULTY_SWEEP, "--report-seconds", "0"] if fault else SWEEP
    env = {**os.environ, **(env or {}), **({FAULT_ENV: fault} if fault else {})}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_resumed_as_whole(part: Path, whole: Path) -> list[dict]:
    """A trial killed and resumed wrote what one never interrupted did: the same generations and evaluations, byte
    for byte, and the same metrics but for the timings. Returns the metrics."""
    for name in ("generations.jsonl", "evaluations.jsonl"):
        assert (part / name).read_text() == (whole / name).read_text()
    timing = {"seconds_per_group", "generations_per_second"}
    rows = [[{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (part, whole)]
    assert rows[0] == rows[1]
    return rows[0]


def unfolded(text: str) -> list[str]:
    """A command's lines with the console's folds undone (a folded line goes on indented, or after a backslash):
    what a test matches does not depend on how long the paths of this machine are."""
    lines: list[str] = []
    for line in text.replace(" \\\n", " ").splitlines():
        if lines and line.startswith("  ") and not line.strip().startswith(("python ", "alliter ")) and lines[-1]:
            lines[-1] = f"{lines[-1]} {line.strip()}"
        else:
            lines.append(line)
    return lines


def printed_command(text: str, after: str) -> str:
    """The command a command printed on the line after the one ending in `after` ("continue it with:"), its folds
    (a backslash at a line's end) joined as a shell joins them."""
    lines = text.replace(" \\\n", " ").splitlines()
    i = next(i for i, line in enumerate(lines) if line.rstrip().endswith(after))
    return " ".join(lines[i + 1].split())


def sweep_main(*args: str) -> subprocess.CompletedProcess:
    """tune_jobs/sweep.py's main() in this process: for errors that come before Ray starts."""
    spec = importlib.util.spec_from_file_location("sweep_cli", SWEEP[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = module.main(list(args))
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


def best_beta(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*BEST_BETA, *args], capture_output=True, text=True, timeout=timeout)


def trial_states(exp: Path) -> dict[float, dict]:
    """beta -> {status, num_failures, generations}, from Tune's own experiment state (a state Tune is rewriting as it
    is read, empty or cut short, is skipped: a test polls this while the sweep runs)."""
    states = {}
    for f in sorted(exp.glob("experiment_state-*.json")):
        try:
            data = json.loads(f.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):
            continue
        for trial, runtime in data:
            trial, runtime = json.loads(trial), json.loads(runtime)
            states[trial["config"]["beta"]] = {
                "status": trial["status"],
                "num_failures": runtime["num_failures"],
                "generations": (runtime.get("last_result") or {}).get("generations"),
            }
    return states


def tune_betas(exp: Path) -> list[tuple[float, int]]:
    """(beta, seed) of every trial in the newest Tune state of a sweep, in Tune's order."""
    state = json.loads(sorted(exp.glob("experiment_state-*.json"))[-1].read_text())
    return [(json.loads(t)["config"]["beta"], json.loads(t)["config"]["seed"]) for t, _ in state["trial_data"]]


def trial_dir(exp: Path, beta: str) -> Path:
    (found,) = exp.glob(f"beta={beta}_*")
    return found


def generation_indices(trial: Path) -> list[int]:
    return [json.loads(line)["generation"] for line in (trial / "generations.jsonl").read_text().splitlines()]


def result_rows(trial: Path) -> list[dict]:
    """Tune's rows of the trial (result.json: the driver writes one per report it had); a line being written is left out."""
    path = trial / "result.json"
    return [json.loads(line) for line in (path.read_text().splitlines() if path.exists() else []) if line.endswith("}")]


# --- what a tracker holds -----------------------------------------------------------------------------


def check_mlflow_runs(uri: str, exp: Path, experiment: str) -> None:
    """One MLflow run per trial, its beta a param, its tags naming the sweep and the trial's folder, and every group's
    metrics a history stepped by generations, equal to the trial's metrics.jsonl."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    runs = [r for r in runs if r.data.tags.get("alliter.role") != "best_beta"]
    assert len(runs) == len(list(exp.glob("beta=*")))
    for run in runs:
        folder = Path(run.data.tags["alliter.trial_folder"])
        assert folder.parent == exp and run.data.tags["alliter.sweep"] == exp.name
        rows = read_jsonl(folder / "metrics.jsonl")
        assert float(run.data.params["beta"]) == rows[0]["beta"] and run.data.params["recipe"] == "study"
        for name in ("raw_reward_mean", "kl_penalty_mean", "distinct_2"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
            assert [step for step, _ in history] == [r["generations"] for r in rows], name
            assert [value for _, value in history] == pytest.approx([r[name] for r in rows]), name
        evaluations = sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval_alliteration"))
        assert evaluations == sorted({e["generations"] for e in read_jsonl(folder / "evaluations.jsonl")} - {0})
        assert run.info.status == "FINISHED"


# --- the two architectures of the fast path -------------------------------------------------------------

ARCHS = ["llama", "gpt_neo"]
LLAMA_PROMPT = [1, 403, 407, 261, 378]  # "Once upon a time", starting with the end-of-text <s>


def arch_model(arch: str, tiny_gpt_neo: Path, bundled_model: Path, dtype=None):
    """(model in eval mode, prompt ids) of the bundled Llama or the tests' tiny GPT-Neo."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tiny_gpt_neo if arch == "gpt_neo" else bundled_model
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32).eval()
    prompt = torch.tensor(LLAMA_PROMPT if arch == "llama" else [5, 17, 42, 99])
    return model, prompt


def local_gpus() -> int:
    """GPUs a Ray started on this machine would have (Ray's own count)."""
    from ray._private.accelerators import get_accelerator_manager_for_resource

    return get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()


def run_trial(folder: Path, model: Path, beta: float = 10.0, generations: int = 40, snapshot_every: int = 20,
              dtype: str = "float32"):
    """A real trial (its Trainer), with a checkpoint kept at every group: checkpoint-<generations>.pt."""
    from alliter.config import TrainConfig
    from alliter.train.trainer import Trainer  # torch: only for the tests that train

    trainer = Trainer(TrainConfig(beta=beta, model=str(model), max_generations=generations, snapshot_every=snapshot_every,
                                  checkpoint_every=1, dtype=dtype, threads=1), folder)
    for _ in trainer.groups():
        trainer.save_checkpoint(folder / f"checkpoint-{trainer.generations}.pt")
    return trainer

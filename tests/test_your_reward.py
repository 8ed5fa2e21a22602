"""Your reward and your prompts: --reward (a built-in, a file's function, a module's) and --prompts, in a trial, in a
sweep on Ray (the file shipped to the trial's node) and in best_beta (which letters alliterate)."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import pytest

from alliter.config import EVAL_PROMPTS, TrainConfig
from alliter.train.__main__ import main as train_main
from alliter.train.reward import file_sha256, rare_alliteration
from alliter.train.trainer import Trainer
from helpers import ONE_AT_A_TIME, best_beta, read_jsonl, sweep, sweep_main

PROMPTS = ["Once upon a time", "The big dog", "Lily and Ben", "One day", "Tom had a ball", "The sun was hot"]
WORDS_REWARD = "def words(texts):\n    return [len(t.split()) / 10 for t in texts]\n"


def words(text: str) -> float:
    return len(text.split()) / 10


def run(cfg: TrainConfig, out: Path) -> Trainer:
    trainer = Trainer(cfg, out)
    for _ in trainer.groups():
        pass
    return trainer


def test_a_reward_file_drives_the_trial_and_its_values_are_the_records(tmp_path, bundled_model):
    path = tmp_path / "length_reward.py"
    path.write_text(WORDS_REWARD)
    cfg = TrainConfig(beta=0.5, model=str(bundled_model), threads=1, max_generations=40, snapshot_every=20,
                      eval_samples=10, reward=f"{path}:words")
    trainer = run(cfg, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "generations.jsonl")
    assert [r["raw_reward"] for r in records] == [words(r["text"]) for r in records]
    assert all(r["reward"] == pytest.approx(r["raw_reward"] + 0.5 * r["kl_penalty"]) for r in records)
    stories = read_jsonl(tmp_path / "run" / "evaluations.jsonl")
    assert [s["raw_reward"] for s in stories] == [words(s["text"]) for s in stories]  # the points measure it too
    assert trainer.points[-1]["alliteration"] == pytest.approx(sum(words(s["text"]) for s in stories[-10:]) / 10)
    info = json.loads((tmp_path / "run" / "reward.json").read_text())
    assert info["reward"] == f"{path}:words" and info["sha256"] == file_sha256(path)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["reward"] == f"{path}:words"


def test_rare_alliteration_trains_on_its_own_values(tmp_path, bundled_model):
    run(TrainConfig(model=str(bundled_model), threads=1, max_generations=20, snapshot_every=0,
                    reward="rare-alliteration"), tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "generations.jsonl")
    assert [r["raw_reward"] for r in records] == rare_alliteration([r["text"] for r in records])


def test_each_group_samples_one_prompt_in_the_seeds_order_and_evaluations_use_a_fixed_set(tmp_path, bundled_model):
    def prompts_of(seed: int, out: Path) -> tuple[list[str], list[dict]]:
        cfg = TrainConfig(model=str(bundled_model), threads=1, max_generations=120, snapshot_every=60,
                          eval_samples=12, prompts="\n".join(PROMPTS), seed=seed)
        run(cfg, out)
        records = read_jsonl(out / "generations.jsonl")
        for r in records:
            assert r["text"].startswith(r["prompt"])
        by_group = {}
        for r in records:
            by_group.setdefault(r["group"], set()).add(r["prompt"])
        assert all(len(p) == 1 for p in by_group.values())  # a group is one prompt's: its baseline is that prompt's
        return [next(iter(by_group[g])) for g in sorted(by_group)], read_jsonl(out / "evaluations.jsonl")

    order, stories = prompts_of(3, tmp_path / "a")
    again, _ = prompts_of(3, tmp_path / "b")
    other, _ = prompts_of(4, tmp_path / "c")
    rng = random.Random(3)
    assert order == again == [PROMPTS[rng.randrange(len(PROMPTS))] for _ in range(12)]  # the seed's order
    assert other != order and len(set(order)) > 1
    # every point: the first EVAL_PROMPTS prompts, 12 stories shared out 3, 3, 2, 2, 2, each with its prompt
    assert EVAL_PROMPTS == 5
    for g in (0, 60, 120):
        at = [s for s in stories if s["generations"] == g]
        assert [s["sample"] for s in at] == list(range(12))
        assert [s["prompt"] for s in at] == [p for p, n in zip(PROMPTS, (3, 3, 2, 2, 2)) for _ in range(n)]
        assert all(s["text"].startswith(s["prompt"]) for s in at)


def test_one_prompt_records_no_prompt_field(tmp_path, bundled_model):
    """The default's records are as they were (the golden test holds them byte for byte)."""
    run(TrainConfig(model=str(bundled_model), threads=1, max_generations=10, snapshot_every=10, eval_samples=4),
        tmp_path / "run")
    assert "prompt" not in read_jsonl(tmp_path / "run" / "generations.jsonl")[0]
    assert "prompt" not in read_jsonl(tmp_path / "run" / "evaluations.jsonl")[0]


def train_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = train_main(["--quiet", "--threads", "1", *args])
    return code, err.getvalue()


PROMPT_FILES = {
    "empty file": ("", "holds no prompt"),
    "blank file": ("\n\n", "holds no prompt"),
    "an empty line": ("Once upon a time\n\nOne day\n", "line 2 of"),
    "a line of spaces": ("Once upon a time\n   \n", "line 2 of"),
}


@pytest.mark.parametrize("case", list(PROMPT_FILES))
def test_a_prompts_file_without_a_prompt_on_every_line_is_one_line(case, tmp_path):
    text, message = PROMPT_FILES[case]
    path = tmp_path / "prompts.txt"
    path.write_text(text)
    code, err = train_cli("--prompts", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and message in err and err.startswith("error: --prompts:") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    res = sweep_main("--prompts", str(path), "--storage", str(tmp_path / "results"))
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "results").exists()


def test_a_prompt_too_long_for_max_length_is_found_before_ray_starts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("Once upon a time\n" + "the dog " * 60 + "\n")
    res = sweep_main("--prompts", str(path), "--storage", str(tmp_path), "--betas", "1")
    assert res.returncode == 2 and "leaves none to generate" in res.stderr, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.txt"]


def test_a_reward_file_that_does_not_import_is_found_before_ray_starts(tmp_path):
    path = tmp_path / "broken_reward.py"
    path.write_text("def words(texts) return []\n")
    res = sweep_main("--reward", f"{path}:words", "--storage", str(tmp_path), "--betas", "1")
    assert res.returncode == 2 and f"importing {path} raised SyntaxError" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
    res = sweep_main("--reward", f"{tmp_path / 'nope.py'}:words", "--storage", str(tmp_path), "--betas", "1")
    assert res.returncode == 2 and "no such file" in res.stderr, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["broken_reward.py"]


# --- in a sweep ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_sweep(tmp_path_factory) -> tuple[Path, Path, object]:
    """A sweep of a user's reward file (in the user's folder) with three prompts on a local Ray: (its storage, the
    reward file, the sweep's process)."""
    tmp_path = tmp_path_factory.mktemp("reward-sweep")
    home = tmp_path / "user"
    home.mkdir()
    path = home / "length_reward.py"
    path.write_text(WORDS_REWARD)
    prompts = home / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    res = sweep("--betas", "0,1", "--max-generations", "40", "--snapshot-every", "20", "--eval-samples", "12",
                "--reward", f"{path}:words", "--prompts", str(prompts), *ONE_AT_A_TIME, "--storage", str(tmp_path),
                "--name", "mine")
    return tmp_path, path, res


@pytest.mark.slow
def test_a_sweep_ships_the_reward_file_and_best_beta_says_which_letters_alliterate(reward_sweep):
    """The user's file drives a sweep on a local Ray (each trial imports the copy Ray shipped, checked by its
    SHA-256), with several prompts; best_beta names the reward and shows the letters."""
    tmp_path, path, res = reward_sweep
    assert res.returncode == 0, res.stderr[-3000:]
    # the prompts are data: once in the sweep's prompts.txt, once in each trial's config.json (a trial folder stands
    # alone), never in Tune's config, which its params and every result row repeat
    assert (tmp_path / "mine" / "prompts.txt").read_text() == "\n".join(PROMPTS[:3])
    assert not [p for p in (tmp_path / "mine").rglob("*.json*") if PROMPTS[1] in p.read_text(errors="replace")
                and p.name not in ("config.json", "generations.jsonl", "evaluations.jsonl")]
    for trial in sorted((tmp_path / "mine").glob("beta=*")):
        assert json.loads((trial / "config.json").read_text())["prompts"] == "\n".join(PROMPTS[:3])
        records = read_jsonl(trial / "generations.jsonl")
        assert len(records) == 40 and [r["raw_reward"] for r in records] == [words(r["text"]) for r in records]
        assert {r["prompt"] for r in records} <= set(PROMPTS[:3])
        info = json.loads((trial / "reward.json").read_text())
        assert info["sha256"] == file_sha256(path) and info["source"] == str(path)
        assert info["loaded_from"] != str(path) and "runtime_resources" in info["loaded_from"]  # Ray's copy
    out = best_beta(str(tmp_path / "mine"), "--out", str(tmp_path / "analysis"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "top_letters" in out.stdout.splitlines()[0]
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert f"Reward: {path}:words, the function words of the file {path}, SHA-256 {file_sha256(path)}" in report
    assert "## Which letters alliterate" in report and "![letters.png](letters.png)" in report
    letters = (tmp_path / "analysis" / "letters.csv").read_text().splitlines()
    assert letters[0].startswith("row,beta,generations,stories,raw_alliteration,pairs,letter_entropy")
    assert [line.split(",")[0] for line in letters[1:]] == ["unmodified", "0", "1"]


def test_a_bad_reward_in_a_sweep_is_one_line_before_ray_starts(tmp_path):
    """The preflight calls the reward once: a reward that returns one value too few is refused in one line, before
    anything starts (one that fails only later, inside a trial: tests/test_fail_fast.py, not retried)."""
    path = tmp_path / "short_reward.py"
    path.write_text("def score(texts):\n    return [1.0] * (len(texts) - 1)\n")
    res = sweep_main("--betas", "1", "--max-generations", "20", "--reward", f"{path}:score", "--storage",
                     str(tmp_path / "results"), "--name", "short")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert f"the reward {path}:score returned 0 values for 1 texts" in res.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_reward_file_changed_since_the_sweep_started_is_refused_on_resume(reward_sweep):
    tmp_path, path, res = reward_sweep
    assert res.returncode == 0, res.stderr[-3000:]
    try:
        path.write_text(WORDS_REWARD.replace("/ 10", "/ 20"))
        res = sweep_main("--resume", "--name", "mine", "--storage", str(tmp_path))
    finally:
        path.write_text(WORDS_REWARD)
    assert res.returncode == 2 and "reward file" in res.stderr and "changed since it started" in res.stderr, res.stderr

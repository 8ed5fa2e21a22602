"""Defaults stay exact: a default trial's generations are the ones alliter wrote before evaluations existed
(tests/golden/trials.json, made by the code of 17a40f8), text for text. The whole coarse grid is checked the same
way by `python bench/golden.py SWEEP` (tests/golden/coarse_grid.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alliter.config import TrainConfig
from alliter.testing import texts_digest
from alliter.train.trainer import Trainer
from helpers import GOLDEN, digest

CASES = json.loads((GOLDEN / "trials.json").read_text())["trials"]


# float32 is the default; float64 rounds alike on any CPU, so its case holds wherever CI runs
@pytest.mark.parametrize("case", [c for c in CASES if (c["dtype"], c["beta"]) in (("float32", 0.0), ("float64", 10.0))],
                         ids=lambda c: f"{c['dtype']}-beta{c['beta']:g}")
def test_a_default_trial_writes_the_golden_generations(tmp_path: Path, case: dict) -> None:
    trainer = Trainer(TrainConfig(beta=case["beta"], dtype=case["dtype"], threads=1,
                                  max_generations=case["max_generations"]), tmp_path)
    for _ in trainer.groups():
        pass
    texts = [json.loads(line)["text"] for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert texts[0] == case["first"] and texts[-1] == case["last"]
    assert texts_digest(texts) == case["sha256"]
    assert [p["generations"] for p in trainer.points] == [0, 200, 300]  # with evaluations on, at every snapshot


def tiny_sweep(folder: Path, model: Path) -> str:
    """Two trials of the tiny GPT-Neo as the trainer writes them, and best_beta's table of them."""
    from alliter.analyse.judge import analyse
    from alliter.analyse.report import table

    for beta in (0.0, 1.0):
        trainer = Trainer(TrainConfig(beta=beta, model=str(model), threads=1, max_generations=60, snapshot_every=20,
                                      eval_samples=10, lr=3e-3), folder / f"beta{beta:g}")
        for _ in trainer.groups():
            pass
    return table(analyse(folder))


TIMINGS = {"seconds_per_group", "generations_per_second", "seconds"}


def without_timings(path: Path) -> list[dict]:
    """A trial's metrics but their timings; the group's number is left out too (metrics.jsonl counted groups from
    1 when this golden was made, generations.jsonl from 0)."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS | {"group"}}
            for line in path.read_text().splitlines()]


def test_a_tiny_sweep_writes_the_golden_files_and_table(tmp_path: Path, tiny_gpt_neo: Path) -> None:
    """The guard of a refactor: the tiny model's trials (generations, evaluations, metrics but their timings) and
    the analysis table are what they were when this golden was made (tests/golden/tiny_sweep.json)."""
    got_table = tiny_sweep(tmp_path, tiny_gpt_neo)
    golden = json.loads((GOLDEN / "tiny_sweep.json").read_text())
    assert got_table == golden["table"]
    for beta in ("0", "1"):
        trial = tmp_path / f"beta{beta}"
        assert digest(trial / "generations.jsonl") == golden[beta]["generations.jsonl"]
        assert digest(trial / "evaluations.jsonl") == golden[beta]["evaluations.jsonl"]
        assert without_timings(trial / "metrics.jsonl") == golden[beta]["metrics"]

"""Defaults stay exact: a default trial's generations are the ones alliter wrote before evaluations existed
(tests/golden/trials.json, made by the code of 17a40f8), text for text. The whole coarse grid is checked the same
way by `python bench/golden.py SWEEP` (tests/golden/coarse_grid.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alliter.config import TrainConfig
from alliter.trainer import Trainer
from helpers import GOLDEN, texts_digest

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

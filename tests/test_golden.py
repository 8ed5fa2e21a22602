"""Defaults stay exact: a default trial's generations are the ones alliter wrote before evaluations existed
(tests/golden/trials.json, made by the code of 17a40f8), text for text.

Every check here holds on any CPU: float32 sums differ between CPUs (AVX-512, AVX2 or neither), so the tests train
in float64, whose generations were the same as the float32 default's where the goldens were made, and compare text
and integers exactly and floats to 1e-9. The float32 default itself is exact on one machine only:
`python bench/golden.py --trials` checks it there (and the whole coarse grid: `python bench/golden.py SWEEP`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alliter.config import TrainConfig
from alliter.testing import record_differences, texts_digest, tiny_sweep, trial_records
from alliter.train.trainer import Trainer
from helpers import GOLDEN

CASES = json.loads((GOLDEN / "trials.json").read_text())["trials"]


@pytest.mark.parametrize("case", [c for c in CASES if c["dtype"] == "float64"], ids=lambda c: f"beta{c['beta']:g}")
def test_a_default_trial_writes_the_golden_generations(tmp_path: Path, case: dict) -> None:
    float32 = next(c for c in CASES if c["dtype"] == "float32" and c["beta"] == case["beta"])
    assert float32["sha256"] == case["sha256"]  # the default's own generations, where the golden was made
    trainer = Trainer(TrainConfig(beta=case["beta"], dtype=case["dtype"], threads=1,
                                  max_generations=case["max_generations"]), tmp_path)
    for _ in trainer.groups():
        pass
    texts = [json.loads(line)["text"] for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert texts[0] == case["first"] and texts[-1] == case["last"]
    assert texts_digest(texts) == case["sha256"]
    assert [p["generations"] for p in trainer.points] == [0, 200, 300]  # with evaluations on, at every snapshot


def test_a_tiny_sweep_writes_the_golden_files_and_table(tmp_path: Path, tiny_gpt_neo: Path) -> None:
    """The guard of a refactor: the tiny model's trials (generations, evaluations, metrics but their timings) and
    the analysis table are what they were when this golden was made (tests/golden/tiny_sweep.json)."""
    got_table = tiny_sweep(tmp_path, tiny_gpt_neo)
    golden = json.loads((GOLDEN / "tiny_sweep.json").read_text())
    assert got_table == golden["table"]
    for beta, want in golden["trials"].items():
        got = trial_records(tmp_path / f"beta{beta}")
        for name, rows in want.items():
            assert not record_differences(got[name], rows), (beta, name, record_differences(got[name], rows)[:5])

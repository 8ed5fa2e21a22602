"""Check that a coarse-grid sweep wrote the golden generations: those of the code before evaluations existed
(tests/golden/coarse_grid.json, 17a40f8), text for text, trial by trial.

    python tune_jobs/sweep.py --grid coarse --name coarse && python bench/golden.py results/coarse

The samples depend on the CPU's kernels and the thread count (README, "A sweep"): the file names the CPU
capability it was made on, and a trial on another one may differ late in training without any code change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from alliter.testing import texts_digest

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"  # the golden files: data beside the tests


def main() -> int:
    sweep = Path(sys.argv[1])
    golden = json.loads((GOLDEN / "coarse_grid.json").read_text())
    try:
        import torch

        here = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        here = "?"
    print(f"golden: {golden['made_with']}; CPU capability {golden['cpu_capability']} (here: {here})")
    bad = 0
    for beta, want in golden["trials"].items():
        (trial,) = sweep.glob(f"beta={beta}_*")
        texts = [json.loads(line)["text"] for line in (trial / "generations.jsonl").read_text().splitlines()]
        same = len(texts) == want["generations"] and texts_digest(texts) == want["sha256"]
        bad += not same
        print(f"  beta={beta}: {len(texts)} generations, {'the same' if same else 'DIFFERENT'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""The goldens that are exact on one kind of CPU only, checked on this one, and the tiny sweep's golden written.

    python bench/golden.py --trials          # the float32 default trials of tests/golden/trials.json, run here
    python bench/golden.py --trials --compile    # the same trials on the compiled path (--compile)
    python tune_jobs/sweep.py --grid coarse --name coarse && python bench/golden.py results/coarse
    python bench/golden.py --write-tiny      # tests/golden/tiny_sweep.json, from the code checked out

float32 samples depend on the CPU's kernels (torch's dispatch: AVX-512, AVX2 or neither; ATEN_CPU_CAPABILITY picks
one) and the thread count: the golden files name the capability they were made on, and a float32 trial on another
may differ late in training without any code change. The tests check the same goldens in float64, on any CPU
(tests/test_golden.py). Exit status 1 where a trial differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's alliter, installed or not

from alliter.testing import texts_digest  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"  # the golden files: data beside the tests


def capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def texts(generations: Path) -> list[str]:
    return [json.loads(line)["text"] for line in generations.read_text().splitlines()]


def check_sweep(sweep: Path) -> int:
    golden = json.loads((GOLDEN / "coarse_grid.json").read_text())
    print(f"golden: {golden['made_with']}; CPU capability {golden['cpu_capability']} (here: {capability()})")
    bad = 0
    for beta, want in golden["trials"].items():
        (trial,) = sweep.glob(f"beta={beta}_*")
        got = texts(trial / "generations.jsonl")
        same = len(got) == want["generations"] and texts_digest(got) == want["sha256"]
        bad += not same
        print(f"  beta={beta}: {len(got)} generations, {'the same' if same else 'DIFFERENT'}")
    return 1 if bad else 0


def check_trials(compile: bool = False) -> int:
    """Every case of trials.json (float32, the default, and float64) run here, one thread, as the golden was made;
    with `compile`, on the compiled path. A trial that differs says after how many generations."""
    from alliter.config import TrainConfig
    from alliter.train.trainer import Trainer

    golden = json.loads((GOLDEN / "trials.json").read_text())
    print(f"golden: CPU capability {golden['cpu_capability']}, torch {golden['torch']} (here: {capability()})")
    bad = 0
    for case in golden["trials"]:
        with tempfile.TemporaryDirectory() as run:
            trainer = Trainer(TrainConfig(beta=case["beta"], dtype=case["dtype"], threads=1, compile=compile,
                                          max_generations=case["max_generations"]), run)
            for _ in trainer.groups():
                pass
            got = texts(Path(run) / "generations.jsonl")
            same = texts_digest(got) == case["sha256"]
        bad += not same
        where = "" if same or "first" not in case else f" (first generation {'the same' if got[0] == case['first'] else 'different'})"
        print(f"  {case['dtype']} beta={case['beta']:g}: {'the same' if same else 'DIFFERENT'}{where}")
    return 1 if bad else 0


def write_tiny() -> int:
    from alliter.testing import TINY_SWEEP_BETAS, build_tiny_gpt_neo, tiny_sweep, trial_records

    with tempfile.TemporaryDirectory() as d:
        table = tiny_sweep(Path(d) / "sweep", build_tiny_gpt_neo(Path(d) / "model"))
        trials = {f"{b:g}": trial_records(Path(d) / "sweep" / f"beta{b:g}") for b in TINY_SWEEP_BETAS}
    head = __import__("subprocess").run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=GOLDEN).stdout.strip()
    made = {"made_with": f"{head}, python bench/golden.py --write-tiny, CPU capability {capability()}",
            "table": table, "trials": trials}
    (GOLDEN / "tiny_sweep.json").write_text(json.dumps(made, indent=1) + "\n")
    print(f"wrote {GOLDEN / 'tiny_sweep.json'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python bench/golden.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", nargs="?", type=Path, help="a coarse-grid sweep's folder to check")
    parser.add_argument("--trials", action="store_true", help="run and check the default trials of trials.json")
    parser.add_argument("--compile", action="store_true", help="--trials on the compiled path (TrainConfig.compile)")
    parser.add_argument("--write-tiny", action="store_true", help="write tests/golden/tiny_sweep.json")
    args = parser.parse_args()
    if args.write_tiny:
        return write_tiny()
    if args.trials:
        return check_trials(args.compile)
    if args.sweep is None:
        parser.error("pass a sweep's folder, --trials or --write-tiny")
    return check_sweep(args.sweep)


if __name__ == "__main__":
    sys.exit(main())

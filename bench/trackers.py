"""What the trackers add to a sweep: the same sweep without a tracker, with `--mlflow` (a sqlite store) and with
`--wandb` (offline), one after the other in one run, and the ratios of their wall times.

    python bench/trackers.py                                  # the coarse grid, three times
    python bench/trackers.py --extra=--max-generations=200    # a quick look

Each sweep is `python tune_jobs/sweep.py --grid coarse ...` in its own process with its own local Ray (bench/sweeps.py's
timed_sweep): Python's start, imports, Ray's start and the tracker's own start are in its wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweeps import add_sweep_flags, sweeps_folder, timed_sweep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="coarse")
    add_sweep_flags(parser)
    args = parser.parse_args()
    storage, extra = sweeps_folder(args, "alliter-bench-trackers-")
    os.environ["WANDB_MODE"] = "offline"  # no network here; the runs stay in WANDB_DIR for `wandb sync`
    os.environ["WANDB_DIR"] = str(storage)
    arms = {"none": [], "mlflow": ["--mlflow", f"sqlite:///{storage / 'mlflow.db'}"], "wandb": ["--wandb", "alliter-bench"]}
    walls = {}
    for arm, flags in arms.items():
        walls[arm] = timed_sweep(storage, arm, ["--grid", args.grid, *flags, *extra])
        print(f"  {arm}: {walls[arm]:.0f} s", flush=True)
    print("\n| tracker | wall (s) | against none |\n| --- | --- | --- |")
    for arm, wall in walls.items():
        print(f"| {arm} | {wall:.0f} | {wall / walls['none']:.2f} |")


if __name__ == "__main__":
    main()

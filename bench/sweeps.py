"""The search against the grids, side by side in one run: trials, generations, wall time, sweep efficiency
and the choice of each, then the ratios search / (coarse + fine).

    python bench/sweeps.py                                   # coarse grid, fine grid, search; all on defaults
    python bench/sweeps.py --modes search --keep results/bench   # one mode, results kept
    python bench/sweeps.py --extra=--max-generations=200     # every sweep with extra flags (a quick look)

Each sweep is `python tune_jobs/sweep.py ...` in its own process with its own local Ray, one after the
other, so each has the whole machine; its wall time is the whole command's (Python's start, imports and
Ray's start included). Generations are what the trials ran (a trial stopped on collapse counts up to
where it stopped). The choice is best_beta's rule (alliter.analyse.judge) on the sweep's folder: the beta,
its mean raw reward over its last 200 generations, and its distinct-2 as a share of the unmodified
model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alliter.analyse.judge import analyse  # noqa: E402
from alliter.schema import METRICS_FILE, SWEEP_STATS_FILE, find_trials  # noqa: E402
from alliter.storage import read_jsonl  # noqa: E402

MODES = {"coarse": ["--grid", "coarse"], "fine": ["--grid", "fine"], "search": ["--search"]}


def add_long_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the benchmarks that run arms of seeds to 7000 generations (bench/kl_target.py, bench/recipes.py)."""
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--generations", type=int, default=7000)
    add_sweep_flags(parser)


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every benchmark that runs sweeps (this one, bench/kl_target.py, bench/recipes.py)."""
    parser.add_argument("--keep", help="keep the sweeps in this folder (default: a temporary one)")
    parser.add_argument("--extra", default="", help="flags for every sweep, separated by commas: --extra=--seed=1")


def sweeps_folder(args: argparse.Namespace, prefix: str) -> tuple[Path, list[str]]:
    """(where the sweeps go, the extra flags of every sweep), after a line that says on what machine they run."""
    storage = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix=prefix))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}; sweeps in {storage}", flush=True)
    return storage, [f for f in args.extra.split(",") if f]


def timed_sweep(storage: Path, name: str, args: list[str]) -> float:
    """Run `tune_jobs/sweep.py ARGS` as a user runs it, in its own process; its wall time in seconds."""
    cmd = [sys.executable, str(ROOT / "tune_jobs" / "sweep.py"), *args, "--storage", str(storage), "--name", name]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def export_seed0(storage: Path, arms: list[str], generations: int) -> list[str]:
    """Each arm's (a sweep folder under `storage`) seed-0 policy at `generations`, exported by best_beta.py
    (`--export-at`, `--force`: whatever the rule says of it) to storage/export-ARM; the folders."""
    exports = []
    for arm in arms:
        value = min(t.value for t in analyse(storage / arm).trials if t.seed == 0)
        folder = storage / f"export-{arm}"
        subprocess.run([sys.executable, str(ROOT / "analysis" / "best_beta.py"), str(storage / arm), "--out",
                        str(storage / f"analysis-{arm}"), "--export", str(folder), "--export-at",
                        f"{value:g}:{generations}", "--force"], check=True, capture_output=True)
        exports.append(str(folder))
    return exports


def run_mode(mode: str, storage: Path, extra: list[str]) -> dict:
    wall = timed_sweep(storage, mode, [*MODES[mode], *extra])
    exp = storage / mode
    trials = find_trials(exp)
    generations = sum(int(rows[-1]["generations"]) for t in trials if (rows := read_jsonl(t / METRICS_FILE)))
    stats = json.loads((exp / SWEEP_STATS_FILE).read_text())
    result = analyse(exp)
    c = result.choice
    return {
        "mode": mode, "trials": len(trials), "generations": generations, "wall_s": wall,
        "efficiency": stats["efficiency"], "slots": stats["slots"],
        "choice": c.beta if c else None, "alliteration": c.alliteration if c else None,
        "div_kept": c.diversity_kept if c else None,
    }


def fmt(row: dict) -> str:
    choice = "-" if row["choice"] is None else f"{row['choice']:g}"
    allit = "-" if row["alliteration"] is None else f"{row['alliteration']:.2f}"
    kept = "-" if row["div_kept"] is None else f"{row['div_kept']:.0%}"
    eff = "-" if row["efficiency"] is None else f"{row['efficiency']:.2f}"
    return (f"| {row['mode']} | {row['trials']} | {row['generations']} | {row['wall_s']:.0f} | {eff} | {choice} | "
            f"{allit} | {kept} |")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="coarse,fine,search", help="which sweeps, in order (coarse, fine, search)")
    add_sweep_flags(parser)
    args = parser.parse_args()
    storage, extra = sweeps_folder(args, "alliter-bench-")
    rows = []
    for mode in args.modes.split(","):
        rows.append(run_mode(mode, storage, extra))
        print(f"  {mode}: {rows[-1]['wall_s']:.0f} s", flush=True)
    print("\n| sweep | trials | generations | wall (s) | efficiency | choice (beta) | alliteration | distinct-2 kept |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(fmt(row))
    by = {r["mode"]: r for r in rows}
    if {"coarse", "fine", "search"} <= set(by):
        grids = {k: by["coarse"][k] + by["fine"][k] for k in ("trials", "generations", "wall_s")}
        print(f"| coarse + fine | {grids['trials']} | {grids['generations']} | {grids['wall_s']:.0f} | | | | |")
        s = by["search"]
        print(f"\nsearch / (coarse + fine): generations {s['generations'] / grids['generations']:.2f}, "
              f"wall time {s['wall_s'] / grids['wall_s']:.2f}, trials {s['trials']} / {grids['trials']}; "
              f"alliteration of the choice {s['alliteration'] or 0:.2f} against the fine grid's "
              f"{by['fine']['alliteration'] or 0:.2f}")


if __name__ == "__main__":
    main()

"""A fixed beta against a KL target, side by side in one run, each with 3 seeds to 7000 generations.

    python bench/kl_target.py                          # fixed beta 50 (the 3-seed fine grid's choice) vs targets
    python bench/kl_target.py --keep results/kl        # the sweeps kept
    python bench/kl_target.py --targets 0.05,0.1 --generations 4000 --seeds 2   # a quicker look

1. a 3-seed sweep of KL targets (`--targets`, each trial's beta starting at `--beta`) to 2000 generations, and
   best_beta's choice among them (the rule of alliter.rule, on evaluations);
2. the fixed beta and the chosen target, 3 seeds each, to `--generations` (7000), in one sweep each;
3. per arm and seed, at 2000 and at the end: kept or not (the first failing point, if any), alliteration,
   distinct-2 as a share of the unmodified model's and the fluency gap, all by evaluation, the beta there, and
   the wall time of the arm's sweep; then the frontier (raw reward gain against sqrt of the sequence-level KL,
   both by evaluation) of both arms on one plot, with Gao et al.'s R(d) = d (alpha - b log d) fitted per trial.
Every sweep is `python tune_jobs/sweep.py ...` in its own process with its own local Ray.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alliter.analyse.judge import analyse  # noqa: E402
from alliter.analyse.plots import plot_frontier  # noqa: E402
from sweeps import add_long_run_flags, sweeps_folder, timed_sweep  # noqa: E402 (bench/sweeps.py)


def rows_of(arm: str, exp: Path, wall: float, at: list[int]) -> list[str]:
    result = analyse(exp)
    p = result.points
    out = []
    for trial in sorted(result.trials, key=lambda t: t.seed):
        mine = p[p["trial"] == trial.name].set_index("generations")
        betas = trial.metrics.set_index("generations")["beta"]
        failed = mine.index[mine["verdict"] != "kept"]
        for g in at:
            if g not in mine.index:
                continue
            r = mine.loc[g]
            kept = "kept" if not len(failed) or failed.min() > g else f"{mine.loc[failed.min(), 'verdict']} at {failed.min()}"
            out.append(f"| {arm} | {trial.seed} | {g} | {kept} | {r['alliteration']:.2f} | {r['diversity_kept']:.0%} | "
                       f"{r['fluency_gap']:+.2f} | {betas.get(g, math.nan):.3g} | {wall:.0f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beta", type=float, default=50.0, help="the fixed beta, and where target trials start")
    parser.add_argument("--targets", default="0.01,0.02,0.05", help="the KL targets of step 1")
    add_long_run_flags(parser)
    args = parser.parse_args()
    storage, extra = sweeps_folder(args, "alliter-kl-")
    seeds = ["--seeds", str(args.seeds)]
    wall = timed_sweep(storage, "targets", ["--betas", f"{args.beta:g}", "--kl-targets", args.targets, *seeds, *extra])
    targets = analyse(storage / "targets")
    if targets.choice is None:
        raise SystemExit(f"no KL target of {args.targets} kept its diversity and fluency in every seed: nothing to run on")
    target = targets.choice.value
    print(f"  targets {args.targets}, {args.seeds} seeds, 2000 generations: {wall:.0f} s; the choice: target {target:g}")
    long = ["--max-generations", str(args.generations), *seeds, *extra]
    walls = {"fixed": timed_sweep(storage, "fixed", ["--betas", f"{args.beta:g}", *long])}
    print(f"  fixed beta {args.beta:g}: {walls['fixed']:.0f} s", flush=True)
    walls["target"] = timed_sweep(storage, "target", ["--betas", f"{args.beta:g}", "--kl-targets", f"{target:g}", *long])
    print(f"  target {target:g}: {walls['target']:.0f} s", flush=True)

    at = [2000, args.generations]
    print("\n| arm | seed | generations | kept | alliteration | distinct-2 kept | fluency | beta | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm, name in ((f"beta {args.beta:g}", "fixed"), (f"target {target:g}", "target")):
        print("\n".join(rows_of(arm, storage / name, walls[name], at)))
    out = storage / "frontier.png"
    plot_frontier([analyse(storage / "fixed"), analyse(storage / "target")], out)
    print(f"\nthe frontier of both arms: {out}")


if __name__ == "__main__":
    main()

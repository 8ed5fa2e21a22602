"""Which recipe holds: four arms side by side in one run, 3 seeds each, to 7000 generations, on the bundled model.

    python bench/recipes.py                                  # the whole benchmark (about an hour on 2 cores)
    python bench/recipes.py --keep results/recipes           # the sweeps kept
    python bench/recipes.py --generations 3000 --seeds 2     # a quicker look

1. `--recipe trl`'s own sweep of betas (`--trl-betas`, its units: the KL summed over the completion's tokens), 3 seeds
   to 2000 generations, and best_beta's choice among them;
2. the arms, each one sweep of `--seeds` seeds to `--generations`: the study at its fine-grid choice (beta 50), the
   study with a KL target and a gradient clip (the issue's probe), `--recipe trl` at its sweep's choice, and the
   configuration that holds (`--best`);
3. per arm and seed: where it first failed by the rule, its best stable point's alliteration, and at the end its
   alliteration, distinct-2 kept, fluency gap and the words it over-uses; the arm's wall time;
4. the rule's claim that a trial's last point is stable when nothing came after it: of all kept points of all the
   arms' trials, how many failed within the next 400 generations;
5. every arm's seed-0 policy at the end exported (`best_beta.py --export-at ... --force`) and read by
   bench/read_exports.py (60 stories from the library's generate), and three stories of the last arm's.
Every sweep is `python tune_jobs/sweep.py ...` in its own process with its own local Ray.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alliter import measures as M  # noqa: E402
from alliter.analyse.judge import Analysis, analyse  # noqa: E402
from sweeps import add_long_run_flags, export_seed0, sweeps_folder, timed_sweep  # noqa: E402 (bench/sweeps.py)

STUDY = ["--betas", "50"]  # the 3-seed fine grid's choice (README, "KL-target mode")
TARGET = ["--betas", "50", "--kl-targets", "0.03", "--max-grad-norm", "20"]  # the probe: no failure to 7000
# the configuration that holds (README, "Which recipe holds"): AdamW with a clip, and the KL-target controller with a
# floor at its start and a short horizon
BEST = "--optimizer,adamw,--lr,1e-4,--max-grad-norm,1,--betas,60,--kl-targets,0.1,--kl-min-beta,60,--kl-horizon,30"


def arm_rows(arm: str, result: Analysis, wall: float, end: int) -> list[str]:
    p = result.points
    out = []
    for trial in sorted(result.trials, key=lambda t: t.seed):
        mine = p[p["trial"] == trial.name].set_index("generations")
        failed = mine.index[mine["verdict"] != "kept"]
        first = f"{mine.loc[failed.min(), 'verdict']} at {failed.min()}" if len(failed) else "none"
        stable = mine[mine["stable"]]
        best = f"{stable['alliteration'].max():.1f} at {stable['alliteration'].idxmax()}" if len(stable) else "-"
        if end not in mine.index:
            out.append(f"| {arm} | {trial.seed} | {first} | {best} | (ended at {trial.done}) | | | | {wall:.0f} |")
            continue
        r = mine.loc[end]
        e = trial.evaluations
        over = M.overused_words(e.loc[e["generations"] == end, "text"].tolist(), e.loc[e["generations"] == 0, "text"].tolist())
        out.append(f"| {arm} | {trial.seed} | {first} | {best} | {r['alliteration']:.1f} | {r['diversity_kept']:.0%} | "
                   f"{r['fluency_gap']:+.2f} | {M.overuse_text(over[:3])} | {wall:.0f} |")
    return out


def last_point_check(results: list[Analysis], horizon: int = 400) -> str:
    """Of every kept point (before its trial's first failure), how many failed within the next `horizon`
    generations: what the rule's "a trial's last point is stable" bets on, measured."""
    kept = failing = 0
    for result in results:
        for _, mine in result.points.groupby("trial"):
            mine = mine.sort_values("generations")
            failed = mine.loc[mine["verdict"] != "kept", "generations"]
            first = failed.min() if len(failed) else None
            for g in mine.loc[(mine["verdict"] == "kept") & (mine["generations"] > 0), "generations"]:
                if first is not None and g > first:
                    continue
                kept += 1
                failing += first is not None and first <= g + horizon
    return (f"{failing} of {kept} kept points ({failing / max(kept, 1):.0%}) failed within the next {horizon} "
            "generations")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-betas", default="0.1,0.2,0.5,1", help="the betas of --recipe trl's own sweep")
    parser.add_argument("--best", default=BEST, help="the flags of the configuration that holds, separated by commas")
    add_long_run_flags(parser)
    args = parser.parse_args()
    storage, extra = sweeps_folder(args, "alliter-recipes-")
    seeds = ["--seeds", str(args.seeds)]
    started = time.perf_counter()
    wall = timed_sweep(storage, "trl-sweep", ["--recipe", "trl", "--betas", args.trl_betas, *seeds, *extra])
    trl = analyse(storage / "trl-sweep")
    if trl.choice is None:
        raise SystemExit(f"--recipe trl kept no beta of {args.trl_betas} in every seed: nothing to run it at")
    trl_beta = f"{trl.choice.value:g}"
    print(f"  --recipe trl's sweep of betas {args.trl_betas}, {args.seeds} seeds, 2000 generations: {wall:.0f} s; "
          f"its choice: beta {trl_beta}", flush=True)

    arms = {"study, beta 50": STUDY, "study, KL target 0.03, clip 20": TARGET,
            f"trl, beta {trl_beta}": ["--recipe", "trl", "--betas", trl_beta], "best": args.best.split(",")}
    long = ["--max-generations", str(args.generations), *seeds, *extra]
    results, walls = {}, {}
    for i, (arm, flags) in enumerate(arms.items()):
        walls[arm] = timed_sweep(storage, f"arm{i}", [*flags, *long])
        results[arm] = analyse(storage / f"arm{i}")
        print(f"  {arm}: {walls[arm]:.0f} s ({' '.join(flags)})", flush=True)

    print("\n| arm | seed | first failure | best stable point | alliteration at the end | distinct-2 kept | "
          "fluency | over-used words | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm, result in results.items():
        print("\n".join(arm_rows(arm, result, walls[arm], args.generations)))
    print(f"\nthe rule's last point: {last_point_check(list(results.values()) + [trl])}")

    exports = export_seed0(storage, [f"arm{i}" for i in range(len(results))], args.generations)
    print("\nthe seed-0 policies at the end, exported and read (export-arm0 .. 3, in the order of the arms):\n", flush=True)
    subprocess.run([sys.executable, str(ROOT / "bench" / "read_exports.py"), *exports], check=True)
    last = min(results["best"].trials, key=lambda t: t.seed)
    e = last.evaluations
    print("\nthree stories of the best configuration at the end (seed 0, its evaluation):")
    for text in e.loc[e["generations"] == args.generations, "text"].head(3):
        print(f"\n{text}")
    print(f"\nwall time of the whole benchmark: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Diversity a reader sees: the recipe that holds, with each remedy against a one-topic hack, side by side in one run,
3 seeds each, to 7000 generations, on the bundled model.

    python bench/diversity.py                                  # the whole benchmark (about 1.5 hours on 2 busy cores)
    python bench/diversity.py --keep results/diversity         # the sweeps kept
    python bench/diversity.py --arms holds,winner --generations 3000 --seeds 2     # a quicker look

Every arm is one sweep (`python tune_jobs/sweep.py ...`, in its own process with its own local Ray) of `--seeds`
seeds to `--generations`. Per arm and seed, judged by the rule as it was (no over-use check: `--max-overuse 0`) and as
it is (a word over 6x the unmodified model's rate: narrowed): the first failure by each; at the end, the study's
alliteration count (whatever reward trained it), the most over-used word and its ratio, the word JS divergence, the
gzip ratio and pooled distinct-2 of the point's 50 stories, distinct-2 kept, the fluency gap; the arm's wall time.
Then every arm's seed-0 policy at the end exported and read by bench/read_exports.py (60 fresh stories from the
library's generate against 60 of the unmodified model), and three stories of the last arm's.
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
from alliter.analyse.judge import Analysis, AnalysisConfig, analyse  # noqa: E402
from alliter.train.reward import raw_reward  # noqa: E402
from sweeps import add_long_run_flags, export_seed0, sweeps_folder, timed_sweep  # noqa: E402 (bench/sweeps.py)

# the configuration that holds (README, "Which recipe holds"): AdamW with a clip, and the KL-target controller with a
# floor at its start and a short horizon
HOLDS = ["--optimizer", "adamw", "--lr", "1e-4", "--max-grad-norm", "1", "--betas", "60", "--kl-targets", "0.1",
         "--kl-min-beta", "60", "--kl-horizon", "30"]
# the same controller, looser: a KL target 1.5x as high, beta floored at 30
LOOSE = ["--optimizer", "adamw", "--lr", "1e-4", "--max-grad-norm", "1", "--betas", "30", "--kl-targets", "0.15",
         "--kl-min-beta", "30", "--kl-horizon", "30"]
ARMS = {
    "holds": HOLDS,
    "holds + entropy bonus": [*HOLDS, "--entropy-coef", "0.01", "--entropy-target", "1.2", "--entropy-coef-step",
                              "0.001"],
    "holds + DARLING": [*HOLDS, "--darling", "--darling-memory", "10"],
    "holds + reference resets": [*HOLDS, "--ref-sync-every", "1000", "--ref-sync-alpha", "0.6"],
    "holds + over-use damping": [*HOLDS, "--overuse-cap", "1.5"],
    "holds + novel-alliteration": [*HOLDS, "--reward", "novel-alliteration"],
    "winner": [*LOOSE, "--reward", "novel-alliteration", "--overuse-cap", "1.5"],
}


def study_alliteration(texts: list[str]) -> float:
    return sum(raw_reward(t) for t in texts) / len(texts)


def arm_rows(arm: str, new: Analysis, old: Analysis, wall: float, end: int) -> list[str]:
    out = []
    for trial in sorted(new.trials, key=lambda t: t.seed):
        firsts = []
        for result in (old, new):
            p = result.points[result.points["trial"] == trial.name].set_index("generations")
            failed = p.index[p["verdict"] != "kept"]
            firsts.append(f"{p.loc[failed.min(), 'verdict']} at {failed.min()}" if len(failed) else "none")
        p = new.points[new.points["trial"] == trial.name].set_index("generations")
        if end not in p.index:
            out.append(f"| {arm} | {trial.seed} | {firsts[0]} | {firsts[1]} | (ended at {trial.done}) |||||||| {wall:.0f} |")
            continue
        r, texts, base = p.loc[end], trial.stories(end)["text"].tolist(), trial.stories(0)["text"].tolist()
        top = M.overused_words(texts, base, top=1)
        word = f'"{top[0][0]}" {top[0][2]:.1f}x ({top[0][3]} uses)' if top else "none"
        out.append(f"| {arm} | {trial.seed} | {firsts[0]} | {firsts[1]} | {study_alliteration(texts):.1f} | {word} | "
                   f"{r['word_js']:.3f} | {r['compression']:.2f} | {r['pooled_distinct_2'] / M.distinct_n(base, 2):.0%} | "
                   f"{r['diversity_kept']:.0%} | {r['fluency_gap']:+.2f} | {wall:.0f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"the arms to run, of: {', '.join(ARMS)}")
    add_long_run_flags(parser)
    args = parser.parse_args()
    arms = {name: ARMS[name] for name in args.arms.split(",")}
    storage, extra = sweeps_folder(args, "alliter-diversity-")
    started = time.perf_counter()
    long = ["--max-generations", str(args.generations), "--seeds", str(args.seeds), *extra]
    results, walls = {}, {}
    for i, (arm, flags) in enumerate(arms.items()):
        walls[arm] = timed_sweep(storage, f"arm{i}", [*flags, *long])
        results[arm] = (analyse(storage / f"arm{i}"), analyse(storage / f"arm{i}", AnalysisConfig(max_overuse=0)))
        print(f"  {arm}: {walls[arm]:.0f} s ({' '.join(flags)})", flush=True)

    print("\n| arm | seed | first failure, old rule | first failure, new rule | alliteration at the end | most over-used "
          "word | word JS (bits) | gzip ratio | pooled distinct-2 kept | distinct-2 kept | fluency | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm, (new, old) in results.items():
        print("\n".join(arm_rows(arm, new, old, walls[arm], args.generations)))

    exports = export_seed0(storage, [f"arm{i}" for i in range(len(results))], args.generations)
    print(f"\nthe seed-0 policies at the end, exported and read (export-arm0 .. {len(exports) - 1}, in the order of the "
          "arms):\n", flush=True)
    subprocess.run([sys.executable, str(ROOT / "bench" / "read_exports.py"), "--stories", "0", *exports], check=True)
    last = min(list(results.values())[-1][0].trials, key=lambda t: t.seed)
    print("\nthree stories of the last arm at the end (seed 0, its evaluation):")
    for text in last.stories(args.generations)["text"].head(3):
        print(f"\n{text}")
    print(f"\nwall time of the whole benchmark: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

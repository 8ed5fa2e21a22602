"""The study's write-up, study.md and study.html, every sentence made from the data of the study's four sweeps. First
the findings (the choice and where to stop, how long the study's recipe holds, the recipe that holds and what it
writes, each with its spread over seeds and over the last evaluations) and the thresholds behind their words; then,
in the order of the reference study's note: the coarse grid (which betas failed and when, which held, the last two
evaluation stories of each), the conclusion it allows, the fine grid placed there (its choice and how sure it is),
the extended run of the choice (when it failed, in how many seeds, a story before and after), the recipe that holds
side by side with the study's (alliter.study.evidence), which letters alliterate and which words it over-uses, and
what the numbers cannot say."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from alliter import measures as M
from alliter.analyse.document import Block, Bullets, Heading, Image, Story, Table, Text, to_html, to_markdown
from alliter.analyse.frames import study_alliteration
from alliter.analyse.judge import Analysis, analyse
from alliter.analyse.plots import plot_recipes
from alliter.analyse.report import write_outputs
from alliter.config import DEFAULT_REWARD
from alliter.knob import VALUE
from alliter.rule import FAILED
from alliter.storage import read_json
from alliter.train.reward import raw_reward
from alliter.study.evidence import (
    LARGELY, LAST, beta_range, end_of, kl_frame, overuse_at, side_by_side, spread, what_changed,
)
from alliter.study.run import STUDY_FILE, wall_text


def _list(values: list[float]) -> str:
    text = [f"{v:g}" for v in values]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + f" and {text[-1]}"


def _stories(result: Analysis, trial: Any, generations: int, n: int) -> list[Story]:
    """n of the stories a trial's point is judged on: its evaluation's, else (no evaluations) its training texts."""
    rows = trial.stories(generations, result.cfg.window)
    evaluated = len(trial.evaluations) > 0
    rows = rows.head(n) if evaluated else rows.tail(n)
    where = (lambda r: f"evaluation story {int(r['sample'])}") if evaluated else \
        (lambda r: f"training generation {int(r['generation'])}")
    default = result.reward["reward"] == DEFAULT_REWARD
    score = (lambda r: f"raw reward {r['raw_reward']:g}") if default else \
        (lambda r: f"{raw_reward(r['text'])} alliterating pairs (its reward, {result.reward['reward']}: {r['raw_reward']:.3g})")
    return [Story(f"{result.knob.said(trial.value)}, seed {trial.seed}, {where(r)} at {generations} generations, "
                  f"{score(r)}", r["text"]) for _, r in rows.iterrows()]


def _last_point(trial: Any) -> int:
    """The generations of a trial's last point: its last evaluation, else its last training group."""
    return int(trial.evaluations["generations"].max()) if len(trial.evaluations) else trial.done


def grid_blocks(result: Analysis, out: Path) -> list[Block]:
    """A grid's table, its plots and sentences: which betas failed and when, which held."""
    s = result.summary.sort_values(VALUE)
    failed = s[s["verdict"].isin(FAILED)]
    held = s[~s["verdict"].isin(FAILED)]
    lines = []
    if len(failed):
        when = ", ".join(f"beta {b:g} {v} at {a:.0f}" for b, v, a in zip(failed[VALUE], failed["verdict"],
                                                                           failed["failed_at"]))
        lines.append(f"{len(failed)} of {len(s)} betas failed the rule: {when} generations.")
    if len(held):
        best = held.loc[held["alliteration"].idxmax()]
        figures = (f"{best['alliteration']:.1f}, {best['alliteration_gain']:+.1f} over the unmodified model's "
                   f"{best['alliteration_baseline']:.1f}")
        lines.append(f"Betas {_list(list(held[VALUE]))} held to their end; of them beta {best[VALUE]:g} "
                     f"alliterated most ({figures})." if len(held) > 1 else
                     f"Beta {best[VALUE]:g} held to its end, alliterating {figures}.")
    else:
        lines.append("No beta held to its end.")
    table = pd.DataFrame({
        "beta": s[VALUE].map(lambda v: f"{v:g}"), "verdict": s["verdict"],
        "failed at": s["failed_at"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"),
        "alliteration at the end": s["alliteration"].map(lambda v: f"{v:.1f}"),
        "distinct-2 kept": s["diversity_kept"].map(lambda v: "-" if pd.isna(v) else f"{v:.0%}"),
        "fluency": s["fluency_gap"].map(lambda v: "-" if pd.isna(v) else f"{v:+.2f}"),
    })
    blocks: list[Block] = [Text(" ".join(lines)), Table(table)]
    for name, alt in (("raw_reward.png", "raw reward along training"), ("kl_penalty.png", "KL penalty along training"),
                      ("evaluations.png", "the evaluations along training")):
        blocks.append(Image(out / name, alt))
    return blocks


def last_two_stories(result: Analysis) -> list[Block]:
    blocks: list[Block] = []
    for trial in sorted(result.trials, key=lambda t: (t.value, t.seed)):
        if len(trial.evaluations) or len(trial.generations):
            blocks += _stories(result, trial, _last_point(trial), 2)
    return blocks


def how_sure(result: Analysis) -> str:
    """The choice against the next kept beta, as the seeds allow."""
    c, s = result.choice, result.summary
    if c is None:
        return "No beta held in this grid: there is no choice."
    runners = s[~s["verdict"].isin([*FAILED, "dropped"]) & ~s["chosen"]].sort_values("alliteration", ascending=False)
    head = (f"best_beta's choice: beta {c.value:g}, the highest alliteration among the betas that held "
            f"({c.alliteration:.1f} at {c.point:.0f} generations).")
    if not len(runners):
        return head + " No other beta held: nothing to weigh it against."
    r = runners.iloc[0]
    if int(c.trials) < 2:
        return (head + f" The next, beta {r[VALUE]:g}, reached {r['alliteration']:.1f}; with one seed each there "
                "is no interval: which of the two is better is not known from this grid.")
    apart = c.alliteration - r["alliteration"] > (c.alliteration_se or 0) + (r["alliteration_se"] or 0)
    return head + (f" Against the next, beta {r[VALUE]:g} ({r['alliteration']:.1f} ± "
                   f"{r['alliteration_se']:.1f}): " + ("further apart than their standard errors."
                                                         if apart else "within their standard errors: as good."))


def failures(result: Analysis) -> list[tuple[int, int, str]]:
    """(seed, generations, verdict) of each trial's first point that is not kept, in seed order."""
    out = []
    for trial in sorted(result.trials, key=lambda t: t.seed):
        mine = result.points[result.points["trial"] == trial.name].sort_values("generations")
        failed = mine[mine["verdict"] != "kept"]
        if len(failed):
            out.append((trial.seed, int(failed["generations"].iloc[0]), str(failed["verdict"].iloc[0])))
    return out


def _failures_text(failed: list[tuple[int, int, str]]) -> str:
    """`seed 0 narrowed at 2600, seed 1 collapsed at 1800`."""
    return ", ".join(f"seed {seed} {verdict} at {at}" for seed, at, verdict in failed)


def seeds_verdict(result: Analysis, end: int) -> tuple[str, list[Block]]:
    """An extended run's verdict over its seeds, and a story before and after each seed's failure (or at its end)."""
    points, blocks, lines = result.points, [], []
    failed = failures(result)
    failed_at = {seed: at for seed, at, _ in failed}
    for trial in sorted(result.trials, key=lambda t: t.seed):
        mine = points[points["trial"] == trial.name].sort_values("generations")
        if trial.seed in failed_at:
            before = mine[mine["generations"] < failed_at[trial.seed]]["generations"]
            if len(before) and int(before.iloc[-1]) > 0:
                blocks += _stories(result, trial, int(before.iloc[-1]), 1)
        blocks += _stories(result, trial, int(mine["generations"].iloc[-1]), 1)
    n = len(result.trials)
    if failed:
        lines.append(f"It failed in {len(failed)} of {n} seeds: {_failures_text(failed)} generations.")
    if len(failed) < n:
        lines.append(f"It held to {end} generations in {n - len(failed)} of {n} seeds.")
    end_points = points[points["generations"] == end].drop(columns="alliteration").merge(
        study_alliteration(result.trials), on=["trial", "generations"])  # the study's count, whatever the reward
    if len(end_points):
        by_seed = ", ".join(f"seed {seed}: alliteration {a:.1f}, distinct-2 {k:.0%} of the unmodified model's, fluency "
                            f"{f:+.2f} nats" for seed, a, k, f in zip(end_points["seed"], end_points["alliteration"],
                                                                      end_points["diversity_kept"], end_points["fluency_gap"]))
        lines.append(f"At {end} generations ({by_seed}).")
    return " ".join(lines), blocks


def overuse_line(result: Analysis, end: int) -> str:
    """The most over-used words of a one-value sweep (the extended run, the recipe that holds) at `end`."""
    words = result.overused(result.trials[0].value, end).words
    return M.overuse_text(words[:4]) if words else "no word"


def _kl_at(result: Analysis, value: float, generations: int) -> float:
    """The KL (nats a token) of a value's trials over the window up to `generations`."""
    kl = kl_frame(result)
    names = {t.name for t in result.trials if t.value == value}
    s = spread(kl[kl["trial"].isin(names)], "kl", generations, last=result.cfg.window)
    return s.mean if s else math.nan


def choice_finding(result: Analysis, grid: str) -> str:
    """The choice and the point to stop at, with the choice's spread over its last evaluations."""
    c, p = result.choice, result.best_point
    if c is None:
        return f"**No choice**: no beta of the {grid} held to its end."
    value = c.value
    mine = result.points[result.points[VALUE] == value]
    s = spread(mine, "alliteration", c.point)
    seeds = c.trials
    text = (f"**The choice**: beta {value:g}, the {grid}'s: the highest alliteration among its betas kept to their "
            f"end ({seeds} seed{'s' if seeds > 1 else ''} each). At its end ({c.point} generations) it "
            f"alliterates {c.alliteration:.1f}, the unmodified model {c.alliteration - c.alliteration_gain:.1f}"
            + (f"; over its last {LAST} generations' evaluations, {s.text()}" if s else "") + ".")
    if p is not None:
        text += (f" **Where to stop** (best_beta's export: of every beta and evaluation of the grid, the highest "
                 f"alliteration kept there and at the next evaluation): beta {p.value:g} at {p.generations} "
                 f"generations, alliteration {p.alliteration:.1f}, "
                 f"distinct-2 {p.diversity_kept:.0%} of the unmodified model's, its most over-used word "
                 f"{p.top_overuse:.1f}x, KL {_kl_at(result, p.value, p.generations):.3f} nats a token.")
    return text


def extended_finding(result: Analysis, beta: float, end: int, fine: Analysis | None) -> str:
    """How long the study's recipe holds: its failures over the seeds."""
    failed, n = failures(result), len(result.trials)
    text = f"**How long the study's recipe holds**: beta {beta:g} to {end} generations, {n} seeds: "
    if failed:
        text += f"it failed in {len(failed)} of {n} ({_failures_text(failed)} generations); kept to the end in " \
                f"{n - len(failed)}."
    else:
        text += "kept to the end in every seed."
    same = fine is not None and any(t.value == beta and t.seed == 0 for t in fine.trials) and \
        any(t.seed == 0 for t in result.trials)
    if same:
        grid_end = max(t.done for t in fine.trials if t.value == beta)
        text += (f" (Its seed 0 is the fine grid's trial of beta {beta:g} run on: the same seed, so the same first "
                 f"{grid_end} generations.)")
    return text


def holds_finding(result: Analysis, study: Analysis | None, end: int) -> str:
    """The recipe that holds (the word only where it is kept to the end in every seed), what changed, its end."""
    failed, n = failures(result), len(result.trials)
    e, over = end_of(result, end), overuse_at(result, end)
    changes = what_changed(study, result) if study is not None else []
    name = "The recipe that holds" if not failed else "The recipe meant to hold"
    text = (f"**{name}**" + (f" ({len(changes)} knobs changed at once: {'; '.join(changes)})" if changes else "")
            + f": kept to {end} generations in {n - len(failed)} of {n} seeds"
            + (f" ({_failures_text(failed)})" if failed else "") + ".")
    if e["alliteration"] is not None:
        text += (f" Over its last {LAST} generations it alliterates {e['alliteration'].text()}"
                 + ("" if result.reward["reward"] == DEFAULT_REWARD else
                    f" (the study's count of alliterating pairs; its reward, {result.reward['reward']}, scores less)"))
        if e["kl"] is not None:
            low, high = beta_range(result, end)
            text += (f", at a KL of {e['kl'].text(3, singles='')} nats a token; its beta went from {low:.3g} to "
                     f"{high:.3g} along training")
        text += "."
    if over is not None and over.ratio >= 2:
        text += (f" At {end} its most over-used word is {over.text()}"
                 + (": it alliterates largely through that word." if over.largely else "."))
    else:
        text += f" At {end} it uses no word 2x as often as the unmodified model."
    return text


def findings(results: dict[str, Analysis], state: dict[str, Any], end: int) -> list[Block]:
    """The first screen: the choice and where to stop, how long the study's recipe holds, the recipe that holds
    and a story of it, then the thresholds behind the words."""
    items = []
    grid = next((name for name in ("fine", "coarse") if name in results), None)
    if grid is not None:
        items.append(choice_finding(results[grid], f"{grid} grid"))
    if "extended" in results:
        items.append(extended_finding(results["extended"], state.get("extended_beta", 0.0), end, results.get("fine")))
    if "holds" in results:
        items.append(holds_finding(results["holds"], results.get("extended"), end))
    blocks: list[Block] = [Heading("Findings"), Bullets(items)]
    last = next((name for name in ("holds", "extended") if name in results), None)
    if last is not None:
        trial = min(results[last].trials, key=lambda t: t.seed)
        blocks += [Heading("What it writes at the end", 3), *_stories(results[last], trial, _last_point(trial), 1)]
    first = next(iter(results.values()), None)
    if first is not None:
        cfg = first.cfg
        blocks.append(Text(
            f"How the words are used. *Kept*: a point the rule passes ({cfg.rule().describe()}). *Holds*: kept at "
            f"every evaluation to the end, in every seed. *Balanced* (the grids' tables): kept to the end with an "
            f"alliteration gain of at least {cfg.under_optimised_share:.0%} of the best kept beta's and at least "
            f"{cfg.min_gain:g}, else *under-optimised*: a ranking of point estimates, not a test (with one seed there "
            f"is no interval). *Largely through a word*: at least {LARGELY:.0%} of the alliterating pairs hold it. A "
            f"trial's end is the mean of its evaluations over its last {LAST} generations, a recipe's the mean of its "
            f"seeds' with their range and that of the single evaluations. An over-use ratio adds "
            f"{M.OVERUSE_PSEUDO_USES} uses to the unmodified model's count of every word: no ratio rests on a count "
            f"of zero (a word it never wrote, used once a story, reads {M.overuse_ratio(50, 50, 0, 50):.0f}x)."))
    return blocks


def letters_line(result: Analysis, sweep: str) -> str:
    letters = result.letters
    rows = letters[letters["row"] != "unmodified"] if len(letters) else letters
    base = letters[letters["row"] == "unmodified"] if len(letters) else letters
    if not len(rows) or not len(base):
        return "No evaluation stories to count letters in (the trials ran without evaluations)."
    top = rows.iloc[-1]["top_letters"]
    return (f"The alliterating pairs of the unmodified model start mostly with {base.iloc[0]['top_letters']}; at the "
            f"end of {sweep} with {top}.")


def build(folder: Path) -> list[Block]:
    state = read_json(folder / STUDY_FILE) or {}
    steps = state.get("steps", {})
    results = {name: analyse(folder / name) for name in ("coarse", "fine", "extended", "holds")
               if steps.get(name, {}).get("status") == "finished"}
    outs = {name: folder / "analysis" / name for name in results}
    for name, result in results.items():
        write_outputs(result, outs[name])
    config = state.get("config", {})
    end = int(config.get("extended_generations", 7000))
    first = next(iter(results.values()), None)
    model = Path(first.recipe.model).name if first and first.recipe.model else "the model"
    total = sum(s.get("wall_seconds", 0.0) for s in steps.values())
    blocks: list[Block] = [
        Heading("The study: the KL coefficient beta of RLOO for alliterative stories", 1),
        Text(f"alliter study ran {len(results)} of its 4 sweeps on {model}, started {state.get('started', '?')}, in "
             f"{wall_text(total)} of wall time ("
             + ", ".join(f"{n} {wall_text(s.get('wall_seconds', math.nan))}" for n, s in steps.items()) + "). "
             + (f"The update: {first.recipe.describe_recipe()}." if first else "")),
        *findings(results, state, end),
    ]
    if "coarse" in results:
        c = results["coarse"]
        blocks += [Heading("1. The coarse grid"), *grid_blocks(c, outs["coarse"]),
                   Heading("The last two stories of each beta", 3), *last_two_stories(c)]
        placement = state.get("placement")
        if placement:
            blocks += [Heading("What the coarse grid allows"),
                       Text(f"{placement['why'][0].upper()}{placement['why'][1:]}; the fine grid runs "
                            f"{_list(placement['betas'])}.")]
    if "fine" in results:
        f = results["fine"]
        blocks += [Heading("2. The fine grid"), *grid_blocks(f, outs["fine"]), Text(how_sure(f)),
                   Heading("The last two stories of each beta", 3), *last_two_stories(f)]
    if "extended" in results:
        e = results["extended"]
        text, stories = seeds_verdict(e, end)
        blocks += [Heading(f"3. The extended run: beta {state.get('extended_beta', 0):g} to {end} generations"),
                   Text(f"Beta {state.get('extended_beta', 0):g} ({state.get('extended_why', '')}), {len(e.trials)} "
                        f"seeds, the study's recipe. {text}"),
                   Image(outs["extended"] / "evaluations.png", "the extended run's evaluations"),
                   Heading("A story before the failure and at the end", 3), *stories]
    if "holds" in results:
        h = results["holds"]
        text, stories = seeds_verdict(h, end)
        blocks += [Heading("4. The recipe that holds, beside the study's"),
                   Text(f"Its update: {h.recipe.describe_recipe()}"
                        + (f"; KL target {h.trials[0].kl_target:g}, beta started at and floored at "
                           f"{h.recipe.kl_min_beta:g}" if h.trials[0].kl_target is not None
                           and h.recipe.kl_min_beta is not None else "") + f". {text}")]
        if "extended" in results:
            recipes = {"the study's recipe": results["extended"], "the recipe that holds": h}
            grid_end = max((t.done for t in results.get("fine", h).trials), default=0)
            table, level = side_by_side(recipes, sorted({grid_end, end // 2, end}), end)
            changes = what_changed(results["extended"], h)
            plot_recipes(recipes, folder / "analysis" / "recipes.png")
            blocks += [Text(f"What changed from the study's recipe: {len(changes)} knobs at once, so nothing here says "
                            "which of them does what:"), Bullets(changes),
                       Text(f"Side by side at equal generations, and at equal alliteration (the first evaluation at "
                            f"which the mean over seeds reaches {level:.1f}, the lower of the two recipes' peaks): the "
                            f"mean over seeds, their range in brackets; alliteration the study's count of alliterating "
                            f"pairs a story whatever the reward; KL and beta over the {h.cfg.window} generations up to "
                            "the point."),
                       Table(table), Image(folder / "analysis" / "recipes.png", "the two recipes on the same axes")]
        blocks += [Heading("Its stories at the end", 3), *stories]
    last = next((name for name in ("holds", "extended", "fine") if name in results), None)
    if last is not None:
        sweep = {"holds": "the recipe that holds", "extended": "the extended run", "fine": "the fine grid"}[last]
        blocks += [Heading("5. Which letters alliterate, which words it over-uses"),
                   Text(letters_line(results[last], sweep)), Image(outs[last] / "letters.png", "letters")]
        for name in ("extended", "holds"):
            if name in results:
                blocks.append(Text(f"At {end} generations the {'study' if name == 'extended' else 'holding'} "
                                   f"recipe's stories over-use {overuse_line(results[name], end)} against the "
                                   "unmodified model's (words used at least once in 5 stories)."))
    blocks += [Heading("6. What the numbers cannot say"), Bullets(caveats(results, state))]
    return _once(blocks)


def _once(blocks: list[Block]) -> list[Block]:
    """Each story once: the extended run's seed 0 is the fine grid's trial run on, and shares its stories."""
    seen: set[str] = set()
    out = []
    for b in blocks:
        if isinstance(b, Story):
            if b.text in seen:
                continue
            seen.add(b.text)
        out.append(b)
    return out


def caveats(results: dict[str, Analysis], state: dict[str, Any]) -> list[str]:
    out = []
    single = [name for name in ("coarse", "fine") if name in results and int(results[name].summary["trials"].max()) < 2]
    if single:
        out.append(f"The {' and '.join(single)} grid{'s' if len(single) > 1 else ''} ran one seed per beta: near the "
                   "boundary, another seed can move a beta across it (the extended run shows how much the seeds differ).")
    first = next(iter(results.values()), None)
    if first is not None:
        samples = int(first.trials[0].config.get("eval_samples", 50))
        if samples and len(first.trials[0].evaluations):
            out.append(f"Each point is judged on {samples} fresh stories: a fluency gap is measured to about "
                       f"{0.03 * math.sqrt(50 / samples):.2f} nats, alliteration to a few tenths.")
        else:
            out.append(f"The trials ran without evaluations (--eval-samples 0): each point is judged on its training "
                       f"groups over {first.cfg.window} generations, which lag the policy (a window still holds the "
                       "varied groups of before a collapse).")
        out.append(f"The rule ({first.cfg.rule().describe()}) is a threshold: a point just inside it reads little "
                   "better than one just outside.")
    out.append("Alliteration counts adjacent word pairs that share a first letter; it says nothing of whether a story "
               "is a good one. Read the stories above.")
    for name in ("extended", "holds"):
        if name in results:
            end = int(state.get("config", {}).get("extended_generations", 7000))
            over = overuse_at(results[name], end)
            if over is not None and over.ratio >= 2:
                out.append(f"At {end} generations the {'study' if name == 'extended' else 'holding'} recipe's stories "
                           f"over-use {over.text()}"
                           + (": it alliterates largely through that word" if over.largely else "")
                           + ". Distinct-2 and fluency, inside a group of stories, do not see a word that many stories "
                           "share; the rule's over-use bound does, past its threshold only.")
    out.append("Every figure is of this model, this reward and these seeds; another model or reward needs its own "
               "study.")
    return out


def write(folder: Path) -> tuple[Path, Path]:
    blocks = build(folder)
    md, page = folder / "study.md", folder / "study.html"
    md.write_text(to_markdown(blocks, folder), encoding="utf-8")
    page.write_text(to_html(blocks, "alliter study"), encoding="utf-8")
    return md, page

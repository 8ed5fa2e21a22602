"""What best_beta.py writes: the table, the choice in sentences, summary.csv, points.csv and windows.csv, the plots
(alliter.analyse.plots), and report.md and report.html, both from one list of sections (report_blocks; plots
embedded in the HTML, generated text escaped)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from alliter import measures as M
from alliter.analyse.document import Block, Bullets, Heading, Image, Story, Table, Text, to_html, to_markdown
from alliter.analyse.frames import study_alliteration
from alliter.analyse.frontier import frontier_fits
from alliter.analyse.judge import Analysis, AnalysisConfig, plain
from alliter.analyse.names import MEASURE_LABELS
from alliter.config import DEFAULT_REWARD
from alliter.knob import BETA, VALUE
from alliter.rule import FAILED, KEPT, as_diversity
from alliter.analyse.plots import PLOTS, plot

# table header -> summary column, in the order printed: the final evaluation's measures, then the training's KL
TABLE = {
    "beta": "beta",
    "gens": "generations",
    "alliteration": "alliteration",
    "gain": "alliteration_gain",
    "distinct_2": "distinct_2",
    "self_bleu": "self_bleu",
    "rep_4grams": "repeated_4grams",
    "div_kept": "diversity_kept",
    "overuse": "top_overuse",
    "fluency": "fluency_gap",
    "kl_penalty": "kl_penalty",
    "top_letters": "top_letters",
    "verdict": "verdict",
    "fails_at": "failed_at",
}


# the rule's measure, when it is not distinct-2: header -> summary column, shown after distinct_2
RULE_COLUMNS = {"distinct_1": "distinct_1", "unique_fraction": "unique"}


def display_frame(result: Analysis) -> pd.DataFrame:
    """The summary as the table shows it: rounded numbers, the chosen beta marked; with seeds, the
    standard error of alliteration and of the rule's diversity measure, and the seeds that collapsed."""
    summary, measure = result.summary, result.cfg.diversity_measure
    columns = dict(TABLE)
    if measure in RULE_COLUMNS:
        at = list(columns).index("distinct_2") + 1
        columns = dict([*list(columns.items())[:at], (RULE_COLUMNS[measure], measure), *list(columns.items())[at:]])
    knob = result.knob
    columns = {knob.name if k == "beta" else k: VALUE if v == "beta" else v for k, v in columns.items()}
    t = summary[list(columns.values())].copy()
    t.columns = list(columns)
    t[knob.name] = t[knob.name].map(lambda b: f"{b:g}")
    t["gens"] = t["gens"].map(lambda g: f"{g:.0f}")
    t["div_kept"] = t["div_kept"].map(_fmt(".0%"))
    t["overuse"] = t["overuse"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}x")
    for col in ("alliteration", "gain", "distinct_1", "distinct_2", "unique", "self_bleu", "rep_4grams"):
        if col in t:
            t[col] = t[col].map(_fmt(".2f"))
    t["fluency"] = t["fluency"].map(_fmt("+.2f"))
    t["kl_penalty"] = t["kl_penalty"].map(_fmt("+.3f"))
    t["fails_at"] = t["fails_at"].map(_fmt(".0f"))
    t["verdict"] = [v + (" *" if c else "") for v, c in zip(summary["verdict"], summary["chosen"])]
    if (summary["status"] != "complete").any():
        t.insert(1, "status", summary["status"])
    if (summary["trials"] > 1).any():  # seeds: mean ± standard error, and how many collapsed
        header = {v: k for k, v in columns.items()}[measure]
        t["alliteration"] = [_pm(m, se) for m, se in zip(summary["alliteration"], summary["alliteration_se"])]
        t[header] = [_pm(m, se) for m, se in zip(summary[measure], summary["diversity_se"])]
        t.insert(1, "seeds", summary["trials"])
        t.insert(len(t.columns) - 2, "failed", [f"{k}/{n}" for k, n in zip(summary["failed_seeds"], summary["trials"])])
    if knob is not BETA:  # a KL-target sweep: where each target's beta ended, and the range it moved in
        t["beta"] = summary["beta"].map(lambda v: f"{v:.3g}")
        t["beta_range"] = [f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(summary["beta_min"], summary["beta_max"])]
    return t


def table(result: Analysis) -> str:
    return display_frame(result).to_string(index=False) + "\n(* the choice)" + _table_key(result)


def _table_key(result: Analysis) -> str:
    evaluated = (result.summary["source"] == "evaluation").all()
    where = "its final evaluation" if evaluated else "its final point (an evaluation, else its last training window)"
    beta = ("; beta: where the controller left it, beta_range: its range along training"
            if result.knob is not BETA else "")
    return (f"\n(alliteration to fluency: each {result.knob.symbol} at {where}; overuse: its most over-used word, "
            f"times the unmodified model's rate; fluency: nats over the unmodified model's own stories; kl_penalty: the "
            f"training groups' over the last {result.cfg.window} generations{beta})")


def _fmt(spec: str) -> Any:
    """A formatter for a column's values: format(v, spec), or "-" for a missing one."""
    return lambda v: "-" if pd.isna(v) else format(v, spec)


def _pm(value: float, se: float, digits: int = 2) -> str:
    """12.70±0.45 (standard error across seeds), or 12.70 with one seed."""
    if pd.isna(value):
        return "-"
    return f"{value:.{digits}f}" + ("" if pd.isna(se) else f"±{se:.{digits}f}")


def _seeds_kept(row: Any) -> str:
    return f"kept in {row.trials - row.failed_seeds} of {row.trials} seeds"


FAILED_AS = {"degenerate": "degenerated (non-words)", "narrowed": "narrowed (one topic)"}  # else: collapsed


def _failure(row: Any, measure: str, seeds: bool, rule: AnalysisConfig) -> str:
    """How a failed value failed: where, as what, and by how much at its final point; a value that failed one way
    and ends another (narrowed at 400, collapsed by its end) says both, so the figure quoted is the one its end shows."""
    what = FAILED_AS.get(row.failed_as, "collapsed")
    when = (f"{what} in {row.failed_seeds} of {row.trials} seeds" if seeds
            else f"{what} at {row.failed_at:.0f} generations")
    end = _failed_at_end(row, rule) or row.failed_as
    by = {"degenerate": f"fluency {row.fluency_gap:+.2f} nats over the unmodified model's",
          "narrowed": f"its most over-used word {row.top_overuse:.0f}x as often as in the unmodified model's stories"
          }.get(end, f"{measure} {row.diversity:.2f}, {row.diversity_kept:.0%} of the unmodified model's")
    if FAILED_AS.get(end, "collapsed") == what:
        return f"{when}: {by}"
    return f"{when}; at its final point it has {FAILED_AS.get(end, 'collapsed')}: {by}"


def _failed_at_end(row: Any, rule: AnalysisConfig) -> str | None:
    """The rule's verdict on a value's final point (its seeds' means against theirs at generation 0), or None where
    it is kept."""
    m = rule.diversity_measure
    point = {m: getattr(row, m), "fluency": row.fluency, "top_overuse": row.top_overuse}
    baseline = {m: as_diversity(row.diversity_baseline, m), "fluency": row.fluency_baseline}  # as_diversity undoes itself
    verdict = rule.judge(point, baseline)
    return None if verdict == KEPT else verdict


def reason(result: Analysis) -> str:
    """The choice and why, how sure it is (with seeds), the best point in training and the Pareto front,
    in plain sentences."""
    cfg, s, c, p = result.cfg, result.summary, result.choice, result.best_point
    knob = result.knob
    noun, name = knob.plural, knob.named
    measure = MEASURE_LABELS[cfg.diversity_measure]
    seeds = bool((s["trials"] > 1).any())
    rule = (
        f"among the {noun} whose every evaluation kept {measure} at or above {cfg.diversity_share:.0%} of the "
        f"unmodified model's and fluency within {cfg.fluency_margin:g} nats of it"
        + (f", and over-used no word more than {cfg.max_overuse:g}x" if cfg.max_overuse else "")
        + (f", in all but {cfg.max_collapse_rate:.0%} of their seeds" if cfg.max_collapse_rate > 0 else
           ", in every seed" if seeds else "")
    )
    if c is None and (s["verdict"] == "unmeasured").all():
        lines = ["choice: none - no trial has a point to judge yet (no evaluation after generation 0, no training "
                 "window)."]
    elif c is None:
        lines = [f"choice: none - every one failed the rule ({cfg.rule().describe()}). Try "
                 + f"{'larger' if knob.safer == 'higher' else 'smaller'} {noun}, an earlier point (below), or a "
                 "looser rule."]
    else:
        row = s[s["chosen"]].iloc[0]
        lines = [
            f"choice: {name(c.value)}, the highest {'mean ' if seeds else ''}alliteration at its final point "
            f"({_pm(c.alliteration, c.alliteration_se)} mean raw reward at {c.point:.0f} generations, "
            f"{c.alliteration_gain:+.2f} over the unmodified model) {rule} (there its {measure} is "
            f"{c.diversity_kept:.0%} of the unmodified model's, its fluency {c.fluency_gap:+.2f} nats"
            + (f"; {_seeds_kept(row)})." if seeds else ").")
        ]
        if c.verdict == "under-optimised":
            lines.append("  It barely raised alliteration over the unmodified model: train longer"
                         + (" or with a smaller beta." if knob is BETA and c.value > 0 else "."))
        for other in s[s["verdict"].isin(FAILED) & (s["alliteration"] > c.alliteration)].itertuples():
            lines.append(f"  {name(getattr(other, VALUE))} reached more alliteration "
                         f"({_pm(other.alliteration, other.alliteration_se)}) but {_failure(other, measure, seeds, cfg)}.")
        runners = s[~s["verdict"].isin([*FAILED, "dropped"]) & ~s["chosen"]]
        runners = runners.sort_values("alliteration", ascending=False)
        if seeds and len(runners):
            r = runners.iloc[0]
            apart = c.alliteration - r["alliteration"] > sum(v for v in (c.alliteration_se, r["alliteration_se"])
                                                                  if not pd.isna(v))  # None: one seed, no interval
            lines.append(
                f"  {name(c.value)} over {name(r[VALUE])} (the next kept {knob.symbol}): mean alliteration "
                f"{_pm(c.alliteration, c.alliteration_se)} against {_pm(r['alliteration'], r['alliteration_se'])} "
                + ("(further apart than their standard errors)" if apart else "(within their standard errors: as good)")
                + f", {_seeds_kept(row)} against {r['trials'] - r['failed_seeds']} of {r['trials']}."
            )
    if p is not None:
        edge = f"its next evaluation, at {p.next}, is kept too"
        seeds_line = f" in {p.stable_trials} of {p.trials} seeds" if p.trials > 1 else ""
        fails = f"; {name(p.value)} fails at {p.failed_at:.0f} generations" if p.failed_at else ""
        at_beta = f" (its beta there: {p.beta:.3g})" if knob is not BETA else ""
        overuse = (f" Its stories over-use {M.overuse_text(p.overused, p.stories)} against the unmodified "
                   "model's (3 uses added to each word's)."
                   if p.overused else "")
        lines.append(
            f"best point (the default export): {name(p.value)} at {p.generations} generations{at_beta}, the stable point "
            f"with the most alliteration ({p.alliteration:.2f} by its evaluation, {measure} "
            f"{p.diversity_kept:.0%} of the unmodified model's, fluency {p.fluency_gap:+.2f} nats): "
            f"{edge}{seeds_line}{fails}.{overuse}"
        )
    else:
        lines.append("best point: none - no point is kept with its next evaluation kept too.")
    front = ", ".join(f"{b:g}" for b in s.loc[s["pareto"], VALUE]) or "none"
    lines.append(f"Pareto front of alliteration against {measure}: {knob.symbol} = {front}.")
    lines.append(f"The update: {result.recipe.describe_recipe()}.")
    u = result.trl_units
    if u is not None:
        lines.append(f"In TRL's KL units (summed over the completion's tokens, as its RLOOTrainer's beta), beta "
                     f"{u['beta']:.3g} here is beta {u['beta_trl']:.3g}: the completion-summed KL of its own training "
                     f"samples, up to {u['generations']} generations, is {u['ratio']:.0f}x their per-token mean.")
    return "\n".join(lines)


def search_frame(search: dict[str, Any]) -> pd.DataFrame:
    """A search's path, one row per beta in the order it was chosen: round, why, and what came of it."""
    outcomes: dict[float, list[str]] = {}
    for step in search["steps"]:
        if step["event"] == "outcome":
            at = f" at {step['generations']}" if step.get("generations") is not None else ""
            outcomes.setdefault(step["beta"], []).append(f"{step['verdict']}{at}")
    rows = [{"round": step["round"], "beta": f"{step['beta']:g}", "why": step["why"],
             "outcome": "; ".join(outcomes.get(step["beta"], ["(running)"]))}
            for step in search["steps"] if step["event"] == "suggest"]
    return pd.DataFrame(rows, columns=["round", "beta", "why", "outcome"])


def search_summary(search: dict[str, Any]) -> str:
    end = [step["reason"] for step in search["steps"] if step["event"] == "finished"]
    settings = search["settings"]
    return (f"Search: start {', '.join(f'{b:g}' for b in settings['start'])}, precision {settings['precision']:g}, "
            f"budget {settings['budget']} betas, seeds {settings['seeds']}. "
            + (f"It ended: {end[-1]}." if end else "Not finished (still running, or interrupted)."))


def choice_json(result: Analysis, out: Path) -> dict[str, Any]:
    s = result.summary
    return {
        "choice": result.choice.as_dict() if result.choice else None,
        "best_point": result.best_point.as_dict() if result.best_point else None,
        "rule": dataclasses.asdict(result.cfg),
        "knob": result.knob.name,
        "pareto_front": s.loc[s["pareto"], VALUE].tolist(),
        "betas": [plain(r) for r in result.knob.in_files(s).to_dict("records")],  # each value, under the knob's name
        "notes": result.notes,
        "search": result.search,
        "out": str(out),
    }


def point_stories(result: Analysis, value: float, generations: int | None = None) -> tuple[str, list[dict[str, Any]]]:
    """`examples` stories of a value's trial with the lowest seed: its evaluation at `generations` (default: its
    final point), or, for a trial without evaluations, its last training generations. Returns (what, stories)."""
    trials = sorted((t for t in result.trials if t.value == value), key=lambda t: (t.seed, t.name))
    if not trials:
        return "", []
    t = trials[0]
    seed = f", seed {t.seed}" if len(trials) > 1 else ""
    rows = t.stories(generations, result.cfg.window)
    stories = (rows.head if len(t.evaluations) else rows.tail)(result.cfg.examples).to_dict("records")
    if len(t.evaluations):
        at = int(t.evaluations["generations"].max()) if generations is None else generations
        return f"evaluation at {at} generations{seed}", stories
    return f"training generations{seed} (no evaluations)", stories


def _story_lines(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(header, text) of each story: where it is from and its raw reward (and fluency, for an evaluation)."""
    out = []
    for r in records:
        if "sample" in r:
            head = (f"story {r['sample']}{_prompt_of(r)}, raw reward {r['raw_reward']:.3g}, cross-entropy under the "
                    f"unmodified model {r['ce_ref']:.2f}")
        else:
            head = f"generation {r['generation']}{_prompt_of(r)}, raw reward {r['raw_reward']:.3g}"
        out.append((head, r["text"]))
    return out


def _prompt_of(record: dict[str, Any]) -> str:
    prompt = record.get("prompt")
    return f" (prompt {prompt!r})" if isinstance(prompt, str) else ""


def reward_line(result: Analysis) -> str:
    """The reward the trials ran with, its source and, for a file, its SHA-256."""
    r = result.reward
    where = {"builtin": "built into alliter (alliter.train.reward)", "file": f"the function {r['function']} of the file "
             f"{r['source']}", "module": f"the function {r['function']} of the module {r['source']}"}[r["kind"]]
    digest = f", SHA-256 {r['sha256']}" if r.get("sha256") else ""
    other = sorted({t.reward["reward"] for t in result.trials} - {r["reward"]})
    mixed = f" (some trials ran with {', '.join(other)}: they are not one sweep)" if other else ""
    line = f"Reward: {r['reward']}, {where}{digest}{mixed}. Alliteration in the tables is its mean."
    p = result.best_point
    if r["reward"] != DEFAULT_REWARD and p is not None:  # another reward's scale is not the study's count
        counts = study_alliteration([t for t in result.trials if t.value == p.value])
        at, base = (counts[counts["generations"] == g]["alliteration"].mean() for g in (p.generations, 0))
        if at == at:
            line += (f" By the study's count of alliterating pairs, the best point's stories hold {at:.1f} a story "
                     f"(the unmodified model's: {base:.1f}).")
    return line


def letters_table(result: Analysis) -> pd.DataFrame:
    """The letters section's table: per row (the unmodified model, each value at its final point) the top letters,
    their spread, t and s's share and the study's raw reward."""
    f = result.letters
    t = pd.DataFrame({
        result.knob.symbol: f["row"],
        "gens": f["generations"].map(lambda g: f"{g:.0f}"),
        "stories": f["stories"],
        "raw_alliteration": f["raw_alliteration"].map(_fmt(".2f")),
        "pairs": f["pairs"],
        "top_letters": f["top_letters"],
        "t+s": f["t_s_share"].map(_fmt(".0%")),
        "entropy_bits": f["letter_entropy"].map(_fmt(".2f")),
    })
    return t


LETTERS_TEXT = ("Which letters alliterate (letters.png, letters.csv): the share of the alliterating word pairs by "
                "their first letter, in the unmodified model's stories (generation 0) and at each value's final point "
                "(its seeds' stories pooled); entropy_bits is how spread they are (0: one letter; 4.70: all 26 "
                "alike); raw_alliteration is the study's raw reward, whatever reward the trials ran with.")


def story_sections(result: Analysis) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(title, what, stories) for the report: the best point's stories, then every beta's at its final point."""
    sections = []
    p = result.best_point
    if p is not None:
        what, stories = point_stories(result, p.value, p.generations)
        sections.append((f"The best point: {result.knob.label(p.value)} at {p.generations} generations", what,
                         _story_lines(stories)))
    for value in sorted(result.summary[VALUE]):
        what, stories = point_stories(result, value)
        verdict = result.summary.set_index(VALUE).at[value, "verdict"]
        sections.append((f"{result.knob.label(value)} ({verdict})", what, _story_lines(stories)))
    return sections




TABLES = ("summary", "points", "windows", "letters")  # the Analysis's frames best_beta writes, as NAME.csv


def write_outputs(result: Analysis, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:  # each value under the knob's name, as a reader of the files expects
        result.knob.in_files(getattr(result, name)).to_csv(out / f"{name}.csv", index=False)
    for name in PLOTS:
        plot(result, name.removesuffix(".png"), out / name)
    blocks = report_blocks(result, out)
    (out / "report.md").write_text(to_markdown(blocks, out), encoding="utf-8")
    (out / "report.html").write_text(to_html(blocks, "Beta sweep analysis"), encoding="utf-8")
    return [out / n for n in (*(f"{t}.csv" for t in TABLES), *PLOTS, "report.md",
                              "report.html")]


def _intro(result: Analysis) -> str:
    cfg = result.cfg
    return (
        f"{len(result.trials)} trials, {len(result.summary)} {result.knob.plural}. {reward_line(result)} A point is "
        "judged by its evaluation: "
        f"{result.trials[0].evaluations['sample'].nunique() if len(result.trials[0].evaluations) else 'no'} fresh stories "
        f"of the policy at that point, sampled with the same random numbers at every point, against the trial's "
        f"evaluation at generation 0 (the unmodified model). Rule: a point is not kept (and a trial fails "
        f"at its first such point) on any of: {cfg.rule().describe()}; fluency is the unmodified model's cross-entropy "
        f"of its stories. The choice: the highest alliteration at the final point among the {result.knob.plural} that never failed; "
        f"an alliteration gain under {cfg.under_optimised_share:.0%} of the best such gain (or under {cfg.min_gain:g}) "
        f"is under-optimised. The best point: the stable point (kept, and so is the trial's next evaluation) with the "
        f"most alliteration. self_bleu: mean BLEU of each story against the rest of its group (high = near-duplicates); "
        f"rep_4grams: share of a story's word 4-grams that repeat; div_kept: diversity as a share of the unmodified "
        f"model's; fluency: nats over the unmodified model's; kl_penalty: the training groups' (CE policy - CE "
        f"reference per token) over the last {cfg.window} generations."
    )


FRONTIER_TEXT = ("Raw reward gain over generation 0 against d = sqrt(KL), both by evaluation (frontier.png); KL is the "
                 "per-token estimate CE_ref - CE_policy times the generated tokens, and the estimate can be negative "
                 "(then d = 0). Gao et al. (2022)'s RL form R(d) = d (alpha - b log d), fitted per trial:")


def _fits_table(result: Analysis) -> pd.DataFrame:
    fits = frontier_fits(result)
    for col in ("alpha", "b", "r2"):
        fits[col] = fits[col].map(_fmt(".3g"))
    fits[VALUE] = fits[VALUE].map(lambda v: f"{v:g}")
    return result.knob.in_files(fits.drop(columns="trial"))


def report_blocks(result: Analysis, out: Path) -> list[Block]:
    """report.md and report.html, as one list of sections."""
    blocks: list[Block] = [
        Heading("Beta sweep: alliteration against diversity and fluency", 1), Text(_intro(result)),
        Heading("The choice"), Bullets([line.strip() for line in reason(result).splitlines()]),
        Heading("Table"), Table(display_frame(result)), Text("(* the choice)"),
    ]
    if result.search:
        blocks += [Heading("The search"), Text(search_summary(result.search)), Table(search_frame(result.search))]
    if result.notes:
        blocks += [Heading("Trials to know about"), Bullets(result.notes)]
    blocks += [Heading("The reward-KL frontier"), Text(FRONTIER_TEXT), Table(_fits_table(result)),
               Heading("Which letters alliterate"), Text(LETTERS_TEXT), Table(letters_table(result)),
               Heading("Plots"), *(Image(out / p) for p in PLOTS), Heading("Stories")]
    for title, what, stories in story_sections(result):
        blocks += [Heading(title, 3), Text(f"{what}:"), *(Story(head, text) for head, text in stories)]
    return blocks

"""What best_beta.py writes: the table, summary.csv, points.csv and windows.csv, the plots, report.md and
report.html (plots embedded, generated text escaped)."""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from alliter import measures as M
from alliter.analyse.document import fence
from alliter.analyse.frames import KNOB_SYMBOLS
from alliter.analyse.judge import Analysis, plain
from alliter.analyse.letters import LETTERS, UNMODIFIED
from alliter.config import DEFAULT_REWARD
from alliter.rule import as_diversity

# the study's colours for the coarse grid, low beta to high; gold stands in for yellow, which is unreadable on white
STUDY_COLOURS = ["red", "darkorange", "gold", "green", "blue", "darkviolet"]
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
    "fluency": "fluency_gap",
    "kl_penalty": "kl_penalty",
    "top_letters": "top_letters",
    "verdict": "verdict",
    "fails_at": "failed_at",
}
# the rule's measure, when it is not distinct-2: header -> summary column, shown after distinct_2
RULE_COLUMNS = {"distinct_1": "distinct_1", "unique_fraction": "unique"}
PLOTS = ("evaluations.png", "frontier.png", "letters.png", "raw_reward.png", "kl_penalty.png", "diversity.png",
         "pareto.png")
MEASURE_LABELS = {m.name: m.label for m in M.MEASURES if m.rule}  # the rule's diversity measures


# The diversity plot's panels. The unique fraction (distinct texts per group) counts exact copies only, so it
# sits at 1.0 until a group's texts are character for character the same, long after the collapse shows: the
# fourth panel is 1 - the share of a text's word 4-grams that repeat inside it, which falls as a text turns
# into "tall tall tall" (0.93 repeated at beta 0 against 0.00 at beta 100 on the coarse grid) and is the one
# panel that looks inside a text rather than across the group. The unique fraction stays, when the rule uses it.
PANEL_LABELS = {m.name: m.label for m in M.MEASURES if m.rule or m.sameness}


def diversity_panels(rule_measure: str) -> list[str]:
    return ["distinct_1", "distinct_2", "self_bleu", "unique_fraction" if rule_measure == "unique_fraction" else "repeated_4grams"]


def beta_label(beta: float) -> str:
    return f"β = {beta:g}"


def value_label(result: Analysis, value: float) -> str:
    """A value of the sweep's knob in a plot: β = 50, or target = 0.1."""
    return beta_label(value) if result.knob == "beta" else f"target = {value:g}"


def value_name(result: Analysis, value: float) -> str:
    """A value of the sweep's knob in a sentence: beta=50, or target=0.1."""
    return f"{KNOB_SYMBOLS[result.knob]}={value:g}"


def values_noun(result: Analysis) -> str:
    return "betas" if result.knob == "beta" else "KL targets"


LEGEND_TITLES = {"beta": "beta (KL coefficient)", "kl_target": "KL target (nats per token)"}


def beta_colours(betas: list[float]) -> dict[float, tuple]:
    """Colours in log-beta order, red (low) to violet (high); beta 0 sits a decade under the smallest
    positive beta. The coarse grid 0, 0.01 .. 100 gets exactly red, orange, yellow, green, blue, violet."""
    betas = sorted(set(betas))
    positive = [b for b in betas if b > 0]
    zero_at = math.log10(min(positive)) - 1 if positive else 0.0
    x = np.array([math.log10(b) if b > 0 else zero_at for b in betas])
    span = x.max() - x.min()
    cmap = LinearSegmentedColormap.from_list("study", STUDY_COLOURS)
    return {b: cmap(float((v - x.min()) / span) if span else 0.0) for b, v in zip(betas, x)}


# --- text --------------------------------------------------------------------------------------------


def display_frame(result: Analysis) -> pd.DataFrame:
    """The summary as the table shows it: rounded numbers, the chosen beta marked; with seeds, the
    standard error of alliteration and of the rule's diversity measure, and the seeds that collapsed."""
    summary, measure = result.summary, result.cfg.diversity_measure
    columns = dict(TABLE)
    if measure in RULE_COLUMNS:
        at = list(columns).index("distinct_2") + 1
        columns = dict([*list(columns.items())[:at], (RULE_COLUMNS[measure], measure), *list(columns.items())[at:]])
    knob = result.knob
    columns = {knob if k == "beta" else k: knob if v == "beta" else v for k, v in columns.items()}
    t = summary[list(columns.values())].copy()
    t.columns = list(columns)
    t[knob] = t[knob].map(lambda b: f"{b:g}")
    t["gens"] = t["gens"].map(lambda g: f"{g:.0f}")
    t["div_kept"] = t["div_kept"].map(_fmt(".0%"))
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
    if knob != "beta":  # a KL-target sweep: where each target's beta ended, and the range it moved in
        t["beta"] = summary["beta"].map(lambda v: f"{v:.3g}")
        t["beta_range"] = [f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(summary["beta_min"], summary["beta_max"])]
    return t


def table(result: Analysis) -> str:
    return display_frame(result).to_string(index=False) + "\n(* the choice)" + _table_key(result)


def _table_key(result: Analysis) -> str:
    evaluated = (result.summary["source"] == "evaluation").all()
    where = "its final evaluation" if evaluated else "its final point (an evaluation, else its last training window)"
    beta = ("; beta: where the controller left it, beta_range: its range along training"
            if result.knob != "beta" else "")
    return (f"\n(alliteration to fluency: each {KNOB_SYMBOLS[result.knob]} at {where}; fluency: nats over the unmodified "
            f"model's own stories; kl_penalty: the training groups' over the last {result.cfg.window} generations{beta})")


def _fmt(spec: str) -> Any:
    """A formatter for a column's values: format(v, spec), or "-" for a missing one."""
    return lambda v: "-" if pd.isna(v) else format(v, spec)


def markdown_table(frame: pd.DataFrame) -> str:
    rows = [list(frame.columns), ["---"] * frame.shape[1], *frame.astype(str).to_numpy().tolist()]
    return "\n".join("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows)


def _pm(value: float, se: float, digits: int = 2) -> str:
    """12.70±0.45 (standard error across seeds), or 12.70 with one seed."""
    if pd.isna(value):
        return "-"
    return f"{value:.{digits}f}" + ("" if pd.isna(se) else f"±{se:.{digits}f}")


def _seeds_kept(row: Any) -> str:
    return f"kept in {row.trials - row.failed_seeds} of {row.trials} seeds"


def _failure(row: Any, measure: str, seeds: bool) -> str:
    """How a failed value failed: where, as what, and by how much at its final point."""
    what = "degenerated (non-words)" if row.failed_as == "degenerate" else "collapsed"
    when = (f"{what} in {row.failed_seeds} of {row.trials} seeds" if seeds
            else f"{what} at {row.failed_at:.0f} generations")
    by = (f"fluency {row.fluency_gap:+.2f} nats over the unmodified model's" if row.failed_as == "degenerate"
          else f"{measure} {row.diversity:.2f}, {row.diversity_kept:.0%} of the unmodified model's")
    return f"{when}: {by}"


def reason(result: Analysis) -> str:
    """The choice and why, how sure it is (with seeds), the best point in training and the Pareto front,
    in plain sentences."""
    cfg, s, c, p = result.cfg, result.summary, result.choice, result.best_point
    knob, noun = result.knob, values_noun(result)
    name = lambda v: value_name(result, v)  # noqa: E731
    measure = MEASURE_LABELS[cfg.diversity_measure]
    seeds = bool((s["trials"] > 1).any())
    rule = (
        f"among the {noun} whose every evaluation kept {measure} at or above {cfg.diversity_share:.0%} of the "
        f"unmodified model's and fluency within {cfg.fluency_margin:g} nats of it"
        + (f", in all but {cfg.max_collapse_rate:.0%} of their seeds" if cfg.max_collapse_rate > 0 else
           ", in every seed" if seeds else "")
    )
    if c is None and (s["verdict"] == "unmeasured").all():
        lines = ["choice: none - no trial has a point to judge yet (no evaluation after generation 0, no training "
                 "window)."]
    elif c is None:
        lines = [f"choice: none - every one collapsed or degenerated ({cfg.rule().describe()}). Try "
                 + ("larger betas" if knob == "beta" else "smaller KL targets") + ", an earlier point (below), or a "
                 "looser rule."]
    else:
        row = s[s["chosen"]].iloc[0]
        lines = [
            f"choice: {name(c['value'])}, the highest {'mean ' if seeds else ''}alliteration at its final point "
            f"({_pm(c['alliteration'], c['alliteration_se'])} mean raw reward at {c['point']:.0f} generations, "
            f"{c['alliteration_gain']:+.2f} over the unmodified model) {rule} (there its {measure} is "
            f"{c['diversity_kept']:.0%} of the unmodified model's, its fluency {c['fluency_gap']:+.2f} nats"
            + (f"; {_seeds_kept(row)})." if seeds else ").")
        ]
        if c["verdict"] == "under-optimised":
            lines.append("  It barely raised alliteration over the unmodified model: train longer"
                         + (" or with a smaller beta." if knob == "beta" and c["value"] > 0 else "."))
        for other in s[s["verdict"].isin(["collapsed", "degenerate"]) & (s["alliteration"] > c["alliteration"])].itertuples():
            lines.append(f"  {name(getattr(other, knob))} reached more alliteration "
                         f"({_pm(other.alliteration, other.alliteration_se)}) but {_failure(other, measure, seeds)}.")
        runners = s[~s["verdict"].isin(["collapsed", "degenerate", "dropped"]) & ~s["chosen"]]
        runners = runners.sort_values("alliteration", ascending=False)
        if seeds and len(runners):
            r = runners.iloc[0]
            apart = c["alliteration"] - r["alliteration"] > sum(v for v in (c["alliteration_se"], r["alliteration_se"])
                                                                  if not pd.isna(v))  # None: one seed, no interval
            lines.append(
                f"  {name(c['value'])} over {name(r[knob])} (the next kept {KNOB_SYMBOLS[knob]}): mean alliteration "
                f"{_pm(c['alliteration'], c['alliteration_se'])} against {_pm(r['alliteration'], r['alliteration_se'])} "
                + ("(further apart than their standard errors)" if apart else "(within their standard errors: as good)")
                + f", {_seeds_kept(row)} against {r['trials'] - r['failed_seeds']} of {r['trials']}."
            )
    if p is not None:
        edge = (f"its next evaluation, at {p['next']}, is kept too" if p["next"] is not None
                else "it is the last point of a trial that never failed")
        seeds_line = f" in {p['stable_trials']} of {p['trials']} seeds" if p["trials"] > 1 else ""
        fails = f"; {name(p['value'])} fails at {p['failed_at']:.0f} generations" if p["failed_at"] else ""
        at_beta = f" (its beta there: {p['beta']:.3g})" if knob != "beta" else ""
        overuse = (f" Its stories over-use {M.overuse_text(p['overused'])} against the unmodified model's."
                   if p.get("overused") else "")
        lines.append(
            f"best point (the default export): {name(p['value'])} at {p['generations']} generations{at_beta}, the stable point "
            f"with the most alliteration ({p['alliteration']:.2f} by its evaluation, {measure} "
            f"{p['diversity_kept']:.0%} of the unmodified model's, fluency {p['fluency_gap']:+.2f} nats): "
            f"{edge}{seeds_line}{fails}.{overuse}"
        )
    else:
        lines.append("best point: none - no point is kept with its next evaluation kept too.")
    front = ", ".join(f"{b:g}" for b in s.loc[s["pareto"], knob]) or "none"
    lines.append(f"Pareto front of alliteration against {measure}: {KNOB_SYMBOLS[knob]} = {front}.")
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
        "choice": result.choice,
        "best_point": result.best_point,
        "rule": dataclasses.asdict(result.cfg),
        "knob": result.knob,
        "pareto_front": s.loc[s["pareto"], result.knob].tolist(),
        "betas": [plain(r) for r in s.to_dict("records")],  # each value of the knob (the name of a beta sweep's)
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
    if len(t.evaluations):
        at = int(t.evaluations["generations"].max()) if generations is None else generations
        stories = t.evaluations[t.evaluations["generations"] == at].head(result.cfg.examples).to_dict("records")
        return f"evaluation at {at} generations{seed}", stories
    last = t.generations.tail(result.cfg.examples).to_dict("records")
    return f"last training generations{seed} (no evaluations)", last


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


def reward_label(result: Analysis) -> str:
    """The trials' raw reward, as a plot's axis names it."""
    name = result.reward["reward"]
    return "raw reward (alliterating word pairs)" if name == DEFAULT_REWARD else f"raw reward ({name})"


def reward_line(result: Analysis) -> str:
    """The reward the trials ran with, its source and, for a file, its SHA-256."""
    r = result.reward
    where = {"builtin": "built into alliter (alliter.train.reward)", "file": f"the function {r['function']} of the file "
             f"{r['source']}", "module": f"the function {r['function']} of the module {r['source']}"}[r["kind"]]
    digest = f", SHA-256 {r['sha256']}" if r.get("sha256") else ""
    other = sorted({t.reward["reward"] for t in result.trials} - {r["reward"]})
    mixed = f" (some trials ran with {', '.join(other)}: they are not one sweep)" if other else ""
    return f"Reward: {r['reward']}, {where}{digest}{mixed}. Alliteration in the tables is its mean."


def letters_table(result: Analysis) -> pd.DataFrame:
    """The letters section's table: per row (the unmodified model, each value at its final point) the top letters,
    their spread, t and s's share and the study's raw reward."""
    f = result.letters
    t = pd.DataFrame({
        KNOB_SYMBOLS[result.knob]: f["row"],
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
        what, stories = point_stories(result, p["value"], p["generations"])
        sections.append((f"The best point: {value_label(result, p['value'])} at {p['generations']} generations", what,
                         _story_lines(stories)))
    for value in sorted(result.summary[result.knob]):
        what, stories = point_stories(result, value)
        verdict = result.summary.set_index(result.knob).at[value, "verdict"]
        sections.append((f"{value_label(result, value)} ({verdict})", what, _story_lines(stories)))
    return sections


# --- plots --------------------------------------------------------------------------------------------


def smoothed(result: Analysis, columns: list[str]) -> dict[float, pd.DataFrame]:
    """Per beta: each trial's per-group values as a running mean over the last `window` generations, then
    their mean over the beta's trials (seeds) and its standard error (`<column>_se`, NaN for one trial)."""
    curves = {}
    for beta, g in result.groups.groupby(result.knob):
        per_trial = []
        for _, trial in g.groupby("trial"):
            per_group = trial.set_index("generations")[columns].sort_index()
            step = float(np.median(np.diff(per_group.index))) if len(per_group) > 1 else float(per_group.index[0])
            per_trial.append(per_group.rolling(max(1, round(result.cfg.window / step)), min_periods=1).mean())
        curves[beta] = _mean_and_se(pd.concat(per_trial).groupby(level=0))
    return curves


def _mean_and_se(grouped: Any) -> pd.DataFrame:
    """Each group's mean and its standard error (`<column>_se`: the sample standard deviation over the square root of
    the count; NaN for one row)."""
    return grouped.mean().join((grouped.std(ddof=1) / np.sqrt(grouped.count())).add_suffix("_se"))


def _plot_mean(ax: Any, x: Any, y: pd.Series, se: pd.Series, colour: Any, lw: float, label: str) -> None:
    """A beta's mean curve, with a band of one standard error across its seeds where it has several."""
    ax.plot(x, y, color=colour, lw=lw, label=label)
    if se.notna().any():
        ax.fill_between(x, y - se, y + se, color=colour, alpha=0.18, lw=0)


def _figure(width: float = 8, height: float = 4.8, rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _legend(ax: Any, source: Any = None, title: str = LEGEND_TITLES["beta"]) -> None:
    """The legend to the right of ax, with source's entries (default: ax's)."""
    handles, labels = (source or ax).get_legend_handles_labels()
    ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def point_curves(result: Analysis) -> dict[float, pd.DataFrame]:
    """Per beta: its points' alliteration, diversity share and fluency gap by generations, the mean over its
    trials (seeds) and its standard error (`<column>_se`, NaN for one trial)."""
    columns = ["alliteration", "diversity_kept", "fluency_gap"]
    curves = {}
    for beta, p in result.points.groupby(result.knob):
        curves[beta] = _mean_and_se(p.groupby("generations")[columns])
    return curves


def plot_evaluations(result: Analysis, path: Path) -> None:
    """The points the rule judges, along training: alliteration, diversity as a share of the unmodified model's,
    and the fluency gap, with the rule's two limits and the best point."""
    cfg, s = result.cfg, result.summary
    colours = beta_colours(list(s[result.knob]))
    curves = point_curves(result)
    fig, axes = _figure(15, 4.6, 1, 3)
    measure = MEASURE_LABELS[cfg.diversity_measure]
    panels = [("alliteration", "alliteration (mean raw reward)", "Alliteration"),
              ("diversity_kept", f"{measure}, share of the unmodified model's", f"Diversity ({measure})"),
              ("fluency_gap", "nats over the unmodified model's own stories", "Fluency: cross-entropy under the unmodified model")]
    for ax, (column, ylabel, title) in zip(axes[0], panels):
        for beta, curve in curves.items():
            _plot_mean(ax, curve.index, curve[column], curve[f"{column}_se"], colours[beta], 1.6, value_label(result, beta))
            ax.scatter(curve.index, curve[column], color=colours[beta], s=10)
        if column == "diversity_kept":
            ax.axhline(cfg.diversity_share, color="black", ls="--", lw=1, label=f"rule: {cfg.diversity_share:.0%}")
            ax.set_ylim(0, 1.25)
        if column == "fluency_gap":
            ax.axhline(cfg.fluency_margin, color="black", ls="--", lw=1, label=f"rule: +{cfg.fluency_margin:g} nats")
        if column != "diversity_kept":  # linear near the rule's limits, logarithmic past them (collapses reach +4, 95)
            _symlog(ax, 1.0 if column == "fluency_gap" else 10.0,
                    [-0.5, -0.25, 0, 0.25, 0.5, 1, 2, 4] if column == "fluency_gap" else [0, 2, 4, 6, 8, 10, 20, 50, 100])
        p = result.best_point
        if p is not None and p[column] is not None:
            ax.scatter(p["generations"], p[column], marker="*", s=260, color=colours[p["value"]], edgecolor="black",
                       zorder=5, label=f"best point: {value_label(result, p['value'])}, {p['generations']} gens")
        ax.set(xlabel="generations", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
    _legend(axes[0][2], title=LEGEND_TITLES[result.knob])
    source = "evaluations" if (s["source"] == "evaluation").all() else "evaluations (training windows where a trial has none)"
    fig.suptitle(f"The points the rule judges: {source}, mean over seeds with one standard error")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")


def _symlog(ax: Any, linear_up_to: float, ticks: list[float]) -> None:
    low, high = ax.get_ylim()
    ax.set_yscale("symlog", linthresh=linear_up_to, linscale=2.0)
    shown = [t for t in ticks if low <= t <= high] or ticks
    ax.set_yticks(shown, [f"{t:g}" for t in shown])
    ax.minorticks_off()


# --- the reward-KL frontier (Gao et al., 2022) -------------------------------------------------------------


def frontier_points(result: Analysis) -> pd.DataFrame:
    """Per trial and evaluated point: d = sqrt of the sequence-level KL (the per-token estimate CE_ref - CE_policy
    times the generated tokens; an estimate below 0 counts as 0) and the raw reward gain over the trial's
    generation 0, both by evaluation."""
    p = result.points.sort_values(["trial", "generations"]).copy()
    p["d"] = np.sqrt(np.clip(p["kl"] * p["new_tokens"], 0, None))
    base = p.groupby("trial")["alliteration"].transform("first")
    p["gain"] = p["alliteration"] - base
    return p


def gao_fit(d: np.ndarray, gain: np.ndarray) -> tuple[float, float, float] | None:
    """Gao et al.'s RL form R(d) = d (alpha - b log d), fitted by least squares on the points with d > 0:
    (alpha, b, R^2), or None with fewer than 4 such points."""
    keep = d > 0
    d, gain = d[keep], gain[keep]
    if len(d) < 4:
        return None
    design = np.column_stack([d, -d * np.log(d)])
    (alpha, b), *_ = np.linalg.lstsq(design, gain, rcond=None)
    total = float(((gain - gain.mean()) ** 2).sum())
    r2 = 1 - float(((gain - design @ [alpha, b]) ** 2).sum()) / total if total > 0 else math.nan
    return float(alpha), float(b), r2


def frontier_fits(result: Analysis) -> pd.DataFrame:
    """Per trial: Gao et al.'s fit of its frontier (alpha, b, R^2), where it has the points for one."""
    rows = []
    for trial, g in frontier_points(result).groupby("trial", sort=False):
        fit = gao_fit(g["d"].to_numpy(), g["gain"].to_numpy())
        value = g[result.knob].iloc[0]
        rows.append({result.knob: value, "seed": int(g["seed"].iloc[0]), "trial": trial, "points": len(g),
                     "alpha": fit[0] if fit else math.nan, "b": fit[1] if fit else math.nan,
                     "r2": fit[2] if fit else math.nan})
    return pd.DataFrame(rows, columns=[result.knob, "seed", "trial", "points", "alpha", "b", "r2"])


TAB10 = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:grey",
         "tab:olive", "tab:cyan"]


def plot_frontier(results: list[Analysis], path: Path) -> None:
    """Raw reward gain against sqrt(KL), by evaluation, along training: per value of each sweep's knob, the mean
    over its seeds at each evaluated generation with bars of one standard error, every trial's own curve
    faint beneath, and Gao et al.'s form fitted to each trial where it fits (R^2 >= 0.5, dashed). Several
    sweeps (a fixed beta and a KL target) share the axes."""
    fig, axes = _figure(9, 5.5)
    ax = axes[0][0]
    palette = iter(TAB10 * 4)  # several sweeps: a colour per (sweep, value), where each sweep's own scale would repeat
    for result, style in zip(results, ("-", "--", ":", "-.")):
        colours = beta_colours(list(result.summary[result.knob]))
        if len(results) > 1:
            colours = {value: next(palette) for value in colours}
        points = frontier_points(result)
        fits = frontier_fits(result).set_index("trial")
        for value, g in points.groupby(result.knob):
            colour = colours[value]
            for trial, t in g.groupby("trial"):
                ax.plot(t["d"], t["gain"], color=colour, lw=0.6, alpha=0.35, ls=style)
                fit = fits.loc[trial]
                if fit["r2"] >= 0.5:
                    d = np.linspace(max(t["d"].min(), 1e-3), t["d"].max(), 60)
                    ax.plot(d, d * (fit["alpha"] - fit["b"] * np.log(d)), color=colour, lw=0.9, ls=(0, (2, 2)))
            by = g.groupby("generations")[["d", "gain"]]
            mean, count = by.mean(), by.count()["gain"]
            se = (by.std(ddof=1)["gain"] / np.sqrt(count)).fillna(0)
            ax.plot(mean["d"], mean["gain"], color=colour, lw=2, ls=style, marker="o", ms=3,
                    label=value_label(result, value) + (f" ({len(g['trial'].unique())} seeds)"
                                                         if g["trial"].nunique() > 1 else ""))
            if (se > 0).any():  # bars, not a band: d can move back along training, and a band would fold over
                ax.errorbar(mean["d"], mean["gain"], yerr=se, color=colour, lw=0, elinewidth=1, capsize=2)
    ax.set(xlabel="sqrt(KL): sqrt of the per-token estimate (CE_ref - CE_policy) x the generated tokens",
           ylabel="raw reward gain over generation 0 (by evaluation)",
           title="The reward-KL frontier along training (dashed thin: Gao et al.'s d (alpha - b log d), where it fits)")
    ax.set_yscale("symlog", linthresh=10.0, linscale=2.0)
    ax.grid(alpha=0.3)
    _legend(ax, title=" / ".join(LEGEND_TITLES[r.knob] for r in {r.knob: r for r in results}.values()))
    fig.savefig(path, bbox_inches="tight")


def plot_letters(result: Analysis, path: Path) -> None:
    """A heat map of the alliterating pairs' first letters: a row for the unmodified model and one per value at its
    final point, a column per letter that makes at least 1% of any row's pairs (the rest: "other"), ordered by
    the unmodified model's shares; each row says its entropy."""
    f = result.letters
    fig, axes = _figure(12, 1.6 + 0.45 * max(1, len(f)))
    ax = axes[0][0]
    if not len(f) or not f["pairs"].sum():
        ax.text(0.5, 0.5, "no alliterating pairs to show", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, bbox_inches="tight")
        return
    shares = f[list(LETTERS)].fillna(0.0)
    shown = [c for c in LETTERS if shares[c].max() >= 0.01]
    order = shares.iloc[0] if f["row"].iloc[0] == UNMODIFIED else shares.mean()
    shown = sorted(shown, key=lambda c: -order[c])
    grid = shares[shown].assign(other=1 - shares[shown].sum(axis=1)).clip(lower=0)
    grid[f["pairs"].to_numpy() == 0] = np.nan
    image = ax.imshow(grid.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid.to_numpy()):
        if np.isfinite(v) and v >= 0.005:
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8, color="white" if v > 0.55 else "black")
    rows = [("unmodified model" if r.row == UNMODIFIED else value_label(result, getattr(r, result.knob)))
            + (f"  ({r.letter_entropy:.2f} bits, {r.pairs} pairs)" if r.pairs else "  (no pairs)")
            for r in f.itertuples()]
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xticks(range(len(grid.columns)), list(grid.columns))
    ax.set(xlabel="first letter of the alliterating word pair")
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="share of the row's pairs")
    ax.set_title(f"Which letters alliterate: the unmodified model, and each {KNOB_SYMBOLS[result.knob]} at its final "
                 "point (seeds pooled; entropy of the shares in bits)")
    fig.savefig(path, bbox_inches="tight")


def plot_curve(result: Analysis, column: str, ylabel: str, title: str, path: Path) -> None:
    colours = beta_colours(list(result.summary[result.knob]))
    fig, axes = _figure()
    ax = axes[0][0]
    for beta, curve in smoothed(result, [column]).items():
        _plot_mean(ax, curve.index, curve[column], curve[f"{column}_se"], colours[beta], 1.8, value_label(result, beta))
    if column == "kl_penalty_mean":
        ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="generations", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    _legend(ax, title=LEGEND_TITLES[result.knob])
    fig.savefig(path, bbox_inches="tight")


def plot_diversity(result: Analysis, path: Path) -> None:
    cfg, s = result.cfg, result.summary
    colours = beta_colours(list(s[result.knob]))
    columns = diversity_panels(cfg.diversity_measure)
    curves = smoothed(result, columns)
    fig, axes = _figure(12, 7.5, 2, 2)
    rule_ax = axes[0][0]
    for ax, column in zip(axes.flat, columns):
        for beta, curve in curves.items():
            y = as_diversity(curve[column], column)
            _plot_mean(ax, curve.index, y, curve[f"{column}_se"], colours[beta], 1.6, value_label(result, beta))
        ax.set_ylim(0, 1.02)  # all four are shares: a fixed scale shows a collapse for what it is
        ax.set(xlabel="generations", ylabel=PANEL_LABELS[column] + " (higher = more diverse)", title=PANEL_LABELS[column])
        ax.grid(alpha=0.3)
    _legend(axes[0][1], axes[0][0], title=LEGEND_TITLES[result.knob])
    fig.suptitle(f"Diversity within each training group, running mean over {cfg.window} generations "
                 "(the rule judges the evaluations: evaluations.png)")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")


def plot_pareto(result: Analysis, path: Path) -> None:
    cfg, s = result.cfg, result.summary
    colours = beta_colours(list(s[result.knob]))
    measure = MEASURE_LABELS[cfg.diversity_measure]
    fig, axes = _figure(8, 5.5)
    ax = axes[0][0]
    threshold = s["diversity_threshold"].mean()
    ax.axhspan(0, threshold, color="red", alpha=0.07, label="collapsed (under the threshold)")
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"{cfg.diversity_share:.0%} of unmodified model")
    ax.scatter(s["alliteration_baseline"].mean(), s["diversity_baseline"].mean(), marker="X", s=110, color="black",
               label="unmodified model", zorder=6)
    front = s[s["pareto"]].sort_values("alliteration")
    ax.plot(front["alliteration"], front["diversity"], color="grey", lw=1.2, ls=":", label="Pareto front")
    for i, row in enumerate(s.itertuples()):
        value = getattr(row, result.knob)
        ax.scatter(row.alliteration, row.diversity, s=90, color=colours[value], edgecolor="black", lw=0.6,
                   label=f"{value_label(result, value)} ({row.verdict})", zorder=4)
        if pd.notna(row.alliteration_se) or pd.notna(row.diversity_se):  # seeds: one standard error each way
            ax.errorbar(row.alliteration, row.diversity, xerr=np.nan_to_num(row.alliteration_se),
                        yerr=np.nan_to_num(row.diversity_se), color=colours[value], lw=1, capsize=3, zorder=3)
        # labels alternate above and below, so neighbouring betas' labels do not print over each other
        ax.annotate(f"{value:g}", (row.alliteration, row.diversity), textcoords="offset points",
                    xytext=(9, 7 if i % 2 == 0 else -15))
    if result.choice is not None:
        ax.scatter(result.choice["alliteration"], result.choice["diversity"], s=380, facecolor="none",
                   edgecolor="black", lw=2, label=f"choice: {value_label(result, result.choice['value'])}", zorder=5)
    ax.set(xlabel=f"alliteration (mean raw reward, last {cfg.window} generations)",
           ylabel=f"{measure} (last {cfg.window} generations)",
           title=f"Alliteration against diversity, by {KNOB_SYMBOLS[result.knob]}")
    ax.set_ylim(0, 1.12)  # room for the labels of betas that keep all their diversity
    ax.grid(alpha=0.3)
    _legend(ax, title=LEGEND_TITLES[result.knob])
    fig.savefig(path, bbox_inches="tight")


# --- files ----------------------------------------------------------------------------------------------


def write_outputs(result: Analysis, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    result.summary.to_csv(out / "summary.csv", index=False)
    result.points.to_csv(out / "points.csv", index=False)
    result.windows.to_csv(out / "windows.csv", index=False)
    result.letters.to_csv(out / "letters.csv", index=False)
    plot_evaluations(result, out / "evaluations.png")
    plot_frontier([result], out / "frontier.png")
    plot_letters(result, out / "letters.png")
    plot_curve(result, "raw_reward_mean", reward_label(result),
               f"Raw reward of the training groups, running mean over {result.cfg.window} generations", out / "raw_reward.png")
    plot_curve(result, "kl_penalty_mean", "KL penalty: CE policy - CE reference per token\n(more negative = further away)",
               f"Distance from the original model, running mean over {result.cfg.window} generations", out / "kl_penalty.png")
    plot_diversity(result, out / "diversity.png")
    plot_pareto(result, out / "pareto.png")
    (out / "report.md").write_text(report_markdown(result), encoding="utf-8")
    (out / "report.html").write_text(report_html(result, out), encoding="utf-8")
    return [out / n for n in ("summary.csv", "points.csv", "windows.csv", "letters.csv", *PLOTS, "report.md",
                              "report.html")]


def _intro(result: Analysis) -> str:
    cfg = result.cfg
    return (
        f"{len(result.trials)} trials, {len(result.summary)} {values_noun(result)}. {reward_line(result)} A point is "
        "judged by its evaluation: "
        f"{result.trials[0].evaluations['sample'].nunique() if len(result.trials[0].evaluations) else 'no'} fresh stories "
        f"of the policy at that point, sampled with the same random numbers at every point, against the trial's "
        f"evaluation at generation 0 (the unmodified model). Rule: a point keeps its "
        f"{MEASURE_LABELS[cfg.diversity_measure]} at or above {cfg.diversity_share:.0%} of the unmodified model's "
        f"(else collapsed) and its fluency, the unmodified model's cross-entropy of its stories, within "
        f"{cfg.fluency_margin:g} nats of the unmodified model's own (else degenerate); a trial fails at its first point "
        f"that is not kept. The choice: the highest alliteration at the final point among the {values_noun(result)} that never failed; "
        f"an alliteration gain under {cfg.under_optimised_share:.0%} of the best such gain (or under {cfg.min_gain:g}) "
        f"is under-optimised. The best point: the stable point (kept, and so is the trial's next evaluation) with the "
        f"most alliteration. self_bleu: mean BLEU of each story against the rest of its group (high = near-duplicates); "
        f"rep_4grams: share of a story's word 4-grams that repeat; div_kept: diversity as a share of the unmodified "
        f"model's; fluency: nats over the unmodified model's; kl_penalty: the training groups' (CE policy - CE "
        f"reference per token) over the last {cfg.window} generations."
    )


def report_markdown(result: Analysis) -> str:
    parts = ["# Beta sweep: alliteration against diversity and fluency", _intro(result), "## The choice",
             "\n".join(f"- {line.strip()}" for line in reason(result).splitlines()),
             "## Table", markdown_table(display_frame(result)), "(* the choice)"]
    if result.search:
        parts += ["## The search", search_summary(result.search), markdown_table(search_frame(result.search))]
    if result.notes:
        parts += ["## Trials to know about", "\n".join(f"- {n}" for n in result.notes)]
    parts += ["## The reward-KL frontier", FRONTIER_TEXT, markdown_table(_fits_table(result))]
    parts += ["## Which letters alliterate", LETTERS_TEXT, markdown_table(letters_table(result))]
    parts += ["## Plots", *(f"![{p}]({p})" for p in PLOTS), "## Stories"]
    for title, what, stories in story_sections(result):
        parts.append(f"### {title}\n\n{what}:")
        parts += [f"{head}:\n\n{fence(text)}" for head, text in stories]
    return "\n\n".join(parts) + "\n"


FRONTIER_TEXT = ("Raw reward gain over generation 0 against d = sqrt(KL), both by evaluation (frontier.png); KL is the "
                 "per-token estimate CE_ref - CE_policy times the generated tokens, and the estimate can be negative "
                 "(then d = 0). Gao et al. (2022)'s RL form R(d) = d (alpha - b log d), fitted per trial:")


def _fits_table(result: Analysis) -> pd.DataFrame:
    fits = frontier_fits(result)
    for col in ("alpha", "b", "r2"):
        fits[col] = fits[col].map(_fmt(".3g"))
    fits[result.knob] = fits[result.knob].map(lambda v: f"{v:g}")
    return fits.drop(columns="trial")


def report_html(result: Analysis, out: Path) -> str:
    e = html.escape
    images = "".join(
        f'<img alt="{p}" src="data:image/png;base64,{base64.b64encode((out / p).read_bytes()).decode()}">' for p in PLOTS
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    examples = ""
    for title, what, stories in story_sections(result):
        examples += f"<h3>{e(title)}</h3><p>{e(what)}:</p>" + "".join(
            f"<p>{e(head)}:</p><pre>{e(text)}</pre>" for head, text in stories)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "pre{white-space:pre-wrap;background:#f6f6f6;padding:8px}img{max-width:100%;display:block;margin:1em 0}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Beta sweep analysis</title><style>{style}</style>"
        f"</head><body><h1>Beta sweep: alliteration against diversity and fluency</h1><p>{e(_intro(result))}</p>"
        f"<h2>The choice</h2><pre>{e(reason(result))}</pre>"
        f"<h2>Table</h2>{display_frame(result).to_html(index=False, escape=True)}<p>(* the choice)</p>"
        + (f"<h2>The search</h2><p>{e(search_summary(result.search))}</p>"
           f"{search_frame(result.search).to_html(index=False, escape=True)}" if result.search else "")
        + (f"<h2>Trials to know about</h2><ul>{notes}</ul>" if notes else "")
        + f"<h2>The reward-KL frontier</h2><p>{e(FRONTIER_TEXT)}</p>{_fits_table(result).to_html(index=False, escape=True)}"
        + f"<h2>Which letters alliterate</h2><p>{e(LETTERS_TEXT)}</p>{letters_table(result).to_html(index=False, escape=True)}"
        + f"<h2>Plots</h2>{images}<h2>Stories</h2>{examples}</body></html>\n"
    )

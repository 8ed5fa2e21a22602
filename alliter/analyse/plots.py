"""best_beta's plots (PLOTS), each one figure of matplotlib's object API written to a PNG: the evaluations along
training, the reward-KL frontier, the letters, the training curves, the diversity panels, the Pareto front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from alliter.analyse.frames import study_alliteration
from alliter.analyse.frontier import frontier_fits, frontier_points
from alliter.analyse.judge import Analysis
from alliter.analyse.letters import LETTERS, UNMODIFIED
from alliter.analyse.names import (
    MEASURE_LABELS, PANEL_LABELS, beta_colours, diversity_panels, reward_label,
)
from alliter.cli import AlliterError
from alliter.knob import BETA, VALUE
from alliter.rule import as_diversity

TAB10 = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:grey",
         "tab:olive", "tab:cyan"]

ALLITERATION_TICKS = [0, 2, 4, 6, 8, 10, 20, 50, 100, 200]
PLOTS = ("evaluations.png", "frontier.png", "letters.png", "raw_reward.png", "kl_penalty.png", "diversity.png",
         "pareto.png")


def smoothed(result: Analysis, columns: list[str]) -> dict[float, pd.DataFrame]:
    """Per beta: each trial's per-group values as a running mean over the last `window` generations, then
    their mean over the beta's trials (seeds) and its standard error (`<column>_se`, NaN for one trial)."""
    curves = {}
    for beta, g in result.groups.groupby(VALUE):
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
    return grouped.mean().join(grouped.sem().add_suffix("_se"))


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


def _save(fig: Figure, path: Path | None) -> Figure:
    """The figure, written to `path` when one is given (a notebook shows the figure itself)."""
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig


def _legend(ax: Any, source: Any = None, title: str = BETA.legend) -> Any:
    """The legend to the right of ax, with source's entries (default: ax's)."""
    handles, labels = (source or ax).get_legend_handles_labels()
    return ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9,
                     frameon=False)


def point_curves(result: Analysis) -> dict[float, pd.DataFrame]:
    """Per beta: its points' alliteration, diversity share and fluency gap by generations, the mean over its
    trials (seeds) and its standard error (`<column>_se`, NaN for one trial)."""
    columns = ["alliteration", "diversity_kept", "fluency_gap", "top_overuse"]
    curves = {}
    for beta, p in result.points.groupby(VALUE):
        curves[beta] = _mean_and_se(p.groupby("generations")[columns])
    return curves


def plot_evaluations(result: Analysis, path: Path | None = None) -> Figure:
    """The points the rule judges, along training: alliteration, diversity as a share of the unmodified model's,
    the fluency gap and the most over-used word, with the rule's three limits and the best point."""
    cfg, s = result.cfg, result.summary
    colours = beta_colours(list(s[VALUE]))
    curves = point_curves(result)
    fig, axes = _figure(13, 9, 2, 2)
    measure = MEASURE_LABELS[cfg.diversity_measure]
    panels = [("alliteration", "alliteration (mean raw reward)", "Alliteration"),
              ("diversity_kept", f"{measure}, share of the unmodified model's", f"Diversity ({measure})"),
              ("fluency_gap", "nats over the unmodified model's own stories", "Fluency: cross-entropy under the unmodified model"),
              ("top_overuse", "times the unmodified model's rate", "The most over-used word (4+ letters)")]
    for ax, (column, ylabel, title) in zip(axes.flat, panels):
        for beta, curve in curves.items():
            _plot_mean(ax, curve.index, curve[column], curve[f"{column}_se"], colours[beta], 1.6, result.knob.label(beta))
            ax.scatter(curve.index, curve[column], color=colours[beta], s=10)
        if column == "diversity_kept":
            ax.axhline(cfg.diversity_share, color="black", ls="--", lw=1, label=f"rule: {cfg.diversity_share:.0%}")
            ax.set_ylim(0, 1.25)
        if column == "fluency_gap":
            ax.axhline(cfg.fluency_margin, color="black", ls="--", lw=1, label=f"rule: +{cfg.fluency_margin:g} nats")
        if column == "top_overuse":
            if cfg.max_overuse:
                ax.axhline(cfg.max_overuse, color="black", ls="--", lw=1, label=f"rule: {cfg.max_overuse:g}x")
            _ratio_axis(ax)
        elif column != "diversity_kept":  # linear near the rule's limits, logarithmic past them (collapses reach +4, 95)
            _symlog(ax, 1.0 if column == "fluency_gap" else 10.0,
                    [-0.5, -0.25, 0, 0.25, 0.5, 1, 2, 4] if column == "fluency_gap" else
                    ALLITERATION_TICKS)
        p = result.best_point
        if p is not None and getattr(p, column) is not None:
            ax.scatter(p.generations, getattr(p, column), marker="*", s=260, color=colours[p.value], edgecolor="black",
                       zorder=5, label=f"best point: {result.knob.label(p.value)}, {p.generations} gens")
        ax.set(xlabel="generations", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
    _legend(axes[0][1], title=result.knob.legend)
    source = "evaluations" if (s["source"] == "evaluation").all() else "evaluations (training windows where a trial has none)"
    fig.suptitle(f"The points the rule judges: {source}, mean over seeds with one standard error")
    fig.tight_layout()
    return _save(fig, path)


def plot_recipes(results: dict[str, Analysis], path: Path | None = None) -> Figure:
    """Recipes side by side on the same axes (alliter study's recipe and the recipe that holds): their evaluations'
    alliteration and most over-used word, the KL and beta along training; each seed thin, the mean over seeds thick."""
    fig, axes = _figure(13, 8.5, 2, 2)
    colours = dict(zip(results, ["tab:red", "tab:blue", "tab:green", "tab:purple"]))
    panels = [("alliteration", "alliterating pairs a story (the study's count)", "Alliteration (evaluations)"),
              ("top_overuse", "times the unmodified model's rate", "The most over-used word (evaluations)"),
              ("kl", "nats a token, a running mean", "KL from the unmodified model (training groups)"),
              ("beta", "beta", "beta (moved by a KL target's controller, if any)")]
    for ax, (column, ylabel, title) in zip(axes.flat, panels):
        for name, result in results.items():
            if column in ("kl", "beta"):
                groups = result.groups.assign(kl=-result.groups["kl_penalty_mean"])
                per_seed = groups.pivot_table(index="generations", columns="trial", values=column)
                step = float(np.median(np.diff(per_seed.index))) if len(per_seed) > 1 else 1.0
                per_seed = per_seed.rolling(max(1, round(result.cfg.window / step)), min_periods=1).mean()
            else:
                points = study_alliteration(result.trials) if column == "alliteration" else result.points
                per_seed = points.pivot_table(index="generations", columns="trial", values=column)
            for seed in per_seed:
                ax.plot(per_seed.index, per_seed[seed], color=colours[name], lw=0.7, alpha=0.45)
            ax.plot(per_seed.index, per_seed.mean(axis=1), color=colours[name], lw=2.2,
                    label=f"{name} (mean of {per_seed.shape[1]} seeds)")
        if column == "top_overuse":
            rule = next(iter(results.values())).cfg.max_overuse
            if rule:
                ax.axhline(rule, color="black", ls="--", lw=1, label=f"rule: {rule:g}x")
            _ratio_axis(ax)
        if column == "alliteration":  # linear where the recipes alliterate, logarithmic up to a collapse's
            _symlog(ax, 10.0, ALLITERATION_TICKS)
        if column == "beta" and ax.get_ylim()[0] > 0:
            ax.set_yscale("log")
            for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.set(xlabel="generations", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
    _legend(axes[0][1], title="recipe")
    fig.suptitle("The recipes side by side: each seed thin, their mean thick")
    fig.tight_layout()
    return _save(fig, path)


def _ratio_axis(ax: Any, axis: str = "y") -> None:
    """A logarithmic axis of ratios, ticked 1x, 2x, 5x, 10x, ..."""
    getattr(ax, f"set_{axis}scale")("log")
    low, high = getattr(ax, f"get_{axis}lim")()
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if low <= t <= high * 1.01]
    getattr(ax, f"set_{axis}ticks")(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()


def _symlog(ax: Any, linear_up_to: float, ticks: list[float]) -> None:
    low, high = ax.get_ylim()
    ax.set_yscale("symlog", linthresh=linear_up_to, linscale=2.0)
    shown = [t for t in ticks if low <= t <= high] or ticks
    if shown[-1] < 0.6 * high:  # the top of the axis ticked too (a collapse at 35 under ticks up to 20)
        shown.append(float(f"{high:.1g}"))
    ax.set_yticks(shown, [f"{t:g}" for t in shown])
    ax.minorticks_off()


def plot_frontier(results: list[Analysis], path: Path | None = None) -> Figure:
    """Raw reward gain against sqrt(KL), by evaluation, along training: per value of each sweep's knob, the mean
    over its seeds at each evaluated generation with bars of one standard error, every trial's own curve
    faint beneath, and Gao et al.'s form fitted to each trial where it fits (R^2 >= 0.5, dashed). Several
    sweeps (a fixed beta and a KL target) share the axes."""
    fig, axes = _figure(9, 5.5)
    ax = axes[0][0]
    palette = iter(TAB10 * 4)  # several sweeps: a colour per (sweep, value), where each sweep's own scale would repeat
    for result, style in zip(results, ("-", "--", ":", "-.")):
        colours = beta_colours(list(result.summary[VALUE]))
        if len(results) > 1:
            colours = {value: next(palette) for value in colours}
        points = frontier_points(result)
        fits = frontier_fits(result).set_index("trial")
        for value, g in points.groupby(VALUE):
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
                    label=result.knob.label(value) + (f" ({len(g['trial'].unique())} seeds)"
                                                         if g["trial"].nunique() > 1 else ""))
            if (se > 0).any():  # bars, not a band: d can move back along training, and a band would fold over
                ax.errorbar(mean["d"], mean["gain"], yerr=se, color=colour, lw=0, elinewidth=1, capsize=2)
    ax.set(xlabel="sqrt(KL): sqrt of the per-token estimate (CE_ref - CE_policy) x the generated tokens",
           ylabel="raw reward gain over generation 0 (by evaluation)",
           title="The reward-KL frontier along training (dashed thin: Gao et al.'s d (alpha - b log d), where it fits)")
    ax.set_yscale("symlog", linthresh=10.0, linscale=2.0)
    ax.grid(alpha=0.3)
    _legend(ax, title=" / ".join(dict.fromkeys(r.knob.legend for r in results)))
    return _save(fig, path)


def plot_letters(result: Analysis, path: Path | None = None) -> Figure:
    """A heat map of the alliterating pairs' first letters: a row for the unmodified model and one per value at its
    final point, a column per letter that makes at least 1% of any row's pairs (the rest: "other"), ordered by
    the unmodified model's shares; each row says its entropy."""
    f = result.letters
    fig, axes = _figure(12, 1.6 + 0.45 * max(1, len(f)))
    ax = axes[0][0]
    if not len(f) or not f["pairs"].sum():
        ax.text(0.5, 0.5, "no alliterating pairs to show", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
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
    rows = [("unmodified model" if r.row == UNMODIFIED else result.knob.label(getattr(r, VALUE)))
            + (f"  ({r.letter_entropy:.2f} bits, {r.pairs} pairs)" if r.pairs else "  (no pairs)")
            for r in f.itertuples()]
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xticks(range(len(grid.columns)), list(grid.columns))
    ax.set(xlabel="first letter of the alliterating word pair")
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="share of the row's pairs")
    ax.set_title(f"Which letters alliterate: the unmodified model, and each {result.knob.symbol} at its final "
                 "point (seeds pooled; entropy of the shares in bits)")
    return _save(fig, path)


def plot_curve(result: Analysis, column: str, ylabel: str, title: str, path: Path | None = None) -> Figure:
    colours = beta_colours(list(result.summary[VALUE]))
    fig, axes = _figure()
    ax = axes[0][0]
    for beta, curve in smoothed(result, [column]).items():
        _plot_mean(ax, curve.index, curve[column], curve[f"{column}_se"], colours[beta], 1.8, result.knob.label(beta))
    if column == "kl_penalty_mean":
        ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="generations", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    _legend(ax, title=result.knob.legend)
    return _save(fig, path)


def plot_diversity(result: Analysis, path: Path | None = None) -> Figure:
    cfg, s = result.cfg, result.summary
    colours = beta_colours(list(s[VALUE]))
    columns = diversity_panels(cfg.diversity_measure)
    curves = smoothed(result, columns)
    fig, axes = _figure(12, 7.5, 2, 2)
    for ax, column in zip(axes.flat, columns):
        for beta, curve in curves.items():
            y = as_diversity(curve[column], column)
            _plot_mean(ax, curve.index, y, curve[f"{column}_se"], colours[beta], 1.6, result.knob.label(beta))
        ax.set_ylim(0, 1.02)  # all four are shares: a fixed scale shows a collapse for what it is
        ax.set(xlabel="generations", ylabel=PANEL_LABELS[column] + " (higher = more diverse)", title=PANEL_LABELS[column])
        ax.grid(alpha=0.3)
    _legend(axes[0][1], axes[0][0], title=result.knob.legend)
    fig.suptitle(f"Diversity within each training group, running mean over {cfg.window} generations "
                 "(the rule judges the evaluations: evaluations.png)")
    fig.tight_layout()
    return _save(fig, path)


def plot_pareto(result: Analysis, path: Path | None = None) -> Figure:
    """Alliteration against diversity: each value's final point against its distinct-2 (the Pareto front, the
    choice), and every evaluated point against its most over-used word (the trade-off a reader sees: how much
    alliteration a policy gets before its stories narrow to one word)."""
    cfg, s = result.cfg, result.summary
    colours = beta_colours(list(s[VALUE]))
    measure = MEASURE_LABELS[cfg.diversity_measure]
    fig, axes = _figure(15, 6, 1, 2)
    ax = axes[0][0]
    threshold = s["diversity_threshold"].mean()
    ax.axhspan(0, threshold, color="red", alpha=0.07, label="collapsed (under the threshold)")
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"{cfg.diversity_share:.0%} of unmodified model")
    ax.scatter(s["alliteration_baseline"].mean(), s["diversity_baseline"].mean(), marker="X", s=110, color="black",
               label="unmodified model", zorder=6)
    front = s[s["pareto"]].sort_values("alliteration")
    ax.plot(front["alliteration"], front["diversity"], color="grey", lw=1.2, ls=":", label="Pareto front")
    for i, row in enumerate(s.itertuples()):
        value = getattr(row, VALUE)
        ax.scatter(row.alliteration, row.diversity, s=90, color=colours[value], edgecolor="black", lw=0.6,
                   label=f"{result.knob.label(value)} ({row.verdict})", zorder=4)
        if pd.notna(row.alliteration_se) or pd.notna(row.diversity_se):  # seeds: one standard error each way
            ax.errorbar(row.alliteration, row.diversity, xerr=np.nan_to_num(row.alliteration_se),
                        yerr=np.nan_to_num(row.diversity_se), color=colours[value], lw=1, capsize=3, zorder=3)
        # labels alternate above and below, so neighbouring betas' labels do not print over each other
        ax.annotate(f"{value:g}", (row.alliteration, row.diversity), textcoords="offset points",
                    xytext=(9, 7 if i % 2 == 0 else -15))
    if result.choice is not None:
        ax.scatter(result.choice.alliteration, result.choice.diversity, s=380, facecolor="none",
                   edgecolor="black", lw=2, label=f"choice: {result.knob.label(result.choice.value)}", zorder=5)
    ax.set(xlabel="alliteration (mean raw reward) at its final point", ylabel=f"{measure} at its final point",
           title=f"Each {result.knob.symbol}'s final point: alliteration against {measure}")
    ax.set_ylim(0, 1.12)  # room for the labels of betas that keep all their diversity
    ax.grid(alpha=0.3)
    ax = axes[0][1]
    points = result.points[result.points["generations"] > 0]
    for value, p in points.groupby(VALUE):
        ax.scatter(p["alliteration"], p["top_overuse"], s=18, color=colours[value], alpha=0.8, lw=0)
    if cfg.max_overuse:
        ax.axhspan(cfg.max_overuse, max(cfg.max_overuse * 2, points["top_overuse"].max() * 1.2 if len(points) else 1),
                   color="red", alpha=0.07, label=f"narrowed: a word over {cfg.max_overuse:g}x")
        ax.axhline(cfg.max_overuse, color="black", ls="--", lw=1)
    base = result.points[result.points["generations"] == 0]
    ax.scatter(base["alliteration"].mean(), 1.0, marker="X", s=110, color="black", label="unmodified model", zorder=6)
    p = result.best_point
    if p is not None:
        ax.scatter(p.alliteration, p.top_overuse, marker="*", s=260, color=colours[p.value],
                   edgecolor="black", zorder=5, label=f"best point: {result.knob.label(p.value)}, "
                                                       f"{p.generations} gens")
    _ratio_axis(ax)
    ax.set(xlabel="alliteration (mean raw reward) of the point's stories",
           ylabel="its most over-used word, times the unmodified model's rate",
           title="Every evaluated point: alliteration against its most over-used word")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9, frameon=False)  # this panel's marks, inside
    handles, labels = axes[0][0].get_legend_handles_labels()  # the values, and the first panel's marks, on the right
    fig.legend(handles, labels, title=result.knob.legend, loc="upper left", bbox_to_anchor=(1.0, 0.95),
               fontsize=9, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot(result: Analysis, name: str, path: Path | None = None) -> Figure:
    """One of the report's plots by its name (PLOTS without ".png"): best_beta writes them, a notebook shows them."""
    window = result.cfg.window
    makers = {
        "evaluations": lambda: plot_evaluations(result, path),
        "frontier": lambda: plot_frontier([result], path),
        "letters": lambda: plot_letters(result, path),
        "raw_reward": lambda: plot_curve(result, "raw_reward_mean", reward_label(result),
                                         f"Raw reward of the training groups, running mean over {window} generations",
                                         path),
        "kl_penalty": lambda: plot_curve(result, "kl_penalty_mean", "KL penalty: CE policy - CE reference per token\n"
                                         "(more negative = further away)",
                                         f"Distance from the original model, running mean over {window} generations", path),
        "diversity": lambda: plot_diversity(result, path),
        "pareto": lambda: plot_pareto(result, path),
    }
    if name not in makers:
        raise AlliterError(f"no plot named {name!r}; the plots: {', '.join(makers)}")
    return makers[name]()

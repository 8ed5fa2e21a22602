"""What the write-up claims, with its spread: a trial's end is its evaluations over its last LAST generations (not one
point), a recipe's is the mean of its seeds' ends with their range; an over-used word is said with its counts, per
seed, and the share of the alliterating pairs it brings; two recipes are put side by side on the same measures at
equal generations and at equal alliteration, with what changed between them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import pandas as pd

from alliter import measures as M
from alliter.analyse.frames import study_alliteration
from alliter.analyse.judge import Analysis, trial_config
from alliter.config import TrainConfig
from alliter.train.reward import alliterating_pairs

LAST = 1500  # generations: a trial's end is the mean of its evaluations over its last LAST generations
LARGELY = 0.5  # a recipe alliterates "largely through" a word when at least this share of its pairs hold it
# what a trial's config differs in and the reader is not told as a change of recipe
NOT_A_CHANGE = {"seed", "max_generations", "checkpoint_every", "snapshot_every", "threads", "device", "fast", "compile"}


@dataclass
class Spread:
    """A measure at the end of a recipe's trials: the mean over its seeds of each seed's mean over the window, the
    seeds' range and the range of the single evaluations in the window."""

    mean: float
    seed_low: float
    seed_high: float
    seeds: int
    low: float
    high: float

    def text(self, digits: int = 1, singles: str = "single evaluations") -> str:
        """`9.6 (seeds 9.0 to 10.1; single evaluations 7.2 to 11.6)`; `singles` names the window's rows."""
        f = lambda v: f"{v:.{digits}f}"  # noqa: E731
        within = f"{singles} {f(self.low)} to {f(self.high)}" if singles else ""
        if self.seeds == 1:
            return f"{f(self.mean)} ({within})" if within else f(self.mean)
        return f"{f(self.mean)} (seeds {f(self.seed_low)} to {f(self.seed_high)}{'; ' + within if within else ''})"


def spread(frame: pd.DataFrame, column: str, end: int, last: int = LAST) -> Spread | None:
    """`column` of a frame with a row per (trial, generations) over the generations (end - last, end]."""
    window = frame[(frame["generations"] > max(0, end - last)) & (frame["generations"] <= end)].dropna(subset=[column])
    if not len(window):
        return None
    per_seed = window.groupby("trial")[column].mean()
    return Spread(float(per_seed.mean()), float(per_seed.min()), float(per_seed.max()), len(per_seed),
                  float(window[column].min()), float(window[column].max()))


def kl_frame(result: Analysis) -> pd.DataFrame:
    """Per (trial, group): the KL from the unmodified model, nats a token (the KL penalty's term, sign turned), and
    beta (a KL target's controller moves it)."""
    g = result.groups
    return pd.DataFrame({"trial": g["trial"], "generations": g["generations"], "kl": -g["kl_penalty_mean"],
                         "beta": g["beta"]})


def end_of(result: Analysis, end: int) -> dict[str, Spread | None]:
    """A recipe's end: the study's alliteration count, the most over-used word's ratio and distinct-2 kept over its
    evaluations, the KL and beta over its training groups."""
    kl = kl_frame(result)
    out = {name: spread(result.points, name, end) for name in ("top_overuse", "diversity_kept")}
    return {"alliteration": spread(study_alliteration(result.trials), "alliteration", end), **out,
            "kl": spread(kl, "kl", end), "beta": spread(kl, "beta", end)}


def beta_range(result: Analysis, end: int) -> tuple[float, float]:
    """The lowest and the highest beta of a recipe's groups up to `end`."""
    kl = kl_frame(result)
    betas = kl[kl["generations"] <= end]["beta"]
    return float(betas.min()), float(betas.max())


@dataclass
class Overuse:
    """A recipe's most over-used word at a point, its seeds' stories pooled: the ratio, its counts and how much of
    the reward it brings, per seed too."""

    word: str
    ratio: float
    uses: int
    stories: int
    base_uses: int
    base_stories: int
    seed_ratios: list[float]
    pair_share: float
    seed_shares: list[float]

    def text(self) -> str:
        seeds = (f"; by seed {', '.join(ratio_text(r) for r in self.seed_ratios)}" if len(self.seed_ratios) > 1 else "")
        shares = (f" ({min(self.seed_shares):.0%} to {max(self.seed_shares):.0%} by seed)"
                  if len(self.seed_shares) > 1 else "")
        return (f"\"{self.word}\" {ratio_text(self.ratio)} the unmodified model's rate ({self.uses} uses in {self.stories} "
                f"stories against {self.base_uses} in its {self.base_stories}, {M.OVERUSE_PSEUDO_USES} added{seeds}); "
                f"{self.pair_share:.0%} of the alliterating pairs hold it{shares}")

    def short(self) -> str:
        """`"tree" 161x (160x-162x)`: pooled, and the seeds' range."""
        seeds = self.seed_ratios
        spread = f" ({ratio_text(min(seeds))}-{ratio_text(max(seeds))})" if len(seeds) > 1 else ""
        return f"\"{self.word}\" {ratio_text(self.ratio)}{spread}"

    @property
    def largely(self) -> bool:
        return self.pair_share >= LARGELY


def ratio_text(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def overuse_at(result: Analysis, generations: int) -> Overuse | None:
    """The most over-used word of a one-value sweep's stories at `generations` (the Analysis's, its seeds pooled,
    against their unmodified model's stories); per seed, the seed's rate of that word against the same pooled base
    rate, and its share of the seed's alliterating pairs."""
    words = result.overused(result.trials[0].value, generations)
    if not words.words:
        return None
    word, _, ratio, uses, base_uses = words.words[0]
    per_seed = [list(t.stories(generations, result.cfg.window)["text"]) for t in result.trials]
    ratios, shares = [], []
    for mine in per_seed:  # each seed against the pooled base: the same smoothed rate, so the ratios compare
        ratios.append(M.overuse_ratio(M.word_counts(mine)[word], len(mine), base_uses, words.base_stories))
        shares.append(M.word_share([p for t in mine for p in alliterating_pairs(t)], word))
    pairs = [p for mine in per_seed for t in mine for p in alliterating_pairs(t)]
    return Overuse(word, ratio, uses, words.stories, base_uses, words.base_stories, ratios, M.word_share(pairs, word),
                   shares)


def first_reaching(counts: pd.DataFrame, alliteration: float) -> int | None:
    """The first evaluated point at which the mean over a recipe's seeds reaches `alliteration` (`counts`: the
    recipe's study_alliteration)."""
    curve = counts[counts["generations"] > 0].groupby("generations")["alliteration"].mean()
    reached = curve[curve >= alliteration]
    return int(reached.index[0]) if len(reached) else None


def what_changed(first: Analysis, second: Analysis) -> list[str]:
    """The knobs that differ between two recipes' trials as they ran (their recipes filled in), as `knob: a -> b`;
    a knob that does nothing in a recipe (a KL target's horizon without a target) reads `-` there, and one that comes
    into play at its default (AdamW's betas with AdamW) is not a change."""
    a, b = trial_config(first.trials[0]), trial_config(second.trials[0])
    out = []
    for f in fields(a):
        if f.name in NOT_A_CHANGE:
            continue
        before, after = _value(a, f.name), _value(b, f.name)
        if before == after:
            continue
        idle = [cfg for cfg in (a, b) if not cfg.acts(f.name)]
        active = [cfg for cfg in (a, b) if cfg.acts(f.name)]
        if idle and _text(getattr(active[0], f.name)) == _text(f.default):
            continue
        out.append(f"{f.name}: {before} -> {after}")
    return out


def _value(cfg: TrainConfig, name: str) -> str:
    return _text(getattr(cfg, name)) if cfg.acts(name) else "-"


def _text(v: Any) -> str:
    return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def side_by_side(recipes: dict[str, Analysis], at: list[int], end: int) -> tuple[pd.DataFrame, float]:
    """One row per recipe and point (each of `at`, and where it first reaches equal alliteration): the study's
    alliteration count (whatever reward trained it), the most over-used word, distinct-2 kept, KL and beta, each as the
    mean over the seeds of the evaluations (groups: a window) around it with the seeds' range. Equal alliteration: the lower of the recipes' peaks (the mean over seeds), and the
    first point where each reaches it. Returns the table, and that alliteration."""
    counts = {name: study_alliteration(r.trials) for name, r in recipes.items()}
    peaks = [c[c["generations"] > 0].groupby("generations")["alliteration"].mean().max() for c in counts.values()]
    level = float(min(peaks)) if peaks else float("nan")
    rows = []
    for name, result in recipes.items():
        reached = first_reaching(counts[name], level)
        kl = kl_frame(result)
        evaluated = sorted(counts[name]["generations"].unique())
        near = {min(evaluated, key=lambda e: abs(e - g)) for g in at if g <= end} if evaluated else set()
        for g in sorted({*near, *([reached] if reached is not None else [])}):
            label = f"{g} (first reaches {level:.1f})" if g == reached else f"{g}"
            over = overuse_at(result, g)
            rows.append({
                "recipe": name, "generations": label,
                "alliteration": _seeds(spread(counts[name], "alliteration", g, last=1), ".1f"),
                "most over-used word": over.short() if over else "none",
                "distinct-2 kept": _seeds(spread(result.points, "diversity_kept", g, last=1), ".0%"),
                "KL (nats a token)": _seeds(spread(kl, "kl", g, last=result.cfg.window), ".3f"),
                "beta": _seeds(spread(kl, "beta", g, last=result.cfg.window), ".3g"),
            })
    return pd.DataFrame(rows), level


def _seeds(s: Spread | None, spec: str) -> str:
    """A mean and its seeds' range in the format `spec`, short: `9.6 (9.0-10.1)`."""
    if s is None:
        return "-"
    f = lambda v: format(v, spec)  # noqa: E731
    return f(s.mean) if s.seeds == 1 or f(s.seed_low) == f(s.seed_high) else f"{f(s.mean)} ({f(s.seed_low)}-{f(s.seed_high)})"

"""The reward-KL frontier: each trial's evaluated points as the raw reward's gain over generation 0 against
d = sqrt(KL), and Gao et al. (2022)'s RL form R(d) = d (alpha - b log d) fitted to them by least squares."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from alliter.analyse.judge import Analysis
from alliter.knob import VALUE


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
        value = g[VALUE].iloc[0]
        rows.append({VALUE: value, "seed": int(g["seed"].iloc[0]), "trial": trial, "points": len(g),
                     "alpha": fit[0] if fit else math.nan, "b": fit[1] if fit else math.nan,
                     "r2": fit[2] if fit else math.nan})
    return pd.DataFrame(rows, columns=[VALUE, "seed", "trial", "points", "alpha", "b", "r2"])

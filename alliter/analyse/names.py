"""How the analysis names and colours things: the measures' labels (from alliter.measures' registry), the study's
colours of the betas, the reward's axis (a value of the sweep's knob is named by its alliter.knob.Knob)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import LinearSegmentedColormap

from alliter import measures as M
from alliter.analyse.judge import Analysis
from alliter.config import DEFAULT_REWARD

# the study's colours for the coarse grid, low beta to high; gold stands in for yellow, which is unreadable on white
STUDY_COLOURS = ["red", "darkorange", "gold", "green", "blue", "darkviolet"]


MEASURE_LABELS = {m.name: m.label for m in M.MEASURES if m.rule}  # the rule's diversity measures


# The diversity plot's panels. The unique fraction (distinct texts per group) counts exact copies only, so it
# sits at 1.0 until a group's texts are character for character the same, long after the collapse shows: the
# fourth panel is 1 - the share of a text's word 4-grams that repeat inside it, which falls as a text turns
# into "tall tall tall" (0.93 repeated at beta 0 against 0.00 at beta 100 on the coarse grid) and is the one
# panel that looks inside a text rather than across the group. The unique fraction stays, when the rule uses it.
PANEL_LABELS = {m.name: m.label for m in M.MEASURES if m.rule or m.sameness}


def diversity_panels(rule_measure: str) -> list[str]:
    return ["distinct_1", "distinct_2", "self_bleu", "unique_fraction" if rule_measure == "unique_fraction" else "repeated_4grams"]


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


def reward_label(result: Analysis) -> str:
    """The trials' raw reward, as a plot's axis names it."""
    name = result.reward["reward"]
    return "raw reward (alliterating word pairs)" if name == DEFAULT_REWARD else f"raw reward ({name})"

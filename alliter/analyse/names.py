"""How the analysis names and colours things: the measures' labels (from alliter.measures' registry), the study's
colours of the betas, the reward's axis (a value of the sweep's knob is named by its alliter.knob.Knob)."""

from __future__ import annotations

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
    """Colours in beta order, red (low) to violet (high), evenly spaced by rank: the coarse grid 0, 0.01 .. 100 gets
    exactly red, orange, yellow, green, blue, violet, and the fine grid's 60, 70, 80, 90 are as far apart as 20 and
    30 (by log-beta they crowd into the violet end)."""
    betas = sorted(set(betas))
    cmap = LinearSegmentedColormap.from_list("study", STUDY_COLOURS)
    return {b: cmap(i / (len(betas) - 1) if len(betas) > 1 else 0.0) for i, b in enumerate(betas)}


def reward_label(result: Analysis) -> str:
    """The trials' raw reward, as a plot's axis names it."""
    name = result.reward["reward"]
    return "raw reward (alliterating word pairs)" if name == DEFAULT_REWARD else f"raw reward ({name})"

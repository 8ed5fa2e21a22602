"""What a sweep varies, resolved once: a fixed beta, or a KL target (beta then the state of the controller, started at
--betas). Everything that differs between the two is here: the names a folder, a table, a sentence and a plot give
a value, and the direction in which a value holds or fails (a low beta collapses, a high target does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

VALUE = "value"
"""The analysis frames' column of the varied value, whatever the knob (a trial's beta, or its KL target); a frame's
`beta` is the beta there (a KL-target trial's: its controller's)."""


@dataclass(frozen=True, repr=False)
class Knob:
    name: str
    """The TrainConfig field and the frames' column: beta or kl_target."""
    symbol: str
    """How a folder, a table and a sentence name one: beta=50, target=0.1."""
    noun: str
    """One value in a sentence's words: beta 50, KL target 0.1."""
    plural: str
    """Its values in a sentence: betas, KL targets."""
    legend: str
    """A plot's legend title."""
    safer: str
    """The direction in which a value holds rather than fails: higher for beta, lower for a target."""
    riskier: str
    """The other direction."""

    def __repr__(self) -> str:
        return f"Knob({self.name!r})"

    def label(self, value: float) -> str:
        """A value in a plot: β = 50, target = 0.1."""
        return f"β = {value:g}" if self.name == "beta" else f"target = {value:g}"

    def said(self, value: float) -> str:
        """A value in a sentence's words: beta 50, KL target 0.1."""
        return f"{self.noun} {value:g}"

    def named(self, value: float) -> str:
        """A value in a sentence: beta=50, target=0.1."""
        return f"{self.symbol}={value:g}"

    def x(self, value: float) -> float:
        """The search's coordinate, in which a failure always lies below the boundary: beta, or 1 / target."""
        return value if self.name == "beta" else 1.0 / value

    def in_files(self, frame: "pd.DataFrame") -> "pd.DataFrame":
        """A frame as the files a user reads (summary.csv, best_beta's JSON) name its columns: the varied value under
        the knob's name, where VALUE stands (a beta sweep's `beta` column is the same values)."""
        if VALUE not in frame:
            return frame
        return frame.drop(columns=self.name, errors="ignore").rename(columns={VALUE: self.name})

    def step(self, value: float, factor: float, safer: bool) -> float:
        """`value` moved by `factor` in the safer (or the riskier) direction."""
        up = safer == (self.name == "beta")
        return value * factor if up else value / factor


BETA = Knob("beta", "beta", "beta", "betas", "beta (KL coefficient)", "higher", "lower")
TARGET = Knob("kl_target", "target", "KL target", "KL targets", "KL target (nats per token)", "lower", "higher")
KNOBS = {k.name: k for k in (BETA, TARGET)}

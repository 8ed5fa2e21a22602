"""The console a person watches while a sweep runs: one line per trial, at most 100 columns, with the figures that
matter (the knob's value, the seed, generations done of all, the latest evaluation: its generations, alliteration,
distinct-2 as a share of the unmodified model's and fluency gap; the verdict so far), under a header. On a terminal the lines are redrawn in
place; piped into a file or another program, a trial's line is printed when something but its generation counter
changes (a new evaluation, a verdict, its state), and every line once at the end. The full table stays in each trial's
metrics.jsonl and TensorBoard. A Ray Tune ProgressReporter, so the grids, the search and the study show the same."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray import tune

WIDTH = 100
STATES = {"PENDING": "waiting", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "error"}


COLUMNS = ("generations", "state", "point", "alliteration", "distinct-2", "fluency")  # after the value (and seed)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None


def trial_cells(trial: Any, seeds: bool, targets: bool) -> list[str]:
    """A trial's cells: its value (a beta, or a KL target and the controller's beta now), seed, generations done of
    all, state, and its latest evaluation (generations, alliteration, distinct-2 as a share of the unmodified
    model's, fluency gap) and verdict so far."""
    c, r = trial.config, trial.last_result or {}
    cells = [f"{c['kl_target']:g}" if targets else f"{c['beta']:g}"]
    if targets:
        beta = _number(r.get("beta"))
        cells.append(f"{beta if beta is not None else c['beta']:.3g}")
    if seeds:
        cells.append(str(c["seed"]))
    cells += [f"{int(r.get('generations', 0))}/{c['max_generations']}", STATES.get(trial.status, trial.status.lower())]
    point, allit = _number(r.get("point")), _number(r.get("point_alliteration"))
    kept, gap, failed = _number(r.get("diversity_kept")), _number(r.get("fluency_gap")), _number(r.get("failed_at"))
    cells += [f"{point:.0f}" if point is not None else "-", f"{allit:.1f}" if allit is not None else "-",
              f"{kept:.0%}" if kept is not None else "-", f"{gap:+.2f}" if gap is not None else "-"]
    verdict = r.get("verdict") or ""
    cells.append(f"{verdict} at {failed:.0f}" if verdict and verdict != "kept" and failed is not None else verdict)
    return cells


def table_lines(trials: list, seeds: bool) -> list[str]:
    """The header and a line per trial, each at most WIDTH columns."""
    targets = any(t.config.get("kl_target") is not None for t in trials)
    header = ["target" if targets else "beta", *(["beta now"] if targets else []), *(["seed"] if seeds else []),
              *COLUMNS, "verdict"]
    rows = [trial_cells(t, seeds, targets) for t in sorted(trials, key=order)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    left = {0, header.index("state"), len(header) - 1}  # text left, numbers right
    return [(" ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             .rstrip()[:WIDTH]) for row in [header, *rows]]


class Console(tune.ProgressReporter):
    """Tune's progress reporter of a sweep (module docstring)."""

    def __init__(self, seeds: bool, stream: TextIO | None = None, refresh_seconds: float = 1.0):
        self.seeds = seeds
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.refresh_seconds = refresh_seconds
        self._drawn = 0  # lines drawn last time (a terminal's redraw moves up over them)
        self._last = 0.0
        self._printed: dict[str, str] = {}  # trial id -> its last printed change (piped)

    def should_report(self, trials: list, done: bool = False) -> bool:
        if done:
            return True
        if self.tty:
            return time.monotonic() - self._last >= self.refresh_seconds
        return any(self._printed.get(t.trial_id) != _change(t) for t in trials)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        self._last = time.monotonic()
        header, *lines = table_lines(trials, self.seeds)
        if self.tty:
            up = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
            self.stream.write(up + "\n".join([header, *lines]) + "\n")
            self._drawn = len(lines) + 1
        else:
            if not self._printed:
                self.stream.write(header + "\n")
            for trial, line in zip(sorted(trials, key=order), lines):
                if done or self._printed.get(trial.trial_id) != _change(trial):
                    self.stream.write(line + "\n")
                    self._printed[trial.trial_id] = _change(trial)
        self.stream.flush()


def _change(trial: Any) -> tuple:
    """What of a trial counts as a change when piped: all but its generation counter."""
    r = trial.last_result or {}
    return trial.status, r.get("point"), r.get("verdict"), r.get("failed_at")


def order(trial: Any) -> tuple:
    c = trial.config
    return (c.get("kl_target") or 0.0, c["beta"], c["seed"], trial.trial_id)

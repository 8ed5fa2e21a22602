"""The console a person watches while a sweep runs: one line per trial under a header, with the figures that matter
(the knob's value, the seed, generations done of all, the latest evaluation: its generations, alliteration, distinct-2
as a share of the unmodified model's and fluency gap; the verdict so far). On a terminal the lines fit its width (the
least needed columns go first where it is narrower than 100) and are redrawn in place, unless something else wrote to
it since the last draw (Ray's log lines, a warning): then the table is drawn again below, not over them. Piped into a
file or another program, the lines are 100 columns at most, the header is printed once and a trial's line when it
has a new evaluation, a new verdict or an error: at most one line per trial per evaluation (its counter, waiting,
running and done are no news in a log; the sweep's end table follows). The full table stays in each trial's
metrics.jsonl and TensorBoard. A Ray Tune ProgressReporter, so the grids, the search and the
study show the same. Around the table, the sweep's own lines: its header (say_start) and its end (say_trials, say_end:
the trials at their last report, the figures, where the results are and what to run next)."""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any, TextIO

from ray import tune

from alliter.config import TrainConfig
from alliter.sweep.config import STUDY_STEP

if TYPE_CHECKING:
    import pandas as pd

WIDTH = 100  # a piped console's lines, and a terminal's at most
STATES = {"PENDING": "waiting", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "error"}

COLUMNS = ("generations", "state", "point", "alliteration", "distinct-2", "fluency")  # after the value (and seed)
# where a terminal is narrower than the table: the headers shortened, then these columns left out, in this order (the
# value and the verdict stay)
SHORT = {"generations": "gens", "alliteration": "allit", "distinct-2": "d-2", "beta now": "now"}
DROPPED_FIRST = ("point", "fluency", "state", "distinct-2", "beta now", "alliteration", "generations", "seed")


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


def table_lines(trials: list, seeds: bool, width: int = WIDTH) -> list[str]:
    """The header and a line per trial, each at most `width` columns: the columns of DROPPED_FIRST left out, in
    order, until the table fits, and what still does not fit cut."""
    targets = any(t.config.get("kl_target") is not None for t in trials)
    header = ["target" if targets else "beta", *(["beta now"] if targets else []), *(["seed"] if seeds else []),
              *COLUMNS, "verdict"]
    rows = [header, *(trial_cells(t, seeds, targets) for t in sorted(trials, key=order))]
    lines = _aligned(rows)
    for name in DROPPED_FIRST:
        if max(len(line) for line in lines) <= width:
            break
        i = header.index(name) if name in header else None
        if i is not None:
            header = header[:i] + header[i + 1:]
            rows = [row[:i] + row[i + 1:] for row in rows[1:]]
            rows = [header, *rows]
        lines = _aligned([[SHORT.get(h, h) for h in header], *rows[1:]])
    return [line[:width] for line in lines]


def _aligned(rows: list[list[str]]) -> list[str]:
    header = rows[0]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left = {0, len(header) - 1} | ({header.index("state")} if "state" in header else set())  # text left, numbers right
    return [" ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            .rstrip() for row in rows]


def console_width() -> int:
    """The width of what a command prints: the terminal's (WIDTH at most), else WIDTH."""
    return max(10, min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns - 1)) if sys.stdout.isatty() else WIDTH


def say(text: str, file: TextIO | None = None, indent: int = 2, shell: bool = False) -> None:
    """A line of a command's own, folded to the console's width (the rest of each line indented) at its spaces, a
    word never cut: an update in words or a path never runs past the table's edge. `shell`: the line ends in a
    command, folded with a backslash at each break, so that it still pastes into a shell as one."""
    width = console_width()
    lines = []
    for line in text.split("\n"):
        if len(line) <= width:
            lines.append(line)
            continue
        folded = textwrap.wrap(line, width - (2 if shell else 0), subsequent_indent=" " * indent,
                               break_long_words=False, break_on_hyphens=False)
        lines.append((" \\\n" if shell else "\n").join(folded))
    print("\n".join(lines), file=file or sys.stdout, flush=True)


def say_command(prose: str, command: str, file: TextIO | None = None) -> None:
    """`prose` ("... continue it with:"), then the command on a line of its own, folded with backslashes where it is
    wider than the console: it pastes into a shell as it is."""
    say(prose, file=file)
    say(f"  {command}", file=file, indent=4, shell=True)


class _Watched:
    """sys.stdout or sys.stderr, passed through, telling the console when something else wrote to the terminal."""

    def __init__(self, inner: TextIO, console: "Console"):
        self._inner, self._console = inner, console

    def write(self, text: str) -> int:
        if text:
            self._console.overwritten = True
        return self._inner.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Console(tune.ProgressReporter):
    """Tune's progress reporter of a sweep (module docstring)."""

    def __init__(self, seeds: bool, stream: TextIO | None = None, refresh_seconds: float = 1.0):
        self.seeds = seeds
        # None: sys.stdout when written to, not kept here: Tune pickles its reporter with the run's config, and a
        # notebook's stdout (ipykernel's) does not pickle
        self._stream = stream
        self._watching: list[tuple[Any, str, Any]] = []
        self.tty = self.stream.isatty()
        self.refresh_seconds = refresh_seconds
        self.overwritten = False  # something else wrote to the terminal since the last draw
        self._drawn = 0  # lines drawn last time (a terminal's redraw moves up over them)
        self._last = 0.0
        self._printed: dict[str, tuple] = {}  # trial id -> its last printed change (piped)
        self._header = False

    @property
    def stream(self) -> TextIO:
        """The stream given, else sys.stdout (the one under _Watched while the console watches it)."""
        return self._stream or (self._watching[0][2] if self._watching else sys.stdout)

    def width(self) -> int:
        """A terminal's columns (WIDTH at most: a line then never wraps), else WIDTH."""
        if not self.tty:
            return WIDTH
        return max(10, min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns - 1))

    def should_report(self, trials: list, done: bool = False) -> bool:
        if done:
            return True
        if self.tty:
            return time.monotonic() - self._last >= self.refresh_seconds
        return any(self._printed.get(t.trial_id, NO_NEWS) != _change(t) for t in trials)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        self._last = time.monotonic()
        header, *lines = table_lines(trials, self.seeds, self.width())
        if self.tty:
            self._watch()
            up = f"\x1b[{self._drawn}F\x1b[J" if self._drawn and not self.overwritten else ""
            self.stream.write(up + "\n".join([header, *lines]) + "\n")
            self.stream.flush()
            self._drawn, self.overwritten = len(lines) + 1, False
            if done:
                self._unwatch()
            return
        if not self._header:
            self.stream.write(header + "\n")
            self._header = True
        for trial, line in zip(sorted(trials, key=order), lines):
            if self._printed.get(trial.trial_id, NO_NEWS) != _change(trial):
                self.stream.write(line + "\n")
                self._printed[trial.trial_id] = _change(trial)
        self.stream.flush()

    def _watch(self) -> None:
        """From the first draw on a terminal: whatever else writes to it (print, Ray's worker logs, a logging handler
        of stdout or stderr) marks the table overwritten, so the next draw goes below instead of up over it."""
        if self._watching:
            return
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            self._watching.append((sys, name, stream))
            setattr(sys, name, _Watched(stream, self))
        loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                           if isinstance(v, logging.Logger))]
        for handler in {h for lg in loggers for h in lg.handlers if isinstance(h, logging.StreamHandler)}:
            if handler.stream in (self._watching[0][2], self._watching[1][2]):
                self._watching.append((handler, "stream", handler.stream))
                handler.stream = _Watched(handler.stream, self)

    def _unwatch(self) -> None:
        for owner, name, stream in reversed(self._watching):
            setattr(owner, name, stream)
        self._watching = []


def _change(trial: Any) -> tuple:
    """What of a trial is news when piped: its latest evaluation, its verdict, an error; not its counter nor its
    waiting, running or done (NaN, a kept trial's failed_at, reads as None: NaN equals nothing, not even itself)."""
    r = trial.last_result or {}
    return _number(r.get("point")), r.get("verdict"), _number(r.get("failed_at")), trial.status == "ERROR"


NO_NEWS = (None, None, None, False)  # a trial not started, or started with nothing to say yet


def order(trial: Any) -> tuple:
    c = trial.config
    return (c.get("kl_target") or 0.0, c["beta"], c["seed"], trial.trial_id)


# --- the sweep's own lines, before and after the table --------------------------------------------------------


def say_start(name: str, what: str, base: TrainConfig, gpus: float, cpus: float, exp_path: str, snapshots: str = "",
              resuming: bool = False) -> None:
    """The sweep's header: what it runs (`what`: its values and seeds), the model and the update, each trial's
    resources, where the results go, and the snapshots' disk."""
    say(f"alliter sweep {name}: {'resuming ' if resuming else ''}{what}, model {base.model}, tokenizer "
        f"{base.tokenizer}, lr {base.lr}, {base.max_generations} generations each, "
        f"{gpus:g} GPU and {cpus:g} CPU per trial")
    say(f"update: {base.describe_recipe()}")
    say(f"results: {exp_path}")
    if snapshots:
        say(snapshots)


def say_trials(df: "pd.DataFrame") -> None:
    """Tune's results at each trial's last report, in the console's units: 100 columns at most (a KL-target trial:
    its target, its start and its beta now; the KL from the unmodified model, the penalty's term turned)."""
    if "kl_penalty_mean" in df.columns:
        df = df.assign(kl=-df["kl_penalty_mean"])
    targets = "config/kl_target" in df.columns and df["config/kl_target"].notna().any()
    shown = {"config/kl_target": ("target", "{:g}"), "config/beta": ("start beta" if targets else "beta", "{:g}"),
             "beta": ("beta now", "{:.3g}"), "config/seed": ("seed", "{:.0f}"), "generations": ("generations", "{:.0f}"),
             "point_alliteration": ("alliteration", "{:.1f}"), "diversity_kept": ("distinct-2 kept", "{:.0%}"),
             "fluency_gap": ("fluency", "{:+.2f}"), "kl": ("KL", "{:.3f}"), "verdict": ("verdict", "{}")}
    cols = [c for c in shown if c in df.columns and (targets or c not in ("config/kl_target", "beta"))]
    if cols:
        table = df[cols].sort_values(cols[:2])
        for c in cols:
            table[c] = [shown[c][1].format(v) if not (isinstance(v, float) and math.isnan(v)) else "-" for v in table[c]]
        print(table.rename(columns={c: shown[c][0] for c in cols}).to_string(index=False))


def say_end(status: str, stats: dict[str, Any], exp_path: str, errors: list[tuple[str, str]], unfinished: int,
            resume_command: str) -> None:
    """The sweep's figures (efficiency, evaluations), where its results are, each errored trial's cause (`errors`:
    its folder's name and the cause), and what to run next: best_beta, or the command that runs it again."""
    say(f"\nsweep efficiency: {stats['efficiency']:.2f} ({stats['group_seconds']:.0f} s of groups / {stats['slots']} "
        f"trial slots x {stats['wall_seconds']:.0f} s of Tune; Ray's start and checks: {stats['ray_start_seconds']:.0f} s)")
    if stats["eval_seconds"]:
        share = stats["eval_seconds"] / (stats["wall_seconds"] * stats["slots"])
        say(f"evaluations: {stats['eval_seconds']:.0f} s, {share:.0%} of the trial slots' time (--eval-samples sets "
            "their size, 0 turns them off)")
    quoted = shlex.quote(exp_path)  # a URI's query string holds '&'
    say(f"results:     {exp_path}")
    say(f"tensorboard: tensorboard --logdir {quoted}", shell=True)
    for folder, cause in errors:
        say(f"  ERROR in {folder}: {cause}", file=sys.stderr, indent=4)
    study_step = bool(os.environ.get(STUDY_STEP))  # the study analyses its steps and says how to continue itself
    if status == "finished":
        if not study_step:
            say(f"next:        alliter best-beta {quoted}", shell=True)
    elif status == "errored":
        say_command(f"{len(errors)} trial(s) errored (above); once the cause is fixed, run them again with:",
                    resume_command, file=sys.stderr)
    elif study_step:
        say(f"interrupted with {unfinished} trial(s) unfinished", file=sys.stderr)
    else:
        say_command(f"interrupted with {unfinished} trial(s) unfinished; continue it with:", resume_command,
                    file=sys.stderr)

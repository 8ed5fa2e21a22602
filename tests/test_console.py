"""The console a person watches: a line per trial under a header, at most 100 columns and within a terminal's width;
redrawn in place on a terminal (below, when something else wrote to it), printed only on change when piped."""

from __future__ import annotations

import io
import logging
import math
import sys
from dataclasses import dataclass, field

import pytest

from alliter.sweep.console import WIDTH, Console, table_lines


@dataclass
class FakeTrial:  # what the console reads of Tune's Trial
    trial_id: str
    config: dict
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)


def trials(targets: bool = False) -> list[FakeTrial]:
    out = []
    for i, beta in enumerate([0.0, 0.01, 100.0, 7000.0]):
        config = {"beta": beta, "seed": i, "max_generations": 7000, "kl_target": 0.123 if targets else None}
        result = {"generations": 1234, "point": 1200, "point_alliteration": 94.8, "diversity_kept": 0.012,
                  "fluency_gap": 4.28, "verdict": "degenerate", "failed_at": 1000, "beta": 12.3456}
        out.append(FakeTrial(f"t{i}", config, "ERROR", result))
    return out


def test_every_line_fits_100_columns_and_says_what_matters():
    for targets in (False, True):
        header, *lines = table_lines(trials(targets), seeds=True)
        assert all(len(line) <= WIDTH for line in [header, *lines])
        assert header.split() == ["target" if targets else "beta", *(["beta", "now"] if targets else []), "seed",
                                  "generations", "state", "point", "alliteration", "distinct-2", "fluency", "verdict"]
        assert lines[2].split() == [*(["0.123", "12.3"] if targets else ["100"]), "2", "1234/7000", "error", "1200",
                                    "94.8", "1%", "+4.28", "degenerate", "at", "1000"]


def test_piped_it_prints_a_line_per_trial_per_evaluation_verdict_or_error():
    out = io.StringIO()
    console = Console(seeds=False, stream=out)
    group = trials()[:2]
    fresh = {"generations": 0}
    for trial in group:
        trial.status, trial.last_result, trial.later = "PENDING", fresh, trial.last_result
    console.report(group, done=False)
    group[0].status = "RUNNING"
    assert not console.should_report(group)  # waiting, then running: no news
    assert out.getvalue().splitlines()[0].split()[0] == "beta" and len(out.getvalue().splitlines()) == 1
    for trial in group:
        trial.status, trial.last_result = "RUNNING", trial.later
    console.report(group, done=False)
    assert len(out.getvalue().splitlines()) == 3  # the header and two lines
    group[0].last_result = {**group[0].last_result, "generations": 1300}
    group[1].status = "TERMINATED"
    assert not console.should_report(group)  # the counter alone, done
    group[0].last_result = {**group[0].last_result, "point": 1400, "point_alliteration": 90.0}
    assert console.should_report(group)
    console.report(group, done=True)
    assert out.getvalue().splitlines()[-1].split()[:2] == ["0", "1300/7000"] and len(out.getvalue().splitlines()) == 4
    group[1].status = "ERROR"
    console.report(group, done=True)
    assert out.getvalue().splitlines()[-1].split()[:3] == ["0.01", "1234/7000", "error"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("columns", [20, 40, 60, 80, 120])
def test_on_a_narrower_terminal_every_line_fits_and_keeps_the_value_and_the_verdict(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    for targets in (False, True):
        out = Terminal()
        Console(seeds=True, stream=out, refresh_seconds=0).report(trials(targets), done=True)
        header, *lines = out.getvalue().splitlines()
        assert all(len(line) < min(columns, 101) for line in [header, *lines]), (columns, header)
        assert header.split()[0] == ("target" if targets else "beta")
        if columns >= 40:  # the verdict stays; on 20 columns the value's line is cut
            assert header.split()[-1] == "verdict" and lines[2].split()[0] == ("0.123" if targets else "100")
            assert "degenerate" in lines[2]


def test_piped_a_kept_trial_s_line_is_not_printed_again_for_its_counter():
    """A kept trial's failed_at is NaN, which equals nothing, not even itself: it must not read as a change."""
    out = io.StringIO()
    console = Console(seeds=False, stream=out)
    group = trials()[:1]
    group[0].last_result = {**group[0].last_result, "verdict": "kept", "failed_at": math.nan}
    console.report(group, done=False)
    for generations in (1300, 1400, 1500):
        group[0].last_result = {**group[0].last_result, "generations": generations}
        assert not console.should_report(group)


def test_a_line_written_between_two_draws_is_not_drawn_over(monkeypatch):
    """Ray's worker logs, a warning: the next draw goes below them, not up over them (which would leave half a
    table above and garble both)."""
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger("ray.test").addHandler(handler)
    try:
        console = Console(seeds=False, refresh_seconds=0)
        console.report(trials(), done=False)
        console.report(trials(), done=False)
        assert term.getvalue().count("\x1b[5F") == 1  # nothing between: redrawn in place
        print("(RayTrainWorker pid=123) a worker's log line")
        console.report(trials(), done=False)
        assert term.getvalue().count("\x1b[5F") == 1  # drawn below the line, not over it
        logging.getLogger("ray.test").warning("a warning")
        console.report(trials(), done=True)
        assert term.getvalue().count("\x1b[5F") == 1 and "a warning" in term.getvalue()
        assert sys.stdout is term and handler.stream is term  # given back at the end
    finally:
        logging.getLogger("ray.test").removeHandler(handler)


def test_on_a_terminal_it_redraws_in_place():
    out = Terminal()
    console = Console(seeds=False, stream=out, refresh_seconds=0)
    console.report(trials(), done=False)
    console.report(trials(), done=True)
    assert out.getvalue().count("\x1b[5F\x1b[J") == 1  # up over the header and four lines, cleared, drawn again

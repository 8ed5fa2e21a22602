"""The console a person watches: a line per trial under a header, at most 100 columns; redrawn in place on a terminal,
printed only on change when piped."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

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


def test_piped_it_prints_a_line_only_when_something_but_the_counter_changes():
    out = io.StringIO()
    console = Console(seeds=False, stream=out)
    group = trials()[:2]
    assert console.should_report(group)
    console.report(group, done=False)
    assert len(out.getvalue().splitlines()) == 3  # the header and two lines
    group[0].last_result = {**group[0].last_result, "generations": 1300}
    assert not console.should_report(group)  # the counter alone
    group[0].last_result = {**group[0].last_result, "point": 1400, "point_alliteration": 90.0}
    assert console.should_report(group)
    console.report(group, done=False)
    assert out.getvalue().splitlines()[-1].split()[:2] == ["0", "1300/7000"] and len(out.getvalue().splitlines()) == 4


def test_on_a_terminal_it_redraws_in_place():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    console = Console(seeds=False, stream=out, refresh_seconds=0)
    console.report(trials(), done=False)
    console.report(trials(), done=True)
    assert out.getvalue().count("\x1b[5F\x1b[J") == 1  # up over the header and four lines, cleared, drawn again

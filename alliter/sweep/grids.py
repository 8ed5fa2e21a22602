"""What a sweep runs: the named grids of betas, and the parsing of its lists (--betas, --kl-targets, --search-start,
--seeds), each value checked as a trial would check it, the bounds of a sweep's size."""

from __future__ import annotations

from alliter.cli import AlliterError
from alliter.config import TrainConfig, check_bounds, check_value
from alliter.knob import KNOBS

# name -> (betas, max_generations or None for the config's own)
GRIDS: dict[str, tuple[list[float], int | None]] = {
    "coarse": ([0.0, 0.01, 0.1, 1.0, 10.0, 100.0], None),
    "fine": ([float(b) for b in range(20, 100, 10)], None),
    "extended": ([40.0], 7000),
}

MAX_SEEDS = 100  # --seeds
MAX_TRIALS = 1000  # of a sweep: values x seeds, or a search's budget x seeds


def parse_numbers(text: str, flag: str) -> list[float]:
    """`5, 15,25` -> [5.0, 15.0, 25.0] (a trailing comma aside); AlliterError in one line naming `flag` otherwise
    (an empty item between two commas too: a typo, not a value to skip)."""
    items = [v.strip() for v in text.strip().removesuffix(",").split(",")] if text.strip() else []
    if "" in items:
        raise AlliterError(f"{flag} has an empty value between two commas, got {text!r}")
    try:
        return [float(v) for v in items]
    except ValueError:
        raise AlliterError(f"{flag} takes numbers separated by commas, got {text!r}") from None


def knob_values(text: str, flag: str, knob: str = "beta", units: TrainConfig | None = None) -> list[float]:
    """`--betas 5,15,25` or `--kl-targets 0.05,0.1` -> the numbers, each a valid value of TrainConfig's `knob`
    (beta or kl_target; a target bounded in the KL units of `units`' recipe), none twice."""
    noun = KNOBS[knob].symbol
    values = parse_numbers(text, flag)
    if not values:
        raise AlliterError(f"{flag} takes numbers separated by commas, got {text!r}: no {noun} to sweep")
    for v in values:
        check_value(knob, v, units)
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise AlliterError(f"{flag} lists {', '.join(f'{v:g}' for v in twice)} twice: two trials of one {noun} and "
                           f"seed are the same trial; for several trials of a {noun} pass --seeds N")
    return values


def grid_betas(grid: str | None, betas: str | None) -> tuple[list[float], int | None]:
    """Betas (and a grid's own trial length) from `--grid NAME` or `--betas 5,15,25`."""
    if betas is not None:
        return knob_values(betas, "--betas"), None
    if grid in GRIDS:
        values, length = GRIDS[grid]
        return list(values), length
    raise AlliterError(f"unknown grid {grid!r}; known grids: {', '.join(GRIDS)}")


def parse_seeds(seeds: str | None, default: int) -> list[int]:
    """`--seeds 3` -> [0, 1, 2]; `--seeds 0,4,7` -> [0, 4, 7]; no --seeds -> [default]."""
    if seeds is None:
        return [default]
    parts = [p.strip() for p in str(seeds).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise AlliterError(f"--seeds takes a count or integer seeds separated by commas, got {seeds!r}") from None
    if len(values) == 1 and "," not in str(seeds):
        if values[0] < 1:
            raise AlliterError(f"--seeds N runs N seeds and needs N >= 1, got {seeds!r}")
        count = values[0]
    else:
        if not values or any(v < 0 for v in values):
            raise AlliterError(f"seeds must be integers >= 0, got {seeds!r}")
        if len(set(values)) != len(values):
            raise AlliterError(f"--seeds lists a seed twice: {seeds!r}")
        for v in values:
            check_bounds("seed", v)
        count = len(values)
    if count > MAX_SEEDS:
        raise AlliterError(f"--seeds runs at most {MAX_SEEDS} seeds of each value, got {count} (a verdict over seeds "
                           "needs a few; each seed is a trial of every value)")
    return values if len(values) > 1 or "," in str(seeds) else list(range(count))


def compact(numbers: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> "0-3, 7": a list of seeds in a line that stays short."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)

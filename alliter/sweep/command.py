"""Sweep beta: one RLOO trial per beta (and seed) on Ray Tune, on this machine or a Ray cluster.

    python tune_jobs/sweep.py --grid coarse                      # the study's coarse grid
    python tune_jobs/sweep.py --search                           # find the balanced beta by itself
    python tune_jobs/sweep.py --grid fine --seeds 3              # every beta with seeds 0, 1, 2
    python tune_jobs/sweep.py --betas 5,15,25 --max-generations 400
    python tune_jobs/sweep.py --resume                           # continue the newest sweep
    python tune_jobs/sweep.py --grid fine --model tinystories-33m --address auto --storage s3://bucket/alliter

Every trainer setting (alliter.config.TrainConfig) is a flag and applies to every trial; the rule's flags
(--diversity-measure, --diversity-share, --fluency-margin, --window, --max-collapse-rate) are best_beta's.
Exit status: 0 when every trial finished, 1 when a trial errored, 2 for a bad flag (nothing started),
130 when interrupted; the last lines say how to go on.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from alliter.cli import ArgumentParser, add_config_flags, command, given_config_values, prog
from alliter.config import TrainConfig
from alliter.rule import CollapseRule
from alliter.sweep.config import SweepConfig
from alliter.sweep.run import run_sweep


def parse(argv: Sequence[str] | None) -> tuple[SweepConfig, TrainConfig, CollapseRule, set[str]]:
    """The sweep's flags: its config, the trials' config, the rule, and the names of the flags given."""
    parser = ArgumentParser(prog=prog("python tune_jobs/sweep.py"), description=__doc__)
    add_config_flags(parser, SweepConfig)
    add_config_flags(parser, CollapseRule)
    add_config_flags(parser, TrainConfig, skip=["beta"])
    args = parser.parse_args(argv)
    given = {cls: given_config_values(args, cls) for cls in (SweepConfig, CollapseRule, TrainConfig)}
    return (SweepConfig(**given[SweepConfig]), TrainConfig(**given[TrainConfig]), CollapseRule(**given[CollapseRule]),
            {name for values in given.values() for name in values})


@command
def main(argv: Sequence[str] | None = None) -> int:
    sweep, base, rule, given = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        outcome = run_sweep(sweep, base, given, rule)
    except KeyboardInterrupt:
        print("\ninterrupted before the trials started; nothing to resume", file=sys.stderr)
        return 130
    return outcome.exit_code

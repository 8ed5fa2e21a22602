"""The study in one command (tune_jobs/study.py, `alliter study`): the coarse grid, a fine grid placed from it, the
extended run of its choice with the study's recipe and with the recipe that holds, and the write-up.

    alliter study                                   # the bundled model, every default (about 18 minutes on 2 cores)
    alliter study --model tinystories-33m --address auto --gpus-per-trial 0.25
    alliter study --resume                          # continue the newest study where it stopped

Every flag that is not the study's own goes to every step's sweep (the model, its resources, the rule, any trainer
knob); the steps set --grid, --betas, --seeds and --max-generations. Exit status: 0 when every step finished and the
write-up is written, 1 when a step failed, 2 for a bad flag (nothing started), 130 when interrupted.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from alliter.cli import AlliterError, ArgumentParser, add_config_flags, command, given_config_values
from alliter.study.run import StudyConfig, open_study

STEP_FLAGS = {"--grid", "--betas", "--seeds", "--max-generations", "--name", "--storage", "--resume", "--search",
              "--kl-targets", "--kl-target", "--search-targets", "--search-start"}  # what the steps set themselves


def check_passthrough(flags: list[str], storage: str | None) -> None:
    """The flags for the steps' sweeps: none that a step sets, and every one a sweep takes (checked by planning the
    first step, which starts nothing)."""
    named = {f.split("=", 1)[0] for f in flags if f.startswith("--")}
    taken = sorted(named & STEP_FLAGS)
    if taken:
        raise AlliterError(f"{', '.join(taken)}: the study's steps set these themselves (alliter study --help)")
    from alliter.sweep.command import parse  # the sweep's own parser and plan: one line for a bad flag, as a sweep's
    from alliter.sweep.run import plan_sweep

    sweep, base, rule, given = parse(["--grid", "coarse", *flags, *(["--storage", storage] if storage else [])])
    plan_sweep(sweep, base, given, rule)


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="alliter study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, StudyConfig)
    args, passthrough = parser.parse_known_args(argv)
    cfg = StudyConfig(**given_config_values(args, StudyConfig))
    if not cfg.resume:
        check_passthrough(passthrough, cfg.storage)
    study = open_study(cfg, passthrough)
    code = study.run()
    if code:
        return code
    from alliter.study.writeup import write

    md, page = write(study.folder)
    print(f"\nthe study's write-up: {page} (and {md.name}); its sweeps and their analyses in {study.folder}")
    return 0


if __name__ == "__main__":
    from alliter.cli import run

    run(main)

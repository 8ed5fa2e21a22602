"""The study in one command (tune_jobs/study.py, `alliter study`): the coarse grid, a fine grid placed from it, the
extended run of its choice with the study's recipe and with the recipe that holds, and the write-up.

    alliter study                                   # the bundled model, every default (about 18 minutes on 2 cores)
    alliter study --model tinystories-33m --address auto --gpus-per-trial 0.25
    alliter study --resume                          # continue the newest study where it stopped

Every flag that is not the study's own goes to every step's sweep (the model, its resources, the rule, any trainer
knob); the steps set --grid, --betas, --seeds and --max-generations. Every step is planned before the first starts,
so a flag no step can run with is one line, nothing made. A study's folder takes one driver at a time. Exit status: 0
when every step finished and the write-up is written, 1 when a step failed, 2 for a bad flag (nothing started), 130
when interrupted (Ctrl-C; `--resume` continues it).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from typing import Sequence

from alliter.cli import (
    AlliterError, ArgumentParser, InactiveFlag, add_config_flags, command, flag_groups, given_config_values,
)
from alliter.study.run import (
    PLANNED_BETA, PLANNED_FINE, STEPS, StudyConfig, new_study_folder, open_study, resumed_folder, step_flags, study_root,
)
from alliter.sweep.console import say, say_command

STEP_FLAGS = {"--grid", "--betas", "--seeds", "--max-generations", "--name", "--storage", "--resume", "--search",
              "--kl-targets", "--kl-target", "--search-targets", "--search-start"}  # what the steps set themselves


def plan_steps(cfg: StudyConfig, passthrough: list[str], storage: str, name: str) -> dict[str, list[str]]:
    """Every step's sweep planned before the first starts (alliter.sweep's own parser and plan: one line for a bad
    flag, as a sweep's), with the study's own flags (--seeds, the generations) placed as each step places them and
    the later steps' betas the reference study's. Returns the flags each step's sweep gets: a flag that does nothing
    in a step (AdamW's in the steps with SGD) goes only to the steps where it acts, and one that acts in none is
    refused."""
    named = {f.split("=", 1)[0] for f in passthrough if f.startswith("--")}
    taken = sorted(named & STEP_FLAGS)
    if taken:
        raise AlliterError(f"{', '.join(taken)}: the study's steps set these themselves (alliter study --help)")
    from alliter.config import TrainConfig
    from alliter.rule import CollapseRule
    from alliter.sweep.command import parse
    from alliter.sweep.config import SweepConfig
    from alliter.sweep.plan import plan_sweep
    from alliter.train import preflight

    groups = flag_groups(passthrough, SweepConfig, CollapseRule, TrainConfig)
    flags: dict[str, list[str]] = {}
    inactive: dict[str, list[InactiveFlag]] = {}
    plans = {}
    for step in STEPS:
        own = step_flags(step, cfg, PLANNED_FINE, PLANNED_BETA)
        mine = list(groups)
        while True:
            try:
                sweep, base, rule, given = parse([*own, *sum(mine, []), "--storage", storage, "--name", name])
                plans[step] = plan_sweep(sweep, base, given, rule, preflight_model=False)  # the model: below, once
                break
            except InactiveFlag as err:
                if not any(g[0].split("=", 1)[0] == err.flag for g in mine):
                    raise AlliterError(f"step {step} ({' '.join(own)}): {err}") from None
                mine = [g for g in mine if g[0].split("=", 1)[0] != err.flag]
                inactive.setdefault(err.flag, []).append(err)
            except AlliterError as err:
                raise AlliterError(f"step {step} ({' '.join(own)}): {err}") from None
        flags[step] = sum(mine, [])
    for flag, errors in inactive.items():
        if len(errors) == len(STEPS):
            raise errors[0]
        steps = [step for step in STEPS if any(g[0].split("=", 1)[0] == flag for g in flag_groups(
            flags[step], SweepConfig, CollapseRule, TrainConfig))]
        print(f"alliter study: {flag} goes to the {' and '.join(steps)} step{'s' if len(steps) > 1 else ''} only: "
              f"{errors[0]}", file=sys.stderr)
    preflight.run_preflight(plans[STEPS[0]].base)  # what a trial would find of the model, once: every step's is it
    return flags


def passed_on() -> str:
    """--help's list of the sweep's flags the study passes on to every step (those the steps do not set)."""
    import textwrap

    from alliter.config import TrainConfig
    from alliter.rule import CollapseRule
    from alliter.sweep.config import SweepConfig

    flags = [f"--{f.name.replace('_', '-')}" for cls in (SweepConfig, CollapseRule, TrainConfig)
             for f in dataclasses.fields(cls)]
    shown = [f for f in flags if f not in STEP_FLAGS and f not in ("--beta", "--precision", "--budget")]
    return "flags passed on to every step's sweep (alliter sweep --help says what each does):\n" + textwrap.fill(
        " ".join(shown), width=98, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="alliter study", description=__doc__, epilog=passed_on())
    add_config_flags(parser, StudyConfig)
    args, passthrough = parser.parse_known_args(argv)
    cfg = StudyConfig(**given_config_values(args, StudyConfig))
    root = study_root(cfg)
    if cfg.resume:
        folder = resumed_folder(cfg, root, passthrough)
    else:
        folder = new_study_folder(cfg, root)
        step_passthrough = plan_steps(cfg, passthrough, str(root), folder.name)
    from alliter.storage import DriverLock

    try:
        study = open_study(cfg, passthrough, folder)
        with DriverLock(str(folder), what="study"):  # a second driver on this study is refused
            if not cfg.resume:
                study.state["step_passthrough"] = step_passthrough
                study.save()
            code = study.run()
            if code:
                return code
            from alliter.study.writeup import write

            md, page = write(study.folder)
    except KeyboardInterrupt:
        if folder.exists():
            say_command("\ninterrupted; continue it with:",
                        f"alliter study --resume --name {shlex.quote(folder.name)} --storage {shlex.quote(str(root))}",
                        file=sys.stderr)
        else:
            print("\ninterrupted before the study started; nothing to resume", file=sys.stderr)
        return 130
    say(f"\nthe study's write-up: {page} (and {md.name}); its sweeps and their analyses in {study.folder}")
    return 0


if __name__ == "__main__":
    from alliter.cli import run

    run(main)

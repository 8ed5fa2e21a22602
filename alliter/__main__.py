"""`alliter COMMAND ...` (or `python -m alliter COMMAND ...`): the project's commands in one place.

    alliter sweep --grid coarse          # = python tune_jobs/sweep.py --grid coarse
    alliter study                        # = python tune_jobs/study.py: the whole study and its write-up
    alliter best-beta results/SWEEP      # = python analysis/best_beta.py results/SWEEP
    alliter train --out runs/beta10      # = python -m alliter.train --out runs/beta10
    alliter sample model                 # = python -m alliter.sample model
"""

from __future__ import annotations

import importlib
import sys

from alliter.cli import run

COMMANDS = {
    "sweep": "alliter.sweep.command",
    "study": "alliter.study.command",
    "best-beta": "alliter.analyse.command",
    "train": "alliter.train.__main__",
    "sample": "alliter.sample",
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2
    name, argv = sys.argv[1], sys.argv[2:]
    sys.argv = [f"alliter {name}", *argv]  # --help names the command as typed
    return importlib.import_module(COMMANDS[name]).main(argv)


def console() -> None:
    """The `alliter` console script."""
    run(main)


if __name__ == "__main__":
    console()

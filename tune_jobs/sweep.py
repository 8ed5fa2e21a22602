"""Sweep beta: one RLOO trial per beta (and seed) on Ray Tune. A thin entry point over alliter.sweep.command
(--help for every flag); the same command is `alliter sweep` once the package is installed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's alliter, installed or not

from alliter.cli import run  # noqa: E402
from alliter.sweep.command import main  # noqa: E402

if __name__ == "__main__":
    run(main)

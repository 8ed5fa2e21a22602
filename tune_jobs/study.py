"""The study in one command: coarse grid, fine grid placed from it, the extended runs, the write-up. A thin entry
point over alliter.study.command (--help for every flag); the same command is `alliter study` once installed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's alliter, installed or not

from alliter.cli import run  # noqa: E402
from alliter.study.command import main  # noqa: E402

if __name__ == "__main__":
    run(main)

"""Pick the beta, and the point in training, that balances alliteration against diversity and fluency; export it
as a model. A thin entry point over alliter.analyse.command (--help for the rule, the outputs and the export);
the same command is `alliter best-beta` once the package is installed.

    python analysis/best_beta.py [RESULTS_DIR] [--out DIR] [--json] ...
    python analysis/best_beta.py RESULTS_DIR --export DIR [--export-at BETA:GENERATIONS] [--force]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's alliter, installed or not

from alliter.analyse.command import main  # noqa: E402
from alliter.cli import run  # noqa: E402

if __name__ == "__main__":
    run(main)

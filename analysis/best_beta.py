"""Pick the beta, and the point in training, that balances alliteration and diversity; export it as a model.

    python analysis/best_beta.py [RESULTS_DIR ...] [--out DIR] [--json] [--window 200] ...
    python analysis/best_beta.py RESULTS_DIR --export DIR [--export-at BETA:GENERATIONS]

A thin entry point over alliter.best_beta_cli (see alliter/analysis.py's docstring, or --help, for the rule
and the outputs, and alliter/export.py for the exported folder).
"""

import sys
from pathlib import Path

try:
    import alliter  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alliter.best_beta_cli import main
from alliter.cli import run

if __name__ == "__main__":
    run(main)

"""Pick the beta, and the point in training, that balances alliteration and diversity.

    python analysis/best_beta.py [RESULTS_DIR ...] [--out DIR] [--json] [--window 200] ...

A thin entry point over alliter.analysis (see its docstring, or --help, for the rule and the outputs).
"""

import sys
from pathlib import Path

try:
    import alliter  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alliter.analysis import main

if __name__ == "__main__":
    sys.exit(main())

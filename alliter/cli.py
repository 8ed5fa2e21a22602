"""What every command line of alliter does the same way."""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with main's code; a reader that stops early (`| head -1`) ends the command quietly, not with a
    BrokenPipeError traceback."""
    try:
        code = main()
        sys.stdout.flush()  # here, so that a closed pipe raises inside the try and not at exit
    except BrokenPipeError:
        # Python's recipe (docs: signal, "Note on SIGPIPE"): stdout to devnull, so the flush at exit is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)

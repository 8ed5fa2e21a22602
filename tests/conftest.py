"""Fixtures: tiny models the tests build and save themselves, and the bundled real model; the modules' order."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from alliter.config import BUNDLED_MODEL
from alliter.testing import build_tiny_gpt_neo

# the tests that interrupt a command send it SIGINT; a shell's background job (CI's, a `cmd &`) starts with SIGINT
# ignored, an ignored signal stays ignored across exec and a handled one does not: handled here, the commands the
# tests start get the default, as from a terminal
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_gpt_neo(tmp_path_factory) -> Path:
    return build_tiny_gpt_neo(tmp_path_factory.mktemp("tiny-gpt-neo"))


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    return BUNDLED_MODEL


# The modules by their time, longest first (measured serially, 2026-12-07). pytest-xdist hands a worker a whole module
# at a time, in the order collected (pyproject's --no-loadscope-reorder: its default order, the most tests first, put
# the study's one long test last, to run alone at the end), so the short modules at the end even out the two workers'
# last minutes. An order only: a module not named here runs after these. test_compiled is first for a fresh CI machine,
# where it compiles its graphs cold (about 5 minutes on 2 busy cores; 1 from alliter's Inductor cache). The wheel's
# test (test_installed: 4.8 min on 2 loaded cores), the Ray job's (2.3 min) and the notebook's (50 s) were timed alone.
LONGEST_FIRST = ("test_compiled", "test_installed", "test_sweep", "test_study", "test_ray_job", "test_cluster",
                 "test_storage", "test_resume", "test_launcher", "test_fail_fast", "test_trackers", "test_notebook",
                 "test_export", "test_your_reward", "test_analysis",
                 "test_trainer", "test_golden", "test_kl_target", "test_recipes", "test_rloo", "test_model",
                 "test_fast_path")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's own order stays

"""Fixtures: tiny models the tests build and save themselves, and the bundled real model; the modules' order."""

from __future__ import annotations

from pathlib import Path

import pytest

from alliter.config import BUNDLED_MODEL
from alliter.testing import build_tiny_gpt_neo


@pytest.fixture(scope="session")
def tiny_gpt_neo(tmp_path_factory) -> Path:
    return build_tiny_gpt_neo(tmp_path_factory.mktemp("tiny-gpt-neo"))


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    return BUNDLED_MODEL


# The modules that take longest, first. pytest-xdist hands a worker a whole module at a time, in the order collected
# (pyproject's --no-loadscope-reorder: its default order, the most tests first, put the study's one long test last,
# to run alone at the end). An order only: a module not named here runs after these.
LONGEST_FIRST = ("test_sweep", "test_cluster", "test_study", "test_storage", "test_fail_fast", "test_trackers",
                 "test_launcher", "test_resume", "test_your_reward", "test_kl_target", "test_golden")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's own order stays

"""Fixtures: tiny models the tests build and save themselves, and the bundled real model."""

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with end-to-end tests first: the test processes take whole modules (`--dist loadfile`), so the
    quick modules fill the end instead of one long module running alone there."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: each module's tests keep their order

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

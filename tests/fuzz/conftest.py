"""The fuzz suite: property-based tests of every parser that takes outside input (profiles: fuzz_settings.py)."""

from __future__ import annotations

import os

import fuzz_settings  # noqa: F401  (registers and loads the hypothesis profile)
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(HERE):
            item.add_marker(pytest.mark.fuzz)

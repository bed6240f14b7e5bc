"""Fixtures for the reliability tests: the app's process singletons are rebuilt for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared import runtime


@pytest.fixture(autouse=True)
def _fresh_runtime() -> Iterator[None]:
    """The app's process singletons are built from the environment each test sets."""
    runtime.reset()
    yield
    runtime.reset()

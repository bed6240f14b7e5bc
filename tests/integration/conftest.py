"""Fixtures for the integration tests: one Azurite queue service for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.azurite import Azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's queue service on a free port, in memory. Tests stay independent by using their own queue names."""
    with Azurite() as running:
        yield running

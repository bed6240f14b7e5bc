"""Fixtures for the infrastructure tests: the parsed templates and the azd parameter file."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from bicep_model import INFRA, MODULES, parse_bicep


@pytest.fixture(scope="session")
def main_template() -> dict[str, Any]:
    return parse_bicep(INFRA / "main.bicep")


@pytest.fixture(scope="session")
def module_template() -> Callable[[str], dict[str, Any]]:
    """Parses `infra/modules/<name>.bicep`."""

    def load(name: str) -> dict[str, Any]:
        return parse_bicep(MODULES / f"{name}.bicep")

    return load


@pytest.fixture(scope="session")
def app_settings(main_template: dict[str, Any]) -> dict[str, Any]:
    """The `appSettings` object of main.bicep, setting name to (pycep) value."""
    return main_template["variables"]["appSettings"]["value"]


@pytest.fixture(scope="session")
def parameters_file() -> dict[str, Any]:
    """`parameters` of infra/main.parameters.json (the azd parameter file)."""
    return json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]

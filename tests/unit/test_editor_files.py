"""The VS Code and devcontainer files parse, and what they name exists: tasks, modules, Makefile options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [*sorted((ROOT / ".vscode").glob("*.json")), ROOT / ".devcontainer" / "devcontainer.json"]


def load(path: str) -> dict:
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_file_is_plain_json(path):
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


def test_the_editor_files_are_all_there():
    assert {p.name for p in FILES} >= {"launch.json", "tasks.json", "extensions.json", "devcontainer.json"}


def test_every_task_a_launch_configuration_starts_first_is_defined():
    labels = {task["label"] for task in load(".vscode/tasks.json")["tasks"]}
    wanted = {c["preLaunchTask"] for c in load(".vscode/launch.json")["configurations"] if "preLaunchTask" in c}
    assert wanted <= labels


def test_the_tasks_run_make_dev_and_make_test():
    commands = {task["command"] for task in load(".vscode/tasks.json")["tasks"]}
    assert {"make dev", "make dev DEBUG=1", "make test"} <= commands


def test_the_attach_configuration_listens_where_make_dev_debug_starts_debugpy():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    configurations = load(".vscode/launch.json")["configurations"]
    attach = next(c for c in configurations if c.get("preLaunchTask") == "make dev DEBUG=1")
    connect = attach["connect"]
    assert f"-m debugpy --listen {connect['host']}:{connect['port']}" in makefile


def test_the_launch_configuration_runs_the_module_make_dev_runs():
    launch = next(c for c in load(".vscode/launch.json")["configurations"] if c["request"] == "launch")
    assert f"-m {launch['module']} " in (ROOT / "Makefile").read_text(encoding="utf-8")


def test_the_recommended_extensions_cover_python_functions_bicep_and_azurite():
    recommended = set(load(".vscode/extensions.json")["recommendations"])
    assert {"ms-python.python", "ms-azuretools.vscode-azurefunctions", "ms-azuretools.vscode-bicep"} <= recommended
    assert "azurite.azurite" in recommended
    assert set(load(".devcontainer/devcontainer.json")["customizations"]["vscode"]["extensions"]) == recommended


def test_the_devcontainer_has_python_3_11_node_20_and_the_azure_tools():
    container = load(".devcontainer/devcontainer.json")
    assert "python:1-3.11" in container["image"]
    features = container["features"]
    assert features["ghcr.io/devcontainers/features/node:1"] == {"version": "20"}
    assert "ghcr.io/devcontainers/features/azure-cli:1" in features
    assert container["postCreateCommand"] == "make setup"

"""Reading Bicep for the infrastructure tests (pycep-parser models, and small helpers over them).

The Bicep CLI cannot be installed on these machines, so the templates are read with `pycep-parser`, which turns
a `.bicep` file into plain dicts. One quirk to know when reading the tests: pycep gives an identifier (a
parameter, variable or resource symbol) and a string literal the same form, a bare `str`; interpolated strings
keep their `${...}` text; function calls and property accesses become nested dicts (`{"function": ...}`,
`{"operator": {"type": "property_accessor", ...}}`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MODULES = INFRA / "modules"


def bicep_files() -> list[Path]:
    """Every `.bicep` file under infra/, sorted."""
    return sorted(INFRA.rglob("*.bicep"))


@cache
def parse_bicep(path: Path) -> dict[str, Any]:
    """The pycep model of one Bicep file; raises if the file does not parse."""
    return BicepParser().parse(file_path=path)


def decorator_types(declaration: dict[str, Any]) -> set[str]:
    """Names of the decorators on a parameter, variable or output (`secure`, `min_value`, ...)."""
    return {decorator["type"] for decorator in declaration.get("decorators", [])}


def decorator_argument(declaration: dict[str, Any], kind: str) -> Any:
    """The argument of one decorator of a declaration; raises KeyError when it has none of that kind."""
    for decorator in declaration.get("decorators", []):
        if decorator["type"] == kind:
            return decorator.get("argument")
    raise KeyError(kind)


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """The configuration of a resource or module, under its `if (...)` when it has one (pycep nests it there)."""
    config = declaration["config"]
    return config["config"] if "condition" in config else config


def condition(declaration: dict[str, Any]) -> Any:
    """The `if (...)` condition of a resource or module, or None when it is always deployed."""
    return declaration["config"].get("condition")


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """Resources (symbol to declaration) of one type, e.g. `Microsoft.Web/sites`, existing ones left out."""
    return {
        symbol: resource
        for symbol, resource in template.get("resources", {}).items()
        if resource["type"] == resource_type and not resource["existing"]
    }


def only_resource(template: dict[str, Any], resource_type: str) -> dict[str, Any]:
    """The one resource of a type in a template; fails the test when there is not exactly one."""
    found = resources_of_type(template, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return next(iter(found.values()))


def module_output_references(node: Any) -> Iterator[tuple[str, str]]:
    """Every `<module>.outputs.<name>` used in a model subtree, as (module symbol, output name) pairs."""
    if isinstance(node, dict):
        operator = node.get("operator")
        if isinstance(operator, dict) and operator.get("type") == "property_accessor":
            outer, inner = operator["operands"]["operand_1"], operator["operands"]["operand_2"]
            inner_operator = inner.get("operator") if isinstance(inner, dict) else None
            if (
                isinstance(outer, str)
                and isinstance(inner_operator, dict)
                and inner_operator.get("type") == "property_accessor"
                and inner_operator["operands"]["operand_1"] == "outputs"
                and isinstance(inner_operator["operands"]["operand_2"], str)
            ):
                yield outer, inner_operator["operands"]["operand_2"]
        for value in node.values():
            yield from module_output_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from module_output_references(value)
    elif isinstance(node, str):
        yield from _interpolated_output_references(node)


def _interpolated_output_references(text: str) -> Iterator[tuple[str, str]]:
    for match in re.finditer(r"\$\{\s*([A-Za-z_]\w*)\.outputs\.([A-Za-z_]\w*)\s*\}", text):
        yield match.group(1), match.group(2)


def identifiers_used(node: Any) -> set[str]:
    """Identifier-like leaves of a model subtree, including the ones inside `${...}` interpolations."""
    found: set[str] = set()
    if isinstance(node, dict):
        for value in node.values():
            found |= identifiers_used(value)
    elif isinstance(node, list):
        for value in node:
            found |= identifiers_used(value)
    elif isinstance(node, str):
        if re.fullmatch(r"[A-Za-z_]\w*", node):
            found.add(node)
        for expression in re.findall(r"\$\{([^}]*)\}", node):
            found |= set(re.findall(r"[A-Za-z_]\w*", expression))
    return found

"""Reading Bicep for the infrastructure tests (pycep-parser models, and small helpers over them).

The Bicep CLI cannot be installed on these machines, so the templates are read with `pycep-parser`, which turns
a `.bicep` file into plain dicts. One quirk to know when reading the tests: pycep gives an identifier (a
parameter, variable or resource symbol) and a string literal the same form, a bare `str`; interpolated strings
keep their `${...}` text; function calls and property accesses become nested dicts (`{"function": ...}`,
`{"operator": {"type": "property_accessor", ...}}`). pycep reads a safe dereference `a.?b` as `a.b`, a
non-null assertion `a!.b` as `a.b`, and folds `a.b.c ?? d` into `a.b.(c ?? d)`: where the kind of access matters,
`output_reads` reads the source text instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
            ):
                name = _coalesced(inner_operator["operands"]["operand_2"])
                if isinstance(name, str):
                    yield outer, name
        for value in node.values():
            yield from module_output_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from module_output_references(value)
    elif isinstance(node, str):
        yield from _interpolated_output_references(node)


def _coalesced(node: Any) -> Any:
    """The left operand of pycep's folded `outputs.(name ?? default)`, else the node itself."""
    operator = node.get("operator") if isinstance(node, dict) else None
    if isinstance(operator, dict) and operator.get("type") == "coalesce":
        return operator["operands"]["operand_1"]
    return node


def _interpolated_output_references(text: str) -> Iterator[tuple[str, str]]:
    for match in re.finditer(r"\$\{\s*([A-Za-z_]\w*)(?:\.\?|!\.|\.)outputs\.([A-Za-z_]\w*)\s*\}", text):
        yield match.group(1), match.group(2)


@dataclass(frozen=True)
class OutputRead:
    """One read of a module's outputs in Bicep source: `network.outputs.x` (access `.`), `network!.outputs.x`
    (`!.`, a non-null assertion) or `network.?outputs.x` (`.?`, a safe dereference); ``defaulted`` when a `??`
    follows the output's name."""

    module: str
    access: str
    output: str
    line: int
    defaulted: bool


# A comment, or a string literal (Bicep escapes with a backslash inside single quotes).
_COMMENT_OR_STRING = re.compile(r"//[^\n]*|/\*.*?\*/|'(?:\\.|[^'\\])*'", re.S)
_INTERPOLATION = re.compile(r"\$\{[^}]*\}")


def _blank(text: str) -> str:
    return re.sub(r"[^\n]", " ", text)


def _code_only(text: str) -> str:
    """Bicep source with comments and the literal text of strings blanked (lines kept); interpolations stay."""

    def keep_code(match: re.Match[str]) -> str:
        if match[0].startswith("/"):
            return _blank(match[0])
        pieces, end = [], 0
        for interpolation in _INTERPOLATION.finditer(match[0]):
            pieces += [_blank(match[0][end : interpolation.start()]), interpolation[0]]
            end = interpolation.end()
        return "".join([*pieces, _blank(match[0][end:])])

    return _COMMENT_OR_STRING.sub(keep_code, text)


def output_reads(text: str, modules: Iterable[str]) -> list[OutputRead]:
    """Every read of the outputs of the named modules in Bicep source ``text``, outside comments and literal text."""
    names = "|".join(re.escape(module) for module in modules)
    if not names:
        return []
    code = _code_only(text)
    pattern = re.compile(
        rf"\b(?P<module>{names})\s*(?P<access>\.\?|!\.|\.)\s*outputs\.(?P<output>\w+)(?P<default>\s*\?\?)?"
    )
    return [
        OutputRead(
            module=match["module"],
            access=match["access"],
            output=match["output"],
            line=code.count("\n", 0, match.start()) + 1,
            defaulted=bool(match["default"]),
        )
        for match in pattern.finditer(code)
    ]


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

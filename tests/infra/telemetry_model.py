"""What telemetry the code emits, read from its source (not from a list kept by hand).

- Instruments: `self.<attr> = meter.create_<kind>("<metric name>", ...)` in shared/telemetry.py.
- Metric attributes: every `<...>.<attr>.add(value, attributes)` or `.record(value, attributes)` in the modules
  that record telemetry. The attributes expression is read as far as the code spells it out: dict literals
  (with `**` unpacking), names assigned in the same function (`x = {...}`, `x["key"] = ...`, `x.update(...)`),
  conditional expressions, and parameters, which are followed to every call of their function in the module.
- CLIENT span attributes (the `dependencies` table): the `attributes=` of spans started with `kind=SpanKind.CLIENT`,
  plus every `span.set_attribute("key", ...)` / `span.set_attributes(...)` in the same module.

Anything it cannot read raises `UnreadableAttributes` naming the place, so telemetry stays written readably.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import cache

from bicep_model import REPO

SHARED = REPO / "shared"
# The modules that record telemetry: the client, the worker, the HTTP API and the token provider.
RECORDING_MODULES = ("client", "worker", "http_api", "auth")
_RECORD_METHODS = {"add", "record"}


class UnreadableAttributes(Exception):
    """An attributes expression this reader cannot follow."""


@dataclass(frozen=True)
class _Module:
    name: str
    tree: ast.Module
    parents: dict[ast.AST, ast.AST]

    def enclosing_function(self, node: ast.AST) -> ast.FunctionDef | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    def functions(self, name: str) -> list[ast.FunctionDef]:
        return [
            n for n in ast.walk(self.tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name
        ]

    def where(self, node: ast.AST) -> str:
        return f"shared/{self.name}.py:{getattr(node, 'lineno', '?')}"

    @classmethod
    def parse(cls, name: str, source: str) -> _Module:
        tree = ast.parse(source)
        return cls(name, tree, {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)})


@cache
def _module(name: str) -> _Module:
    return _Module.parse(name, (SHARED / f"{name}.py").read_text(encoding="utf-8"))


@cache
def instruments() -> dict[str, str]:
    """Telemetry attribute name to metric name, e.g. ``{"commands": "itwin.commands", ...}``."""
    found = {}
    for node in ast.walk(_module("telemetry").tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(target := node.targets[0], ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
            and isinstance(call := node.value, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr.startswith("create_")
            and call.args
            and isinstance(call.args[0], ast.Constant)
        ):
            found[target.attr] = call.args[0].value
    return found


def _keys(expr: ast.expr, module: _Module, seen: frozenset[int] = frozenset()) -> set[str]:
    """The string keys an attributes expression can hold."""
    if id(expr) in seen:
        return set()
    seen = seen | {id(expr)}
    if isinstance(expr, ast.Dict):
        keys: set[str] = set()
        for key, value in zip(expr.keys, expr.values, strict=True):
            if key is None:
                keys |= _keys(value, module, seen)
            elif isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.add(key.value)
            else:
                raise UnreadableAttributes(f"{module.where(key)}: attribute key {ast.unparse(key)} is not a literal")
        return keys
    if isinstance(expr, ast.IfExp):
        return _keys(expr.body, module, seen) | _keys(expr.orelse, module, seen)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return _keys(expr.left, module, seen) | _keys(expr.right, module, seen)
    if isinstance(expr, ast.Name):
        return _name_keys(expr, module, seen)
    raise UnreadableAttributes(f"{module.where(expr)}: cannot read the attributes {ast.unparse(expr)}")


def _name_keys(name: ast.Name, module: _Module, seen: frozenset[int]) -> set[str]:
    function = module.enclosing_function(name)
    if function is None:
        raise UnreadableAttributes(f"{module.where(name)}: {name.id} is not local to a function")
    keys: set[str] = set()
    assigned = False
    for node in ast.walk(function):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id == name.id and node.value is not None:
                    keys |= _keys(node.value, module, seen)
                    assigned = True
                elif (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == name.id
                ):
                    if not (isinstance(target.slice, ast.Constant) and isinstance(target.slice.value, str)):
                        raise UnreadableAttributes(
                            f"{module.where(target)}: {ast.unparse(target)} is not a literal key"
                        )
                    keys.add(target.slice.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name.id
        ):
            for argument in node.args:
                keys |= _keys(argument, module, seen)
            keys |= {keyword.arg for keyword in node.keywords if keyword.arg}
    parameters = [a.arg for a in (*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs)]
    if name.id in parameters:
        keys |= _argument_keys(function, name.id, parameters, module, seen)
    elif not assigned:
        raise UnreadableAttributes(f"{module.where(name)}: {name.id} is neither assigned nor a parameter")
    return keys


def _argument_keys(
    function: ast.FunctionDef, parameter: str, parameters: list[str], module: _Module, seen: frozenset[int]
) -> set[str]:
    """Keys of what every call of ``function`` in the module passes as ``parameter``."""
    keys: set[str] = set()
    calls = 0
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Call):
            continue
        called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if called != function.name:
            continue
        calls += 1
        offset = 1 if parameters and parameters[0] == "self" and isinstance(node.func, ast.Attribute) else 0
        position = parameters.index(parameter) - offset
        keyword = next((k.value for k in node.keywords if k.arg == parameter), None)
        argument = keyword if keyword is not None else node.args[position] if position < len(node.args) else None
        if argument is not None:
            keys |= _keys(argument, module, seen)
    if not calls:
        raise UnreadableAttributes(f"shared/{module.name}.py: {function.name}({parameter}) is never called")
    return keys


@cache
def metric_attributes() -> dict[str, frozenset[str]]:
    """Metric name to every attribute key the code records it with."""
    names = instruments()
    found: dict[str, set[str]] = defaultdict(set)
    for module_name in RECORDING_MODULES:
        module = _module(module_name)
        for node in ast.walk(module.tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _RECORD_METHODS
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr in names
            ):
                attributes = (
                    node.args[1]
                    if len(node.args) > 1
                    else next((k.value for k in node.keywords if k.arg == "attributes"), None)
                )
                metric = names[node.func.value.attr]
                found[metric] |= _keys(attributes, module) if attributes is not None else set()
    return {metric: frozenset(keys) for metric, keys in found.items()}


@cache
def client_span_attributes() -> frozenset[str]:
    """Attribute keys of the CLIENT spans (one per request attempt), which Application Insights keeps as
    `dependencies` with the attributes in customDimensions."""
    keys: set[str] = set()
    for module_name in RECORDING_MODULES:
        module = _module(module_name)
        starts = [
            node
            for node in ast.walk(module.tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("start_as_current_span", "start_span")
            and any(k.arg == "kind" and ast.unparse(k.value) == "SpanKind.CLIENT" for k in node.keywords)
        ]
        if not starts:
            continue
        for start in starts:
            keys |= _keys(next(k.value for k in start.keywords if k.arg == "attributes"), module)
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "set_attribute" and isinstance(node.args[0], ast.Constant):
                    keys.add(node.args[0].value)
                elif node.func.attr == "set_attributes":
                    keys |= _keys(node.args[0], module)
    return frozenset(keys)

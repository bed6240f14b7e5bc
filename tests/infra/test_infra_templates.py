"""The Bicep files parse, and main.bicep wires its modules the way `bicep build` would insist on.

Without the Bicep CLI these structural checks stand in for its type checking: a module path that does not
exist, a parameter a module does not declare, a required parameter left out, or an output that is not there
would each fail `az deployment` and `azd up`; here they fail the test run instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from bicep_model import (
    INFRA,
    REPO,
    bicep_files,
    body,
    condition,
    identifiers_used,
    module_output_references,
    output_reads,
    parse_bicep,
)

EXPECTED_MODULES = {
    "identity",
    "monitoring",
    "storage",
    "key-vault",
    "role-assignments",
    "function-app",
    "network",
    "workbook",
    "alerts",
}


def test_infra_has_main_and_one_module_per_concern():
    # GIVEN the infra folder  THEN it holds main.bicep and exactly the expected modules
    names = {path.relative_to(INFRA).as_posix() for path in bicep_files()}

    assert names == {"main.bicep"} | {f"modules/{name}.bicep" for name in EXPECTED_MODULES}


@pytest.mark.parametrize("path", bicep_files(), ids=lambda path: path.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses_with_pycep(path: Path):
    # WHEN the file is parsed  THEN pycep returns a model with at least one declaration
    model = parse_bicep(path)

    assert model.get("parameters") or model.get("resources") or model.get("modules")


def test_main_deploys_to_a_resource_group(main_template: dict[str, Any]):
    # `az deployment group create` and azd's resource-group scoped deployment both need this scope.
    assert main_template["globals"]["scope"]["value"] == "resourceGroup"


def _modules(main_template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return main_template["modules"]


def _module_path(module: dict[str, Any]) -> Path:
    return INFRA / module["detail"]["path"]


def test_every_module_main_uses_exists_and_is_local(main_template: dict[str, Any]):
    for symbol, module in _modules(main_template).items():
        assert module["type"] == "local", f"module {symbol} is not a local file"
        assert _module_path(module).is_file(), f"module {symbol}: {module['detail']['path']} is missing"

    used = {_module_path(module).stem for module in _modules(main_template).values()}
    assert used == EXPECTED_MODULES


def test_main_passes_only_declared_params_and_every_required_one(main_template: dict[str, Any]):
    for symbol, module in _modules(main_template).items():
        declared = parse_bicep(_module_path(module))["parameters"]
        passed = set(body(module)["params"])
        required = {name for name, param in declared.items() if param["default"] is None}

        assert passed <= set(declared), f"module {symbol} is passed undeclared params {passed - set(declared)}"
        assert required <= passed, f"module {symbol} is missing required params {required - passed}"


def test_every_module_output_main_reads_is_declared(main_template: dict[str, Any]):
    modules = _modules(main_template)
    references = set(module_output_references(main_template))

    assert references, "main.bicep should read module outputs"
    for symbol, output in references:
        assert symbol in modules, f"{symbol}.outputs.{output}: no module called {symbol}"
        outputs = parse_bicep(_module_path(modules[symbol])).get("outputs", {})
        assert output in outputs, f"{symbol}.outputs.{output} is not an output of {modules[symbol]['detail']}"


def test_no_module_depends_on_a_module_it_already_references(main_template: dict[str, Any]):
    # bicep lint (no-unnecessary-dependson): a reference such as `network.?outputs.x` already orders the deployment.
    for symbol, module in _modules(main_template).items():
        config = body(module)
        referenced = identifiers_used({key: value for key, value in config.items() if key not in ("dependsOn", "name")})

        redundant = set(config.get("dependsOn", [])) & referenced
        assert not redundant, f"module {symbol} lists {sorted(redundant)} in dependsOn but already references them"


def test_outputs_of_conditional_modules_are_read_only_through_a_safe_dereference_with_a_default(
    main_template: dict[str, Any],
):
    # Bicep warns (BCP318) on `network.outputs.x` when network is deployed `if (...)`, even under a ternary on the
    # same condition; `network.?outputs.x ?? default` is the guarded form. `network!.outputs.x` only silences it.
    conditional = [symbol for symbol, module in _modules(main_template).items() if condition(module) is not None]
    reads = output_reads((INFRA / "main.bicep").read_text(encoding="utf-8"), conditional)

    assert conditional == ["network"]
    assert reads, "main.bicep should read the network's outputs"
    unguarded = [
        f"line {read.line}: {read.module}{read.access}outputs.{read.output}"
        for read in reads
        if read.access != ".?" or not read.defaulted
    ]
    assert not unguarded, f"unguarded reads of conditional module outputs: {unguarded}"


def test_the_output_read_finder_tells_the_three_accesses_apart_and_skips_comments_and_literal_text():
    source = (
        "// network.outputs.inComment\n"
        "var a = 'https://${network.outputs.interpolated}/'\n"
        "var b = network!.outputs.asserted\n"
        "var c = network.?outputs.safe ?? ''\n"
        "var d = 'literal network.outputs.text, it\\'s'\n"
        "/* network.outputs.inBlock */ var e = storage.outputs.name\n"
    )

    found = [(read.access, read.output, read.line, read.defaulted) for read in output_reads(source, ["network"])]

    assert found == [(".", "interpolated", 2, False), ("!.", "asserted", 3, False), (".?", "safe", 4, True)]


@pytest.mark.parametrize("path", bicep_files(), ids=lambda path: path.relative_to(INFRA).as_posix())
def test_every_parameter_is_used(path: Path):
    # An unused parameter is a setting the deployer can change to no effect (bicep lint: no-unused-params).
    model = parse_bicep(path)
    body = {key: value for key, value in model.items() if key != "parameters"}
    used = identifiers_used(body)

    unused = set(model.get("parameters", {})) - used
    assert not unused, f"{path.name} declares unused params {sorted(unused)}"


def test_azure_yaml_deploys_the_python_function_app_with_bicep_from_infra(main_template: dict[str, Any]):
    project = yaml.safe_load((REPO / "azure.yaml").read_text(encoding="utf-8"))
    service_name = main_template["modules"]["functionApp"]["config"]["params"]["serviceName"]

    # The azd service must match the function app's azd-service-name tag.
    assert project["services"] == {service_name: {"project": ".", "language": "python", "host": "function"}}
    assert project["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}

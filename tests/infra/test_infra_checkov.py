"""checkov on both deployment variants: public endpoints (vnetEnabled=false, the default) and the private network.

Each variant is infra/ rendered with its parameter file (see variants.py). Neither may fail a check or leave a file
unparsed; the private one needs strictly fewer skips, and each skip it no longer has is a check it passes. Every
skip that remains says why, next to the property concerned.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bicep_model import INFRA, parse_bicep
from variants import VARIANTS, CheckovReport, Finding, parameter_values, render, render_variant, run_checkov


def _key(finding: Finding) -> tuple[str, str, str]:
    return finding.check_id, finding.resource, finding.file


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CheckovReport]:
    """checkov's report on each variant, by name."""
    return {
        name: run_checkov(render_variant(parameter_file, tmp_path_factory.mktemp(name) / "infra"))
        for name, parameter_file in VARIANTS.items()
    }


# The renderer ---------------------------------------------------------------------------------------------------

TEMPLATE = """param vnetEnabled bool = false
param name string
resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  properties: {
    // checkov:skip=CKV_AZURE_59: [vnetEnabled=false] public only.
    // checkov:skip=CKV_AZURE_206: any variant.
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    subnet: vnetEnabled ? network.outputs.appSubnetId : ''
  }
}
"""


def test_a_variant_makes_the_parameter_the_default_and_resolves_its_ternaries():
    rendered = render(TEMPLATE, {"vnetEnabled": True})

    assert "param vnetEnabled bool = true\n" in rendered
    assert "publicNetworkAccess: 'Disabled'\n" in rendered
    assert "subnet: network.outputs.appSubnetId\n" in rendered
    assert "?" not in rendered


def test_a_skip_tagged_for_one_value_is_dropped_from_the_other_variant_only():
    private = render(TEMPLATE, {"vnetEnabled": True})
    public = render(TEMPLATE, {"vnetEnabled": False})

    assert "CKV_AZURE_59" not in private
    assert "CKV_AZURE_59" in public
    assert "CKV_AZURE_206" in private
    assert "CKV_AZURE_206" in public
    assert "publicNetworkAccess: 'Enabled'\n" in public


def test_a_ternary_the_renderer_cannot_resolve_is_an_error_naming_it():
    template = "param vnetEnabled bool\nvar acls = vnetEnabled ? { defaultAction: 'Deny' } : {}\n"

    with pytest.raises(ValueError, match=r"cannot resolve .var acls = vnetEnabled"):
        render(template, {"vnetEnabled": True})


def test_the_variant_parameter_files_set_vnet_enabled_both_ways_and_only_parameters_of_main():
    main_parameters = parse_bicep(INFRA / "main.bicep")["parameters"]
    values = {name: parameter_values(path) for name, path in VARIANTS.items()}

    assert values == {"public": {"vnetEnabled": False}, "private": {"vnetEnabled": True}}
    assert main_parameters["vnetEnabled"]["default"] is False
    for path in VARIANTS.values():
        assert set(parameter_values(path)) <= set(main_parameters), path.name


def test_each_rendered_variant_still_parses(tmp_path: Path):
    for name, parameter_file in VARIANTS.items():
        target = render_variant(parameter_file, tmp_path / name)
        for path in sorted(target.rglob("*.bicep")):
            assert parse_bicep(path), f"{name}: {path.name}"


# checkov --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_checkov_fails_nothing_and_parses_every_file(variant: str, reports: dict[str, CheckovReport]):
    report = reports[variant]

    assert report.parsing_errors == ()
    assert sorted(map(_key, report.failed)) == []
    assert report.passed, "checkov ran no check at all"


def test_the_private_variant_skips_less_and_passes_each_check_the_public_one_skips(
    reports: dict[str, CheckovReport],
):
    public = {_key(f) for f in reports["public"].skipped}
    private = {_key(f) for f in reports["private"].skipped}
    passed_privately = {_key(f) for f in reports["private"].passed}

    assert private < public
    assert public - private <= passed_privately


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_remaining_skip_says_why(variant: str, reports: dict[str, CheckovReport]):
    for finding in reports[variant].skipped:
        assert len(finding.reason.strip()) >= 40, f"{finding.check_id} on {finding.resource} needs a real reason"

"""The private-network option (vnetEnabled): off by default; when on, the app integrates with a virtual network
and reaches storage (blob, queue, table) and Key Vault through private endpoints registered in private DNS zones,
with public network access off on both. Each variant is read as checkov reads it (variants.py), so the properties
are the literal values Azure would get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bicep_model import (
    INFRA,
    body,
    condition,
    module_output_references,
    only_resource,
    output_reads,
    parse_bicep,
    resources_of_type,
)
from variants import VARIANTS, render_variant

STORAGE_SERVICES = ["blob", "queue", "table"]


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory):
    """Parses a module of a variant: ``variant("private", "storage")``."""
    rendered: dict[str, Path] = {}

    def load(name: str, module: str) -> dict[str, Any]:
        if name not in rendered:
            rendered[name] = render_variant(VARIANTS[name], tmp_path_factory.mktemp(name) / "infra")
        return parse_bicep(rendered[name] / "modules" / f"{module}.bicep")

    return load


@pytest.mark.parametrize(
    ("module", "resource_type"),
    [("storage", "Microsoft.Storage/storageAccounts"), ("key-vault", "Microsoft.KeyVault/vaults")],
)
def test_storage_and_key_vault_are_public_by_default_and_private_with_vnet_enabled(module, resource_type, variant):
    public = body(only_resource(variant("public", module), resource_type))["properties"]
    private = body(only_resource(variant("private", module), resource_type))["properties"]

    assert (public["publicNetworkAccess"], public["networkAcls"]["defaultAction"]) == ("Enabled", "Allow")
    assert (private["publicNetworkAccess"], private["networkAcls"]["defaultAction"]) == ("Disabled", "Deny")


def test_the_network_is_deployed_only_with_vnet_enabled_which_is_off_by_default(main_template):
    assert condition(main_template["modules"]["network"]) == "vnetEnabled"
    assert main_template["parameters"]["vnetEnabled"]["default"] is False
    for module in ("storage", "keyVault"):
        assert body(main_template["modules"][module])["params"]["vnetEnabled"] == "vnetEnabled"


def test_the_app_integrates_with_the_app_subnet_and_starts_after_the_network(main_template, variant):
    # `network.?outputs.appSubnetId ?? ''`: empty without the network. Bicep derives the app's dependency on the
    # network from that reference, so no dependsOn needs to list it.
    function_app = body(main_template["modules"]["functionApp"])
    main_source = (INFRA / "main.bicep").read_text(encoding="utf-8")
    reads = {read.output: read for read in output_reads(main_source, ["network"])}
    private_site = body(only_resource(variant("private", "function-app"), "Microsoft.Web/sites"))["properties"]

    assert set(module_output_references(function_app["params"])) >= {("network", "appSubnetId")}
    assert (reads["appSubnetId"].access, reads["appSubnetId"].defaulted) == (".?", True)
    assert "network" not in function_app["dependsOn"]
    assert private_site["virtualNetworkSubnetId"]["operator"]["type"] == "conditional"


def _subnets(network: dict[str, Any]) -> dict[str, dict[str, Any]]:
    vnet = only_resource(network, "Microsoft.Network/virtualNetworks")
    return {subnet["name"]: subnet["properties"] for subnet in body(vnet)["properties"]["subnets"]}


def test_the_app_subnet_is_delegated_to_flex_consumption_and_leaves_through_the_nat_gateway(variant):
    network = variant("private", "network")
    app = _subnets(network)["appSubnetName"]

    assert [d["properties"]["serviceName"] for d in app["delegations"]] == ["Microsoft.App/environments"]
    assert app["defaultOutboundAccess"] is False
    assert app["natGateway"]["id"]["operator"]["operands"]["operand_1"] == "natGateway"
    assert only_resource(network, "Microsoft.Network/natGateways")


def test_storage_services_and_the_vault_get_private_endpoints_with_their_dns_zones(variant):
    network = variant("private", "network")
    endpoints = resources_of_type(network, "Microsoft.Network/privateEndpoints")
    storage_loop = endpoints["storageEndpoints"]["config"]["loop_type"]["detail"]
    [storage_connection] = body(endpoints["storageEndpoints"])["properties"]["privateLinkServiceConnections"]
    [vault_connection] = body(endpoints["vaultEndpoint"])["properties"]["privateLinkServiceConnections"]

    assert network["variables"]["storageServices"]["value"] == STORAGE_SERVICES
    assert storage_loop == {"item_name": "service", "array_name": "storageServices"}
    assert storage_connection["properties"]["groupIds"] == ["service"]
    assert storage_connection["properties"]["privateLinkServiceId"]["operator"]["operands"]["operand_1"] == "storage"
    assert vault_connection["properties"]["groupIds"] == ["vault"]
    assert vault_connection["properties"]["privateLinkServiceId"]["operator"]["operands"]["operand_1"] == "vault"
    zone_groups = resources_of_type(network, "Microsoft.Network/privateEndpoints/privateDnsZoneGroups")
    links = resources_of_type(network, "Microsoft.Network/privateDnsZones/virtualNetworkLinks")
    assert set(zone_groups) == {"storageEndpointZones", "vaultEndpointZone"}
    assert set(links) == {"storageZoneLinks", "vaultZoneLink"}
    assert _subnets(network)["privateEndpointSubnetName"]["privateEndpointNetworkPolicies"] == "Disabled"

"""The security properties of the deployment, read from the parsed templates.

checkov (run by `make infra-check`) covers the generic policies; these tests pin the properties this app's
design depends on, so that a change that weakens one fails here with a sentence saying which.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from bicep_model import (
    bicep_files,
    decorator_argument,
    decorator_types,
    identifiers_used,
    only_resource,
    parse_bicep,
    resources_of_type,
)
from pycep import BicepParser

# Built-in role definition ids, as published in Azure's "Azure built-in roles" reference
# (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles); they are the same in every tenant.
BUILT_IN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
}

# Which role the app's identity holds on which resource (the symbol of the `existing` resource in the module).
EXPECTED_GRANTS = {
    ("Storage Blob Data Owner", "storage"),
    ("Storage Queue Data Contributor", "storage"),
    ("Storage Table Data Contributor", "storage"),
    ("Monitoring Metrics Publisher", "appInsights"),
    ("Key Vault Secrets User", "vault"),
}

SECRET_LIKE_NAME = re.compile(r"secret|password|credential|connectionstring", re.IGNORECASE)


def _properties(resource: dict[str, Any]) -> dict[str, Any]:
    return resource["config"]["properties"]


@pytest.fixture(scope="module")
def storage_account(module_template) -> dict[str, Any]:
    return only_resource(module_template("storage"), "Microsoft.Storage/storageAccounts")


@pytest.fixture(scope="module")
def site(module_template) -> dict[str, Any]:
    return only_resource(module_template("function-app"), "Microsoft.Web/sites")


@pytest.fixture(scope="module")
def vault(module_template) -> dict[str, Any]:
    return only_resource(module_template("key-vault"), "Microsoft.KeyVault/vaults")


@pytest.fixture(scope="module")
def role_module(module_template) -> dict[str, Any]:
    return module_template("role-assignments")


# Storage -------------------------------------------------------------------------------------------------------


def test_storage_refuses_shared_keys_anonymous_blobs_and_old_tls(storage_account):
    properties = _properties(storage_account)

    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True
    assert properties["defaultToOAuthAuthentication"] is True


def test_blob_containers_are_private(module_template):
    containers = resources_of_type(
        module_template("storage"), "Microsoft.Storage/storageAccounts/blobServices/containers"
    )

    assert containers
    for container in containers.values():
        assert _properties(container)["publicAccess"] == "None"


# Function app --------------------------------------------------------------------------------------------------


def test_plan_is_flex_consumption_on_linux(module_template):
    plan = only_resource(module_template("function-app"), "Microsoft.Web/serverfarms")

    assert plan["config"]["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert _properties(plan)["reserved"] is True


def test_app_is_linux_python_311_on_flex(site, module_template):
    runtime = _properties(site)["functionAppConfig"]["runtime"]
    python_version = module_template("function-app")["parameters"]["pythonVersion"]

    assert site["config"]["kind"] == "functionapp,linux"
    assert runtime == {"name": "python", "version": "pythonVersion"}
    assert python_version["default"] == "3.11"
    assert decorator_argument(python_version, "allowed") == ["3.11"]


def test_app_is_https_only_with_tls_12(site):
    properties = _properties(site)

    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["scmMinTlsVersion"] == "1.2"


def test_ftp_and_basic_auth_publishing_are_off(site, module_template):
    # Flex Consumption has no FTP server and rejects siteConfig.ftpsState, so "FTP off" is expressed as the
    # ftp (and scm) basic-auth publishing policies denying user name / password access.
    policies = resources_of_type(
        module_template("function-app"), "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    )

    assert {policy["config"]["name"]: _properties(policy)["allow"] for policy in policies.values()} == {
        "ftp": False,
        "scm": False,
    }
    assert "ftpsState" not in _properties(site)["siteConfig"]


def test_app_runs_only_as_the_user_assigned_identity(site):
    identity = site["config"]["identity"]
    properties = _properties(site)
    deployment_auth = properties["functionAppConfig"]["deployment"]["storage"]["authentication"]

    assert identity["type"] == "UserAssigned"
    assert identity["userAssignedIdentities"] == {"'${identityId}'": {}}
    assert properties["keyVaultReferenceIdentity"] == "identityId"
    assert deployment_auth == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}


def test_deployment_container_is_in_the_host_storage_account(site, main_template):
    storage = _properties(site)["functionAppConfig"]["deployment"]["storage"]
    params = main_template["modules"]["functionApp"]["config"]["params"]

    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${storageBlobEndpoint}${deploymentContainerName}"
    assert identifiers_used(params["storageBlobEndpoint"]) >= {"storage", "blobEndpoint"}
    assert identifiers_used(params["deploymentContainerName"]) >= {"storage", "deploymentContainerName"}


def test_instance_memory_and_maximum_instances_are_parameters_within_flex_limits(site, main_template):
    scale = _properties(site)["functionAppConfig"]["scaleAndConcurrency"]
    parameters = main_template["parameters"]

    assert scale == {"instanceMemoryMB": "instanceMemoryMB", "maximumInstanceCount": "maximumInstanceCount"}
    assert decorator_argument(parameters["instanceMemoryMB"], "allowed") == [512, 2048, 4096]
    # The smallest size: the app's process peaked at 89 MB in the soak's operations run (docs/deployment.md, Cost).
    assert parameters["instanceMemoryMB"]["default"] == 512
    assert decorator_argument(parameters["maximumInstanceCount"], "min_value") == 40
    assert decorator_argument(parameters["maximumInstanceCount"], "max_value") == 1000


def test_app_waits_for_its_role_assignments(main_template):
    # Key Vault references and host storage are resolved with the identity when the app first starts.
    assert "roleAssignments" in main_template["modules"]["functionApp"]["config"]["dependsOn"]


# Key Vault -----------------------------------------------------------------------------------------------------


def test_key_vault_uses_rbac_soft_delete_and_purge_protection(vault):
    properties = _properties(vault)

    assert properties["enableRbacAuthorization"] is True
    assert properties["enableSoftDelete"] is True
    assert properties["enablePurgeProtection"] is True
    assert "accessPolicies" not in properties
    assert properties["enabledForTemplateDeployment"] is False


def test_vault_secrets_hold_secure_parameters(module_template):
    vault_module = module_template("key-vault")
    secrets = resources_of_type(vault_module, "Microsoft.KeyVault/vaults/secrets")

    assert len(secrets) == 3
    for secret in secrets.values():
        parameter = vault_module["parameters"][_properties(secret)["value"]]
        assert "secure" in decorator_types(parameter)


# Monitoring ----------------------------------------------------------------------------------------------------


def test_application_insights_and_workspace_refuse_local_auth(module_template):
    monitoring = module_template("monitoring")
    app_insights = only_resource(monitoring, "Microsoft.Insights/components")
    workspace = only_resource(monitoring, "Microsoft.OperationalInsights/workspaces")

    assert _properties(app_insights)["DisableLocalAuth"] is True
    assert _properties(app_insights)["WorkspaceResourceId"] == {
        "operator": {"type": "property_accessor", "operands": {"operand_1": "workspace", "operand_2": "id"}}
    }
    assert _properties(workspace)["features"]["disableLocalAuth"] is True


# Role assignments ----------------------------------------------------------------------------------------------


def _role_ids(role_module: dict[str, Any]) -> dict[str, str]:
    return {key.strip("'"): value for key, value in role_module["variables"]["roleIds"]["value"].items()}


def _role_key(expression: Any) -> str:
    operator = expression["operator"]
    assert operator["type"] == "index_accessor"
    assert operator["operands"]["operand_1"] == "roleIds"
    return operator["operands"]["operand_2"]


def test_role_definition_ids_are_the_named_built_in_roles(role_module):
    assert _role_ids(role_module) == BUILT_IN_ROLES


def test_identity_holds_exactly_the_expected_roles_on_the_expected_resources(role_module):
    assignments = resources_of_type(role_module, "Microsoft.Authorization/roleAssignments")
    grants = set()
    for symbol, assignment in assignments.items():
        definition = _properties(assignment)["roleDefinitionId"]["function"]
        assert definition["type"] == "subscription_resource_id", symbol
        assert definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", symbol
        grants.add((_role_key(definition["parameters"]["resource_name_1"]), assignment["config"]["scope"]))

    assert grants == EXPECTED_GRANTS
    assert len(assignments) == len(EXPECTED_GRANTS)


def test_role_assignment_names_are_guids_of_scope_principal_and_role(role_module):
    for symbol, assignment in resources_of_type(role_module, "Microsoft.Authorization/roleAssignments").items():
        config = assignment["config"]
        name = config["name"]["function"]
        assert name["type"] == "guid", f"{symbol}: name must be guid(...) so redeploys find the same assignment"
        arguments = name["parameters"]
        role_key = _role_key(_properties(assignment)["roleDefinitionId"]["function"]["parameters"]["resource_name_1"])

        assert arguments["base_string"]["operator"]["operands"] == {"operand_1": config["scope"], "operand_2": "id"}
        assert arguments["extra_string_1"] == "principalId"
        assert _role_key(arguments["extra_string_2"]) == role_key
        assert _properties(assignment)["principalId"] == "principalId"
        assert _properties(assignment)["principalType"] == "ServicePrincipal"


def test_role_assignments_go_to_the_apps_identity(main_template):
    params = main_template["modules"]["roleAssignments"]["config"]["params"]

    assert identifiers_used(params["principalId"]) >= {"identity", "principalId"}


# Secure parameters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", bicep_files(), ids=lambda path: path.name)
def test_secret_like_parameters_are_secure_without_defaults(path):
    for name, parameter in parse_bicep(path).get("parameters", {}).items():
        if SECRET_LIKE_NAME.search(name):
            assert "secure" in decorator_types(parameter), f"{path.name}: {name} must be @secure()"
            assert parameter["default"] is None, f"{path.name}: {name} must not have a default"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda path: path.name)
def test_no_output_reveals_a_secure_parameter(path):
    model = parse_bicep(path)
    secure = {name for name, parameter in model.get("parameters", {}).items() if "secure" in decorator_types(parameter)}

    for name, output in model.get("outputs", {}).items():
        assert not identifiers_used(output["value"]) & secure, f"{path.name}: output {name} uses a secure parameter"
        assert not _calls_list_function(output["value"]), f"{path.name}: output {name} calls a list*() function"


def _calls_list_function(node: Any) -> bool:
    """True when a model subtree calls listKeys() or another list*() function (they return keys)."""
    if isinstance(node, dict):
        function = node.get("function")
        if isinstance(function, dict) and str(function.get("type", "")).startswith("list"):
            return True
        operator = node.get("operator")
        if (
            isinstance(operator, dict)
            and operator.get("type") == "function_accessor"
            and str(operator["operands"].get("func_name", "")).startswith("list")
        ):
            return True
        return any(_calls_list_function(value) for value in node.values())
    if isinstance(node, list):
        return any(_calls_list_function(value) for value in node)
    return isinstance(node, str) and bool(re.search(r"\blist\w*\(", node))


def test_the_list_function_check_sees_both_call_forms():
    # GIVEN outputs calling listKeys() as a function and as a resource method  THEN both are caught
    model = BicepParser().parse(
        text=(
            "resource stg 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {\n  name: 'x'\n}\n"
            "output a string = stg.listKeys().keys[0].value\n"
            "output b string = listKeys(stg.id, '2023-05-01').keys[0].value\n"
            "output c string = stg.id\n"
        )
    )

    assert [_calls_list_function(output["value"]) for output in model["outputs"].values()] == [True, True, False]


def test_main_has_exactly_the_three_secure_parameters(main_template):
    secure = {name for name, parameter in main_template["parameters"].items() if "secure" in decorator_types(parameter)}

    assert secure == {"itwinClientSecret", "itwinWebhookSecret", "itwinWebhookSecretPrevious"}
    assert decorator_argument(main_template["parameters"]["itwinWebhookSecret"], "min_length") == 32
    assert decorator_argument(main_template["parameters"]["itwinWebhookSecretPrevious"], "min_length") == 32

"""No drift between what the code reads and what the deployment sets.

`shared.settings.SETTINGS` is the one list of settings; these tests read it (not a copy) and check main.bicep's
app settings, the azd parameter file and local.settings.example.json against it, and the queue names against
COMMAND_QUEUE / POISON_QUEUE.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest
from bicep_model import REPO, module_output_references

from shared.settings import COMMAND_QUEUE, POISON_QUEUE, SETTINGS, STORAGE_CONNECTION, Setting

CODE_SETTINGS = [setting for setting in SETTINGS if setting.name != STORAGE_CONNECTION]
SECRET_SETTINGS = [setting for setting in CODE_SETTINGS if setting.secret]
PLAIN_SETTINGS = [setting for setting in CODE_SETTINGS if not setting.secret]

# App settings the Flex Consumption plan replaces with functionAppConfig (or never had), and the key-based
# storage connection string that allowSharedKeyAccess=false would break.
FORBIDDEN_APP_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
    STORAGE_CONNECTION,
}

KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=\$\{keyVault\.outputs\.(\w+)\}\)$")


def _by_name(setting: Setting) -> str:
    return setting.name


def _parameter_behind(value: Any, parameters: dict[str, Any]) -> str:
    """The main.bicep parameter an app setting is set from: `param` itself or `string(param)`."""
    if isinstance(value, dict) and value.get("function", {}).get("type") == "string":
        value = value["function"]["parameters"]["value_to_convert"]
    assert isinstance(value, str), f"{value!r} is not set from a parameter"
    assert value in parameters, f"{value!r} is not a parameter of main.bicep"
    return value


def test_settings_table_is_not_empty():
    assert {setting.name for setting in SETTINGS} >= {"ITWIN_CLIENT_ID", "ITWIN_CLIENT_SECRET", STORAGE_CONNECTION}


@pytest.mark.parametrize("setting", CODE_SETTINGS, ids=_by_name)
def test_every_setting_the_code_reads_is_an_app_setting_in_main_bicep(setting: Setting, app_settings):
    assert setting.name in app_settings


def test_storage_connection_is_identity_based_with_the_apps_identity(app_settings):
    # AzureWebJobsStorage counts as set through its identity-based form; the code's queue client and the host
    # both read exactly these names.
    assert STORAGE_CONNECTION not in app_settings, "a connection string would need shared keys"
    assert app_settings[f"{STORAGE_CONNECTION}__credential"] == "managedidentity"
    assert set(module_output_references(app_settings[f"{STORAGE_CONNECTION}__clientId"])) == {("identity", "clientId")}
    assert set(module_output_references(app_settings[f"{STORAGE_CONNECTION}__accountName"])) == {("storage", "name")}
    assert set(module_output_references(app_settings[f"{STORAGE_CONNECTION}__queueServiceUri"])) == {
        ("storage", "queueEndpoint")
    }
    assert set(module_output_references(app_settings[f"{STORAGE_CONNECTION}__blobServiceUri"])) == {
        ("storage", "blobEndpoint")
    }


@pytest.mark.parametrize("setting", SECRET_SETTINGS, ids=_by_name)
def test_secret_settings_are_key_vault_references_to_the_vault_module(setting: Setting, app_settings, module_template):
    match = KEY_VAULT_REFERENCE.match(app_settings[setting.name])

    assert match, f"{setting.name} must be a Key Vault reference, not a value"
    vault_outputs = module_template("key-vault")["outputs"]
    assert match.group(1) in vault_outputs


def test_each_secret_setting_references_its_own_secret(app_settings, module_template):
    vault = module_template("key-vault")
    outputs = {KEY_VAULT_REFERENCE.match(app_settings[s.name]).group(1) for s in SECRET_SETTINGS}
    secret_symbols = {vault["outputs"][output]["value"]["operator"]["operands"]["operand_1"] for output in outputs}

    assert len(outputs) == len(SECRET_SETTINGS)
    assert len(secret_symbols) == len(SECRET_SETTINGS)
    for symbol in secret_symbols:
        assert vault["resources"][symbol]["type"] == "Microsoft.KeyVault/vaults/secrets"


@pytest.mark.parametrize("setting", PLAIN_SETTINGS, ids=_by_name)
def test_plain_settings_come_from_parameters_whose_defaults_match_the_code(
    setting: Setting, app_settings, main_template
):
    parameters = main_template["parameters"]
    parameter = parameters[_parameter_behind(app_settings[setting.name], parameters)]

    if setting.required:
        assert parameter["default"] is None, f"{setting.name} is required: its parameter has no default"
    else:
        expected = setting.default if setting.default is not None else ""
        assert str(parameter["default"]) == expected, f"{setting.name}: Bicep default differs from the code's"


@pytest.mark.parametrize("setting", SECRET_SETTINGS, ids=_by_name)
def test_secret_settings_come_from_secure_parameters_that_reach_the_vault(setting: Setting, main_template):
    # The parameter is named after the setting (ITWIN_CLIENT_SECRET -> itwinClientSecret) and passed on, as is,
    # to the key-vault module, which stores it as a secret.
    name = _camel(setting.name)
    parameter = main_template["parameters"][name]

    assert "secure" in {decorator["type"] for decorator in parameter["decorators"]}
    assert parameter["default"] is None
    assert main_template["modules"]["keyVault"]["config"]["params"][name] == name


@pytest.mark.parametrize("setting", CODE_SETTINGS, ids=_by_name)
def test_every_setting_is_in_the_azd_parameter_file_under_its_own_name(setting: Setting, parameters_file):
    # azd fills `${NAME}` from the environment, so `azd env set ITWIN_SCOPE ...` sets ITWIN_SCOPE.
    value = parameters_file[_camel(setting.name)]["value"]
    match = re.fullmatch(r"\$\{(\w+)(?:=(.*))?\}", value)

    assert match, f"{value!r} is not an azd environment reference"
    assert match.group(1) == setting.name
    if setting.default is not None:
        assert match.group(2) == setting.default, f"{setting.name}: parameter-file default differs from the code's"
    else:
        assert match.group(2) is None


def test_azd_parameter_file_matches_main_bicep(parameters_file, main_template):
    parameters = main_template["parameters"]
    required = {name for name, parameter in parameters.items() if parameter["default"] is None}

    assert set(parameters_file) <= set(parameters), "the parameter file sets parameters main.bicep lacks"
    assert required <= set(parameters_file), "azd must be able to fill every required parameter"
    assert parameters_file["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters_file["location"]["value"] == "${AZURE_LOCATION}"


@pytest.mark.parametrize("setting", SETTINGS, ids=_by_name)
def test_every_setting_is_in_local_settings_example(setting: Setting):
    values = json.loads((REPO / "local.settings.example.json").read_text(encoding="utf-8"))["Values"]

    assert setting.name in values


def test_no_app_setting_that_flex_consumption_or_keyless_storage_rejects(app_settings):
    assert not FORBIDDEN_APP_SETTINGS & set(app_settings)


def test_telemetry_exports_to_application_insights_as_the_apps_identity(app_settings):
    assert app_settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    assert set(module_output_references(app_settings["APPLICATIONINSIGHTS_CONNECTION_STRING"])) == {
        ("monitoring", "connectionString")
    }
    # Local auth is off on Application Insights: the exporter must get an Entra token for the same identity.
    assert app_settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "Authorization=AAD;ClientId=${identity.outputs.clientId}"
    )


def test_queue_names_in_bicep_are_the_codes(main_template, module_template):
    variables = main_template["variables"]
    storage_params = main_template["modules"]["storage"]["config"]["params"]
    storage = module_template("storage")
    queues = {
        resource["config"]["name"]
        for resource in storage["resources"].values()
        if resource["type"] == "Microsoft.Storage/storageAccounts/queueServices/queues"
    }

    assert variables["commandQueueName"]["value"] == COMMAND_QUEUE
    assert variables["poisonQueueName"]["value"] == POISON_QUEUE
    assert storage_params["commandQueueName"] == "commandQueueName"
    assert storage_params["poisonQueueName"] == "poisonQueueName"
    assert queues == {"commandQueueName", "poisonQueueName"}


def test_the_ledger_table_the_template_creates_is_the_one_the_code_uses(main_template, module_template):
    from shared.ledger import LEDGER_TABLE

    tables = {
        resource["config"]["name"]
        for resource in module_template("storage")["resources"].values()
        if resource["type"] == "Microsoft.Storage/storageAccounts/tableServices/tables"
    }
    assert main_template["variables"]["ledgerTableName"]["value"] == LEDGER_TABLE
    assert main_template["modules"]["storage"]["config"]["params"]["ledgerTableName"] == "ledgerTableName"
    assert tables == {"ledgerTableName"}
    assert set(module_output_references(main_template["outputs"]["LEDGER_TABLE"])) == {("storage", "ledgerTableName")}


def test_outputs_give_host_webhook_url_and_queue_names(main_template):
    outputs = main_template["outputs"]

    assert set(module_output_references(outputs["FUNCTION_APP_HOST_NAME"])) == {("functionApp", "defaultHostName")}
    assert outputs["ITWIN_WEBHOOK_URL"]["value"] == "https://${functionApp.outputs.defaultHostName}/api/webhooks/itwin"
    assert set(module_output_references(outputs["COMMAND_QUEUE"])) == {("storage", "commandQueueName")}
    assert set(module_output_references(outputs["POISON_QUEUE"])) == {("storage", "poisonQueueName")}


def test_function_app_gets_main_bicep_app_settings_unchanged(main_template, module_template):
    site = module_template("function-app")["resources"]["site"]
    loop = site["config"]["properties"]["siteConfig"]["appSettings"]

    assert main_template["modules"]["functionApp"]["config"]["params"]["appSettings"] == "appSettings"
    assert loop["loop_type"]["detail"]["array_name"]["function"] == {
        "type": "items",
        "parameters": {"arg_1": "appSettings"},
    }
    assert loop["condition"] is None


def _camel(setting_name: str) -> str:
    """ITWIN_CLIENT_SECRET -> itwinClientSecret, the naming of main.bicep's parameters."""
    first, *rest = setting_name.lower().split("_")
    return first + "".join(word.capitalize() for word in rest)


# Sample values for what only Azure knows at deploy time: the module outputs the identity settings read.
DEPLOYED_VALUES = {
    ("storage", "name"): "stexample",
    ("storage", "queueEndpoint"): "https://stexample.queue.core.windows.net/",
    ("storage", "blobEndpoint"): "https://stexample.blob.core.windows.net/",
    ("storage", "tableEndpoint"): "https://stexample.table.core.windows.net/",
    ("identity", "clientId"): "11111111-2222-3333-4444-555555555555",
}


def _deployed_storage_settings(app_settings: dict[str, Any]) -> dict[str, str]:
    """The AzureWebJobsStorage__* app settings as the app would see them in Azure."""
    environ = {}
    for name, value in app_settings.items():
        if not name.startswith(f"{STORAGE_CONNECTION}__"):
            continue
        references = set(module_output_references(value))
        environ[name] = DEPLOYED_VALUES[references.pop()] if references else value
    return environ


def test_the_codes_queue_client_works_with_exactly_the_deployed_storage_settings(app_settings, monkeypatch):
    # GIVEN only the identity-based settings main.bicep deploys (no connection string, no key)
    import azure.identity

    from shared.ledger import LEDGER_TABLE, Ledger
    from shared.queues import queue_service
    from shared.settings import storage_configured

    environ = _deployed_storage_settings(app_settings)
    created = []

    class RecordingCredential:
        def __init__(self, client_id=None, **kwargs):
            created.append(client_id)

        def get_token(self, *scopes, **kwargs):  # pragma: no cover - never called: nothing is sent
            raise AssertionError("no request is made in this test")

    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", RecordingCredential)

    # WHEN the app's queue client is built from them
    service = queue_service(environ)

    # THEN it addresses the account's queue endpoint as the user-assigned identity
    assert storage_configured(environ)
    assert service.url.startswith("https://stexample.queue.core.windows.net")
    assert service.get_queue_client(COMMAND_QUEUE).queue_name == COMMAND_QUEUE
    # ... and so does the ledger's table client
    ledger = Ledger.from_environment(environ)
    assert ledger.table.url.startswith("https://stexample.table.core.windows.net")
    assert ledger.table.table_name == LEDGER_TABLE
    assert created == [DEPLOYED_VALUES[("identity", "clientId")]] * 2


def test_webhook_url_output_is_the_route_the_code_serves(main_template):
    # The output is what gets registered with the iTwin Platform: it must hit the webhook function.
    host = json.loads((REPO / "host.json").read_text(encoding="utf-8"))
    prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    routes = set()
    for path in (REPO / "functions").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "route" and isinstance(node.value, ast.Constant):
                routes.add(f"/{prefix}/{node.value.value}")

    url = main_template["outputs"]["ITWIN_WEBHOOK_URL"]["value"]
    path = url.removeprefix("https://${functionApp.outputs.defaultHostName}")
    assert path in routes, f"{path} is not one of the app's routes {sorted(routes)}"

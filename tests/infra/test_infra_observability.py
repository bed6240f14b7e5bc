"""The workbook and the alerts: valid, wired to the deployed Application Insights and storage account, and each
alert saying what to do."""

from __future__ import annotations

import re
from typing import Any

import pytest
from bicep_model import MODULES, body, condition, module_output_references, only_resource, resources_of_type
from kql_model import WORKBOOK, workbook, workbook_queries

from observability.pictures import PICTURES

PLACEHOLDER_VARIABLE = "applicationInsightsPlaceholder"


@pytest.fixture(scope="module")
def workbook_module(module_template) -> dict[str, Any]:
    return module_template("workbook")


@pytest.fixture(scope="module")
def alerts_module(module_template) -> dict[str, Any]:
    return module_template("alerts")


def _accessor(expression: Any) -> tuple[str, str]:
    operands = expression["operator"]["operands"]
    assert expression["operator"]["type"] == "property_accessor"
    return operands["operand_1"], operands["operand_2"]


# Workbook -------------------------------------------------------------------------------------------------------


def test_workbook_json_is_a_workbook_whose_queries_all_target_one_placeholder():
    doc = workbook()
    queries = [item["content"] for item in doc["items"] if item["type"] == 3]

    assert doc["version"] == "Notebook/1.0"
    assert len({item["name"] for item in doc["items"]}) == len(doc["items"]), "item names must be unique"
    assert queries
    placeholder = doc["fallbackResourceIds"][0]
    assert doc["fallbackResourceIds"] == [placeholder]
    for query in queries:
        assert query["version"] == "KqlItem/1.0"
        assert query["queryType"] == 0
        assert query["resourceType"] == "microsoft.insights/components"
        assert query["crossComponentResources"] == [placeholder]
        assert query["timeContextFromParameter"] == "TimeRange"
    parameters = next(item for item in doc["items"] if item["type"] == 9)["content"]["parameters"]
    assert [p["name"] for p in parameters] == ["TimeRange"]


def test_every_workbook_query_has_its_local_picture():
    assert set(PICTURES) == {query.name for query in workbook_queries()}


def test_the_deployed_workbook_is_that_file_with_the_placeholder_replaced_by_application_insights(workbook_module):
    resource = only_resource(workbook_module, "Microsoft.Insights/workbooks")
    properties = body(resource)["properties"]
    replace = properties["serializedData"]["function"]
    loaded = replace["parameters"]["original_string"]["function"]
    placeholder = workbook_module["variables"][PLACEHOLDER_VARIABLE]["value"]

    assert replace["type"] == "replace"
    assert loaded["type"] == "load_text_content"
    assert (MODULES / loaded["parameters"]["file_path"]).resolve() == WORKBOOK
    assert replace["parameters"]["old_string"] == PLACEHOLDER_VARIABLE
    assert placeholder == workbook()["fallbackResourceIds"][0]
    assert _accessor(replace["parameters"]["new_string"]) == ("appInsights", "id")
    assert _accessor(properties["sourceId"]) == ("appInsights", "id")
    assert body(resource)["kind"] == "shared"
    assert body(resource)["name"]["function"]["type"] == "guid", "a workbook's name must be a GUID"


def test_workbook_and_alerts_watch_the_resources_main_deploys(main_template, workbook_module, alerts_module):
    for module in (workbook_module, alerts_module):
        existing = module["resources"]["appInsights"]
        assert existing["existing"]
        assert existing["type"] == "Microsoft.Insights/components"
        assert body(existing)["name"] == "applicationInsightsName"
    for symbol in ("workbook", "alerts"):
        params = body(main_template["modules"][symbol])["params"]
        assert set(module_output_references(params["applicationInsightsName"])) == {
            ("monitoring", "applicationInsightsName")
        }
    alerts_params = body(main_template["modules"]["alerts"])["params"]
    assert set(module_output_references(alerts_params["storageAccountName"])) == {("storage", "name")}


# Alerts ---------------------------------------------------------------------------------------------------------


def _rules(alerts_module) -> dict[str, dict[str, Any]]:
    return {
        **resources_of_type(alerts_module, "Microsoft.Insights/scheduledQueryRules"),
        **resources_of_type(alerts_module, "Microsoft.Insights/metricAlerts"),
    }


def test_there_is_one_alert_per_failure_an_operator_must_act_on(alerts_module):
    assert set(_rules(alerts_module)) == {"deadLetters", "credentialErrors", "tokenFailures", "queueBacklog"}


@pytest.mark.parametrize("symbol", ["deadLetters", "credentialErrors", "tokenFailures", "queueBacklog"])
def test_each_alert_says_what_to_do(symbol: str, alerts_module):
    description = body(_rules(alerts_module)[symbol])["properties"]["description"]

    assert "docs/deployment.md" in description
    assert re.search(r"`python -m ops poison (list|replay)`", description)


def test_log_alerts_query_application_insights_and_the_backlog_alert_the_queue_service(alerts_module):
    rules = _rules(alerts_module)
    for symbol in ("deadLetters", "credentialErrors", "tokenFailures"):
        assert [_accessor(s) for s in body(rules[symbol])["properties"]["scopes"]] == [("appInsights", "id")]
    backlog = body(rules["queueBacklog"])["properties"]
    [criterion] = backlog["criteria"]["allOf"]

    assert [_accessor(s) for s in backlog["scopes"]] == [("queueService", "id")]
    assert (criterion["metricNamespace"], criterion["metricName"]) == (
        "Microsoft.Storage/storageAccounts/queueServices",
        "QueueMessageCount",
    )
    assert (criterion["operator"], criterion["threshold"], backlog["windowSize"]) == ("GreaterThan", 0, "PT1H")


def test_any_dead_letter_in_fifteen_minutes_alerts(alerts_module):
    properties = body(_rules(alerts_module)["deadLetters"])["properties"]
    [criterion] = properties["criteria"]["allOf"]

    assert properties["windowSize"] == "PT15M"
    assert (criterion["operator"], criterion["threshold"], criterion["timeAggregation"]) == ("GreaterThan", 0, "Total")


def test_the_action_group_exists_only_with_an_email_and_every_alert_uses_it(alerts_module, main_template):
    group = alerts_module["resources"]["actionGroup"]
    [receiver] = body(group)["properties"]["emailReceivers"]
    actions = alerts_module["variables"]["actionGroups"]["value"]["operator"]["operands"]

    assert condition(group)["operator"]["type"] == "not"
    assert condition(group)["operator"]["operands"]["bool_value"]["function"]["type"] == "empty"
    assert receiver["emailAddress"] == "alertEmail"
    assert actions["true_value"] == []
    assert [_accessor(a) for a in actions["false_value"]] == [("actionGroup", "id")]
    for symbol, rule in resources_of_type(alerts_module, "Microsoft.Insights/scheduledQueryRules").items():
        assert body(rule)["properties"]["actions"]["actionGroups"] == "actionGroups", symbol
    assert body(main_template["modules"]["alerts"])["params"]["alertEmail"] == "alertEmail"
    assert main_template["parameters"]["alertEmail"]["default"] == ""


def test_azd_sets_the_alert_email_and_the_network_option_from_the_environment(parameters_file):
    assert parameters_file["alertEmail"]["value"] == "${ALERT_EMAIL}"
    assert parameters_file["vnetEnabled"]["value"] == "${VNET_ENABLED=false}"

"""The functions as the host sees them: metadata, and each user function called directly."""

import json
from datetime import UTC, datetime

import azure.functions as func
import pytest

import function_app
from functions.commands import commands
from functions.health import health
from functions.webhooks import itwin_webhook
from sandbox.host import app_functions
from shared import runtime
from shared.rules import format_enqueued
from shared.settings import COMMAND_QUEUE, STORAGE_CONNECTION
from shared.signature import sign


@pytest.fixture(scope="module")
def registered():
    # get_functions() may be called once per app; the local host's cache serves every caller.
    return {fn.get_function_name(): fn for fn in app_functions(function_app.app)}


@pytest.fixture(autouse=True)
def fresh_runtime(monkeypatch):
    for name in ("ITWIN_CLIENT_ID", "ITWIN_CLIENT_SECRET", "ITWIN_WEBHOOK_SECRET", "ITWIN_EVENT_RULES"):
        monkeypatch.delenv(name, raising=False)
    runtime.reset()
    yield
    runtime.reset()


def http_trigger(fn):
    trigger = fn.get_trigger()
    return trigger.route, [str(m.value) for m in trigger.methods], str(trigger.auth_level.value)


def test_the_app_registers_its_six_functions(registered):
    assert set(registered) == {
        "commands",
        "command_status",
        "itwin_webhook",
        "health",
        "command_worker",
        "ledger_retention",
    }


def test_http_routes_methods_and_auth_levels(registered):
    assert http_trigger(registered["commands"]) == ("commands", ["POST"], "function")
    assert http_trigger(registered["command_status"]) == ("commands/{id}", ["GET"], "function")
    assert http_trigger(registered["itwin_webhook"]) == ("webhooks/itwin", ["POST"], "anonymous")
    assert http_trigger(registered["health"]) == ("health", ["GET"], "anonymous")


def test_the_worker_is_triggered_by_the_command_queue(registered):
    trigger = registered["command_worker"].get_trigger()
    assert trigger.get_dict_repr()["type"] == "queueTrigger"
    assert (trigger.queue_name, trigger.connection) == (COMMAND_QUEUE, STORAGE_CONNECTION)


def test_the_ledger_retention_runs_daily_on_a_timer(registered):
    trigger = registered["ledger_retention"].get_trigger().get_dict_repr()
    assert (trigger["type"], trigger["schedule"]) == ("timerTrigger", "0 17 3 * * *")


def test_host_json_settings_the_worker_relies_on():
    with open("host.json", encoding="utf-8") as f:
        host = json.load(f)
    queues = host["extensions"]["queues"]
    assert queues["messageEncoding"] == "none"
    assert host["telemetryMode"] == "OpenTelemetry"
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"
    assert queues["maxDequeueCount"] >= 2


def call(builder, *args):
    return builder.build().get_user_function()(*args)


def test_health_answers_503_naming_what_is_missing(monkeypatch):
    monkeypatch.delenv(STORAGE_CONNECTION, raising=False)
    response = call(health, func.HttpRequest("GET", "/api/health", body=b""))
    assert response.status_code == 503
    assert json.loads(response.get_body())["missing"] == ["ITWIN_CLIENT_ID", "ITWIN_CLIENT_SECRET", STORAGE_CONNECTION]


def test_health_answers_ok_when_configured(monkeypatch):
    monkeypatch.setenv("ITWIN_CLIENT_ID", "id")
    monkeypatch.setenv("ITWIN_CLIENT_SECRET", "secret")
    monkeypatch.setenv(STORAGE_CONNECTION, "UseDevelopmentStorage=true")
    response = call(health, func.HttpRequest("GET", "/api/health", body=b""))
    assert (response.status_code, json.loads(response.get_body())) == (200, {"status": "ok"})
    assert response.mimetype == "application/json"


def test_the_command_endpoint_rejects_an_invalid_command_in_the_itwin_error_shape():
    request = func.HttpRequest("POST", "/api/commands", body=b'{"action": "fly", "resource": "run", "id": "r"}')
    response = call(commands, request)
    assert response.status_code == 400
    error = json.loads(response.get_body())["error"]
    assert error["code"] == "InvalidCommand"
    assert error["details"][0]["target"] == "action"


def test_the_webhook_refuses_every_delivery_without_a_configured_secret():
    body = b'{"eventType": "iModels.iModelDeleted.v1", "content": {}}'
    request = func.HttpRequest("POST", "/api/webhooks/itwin", body=body, headers={"Signature": sign(body, "")})
    assert call(itwin_webhook, request).status_code == 401


def test_the_webhook_accepts_a_signed_event_without_a_rule(monkeypatch):
    monkeypatch.setenv("ITWIN_WEBHOOK_SECRET", "w" * 32)
    body = json.dumps(
        {
            "eventType": "changedElements.jobCompleted.v1",
            "content": {},
            "enqueuedDateTime": format_enqueued(datetime.now(UTC)),
            "messageId": "m-1",
        }
    ).encode()
    request = func.HttpRequest("POST", "/api/webhooks/itwin", body=body, headers={"Signature": sign(body, "w" * 32)})
    response = call(itwin_webhook, request)
    assert (response.status_code, json.loads(response.get_body())["accepted"]) == (202, 0)

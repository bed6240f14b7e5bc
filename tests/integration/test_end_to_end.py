"""The deployed shape on one machine: the real app under the local host, Azurite queues and the simulator."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import azure.functions as func
import pytest
import requests
from app_settings import settings_for
from samples import IMODEL

import function_app
from functions.worker import command_worker
from sandbox.host import LocalHost
from shared import runtime
from shared.rules import format_enqueued
from shared.settings import COMMAND_QUEUE, POISON_QUEUE
from shared.signature import sign

SECRET = "an-end-to-end-webhook-secret-0123456789"


def wait_until(condition, timeout=15.0):
    """What ``condition`` returns once it is truthy, or False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    return False


@pytest.fixture
def stack(simulator, azurite, queues, monkeypatch):
    for name, value in settings_for(simulator).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("ITWIN_WEBHOOK_SECRET", SECRET)
    runtime.reset()
    with open("host.json", encoding="utf-8") as f:
        host_json = json.load(f)
    host_json["extensions"]["queues"]["maxPollingInterval"] = "00:00:00.200"
    with LocalHost(function_app.app, host_json, port=0) as host:
        yield host
    runtime.reset()


def api(host, path):
    return f"{host.url}/api/{path}"


def poison(queues):
    return [json.loads(m.content) for m in queues[POISON_QUEUE].peek_messages(max_messages=32)]


def test_a_signed_imodel_deleted_delivery_ends_with_the_imodels_connections_gone(stack, simulator):
    for name in ("nightly", "weekly", "adhoc"):
        simulator.add_connection(IMODEL, name)
    other = simulator.add_connection("1db84556-49ba-41fd-8500-3657784c7752", "keep")
    body = json.dumps(
        {
            "content": {"imodelId": IMODEL, "userId": "u-1"},
            "eventType": "iModels.iModelDeleted.v1",
            "enqueuedDateTime": format_enqueued(datetime.now(UTC)),
            "iTwinId": "t-1",
            "messageId": "m-1",
            "webhookId": "w-1",
        }
    ).encode()
    started = time.monotonic()
    response = requests.post(api(stack, "webhooks/itwin"), data=body, headers={"Signature": sign(body, SECRET)})
    assert response.status_code == 202
    assert time.monotonic() - started < 5.0
    assert wait_until(lambda: list(simulator.connections) == [other["id"]])
    assert [r.method for r in simulator.api_calls()].count("DELETE") == 3


def test_a_bad_signature_enqueues_nothing(stack, simulator, queues):
    body = json.dumps({"content": {"imodelId": IMODEL}, "eventType": "iModels.iModelDeleted.v1"}).encode()
    response = requests.post(
        api(stack, "webhooks/itwin"), data=body, headers={"Signature": sign(body, "not-the-secret-at-all-0000000000")}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidSignature"
    assert queues[COMMAND_QUEUE].peek_messages() == []
    assert simulator.api_calls() == []


def test_an_invalid_message_ends_in_the_poison_queue_with_its_envelope_and_no_api_call(stack, simulator, queues):
    queues[COMMAND_QUEUE].send_message('{"action": "delete", "resource": "job", "id": "nope"}')
    assert wait_until(lambda: poison(queues))
    [envelope] = poison(queues)
    assert envelope["message"] == {"action": "delete", "resource": "job", "id": "nope"}
    assert envelope["error"]["details"][0]["target"] == "id"
    assert simulator.api_calls() == []


def test_a_429_with_retry_after_2_is_rescheduled_and_succeeds_no_sooner_than_2_s_later(stack, simulator):
    connection = simulator.add_connection(IMODEL, "nightly")
    simulator.fail_next("DELETE", "/export/connections/", 429, headers={"Retry-After": "2"})
    command = {"action": "delete", "resource": "connection", "id": connection["id"]}
    assert requests.post(api(stack, "commands"), json=command).json()["accepted"] == 1
    assert wait_until(lambda: connection["id"] not in simulator.connections)
    refused, deleted = [r for r in simulator.api_calls() if r.method == "DELETE"]
    assert (refused.status, deleted.status) == (429, 204)
    assert deleted.started - refused.started >= 2.0


def test_a_posted_command_has_a_status_url_that_follows_it_to_its_result(stack, simulator):
    simulator.add_imodel(IMODEL)
    command = {"action": "create", "resource": "connection", "body": {"iModelId": IMODEL, "displayName": "nightly"}}
    response = requests.post(api(stack, "commands"), json=command)
    assert response.status_code == 202
    [listed] = response.json()["commands"]
    assert response.headers["Location"] == listed["status"]

    def finished():
        status = requests.get(listed["status"]).json()
        return status if status["status"] == "succeeded" else None

    status = wait_until(finished)
    [connection] = simulator.connections.values()
    assert status["resource"] == {"type": "connection", "id": connection["id"], "href": None}
    assert status["command"]["body"] == command["body"]
    assert (status["attempts"], status["id"]) == (1, listed["id"])
    missing = requests.get(api(stack, "commands/20261123-cnothere"))
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "CommandNotFound")


def test_the_command_endpoint_enqueues_all_or_nothing(stack, queues):
    good = {"action": "delete", "resource": "run", "id": "r-1"}
    bad = {"action": "delete", "resource": "run"}
    response = requests.post(api(stack, "commands"), json=[good, bad])
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["target"] == "[1].id"
    assert queues[COMMAND_QUEUE].peek_messages() == []
    assert requests.post(api(stack, "commands"), data=b"not json").json()["error"]["code"] == "InvalidRequestBody"


def test_health_answers_ok_with_settings_and_503_naming_what_is_missing(stack, monkeypatch):
    assert requests.get(api(stack, "health")).json() == {"status": "ok"}
    monkeypatch.delenv("ITWIN_CLIENT_SECRET")
    response = requests.get(api(stack, "health"))
    assert response.status_code == 503
    assert response.json()["missing"] == ["ITWIN_CLIENT_SECRET"]


def test_the_worker_function_called_directly_dead_letters_an_invalid_message(stack, simulator, queues):
    worker = command_worker.build().get_user_function()
    worker(func.QueueMessage(id="m-1", body=b'{"action": "delete", "resource": "run"}', pop_receipt="p"))
    [envelope] = poison(queues)
    assert envelope["error"]["details"][0]["target"] == "id"
    assert simulator.api_calls() == []


def test_the_worker_function_called_directly_deletes_a_run(stack, simulator):
    run = simulator.add_run(test_id="t-1")
    worker = command_worker.build().get_user_function()
    body = json.dumps({"action": "delete", "resource": "run", "id": run["id"]}).encode()
    worker(func.QueueMessage(id="m-2", body=body, pop_receipt="p"))
    assert run["id"] not in simulator.runs

"""The simulator's Webhooks v2 API and its event deliveries, driven over real HTTPS and a real callback server."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import pytest
import requests
from callback_receiver import CallbackReceiver
from samples import IMODEL

from sandbox.itwin_platform import Simulator

pytestmark = pytest.mark.integration

SECRET = "a-simulated-webhook-secret-0123456789"
DELETED = "iModels.iModelDeleted.v1"


class Webhooks:
    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.session = requests.Session()
        self.headers = {
            "Authorization": f"Bearer {simulator.issue_token()}",
            "Accept": "application/vnd.bentley.itwin-platform.v2+json",
        }

    def __call__(self, method: str, path: str = "", **kwargs: Any) -> requests.Response:
        url = f"{self.simulator.url}/webhooks{path}"
        return self.session.request(method, url, headers=self.headers, timeout=5, **kwargs)

    def create(self, callback: str, **fields: Any) -> dict[str, Any]:
        body = {"callbackUrl": callback, "scope": "Account", "eventTypes": [DELETED], "secret": SECRET, **fields}
        response = self("POST", "/", json=body)
        assert response.status_code == 201, response.text
        return response.json()["webhook"]


@pytest.fixture
def simulator(make_simulator) -> Simulator:
    return make_simulator(resend_delays=(0.05, 0.1))


@pytest.fixture
def webhooks(simulator: Simulator) -> Webhooks:
    return Webhooks(simulator)


@pytest.fixture
def receiver():
    with CallbackReceiver() as running:
        yield running


def signed_with(received, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    return received.signature == expected


def test_a_webhook_is_created_inactive_read_listed_activated_and_deleted(webhooks, receiver):
    created = webhooks.create(receiver.url)
    assert created["active"] is False
    assert "secret" not in created
    assert webhooks("GET", f"/{created['id']}").json()["callbackUrl"] == receiver.url
    assert [w["id"] for w in webhooks("GET").json()["webhooks"]] == [created["id"]]

    activated = webhooks("PATCH", f"/{created['id']}", json={"active": True}).json()

    assert activated["active"] is True
    assert webhooks("DELETE", f"/{created['id']}").status_code == 204
    assert webhooks("GET", f"/{created['id']}").json()["error"]["code"] == "WebhookNotFound"
    assert webhooks("DELETE", f"/{created['id']}").status_code == 404


def test_a_webhook_created_without_a_secret_gets_one_returned_once(webhooks, receiver):
    response = webhooks("POST", json={"callbackUrl": receiver.url, "scope": "Account", "eventTypes": [DELETED]})
    created = response.json()["webhook"]
    assert len(created["secret"]) >= 32
    assert "secret" not in webhooks("GET", f"/{created['id']}").json()


def test_bad_creates_and_updates_are_422_naming_each_field(webhooks, receiver):
    bad = {"callbackUrl": "http://example.com/hook", "scope": "iTwin", "secret": "short", "eventTypes": ["x"]}
    bad["id"] = "1"
    response = webhooks("POST", json=bad)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "InvalidCreateWebhookRequest"
    assert {d["target"] for d in error["details"]} == {"id", "callbackUrl", "secret", "eventTypes[0]", "scopeId"}

    created = webhooks.create(receiver.url)
    refused = webhooks("PATCH", f"/{created['id']}", json={"active": "yes", "scope": "iTwin"})
    assert refused.json()["error"]["code"] == "InvalidUpdateWebhookRequest"
    assert {d["target"] for d in refused.json()["error"]["details"]} == {"active", "scope"}


def test_without_webhooks_maintainer_every_call_is_403(webhooks, simulator):
    simulator.webhooks_allowed = False
    response = webhooks("GET")
    assert response.status_code == 403
    assert "webhooks_maintainer" in response.json()["error"]["message"]


def test_the_list_pages_with_a_continuation_token(webhooks, receiver):
    for _ in range(3):
        webhooks.create(receiver.url)
    first = webhooks("GET", params={"$top": "2"}).json()
    second = requests.get(first["_links"]["next"]["href"], headers=webhooks.headers, timeout=5).json()
    assert len(first["webhooks"]) == 2
    assert len(second["webhooks"]) == 1
    assert second["_links"]["next"] is None


def test_deleting_an_imodel_posts_a_signed_event_to_each_active_subscriber_only(webhooks, receiver, simulator):
    active = webhooks.create(receiver.url)
    webhooks("PATCH", f"/{active['id']}", json={"active": True})
    webhooks.create(receiver.url)  # inactive: gets nothing
    other_type = webhooks.create(receiver.url, eventTypes=["iModels.iModelCreated.v1"])
    webhooks("PATCH", f"/{other_type['id']}", json={"active": True})
    simulator.add_imodel(IMODEL)

    simulator.delete_imodel(IMODEL)

    assert simulator.wait_for_deliveries(5)
    [delivery] = receiver.received
    event = json.loads(delivery.body)
    assert signed_with(delivery, SECRET)
    assert event["eventType"] == DELETED
    assert event["content"]["imodelId"] == IMODEL
    assert event["webhookId"] == active["id"]
    assert event["iTwinId"] == simulator.itwin_id
    assert re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M", event["enqueuedDateTime"])


def test_named_versions_created_and_jobs_completed_are_delivered_too(webhooks, receiver, simulator):
    types = ["iModels.namedVersionCreated.v1", "realityModeling.jobCompleted.v1", "iModels.iModelCreated.v1"]
    created = webhooks.create(receiver.url, eventTypes=types)
    webhooks("PATCH", f"/{created['id']}", json={"active": True})
    simulator.create_imodel(IMODEL)
    version = simulator.create_named_version(IMODEL, "v1")
    job = simulator.add_job(state="active")
    simulator.set_job_state(job["id"], "success")

    assert simulator.wait_for_deliveries(5)
    events = {json.loads(r.body)["eventType"]: json.loads(r.body)["content"] for r in receiver.received}
    assert events["iModels.iModelCreated.v1"]["imodelId"] == IMODEL
    assert events["iModels.namedVersionCreated.v1"]["versionId"] == version
    assert events["realityModeling.jobCompleted.v1"] == {"jobId": job["id"]}


def test_an_itwin_scoped_webhook_gets_only_that_itwins_events(webhooks, receiver, simulator):
    other_itwin = "1db84556-49ba-41fd-8500-3657784c7752"
    created = webhooks.create(receiver.url, scope="iTwin", scopeId=other_itwin)
    webhooks("PATCH", f"/{created['id']}", json={"active": True})
    simulator.add_imodel(IMODEL)
    simulator.add_imodel("fc226d0d-1647-48d7-8c11-f1f74f2d9808", other_itwin)

    simulator.delete_imodel(IMODEL)
    simulator.delete_imodel("fc226d0d-1647-48d7-8c11-f1f74f2d9808")

    assert simulator.wait_for_deliveries(5)
    assert [json.loads(r.body)["iTwinId"] for r in receiver.received] == [other_itwin]


def test_a_non_2xx_answer_or_a_timeout_is_resent_with_the_same_message_id_until_accepted(make_simulator, receiver):
    simulator = make_simulator(resend_delays=(0.05, 0.05, 0.05), delivery_timeout=0.3)
    webhooks = Webhooks(simulator)
    created = webhooks.create(receiver.url)
    webhooks("PATCH", f"/{created['id']}", json={"active": True})
    simulator.add_imodel(IMODEL)
    receiver.answers = [500, 401]
    simulator.delete_imodel(IMODEL)
    assert simulator.wait_for_deliveries(5)
    assert [d.status for d in simulator.deliveries] == [500, 401, 202]
    assert len({r.body for r in receiver.received}) == 1

    receiver.delay = 0.5  # longer than the delivery timeout: every attempt counts as failed
    simulator.delete_imodel(IMODEL)
    assert simulator.wait_for_deliveries(10)
    late = simulator.deliveries[3:]
    assert [(d.attempt, d.status) for d in late] == [(1, None), (2, None), (3, None), (4, None)]
    assert all("Timeout" in (d.error or "") for d in late)


def test_a_changed_secret_signs_the_next_attempt(webhooks, receiver, simulator):
    created = webhooks.create(receiver.url)
    webhooks("PATCH", f"/{created['id']}", json={"active": True})
    simulator.add_imodel(IMODEL)
    new_secret = "a-brand-new-webhook-secret-9876543210"
    webhooks("PATCH", f"/{created['id']}", json={"secret": new_secret})

    simulator.delete_imodel(IMODEL)

    assert simulator.wait_for_deliveries(5)
    assert signed_with(receiver.received[0], new_secret)
    assert simulator.webhooks[created["id"]]["secret"] == new_secret

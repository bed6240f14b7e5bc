"""Webhook abuse: tampered, wrongly signed, unsigned and replayed deliveries to ``POST /api/webhooks/itwin``.

GIVEN the real app on the local host with a webhook secret, Azurite and the simulator,
WHEN deliveries arrive with a tampered body, the wrong secret, no or a malformed ``Signature``, or a second time,
THEN the bad ones are refused with 401 and enqueue nothing, and a replayed delivery is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from azure.storage.queue import QueueClient
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanKind
from otel_capture import Captured
from reliability_kit import (
    SOAK,
    RecordingQueue,
    app_environment,
    fast_host_json,
    install_environment,
    install_worker,
    new_id,
    queue_length,
    read_all,
    wait_until,
)

import function_app
from sandbox.azurite import Azurite
from sandbox.host import LocalHost
from sandbox.itwin_platform import Simulator
from shared import runtime
from shared.http_api import receive_webhook
from shared.outcomes import FINAL_OUTCOMES
from shared.rules import format_enqueued, load_rules
from shared.settings import COMMAND_QUEUE, POISON_QUEUE
from shared.signature import sign

pytestmark = pytest.mark.integration

SECRET = "the-webhook-secret-3c1f"
DELETED = "iModels.iModelDeleted.v1"
CREATED = "iModels.iModelCreated.v1"
VERSION = "iModels.namedVersionCreated.v1"


def event(event_type: str, message_id: str, **content: str) -> bytes:
    body = {
        "eventType": event_type,
        "messageId": message_id,
        "iTwinId": new_id(),
        "content": content,
        "enqueuedDateTime": format_enqueued(datetime.now(UTC)),
    }
    return json.dumps(body).encode()


class App:
    """The app on the local host, and what the test looks at: the simulator, the queues, the worker's spans."""

    def __init__(
        self, host: LocalHost, simulator: Simulator, queues: dict[str, QueueClient], captured: Captured
    ) -> None:
        self.host = host
        self.simulator = simulator
        self.queues = queues
        self.captured = captured

    def deliver(self, body: bytes, signature: str | None) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Signature"] = signature
        return requests.post(f"{self.host.url}/api/webhooks/itwin", data=body, headers=headers, timeout=30)

    def outcomes(self, correlation_id: str) -> list[str]:
        spans = [s for s in self.captured.spans() if s.kind is SpanKind.CONSUMER]
        spans.sort(key=lambda s: s.start_time)
        return [s.attributes["itwin.outcome"] for s in spans if s.attributes["itwin.correlation_id"] == correlation_id]

    def settle(self, correlation_id: str, finals: int) -> list[str]:
        """Wait until ``correlation_id``'s messages reached ``finals`` final outcomes and the queue is idle."""

        def done() -> list[str] | None:
            outcomes = self.outcomes(correlation_id)
            final = [o for o in outcomes if o in FINAL_OUTCOMES]
            idle = self.host.in_flight == 0 and queue_length(self.queues[COMMAND_QUEUE]) == 0
            return outcomes if len(final) >= finals and idle else None

        return wait_until(done, 60, f"{finals} final outcome(s) for {correlation_id}")


@pytest.fixture
def app(
    azurite: Azurite,
    queues: dict[str, QueueClient],
    simulator: Simulator,
    captured: Captured,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> Iterator[App]:
    environ = app_environment(
        simulator,
        azurite.connection_string,
        ITWIN_WEBHOOK_SECRET=SECRET,
        ITWIN_EXPORT_CONNECTION_NAME="nightly",
        ITWIN_CLASH_TEST_IDS="clash-1",
    )
    install_environment(monkeypatch, environ)
    install_worker(monkeypatch, captured.telemetry)
    with LocalHost(function_app.app, fast_host_json(tmp_path), environ=environ) as host:
        yield App(host, simulator, queues, captured)


def refusals(body: bytes) -> dict[str, tuple[bytes, str | None]]:
    """Deliveries of ``body`` (or of a tampered copy) that must be refused, by what is wrong with them."""
    good = sign(body, SECRET)
    tampered = body.replace(b'"content": {', b'"content": {"extra": 1, ', 1)
    return {
        "tampered body": (tampered, good),
        "one more byte": (body + b" ", good),
        "wrong secret": (body, sign(body, "not-the-secret")),
        "no Signature": (body, None),
        "empty Signature": (body, ""),
        "prefix only": (body, "sha256="),
        "hex without prefix": (body, good.removeprefix("sha256=")),
        "another algorithm": (body, "sha1=" + good.removeprefix("sha256=")),
        "not hex": (body, "sha256=" + "z" * 64),
        "truncated": (body, good[:-2]),
        "bearer token": (body, "Bearer " + good),
    }


def test_tampered_wrongly_signed_and_unsigned_deliveries_are_refused_and_enqueue_nothing(app: App) -> None:
    # GIVEN an iModel with a connection the delivery would delete
    imodel = new_id()
    app.simulator.add_connection(imodel, "nightly")
    body = event(DELETED, "evt-refused", imodelId=imodel)
    # WHEN each bad delivery arrives
    for what, (payload, signature) in refusals(body).items():
        reply = app.deliver(payload, signature)
        # THEN it is refused, saying only that the signature does not match
        assert reply.status_code == 401, what
        assert reply.json()["error"]["code"] == "InvalidSignature", what
        assert SECRET not in reply.text
    # ... and once a good delivery has gone through behind them, it is the only thing that was ever processed.
    marker = event(DELETED, "evt-marker", imodelId=new_id())
    assert app.deliver(marker, sign(marker, SECRET)).status_code == 202
    assert app.settle("evt-marker", finals=1) == ["imodel_unavailable"]
    consumed = {s.attributes["itwin.correlation_id"] for s in app.captured.spans() if s.kind is SpanKind.CONSUMER}
    assert consumed == {"evt-marker"}
    assert [r.method for r in app.simulator.api_calls()] == ["GET"]
    assert len(app.simulator.connections) == 1
    assert read_all(app.queues[POISON_QUEUE]) == []


def test_every_delivery_is_refused_when_no_secret_is_configured(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the app without ITWIN_WEBHOOK_SECRET
    monkeypatch.delenv("ITWIN_WEBHOOK_SECRET")
    body = event(DELETED, "evt-no-secret", imodelId=new_id())
    # WHEN deliveries arrive signed with the empty key, the old secret, or not at all
    for signature in (sign(body, ""), sign(body, SECRET), None):
        reply = app.deliver(body, signature)
        # THEN each is refused and nothing is enqueued
        assert (reply.status_code, reply.json()["error"]["code"]) == (401, "InvalidSignature")
        assert "no webhook secret is configured" in reply.json()["error"]["message"]
    assert queue_length(app.queues[COMMAND_QUEUE]) == 0
    assert (app.host.in_flight, app.host.count("command_worker")) == (0, 0)


def test_a_replayed_imodel_deleted_delivery_is_a_duplicate_here_and_on_another_instance(app: App) -> None:
    # GIVEN an iModel with two connections, and a signed iModelDeleted delivery for it
    imodel = new_id()
    for name in ("nightly", "weekly"):
        app.simulator.add_connection(imodel, name)
    body = event(DELETED, "evt-deleted", imodelId=imodel)
    signature = sign(body, SECRET)
    # WHEN it is delivered, processed, and then delivered again, byte for byte
    first = app.deliver(body, signature).json()
    assert (first["accepted"], first["eventType"]) == (1, DELETED)
    assert app.settle("evt-deleted", finals=2) == ["fanned_out", "succeeded", "succeeded"]
    # THEN this instance answers the replay as a duplicate and enqueues nothing
    assert app.deliver(body, signature).json() == {"accepted": 0, "eventType": DELETED, "duplicate": True}
    assert queue_length(app.queues[COMMAND_QUEUE]) == 0
    # ... and so does an instance that has not seen it (simulated by forgetting): the ledger holds its ids
    runtime.recent_deliveries().forget("evt-deleted")
    replay = app.deliver(body, signature).json()
    assert (replay["accepted"], replay["duplicate"], replay["commands"]) == (0, True, first["commands"])
    assert queue_length(app.queues[COMMAND_QUEUE]) == 0
    assert app.simulator.connections == {}
    assert read_all(app.queues[POISON_QUEUE]) == []


def test_a_replayed_imodel_created_delivery_creates_no_second_connection_on_any_instance(app: App) -> None:
    # GIVEN a signed iModelCreated delivery (ITWIN_EXPORT_CONNECTION_NAME is set)
    imodel = new_id()
    body = event(CREATED, "evt-created", imodelId=imodel)
    signature = sign(body, SECRET)
    # WHEN it is delivered, then replayed here, then replayed on an instance that has not seen it
    assert app.deliver(body, signature).status_code == 202
    assert app.settle("evt-created", finals=1) == ["succeeded"]
    assert app.deliver(body, signature).json()["duplicate"] is True
    runtime.recent_deliveries().forget("evt-created")
    assert app.deliver(body, signature).json()["duplicate"] is True
    # THEN the ledger refused the last one too: one connection, made once
    assert queue_length(app.queues[COMMAND_QUEUE]) == 0
    assert [(c["iModelId"], c["displayName"]) for c in app.simulator.connections.values()] == [(imodel, "nightly")]
    assert read_all(app.queues[POISON_QUEUE]) == []


def test_a_replayed_named_version_delivery_does_not_start_a_second_clash_run(app: App) -> None:
    # GIVEN a signed namedVersionCreated delivery (ITWIN_CLASH_TEST_IDS=clash-1)
    body = event(VERSION, "evt-version", imodelId=new_id(), versionId="v-1")
    signature = sign(body, SECRET)
    # WHEN it is delivered twice
    assert app.deliver(body, signature).json()["accepted"] == 1
    app.settle("evt-version", finals=1)
    assert app.deliver(body, signature).json()["duplicate"] is True
    # THEN one run was started and nothing more was enqueued
    assert queue_length(app.queues[COMMAND_QUEUE]) == 0
    assert len(app.simulator.runs) == 1


@given(
    flip=st.integers(min_value=0, max_value=10_000),
    bit=st.integers(min_value=0, max_value=7),
    cut=st.integers(min_value=0, max_value=3),
)
@settings(max_examples=5_000 if SOAK else 500, deadline=None, derandomize=not SOAK)
def test_any_change_to_a_signed_body_is_refused(flip: int, bit: int, cut: int) -> None:
    # GIVEN a signed delivery, WHEN one bit of its body is flipped or its end cut off, THEN it is refused
    body = event(DELETED, "evt-flip", imodelId="a0471655-6b18-419e-ab01-ebf4fbff9dff")
    signature = sign(body, SECRET)
    changed = bytearray(body)
    changed[flip % len(body)] ^= 1 << bit
    rules = load_rules(None)
    for payload in (bytes(changed), body[: len(body) - 1 - cut]):
        queue = RecordingQueue()
        reply = receive_webhook(payload, signature, SECRET, lambda: rules, {}, lambda queue=queue: queue)
        assert reply.status == 401
        assert queue.empty

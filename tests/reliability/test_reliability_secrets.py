"""Secrets stay secret: the client secret, the webhook secret, the storage key and every token, on every path.

GIVEN known secret values and the real app on the local host (Azurite, the simulator, logging at DEBUG),
WHEN every path runs (success, each API error, retries, dead letters, token failures, health, webhook refusals),
THEN none of the values appears in any log record, span, metric point, poison envelope, queue message or HTTP answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from app_settings import settings_for
from azure.storage.queue import QueueClient
from otel_capture import Captured
from reliability_kit import (
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
from sandbox.azurite import ACCOUNT_KEY, Azurite
from sandbox.host import LocalHost
from sandbox.itwin_platform import Simulator
from shared.client import ITwinClient
from shared.http_api import MAX_REQUEST_BYTES
from shared.outcomes import FINAL_OUTCOMES
from shared.resources import ITwinApi
from shared.rules import format_enqueued
from shared.runtime import WORKER_POLICY
from shared.settings import COMMAND_QUEUE, DEFAULT_MAX_ATTEMPTS, POISON_QUEUE, Settings
from shared.signature import sign
from shared.worker import Worker

pytestmark = pytest.mark.integration

CLIENT_SECRET = "known-client-secret-7Qz4Wd"
WRONG_CLIENT_SECRET = "known-wrong-client-secret-Hk2Lp9"
WEBHOOK_SECRET = "known-webhook-secret-Vb8Ns3"
MAX_ATTEMPTS = 2
FINAL = tuple(sorted(FINAL_OUTCOMES))


@dataclass
class Seen:
    """Everything the run showed to the outside world, as text."""

    answers: list[str] = field(default_factory=list)
    envelopes: list[Any] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)

    def answer(self, response: requests.Response) -> requests.Response:
        self.answers.append(f"{response.status_code} {dict(response.headers)} {response.text}")
        return response


def worker_commands(simulator: Simulator) -> dict[str, dict[str, Any]]:
    """One command per path through the worker, each on its own resource so that scripted answers stay apart."""
    connection = simulator.add_connection(new_id(), "gone soon")["id"]
    busy = simulator.add_connection(new_id(), "busy")["id"]
    simulator.set_connection_in_use(busy, seconds=3)  # a wait, not a failure: it ends, and so does the command
    imodel = new_id()
    for name in ("a", "b"):
        simulator.add_connection(imodel, name)
    submitted = simulator.add_job(state="active")["id"]
    runs = {name: simulator.add_run()["id"] for name in ("400", "403", "500")}
    # The 401s go to an API that is neither paced nor held after a 429 here: a wait for a slot between the 401 and
    # the call after the token refresh would send the command back to the queue, and the refresh would look unused.
    unauthorized = simulator.add_connection(new_id(), "401 twice")["id"]
    throttled = simulator.add_job()["id"]
    dropped = simulator.add_job()["id"]
    simulator.fail_next("DELETE", f"/clashdetection/runs/{runs['400']}", 400)
    simulator.fail_next("DELETE", f"/export/connections/{unauthorized}", 401, times=2)
    simulator.fail_next("DELETE", f"/clashdetection/runs/{runs['403']}", 403)
    simulator.fail_next("DELETE", f"/contextcapture/jobs/{throttled}", 429, headers={"Retry-After": "1"})
    simulator.fail_next("DELETE", f"/clashdetection/runs/{runs['500']}", 500, times=20)
    simulator.drop_next("DELETE", f"/contextcapture/jobs/{dropped}", times=20)
    simulator.fail_next("POST", "/contextcapture/jobs", 503, times=20)
    simulator.fail_next("POST", "/clashdetection/runs", 500)
    job_body = {
        "type": "Full",
        "name": "survey",
        "workspaceId": new_id(),
        "inputs": [{"id": new_id(), "description": "photos"}],
        "settings": {},
    }
    run_body = {"testId": "clash-1", "iModelId": new_id(), "namedVersionId": "v1"}
    commands = {
        "success": {"action": "delete", "resource": "connection", "id": connection},
        "404": {"action": "delete", "resource": "run", "id": new_id()},
        "400": {"action": "delete", "resource": "run", "id": runs["400"]},
        "401 twice": {"action": "delete", "resource": "connection", "id": unauthorized},
        "403": {"action": "delete", "resource": "run", "id": runs["403"]},
        "409 in use": {"action": "delete", "resource": "connection", "id": busy},
        "422": {"action": "delete", "resource": "job", "id": submitted},
        "429": {"action": "delete", "resource": "job", "id": throttled},
        "500 until giving up": {"action": "delete", "resource": "run", "id": runs["500"]},
        "dropped until giving up": {"action": "delete", "resource": "job", "id": dropped},
        "503 on a create": {"action": "create", "resource": "job", "body": job_body},
        "500 on a create": {
            "action": "create",
            "resource": "run",
            "body": run_body,
            "projectId": simulator.itwin_id,
            "attempt": DEFAULT_MAX_ATTEMPTS,
        },
        "fan-out": {"action": "delete", "resource": "connection", "iModelId": imodel},
        "create connection": {
            "action": "create",
            "resource": "connection",
            "body": {"iModelId": new_id(), "displayName": "made"},
        },
    }
    for n, command in enumerate(commands.values()):
        command["correlationId"] = f"secret-path-{n}"
    return commands


def through_the_host(
    host: LocalHost,
    simulator: Simulator,
    queues: dict[str, QueueClient],
    captured: Captured,
    seen: Seen,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every HTTP answer, and every worker path reached through ``POST /api/commands`` and the queue."""
    url = host.url

    def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
        return seen.answer(requests.post(f"{url}{path}", data=body, headers=headers or {}, timeout=30))

    assert seen.answer(requests.get(f"{url}/api/health", timeout=30)).status_code == 200
    commands = worker_commands(simulator)
    assert post("/api/commands", json.dumps(list(commands.values())).encode()).status_code == 202
    queues[COMMAND_QUEUE].send_message('{"action": "delete", "resource": "job", "id": "not-a-guid"}')
    assert post("/api/commands", b'{"action": "explode"}').status_code == 400
    assert post("/api/commands", b"\xff not json").status_code == 400
    assert post("/api/commands", b"[" + b" " * MAX_REQUEST_BYTES + b"]").status_code == 413

    delivery = json.dumps(
        {
            "eventType": "iModels.iModelDeleted.v1",
            "content": {"imodelId": new_id()},
            "enqueuedDateTime": format_enqueued(datetime.now(UTC)),
            "messageId": new_id(),
        }
    ).encode()
    assert post("/api/webhooks/itwin", delivery).status_code == 401
    assert post("/api/webhooks/itwin", delivery, {"Signature": sign(delivery, "guess")}).status_code == 401
    assert post("/api/webhooks/itwin", delivery, {"Signature": sign(delivery, WEBHOOK_SECRET)}).status_code == 202
    bad_event = b'{"eventType": "iModels.iModelDeleted.v1", "content": {}}'
    assert post("/api/webhooks/itwin", bad_event, {"Signature": sign(bad_event, WEBHOOK_SECRET)}).status_code == 400

    monkeypatch.delenv("ITWIN_CLIENT_SECRET")
    assert seen.answer(requests.get(f"{url}/api/health", timeout=30)).status_code == 503
    monkeypatch.setenv("ITWIN_CLIENT_SECRET", CLIENT_SECRET)

    # One final outcome per command, plus the fan-out's second delete, the invalid message and the webhook's command.
    expected = len(commands) + 3

    def settled() -> bool:
        counts = captured.counts("itwin.commands")
        finals = sum(n for key, n in counts.items() if dict(key)["outcome"] in FINAL)
        return finals >= expected and host.in_flight == 0 and queue_length(queues[COMMAND_QUEUE]) == 0

    wait_until(settled, 90, "every command to reach a final outcome")


def directly(simulator: Simulator, captured: Captured, seen: Seen) -> None:
    """Token failures: the token service down, then a wrong client secret (a worker of its own for each)."""

    def worker(secret: str) -> tuple[Worker, RecordingQueue]:
        settings = Settings.from_env({**settings_for(simulator), "ITWIN_CLIENT_SECRET": secret})
        client = ITwinClient(settings, telemetry=captured.telemetry, policy=WORKER_POLICY)
        queue = RecordingQueue()
        return Worker(ITwinApi(client), queue, captured.telemetry, max_attempts=MAX_ATTEMPTS), queue

    command = {"action": "delete", "resource": "run", "id": new_id(), "correlationId": "token-down"}
    simulator.token_service_down = True
    down, queue = worker(CLIENT_SECRET)
    assert down.handle(json.dumps(command)).value == "rescheduled"
    assert down.handle(queue.take()[0]).value == "dead_lettered"
    simulator.token_service_down = False
    wrong, wrong_queue = worker(WRONG_CLIENT_SECRET)
    assert wrong.handle(json.dumps({**command, "correlationId": "wrong-secret"})).value == "dead_lettered"
    seen.envelopes += queue.envelopes + wrong_queue.envelopes
    assert [e["error"]["code"] for e in seen.envelopes[-2:]] == ["TokenServiceUnavailable", "invalid_client"]


def leaks(secrets: dict[str, str], texts: dict[str, Callable[[], list[str]]]) -> list[tuple[str, str, str]]:
    """(secret, where, excerpt) for each secret found in any text."""
    found = []
    for where, get in texts.items():
        for text in get():
            for name, value in secrets.items():
                at = text.find(value)
                if at >= 0:
                    found.append((name, where, text[max(0, at - 60) : at + len(value) + 20]))
    return found


def test_no_secret_or_token_appears_in_logs_spans_metrics_envelopes_or_answers(
    make_simulator: Callable[..., Simulator],
    azurite: Azurite,
    queues: dict[str, QueueClient],
    captured: Captured,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # GIVEN known secrets, logging at DEBUG everywhere, and the app on the local host
    caplog.set_level(logging.DEBUG)
    simulator = make_simulator(client_secret=CLIENT_SECRET)
    environ = app_environment(
        simulator,
        azurite.connection_string,
        ITWIN_CLIENT_SECRET=CLIENT_SECRET,
        ITWIN_WEBHOOK_SECRET=WEBHOOK_SECRET,
        ITWIN_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
    )
    install_environment(monkeypatch, environ)
    install_worker(monkeypatch, captured.telemetry, read_timeout=2.0)
    seen = Seen()
    # WHEN every path runs
    with LocalHost(function_app.app, fast_host_json(tmp_path), environ=environ) as host:
        through_the_host(host, simulator, queues, captured, seen, monkeypatch)
    directly(simulator, captured, seen)
    seen.envelopes += read_all(queues[POISON_QUEUE])
    seen.messages += read_all(queues[COMMAND_QUEUE])

    # ... and it really did: the errors, the dead letters and the tokens were all there
    codes = {e["error"]["code"] for e in seen.envelopes}
    assert {"InvalidCommand", "CreateOutcomeUnknown", "InsufficientPermissions", "InvalidToken"} <= codes, codes
    assert {"TokenServiceUnavailable", "invalid_client", "InvalidContextCaptureRequest"} <= codes, codes
    assert any("gave up after" in e["error"]["message"] for e in seen.envelopes)
    tokens = {
        r.headers.get("Authorization").removeprefix("Bearer ")
        for r in simulator.requests
        if (r.headers.get("Authorization") or "").startswith("Bearer ")
    }
    assert len(tokens) >= 2  # the first token, and the one fetched after the 401
    assert any(r.levelno == logging.DEBUG for r in caplog.records)

    # THEN no secret shows anywhere
    secrets = {
        "ITWIN_CLIENT_SECRET": CLIENT_SECRET,
        "the wrong client secret": WRONG_CLIENT_SECRET,
        "ITWIN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "the storage account key": ACCOUNT_KEY,
        **{f"token {n}": token for n, token in enumerate(sorted(tokens))},
    }
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    metrics = captured.reader.get_metrics_data()
    texts: dict[str, Callable[[], list[str]]] = {
        "log records": lambda: [formatter.format(r) for r in caplog.records] + [repr(r.args) for r in caplog.records],
        "spans": lambda: [s.to_json() for s in captured.spans()],
        "metrics": lambda: [metrics.to_json()] if metrics else [],
        "poison envelopes": lambda: [json.dumps(e) for e in seen.envelopes],
        "queue messages": lambda: [json.dumps(m) for m in seen.messages],
        "HTTP answers": lambda: seen.answers,
    }
    assert leaks(secrets, texts) == []
    # (The search does find what is there: harmless values show up in every place searched.)
    controls = {"a correlation id": "secret-path-2", "an outcome": "dead_lettered", "an error code": "InvalidSignature"}
    assert {where for _, where, _ in leaks(controls, texts)} == set(texts) - {"queue messages"}
    assert seen.messages == []

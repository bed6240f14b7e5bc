"""The local Functions host (sandbox/host/) against a small test app and Azurite."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import host_test_app
import pytest
from azure.storage.queue import QueueClient

from sandbox.azurite import Azurite
from sandbox.host import LocalHost, compile_route, load_host_settings, load_local_settings, parse_timespan

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = {"maxPollingInterval": "00:00:00.200"}


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def write_host_json(tmp_path: Path, queues: dict[str, Any] | None = None, http: dict[str, Any] | None = None) -> Path:
    extensions: dict[str, Any] = {"queues": {**FAST, **(queues or {})}}
    if http is not None:
        extensions["http"] = http
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", "extensions": extensions}))
    return path


def request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310 - http://127.0.0.1
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


@pytest.fixture
def queue_name() -> str:
    return f"t{uuid.uuid4().hex[:16]}"


@pytest.fixture
def environ(azurite: Azurite, queue_name: str) -> dict[str, str]:
    return {"AzureWebJobsStorage": azurite.connection_string, "TEST_QUEUE": queue_name}


@pytest.fixture
def queue_client(azurite: Azurite, queue_name: str) -> Iterator[QueueClient]:
    client = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    client.create_queue()
    yield client
    client.close()


@pytest.fixture
def poison_client(azurite: Azurite, queue_name: str) -> Iterator[QueueClient]:
    client = QueueClient.from_connection_string(azurite.connection_string, f"{queue_name}-poison")
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _clear_received() -> None:
    with host_test_app.RECEIVED_LOCK:
        host_test_app.RECEIVED.clear()


def received() -> list[tuple[str, bytes, int, float]]:
    with host_test_app.RECEIVED_LOCK:
        return list(host_test_app.RECEIVED)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------------------------- configuration


def test_metadata_is_read_from_the_app(tmp_path: Path) -> None:
    host = LocalHost(host_test_app.app, write_host_json(tmp_path), environ={"TEST_QUEUE": "Commands-X"})
    # A second host on the same app works although app.get_functions() raises on a second call.
    again = LocalHost(host_test_app.app, write_host_json(tmp_path, http={"routePrefix": "v1"}), environ=host.environ)

    assert sorted(host.functions) == ["echo", "explode", "get_item", "record"]
    get_item, echo = host.functions["get_item"], host.functions["echo"]
    assert (get_item.route, get_item.methods, get_item.auth_level) == (
        "items/{item_id}",
        ("GET", "DELETE"),
        "anonymous",
    )
    assert (get_item.path, get_item.binding_name) == ("/api/items/{item_id}", "req")
    assert (echo.route, echo.methods, echo.auth_level, echo.binding_name) == ("echo", ("POST",), "function", "request")
    assert echo.wants_context
    assert again.functions["get_item"].path == "/v1/items/{item_id}"

    record = host.functions["record"]
    assert (record.queue_name, record.poison_queue_name) == ("commands-x", "commands-x-poison")
    assert (record.connection, record.binding_name, record.body_type) == ("AzureWebJobsStorage", "msg", "message")
    assert [f.name for f in host.queue_functions] == ["record"]
    assert host.skipped == []


def test_host_json_defaults_and_timespans(tmp_path: Path) -> None:
    defaults = load_host_settings(None)
    assert (defaults.route_prefix, defaults.max_dequeue_count, defaults.visibility_timeout) == ("api", 5, 0.0)
    assert (defaults.batch_size, defaults.message_encoding, defaults.max_polling_interval) == (16, "base64", 2.0)
    assert parse_timespan("00:01:30") == 90
    assert parse_timespan("1.00:00:00.5") == 86400.5
    settings = load_host_settings(
        {"extensions": {"queues": {"MessageEncoding": "None", "batchSize": 4, "visibilityTimeout": "00:00:07"}}}
    )
    assert (settings.message_encoding, settings.batch_size, settings.new_batch_threshold) == ("none", 4, 2)
    assert settings.visibility_timeout == 7
    with pytest.raises(ValueError, match="messageEncoding"):
        load_host_settings({"extensions": {"queues": {"messageEncoding": "utf8"}}})


def test_route_templates() -> None:
    route = compile_route("api", "files/{name:alpha}/{rest?}")
    assert route.match("/api/files/abc") == {"name": "abc"}
    assert route.match("/API/Files/abc/x%20y") == {"name": "abc", "rest": "x y"}
    assert route.match("/api/files/a1") is None
    assert compile_route("", "{*path}").match("/a/b/c") == {"path": "a/b/c"}
    assert compile_route("api", "n/{id:int=3}").match("/api/n") == {"id": "3"}


def test_local_settings_do_not_override_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {"A": "from-file", "B": "from-file"}}))
    env = {"A": "already-set"}
    assert load_local_settings(path, env) == ["B"]
    assert env == {"A": "already-set", "B": "from-file"}
    assert load_local_settings(tmp_path / "missing.json", env) == []


# ---------------------------------------------------------------------------------------------------------- HTTP


def test_http_round_trip(tmp_path: Path, environ: dict[str, str]) -> None:
    with LocalHost(host_test_app.app, write_host_json(tmp_path), environ=environ) as host:
        status, headers, body = request("GET", f"{host.url}/api/items/42%2A?x=1&y=&x=2", headers={"X-Test": "hello"})
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        echo = json.loads(body)
        assert echo["method"] == "GET"
        assert echo["url"] == f"{host.url}/api/items/42%2A?x=1&y=&x=2"
        assert echo["route_params"] == {"item_id": "42*"}
        assert echo["params"] == {"x": "1,2", "y": ""}
        assert echo["x_test"] == "hello"

        status, _, body = request("DELETE", f"{host.url}/api/ITEMS/7/", body=b"payload")
        assert status == 200
        assert json.loads(body)["route_params"] == {"item_id": "7"}
        assert json.loads(body)["body"] == "payload"

        # FUNCTION auth level: no key needed locally, like Core Tools.
        status, headers, body = request("POST", host.function_url("echo"), body=b"abc")
        assert (status, body) == (201, b"cba")
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["X-Function"] == "echo"
        assert headers["X-Invocation"]

        assert request("GET", f"{host.url}/api/nothing-here")[0] == 404
        assert request("GET", f"{host.url}/api/items/1/2")[0] == 404
        status, headers, _ = request("PUT", f"{host.url}/api/items/1", body=b"")
        assert status == 405
        assert headers["Allow"] == "DELETE, GET"
        assert request("GET", f"{host.url}/api/echo")[0] == 405
        assert request("GET", f"{host.url}/api/explode")[0] == 500

        assert host.count("get_item", "succeeded") == 2
        assert host.count("echo") == 1
        assert host.count("explode", "failed") == 1


def test_invocations_can_be_logged_at_debug_so_that_make_devs_log_is_the_outcomes(
    tmp_path: Path, environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sandbox.host")
    host_json = write_host_json(tmp_path)
    with LocalHost(host_test_app.app, host_json, environ=environ, invocation_log_level=logging.DEBUG) as host:
        assert request("GET", f"{host.url}/api/items/1")[0] == 200
        assert request("GET", f"{host.url}/api/explode")[0] == 500
    levels = {r.getMessage().split(" (")[0]: r.levelno for r in caplog.records if "Execut" in r.getMessage()}
    assert levels["Executing 'get_item'"] == levels["Executed 'get_item'"] == logging.DEBUG
    assert levels["Executed 'explode'"] == logging.ERROR


# -------------------------------------------------------------------------------------------------------- queues


def test_a_queue_message_is_processed_and_deleted(
    tmp_path: Path, environ: dict[str, str], queue_client: QueueClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sandbox.host")
    sent = queue_client.send_message(b64(b'{"command": "export"}'))
    with LocalHost(host_test_app.app, write_host_json(tmp_path), environ=environ) as host:
        wait_until(lambda: host.count("record", "succeeded") == 1, what="the message to be processed")
    assert received()[0][:3] == (sent.id, b'{"command": "export"}', 1)
    assert queue_client.get_queue_properties().approximate_message_count == 0
    assert host.in_flight == 0
    assert any("Executed 'record' (Succeeded" in r.message and sent.id in r.message for r in caplog.records)


def test_message_encoding_none_takes_plain_json(
    tmp_path: Path, environ: dict[str, str], queue_client: QueueClient
) -> None:
    queue_client.send_message('{"command": "clash"}')
    host_json = write_host_json(tmp_path, {"messageEncoding": "none"})
    with LocalHost(host_test_app.app, host_json, environ=environ) as host:
        wait_until(lambda: host.count("record", "succeeded") == 1, what="the message to be processed")
    assert [body for _, body, _, _ in received()] == [b'{"command": "clash"}']
    assert queue_client.get_queue_properties().approximate_message_count == 0


def test_plain_json_under_base64_encoding_fails_into_poison(
    tmp_path: Path, environ: dict[str, str], queue_client: QueueClient, poison_client: QueueClient
) -> None:
    queue_client.send_message('{"command": "clash"}')
    host_json = write_host_json(tmp_path, {"maxDequeueCount": 2})
    with LocalHost(host_test_app.app, host_json, environ=environ) as host:
        wait_until(lambda: host.count("record", "poisoned") == 1, what="the message to be poisoned")
    assert received() == []  # the function never saw it
    assert host.count("record", "failed") == 2
    assert [m.content for m in poison_client.receive_messages()] == ['{"command": "clash"}']
    assert queue_client.get_queue_properties().approximate_message_count == 0


def test_a_failure_comes_back_after_the_visibility_timeout_then_goes_to_poison(
    tmp_path: Path, environ: dict[str, str], queue_client: QueueClient, poison_client: QueueClient
) -> None:
    original = b64(host_test_app.FAIL_BODY)
    sent = queue_client.send_message(original)
    host_json = write_host_json(tmp_path, {"maxDequeueCount": 3, "visibilityTimeout": "00:00:01"})
    with LocalHost(host_test_app.app, host_json, environ=environ) as host:
        wait_until(lambda: host.count("record", "poisoned") == 1, timeout=15, what="the message to be poisoned")
    seen = received()
    assert [(message_id, body, count) for message_id, body, count, _ in seen] == [
        (sent.id, host_test_app.FAIL_BODY, 1),
        (sent.id, host_test_app.FAIL_BODY, 2),
        (sent.id, host_test_app.FAIL_BODY, 3),
    ]
    gaps = [later[3] - earlier[3] for earlier, later in itertools.pairwise(seen)]
    assert all(0.9 <= gap < 4 for gap in gaps), gaps
    assert host.count("record", "failed") == 3
    poisoned = list(poison_client.receive_messages())
    assert [m.content for m in poisoned] == [original]  # the original (still base64) content
    assert queue_client.get_queue_properties().approximate_message_count == 0


def test_stop_waits_for_in_flight_invocations_whose_leases_are_renewed(
    tmp_path: Path, environ: dict[str, str], queue_client: QueueClient
) -> None:
    for _ in range(3):
        queue_client.send_message(b64(host_test_app.SLOW_PREFIX + b"2"))
    host_json = write_host_json(tmp_path, {"batchSize": 4})
    host = LocalHost(host_test_app.app, host_json, environ=environ, lease_seconds=1).start()
    try:
        wait_until(lambda: len(received()) == 3, what="three invocations to start")
        assert host.in_flight == 3
    finally:
        started = time.monotonic()
        host.stop()
    assert time.monotonic() - started > 1.2  # it waited for the sleeping invocations
    assert host.count("record", "succeeded") == 3
    assert host.in_flight == 0
    # A 2 s invocation outlived the 1 s lease but was not delivered twice: the lease was renewed.
    assert sorted(count for _, _, count, _ in received()) == [1, 1, 1]
    assert queue_client.get_queue_properties().approximate_message_count == 0


# ----------------------------------------------------------------------------------------------------------- CLI


def test_cli_serves_the_app_until_sigint(tmp_path: Path, azurite: Azurite, queue_name: str) -> None:
    settings = tmp_path / "local.settings.json"
    settings.write_text(
        json.dumps({"Values": {"AzureWebJobsStorage": azurite.connection_string, "TEST_QUEUE": "not-this-one"}})
    )
    env = {
        **os.environ,
        "TEST_QUEUE": queue_name,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests" / "integration"), str(REPO_ROOT)]),
    }
    env.pop("AzureWebJobsStorage", None)
    args = [sys.executable, "-m", "sandbox.host", "--app", "host_test_app:app", "--settings", str(settings)]
    args += ["--host-json", str(write_host_json(tmp_path)), "--port", "0"]
    proc = subprocess.Popen(  # noqa: S603
        args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    output: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while not any(line.startswith("Host running on") for line in output):
            assert proc.poll() is None, "".join(output)
            output.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        text = "".join(output)
        url = next(line.split()[3].rstrip(";") for line in output if line.startswith("Host running on"))
        assert f"get_item: [GET,DELETE] {url}/api/items/{{item_id}}" in text
        assert "echo: [POST]" in text
        assert "keys not enforced" in text
        assert f"record: queueTrigger on '{queue_name}'" in text  # the environment won over local.settings.json
        status, _, body = request("GET", f"{url}/api/items/9")
        assert status == 200
        assert json.loads(body)["route_params"] == {"item_id": "9"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, "".join(output)

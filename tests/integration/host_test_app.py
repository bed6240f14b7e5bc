"""A tiny Functions app for tests/integration/test_host.py (the local host must not depend on the real app).

The queue function's queue name comes from the TEST_QUEUE app setting, so every test can use its own queue.
"""

from __future__ import annotations

import json
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
bp = func.Blueprint()

# What the queue function saw, in order: (message id, body, dequeue count, time.monotonic()).
RECEIVED: list[tuple[str, bytes, int, float]] = []
RECEIVED_LOCK = threading.Lock()
FAIL_BODY = b"boom"
SLOW_PREFIX = b"sleep:"


@bp.route(route="items/{item_id}", methods=["GET", "DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    echo = {
        "method": req.method,
        "url": req.url,
        "route_params": dict(req.route_params),
        "params": dict(req.params),
        "x_test": req.headers.get("x-test"),
        "body": req.get_body().decode(),
    }
    return func.HttpResponse(json.dumps(echo), status_code=200, mimetype="application/json")


@bp.route(route="echo", trigger_arg_name="request", methods=["POST"])  # auth level from the app: FUNCTION
def echo(request: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return func.HttpResponse(
        request.get_body()[::-1],
        status_code=201,
        headers={"X-Function": context.function_name, "X-Invocation": context.invocation_id},
        mimetype="application/octet-stream",
    )


@bp.route(route="explode", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def explode(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("this function always fails")


@app.function_name("record")
@app.queue_trigger(arg_name="msg", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
def record(msg: func.QueueMessage) -> None:
    body = msg.get_body()
    with RECEIVED_LOCK:
        RECEIVED.append((msg.id, body, msg.dequeue_count, time.monotonic()))
    if body == FAIL_BODY:
        raise ValueError("magic failure body")
    if body.startswith(SLOW_PREFIX):
        time.sleep(float(body[len(SLOW_PREFIX) :]))


app.register_functions(bp)

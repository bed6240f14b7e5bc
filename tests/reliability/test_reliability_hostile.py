"""A hostile platform: the token service hangs or redirects, the API trickles, floods, or says Retry-After 0,
negative, huge or unreadable, and the wall clock steps. Each case bounds time or memory, and no command is lost.

GIVEN the client (and, where a command's fate is the point, the worker with Azurite's queue) against the HTTPS
simulator scripted to misbehave, WHEN calls are made, THEN each ends within a stated bound and holds at most a
stated number of bytes, and a command that could not be carried out goes back to the queue.

The bounds asserted are several times what a quiet machine needs, and many times below what the unbounded
behaviour took (in brackets, from the issue that asked for them): these are bounds, not speed targets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest
from app_settings import settings_for
from samples import IMODEL

from shared.auth import FAILURE_MEMORY
from shared.bodies import ERROR_BODY_LIMIT, SUCCESS_BODY_LIMIT
from shared.client import ITwinClient
from shared.errors import NotFound, RateLimited, TokenError, TransportError
from shared.outcomes import Outcome
from shared.pacing import Pacer
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.retry import RetryPolicy
from shared.settings import COMMAND_QUEUE, POISON_QUEUE, Settings
from shared.worker import Worker

pytestmark = pytest.mark.integration

LIST = f"/export/connections?imodelId={IMODEL}"
CONNECT, READ = 1.0, 0.5


def client_for(simulator, budget: float = 1.0, **options) -> ITwinClient:
    """The worker's client shape: a short read timeout, a one-second budget, three attempts."""
    settings = Settings.from_env({**settings_for(simulator), **options.pop("env", {})})
    policy = RetryPolicy(max_attempts=3, budget=budget)
    return ITwinClient(settings, policy=policy, timeout=(CONNECT, READ), **options)


def timed(action) -> tuple[float, object]:
    started = time.monotonic()
    try:
        result = action()
    except Exception as error:  # the error is the result being examined
        result = error
    return time.monotonic() - started, result


def test_a_hanging_token_service_holds_each_caller_no_longer_than_its_own_budget(simulator):
    # [8 threads waited 0.5 s, 1.0 s ... 4.0 s one after another]
    simulator.stall_next("POST", "/connect/token", 20.0)
    client = client_for(simulator)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: timed(lambda: client.call("GET", LIST, operation="list")), range(8)))
    assert all(isinstance(error, TokenError) and error.transient for _, error in results)
    # the one fetching waits its connect and read timeouts; the others their one-second budget
    longest = max(seconds for seconds, _ in results)
    print(f"\nhanging token service: 8 callers, the longest held {longest:.2f} s")
    assert longest < CONNECT + READ + 2.0
    assert simulator.token_requests == 1
    # a failure is remembered for a few seconds: callers meanwhile fail at once, without asking again
    seconds, error = timed(lambda: client.call("GET", LIST, operation="list"))
    assert isinstance(error, TokenError)
    print(f"a caller within {FAILURE_MEMORY:g} s of the failure: {seconds * 1000:.0f} ms, no request")
    assert seconds < FAILURE_MEMORY
    assert simulator.token_requests == 1


def test_a_token_service_that_redirects_is_not_followed_with_the_secret(simulator):
    elsewhere = f"{simulator.url}/elsewhere/connect/token"
    simulator.fail_next("POST", "/connect/token", 307, headers={"Location": elsewhere}, body=b"")
    _, error = timed(lambda: client_for(simulator).call("GET", LIST, operation="list"))
    assert isinstance(error, TokenError)
    assert error.code == "TokenServiceMisconfigured"
    assert "redirect" in str(error)
    assert not [r for r in simulator.requests if r.path.startswith("/elsewhere")]


def test_a_trickling_answer_ends_within_the_attempts_timeouts(simulator):
    # [1 byte every 0.5 s kept one GET with a 1 s read timeout and a 1 s budget for 8 s]
    simulator.add_imodel(IMODEL)
    body = json.dumps({"connections": [], "_links": {}}).encode()
    simulator.trickle_next("GET", "/export/connections", 200, body, every=0.2)
    seconds, error = timed(lambda: client_for(simulator).call("GET", LIST, operation="list"))
    assert isinstance(error, TransportError)
    assert "no whole answer in time" in str(error)
    print(f"\ntrickle (a byte every 0.2 s of {len(body)}): ended in {seconds:.2f} s")
    assert seconds < 2 * (CONNECT + READ) + 1.0  # unbounded: len(body) x 0.2 s = 8.2 s


def test_a_huge_error_body_is_read_only_as_far_as_the_cap(simulator):
    # [one 404 with a 300 MiB body took the process from 41 to 645 MiB]
    simulator.flood_next("GET", "/export/connections", 404, 64 * 1024 * 1024)
    tracemalloc.start()
    try:
        _, error = timed(lambda: client_for(simulator).call("GET", LIST, operation="list"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(error, NotFound)
    print(f"\n64 MiB error body: peak {peak / 2**20:.1f} MiB traced")
    assert peak < 4 * ERROR_BODY_LIMIT


def test_a_success_body_over_the_cap_is_refused_without_holding_it(simulator):
    simulator.flood_next("GET", "/export/connections", 200, 2 * SUCCESS_BODY_LIMIT)
    tracemalloc.start()
    try:
        _, error = timed(lambda: client_for(simulator, budget=0.0).call("GET", LIST, operation="list"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(error, TransportError)
    assert "larger than" in str(error)
    print(f"\n32 MiB success body: refused, peak {peak / 2**20:.1f} MiB traced")
    assert peak < 3 * SUCCESS_BODY_LIMIT


@pytest.mark.parametrize("header", ["0", "-5", "Thu, 01 Jan 1970 00:00:00 GMT", "whenever"])
def test_a_429_whose_retry_after_is_under_a_second_or_unreadable_sends_the_command_back_with_backoff(
    simulator, queues, captured, header
):
    # [Retry-After: 0 rescheduled the command visible at once, looping for up to ITWIN_MAX_COMMAND_AGE]
    simulator.fail_next("POST", "/export/connections", 429, headers={"Retry-After": header}, times=3)
    settings = Settings.from_env(settings_for(simulator))
    client = ITwinClient(settings, telemetry=captured.telemetry, policy=RetryPolicy(max_attempts=3, budget=0.5))
    queue = CommandQueue(queues[COMMAND_QUEUE], queues[POISON_QUEUE])
    worker = Worker(ITwinApi(client), queue, captured.telemetry, max_attempts=8)
    body = {"iModelId": IMODEL, "displayName": "nightly"}
    message = json.dumps({"action": "create", "resource": "connection", "body": body})
    assert worker.handle(message) is Outcome.RESCHEDULED
    assert queues[COMMAND_QUEUE].peek_messages() == []  # not visible at once: the growing backoff applies
    assert queues[COMMAND_QUEUE].get_queue_properties().approximate_message_count == 1  # and not lost


def test_a_huge_retry_after_is_honoured_only_up_to_the_setting_and_logged(simulator, caplog):
    simulator.fail_next("GET", "/export/connections", 429, headers={"Retry-After": "604800"})
    client = client_for(simulator, budget=0.0, env={"ITWIN_MAX_RETRY_AFTER": "2m"})
    with caplog.at_level(logging.WARNING, logger="shared.retry"):
        _, error = timed(lambda: client.call("GET", LIST, operation="list"))
    assert isinstance(error, RateLimited)
    assert error.retry_after == 120
    assert 0 < client.pacer.held("export") <= 120
    assert "ITWIN_MAX_RETRY_AFTER (120 s)" in caplog.text


class SteppingWallClock:
    """The wall clock, which the test steps; time itself goes on as usual."""

    def __init__(self) -> None:
        self.step = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.time() + self.step


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_step_of_the_wall_clock_adds_no_wait_to_a_retry_after(simulator, step):
    # [a step back by 1 h turned a Retry-After: 2 hold into 3,602 s]
    simulator.add_imodel(IMODEL)
    wall = SteppingWallClock()
    client = client_for(simulator, budget=0.0, pacer=Pacer({}, clock=wall))
    simulator.fail_next("GET", "/export/connections", 429, headers={"Retry-After": "2"})
    _, error = timed(lambda: client.call("GET", LIST, operation="list"))
    assert isinstance(error, RateLimited)
    wall.step = step
    assert client.pacer.held("export") <= 2.0
    seconds, answer = timed(lambda: client.call("GET", LIST, operation="list", budget=5.0))
    assert not isinstance(answer, Exception)
    print(f"\nwall clock stepped {step:+.0f} s during a Retry-After: 2: next call after {seconds:.2f} s")
    assert seconds < 2.0 + 1.5

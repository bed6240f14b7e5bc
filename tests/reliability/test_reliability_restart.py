"""A host killed mid-batch: every command still ends with an outcome once a new host takes over.

GIVEN ``python -m sandbox.host`` running the real app (a child process with a 2 s message lease) against Azurite and
a simulator in this process that answers each API call after 0.4 s,
WHEN a batch of commands is half done and the host is killed with SIGKILL, and a new host is started,
THEN the new host picks up the leased messages once their lease expires, every command ends with a final outcome,
the simulator's state is what the commands asked for, and both queues end empty.

A message whose work was done but not yet deleted when the host died is delivered again: at-least-once. The commands
here are all safe to repeat (deletes, and connection creates, which list first), so a repeat must be already_done.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.queue import QueueClient
from host_process import HostProcess
from reliability_kit import (
    REPO_ROOT,
    app_environment,
    fast_host_json,
    new_id,
    queue_length,
    read_all,
    size,
    wait_until,
)

from sandbox.azurite import Azurite
from sandbox.itwin_platform import Faults, Simulator
from shared.outcomes import FINAL_OUTCOMES
from shared.settings import COMMAND_QUEUE, POISON_QUEUE

pytestmark = pytest.mark.integration

COMMANDS = size(ci=80, soak=400)
LATENCY = 0.4  # every API call takes this long, so that many are in flight when the host dies
FINAL = tuple(sorted(FINAL_OUTCOMES))


def plan(simulator: Simulator, count: int) -> dict[str, dict[str, Any]]:
    """``count`` commands that are safe to repeat, by correlationId."""
    commands: dict[str, dict[str, Any]] = {}
    for n in range(count):
        key = f"restart-{n:04d}"
        match n % 4:
            case 0:
                body = {"iModelId": new_id(), "displayName": f"made-{n}"}
                commands[key] = {"action": "create", "resource": "connection", "body": body}
            case 1:
                connection = simulator.add_connection(new_id(), f"gone-{n}")
                commands[key] = {"action": "delete", "resource": "connection", "id": connection["id"]}
            case 2:
                commands[key] = {"action": "delete", "resource": "run", "id": simulator.add_run()["id"]}
            case _:
                commands[key] = {"action": "delete", "resource": "job", "id": simulator.add_job()["id"]}
        commands[key]["correlationId"] = key
    return commands


@pytest.fixture
def hosts(
    simulator: Simulator, azurite: Azurite, queues: dict[str, QueueClient], tmp_path: Path
) -> Iterator[Callable[[], HostProcess]]:
    """Starts host processes pointed at ``simulator`` and Azurite; any still running at the end are killed."""
    environ = {
        **os.environ,
        **app_environment(simulator, azurite.connection_string),
        "REQUESTS_CA_BUNDLE": simulator.ca_path,
        "PYTHONPATH": str(REPO_ROOT),
        # Invocations here take a second or two: a create claimed by the killed host is free again after this
        # (plus the claim margin) instead of after host.json's 5 minutes.
        "AzureFunctionsJobHost__functionTimeout": "00:00:10",
    }
    host_json, settings = fast_host_json(tmp_path), tmp_path / "no-local.settings.json"
    started: list[HostProcess] = []

    def start() -> HostProcess:
        started.append(HostProcess(environ, host_json, settings))
        return started[-1]

    yield start
    for host in started:
        if host.process.poll() is None:
            host.kill()


def test_a_host_killed_mid_batch_leaves_no_command_without_an_outcome(
    simulator: Simulator, queues: dict[str, QueueClient], hosts: Callable[[], HostProcess]
) -> None:
    # GIVEN a host, and a batch of commands that takes a while (each API call takes LATENCY seconds)
    commands = plan(simulator, COMMANDS)
    simulator.faults = Faults(latency=LATENCY)
    first = hosts()
    keys = list(commands)
    half = len(keys) // 2
    for start in range(0, half, 100):
        batch = [commands[k] for k in keys[start : min(start + 100, half)]]
        reply = requests.post(f"{first.url}/api/commands", json=batch, timeout=60)
        assert reply.status_code == 202
    for key in keys[half:]:
        queues[COMMAND_QUEUE].send_message(json.dumps(commands[key]))

    # WHEN about a quarter of the commands are done, the host is killed
    wait_until(lambda: len(first.outcomes()) >= COMMANDS // 4, 120, "a quarter of the commands to be done")
    in_flight = len(simulator.api_calls()) - sum(1 for r in simulator.api_calls() if r.status is not None)
    first.kill()
    done_before = {key for key, outcome in first.outcomes() if outcome in FINAL}
    assert 0 < len(done_before) < COMMANDS, "the host must die mid-batch"
    # ... and a new one is started
    second = hosts()

    # THEN every command ends with a final outcome
    def all_done() -> bool:
        finals = {key for key, outcome in first.outcomes() + second.outcomes() if outcome in FINAL}
        return finals >= set(commands) and queue_length(queues[COMMAND_QUEUE]) == 0

    wait_until(all_done, 120 + COMMANDS * LATENCY, "every command to end with an outcome")
    assert second.stop() == 0, "".join(second.lines[-20:])

    outcomes: dict[str, list[str]] = defaultdict(list)
    for key, outcome in first.outcomes() + second.outcomes():
        outcomes[key].append(outcome)
    assert set(outcomes) == set(commands)
    for key, seen in outcomes.items():
        finals = [outcome for outcome in seen if outcome in FINAL]
        # A 429 (clashdetection's 6 calls/s counts the dead host's calls too) reschedules: not an outcome yet.
        assert set(seen) <= {*FINAL, "rescheduled"}, (key, seen)
        assert finals[0] in ("succeeded", "already_done"), (key, seen)
        # A second final outcome is a redelivery of a message whose work was done but not yet deleted when the
        # host died: at-least-once delivery; the command is safe to repeat, so it finds the work done.
        assert set(finals[1:]) <= {"already_done"}, (key, seen)
    repeats = sorted(key for key, seen in outcomes.items() if sum(o in FINAL for o in seen) > 1)
    assert len(repeats) <= 24, repeats  # at most what the first host had in flight (batchSize + newBatchThreshold)
    finished_by_the_dead_host = sum(1 for seen in outcomes.values() if seen == ["already_done"])
    print(
        f"\nrestart: {COMMANDS} commands, {len(done_before)} done before the kill with {in_flight} API calls in"
        f" flight; {finished_by_the_dead_host} found already done by the new host; {len(repeats)} with two outcomes"
    )

    # ... and the simulator holds what the commands asked for, nothing twice, with both queues empty
    connections = simulator.connections
    for key, command in commands.items():
        match command["action"], command["resource"]:
            case "create", "connection":
                body = command["body"]
                made = [c for c in connections.values() if (c["iModelId"], c["displayName"]) == tuple(body.values())]
                assert len(made) == 1, (key, made)
            case "delete", "connection":
                assert command["id"] not in connections, key
            case "delete", "run":
                assert command["id"] not in simulator.runs, key
            case "delete", "job":
                assert command["id"] not in simulator.jobs, key
    assert read_all(queues[POISON_QUEUE]) == []
    assert read_all(queues[COMMAND_QUEUE]) == []

"""Two worker hosts on the same queues and ledger, every command delivered more than once, under the fault mix.

GIVEN the real app on two local hosts (each with its own worker: client, token cache, pacer, ledger owner, as separate
instances have) polling one Azurite queue, and a simulator answering 20% of API calls with 500, 503, 429, a dropped
connection or a stall past the read timeout,
WHEN commands of all nine kinds are accepted through ``POST /api/commands`` and then every one is delivered again,
and every third a third time, onto the same queue, so that the copies land on either host, often at the same moment,
THEN no connection, job or run is created twice, every command ends with one final status in the ledger, the
outcomes both hosts recorded agree with it (every other final outcome is ``already_done``), the created resources
are the ones the simulator holds, nothing is lost, and the only creates left unknown are jobs, which the API cannot
look up.

CI: 10 commands of each kind (90), each delivered 2.3 times on average. ``SOAK=1``: 40 of each (360).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from fault_plan import FAULTS, READ_TIMEOUT, Planned, plan_commands
from opentelemetry.trace import SpanKind
from otel_capture import Captured
from reliability_kit import (
    app_environment,
    fast_host_json,
    install_environment,
    install_instances,
    queue_length,
    read_all,
    size,
    wait_until,
)

import function_app
from sandbox.azurite import Azurite, app_queues
from sandbox.host import LocalHost
from sandbox.itwin_platform import Simulator
from shared import runtime
from shared.commands import MAX_BATCH
from shared.ledger import FINAL_STATUSES, Record, Status
from shared.settings import COMMAND_QUEUE, POISON_QUEUE

pytestmark = pytest.mark.integration

PER_KIND = size(ci=10, soak=40)
HOSTS = ("alpha", "beta")


@dataclass
class InstancesRun:
    planned: list[Planned]
    ids: dict[str, str]  # correlationId -> command id
    records: dict[str, Record]  # command id -> its ledger row at the end
    outcomes: dict[str, dict[str, list[str]]]  # correlationId -> host -> outcomes of its deliveries, in order
    envelopes: list[dict[str, Any]]
    leftover: list[Any]
    connections: dict[str, dict[str, Any]]
    jobs: dict[str, dict[str, Any]]
    runs: dict[str, dict[str, Any]]
    copies: int


@pytest.fixture(scope="module")
def instances_run(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> InstancesRun:
    captured = {name: Captured() for name in HOSTS}
    queues = app_queues(azurite.connection_string)
    host_json = fast_host_json(tmp_path_factory.mktemp("instances"))
    with pytest.MonkeyPatch.context() as patch, Simulator() as simulator:
        environ = app_environment(simulator, azurite.connection_string)
        patch.setenv("REQUESTS_CA_BUNDLE", simulator.ca_path)
        install_environment(patch, environ)
        install_instances(patch, {name: c.telemetry for name, c in captured.items()}, read_timeout=READ_TIMEOUT)
        planned = plan_commands(simulator, PER_KIND)
        simulator.faults = FAULTS
        hosts = [LocalHost(function_app.app, host_json, environ=environ, name=name) for name in HOSTS]
        with hosts[0], hosts[1]:
            ids = accept(planned, hosts[0])
            copies = deliver_again(planned, ids, queues[COMMAND_QUEUE])
            ledger = runtime.ledger()

            def settled() -> bool:
                final = all((r := ledger.get(ids[p.key])) and r.status in FINAL_STATUSES for p in planned)
                idle = all(host.in_flight == 0 for host in hosts)
                return final and idle and queue_length(queues[COMMAND_QUEUE]) == 0

            wait_until(settled, 600, f"{len(planned)} commands to settle on two hosts", interval=0.5)
        outcomes: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for name, capture in captured.items():
            for span in sorted(capture.spans(), key=lambda s: s.start_time):
                if span.kind is SpanKind.CONSUMER:
                    outcomes[span.attributes["itwin.correlation_id"]][name].append(span.attributes["itwin.outcome"])
        run = InstancesRun(
            planned=planned,
            ids=ids,
            records={i: ledger.get(i) for i in ids.values()},
            outcomes=outcomes,
            envelopes=read_all(queues[POISON_QUEUE]),
            leftover=read_all(queues[COMMAND_QUEUE]),
            connections=simulator.connections,
            jobs=simulator.jobs,
            runs=simulator.runs,
            copies=copies,
        )
    for client in queues.values():
        client.clear_messages()
        client.close()
    return run


def accept(planned: list[Planned], host: LocalHost) -> dict[str, str]:
    """POST every command in batches of up to 100; their ids by correlationId."""
    ids = {}
    for start in range(0, len(planned), MAX_BATCH):
        batch = planned[start : start + MAX_BATCH]
        reply = requests.post(f"{host.url}/api/commands", json=[p.message for p in batch], timeout=60)
        assert reply.status_code == 202, reply.text
        ids.update({p.key: c["id"] for p, c in zip(batch, reply.json()["commands"], strict=True)})
    return ids


def deliver_again(planned: list[Planned], ids: dict[str, str], queue: Any) -> int:
    """Every command once more, every third twice more: the same message, as the queue delivers at least once."""
    sent = 0
    for n, item in enumerate(planned):
        message = json.dumps({**item.message, "commandId": ids[item.key]})
        for _ in range(2 if n % 3 == 0 else 1):
            queue.send_message(message)
            sent += 1
    return sent


def own(run: InstancesRun, item: Planned) -> list[str]:
    """Every outcome either host recorded for the command's deliveries."""
    return [o for outcomes in run.outcomes[item.key].values() for o in outcomes]


def test_both_hosts_handled_deliveries_and_some_commands_reached_both(instances_run: InstancesRun) -> None:
    per_host = Counter(name for by_host in instances_run.outcomes.values() for name, seen in by_host.items() if seen)
    both = sum(1 for by_host in instances_run.outcomes.values() if all(by_host.get(h) for h in HOSTS))
    print(
        f"\ntwo hosts: {len(instances_run.planned)} commands, {instances_run.copies} extra copies; commands seen by "
        f"alpha {per_host['alpha']}, beta {per_host['beta']}, both {both}"
    )
    assert set(per_host) == set(HOSTS)
    assert both >= len(instances_run.planned) // 4


def test_nothing_is_created_twice(instances_run: InstancesRun) -> None:
    connections = Counter((c["iModelId"], c["displayName"]) for c in instances_run.connections.values())
    jobs = Counter(j["name"] for j in instances_run.jobs.values() if j["name"].startswith("survey-"))
    runs = Counter(r["testId"] for r in instances_run.runs.values())
    for counts in (connections, jobs, runs):
        assert all(n == 1 for n in counts.values()), counts.most_common(3)


def test_every_command_has_one_final_status_that_the_hosts_outcomes_agree_with(instances_run: InstancesRun) -> None:
    for item in instances_run.planned:
        record = instances_run.records[instances_run.ids[item.key]]
        assert record is not None, item.key
        assert record.status in FINAL_STATUSES, (item.key, record.status)
        if item.children:
            continue  # the parent's deliveries share the correlationId with its children's: checked below
        finals = [o for o in own(instances_run, item) if o != "rescheduled"]
        assert record.status.value in finals, (item.key, record.status, finals)
        if item.message["action"] == "create":
            # Exactly one delivery, on either host, made the create (or gave up on it); every other found it done.
            acted = [o for o in finals if o != "already_done"]
            assert len(acted) <= 1, (item.key, finals)
            assert acted in ([], [record.status.value]), (item.key, record.status, finals)
        else:
            # Deletes, submits and cancels take no claim: two deliveries at once may both call the API, which is
            # harmless; the row says succeeded when either did the work.
            assert set(finals) <= {record.status.value, "already_done"}, (item.key, record.status, finals)
            if "succeeded" in finals:
                assert record.status is Status.SUCCEEDED, (item.key, finals)


def test_fan_outs_record_their_children_and_each_child_ends_final(instances_run: InstancesRun) -> None:
    for item in instances_run.planned:
        if not item.children:
            continue
        record = instances_run.records[instances_run.ids[item.key]]
        if record.status is Status.FANNED_OUT:
            assert len(record.children) == len(item.children)
        left = [c for c in item.children if c in instances_run.connections]
        assert not left or record.status is Status.DEAD_LETTERED, (item.key, left)


def test_the_ledger_names_the_resources_the_simulator_holds(instances_run: InstancesRun) -> None:
    held = {**instances_run.connections, **instances_run.jobs, **instances_run.runs}
    for item in instances_run.planned:
        record = instances_run.records[instances_run.ids[item.key]]
        if item.message["action"] == "create" and record.status in (Status.SUCCEEDED, Status.ALREADY_DONE):
            assert record.resource is not None, item.key
            assert record.resource.id in held, (item.key, record.resource)


def test_nothing_is_lost_and_every_dead_letter_is_recorded_once(instances_run: InstancesRun) -> None:
    assert instances_run.leftover == []
    dead = [r for r in instances_run.records.values() if r.status is Status.DEAD_LETTERED]
    assert len(instances_run.envelopes) == len(dead)
    unknown = [e for e in instances_run.envelopes if e["error"]["code"] == "CreateOutcomeUnknown"]
    # Connections list first and runs are looked up by project, test and named version: only jobs stay unknown.
    assert {e["message"]["resource"] for e in unknown} <= {"job"}, unknown
    print(f"\ntwo hosts: dead letters {Counter(e['error']['code'] for e in instances_run.envelopes)}")

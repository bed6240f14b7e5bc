"""Commands of every kind through Azurite, the local host and the simulator while 20% of API calls go wrong.

GIVEN the real app on the local host and a simulator that answers 20% of API calls with 500, 503 or 429
(Retry-After 1 s), drops the connection or stalls past the worker's read timeout,
WHEN commands of all nine kinds arrive through ``POST /api/commands`` (batches of up to 100) and straight on the queue,
THEN every command ends with exactly one final outcome, nothing is lost (metric, spans, poison queue and the
simulator's state add up), no connection is created twice and no call is repeated sooner than its Retry-After.

One run (a module fixture) is shared by the tests below, each checking one property of it.
CI: 28 commands of each kind (252). ``SOAK=1``: 112 of each (1,008).
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from app_settings import settings_for
from azure.storage.queue import QueueClient
from fault_plan import CONNECTIONS_PER_IMODEL, FAULTS, READ_TIMEOUT, RETRY_AFTER, STALL_SECONDS, Planned, plan_commands
from opentelemetry.trace import SpanKind
from otel_capture import Captured
from reliability_kit import (
    SOAK,
    RecordingQueue,
    app_environment,
    busy_invocations,
    fast_host_json,
    install_environment,
    install_worker,
    queue_length,
    read_all,
    size,
    wait_until,
)

import function_app
from sandbox.azurite import Azurite, app_queues
from sandbox.host import LocalHost
from sandbox.itwin_platform import RecordedRequest, Simulator
from shared.client import ITwinClient
from shared.commands import MAX_BATCH
from shared.outcomes import FINAL_OUTCOMES, Outcome
from shared.resources import ITwinApi
from shared.runtime import WORKER_POLICY
from shared.settings import COMMAND_QUEUE, DEFAULT_MAX_ATTEMPTS, POISON_QUEUE, Settings
from shared.worker import Worker

pytestmark = pytest.mark.integration

PER_KIND = size(ci=28, soak=112)
FINAL = tuple(sorted(FINAL_OUTCOMES))
DEADLINE = 1800.0 if SOAK else 300.0


def send(planned: list[Planned], host: LocalHost, queue: QueueClient, rng: random.Random) -> None:
    """Half through ``POST /api/commands`` in batches of up to 100, half straight onto the queue, interleaved."""
    order = planned[:]
    rng.shuffle(order)
    over_http, direct = order[: len(order) // 2], order[len(order) // 2 :]
    batches = [over_http[i : i + MAX_BATCH] for i in range(0, len(over_http), MAX_BATCH)]
    share = -(-len(direct) // len(batches))
    for n, batch in enumerate(batches):
        reply = requests.post(f"{host.url}/api/commands", json=[p.message for p in batch], timeout=60)
        assert (reply.status_code, reply.json()["accepted"]) == (202, len(batch))
        for item in direct[n * share : (n + 1) * share]:
            queue.send_message(json.dumps(item.message))


@dataclass
class FaultRun:
    """What one run left behind, for the tests to examine."""

    planned: list[Planned]
    spans: list[Any]  # the worker's CONSUMER spans, one per delivery
    outcomes: dict[tuple[str, str], int]  # itwin.commands by (itwin.command, outcome)
    envelopes: list[dict[str, Any]]  # the poison queue
    leftover: list[Any]  # the command queue (should be empty)
    calls: list[RecordedRequest]  # API calls the simulator received
    connections: dict[str, dict[str, Any]]
    jobs: dict[str, dict[str, Any]]
    runs: dict[str, dict[str, Any]]
    clash_reports: dict[str, dict[str, Any]]
    reality_jobs: dict[str, dict[str, Any]]
    host_counts: dict[str, int]

    def by_command(self) -> dict[str, list[Any]]:
        spans: dict[str, list[Any]] = defaultdict(list)
        for span in sorted(self.spans, key=lambda s: s.start_time):
            spans[span.attributes["itwin.correlation_id"]].append(span)
        return spans

    def total(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)


@pytest.fixture(scope="module")
def fault_run(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> FaultRun:
    """GIVEN the app on the local host and a faulty simulator, WHEN every planned command has been sent, wait until
    all of them have settled: enough final outcomes, an empty queue and nothing in flight. Then keep what is left."""
    captured = Captured()
    queues = app_queues(azurite.connection_string)
    host_json = fast_host_json(tmp_path_factory.mktemp("faults"))
    with pytest.MonkeyPatch.context() as patch, Simulator() as simulator:
        environ = app_environment(simulator, azurite.connection_string)
        patch.setenv("REQUESTS_CA_BUNDLE", simulator.ca_path)
        install_environment(patch, environ)
        install_worker(patch, captured.telemetry, read_timeout=READ_TIMEOUT)
        planned = plan_commands(simulator, PER_KIND, v2=SOAK)
        expected_finals = sum(len(p.children) or 1 for p in planned)
        simulator.faults = FAULTS
        with LocalHost(function_app.app, host_json, environ=environ) as host:
            send(planned, host, queues[COMMAND_QUEUE], random.Random(7))

            def settled() -> bool:
                finals = sum(1 for s in captured.spans() if s.attributes.get("itwin.outcome") in FINAL)
                return finals >= expected_finals and host.in_flight == 0 and queue_length(queues[COMMAND_QUEUE]) == 0

            def state() -> str:
                last: dict[str, str] = {}
                for span in captured.spans():
                    if span.kind is SpanKind.CONSUMER:
                        key = span.attributes.get("itwin.correlation_id", "")
                        last[key] = f"{span.attributes.get('itwin.outcome')} ({span.status.description or ''})"
                open_ = {k: v for k, v in last.items() if not v.startswith(FINAL)}
                return (
                    f"in flight {host.in_flight}, on the queue {queue_length(queues[COMMAND_QUEUE])}; last outcome of "
                    f"commands not final: {open_}\n{busy_invocations()}"
                )

            wait_until(settled, DEADLINE, f"{len(planned)} commands to settle", interval=0.25, describe=state)
        counts = captured.counts("itwin.commands")
        run = FaultRun(
            planned=planned,
            spans=[s for s in captured.spans() if s.kind is SpanKind.CONSUMER],
            outcomes={(dict(k)["itwin.command"], dict(k)["outcome"]): n for k, n in counts.items()},
            envelopes=read_all(queues[POISON_QUEUE]),
            leftover=read_all(queues[COMMAND_QUEUE]),
            calls=simulator.api_calls(),
            connections=simulator.connections,
            jobs=simulator.jobs,
            runs=simulator.runs,
            clash_reports=simulator.reports,
            reality_jobs=simulator.reality_jobs,
            host_counts={o: host.count("command_worker", o) for o in ("succeeded", "failed", "poisoned")},
        )
    for client in queues.values():
        client.clear_messages()
        client.close()
    return run


def test_the_faults_were_really_injected(fault_run: FaultRun) -> None:
    faults = Counter((r.fault, r.status) for r in fault_run.calls if r.fault)
    summary = {
        "commands": len(fault_run.planned),
        "deliveries": len(fault_run.spans),
        "api_calls": len(fault_run.calls),
        "faults": {f"{fault}:{status}": n for (fault, status), n in sorted(faults.items(), key=str)},
        "outcomes": {o: fault_run.total(o) for o in ("rescheduled", "fanned_out", *FINAL)},
    }
    print(f"\nfault run: {json.dumps(summary)}")
    injected = {(fault, status) for fault, status in faults}
    assert {("error", 500), ("error", 503), ("error", 429), ("drop", None)} <= injected
    assert any(fault == "stall" for fault, _ in injected)
    share = sum(faults.values()) / len(fault_run.calls)
    assert 0.1 < share < 0.35, share


def test_every_command_ends_with_exactly_one_final_outcome(fault_run: FaultRun) -> None:
    spans = fault_run.by_command()
    assert set(spans) == {p.key for p in fault_run.planned}
    for planned in fault_run.planned:
        deliveries = spans[planned.key]
        fan_out_ids = {s.context.span_id for s in deliveries if s.attributes["itwin.outcome"] == "fanned_out"}
        children = [s for s in deliveries if s.parent is not None and s.parent.span_id in fan_out_ids]
        own = [s.attributes["itwin.outcome"] for s in deliveries if s not in children]
        # Its own deliveries: rescheduled until one final outcome (or, for a delete by iModel, one fan-out).
        assert own[-1] in (*FINAL, "fanned_out"), (planned.kind, own)
        assert set(own[:-1]) <= {"rescheduled"}, (planned.kind, own)
        # Each delivery counts one more attempt (a failure) or one more wait (429, busy), never neither, unless it
        # was given back by this process's own pacing (the platform refused nothing): then it counts neither.
        mine = [s for s in deliveries if s not in children]
        counted = [s.attributes["itwin.attempt"] + s.attributes["itwin.waits"] for s in mine]
        steps = [0 if s.attributes["itwin.paced"] else 1 for s in mine[:-1]]
        assert counted == [1 + sum(steps[:n]) for n in range(len(mine))], (planned.key, counted, steps)
        if own[-1] == "fanned_out":
            # ... and then each fanned-out delete its own final outcome, one per connection.
            child_outcomes = Counter(s.attributes["itwin.outcome"] for s in children)
            assert sum(child_outcomes[o] for o in FINAL) == len(planned.children), (planned.key, child_outcomes)
            assert set(child_outcomes) <= {*FINAL, "rescheduled"}
            # One first delivery per connection: those counting neither attempt nor wait yet, less the copies
            # that a give-back for pacing left uncounted.
            zero = [s for s in children if (s.attributes["itwin.attempt"], s.attributes["itwin.waits"]) == (1, 0)]
            assert len(zero) - sum(s.attributes["itwin.paced"] for s in zero) == len(planned.children)
        else:
            assert not children


def final_outcomes(fault_run: FaultRun) -> dict[str, list[str]]:
    """The final outcomes of each command: one, or for a delete by iModel that fanned out, one per connection."""
    finals: dict[str, list[str]] = defaultdict(list)
    for span in fault_run.spans:
        if span.attributes["itwin.outcome"] in FINAL:
            finals[span.attributes["itwin.correlation_id"]].append(span.attributes["itwin.outcome"])
    return finals


def test_the_metric_the_spans_the_host_and_the_poison_queue_add_up(fault_run: FaultRun) -> None:
    from_spans = Counter(s.attributes["itwin.outcome"] for s in fault_run.spans)
    assert {outcome: fault_run.total(outcome) for outcome in from_spans} == dict(from_spans)
    assert sum(fault_run.outcomes.values()) == len(fault_run.spans)
    # Every delivery the host made ended in one recorded outcome: none raised, none went to poison by dequeue count.
    assert fault_run.host_counts == {"succeeded": len(fault_run.spans), "failed": 0, "poisoned": 0}
    assert fault_run.leftover == []
    # One final outcome per command, except that a delete by iModel that fanned out has one per connection instead.
    fanned_out = fault_run.total("fanned_out")
    finals = sum(fault_run.total(outcome) for outcome in FINAL)
    assert finals == len(fault_run.planned) - fanned_out + fanned_out * CONNECTIONS_PER_IMODEL
    # Every dead-lettered delivery left exactly one envelope on the poison queue, and nothing else did.
    dead = Counter(
        s.attributes["itwin.correlation_id"]
        for s in fault_run.spans
        if s.attributes["itwin.outcome"] == "dead_lettered"
    )
    assert Counter(e["message"]["correlationId"] for e in fault_run.envelopes) == dead
    assert len(fault_run.envelopes) == fault_run.total("dead_lettered")


def test_the_simulator_state_matches_every_outcome(fault_run: FaultRun) -> None:
    finals = final_outcomes(fault_run)
    jobs_by_name = Counter(j["name"] for j in fault_run.jobs.values())
    runs_by_test = Counter(r["testId"] for r in fault_run.runs.values())
    for p in fault_run.planned:
        if p.kind == "delete connection by iModel":
            # Only a dead-lettered delete may leave its connection behind.
            left = [i for i in p.children if i in fault_run.connections]
            assert len(left) <= finals[p.key].count("dead_lettered"), (p.key, finals[p.key], left)
            continue
        [outcome] = finals[p.key]
        done = outcome in ("succeeded", "already_done")
        match p.kind:
            case "create connection":
                made = sum(
                    1
                    for c in fault_run.connections.values()
                    if (c["iModelId"], c["displayName"]) == (p.imodel_id, p.name)
                )
                assert made == 1 if done else made <= 1, (p.key, outcome, made)
            case "create job":
                # A dead-lettered CreateOutcomeUnknown may or may not have created it; never twice.
                assert jobs_by_name[p.name] == 1 if done else jobs_by_name[p.name] <= 1, (p.key, outcome)
            case "create run":
                assert runs_by_test[p.name] == 1 if done else runs_by_test[p.name] <= 1, (p.key, outcome)
            case "create clashRun":
                made = sum(1 for r in fault_run.clash_reports.values() if r["configurationId"] == p.name)
                assert made == 1 if done else made <= 1, (p.key, outcome, made)
            case "create realityJob":
                made = sum(1 for j in fault_run.reality_jobs.values() if j["name"] == p.name)
                assert made == 1 if done else made <= 1, (p.key, outcome, made)
            case "submit job":
                assert not done or fault_run.jobs[p.id]["state"] == "active", (p.key, outcome)
            case "cancel job":
                assert not done or fault_run.jobs[p.id]["state"] == "cancelled", (p.key, outcome)
            case "delete connection":
                assert not done or p.id not in fault_run.connections, (p.key, outcome)
            case "delete job":
                assert not done or p.id not in fault_run.jobs, (p.key, outcome)
            case "delete run":
                assert not done or p.id not in fault_run.runs, (p.key, outcome)


def test_no_connection_is_created_twice(fault_run: FaultRun) -> None:
    created = Counter((c["iModelId"], c["displayName"]) for c in fault_run.connections.values())
    assert [pair for pair, n in created.items() if n > 1] == []
    posts = Counter(
        resource_key(r) for r in fault_run.calls if (r.method, r.path, r.status) == ("POST", "/export/connections", 201)
    )
    assert [key for key, n in posts.items() if n > 1] == []


def resource_key(request: RecordedRequest) -> tuple[str, str]:
    """What one command's calls have in common: the iModel, job name or test id of a create, else the path."""
    if request.path == "/export/connections" and request.method == "GET":
        return "imodel", (request.query.get("imodelId") or "").lower()
    if request.method == "POST":
        body = request.json()
        if request.path == "/export/connections":
            return "imodel", str(body["iModelId"]).lower()
        if request.path == "/contextcapture/jobs":
            return "job", body["name"]
        if request.path == "/clashdetection/runs":
            return "run", body["testId"]
        if request.path == "/reality-modeling/jobs":
            return "realityJob", body["name"]
        if request.path.startswith("/clash-detection/") and request.path.endswith("/runs/jobs"):
            return "clashRun", body["jobs"][0]["testId"]
    return "path", request.path


def test_no_call_is_repeated_sooner_than_its_retry_after(fault_run: FaultRun) -> None:
    by_resource: dict[tuple[str, str], list[RecordedRequest]] = defaultdict(list)
    for request in sorted(fault_run.calls, key=lambda r: r.started):
        by_resource[resource_key(request)].append(request)
    gaps = []
    for calls in by_resource.values():
        for refused, following in itertools.pairwise(calls):
            if refused.status == 429:
                # A fault's 429 says Retry-After: RETRY_AFTER; the rate limiter's says at least 1 s.
                gaps.append((following.started - refused.started, refused))
    refused_total = sum(1 for r in fault_run.calls if r.status == 429)
    print(f"\n429 answers: {refused_total}; repeated: {len(gaps)}; min gap: {min(g for g, _ in gaps):.3f} s")
    assert gaps
    too_soon = [(round(gap, 3), r.method, r.path) for gap, r in gaps if gap < RETRY_AFTER]
    assert too_soon == []


def test_every_dead_letter_says_why(fault_run: FaultRun) -> None:
    reasons = Counter()
    for envelope in fault_run.envelopes:
        command, error = envelope["message"], envelope["error"]
        kind = f"{command['action']} {command['resource']}"
        if error["code"] == "CreateOutcomeUnknown":
            # A run with a ledger row whose create got no clear answer is looked up on its next delivery instead;
            # without one, a matching run cannot be told from an older one.
            # Runs (v1 and v2) and v2 jobs are looked up against the list their ledger row kept from before the
            # create; a command sent straight onto the queue has no row, so a match cannot be told from an older one.
            listed = kind in ("create run", "create clashRun", "create realityJob")
            assert kind == "create job" or (listed and "commandId" not in command), envelope
            assert envelope["attempts"] == command.get("attempt", 1)
            reasons[f"CreateOutcomeUnknown ({kind}, {'ledger' if 'commandId' in command else 'no ledger'})"] += 1
        elif "gave up after" in error["message"]:
            assert envelope["attempts"] == DEFAULT_MAX_ATTEMPTS == command["attempt"], envelope
            reasons["gave up"] += 1
        else:
            raise AssertionError(f"a dead letter without a reason the faults explain: {envelope}")
        assert envelope["failedAt"].endswith("Z")
    print(f"\ndead letters: {dict(reasons)}")


def test_a_submit_whose_answer_was_lost_is_not_dead_lettered_when_it_is_repeated(
    simulator: Simulator, captured: Captured
) -> None:
    # GIVEN a job, and an API that carries out its submit but answers after the worker stopped waiting
    settings = Settings.from_env(settings_for(simulator))
    client = ITwinClient(settings, telemetry=captured.telemetry, policy=WORKER_POLICY, timeout=(3.05, READ_TIMEOUT))
    queue = RecordingQueue()
    worker = Worker(ITwinApi(client), queue, captured.telemetry, max_attempts=DEFAULT_MAX_ATTEMPTS)
    job = simulator.add_job()
    simulator.stall_next("PATCH", f"/contextcapture/jobs/{job['id']}", STALL_SECONDS)
    # WHEN the worker handles the command, and then its rescheduled message once the submit has been carried out
    assert worker.handle(json.dumps({"action": "submit", "resource": "job", "id": job["id"]})) is Outcome.RESCHEDULED
    wait_until(lambda: simulator.jobs[job["id"]]["state"] == "active", 10, "the stalled submit to be carried out")
    [again] = queue.take()
    outcome = worker.handle(again)
    # THEN the command ends as done, not dead-lettered with 422 InvalidChange
    assert outcome in (Outcome.SUCCEEDED, Outcome.ALREADY_DONE), queue.envelopes

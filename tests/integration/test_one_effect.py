"""One effect per command, nothing lost: each defect found in the ledger's guarantees (issue 16), reproduced on
Azurite's table and queue services with workers on the simulator, and what the ledger does now."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from app_settings import settings_for
from azure.core.exceptions import ServiceRequestError
from azure.storage.queue import QueueClient
from ledger_kit import TEST_ID, VERSION, queue_of, run_command
from manual_clock import ManualClock
from samples import IMODEL, JOB_BODY

from sandbox.azurite import connection_string
from shared.client import ITwinClient
from shared.commands import validate
from shared.http_api import accept_commands
from shared.intake import accept
from shared.ledger import LEASE, Ledger, Resource, Status, child_id, day_of, new_id, split_id
from shared.outcomes import Outcome
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.retention import drop_expired
from shared.runtime import WORKER_POLICY
from shared.settings import COMMAND_QUEUE, POISON_QUEUE, Settings
from shared.worker import Worker

pytestmark = pytest.mark.integration
SETTLE = 3.0  # longer than any stall these tests script past the client's read timeout


def instance(simulator, queues, captured, ledger, name, *, skew=0.0, clock=None, read_timeout=2.0) -> Worker:
    """One instance's worker: its own client and owner, its wall clock ``skew`` seconds off."""
    settings = Settings.from_env(settings_for(simulator))
    client = ITwinClient(
        settings,
        telemetry=captured.telemetry,
        policy=WORKER_POLICY,
        timeout=(2.0, read_timeout),
        clock=clock or time.monotonic,
    )
    return Worker(
        ITwinApi(client),
        queue_of(queues),
        captured.telemetry,
        max_attempts=8,
        ledger=ledger,
        owner=name,
        now=lambda: time.time() + skew,
        monotonic=clock or time.monotonic,
        settle=SETTLE,
    )


def on_queue(queue_client, visibility=1) -> list[str]:
    return [m.content for m in queue_client.receive_messages(messages_per_page=32, visibility_timeout=visibility)]


def accepted(queues, ledger, command, now=None) -> tuple[str, str]:
    """Accept ``command``; its id and its message as taken off the queue."""
    [command_id] = accept([validate(command)], queue_of(queues), ledger, now or datetime.now(UTC)).ids
    [message] = on_queue(queues[COMMAND_QUEUE], visibility=300)  # as the host holds it while it runs
    return command_id, message


def posts(simulator, path) -> int:
    return len([r for r in simulator.api_calls() if r.method == "POST" and r.path == path and r.status == 201])


def test_deliveries_whose_clocks_disagree_by_minutes_make_one_run(simulator, queues, captured, ledger):
    # GIVEN a command accepted by a front end 3 s ahead, whose first delivery (on a worker 10 s ahead) met a 503
    command_id, message = accepted(queues, ledger, run_command(simulator), datetime.now(UTC) + timedelta(seconds=3))
    simulator.fail_next("POST", "/clashdetection/runs", 503)
    assert instance(simulator, queues, captured, ledger, "ahead", skew=10).handle(message) is Outcome.RESCHEDULED
    assert ledger.get(command_id).lease is None  # a wait gives the lease back
    # WHEN two later deliveries run at once on instances 5 minutes behind and 5 minutes ahead
    workers = [instance(simulator, queues, captured, ledger, n, skew=s) for n, s in (("behind", -300), ("ahead", 300))]
    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(lambda w: w.handle(message), workers))
    # THEN one made the run; the other found it made or the lease held
    assert outcomes.count(Outcome.SUCCEEDED) == 1
    assert len(simulator.runs) == 1
    assert posts(simulator, "/clashdetection/runs") == 1
    assert ledger.get(command_id).resource.id == next(iter(simulator.runs))


def test_a_retry_after_a_failed_enqueue_enqueues_the_command(azurite, queues, ledger):
    # GIVEN a POST whose queue send got no answer: 503 MaybeEnqueued, the row kept, nothing on the queue
    nowhere = connection_string(9)  # a queue endpoint where nothing listens
    broken = QueueClient.from_connection_string(nowhere, COMMAND_QUEUE, retry_total=0)
    command = json.dumps({"action": "delete", "resource": "run", "id": "r1"}).encode()
    first = accept_commands(
        command, None, lambda: CommandQueue(broken, queues[POISON_QUEUE]), lambda: ledger, idempotency_key="k-lost"
    )
    assert (first.status, first.body["error"]["details"][0]["code"]) == (503, "MaybeEnqueued")
    assert on_queue(queues[COMMAND_QUEUE]) == []
    # WHEN the caller retries with the same key
    again = accept_commands(command, None, lambda: queue_of(queues), lambda: ledger, idempotency_key="k-lost")
    # THEN the command goes on the queue now, under the id the key was given
    assert (again.status, again.body["accepted"]) == (202, 1)
    [message] = on_queue(queues[COMMAND_QUEUE])
    command_id = again.body["commands"][0]["id"]
    assert json.loads(message)["commandId"] == command_id
    assert ledger.get(command_id).sent
    # AND a third try is a plain duplicate
    third = accept_commands(command, None, lambda: queue_of(queues), lambda: ledger, idempotency_key="k-lost")
    assert (third.body["accepted"], third.body["commands"][0]["duplicate"]) == (0, True)


def test_the_same_key_at_once_on_both_sides_of_midnight_is_one_command(queues, ledger):
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    times = [midnight - timedelta(milliseconds=1), midnight + timedelta(milliseconds=1)] * 4
    command = validate({"action": "delete", "resource": "run", "id": "r1", "idempotencyKey": "at-midnight"})
    start = threading.Barrier(len(times))

    def post(now):
        start.wait()
        return accept([command], queue_of(queues), ledger, now)

    with ThreadPoolExecutor(len(times)) as pool:
        results = list(pool.map(post, times))
    [command_id] = {r.ids[0] for r in results}
    # Requests that found the row not yet marked sent send it too: more messages, one command (the worker's
    # ledger answers every further delivery already_done)
    messages = [json.loads(m) for m in on_queue(queues[COMMAND_QUEUE])]
    assert len(messages) == sum(r.enqueued[0] for r in results) >= 1
    assert {m["commandId"] for m in messages} == {command_id}
    assert ledger.get(command_id).sent


def test_a_redelivered_fan_out_after_a_child_ran_deletes_every_connection(simulator, queues, captured, ledger):
    connections = [simulator.add_connection(IMODEL, f"c{i}")["id"] for i in range(3)]
    parent, message = accepted(queues, ledger, {"action": "delete", "resource": "connection", "iModelId": IMODEL})
    worker = instance(simulator, queues, captured, ledger, "a")
    assert worker.handle(message) is Outcome.FANNED_OUT
    children = {json.loads(m)["id"]: m for m in on_queue(queues[COMMAND_QUEUE], visibility=60)}
    assert worker.handle(children[connections[0]]) is Outcome.SUCCEEDED  # c0 is gone
    # GIVEN the parent's result was never written (its first delivery died after enqueueing the children)
    assert ledger.finish(parent, Status.QUEUED, datetime.now(UTC), attempts=1, waits=0)
    # WHEN the parent is delivered again
    assert worker.handle(message) is Outcome.FANNED_OUT
    for child in on_queue(queues[COMMAND_QUEUE], visibility=60):
        assert worker.handle(child) in (Outcome.SUCCEEDED, Outcome.ALREADY_DONE)
    for child in children.values():
        assert worker.handle(child) in (Outcome.SUCCEEDED, Outcome.ALREADY_DONE)
    # THEN every connection is deleted, and the parent names all three children, each done
    assert simulator.connections == {}
    record = ledger.get(parent)
    assert sorted(record.children) == sorted(child_id(parent, c) for c in connections)
    assert {ledger.get(c).status for c in record.children} <= {Status.SUCCEEDED, Status.ALREADY_DONE}


def test_rows_after_a_conflicting_transaction_of_a_large_batch_are_all_inserted(ledger):
    parent = new_id(datetime.now(UTC))
    rows = [
        (child_id(parent, f"conn-{i}"), {"action": "delete", "resource": "connection", "id": f"conn-{i}"})
        for i in range(150)
    ]
    ledger.insert_absent([rows[120]], datetime.now(UTC))  # the second transaction of 100 meets this one
    held = ledger.insert_absent(rows, datetime.now(UTC))
    assert list(held) == [rows[120][0]]
    assert all(ledger.get(command_id) is not None for command_id, _ in rows)


def test_a_non_ascii_idempotency_key_header_is_refused_at_the_door(queues, ledger):
    body = json.dumps({"action": "delete", "resource": "run", "id": "r1"}).encode()
    reply = accept_commands(body, None, lambda: queue_of(queues), lambda: ledger, idempotency_key="clé-1")
    assert reply.status == 400
    assert reply.body["error"]["details"][0]["target"] == "Idempotency-Key"
    assert on_queue(queues[COMMAND_QUEUE]) == []


def test_a_dead_letter_of_a_message_naming_its_command_is_recorded_in_its_row(simulator, queues, captured, ledger):
    command_id, message = accepted(queues, ledger, {"action": "delete", "resource": "run", "id": "r1"})
    broken = {**json.loads(message), "idempotencyKey": "clé"}  # what the worker's validator refuses
    assert instance(simulator, queues, captured, ledger, "a").handle(json.dumps(broken)) is Outcome.DEAD_LETTERED
    record = ledger.get(command_id)
    assert record.status is Status.DEAD_LETTERED
    assert record.error["details"][0]["target"] == "idempotencyKey"


def test_a_lost_run_create_answer_is_not_matched_to_an_older_run_of_another_command(
    simulator, queues, captured, ledger
):
    older = simulator.add_run(test_id=TEST_ID, imodel_id=IMODEL, named_version_id=VERSION)  # another command's
    command_id, message = accepted(queues, ledger, run_command(simulator))
    simulator.fail_next("POST", "/clashdetection/runs", 500)  # no clear answer; not carried out
    worker = instance(simulator, queues, captured, ledger, "a")
    assert worker.handle(message) is Outcome.RESCHEDULED
    [again] = on_queue(queues[COMMAND_QUEUE], visibility=60) or _after(queues, 40)
    assert worker.handle(again) is Outcome.SUCCEEDED
    record = ledger.get(command_id)
    assert record.resource.id != older["id"]
    assert set(simulator.runs) == {older["id"], record.resource.id}


def test_a_lost_run_create_answer_without_a_project_is_looked_up_through_the_imodels_itwin(
    simulator, queues, captured, ledger
):
    command_id, message = accepted(queues, ledger, run_command(simulator, project=False))
    simulator.stall_next("POST", "/clashdetection/runs", 2.0)  # carried out, answered after the client gave up
    worker = instance(simulator, queues, captured, ledger, "a", read_timeout=0.5)
    assert worker.handle(message) is Outcome.RESCHEDULED
    time.sleep(1.8)
    [again] = _after(queues, 40)
    assert worker.handle(again) is Outcome.ALREADY_DONE
    [run] = simulator.runs.values()
    assert ledger.get(command_id).resource.id == run["id"]
    assert [r.path for r in simulator.api_calls() if r.method == "GET"].count(f"/imodels/{IMODEL}") == 1
    assert on_queue(queues[POISON_QUEUE]) == []


def _after(queues, seconds) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := on_queue(queues[COMMAND_QUEUE], visibility=60):
            return found
        time.sleep(0.2)
    return []


def test_a_holder_delayed_past_its_lease_does_not_send_the_create(simulator, queues, captured, ledger):
    # GIVEN a holder whose clock passes the lease while it lists the iModel's connections (a paused VM, say)
    clock = ManualClock(1000.0)
    simulator.on_answer = lambda request: clock.advance(LEASE.total_seconds()) if request.method == "GET" else None
    body = {"iModelId": IMODEL, "displayName": "nightly"}
    command_id, message = accepted(queues, ledger, {"action": "create", "resource": "connection", "body": body})
    worker = instance(simulator, queues, captured, ledger, "slow", clock=clock)
    # WHEN it would send the create THEN it gives the command back instead, and frees the lease
    assert worker.handle(message) is Outcome.RESCHEDULED
    assert simulator.connections == {}
    assert ledger.get(command_id).lease is None
    assert len(on_queue(queues[COMMAND_QUEUE])) == 1


def test_a_create_that_lands_after_its_client_gave_up_is_not_made_again_by_another_copy(
    simulator, queues, captured, ledger
):
    # GIVEN a connection create whose answer stalls past the holder's read timeout (the platform makes it later)
    body = {"iModelId": IMODEL, "displayName": "nightly"}
    command_id, message = accepted(queues, ledger, {"action": "create", "resource": "connection", "body": body})
    simulator.stall_next("POST", "/export/connections", 2.0)
    first = instance(simulator, queues, captured, ledger, "a", read_timeout=0.5)
    assert first.handle(message) is Outcome.RESCHEDULED
    # WHEN a copy of the message reaches another instance before the create has landed
    other = instance(simulator, queues, captured, ledger, "b")
    assert other.handle(message) is Outcome.RESCHEDULED
    # THEN it creates nothing: the lease stays with the holder, which hands it over by its own message
    assert simulator.connections == {}
    assert ledger.get(command_id).lease is not None
    handed_over = _handed_over(queues, 40)
    assert other.handle(handed_over) is Outcome.ALREADY_DONE
    [connection] = simulator.connections.values()
    assert ledger.get(command_id).resource.id == connection["id"]
    assert posts(simulator, "/export/connections") == 1  # the stalled one: the hand-over looked it up


def _handed_over(queues, seconds) -> str:
    """The holder's message that hands its lease over (vouched for a whole lease), once it shows."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for message in on_queue(queues[COMMAND_QUEUE], visibility=60):
            if json.loads(message).get("leaseWaited", 0) >= LEASE.total_seconds():
                return message
        time.sleep(0.2)
    raise AssertionError(f"no hand-over message within {seconds} s")


class PausingAfterHold(Ledger):
    """The real ledger, whose first hold stops, once written, until the test lets it go on."""

    def __init__(self, table):
        super().__init__(table)
        self.held = threading.Event()
        self.go_on = threading.Event()

    def hold(self, *args, **kwargs):
        lease = super().hold(*args, **kwargs)
        if not self.held.is_set():
            self.held.set()
            self.go_on.wait(30)
        return lease


def test_a_second_delivery_in_the_same_process_never_takes_over_a_lease_just_held(simulator, queues, captured, ledger):
    # GIVEN a delivery whose hold is written and that has not yet gone on to create
    pausing = PausingAfterHold(ledger.table)
    body = {"iModelId": IMODEL, "displayName": "nightly"}
    command_id, message = accepted(queues, pausing, {"action": "create", "resource": "connection", "body": body})
    worker = instance(simulator, queues, captured, pausing, "one-process")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(worker.handle, message)
        assert pausing.held.wait(10)
        # WHEN the same process handles a copy of the message meanwhile
        second = worker.handle(message)
        pausing.go_on.set()
        # THEN the copy finds the holder at work and goes back to the queue; one connection is made
        assert second is Outcome.RESCHEDULED
        assert first.result(30) is Outcome.SUCCEEDED
    assert len(simulator.connections) == 1
    assert ledger.get(command_id).status is Status.SUCCEEDED


class FailingOnce(Ledger):
    """The real ledger, whose first result write fails as a storage outage would."""

    def __init__(self, table):
        super().__init__(table)
        self.failed = False

    def finish(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise ServiceRequestError("the table service did not answer")
        return super().finish(*args, **kwargs)


def test_a_redelivery_to_the_same_process_after_a_failed_write_records_the_job_it_made(
    simulator, queues, captured, ledger
):
    command_id, message = accepted(queues, ledger, {"action": "create", "resource": "job", "body": JOB_BODY})
    worker = instance(simulator, queues, captured, FailingOnce(ledger.table), "a")
    with pytest.raises(ServiceRequestError):
        worker.handle(message)
    # another instance meanwhile finds the lease held and waits: it does not dead-letter a job it cannot look up
    assert instance(simulator, queues, captured, ledger, "b").handle(message) is Outcome.RESCHEDULED
    assert worker.handle(message) is Outcome.ALREADY_DONE  # the host's redelivery, to the same process
    [job] = simulator.jobs
    record = ledger.get(command_id)
    assert (record.status, record.resource.id, record.lease) == (Status.SUCCEEDED, job, None)
    assert on_queue(queues[POISON_QUEUE]) == []


def test_retention_drops_a_day_a_page_at_a_time_with_its_idempotency_keys_and_resources(queues, ledger):
    now = datetime.now(UTC)
    old = now - timedelta(days=9)
    commands = [validate({"action": "delete", "resource": "run", "id": f"r{i}"}) for i in range(230)]
    for start in range(0, 230, 100):
        accept(commands[start : start + 100], queue_of(queues), ledger, old)
    keyed = validate({"action": "delete", "resource": "run", "id": "rk", "idempotencyKey": "old-key"})
    [old_id] = accept([keyed], queue_of(queues), ledger, old).ids
    made = Resource("realityJob", "9a0f6c1e-3b2d-4c5e-8f7a-6b5c4d3e2f1a")
    ledger.finish(old_id, Status.SUCCEEDED, old, attempts=1, waits=0, resource=made)
    ledger.index_resource(made, old_id)
    assert drop_expired(ledger, retention_days=7, now=now) == 231
    assert ledger.command_of("realityJob", made.id) is None  # the job's index row went with its command
    assert list(ledger.table.query_entities("PartitionKey eq @d", parameters={"d": day_of(old)})) == []
    # the key is free again: a new command under it is a new command
    [new_id_] = accept([keyed], queue_of(queues), ledger, now).ids
    assert new_id_ != old_id
    assert split_id(new_id_)[0] == day_of(now)


class BrokenTransport(requests.adapters.BaseAdapter):
    """A transport with a defect: every request raises something no layer above expects."""

    def send(self, *args, **kwargs):
        raise RuntimeError("a defect on the way")

    def close(self):
        pass


def test_a_message_the_host_poisons_after_its_last_try_is_recorded_dead_lettered(simulator, queues, captured, ledger):
    command_id, message = accepted(queues, ledger, {"action": "delete", "resource": "run", "id": "r1"})
    worker = instance(simulator, queues, captured, ledger, "a")
    worker.api.client.session.mount("https://", BrokenTransport())
    with pytest.raises(RuntimeError):
        worker.handle(message)  # not the last try: the host delivers it again, the row is left as it is
    assert ledger.get(command_id).status is Status.QUEUED
    with pytest.raises(RuntimeError):
        worker.handle(message, last_try=True)
    record = ledger.get(command_id)
    assert (record.status, record.error["code"]) == (Status.DEAD_LETTERED, "InvocationFailed")
    assert "itwin-commands-poison" in record.error["message"]

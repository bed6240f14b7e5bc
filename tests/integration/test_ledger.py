"""The command ledger on Azurite's table service, with workers on the simulator: status, idempotency, and one
effect per command whichever delivery, on whichever instance, gets there."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from app_settings import settings_for
from azure.core.exceptions import AzureError
from ledger_kit import TEST_ID, VERSION, queue_of, run_command
from samples import IMODEL, JOB_BODY

from shared.client import ITwinClient
from shared.commands import validate
from shared.http_api import accept_commands, command_status, receive_webhook
from shared.intake import accept
from shared.ledger import LEASE, Ledger, Status, day_of, new_id
from shared.outcomes import Outcome
from shared.replays import RecentDeliveries
from shared.resources import ITwinApi
from shared.retention import drop_expired
from shared.rules import format_enqueued, load_rules
from shared.runtime import WORKER_POLICY
from shared.settings import COMMAND_QUEUE, POISON_QUEUE, Settings
from shared.signature import sign
from shared.worker import Worker

pytestmark = pytest.mark.integration

SECRET = "w" * 32


def instance(simulator, queues, captured, ledger, name, read_timeout=2.0) -> Worker:
    """A worker as one instance has it: its own client, token cache and pacer; the shared queue and ledger."""
    settings = Settings.from_env(settings_for(simulator))
    client = ITwinClient(settings, telemetry=captured.telemetry, policy=WORKER_POLICY, timeout=(2.0, read_timeout))
    return Worker(
        ITwinApi(client), queue_of(queues), captured.telemetry, max_attempts=8, ledger=ledger, owner=name, settle=3.0
    )


def received(queue_client) -> list[str]:
    # hidden for as long as a test runs: as the host holds a message while its invocation runs
    return [m.content for m in queue_client.receive_messages(messages_per_page=32, visibility_timeout=300)]


def post(queues, ledger, body, **options):
    return accept_commands(json.dumps(body).encode(), None, lambda: queue_of(queues), lambda: ledger, **options)


def test_accepted_commands_get_ids_and_queued_rows_in_one_transaction(queues, ledger):
    reply = post(queues, ledger, [{"action": "delete", "resource": "run", "id": f"r{i}"} for i in range(3)])
    assert (reply.status, reply.body["accepted"]) == (202, 3)
    ids = [c["id"] for c in reply.body["commands"]]
    assert [c["status"] for c in reply.body["commands"]] == [f"/api/commands/{i}" for i in ids]
    assert "Location" not in reply.headers
    assert [ledger.get(i).status for i in ids] == [Status.QUEUED] * 3
    assert sorted(json.loads(m)["commandId"] for m in received(queues[COMMAND_QUEUE])) == sorted(ids)


def test_the_same_idempotency_key_returns_the_first_commands_id_and_enqueues_nothing(queues, ledger):
    command = {"action": "delete", "resource": "run", "id": "r1", "idempotencyKey": "order-42"}
    first = post(queues, ledger, command)
    again = post(queues, ledger, command)
    assert again.body["commands"][0]["id"] == first.body["commands"][0]["id"]
    assert (again.body["accepted"], again.body["commands"][0]["duplicate"]) == (0, True)
    assert len(received(queues[COMMAND_QUEUE])) == 1


def test_the_idempotency_key_header_works_for_one_command_and_a_different_command_is_409(queues, ledger):
    first = post(queues, ledger, {"action": "delete", "resource": "run", "id": "r1"}, idempotency_key="k-1")
    assert first.headers["Location"] == first.body["commands"][0]["status"]
    reused = post(queues, ledger, {"action": "delete", "resource": "run", "id": "r2"}, idempotency_key="k-1")
    assert (reused.status, reused.body["error"]["code"]) == (409, "IdempotencyKeyReused")
    batch = post(queues, ledger, [{"action": "delete", "resource": "run", "id": "r3"}] * 2, idempotency_key="k-2")
    assert batch.status == 400


def test_a_key_used_on_an_earlier_day_is_still_found_within_the_retention_period(queues, ledger):
    earlier = datetime.now(UTC) - timedelta(days=3)
    command = {"action": "delete", "resource": "run", "id": "r1", "idempotencyKey": "from-monday"}
    [key_id] = accept([validate(command)], queue_of(queues), ledger, earlier).ids
    assert key_id.startswith(day_of(earlier))
    reply = post(queues, ledger, command)
    assert reply.body["commands"][0] == {"id": key_id, "status": f"/api/commands/{key_id}", "duplicate": True}


def test_a_webhook_replay_reaching_another_instance_is_refused_by_the_ledger(queues, ledger, simulator):
    body = json.dumps(
        {
            "eventType": "iModels.iModelDeleted.v1",
            "content": {"imodelId": IMODEL},
            "enqueuedDateTime": format_enqueued(datetime.now(UTC)),
            "messageId": "delivery-1",
        }
    ).encode()

    def deliver():  # each call is a fresh instance: nothing remembered in the process
        return receive_webhook(
            body,
            sign(body, SECRET),
            SECRET,
            lambda: load_rules(None),
            {},
            lambda: queue_of(queues),
            RecentDeliveries(),
            ledger=lambda: ledger,
        )

    first, replay = deliver(), deliver()
    assert (first.body["accepted"], replay.body["accepted"], replay.body["duplicate"]) == (1, 0, True)
    assert replay.body["commands"] == first.body["commands"]
    assert len(received(queues[COMMAND_QUEUE])) == 1


def test_the_same_create_delivered_to_two_instances_at_once_makes_one_run(simulator, queues, captured, ledger):
    reply = post(queues, ledger, run_command(simulator))
    [message] = received(queues[COMMAND_QUEUE])
    workers = [instance(simulator, queues, captured, ledger, f"instance-{n}") for n in range(2)]
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda w: w.handle(message), workers))
    # The loser found the claim: it waits and looks again; its next delivery finds the result.
    if Outcome.RESCHEDULED in outcomes:
        time.sleep(0.2)
        [again] = received_after(queues, 12)
        outcomes.remove(Outcome.RESCHEDULED)
        outcomes.append(workers[0].handle(again))
    assert sorted(outcomes) == sorted([Outcome.SUCCEEDED, Outcome.ALREADY_DONE])
    [run] = simulator.runs.values()
    status = command_status(reply.body["commands"][0]["id"], lambda: ledger)
    assert status.body["status"] == "succeeded"
    assert status.body["resource"]["id"] == run["id"]
    assert len([r for r in simulator.api_calls() if r.method == "POST"]) == 1


def received_after(queues, seconds) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := received(queues[COMMAND_QUEUE]):
            return found
        time.sleep(0.2)
    return []


def test_a_later_delivery_of_a_finished_create_calls_nothing_and_answers_the_same_resource(
    simulator, queues, captured, ledger
):
    post(queues, ledger, run_command(simulator))
    [message] = received(queues[COMMAND_QUEUE])
    first = instance(simulator, queues, captured, ledger, "a")
    assert first.handle(message) is Outcome.SUCCEEDED
    calls = len(simulator.api_calls())
    assert instance(simulator, queues, captured, ledger, "b").handle(message) is Outcome.ALREADY_DONE
    assert len(simulator.api_calls()) == calls
    assert len(simulator.runs) == 1


def test_a_run_create_whose_answer_was_lost_is_looked_up_not_repeated(simulator, queues, captured, ledger):
    reply = post(queues, ledger, run_command(simulator))
    [message] = received(queues[COMMAND_QUEUE])
    simulator.stall_next("POST", "/clashdetection/runs", 3.0)  # carried out, answered after the client gave up
    worker = instance(simulator, queues, captured, ledger, "a", read_timeout=1.0)
    assert worker.handle(message) is Outcome.RESCHEDULED
    command_id = reply.body["commands"][0]["id"]
    assert ledger.get(command_id).uncertain
    time.sleep(2.5)
    [again] = received_after(queues, 40)
    assert instance(simulator, queues, captured, ledger, "b").handle(again) is Outcome.ALREADY_DONE
    [run] = simulator.runs.values()
    assert ledger.get(command_id).resource.id == run["id"]
    assert len([r for r in simulator.api_calls() if r.method == "POST"]) == 1
    assert received(queues[POISON_QUEUE]) == []


def abandoned(ledger, command) -> tuple[str, str]:
    """A command accepted ten minutes ago whose create was held by an instance that then died; its id, and its
    message as a delivery that has waited out the lease sees it."""
    accepted = datetime.now(UTC) - timedelta(minutes=10)
    command_id = new_id(accepted)
    ledger.insert_absent([(command_id, {**validate(command).to_message(), "commandId": command_id})], accepted)
    lease = ledger.hold(ledger.get(command_id), "dead", accepted, before=[])
    waited = {"leaseSeen": lease.token, "leaseWaited": int(LEASE.total_seconds())}
    return command_id, json.dumps({**command, "commandId": command_id, **waited})


def test_a_create_whose_holder_died_is_looked_up_and_made_when_it_was_not(simulator, queues, captured, ledger):
    command = run_command(simulator)
    _, message = abandoned(ledger, command)
    assert instance(simulator, queues, captured, ledger, "b").handle(message) is Outcome.SUCCEEDED
    assert [r.method for r in simulator.api_calls()] == ["GET", "POST"]  # looked, found none, created
    assert len(simulator.runs) == 1


def test_a_create_whose_holder_died_after_making_it_is_found_not_repeated(simulator, queues, captured, ledger):
    command = run_command(simulator)
    command_id, message = abandoned(ledger, command)
    made = simulator.add_run(test_id=TEST_ID, imodel_id=IMODEL, named_version_id=VERSION)
    assert instance(simulator, queues, captured, ledger, "b").handle(message) is Outcome.ALREADY_DONE
    assert [r.method for r in simulator.api_calls()] == ["GET"]
    assert ledger.get(command_id).resource.id == made["id"]


def test_a_job_create_whose_holder_died_is_dead_lettered_saying_why_it_cannot_be_looked_up(
    simulator, queues, captured, ledger
):
    command = {"action": "create", "resource": "job", "body": JOB_BODY}
    command_id, message = abandoned(ledger, command)
    outcome = instance(simulator, queues, captured, ledger, "b").handle(message)
    assert outcome is Outcome.DEAD_LETTERED
    [envelope] = [json.loads(m) for m in received(queues[POISON_QUEUE])]
    assert envelope["error"]["code"] == "CreateOutcomeUnknown"
    assert "cannot list jobs" in envelope["error"]["message"]
    assert simulator.jobs == {}
    assert ledger.get(command_id).status is Status.DEAD_LETTERED


def test_a_fresh_claim_held_elsewhere_shows_as_running_and_makes_the_other_delivery_wait(
    simulator, queues, captured, ledger
):
    reply = post(queues, ledger, run_command(simulator))
    [message] = received(queues[COMMAND_QUEUE])
    command_id = reply.body["commands"][0]["id"]
    ledger.hold(ledger.get(command_id), "busy-instance", datetime.now(UTC))
    assert command_status(command_id, lambda: ledger).body["status"] == "running"
    assert instance(simulator, queues, captured, ledger, "b").handle(message) is Outcome.RESCHEDULED
    assert simulator.api_calls() == []


def test_a_fan_out_records_its_children_and_each_child_its_own_result(simulator, queues, captured, ledger):
    ids = {simulator.add_connection(IMODEL, f"c{i}")["id"] for i in range(2)}
    reply = post(queues, ledger, {"action": "delete", "resource": "connection", "iModelId": IMODEL})
    parent = reply.body["commands"][0]["id"]
    worker = instance(simulator, queues, captured, ledger, "a")
    [message] = received(queues[COMMAND_QUEUE])
    assert worker.handle(message) is Outcome.FANNED_OUT
    children = received(queues[COMMAND_QUEUE])
    for child in children:
        assert worker.handle(child) is Outcome.SUCCEEDED
    status = command_status(parent, lambda: ledger).body
    assert (status["status"], len(status["children"])) == ("fanned_out", 2)
    assert {ledger.get(c).status for c in status["children"]} == {Status.SUCCEEDED}
    assert simulator.connections == {}
    assert len(ids) == 2


def test_retention_drops_whole_days_past_the_period_and_keeps_the_rest(ledger):
    now = datetime.now(UTC)
    old, recent = new_id(now - timedelta(days=9)), new_id(now - timedelta(days=2))
    ledger.insert_absent([(old, {"action": "delete", "resource": "run", "id": "a"})], now - timedelta(days=9))
    ledger.insert_absent([(recent, {"action": "delete", "resource": "run", "id": "b"})], now - timedelta(days=2))
    assert drop_expired(ledger, retention_days=7, now=now) == 1
    assert (ledger.get(old), ledger.get(recent).id) == (None, recent)


def unreachable_ledger() -> Ledger:
    """A ledger on a table endpoint where nothing listens, with the SDK's retries off so that it fails at once."""
    return Ledger.from_environment(
        {
            "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        },
        retry_total=0,
    )


def test_when_the_ledger_is_down_a_post_is_503_and_nothing_is_enqueued(queues):
    reply = post(queues, unreachable_ledger(), {"action": "delete", "resource": "run", "id": "r1"})
    assert (reply.status, reply.body["error"]["code"]) == (503, "StorageUnavailable")
    assert received(queues[COMMAND_QUEUE]) == []


def test_when_storage_is_down_the_worker_fails_the_invocation_and_changes_nothing(simulator, queues, captured):
    unreachable = unreachable_ledger()
    worker = instance(simulator, queues, captured, unreachable, "a")
    command = validate(run_command(simulator))
    message = json.dumps({**command.to_message(), "commandId": new_id(datetime.now(UTC))})
    with pytest.raises(AzureError, match=r"(?i)connect|refused"):
        worker.handle(message)
    assert simulator.runs == {}
    assert received(queues[POISON_QUEUE]) == []
    assert received(queues[COMMAND_QUEUE]) == []


class RacingLedger(Ledger):
    """The real ledger, with another delivery's write landing between this delivery's read and its result."""

    def __init__(self, table, status):
        super().__init__(table)
        self.status_written = status
        self.raced = False

    def get(self, command_id):
        record = super().get(command_id)
        if not self.raced and record is not None:
            self.raced = True
            super().finish(command_id, self.status_written, datetime.now(UTC), attempts=1, waits=1, etag=record.etag)
        return record


@pytest.mark.parametrize("other", [Status.RESCHEDULED, Status.ALREADY_DONE])
def test_the_delivery_that_did_a_delete_has_the_last_word_over_a_copy_that_waited_or_found_it_done(
    simulator, queues, captured, ledger, other
):
    run = simulator.add_run()
    reply = post(queues, ledger, {"action": "delete", "resource": "run", "id": run["id"]})
    [message] = received(queues[COMMAND_QUEUE])
    racing = RacingLedger(ledger.table, other)
    assert instance(simulator, queues, captured, racing, "a").handle(message) is Outcome.SUCCEEDED
    assert ledger.get(reply.body["commands"][0]["id"]).status is Status.SUCCEEDED


def test_a_copy_that_only_waited_never_overwrites_a_final_result(simulator, queues, captured, ledger):
    simulator.fail_next("DELETE", "/clashdetection/runs/", 429, headers={"Retry-After": "1"})
    reply = post(queues, ledger, {"action": "delete", "resource": "run", "id": "gone-run"})
    [message] = received(queues[COMMAND_QUEUE])
    racing = RacingLedger(ledger.table, Status.SUCCEEDED)
    assert instance(simulator, queues, captured, racing, "a").handle(message) is Outcome.RESCHEDULED
    assert ledger.get(reply.body["commands"][0]["id"]).status is Status.SUCCEEDED

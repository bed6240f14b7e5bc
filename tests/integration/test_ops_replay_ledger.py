"""``python -m ops poison replay`` of commands the command ledger tracks, against Azurite (queues and table) and
the simulator, with commands accepted by the app's intake and dead-lettered by its worker: the ledger row goes back
to ``queued`` before the command is sent, so the worker carries it out again under the same id."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from app_settings import settings_for
from ops_helpers import replay_killed_half_way_and_again, run_ops, write_settings
from samples import IMODEL

from ops.dead_letters import parse_dead_letter, token_in
from shared.client import ITwinClient
from shared.http_api import accept_commands, command_status
from shared.ledger import Status, new_id
from shared.outcomes import Outcome
from shared.poison import encode_envelope
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.runtime import WORKER_POLICY
from shared.settings import COMMAND_QUEUE, POISON_QUEUE, Settings
from shared.telemetry import Telemetry
from shared.worker import Worker

pytestmark = pytest.mark.integration

RUN_BODY = {"testId": "t-1", "iModelId": IMODEL, "namedVersionId": "v-1"}


@pytest.fixture
def settings(tmp_path, simulator, azurite, ledger):
    values = {**settings_for(simulator), "AzureWebJobsStorage": azurite.connection_string}
    return write_settings(tmp_path / "local.settings.json", values)


@pytest.fixture
def queue(queues) -> CommandQueue:
    return CommandQueue(queues[COMMAND_QUEUE], queues[POISON_QUEUE])


@pytest.fixture
def worker(simulator, queue, ledger) -> Worker:
    client = ITwinClient(Settings.from_env(settings_for(simulator)), policy=WORKER_POLICY, timeout=(2.0, 2.0))
    return Worker(ITwinApi(client), queue, Telemetry(), max_attempts=8, ledger=ledger)


def post(queue, ledger, command) -> str:
    """``command`` accepted by the app's intake: its id."""
    reply = accept_commands(json.dumps(command).encode(), None, lambda: queue, lambda: ledger)
    assert reply.status == 202, reply.body
    return reply.body["commands"][0]["id"]


def deliver(worker, queues) -> Outcome:
    """The worker takes the next command off itwin-commands, as the host would."""
    [message] = queues[COMMAND_QUEUE].receive_messages(max_messages=1, visibility_timeout=5)
    outcome = worker.handle(message.content)
    queues[COMMAND_QUEUE].delete_message(message)
    return outcome


def on_queue(client) -> list:
    return [json.loads(m.content) for m in client.peek_messages(max_messages=32)]


def dead_lettered_run_create(simulator, queue, queues, ledger, worker) -> str:
    """A run create refused with 422 (say, the test was misconfigured): dead-lettered, its row final."""
    simulator.add_imodel(IMODEL, simulator.itwin_id)
    command_id = post(queue, ledger, {"action": "create", "resource": "run", "body": RUN_BODY})
    simulator.fail_next("POST", "/clashdetection/runs", 422)
    assert deliver(worker, queues) is Outcome.DEAD_LETTERED
    assert ledger.get(command_id).status is Status.DEAD_LETTERED
    return command_id


def forbidden_delete(simulator, queue, queues, ledger, worker) -> str:
    """The delete of an existing run, refused with 403: dead-lettered, its row final."""
    run = simulator.add_run(test_id="t-1", imodel_id=IMODEL, named_version_id="v-1")
    command_id = post(queue, ledger, {"action": "delete", "resource": "run", "id": run["id"]})
    simulator.fail_next("DELETE", "/clashdetection/runs/", 403)
    assert deliver(worker, queues) is Outcome.DEAD_LETTERED
    return command_id


def test_a_dead_lettered_create_replayed_after_the_cause_is_fixed_succeeds_under_its_id_with_one_create(
    settings, simulator, queue, queues, ledger, worker
):
    command_id = dead_lettered_run_create(simulator, queue, queues, ledger, worker)

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 0, result.out + result.err
    assert "ledger row dead_lettered, set back to queued" in result.out
    requeued = ledger.get(command_id)
    assert (requeued.status, requeued.attempts, requeued.waits) == (Status.QUEUED, 0, 0)
    assert requeued.error["status"] == 422  # the last error stays until a result replaces the row's status
    [resent] = on_queue(queues[COMMAND_QUEUE])
    assert resent["commandId"] == command_id
    assert requeued.requeued_by == token_in(resent)
    assert (requeued.holder, requeued.lease) == (None, None)

    assert deliver(worker, queues) is Outcome.SUCCEEDED  # not already_done: the worker carried it out

    [run] = simulator.runs.values()
    answer = command_status(command_id, lambda: ledger).body
    assert (answer["status"], answer["resource"]["id"], answer["attempts"]) == ("succeeded", run["id"], 1)
    creates = [r for r in simulator.api_calls() if r.method == "POST" and r.path == "/clashdetection/runs"]
    assert [r.status for r in creates] == [422, 201]  # the refused one, then the one create
    assert json.loads(run_ops(settings, "commands", "show", command_id, "--json").out)["status"] == "succeeded"
    assert on_queue(queues[POISON_QUEUE]) == []


def test_a_dead_letter_whose_command_succeeded_meanwhile_is_kept_and_not_replayed(
    settings, simulator, queue, queues, ledger, worker
):
    command_id = forbidden_delete(simulator, queue, queues, ledger, worker)
    row = ledger.get(command_id)
    ledger.finish(command_id, Status.SUCCEEDED, datetime.now(UTC), attempts=1, waits=0, etag=row.etag)

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 3
    assert "its ledger row is succeeded since" in result.out
    assert f"python -m ops commands show {command_id}" in result.out
    assert "replayed 0, kept 1 that cannot be replayed as they are." in result.out
    assert on_queue(queues[COMMAND_QUEUE]) == []
    assert len(on_queue(queues[POISON_QUEUE])) == 1
    assert ledger.get(command_id).status is Status.SUCCEEDED


def test_a_command_from_another_producer_replays_as_before_beside_a_ledgered_one(
    settings, simulator, queue, queues, ledger, worker
):
    command_id = forbidden_delete(simulator, queue, queues, ledger, worker)
    other_run = simulator.add_run(test_id="t-2", imodel_id=IMODEL, named_version_id="v-1")
    untracked = {"action": "delete", "resource": "run", "id": other_run["id"], "correlationId": "elsewhere-7"}
    simulator.fail_next("DELETE", "/clashdetection/runs/", 403)
    queues[COMMAND_QUEUE].send_message(json.dumps(untracked))
    assert deliver(worker, queues) is Outcome.DEAD_LETTERED

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 0, result.out + result.err
    resent = {m.get("commandId"): m for m in on_queue(queues[COMMAND_QUEUE])}
    assert set(resent) == {command_id, None}
    assert resent[None]["correlationId"].startswith("elsewhere-7/replay-")
    assert {k: v for k, v in resent[None].items() if k != "correlationId"} == {
        k: v for k, v in untracked.items() if k != "correlationId"
    }
    assert ledger.get(command_id).status is Status.QUEUED
    assert [deliver(worker, queues), deliver(worker, queues)] == [Outcome.SUCCEEDED, Outcome.SUCCEEDED]
    assert simulator.runs == {}


def interrupt(queues, ledger, *, requeued: bool, sent: bool) -> str:
    """Leave the one dead letter as a replay killed after marking it leaves it (and after setting its row back to
    queued, and sending the command, when asked): its poison message id."""
    [message] = queues[POISON_QUEUE].receive_messages(max_messages=1, visibility_timeout=1)
    letter = parse_dead_letter(message.id, message.content)
    queues[POISON_QUEUE].update_message(message, content=letter.marked(datetime.now(UTC)), visibility_timeout=0)
    if requeued:
        command_id = letter.command.command_id
        assert ledger.requeue(command_id, datetime.now(UTC), ledger.get(command_id).etag, requeued_by=letter.token)
    if sent:
        queues[COMMAND_QUEUE].send_message(json.dumps(letter.replay_message()))
    return message.id


def test_an_interrupted_replay_that_never_set_the_row_back_is_replayed_without_asking(
    settings, simulator, queue, queues, ledger, worker
):
    command_id = forbidden_delete(simulator, queue, queues, ledger, worker)
    letter_id = interrupt(queues, ledger, requeued=False, sent=False)

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 0, result.out
    assert f"replayed  {letter_id[:8]}" in result.out
    assert [m["commandId"] for m in on_queue(queues[COMMAND_QUEUE])] == [command_id]
    assert deliver(worker, queues) is Outcome.SUCCEEDED


def test_an_interrupted_replay_that_set_the_row_back_is_sent_again_and_the_ledger_keeps_one_effect(
    settings, simulator, queue, queues, ledger, worker
):
    command_id = dead_lettered_run_create(simulator, queue, queues, ledger, worker)
    interrupt(queues, ledger, requeued=True, sent=True)  # sent, and still on the queue beyond where peeks reach...
    [first] = queues[COMMAND_QUEUE].receive_messages(max_messages=1, visibility_timeout=30)  # ...or being worked on

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 0, result.out
    assert "sent again; the ledger keeps it to one effect" in result.out
    assert on_queue(queues[POISON_QUEUE]) == []
    assert worker.handle(first.content) is Outcome.SUCCEEDED
    assert deliver(worker, queues) is Outcome.ALREADY_DONE
    assert len(simulator.runs) == 1
    assert ledger.get(command_id).status is Status.SUCCEEDED


def test_an_interrupted_replay_whose_command_the_worker_finished_is_settled_by_the_ledger(
    settings, simulator, queue, queues, ledger, worker
):
    command_id = forbidden_delete(simulator, queue, queues, ledger, worker)
    letter_id = interrupt(queues, ledger, requeued=True, sent=True)
    assert deliver(worker, queues) is Outcome.SUCCEEDED  # nothing of it is left on the queues

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 0, result.out
    assert f"settled   {letter_id[:8]}  delete run: an earlier run sent it and the worker has had it since" in (
        result.out
    )
    assert on_queue(queues[COMMAND_QUEUE]) == []
    assert on_queue(queues[POISON_QUEUE]) == []
    assert ledger.get(command_id).status is Status.SUCCEEDED


def test_a_dry_run_says_the_row_would_go_back_to_queued_and_changes_nothing(
    settings, simulator, queue, queues, ledger, worker
):
    command_id = forbidden_delete(simulator, queue, queues, ledger, worker)

    result = run_ops(settings, "poison", "replay", "--all", "--dry-run")

    assert result.code == 0
    assert "delete run          replay (ledger row dead_lettered, set back to queued)" in result.out
    assert ledger.get(command_id).status is Status.DEAD_LETTERED
    assert on_queue(queues[COMMAND_QUEUE]) == []


def test_a_replay_of_ledgered_commands_killed_half_way_and_run_again_sets_each_row_back_and_sends_each_once(
    settings, queue, queues, ledger
):
    now = datetime.now(UTC)
    commands = {new_id(now): {"action": "delete", "resource": "run", "id": f"r-{n}"} for n in range(24)}
    ledger.insert_absent([(i, {**c, "commandId": i}) for i, c in commands.items()], now)
    error = {"status": 403, "code": "InsufficientPermissions", "message": "no", "target": None, "details": []}
    for command_id, command in commands.items():  # as the worker dead-letters them (it does so in the tests above)
        ledger.finish(command_id, Status.DEAD_LETTERED, now, attempts=1, waits=0, error=error)
        message = {**command, "commandId": command_id}
        queue.dead_letter(encode_envelope(message, error, attempts=1, failed_at=now.isoformat()))
    ids = list(commands)

    second = replay_killed_half_way_and_again(settings, queues[COMMAND_QUEUE], len(ids))

    assert second.code == 0, second.out + second.err
    resent = on_queue(queues[COMMAND_QUEUE])
    assert sorted(m["commandId"] for m in resent) == sorted(ids)  # each exactly once
    rows = {command_id: ledger.get(command_id) for command_id in ids}
    assert {row.status for row in rows.values()} == {Status.QUEUED}
    assert all(rows[m["commandId"]].requeued_by == token_in(m) for m in resent)
    assert queues[POISON_QUEUE].get_queue_properties().approximate_message_count == 0
    assert "Traceback" not in second.err

"""``python -m ops poison ...`` against Azurite and the simulator, with dead letters made by the real worker."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from app_settings import settings_for
from ops_helpers import replay_killed_half_way_and_again, run_ops, write_settings
from samples import IMODEL, JOB_BODY

from ops.output import Output
from ops.poison_queue import Queues
from ops.replay import Replayer
from shared.client import ITwinClient
from shared.outcomes import Outcome
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.runtime import WORKER_POLICY
from shared.settings import COMMAND_QUEUE, POISON_QUEUE, Settings
from shared.telemetry import Telemetry
from shared.worker import Worker

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path, simulator, azurite, queues):
    values = {**settings_for(simulator), "AzureWebJobsStorage": azurite.connection_string}
    return write_settings(tmp_path / "local.settings.json", values)


@pytest.fixture
def worker(simulator, queues):
    client = ITwinClient(Settings.from_env(settings_for(simulator)), policy=WORKER_POLICY, timeout=(2.0, 2.0))
    queue = CommandQueue(queues[COMMAND_QUEUE], queues[POISON_QUEUE])
    return Worker(ITwinApi(client), queue, Telemetry(), max_attempts=8)


def on_queue(client) -> list:
    return [json.loads(m.content) for m in client.peek_messages(max_messages=32)]


def dead_letter(worker, simulator, command, status, path, method="*"):
    simulator.fail_next(method, path, status)
    assert worker.handle(json.dumps(command)) is Outcome.DEAD_LETTERED


def forbidden_delete(worker, simulator, correlation_id="evt-1"):
    connection = simulator.add_connection(IMODEL, "nightly")
    command = {"action": "delete", "resource": "connection", "id": connection["id"], "correlationId": correlation_id}
    dead_letter(worker, simulator, command, 403, "/export/connections/")
    return connection, command


def test_list_shows_each_dead_letter_in_a_table_and_as_json(settings, worker, simulator, queues):
    forbidden_delete(worker, simulator)
    worker.handle(b'{"action": "delete", "resource": "job", "id": "not-a-guid"}')

    table = run_ops(settings, "poison", "list")
    listed = json.loads(run_ops(settings, "poison", "list", "--json").out)

    assert table.code == 0
    header, forbidden, invalid = table.out.splitlines()[:3]
    assert header.split() == ["FAILED", "AT", "ID", "COMMAND", "CODE", "ATTEMPTS", "REPLAY", "EXPIRES", "IN", "MESSAGE"]
    assert "delete connection  InsufficientPermissions  1         yes" in forbidden
    assert "delete job         InvalidCommand           1         no" in invalid
    assert "2 dead letter(s), 1 replayable" in table.out
    assert [(x["code"], x["replayable"]) for x in listed] == [
        ("InsufficientPermissions", True),
        ("InvalidCommand", False),
    ]
    assert len(on_queue(queues[POISON_QUEUE])) == 2  # listing changed nothing


def test_show_gives_the_whole_envelope_by_id_prefix_and_an_unknown_id_is_a_clear_error(settings, worker, simulator):
    forbidden_delete(worker, simulator)
    [letter] = json.loads(run_ops(settings, "poison", "list", "--json").out)

    shown = run_ops(settings, "poison", "show", letter["id"][:6])
    unknown = run_ops(settings, "poison", "show", "ffffffff")

    assert shown.code == 0
    assert f"id          {letter['id']}" in shown.out
    assert '"code": "InsufficientPermissions"' in shown.out
    assert (unknown.code, unknown.out) == (2, "")
    assert "no dead letter has the id 'ffffffff'" in unknown.err
    assert "Traceback" not in unknown.err


def test_a_replayed_command_goes_back_once_without_its_attempts_and_then_succeeds(settings, worker, simulator, queues):
    connection, command = forbidden_delete(worker, simulator)
    [letter] = json.loads(run_ops(settings, "poison", "list", "--json").out)

    result = run_ops(settings, "poison", "replay", letter["id"][:8])

    assert result.code == 0
    assert f"replayed  {letter['id'][:8]}  delete connection  (was InsufficientPermissions after 1 attempt(s))" in (
        result.out
    )
    assert on_queue(queues[POISON_QUEUE]) == []
    [resent] = on_queue(queues[COMMAND_QUEUE])
    assert resent == {**command, "correlationId": f"evt-1/replay-{letter['id']}"}
    [message] = queues[COMMAND_QUEUE].receive_messages(max_messages=1)
    assert worker.handle(message.content) is Outcome.SUCCEEDED  # the permission was fixed meanwhile
    assert connection["id"] not in simulator.connections


def test_a_replayed_command_never_expires_as_the_apps_own_sends_do(settings, worker, simulator, queues):
    forbidden_delete(worker, simulator)

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 0
    [resent] = queues[COMMAND_QUEUE].peek_messages()
    assert resent.expires_on > datetime.now(UTC) + timedelta(days=365)  # not the queue's default 7 days


def test_a_replay_that_fails_again_while_the_worker_runs_is_dead_lettered_once_and_not_replayed_round(
    settings, worker, simulator, queues
):
    missing_job = {"action": "submit", "resource": "job", "id": "0e7f2f1a-7a0b-4c38-b0c5-9b5a6d1a2b3c"}
    assert worker.handle(json.dumps(missing_job)) is Outcome.DEAD_LETTERED  # 404 JobNotFound
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            for message in queues[COMMAND_QUEUE].receive_messages(max_messages=8, visibility_timeout=5):
                worker.handle(message.content)
                queues[COMMAND_QUEUE].delete_message(message)
            stop.wait(0.02)

    consumer = threading.Thread(target=work)
    consumer.start()
    try:
        result = run_ops(settings, "poison", "replay", "--all", "--wait", "2")
        deadline = time.monotonic() + 5
        while queues[POISON_QUEUE].get_queue_properties().approximate_message_count < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        consumer.join()

    assert result.code == 0
    assert result.out.count("replayed  ") == 1
    [again] = on_queue(queues[POISON_QUEUE])
    assert again["message"]["correlationId"].startswith("replay-")
    shown = run_ops(settings, "poison", "show", queues[POISON_QUEUE].peek_messages()[0].id)
    assert "which failed again" in shown.out


def test_a_dry_run_says_what_would_happen_and_changes_nothing(settings, worker, simulator, queues):
    forbidden_delete(worker, simulator)
    worker.handle(b"not json")

    result = run_ops(settings, "poison", "replay", "--all", "--dry-run")

    assert result.code == 0
    assert "dry run: 2 dead letter(s); nothing is changed" in result.out
    assert "delete connection   replay" in result.out
    assert "refused: the original message is not JSON" in result.out
    assert len(on_queue(queues[POISON_QUEUE])) == 2
    assert on_queue(queues[COMMAND_QUEUE]) == []


def test_replay_without_a_selection_or_with_a_bad_filter_is_refused(settings):
    nothing = run_ops(settings, "poison", "replay")
    bad_age = run_ops(settings, "poison", "replay", "--older-than", "yesterday")
    assert (nothing.code, bad_age.code) == (2, 2)
    assert "say which dead letters to replay" in nothing.err
    assert "'yesterday' is not an age" in bad_age.err


def test_malformed_truncated_and_host_moved_messages_are_shown_and_only_commands_replayed(settings, queues):
    poison = queues[POISON_QUEUE]
    poison.send_message("{not json")
    truncated = {"message": '{"action": "delete", "resource": "run", "id": "r' + "x" * 80 + "…(truncated)"}
    error = {"status": 400, "code": "InvalidCommand", "message": "too long", "target": None, "details": []}
    poison.send_message(json.dumps({**truncated, "error": error, "attempts": 1, "failedAt": "2026-11-23T08:00:00Z"}))
    poison.send_message(json.dumps({"action": "delete", "resource": "run", "id": "r-1"}))  # moved by the host

    listing = run_ops(settings, "poison", "list")
    result = run_ops(settings, "poison", "replay", "--all")

    assert "Malformed" in listing.out
    assert "MovedByHost" in listing.out
    assert result.code == 3
    assert "it is not JSON; it cannot be replayed" in result.out
    assert "was cut when it was dead-lettered" in result.out
    assert "replayed 1, kept 2 that cannot be replayed as they are." in result.out
    [resent] = on_queue(queues[COMMAND_QUEUE])
    assert (resent["resource"], resent["id"]) == ("run", "r-1")
    assert len(poison.peek_messages(max_messages=32)) == 2


def test_an_unknown_create_is_looked_up_first_and_replayed_only_when_absent(settings, worker, simulator, queues):
    simulator.add_imodel(IMODEL)
    run_body = {"testId": "t-1", "iModelId": IMODEL, "namedVersionId": "nv-1"}
    last_attempt = {"action": "create", "resource": "run", "body": run_body, "attempt": 8}
    dead_letter(worker, simulator, last_attempt, 500, "/clashdetection/")
    dead_letter(worker, simulator, {"action": "create", "resource": "job", "body": JOB_BODY}, 500, "/contextcapture/")
    codes = [x["code"] for x in json.loads(run_ops(settings, "poison", "list", "--json").out)]
    assert codes == ["CreateOutcomeUnknown", "CreateOutcomeUnknown"]

    unchecked = run_ops(settings, "poison", "replay", "--code", "CreateOutcomeUnknown")
    assert unchecked.code == 3
    assert "give --itwin-id (the iModel's iTwin) to check" in unchecked.out
    assert "ContextCapture v1 jobs cannot be listed" in unchecked.out
    assert on_queue(queues[COMMAND_QUEUE]) == []

    simulator.add_run(test_id="t-1", imodel_id=IMODEL, named_version_id="nv-1")  # the lost create did happen
    found = run_ops(settings, "poison", "replay", "--command", "run", "--itwin-id", simulator.itwin_id)
    assert "refused: it exists (project" in found.out
    assert on_queue(queues[COMMAND_QUEUE]) == []

    forced = run_ops(settings, "poison", "replay", "--command", "job", "--force")
    assert forced.code == 0
    assert [m["resource"] for m in on_queue(queues[COMMAND_QUEUE])] == ["job"]


def test_an_unknown_connection_create_is_replayed_when_the_imodel_has_no_such_connection(settings, simulator, queues):
    simulator.add_connection(IMODEL, "weekly")
    body = {"iModelId": IMODEL, "displayName": "nightly"}
    error = {"status": 500, "code": "CreateOutcomeUnknown", "message": "?", "target": None, "details": []}
    envelope = {"message": {"action": "create", "resource": "connection", "body": body}, "error": error, "attempts": 1}
    queues[POISON_QUEUE].send_message(json.dumps({**envelope, "failedAt": "2026-11-23T08:00:00Z"}))

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 0
    assert (
        "checked: iModel a0471655-6b18-419e-ab01-ebf4fbff9dff has 1 connection(s), none named 'nightly'" in result.out
    )
    assert [m["body"] for m in on_queue(queues[COMMAND_QUEUE])] == [body]


def interrupted(queues, worker, simulator) -> tuple[str, dict]:
    """A dead letter as a replay killed between marking it and deleting it leaves it."""
    from ops.dead_letters import parse_dead_letter

    forbidden_delete(worker, simulator)
    [message] = queues[POISON_QUEUE].receive_messages(max_messages=1, visibility_timeout=1)
    letter = parse_dead_letter(message.id, message.content)
    queues[POISON_QUEUE].update_message(message, content=letter.marked(letter.failed_at), visibility_timeout=0)
    return message.id, letter.replay_message()


def test_an_interrupted_replay_whose_command_is_on_the_queue_is_settled_without_sending_again(
    settings, worker, simulator, queues
):
    letter_id, command = interrupted(queues, worker, simulator)
    queues[COMMAND_QUEUE].send_message(json.dumps(command))  # it had been sent

    result = run_ops(settings, "poison", "replay", "--all")

    assert result.code == 0
    assert f"settled   {letter_id[:8]}" in result.out
    assert on_queue(queues[COMMAND_QUEUE]) == [command]
    assert on_queue(queues[POISON_QUEUE]) == []


def test_an_interrupted_replay_without_a_trace_is_kept_until_the_operator_says_resend(
    settings, worker, simulator, queues
):
    letter_id, command = interrupted(queues, worker, simulator)

    kept = run_ops(settings, "poison", "replay", "--all")
    listed = run_ops(settings, "poison", "list")
    resent = run_ops(settings, "poison", "replay", letter_id[:8], "--resend-interrupted")

    assert kept.code == 3
    assert "either processed already or never sent" in kept.out
    assert "interrupted" in listed.out
    assert resent.code == 0
    assert on_queue(queues[COMMAND_QUEUE]) == [command]
    assert on_queue(queues[POISON_QUEUE]) == []


def test_purge_asks_first_and_deletes_only_what_was_chosen(settings, worker, simulator, queues):
    forbidden_delete(worker, simulator)
    worker.handle(b"not json")

    unconfirmed = run_ops(settings, "poison", "purge", "--code", "InvalidRequestBody")
    dry = run_ops(settings, "poison", "purge", "--all", "--dry-run")
    purged = run_ops(settings, "poison", "purge", "--code", "InvalidRequestBody", "--yes")

    assert unconfirmed.code == 2
    assert "confirm with --yes" in unconfirmed.err
    assert "dry run: would delete 2 dead letter(s)" in dry.out
    assert purged.code == 0
    assert "deleted 1 dead letter(s)" in purged.out
    assert [m["error"]["code"] for m in on_queue(queues[POISON_QUEUE])] == ["InsufficientPermissions"]


def test_more_dead_letters_than_one_peek_shows_are_all_listed_and_left_visible(settings, queues):
    for n in range(40):
        queues[POISON_QUEUE].send_message(json.dumps({"action": "delete", "resource": "run", "id": f"r-{n}"}))

    listed = json.loads(run_ops(settings, "poison", "list", "--json").out)

    assert len(listed) == 40
    assert len(queues[POISON_QUEUE].peek_messages(max_messages=32)) == 32  # released at once, not in 30 s


def test_storage_that_refuses_the_key_is_a_clear_error_not_a_traceback(tmp_path, azurite, queues):
    wrong_key = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA")
    settings = write_settings(tmp_path / "local.settings.json", {"AzureWebJobsStorage": wrong_key})

    result = run_ops(settings, "poison", "list")

    assert result.code == 1
    assert "storage refused to let you read the poison queue (403" in result.err
    assert "Traceback" not in result.err


def test_missing_storage_settings_are_named_with_where_they_were_looked_for(tmp_path):
    result = run_ops(tmp_path / "local.settings.json", "poison", "list")
    assert result.code == 2
    assert "AzureWebJobsStorage is not set" in result.err
    assert f"(there is no {tmp_path / 'local.settings.json'})" in result.err


def test_a_replay_killed_half_way_and_run_again_loses_nothing_and_doubles_nothing(settings, queues):
    commands = [{"action": "delete", "resource": "run", "id": f"r-{n}"} for n in range(24)]
    error = {"status": 403, "code": "InsufficientPermissions", "message": "no", "target": None, "details": []}
    for command in commands:
        envelope = {"message": command, "error": error, "attempts": 1, "failedAt": "2026-11-23T08:00:00Z"}
        queues[POISON_QUEUE].send_message(json.dumps(envelope))

    second = replay_killed_half_way_and_again(settings, queues[COMMAND_QUEUE], len(commands))

    assert second.code == 0, second.out + second.err
    resent = on_queue(queues[COMMAND_QUEUE])
    assert sorted(m["id"] for m in resent) == sorted(c["id"] for c in commands)  # each exactly once
    assert len({m["correlationId"] for m in resent}) == len(commands)
    assert on_queue(queues[POISON_QUEUE]) == []
    assert queues[POISON_QUEUE].get_queue_properties().approximate_message_count == 0
    assert "Traceback" not in second.err


def slow_receives(queue, delay: float):
    """``queue`` (a ``QueueClient``) whose receives each take ``delay`` seconds more, as over a slow link: a pass over
    a few hundred dead letters then outlives a 1 s lease, as one over 100,000 outlives the usual 30 s."""

    class SlowReceives:
        def __getattr__(self, name):
            return getattr(queue, name)

        def receive_messages(self, **kwargs):
            time.sleep(delay)
            return queue.receive_messages(**kwargs)

    return SlowReceives()


def many_dead_letters(poison, count: int, code: str = "InsufficientPermissions") -> None:
    error = {"status": 403, "code": code, "message": "no", "target": None, "details": []}
    for n in range(count):
        command = {"action": "delete", "resource": "run", "id": f"{code}-{n}"}
        envelope = {"message": command, "error": error, "attempts": 1, "failedAt": "2026-11-23T08:00:00Z"}
        poison.send_message(json.dumps(envelope))


def ends_within(seconds: float, work):
    """``work()``'s result, asserting it returned within ``seconds`` (run in a thread, so a loop fails the test)."""
    results = []
    worker = threading.Thread(target=lambda: results.append(work()), daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), f"still going after {seconds} s: the pass goes round and round"
    return results[0]


def test_a_pass_that_outlives_its_lease_stops_at_the_first_letter_it_sees_again(queues):
    # GIVEN 300 dead letters, and receives so slow (0.5 s for 32) that a pass outlives a 1 s lease
    many_dead_letters(queues[POISON_QUEUE], 300)
    slow = Queues(slow_receives(queues[POISON_QUEUE], 0.5), queues[COMMAND_QUEUE])

    # WHEN a pass receives them 32 at a time under that lease
    received = ends_within(30, lambda: [leased.letter.id for leased in slow.leases(lease=1, batch=32)])

    # THEN it ends, each letter received once, and every letter is visible again at once
    assert len(set(received)) == len(received) <= 300
    assert queues[POISON_QUEUE].get_queue_properties().approximate_message_count == 300


def test_a_scan_takes_a_lease_long_enough_to_see_every_letter_once(queues):
    many_dead_letters(queues[POISON_QUEUE], 300)
    slow = Queues(slow_receives(queues[POISON_QUEUE], 0.3), queues[COMMAND_QUEUE])

    letters = ends_within(30, lambda: slow.scan(lease=1))

    assert len({letter.id for letter in letters}) == len(letters) == 300
    assert len(queues[POISON_QUEUE].peek_messages(max_messages=32)) == 32  # released at once, not in 30 s


def test_a_replay_and_a_purge_whose_passes_outlive_the_lease_end_having_done_everything(queues):
    # GIVEN 200 dead letters to keep and 100 to replay, then 100 to purge; receives slow enough (0.15 s for 8)
    # that a pass outlives a 1 s lease, so the kept ones come round during it
    many_dead_letters(queues[POISON_QUEUE], 200, code="KeepMe")
    many_dead_letters(queues[POISON_QUEUE], 100)
    slow = Queues(slow_receives(queues[POISON_QUEUE], 0.15), queues[COMMAND_QUEUE])
    letters = slow.scan()
    chosen = [letter for letter in letters if letter.code == "InsufficientPermissions"]
    replayer = Replayer(slow, None, Output(io.StringIO(), io.StringIO(), interactive=False), lease=1, wait=2)

    # WHEN they are replayed
    report = ends_within(60, lambda: replayer.run(chosen, letters))

    # THEN each is replayed once and the kept ones stay
    assert len(report.replayed) == 100
    assert report.missing == 0
    assert queues[COMMAND_QUEUE].get_queue_properties().approximate_message_count == 100
    assert queues[POISON_QUEUE].get_queue_properties().approximate_message_count == 200

    # AND WHEN the kept ones are purged on the same slow queue, with a 1 s lease
    many_dead_letters(queues[POISON_QUEUE], 100, code="PurgeMe")
    doomed = {letter.id for letter in slow.scan() if letter.code == "PurgeMe"}
    deleted = ends_within(60, lambda: slow.purge(doomed, Output(io.StringIO(), io.StringIO()).progress(0, "purge")))

    # THEN each is deleted and the others stay
    assert deleted == 100
    assert queues[POISON_QUEUE].get_queue_properties().approximate_message_count == 200

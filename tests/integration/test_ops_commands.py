"""``python -m ops commands show|list`` against Azurite's table service, with rows made by the app's own intake and
worker on the simulator, and rows recorded on earlier days."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from app_settings import settings_for
from ops_helpers import ops_process, run_ops, write_settings
from samples import IMODEL

from shared.client import ITwinClient
from shared.http_api import accept_commands, command_status
from shared.ledger import Resource, Status, new_id
from shared.outcomes import Outcome
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.runtime import WORKER_POLICY
from shared.settings import COMMAND_QUEUE, POISON_QUEUE, Settings
from shared.telemetry import Telemetry
from shared.worker import Worker

pytestmark = pytest.mark.integration

FORBIDDEN = {"status": 403, "code": "InsufficientPermissions", "message": "Not allowed.", "target": None, "details": []}


@pytest.fixture
def settings(tmp_path, simulator, azurite, ledger):
    values = {**settings_for(simulator), "AzureWebJobsStorage": azurite.connection_string}
    return write_settings(tmp_path / "local.settings.json", values)


def accepted_and_run(simulator, queues, ledger) -> str:
    """A run create posted to the app and carried out by its worker: the command's id."""
    simulator.add_imodel(IMODEL, simulator.itwin_id)
    body = {"testId": "t-1", "iModelId": IMODEL, "namedVersionId": "v-1"}
    command = {"action": "create", "resource": "run", "projectId": simulator.itwin_id, "body": body}
    queue = CommandQueue(queues[COMMAND_QUEUE], queues[POISON_QUEUE])
    reply = accept_commands(json.dumps(command).encode(), None, lambda: queue, lambda: ledger)
    client = ITwinClient(Settings.from_env(settings_for(simulator)), policy=WORKER_POLICY, timeout=(2.0, 2.0))
    worker = Worker(ITwinApi(client), queue, Telemetry(), max_attempts=8, ledger=ledger)
    [message] = queues[COMMAND_QUEUE].receive_messages(max_messages=1)
    assert worker.handle(message.content) is Outcome.SUCCEEDED
    return reply.body["commands"][0]["id"]


def recorded(ledger, days_ago: float, status: Status, run_id: str) -> str:
    """A delete run command accepted ``days_ago`` days ago that ended with ``status``: its id."""
    when = datetime.now(UTC) - timedelta(days=days_ago)
    command_id = new_id(when)
    ledger.insert_absent(
        [(command_id, {"action": "delete", "resource": "run", "id": run_id, "commandId": command_id})], when
    )
    if status is not Status.QUEUED:
        error = FORBIDDEN if status is Status.DEAD_LETTERED else None
        ledger.finish(command_id, status, when + timedelta(seconds=2), attempts=1, waits=0, error=error)
    return command_id


@pytest.fixture
def history(ledger) -> dict[str, str]:
    """Commands of several statuses over ten days, by name."""
    return {
        "dead_today": recorded(ledger, 0.001, Status.DEAD_LETTERED, "r-dead-today"),
        "done_today": recorded(ledger, 0.002, Status.SUCCEEDED, "r-done-today"),
        "queued_yesterday": recorded(ledger, 1, Status.QUEUED, "r-queued"),
        "dead_3_days": recorded(ledger, 3, Status.DEAD_LETTERED, "r-dead-3"),
        "dead_9_days": recorded(ledger, 9, Status.DEAD_LETTERED, "r-dead-9"),
    }


def test_show_prints_the_row_readably_and_as_json_exactly_as_the_status_api_answers(
    settings, simulator, queues, ledger
):
    command_id = accepted_and_run(simulator, queues, ledger)
    [run] = simulator.runs.values()

    shown = run_ops(settings, "commands", "show", command_id)
    as_json = run_ops(settings, "commands", "show", command_id, "--json")

    assert (shown.code, as_json.code) == (0, 0)
    lines = shown.out.splitlines()
    assert lines[:4] == [
        f"id          {command_id}",
        "status      succeeded",
        "command     create run",
        "attempts    1",
    ]
    assert f"resource    run {run['id']}  {simulator.url}/clashdetection/runs/{run['id']}" in lines
    assert "error       -" in lines
    assert json.loads(as_json.out) == command_status(command_id, lambda: ledger).body


def test_list_shows_one_status_newest_first_within_the_retention_period(settings, history):
    dead = run_ops(settings, "commands", "list", "--status", "dead_lettered")
    as_json = json.loads(run_ops(settings, "commands", "list", "--status", "dead_lettered", "--json").out)

    assert dead.code == 0
    header, *rows = dead.out.split("\n\n")[0].splitlines()
    assert header.split() == ["CREATED", "ID", "STATUS", "COMMAND", "ATTEMPTS", "UPDATED", "RESULT"]
    assert [row.split()[2] for row in rows] == [history["dead_today"], history["dead_3_days"]]  # not 9 days back
    assert f"{history['dead_today']}  dead_lettered  delete run  1         " in rows[0]
    assert rows[0].endswith("Z  InsufficientPermissions: Not allowed.")
    assert "2 dead_lettered command(s) in the last 7 day(s)" in dead.out
    assert [c["id"] for c in as_json] == [history["dead_today"], history["dead_3_days"]]
    assert as_json[0]["error"]["code"] == "InsufficientPermissions"


def test_list_looks_back_as_many_days_as_asked_and_without_a_status_lists_them_all(settings, history):
    ten_days = json.loads(
        run_ops(settings, "commands", "list", "--status", "dead_lettered", "--days", "10", "--json").out
    )
    everything = json.loads(run_ops(settings, "commands", "list", "--json").out)
    two = run_ops(settings, "commands", "list", "--limit", "2")

    assert [c["id"] for c in ten_days] == [history[k] for k in ("dead_today", "dead_3_days", "dead_9_days")]
    assert [(c["id"], c["status"]) for c in everything] == [
        (history["dead_today"], "dead_lettered"),
        (history["done_today"], "succeeded"),
        (history["queued_yesterday"], "queued"),
        (history["dead_3_days"], "dead_lettered"),
    ]
    assert "2 command(s) in the last 7 day(s) (the newest 2: --limit N shows more)" in two.out


def test_a_create_being_made_right_now_is_listed_as_running_not_queued(settings, ledger):
    command_id = recorded(ledger, 0, Status.QUEUED, "r-1")
    ledger.hold(ledger.get(command_id), "an-instance", datetime.now(UTC))

    running = json.loads(run_ops(settings, "commands", "list", "--status", "running", "--json").out)
    queued = json.loads(run_ops(settings, "commands", "list", "--status", "queued", "--json").out)

    assert [(c["id"], c["status"]) for c in running] == [(command_id, "running")]
    assert queued == []


def test_a_status_with_nothing_in_it_says_so(settings, history):
    result = run_ops(settings, "commands", "list", "--status", "imodel_unavailable")
    assert (result.code, result.out) == (0, "no imodel_unavailable commands in the last 7 day(s)\n")


def test_a_malformed_or_unknown_id_is_a_one_line_error_with_status_2(settings, history):
    malformed = run_ops(settings, "commands", "show", "not-an-id")
    unknown = run_ops(settings, "commands", "show", "20250101-cdeadbeef")

    assert (malformed.code, malformed.out) == (2, "")
    assert malformed.err == (
        "error: 'not-an-id' is not a command id: one looks like 20261123-c3f1a2... (the day it was accepted, then a "
        "key), as POST /api/commands answered or `python -m ops commands list` shows\n"
    )
    assert (unknown.code, unknown.out) == (2, "")
    assert unknown.err.startswith("error: no command 20250101-cdeadbeef in the ledger: it was never accepted")
    assert unknown.err.count("\n") == 1


def test_show_takes_the_start_of_an_id_when_it_names_one_command(settings, ledger):
    first, second = recorded(ledger, 0, Status.QUEUED, "r-1"), recorded(ledger, 0, Status.QUEUED, "r-2")
    common = next(n for n in range(len(first)) if first[n] != second[n])

    one = run_ops(settings, "commands", "show", first[: common + 1])
    several = run_ops(settings, "commands", "show", first[:common])

    assert one.code == 0
    assert one.out.startswith(f"id          {first}\n")
    assert (several.code, several.out) == (2, "")
    assert f"{first[:common]!r} is the start of several command ids: give more of it" in several.err


def test_an_unknown_id_run_as_a_process_shows_no_traceback(settings, history):
    process = ops_process(settings, "commands", "show", "20250101-cdeadbeef")
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out) == (2, "")
    assert err.startswith("error: no command 20250101-cdeadbeef")
    assert "Traceback" not in err


def test_bad_options_and_settings_are_named(settings, tmp_path):
    days = run_ops(settings, "commands", "list", "--days", "45")
    no_storage = run_ops(tmp_path / "missing.json", "commands", "list")
    bad_retention = run_ops(
        write_settings(tmp_path / "bad.json", {"AzureWebJobsStorage": "x", "ITWIN_LEDGER_RETENTION": "a week"}),
        "commands",
        "list",
    )
    bad_storage = run_ops(
        write_settings(tmp_path / "garbage.json", {"AzureWebJobsStorage": "garbage"}), "commands", "list"
    )

    assert (days.code, no_storage.code, bad_retention.code, bad_storage.code) == (2, 2, 2, 2)
    assert "--days must be a whole number from 1 to 30" in days.err
    assert "AzureWebJobsStorage is not set" in no_storage.err
    assert f"(there is no {tmp_path / 'missing.json'})" in no_storage.err
    assert "ITWIN_LEDGER_RETENTION must be whole days from 1d to 30d" in bad_retention.err
    assert "AzureWebJobsStorage is not a usable connection string" in bad_storage.err
    assert "Traceback" not in days.err + no_storage.err + bad_retention.err + bad_storage.err


def test_storage_that_refuses_the_key_names_the_table_role(tmp_path, azurite, ledger):
    wrong_key = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA")
    settings = write_settings(tmp_path / "local.settings.json", {"AzureWebJobsStorage": wrong_key})

    result = run_ops(settings, "commands", "show", new_id(datetime.now(UTC)))

    assert result.code == 1
    assert "storage refused to let you read the command ledger (403" in result.err
    assert "Storage Table Data Contributor" in result.err


def test_a_fanned_out_command_shows_its_children(settings, ledger):
    parent = recorded(ledger, 0, Status.QUEUED, "r-1")
    children = [f"{parent}.0", f"{parent}.1"]
    ledger.finish(parent, Status.FANNED_OUT, datetime.now(UTC), attempts=1, waits=0, children=children)
    made = recorded(ledger, 0, Status.QUEUED, "r-2")
    ledger.finish(made, Status.SUCCEEDED, datetime.now(UTC), attempts=1, waits=0, resource=Resource("run", "run-9"))

    shown = run_ops(settings, "commands", "show", parent).out.splitlines()
    listed = run_ops(settings, "commands", "list").out

    assert shown[shown.index("children    2") + 1 :][:2] == [f"            {c}" for c in children]
    assert "2 delete(s) enqueued" in listed
    assert "run run-9" in listed

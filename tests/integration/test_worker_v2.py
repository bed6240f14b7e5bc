"""Clash Detection v2 and Reality Modeling v2 commands, carried out by the worker against the simulator (real HTTPS)
and Azurite: each ends in one recorded outcome, and a create whose answer was lost is looked up, not repeated."""

from __future__ import annotations

import json
import time

import pytest
from samples import CHANGESET, CLASH_TEST, IMODEL, ITWIN, MISSING, REALITY_JOB_BODY
from test_one_effect import SETTLE, _after, _handed_over, accepted, instance, on_queue
from test_worker import make_worker, message, outcomes, received, rescheduled_copy

from shared.outcomes import Outcome
from shared.settings import COMMAND_QUEUE, POISON_QUEUE

pytestmark = pytest.mark.integration
RUN_BODY = {"testId": CLASH_TEST, "iModelId": IMODEL, "changesetId": CHANGESET}


@pytest.fixture
def worker(simulator, queues, captured):
    return make_worker(simulator, queues, captured)


def clash_run(simulator, **fields) -> dict:
    return {"action": "create", "resource": "clashRun", "iTwinId": simulator.itwin_id, "body": RUN_BODY, **fields}


def reality_job(**fields) -> dict:
    return {"action": "create", "resource": "realityJob", "body": REALITY_JOB_BODY, **fields}


# -- Clash Detection v2 -------------------------------------------------------------------------------------
def test_a_clash_run_starts_one_test_and_names_the_report_it_fills(worker, simulator, captured):
    assert worker.handle(json.dumps(clash_run(simulator))) is Outcome.SUCCEEDED
    [report] = simulator.reports.values()
    assert (report["configurationId"], report["repositoryId"], report["changesetId"]) == (CLASH_TEST, IMODEL, CHANGESET)
    [post] = simulator.api_calls()
    assert post.path == f"/clash-detection/itwins/{simulator.itwin_id}/runs/jobs"
    assert post.json() == {"jobs": [RUN_BODY], "operation": "run"}
    assert post.headers["Accept"] == "application/vnd.bentley.itwin-platform.v2+json"
    assert outcomes(captured) == {("create clashRun", "succeeded"): 1}


def test_a_clash_run_without_an_itwin_runs_in_the_imodels_itwin(worker, simulator):
    simulator.add_imodel(IMODEL, ITWIN)
    assert worker.handle(message(action="create", resource="clashRun", body=RUN_BODY)) is Outcome.SUCCEEDED
    [report] = simulator.reports.values()
    assert report["iTwinId"] == ITWIN


def test_a_running_clash_run_is_cancelled_and_a_second_cancel_is_already_done(worker, simulator):
    report = simulator.add_report(test_id=CLASH_TEST, imodel_id=IMODEL, changeset_id=CHANGESET)
    cancel = message(action="cancel", resource="clashRun", id=report["id"], iTwinId=simulator.itwin_id)
    assert worker.handle(cancel) is Outcome.SUCCEEDED
    assert simulator.reports[report["id"]]["status"] == 3
    assert worker.handle(cancel) is Outcome.ALREADY_DONE


def test_cancelling_a_run_that_is_gone_is_already_done(worker, simulator):
    cancel = message(action="cancel", resource="clashRun", id=MISSING, iTwinId=simulator.itwin_id)
    assert worker.handle(cancel) is Outcome.ALREADY_DONE


def test_a_finished_clash_report_is_deleted_and_a_second_delete_is_already_done(worker, simulator, captured):
    report = simulator.add_report(test_id=CLASH_TEST, imodel_id=IMODEL, changeset_id=CHANGESET, status="completed")
    delete = message(action="delete", resource="clashRun", id=report["id"], iTwinId=simulator.itwin_id)
    assert worker.handle(delete) is Outcome.SUCCEEDED
    assert simulator.reports == {}
    assert worker.handle(delete) is Outcome.ALREADY_DONE
    assert outcomes(captured) == {("delete clashRun", "succeeded"): 1, ("delete clashRun", "already_done"): 1}


def test_deleting_a_report_whose_run_is_still_going_is_dead_lettered_with_the_apis_error(worker, simulator, queues):
    report = simulator.add_report(test_id=CLASH_TEST, imodel_id=IMODEL, changeset_id=CHANGESET)
    delete = message(action="delete", resource="clashRun", id=report["id"], iTwinId=simulator.itwin_id)
    assert worker.handle(delete) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["error"]["code"] == "InvalidDeleteReportsRequest"


def test_a_throttled_clash_run_waits_out_retry_after_and_is_counted_as_a_client_error(
    worker, simulator, queues, captured
):
    simulator.fail_next("POST", "/clash-detection/", 429, headers={"Retry-After": "1"})
    started = time.monotonic()
    assert worker.handle(json.dumps(clash_run(simulator))) is Outcome.RESCHEDULED
    again = rescheduled_copy(queues)
    assert time.monotonic() - started >= 1.0
    assert (again["waits"], again.get("attempt", 1), again.get("lookUp", False)) == (1, 1, False)
    # another instance (this one's pacer has cut its clash-detection rate after the 429) runs it
    assert make_worker(simulator, queues, captured).handle(json.dumps(again)) is Outcome.SUCCEEDED
    assert len(simulator.reports) == 1
    errors = {dict(k)["itwin.operation"]: v for k, v in captured.counts("itwin.api.client_errors").items()}
    assert errors == {"clashRuns.create": 1}


# -- Reality Modeling v2 ------------------------------------------------------------------------------------
def test_a_reality_job_is_created_started_and_cancelled(worker, simulator, captured):
    assert worker.handle(json.dumps(reality_job())) is Outcome.SUCCEEDED
    [job] = simulator.reality_jobs.values()
    assert (job["state"], job["name"], job["iTwinId"]) == ("Active", "Survey mesh", ITWIN)
    cancel = message(action="cancel", resource="realityJob", id=job["id"])
    assert worker.handle(cancel) is Outcome.SUCCEEDED
    assert simulator.reality_jobs[job["id"]]["state"] == "TerminatingOnCancel"
    assert worker.handle(cancel) is Outcome.ALREADY_DONE
    assert [(r.method, r.status) for r in simulator.api_calls()] == [
        ("POST", 201),
        ("DELETE", 200),
        ("DELETE", 422),
        ("GET", 200),
    ]


def test_cancelling_a_reality_job_that_succeeded_is_dead_lettered(worker, simulator, queues):
    job = simulator.add_reality_job(state="Success")
    assert worker.handle(message(action="cancel", resource="realityJob", id=job["id"])) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["error"]["code"] == "InvalidRealityModelingRequest"


def test_a_throttled_reality_job_create_is_rescheduled_without_counting_an_attempt(worker, simulator, queues):
    simulator.fail_next("POST", "/reality-modeling/jobs", 429, headers={"Retry-After": "1"})
    assert worker.handle(json.dumps(reality_job())) is Outcome.RESCHEDULED
    again = rescheduled_copy(queues)
    assert (again["waits"], again.get("attempt", 1)) == (1, 1)
    assert worker.handle(json.dumps(again)) is Outcome.SUCCEEDED
    assert len(simulator.reality_jobs) == 1


# -- one effect per command: lost answers are looked up ------------------------------------------------------
def test_a_clash_run_whose_answer_was_lost_is_found_by_its_report_not_run_again(simulator, queues, captured, ledger):
    # GIVEN another command's report of the same test and changeset, and a run whose answer stalls past the timeout
    older = simulator.add_report(test_id=CLASH_TEST, imodel_id=IMODEL, changeset_id=CHANGESET, status="completed")
    command_id, first = accepted(queues, ledger, clash_run(simulator))
    simulator.stall_next("POST", "/clash-detection/", 2.0)  # carried out, answered after the client gave up
    worker = instance(simulator, queues, captured, ledger, "a", read_timeout=0.5)
    assert worker.handle(first) is Outcome.RESCHEDULED
    # WHEN the holder's hand-over arrives, once the create may have landed
    time.sleep(SETTLE)
    # THEN the new report is found and recorded, the older one is not taken for it, and nothing runs twice
    assert worker.handle(_handed_over(queues, 40)) is Outcome.ALREADY_DONE
    made = ledger.get(command_id).resource
    assert made.type == "clashRun"
    assert made.id != older["id"]
    assert set(simulator.reports) == {older["id"], made.id}
    assert [r.method for r in simulator.api_calls() if "/runs/jobs" in r.path] == ["POST"]
    assert on_queue(queues[POISON_QUEUE]) == []


def test_a_clash_run_refused_with_a_500_is_run_once_on_its_next_delivery(simulator, queues, captured, ledger):
    command_id, first = accepted(queues, ledger, clash_run(simulator))
    simulator.fail_next("POST", "/clash-detection/", 500)  # no clear answer; not carried out
    worker = instance(simulator, queues, captured, ledger, "a")
    assert worker.handle(first) is Outcome.RESCHEDULED
    [again] = on_queue(queues[COMMAND_QUEUE], visibility=60) or _after(queues, 40)
    assert worker.handle(again) is Outcome.SUCCEEDED
    [report] = simulator.reports.values()
    assert ledger.get(command_id).resource.id == report["id"]


def test_a_reality_job_whose_answer_was_lost_is_found_by_its_name_not_made_again(simulator, queues, captured, ledger):
    older = simulator.add_reality_job(name=REALITY_JOB_BODY["name"], itwin_id=ITWIN)  # another command's job
    command_id, first = accepted(queues, ledger, reality_job())
    simulator.stall_next("POST", "/reality-modeling/jobs", 2.0)
    worker = instance(simulator, queues, captured, ledger, "a", read_timeout=0.5)
    assert worker.handle(first) is Outcome.RESCHEDULED
    time.sleep(SETTLE)
    assert worker.handle(_handed_over(queues, 40)) is Outcome.ALREADY_DONE
    made = ledger.get(command_id).resource
    assert (made.type, made.href) == ("realityJob", f"{simulator.url}/reality-modeling/jobs/{made.id}")
    assert set(simulator.reality_jobs) == {older["id"], made.id}
    lists = [r for r in simulator.api_calls() if r.method == "GET" and r.path == "/reality-modeling/jobs"]
    assert {r.query["$filter"] for r in lists} == {f"iTwinId eq {ITWIN}"}
    assert on_queue(queues[POISON_QUEUE]) == []


def test_a_reality_jobs_end_is_recorded_in_the_row_of_the_command_that_made_it(simulator, queues, captured, ledger):
    # GIVEN a job made by a command, which the platform then reports ended
    command_id, create = accepted(queues, ledger, reality_job())
    worker = instance(simulator, queues, captured, ledger, "a")
    assert worker.handle(create) is Outcome.SUCCEEDED
    job_id = ledger.get(command_id).resource.id
    simulator.set_reality_job_state(job_id, "Success")
    # WHEN the completion event's command arrives (the default rule: realityModeling.jobCompleted.v2 -> record)
    record = json.dumps({"action": "record", "resource": "realityJob", "id": job_id})
    assert worker.handle(record) is Outcome.SUCCEEDED
    # THEN the creating command's row says how the job ended, and so does its status
    row = ledger.get(command_id)
    assert row.resource_state == "Success"
    assert row.to_dict()["resourceState"] == "Success"


def test_the_end_of_a_reality_job_no_command_made_is_left_alone(simulator, queues, captured, ledger):
    job = simulator.add_reality_job(name="made elsewhere", itwin_id=ITWIN)
    simulator.set_reality_job_state(job["id"], "Failed")
    record = json.dumps({"action": "record", "resource": "realityJob", "id": job["id"]})
    assert instance(simulator, queues, captured, ledger, "a").handle(record) is Outcome.ALREADY_DONE
    assert on_queue(queues[POISON_QUEUE]) == []

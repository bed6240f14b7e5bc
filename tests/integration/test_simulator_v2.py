"""The simulator's Clash Detection v2 and Reality Modeling v2 APIs, driven with plain `requests` over real HTTPS:
every operation the app calls, with the 401, 404, 422 (or 400) and 429 answers the pages give."""

from __future__ import annotations

import json

import pytest
import requests
from callback_receiver import CallbackReceiver
from samples import CHANGESET, CLASH_TEST, IMODEL, ITWIN, MISSING, REALITY_JOB_BODY
from test_simulator import Api, error_of
from test_simulator_webhooks import Webhooks

pytestmark = pytest.mark.integration
V2 = {"Accept": "application/vnd.bentley.itwin-platform.v2+json"}


@pytest.fixture
def session(simulator):
    with requests.Session() as session:
        session.verify = simulator.ca_path
        yield session


@pytest.fixture
def api(simulator, session):
    return Api(simulator, session, simulator.issue_token())


def clash(simulator, rest: str) -> str:
    return f"/clash-detection/itwins/{simulator.itwin_id}{rest}"


def run(api, simulator, **job) -> dict:
    body = {"jobs": [{"testId": CLASH_TEST, "iModelId": IMODEL, "changesetId": CHANGESET, **job}], "operation": "run"}
    return api("POST", clash(simulator, "/runs/jobs"), json=body, headers=V2)


# -- Clash Detection v2 -------------------------------------------------------------------------------------
def test_a_run_answers_its_clash_report_which_reads_back_running(api, simulator):
    response = run(api, simulator, testSettings={"resultsLimit": "10000"})
    assert response.status_code == 200
    [started] = response.json()["runs"]
    assert started["testId"] == CLASH_TEST
    report = api("GET", clash(simulator, f"/reports/{started['clashReportId']}"), headers=V2).json()["metadata"]
    assert (report["id"], report["configurationId"], report["changesetId"]) == (
        started["clashReportId"],
        CLASH_TEST,
        CHANGESET,
    )
    assert (report["status"], report["testSettings"]) == (0, {"resultsLimit": 10000})


def test_a_malformed_run_is_400_naming_each_field(api, simulator):
    response = run(api, simulator, testId="not-a-guid", changesetId=None)
    assert response.status_code == 400
    targets = {d["target"] for d in error_of(response)["details"]}
    assert targets == {"jobs[0].testId", "jobs[0].changesetId"}
    two = {"jobs": [{}, {}], "operation": "run"}
    assert api("POST", clash(simulator, "/runs/jobs"), json=two).status_code == 400


def test_an_unknown_itwin_is_404_itwin_not_found(api):
    response = api("GET", f"/clash-detection/itwins/{MISSING}/reports", headers=V2)
    assert response.status_code == 404
    assert error_of(response) == {"code": "iTwinNotFound", "message": "Requested iTwin is not available."}


def test_without_a_token_a_v2_call_is_401(simulator, session):
    response = Api(simulator, session, None)("GET", f"/clash-detection/itwins/{simulator.itwin_id}/reports")
    assert response.status_code == 401
    assert error_of(response)["code"] == "HeaderNotFound"


def test_reports_page_with_a_continuation_token_and_keep_to_the_repository_id(api, simulator):
    for n in range(5):
        simulator.add_report(test_id=CLASH_TEST, imodel_id=IMODEL, changeset_id=f"cs{n}")
    simulator.add_report(test_id=CLASH_TEST, imodel_id=MISSING, changeset_id="other")
    seen, url = [], simulator.url + clash(simulator, "/reports?$top=2")
    while url:
        page = api.session.get(url, headers={**V2, "Authorization": f"Bearer {api.token}", "repository-id": IMODEL})
        assert page.status_code == 200
        seen += [r["changesetId"] for r in page.json()["reports"]]
        assert page.json()["count"] == 5
        url = (page.json()["_links"]["next"] or {}).get("href")
    assert seen == [f"cs{n}" for n in range(5)]
    assert api("GET", clash(simulator, "/reports?$top=101")).status_code == 422


def test_a_run_is_cancelled_once_then_its_report_deleted_once(api, simulator):
    report_id = run(api, simulator).json()["runs"][0]["clashReportId"]
    cancel = {"jobs": [report_id], "operation": "cancel"}
    delete = {"jobs": [report_id], "operation": "delete"}
    assert api("POST", clash(simulator, "/reports/jobs/deletion"), json=delete).status_code == 422  # still running
    assert api("POST", clash(simulator, "/reports/jobs/cancellation"), json=cancel).status_code == 204
    again = api("POST", clash(simulator, "/reports/jobs/cancellation"), json=cancel)
    assert (again.status_code, error_of(again)["code"]) == (422, "InvalidCancelRunsRequest")
    assert api("POST", clash(simulator, "/reports/jobs/deletion"), json=delete).status_code == 204
    gone = api("POST", clash(simulator, "/reports/jobs/deletion"), json=delete)
    assert error_of(gone) == {
        "code": "InvalidDeleteReportsRequest",
        "message": "Clash Detection Reports Deletion Failed.",
    }
    simulator.reset_rate_limits()  # seven calls in a second: over the 6/s limit
    assert api("GET", clash(simulator, f"/reports/{report_id}")).status_code == 404


def test_clash_detection_v2_answers_429_rate_limit_exceeded_beyond_six_calls_per_second(api, simulator):
    responses = [api("GET", clash(simulator, f"/reports/{MISSING}")) for _ in range(7)]
    assert [r.status_code for r in responses] == [404] * 6 + [429]
    assert error_of(responses[6])["code"] == "RateLimitExceeded"
    assert int(responses[6].headers["Retry-After"]) >= 1


# -- Reality Modeling v2 ------------------------------------------------------------------------------------
def test_a_job_is_created_active_read_and_its_progress_and_messages_read(api):
    response = api("POST", "/reality-modeling/jobs", json=REALITY_JOB_BODY, headers=V2)
    assert response.status_code == 201
    job = response.json()["job"]
    assert (job["state"], job["name"], job["iTwinId"], job["type"]) == (
        "Active",
        "Survey mesh",
        ITWIN,
        "Reconstruction",
    )
    assert response.headers["Location"].endswith(f"/reality-modeling/jobs/{job['id']}")
    assert api("GET", f"/reality-modeling/jobs/{job['id']}").json()["job"] == job
    assert api("GET", f"/reality-modeling/jobs/{job['id']}/progress").json()["progress"]["state"] == "Active"
    assert api("GET", f"/reality-modeling/jobs/{job['id']}/messages").json()["messages"]["errors"] == []


def test_a_malformed_job_is_400_naming_each_field(api):
    body = {**REALITY_JOB_BODY, "iTwinId": "nope", "specifications": None, "name": "x"}
    response = api("POST", "/reality-modeling/jobs", json=body)
    assert response.status_code == 400
    assert {(d["code"], d["target"]) for d in error_of(response)["details"]} == {
        ("InvalidValue", "iTwinId"),
        ("MissingRequiredProperty", "specifications"),
        ("InvalidValue", "name"),
    }


def test_an_unknown_or_malformed_job_id_is_404_job_not_found(api):
    for job_id in (MISSING, "not-a-guid"):
        response = api("GET", f"/reality-modeling/jobs/{job_id}")
        assert (response.status_code, error_of(response)["code"]) == (404, "JobNotFound")


def test_jobs_are_listed_by_filter_a_page_at_a_time(api, simulator):
    for n in range(3):
        simulator.add_reality_job(name=f"job {n}", itwin_id=ITWIN)
    simulator.add_reality_job(name="elsewhere")
    names, url = [], f"{simulator.url}/reality-modeling/jobs?$filter=iTwinId eq {ITWIN}&$top=2"
    while url:
        page = api.session.get(url, headers={"Authorization": f"Bearer {api.token}"}).json()
        names += [j["name"] for j in page["jobs"]]
        url = page["_links"].get("next", {}).get("href")
    assert names == ["job 0", "job 1", "job 2"]
    by_name = api("GET", "/reality-modeling/jobs", params={"$filter": f"iTwinId eq {ITWIN} and name eq 'job 1'"})
    assert [j["name"] for j in by_name.json()["jobs"]] == ["job 1"]
    bad = api("GET", "/reality-modeling/jobs", params={"$filter": "colour eq red"})
    assert (bad.status_code, error_of(bad)["details"][0]["target"]) == (400, "$filter")


def test_a_job_is_cancelled_by_delete_once(api, simulator):
    job = simulator.add_reality_job()
    response = api("DELETE", f"/reality-modeling/jobs/{job['id']}")
    assert (response.status_code, response.json()["job"]["state"]) == (200, "TerminatingOnCancel")
    again = api("DELETE", f"/reality-modeling/jobs/{job['id']}")
    assert (again.status_code, error_of(again)["details"][0]["code"]) == (422, "InvalidChange")


def test_a_v2_job_that_ends_is_delivered_as_job_completed_v2(make_simulator):
    simulator = make_simulator(resend_delays=(0.05,))
    webhooks = Webhooks(simulator)
    with CallbackReceiver() as receiver:
        created = webhooks.create(receiver.url, eventTypes=["realityModeling.jobCompleted.v2"])
        webhooks("PATCH", f"/{created['id']}", json={"active": True})
        job = simulator.add_reality_job(itwin_id=ITWIN)
        simulator.set_reality_job_state(job["id"], "TerminatingOnCancel")  # not ended yet: no event
        simulator.set_reality_job_state(job["id"], "Cancelled")
        assert simulator.wait_for_deliveries(5)
        [delivery] = [json.loads(r.body) for r in receiver.received]
    assert (delivery["eventType"], delivery["content"], delivery["iTwinId"]) == (
        "realityModeling.jobCompleted.v2",
        {"jobId": job["id"]},
        ITWIN,
    )

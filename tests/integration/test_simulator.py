"""The iTwin Platform simulator, driven with plain `requests` over real HTTPS (verified against its CA)."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msal
import pytest
import requests

from sandbox.itwin_platform import Faults, Simulator

pytestmark = pytest.mark.integration

IMODEL = "7dbd531d-6967-47b2-8945-a722a437ad7a"
OTHER_IMODEL = "a0471655-6b18-419e-ab01-ebf4fbff9dff"
WORKSPACE = "1db84556-49ba-41fd-8500-3657784c7752"
URL_SAFE_ID = "VRZHoBhrnkGrAev0-_-d_xwvyrzjgaVGka5wU967Q7M"
REPO_ROOT = Path(__file__).resolve().parents[2]


class Api:
    """Calls the simulator's APIs with a bearer token over one keep-alive session."""

    def __init__(self, simulator: Simulator, session: requests.Session, token: str | None) -> None:
        self.simulator = simulator
        self.session = session
        self.token = token

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.token is not None:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.simulator.url + path, headers=headers, **kwargs)


@pytest.fixture
def session(simulator: Simulator) -> Any:
    with requests.Session() as session:
        session.verify = simulator.ca_path
        yield session


@pytest.fixture
def api(simulator: Simulator, session: requests.Session) -> Api:
    return Api(simulator, session, simulator.issue_token())


def error_of(response: requests.Response) -> dict[str, Any]:
    return response.json()["error"]


def detail_pairs(response: requests.Response) -> set[tuple[str, str | None]]:
    return {(d["code"], d.get("target")) for d in error_of(response).get("details", [])}


def token_form(simulator: Simulator, **overrides: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": simulator.client_id,
        "client_secret": simulator.client_secret,
        "scope": "itwin-platform",
    }
    form.update(overrides)
    return form


def job_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "type": "Full",
        "name": "bridge survey",
        "workspaceId": WORKSPACE,
        "inputs": [{"id": "f8ba5ac9-4e0c-4b4c-9f4f-2f4a7c0cbe11", "description": "photos"}],
        "settings": {"quality": "Medium", "outputs": ["3MX"]},
    }
    body.update(overrides)
    return body


def run_body(**overrides: Any) -> dict[str, Any]:
    body = {"testId": "test-1", "iModelId": IMODEL, "namedVersionId": "version-1"}
    body.update(overrides)
    return body


def follow_pages(api: Api, first: str, key: str) -> list[dict[str, Any]]:
    pages, url = [], first
    while url:
        response = api("GET", url.removeprefix(api.simulator.url))
        assert response.status_code == 200
        pages.append(response.json())
        url = (response.json()["_links"].get("next") or {}).get("href")
    return pages


# -- token service ------------------------------------------------------------------------------------------
def test_discovery_names_the_path_less_simulator_url_as_issuer_and_its_token_endpoint(simulator, session):
    document = session.get(simulator.url + "/.well-known/openid-configuration", timeout=5).json()

    assert document["issuer"] == simulator.url
    assert document["token_endpoint"] == simulator.url + "/connect/token"
    assert document["authorization_endpoint"] == simulator.url + "/connect/authorize"
    assert document["jwks_uri"].startswith(simulator.url + "/")
    assert "client_credentials" in document["grant_types_supported"]
    assert document["response_types_supported"]
    assert session.get(document["jwks_uri"], timeout=5).json() == {"keys": []}


def test_token_request_with_form_credentials_returns_a_bearer_token_echoing_the_scope(simulator, session):
    response = session.post(simulator.url + "/connect/token", data=token_form(simulator), timeout=5)

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "itwin-platform"
    assert body["access_token"]
    assert simulator.token_requests == 1


def test_token_request_with_http_basic_credentials_is_accepted(simulator, session):
    form = {"grant_type": "client_credentials", "scope": "itwin-platform openid"}
    response = session.post(
        simulator.url + "/connect/token", data=form, auth=(simulator.client_id, simulator.client_secret), timeout=5
    )

    assert response.status_code == 200
    assert response.json()["scope"] == "itwin-platform openid"


def test_token_request_with_a_wrong_secret_answers_401_invalid_client(simulator, session):
    form = token_form(simulator, client_secret="wrong")
    response = session.post(simulator.url + "/connect/token", data=form, timeout=5)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.json()["error_description"]


def test_token_request_with_another_grant_type_answers_400_unsupported_grant_type(simulator, session):
    form = token_form(simulator, grant_type="password")
    response = session.post(simulator.url + "/connect/token", data=form, timeout=5)

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_token_service_down_answers_503_while_discovery_keeps_working(simulator, session):
    simulator.token_service_down = True

    token = session.post(simulator.url + "/connect/token", data=token_form(simulator), timeout=5)
    discovery = session.get(simulator.url + "/.well-known/openid-configuration", timeout=5)

    assert token.status_code == 503
    assert discovery.status_code == 200
    assert simulator.token_requests == 1


def test_fail_next_scripts_the_token_endpoint_too(simulator, session):
    simulator.fail_next("POST", "/connect/token", 500, body=b"<html>oops</html>")

    first = session.post(simulator.url + "/connect/token", data=token_form(simulator), timeout=5)
    second = session.post(simulator.url + "/connect/token", data=token_form(simulator), timeout=5)

    assert (first.status_code, first.headers["Content-Type"].split(";")[0]) == (500, "text/html")
    assert second.status_code == 200


def test_msal_acquires_a_token_from_the_simulator_and_then_serves_it_from_its_cache(simulator):
    class TenantPathToRoot(requests.Session):
        """MSAL needs a path in its authority; the simulator serves discovery at the root (like IMS)."""

        def request(self, method, url, *args, **kwargs):
            return super().request(method, url.replace("/tenant/.well-known/", "/.well-known/"), *args, **kwargs)

    with TenantPathToRoot() as http_client:
        app = msal.ConfidentialClientApplication(
            simulator.client_id,
            client_credential=simulator.client_secret,
            oidc_authority=simulator.url + "/tenant",
            http_client=http_client,
        )
        first = app.acquire_token_for_client(scopes=["itwin-platform"])
        second = app.acquire_token_for_client(scopes=["itwin-platform"])

    assert first.get("token_source") == "identity_provider", first
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert simulator.token_requests == 1


# -- authentication ---------------------------------------------------------------------------------------
def test_api_call_without_authorization_header_answers_401_header_not_found(simulator, session):
    response = Api(simulator, session, token=None)("GET", "/clashdetection/runs/any")

    assert response.status_code == 401
    assert error_of(response) == {
        "code": "HeaderNotFound",
        "message": "Header Authorization was not found in the request. Access denied.",
    }


def test_revoked_token_answers_401_invalid_token(simulator, api):
    simulator.add_imodel(IMODEL)
    assert api("GET", f"/export/connections?iModelId={IMODEL}").status_code == 200

    simulator.revoke_tokens()
    response = api("GET", f"/export/connections?iModelId={IMODEL}")

    assert response.status_code == 401
    assert error_of(response)["code"] == "InvalidToken"
    assert "revoked" in error_of(response)["message"]


def test_expired_token_answers_401_invalid_token(simulator, session):
    api = Api(simulator, session, simulator.issue_token(lifetime=0.05))
    time.sleep(0.1)

    response = api("GET", "/contextcapture/jobs/any")

    assert response.status_code == 401
    assert error_of(response)["code"] == "InvalidToken"
    assert "expired" in error_of(response)["message"]


def test_token_without_the_itwin_platform_scope_answers_403_insufficient_permissions(simulator, session):
    api = Api(simulator, session, simulator.issue_token(scope="openid profile"))

    response = api("GET", "/contextcapture/jobs/any")

    assert response.status_code == 403
    assert error_of(response) == {
        "code": "InsufficientPermissions",
        "message": "The user has insufficient permissions for the requested operation.",
    }


# -- Export -----------------------------------------------------------------------------------------------
def test_create_connection_answers_201_with_the_full_connection(simulator, api):
    body = {"iModelId": IMODEL, "displayName": "nightly", "authenticationType": "Service"}
    response = api("POST", "/export/connections", json=body)

    assert response.status_code == 201
    connection = response.json()["connection"]
    assert set(connection) == {"id", "displayName", "iModelId", "iTwinId", "authenticationType", "_links"}
    assert (connection["displayName"], connection["iModelId"], connection["authenticationType"]) == (
        "nightly",
        IMODEL,
        "Service",
    )
    assert len(connection["id"]) == 36
    assert connection["_links"]["iModel"]["href"] == f"{simulator.url}/imodels/{IMODEL}"
    assert simulator.connections[connection["id"]] == connection


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"{not json", {("InvalidRequestBody", None)}, id="malformed-json"),
        pytest.param({"displayName": "x"}, {("MissingRequiredProperty", "imodelId")}, id="missing-imodel"),
        pytest.param({"iModelId": "nope"}, {("InvalidValue", "imodelId")}, id="imodel-not-a-guid"),
        pytest.param(
            {"iModelId": IMODEL, "authenticationType": "Robot"},
            {("InvalidValue", "authenticationType")},
            id="bad-authentication-type",
        ),
    ],
)
def test_invalid_connection_create_answers_422_invalid_export_connection_request(simulator, api, body, expected):
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = api("POST", "/export/connections", **kwargs)

    assert response.status_code == 422
    assert error_of(response)["code"] == "InvalidExportConnectionRequest"
    assert detail_pairs(response) == expected
    assert simulator.connections == {}


def test_listing_connections_pages_with_links_that_drop_the_imodel_filter_as_in_seed_003(simulator, api):
    created = [simulator.add_connection(IMODEL, f"c{n}")["id"] for n in range(7)]
    other = simulator.add_connection(OTHER_IMODEL, "elsewhere")["id"]

    pages = follow_pages(api, f"/export/connections?imodelId={IMODEL}&$top=3", "connections")

    assert [len(page["connections"]) for page in pages] == [3, 3, 2]
    assert [c["id"] for page in pages for c in page["connections"]] == [*created, other]
    assert "prev" not in pages[0]["_links"]
    assert pages[1]["_links"]["prev"]["href"] == f"{simulator.url}/export/connections?$skip=0&$top=3"
    assert pages[0]["_links"]["next"]["href"] == f"{simulator.url}/export/connections?$skip=3&$top=3"
    assert "next" not in pages[2]["_links"]


def test_listing_connections_with_the_filter_on_every_page_gives_only_that_imodels(simulator, api):
    created = [simulator.add_connection(IMODEL, f"c{n}")["id"] for n in range(7)]
    simulator.add_connection(OTHER_IMODEL, "elsewhere")

    pages = [api("GET", f"/export/connections?iModelId={IMODEL}&$top=3&$skip={skip}").json() for skip in (0, 3, 6)]

    assert [c["id"] for page in pages for c in page["connections"]] == created
    assert "next" not in pages[2]["_links"]


def test_listing_connections_of_an_unknown_imodel_answers_404_connection_not_found(api):
    response = api("GET", f"/export/connections?iModelId={OTHER_IMODEL}")

    assert response.status_code == 404
    assert error_of(response) == {"code": "ConnectionNotFound", "message": "Requested iModelId is not available."}


@pytest.mark.parametrize(
    ("query", "target"),
    [
        (f"iModelId={IMODEL}&$top=0", "$top"),
        (f"iModelId={IMODEL}&$top=1001", "$top"),
        (f"iModelId={IMODEL}&$top=ten", "$top"),
        ("iModelId=nope", "imodelId"),
    ],
)
def test_listing_connections_with_bad_parameters_answers_422_invalid_connections_request(simulator, api, query, target):
    simulator.add_imodel(IMODEL)
    response = api("GET", f"/export/connections?{query}")

    assert response.status_code == 422
    assert error_of(response)["code"] == "InvalidConnectionsRequest"
    assert detail_pairs(response) == {("InvalidValue", target)}
    if target == "$top":
        assert error_of(response)["details"][0]["message"] == "Page size is out of limits."


def test_get_connection_answers_200_and_404_connection_not_found_for_an_unknown_id(simulator, api):
    connection = simulator.add_connection(IMODEL, "nightly")

    found = api("GET", f"/export/connections/{connection['id']}")
    missing = api("GET", "/export/connections/00000000-0000-0000-0000-000000000000")

    assert found.json() == {"connection": connection}
    assert missing.status_code == 404
    assert error_of(missing) == {"code": "ConnectionNotFound", "message": "Requested Connection is not available."}


def test_delete_connection_answers_204_then_404(simulator, api):
    connection = simulator.add_connection(IMODEL, "nightly", connection_id=URL_SAFE_ID)

    first = api("DELETE", f"/export/connections/{connection['id']}")
    second = api("DELETE", f"/export/connections/{connection['id']}")

    assert (first.status_code, first.content) == (204, b"")
    assert second.status_code == 404
    assert error_of(second)["code"] == "ConnectionNotFound"
    assert simulator.connections == {}


def test_delete_of_a_connection_in_use_answers_409_connection_already_in_use(simulator, api):
    connection = simulator.add_connection(IMODEL, "nightly")
    simulator.set_connection_in_use(connection["id"])

    busy = api("DELETE", f"/export/connections/{connection['id']}")
    simulator.set_connection_in_use(connection["id"], seconds=0)
    free = api("DELETE", f"/export/connections/{connection['id']}")

    assert busy.status_code == 409
    assert error_of(busy) == {"code": "ConnectionAlreadyInUse", "message": "Connection is already being processed."}
    assert free.status_code == 204


def test_a_connection_held_for_some_seconds_can_be_deleted_afterwards(simulator, api):
    connection = simulator.add_connection(IMODEL, "nightly")
    simulator.set_connection_in_use(connection["id"], seconds=0.1)

    assert api("DELETE", f"/export/connections/{connection['id']}").status_code == 409
    time.sleep(0.15)
    assert api("DELETE", f"/export/connections/{connection['id']}").status_code == 204


def test_delete_with_a_malformed_connection_id_answers_422_target_connection_id(api):
    response = api("DELETE", "/export/connections/not-an-id")

    assert response.status_code == 422
    assert error_of(response)["code"] == "InvalidExportConnectionRequest"
    assert error_of(response)["details"] == [
        {"code": "InvalidValue", "message": "Provided connectionId value is not valid.", "target": "connectionId"}
    ]


def test_export_over_its_rate_limit_answers_429_rate_limit_exceeded(make_simulator):
    simulator = make_simulator(rate_limits={"export": 2})
    simulator.add_imodel(IMODEL)
    with requests.Session() as session:
        api = Api(simulator, session, simulator.issue_token())
        statuses = [api("GET", f"/export/connections?iModelId={IMODEL}") for _ in range(3)]

    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert error_of(statuses[2])["code"] == "RateLimitExceeded"
    assert int(statuses[2].headers["Retry-After"]) >= 1
    assert simulator.api_calls("export")[2].fault == "rate-limited"


# -- ContextCapture ---------------------------------------------------------------------------------------
def test_create_job_answers_201_with_an_unsubmitted_job(simulator, api):
    response = api("POST", "/contextcapture/jobs", json=job_body())

    assert response.status_code == 201
    job = response.json()["job"]
    assert job["state"] == "unsubmitted"
    assert (job["type"], job["name"], job["workspaceId"]) == ("Full", "bridge survey", WORKSPACE)
    assert len(job["id"]) == 36
    assert api("GET", f"/contextcapture/jobs/{job['id']}").json() == {"job": job}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"[1,", {("InvalidRequestBody", None)}, id="malformed-json"),
        pytest.param(
            {},
            {("MissingRequiredProperty", name) for name in ("type", "name", "workspaceId", "inputs", "settings")},
            id="empty",
        ),
        pytest.param(job_body(type="Painting"), {("InvalidValue", "type")}, id="bad-type"),
        pytest.param(job_body(workspaceId="ws"), {("InvalidValue", "workspaceId")}, id="bad-workspace"),
        pytest.param(job_body(inputs=[]), {("InvalidValue", "inputs")}, id="no-inputs"),
    ],
)
def test_invalid_job_create_answers_422_invalid_context_capture_request(simulator, api, body, expected):
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = api("POST", "/contextcapture/jobs", **kwargs)

    assert response.status_code == 422
    assert error_of(response)["code"] == "InvalidContextCaptureRequest"
    assert detail_pairs(response) == expected
    assert simulator.jobs == {}


def test_submitting_then_cancelling_a_job_follows_the_state_machine(simulator, api):
    job_id = simulator.add_job()["id"]

    submitted = api("PATCH", f"/contextcapture/jobs/{job_id}", json={"state": "active"})
    again = api("PATCH", f"/contextcapture/jobs/{job_id}", json={"state": "active"})
    cancelled = api("PATCH", f"/contextcapture/jobs/{job_id}", json={"state": "cancelled"})
    revived = api("PATCH", f"/contextcapture/jobs/{job_id}", json={"state": "active"})

    assert (submitted.status_code, submitted.json()["job"]["state"]) == (200, "active")
    assert again.status_code == 422
    assert error_of(again)["code"] == "InvalidContextCaptureRequest"
    assert detail_pairs(again) == {("InvalidChange", "state")}
    assert (cancelled.status_code, cancelled.json()["job"]["state"]) == (200, "cancelled")
    assert revived.status_code == 422
    assert simulator.jobs[job_id]["state"] == "cancelled"


def test_delete_of_an_unsubmitted_job_answers_204_and_then_404_job_not_found(simulator, api):
    job_id = simulator.add_job()["id"]

    deleted = api("DELETE", f"/contextcapture/jobs/{job_id}")
    missing = api("GET", f"/contextcapture/jobs/{job_id}")

    assert deleted.status_code == 204
    assert missing.status_code == 404
    assert error_of(missing) == {"code": "JobNotFound", "message": "Requested job is not available."}


def test_delete_of_a_submitted_job_answers_422_invalid_change(simulator, api):
    job_id = simulator.add_job(state="active")["id"]

    response = api("DELETE", f"/contextcapture/jobs/{job_id}")

    assert response.status_code == 422
    assert error_of(response) == {
        "code": "InvalidContextCaptureRequest",
        "message": "Cannot delete job.",
        "details": [{"code": "InvalidChange", "message": "Cannot delete an already submitted job."}],
    }
    assert job_id in simulator.jobs


# -- Clash Detection --------------------------------------------------------------------------------------
def test_create_run_answers_201_with_a_link_to_the_run(simulator, api):
    response = api("POST", "/clashdetection/runs", json=run_body(projectId="project-1"))

    assert response.status_code == 201
    run = response.json()["run"]
    assert set(run) == {"id", "_links"}
    assert run["_links"]["run"]["href"] == f"{simulator.url}/clashdetection/runs/{run['id']}"
    stored = api("GET", f"/clashdetection/runs/{run['id']}").json()["run"]
    assert (stored["projectId"], stored["testId"], stored["status"]) == ("project-1", "test-1", "queued")


def test_create_run_without_required_fields_answers_422_with_targets(simulator, api):
    missing = api("POST", "/clashdetection/runs", json={})
    invalid = api("POST", "/clashdetection/runs", json=run_body(iModelId="nope"))

    assert missing.status_code == invalid.status_code == 422
    assert error_of(missing)["code"] == "InvalidClashDetectionRequest"
    assert detail_pairs(missing) == {
        ("MissingRequiredProperty", name) for name in ("testId", "iModelId", "namedVersionId")
    }
    assert detail_pairs(invalid) == {("InvalidValue", "iModelId")}
    assert simulator.runs == {}


def test_runs_list_pages_with_a_continuation_token_until_next_is_null(make_simulator):
    simulator = make_simulator(rate_limits={})
    created = [simulator.add_run(project_id="p1")["id"] for _ in range(5)]
    simulator.add_run(project_id="p2")
    with requests.Session() as session:
        pages = follow_pages(
            Api(simulator, session, simulator.issue_token()), "/clashdetection/runs?projectId=p1&$top=2", "runs"
        )

    assert [len(page["runs"]) for page in pages] == [2, 2, 1]
    assert [run["id"] for page in pages for run in page["runs"]] == created
    assert "continuationToken=" in pages[0]["_links"]["next"]["href"]
    assert pages[2]["_links"]["next"] is None


def test_delete_run_answers_204_without_a_body_then_404_clash_detection_run_not_found(simulator, api):
    run_id = simulator.add_run()["id"]

    deleted = api("DELETE", f"/clashdetection/runs/{run_id}")
    missing = api("GET", f"/clashdetection/runs/{run_id}")

    assert (deleted.status_code, deleted.content) == (204, b"")
    assert "Content-Length" not in deleted.headers
    assert missing.status_code == 404
    assert error_of(missing) == {"code": "ClashDetectionRunNotFound", "message": "Requested run is not available."}


def test_clash_detection_answers_429_with_retry_after_beyond_six_calls_per_second(simulator, api):
    responses = [api("GET", "/clashdetection/runs/unknown") for _ in range(7)]

    assert [r.status_code for r in responses] == [404] * 6 + [429]
    throttled = responses[6]
    assert error_of(throttled) == {
        "code": "TooManyRequests",
        "message": "More requests were received than the subscription rate-limit allows.",
    }
    retry_after = int(throttled.headers["Retry-After"])
    assert retry_after >= 1

    time.sleep(retry_after)
    assert api("GET", "/clashdetection/runs/unknown").status_code == 404


# -- routing ----------------------------------------------------------------------------------------------
def test_unknown_path_answers_404_with_an_itwin_error_body(api):
    response = api("GET", "/nothing/here")

    assert response.status_code == 404
    assert error_of(response)["code"] == "ResourceNotFound"


def test_wrong_method_answers_405_naming_the_allowed_ones(api):
    response = api("PUT", "/export/connections")

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"
    assert error_of(response)["code"] == "MethodNotAllowed"


# -- scripted answers and faults --------------------------------------------------------------------------
def test_fail_next_answers_the_scripted_status_without_doing_the_work_then_resumes(simulator, api):
    connection = simulator.add_connection(IMODEL, "nightly")
    simulator.fail_next("DELETE", "/export/connections/", 429, headers={"Retry-After": "2"}, times=2)

    first = api("DELETE", f"/export/connections/{connection['id']}")
    second = api("DELETE", f"/export/connections/{connection['id']}")
    assert connection["id"] in simulator.connections
    third = api("DELETE", f"/export/connections/{connection['id']}")

    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 204]
    assert first.headers["Retry-After"] == "2"
    assert error_of(first)["code"] == "RateLimitExceeded"
    assert [r.fault for r in simulator.api_calls()] == ["scripted", "scripted", None]


def test_fail_next_sends_a_given_body_and_matches_only_its_method_and_prefix(simulator, api):
    simulator.add_imodel(IMODEL)
    simulator.fail_next("POST", "/export/", 502, body={"message": "Bad gateway"})

    listed = api("GET", f"/export/connections?iModelId={IMODEL}")
    created = api("POST", "/export/connections", json={"iModelId": IMODEL})

    assert listed.status_code == 200
    assert (created.status_code, created.json()) == (502, {"message": "Bad gateway"})
    assert simulator.connections == {}


def test_drop_next_closes_the_connection_without_an_answer(simulator, api):
    simulator.drop_next("POST", "/export/connections")

    with pytest.raises(requests.ConnectionError):
        api("POST", "/export/connections", json={"iModelId": IMODEL})

    assert simulator.connections == {}
    assert simulator.api_calls()[-1].status is None
    assert api("POST", "/export/connections", json={"iModelId": IMODEL}).status_code == 201


def test_error_faults_answer_roughly_their_share_with_itwin_or_proxy_bodies_and_change_nothing(simulator, api):
    simulator.faults = Faults(error_rate=0.3, seed=42)

    responses = [api("POST", "/export/connections", json={"iModelId": IMODEL}) for _ in range(200)]

    by_status = Counter(r.status_code for r in responses)
    assert set(by_status) <= {201, 500, 503, 429}
    assert 40 <= 200 - by_status[201] <= 80
    assert len(simulator.connections) == by_status[201]
    failures = [r for r in responses if r.status_code != 201]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in failures if r.status_code == 429)
    kinds = {r.headers.get("Content-Type", "").split(";")[0] for r in failures if r.status_code >= 500}
    assert kinds == {"application/json", "text/html"}
    assert sum(r.fault == "error" for r in simulator.api_calls()) == len(failures)


def test_drop_faults_close_connections_without_an_answer_and_are_recorded(simulator, api):
    simulator.faults = Faults(drop_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        api("POST", "/export/connections", json={"iModelId": IMODEL})

    assert simulator.connections == {}
    [call] = simulator.api_calls()
    assert (call.status, call.fault) == (None, "drop")


def test_a_stalled_call_times_out_at_the_client_but_the_server_still_does_the_work(simulator, api):
    simulator.faults = Faults(stall_rate=1.0, stall_seconds=0.4)

    with pytest.raises(requests.ReadTimeout):
        api("POST", "/export/connections", json={"iModelId": IMODEL}, timeout=(2, 0.1))
    assert simulator.connections == {}

    deadline = time.monotonic() + 3
    while not simulator.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(simulator.connections) == 1
    [call] = simulator.api_calls()
    assert (call.status, call.fault) == (201, "stall")


def test_latency_delays_every_api_call_but_not_the_token_service(simulator, api, session):
    simulator.faults = Faults(latency=0.2)

    started = time.monotonic()
    api("GET", "/clashdetection/runs/unknown")
    api_seconds = time.monotonic() - started
    started = time.monotonic()
    session.post(simulator.url + "/connect/token", data=token_form(simulator), timeout=5)
    token_seconds = time.monotonic() - started

    assert api_seconds >= 0.2
    assert token_seconds < 0.2


def test_faults_reject_shares_that_do_not_add_up():
    with pytest.raises(ValueError, match="must not exceed 1"):
        Faults(error_rate=0.7, drop_rate=0.5)


# -- recording and transport ------------------------------------------------------------------------------
def test_every_request_is_recorded_in_order_with_its_answer(simulator, session):
    token = session.post(simulator.url + "/connect/token", data=token_form(simulator), timeout=5).json()
    api = Api(simulator, session, token["access_token"])
    api("POST", "/contextcapture/jobs?dryRun=no", json=job_body(), headers={"X-Correlation-Id": "abc"})

    token_request, job_request = simulator.requests
    assert (token_request.method, token_request.api, token_request.status) == ("POST", "connect", 200)
    assert not token_request.is_api_call
    assert simulator.api_calls() == simulator.api_calls("contextcapture") == [job_request]
    assert (job_request.method, job_request.path, job_request.status) == ("POST", "/contextcapture/jobs", 201)
    assert job_request.query == {"dryRun": "no"}
    assert job_request.headers["x-correlation-id"] == job_request.headers["X-CORRELATION-ID"] == "abc"
    assert job_request.headers.get("authorization") == f"Bearer {token['access_token']}"
    assert job_request.json() == job_body()
    assert token_request.started <= job_request.started <= time.monotonic()
    assert simulator.token_requests == 1


def test_a_keep_alive_session_makes_many_calls_over_one_connection(simulator, api):
    for _ in range(20):
        assert api("GET", "/contextcapture/jobs/unknown").status_code == 404

    assert simulator.connections_opened == 1


def test_token_service_accepts_the_basic_credentials_msal_and_requests_send_url_encoded(make_simulator):
    simulator = make_simulator(client_id="id:with colon", client_secret="s3cr3t/+=")
    pair = "id%3Awith+colon:s3cr3t%2F%2B%3D"
    with requests.Session() as session:
        response = session.post(
            simulator.url + "/connect/token",
            data={"grant_type": "client_credentials", "scope": "itwin-platform"},
            headers={"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()},
            timeout=5,
        )

    assert response.status_code == 200


def test_python_m_sandbox_serves_and_prints_the_settings_to_use(tmp_path):
    ca_out = tmp_path / "ca.pem"
    command = [sys.executable, "-m", "sandbox", "--port", "0", "--ca-out", str(ca_out)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        assert process.stdout is not None
        settings = {}
        while "REQUESTS_CA_BUNDLE" not in settings:
            line = process.stdout.readline()
            assert line, "the simulator exited before printing its settings"
            name, sep, value = line.strip().partition("=")
            if sep and name.isupper():
                settings[name] = value
        assert set(settings) >= {"ITWIN_AUTHORITY", "ITWIN_API_URL", "ITWIN_CLIENT_ID", "ITWIN_CLIENT_SECRET"}
        assert settings["ITWIN_AUTHORITY"] == settings["ITWIN_API_URL"]
        assert Path(settings["REQUESTS_CA_BUNDLE"]) == ca_out.resolve()
        discovery_url = settings["ITWIN_AUTHORITY"] + "/.well-known/openid-configuration"
        discovery = requests.get(discovery_url, verify=settings["REQUESTS_CA_BUNDLE"], timeout=5)
        assert discovery.json()["issuer"] == settings["ITWIN_AUTHORITY"]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "stopped" in output

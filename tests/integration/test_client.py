"""The iTwin client over real HTTPS against the simulator, with real MSAL and the OpenTelemetry SDK."""

from __future__ import annotations

import threading
import time

import pytest
from app_settings import settings_for
from manual_clock import ManualClock
from opentelemetry.trace import SpanKind, StatusCode
from samples import IMODEL, JOB_BODY, MISSING, OTHER_IMODEL

from sandbox.itwin_platform import Faults
from shared.auth import FAILURE_MEMORY
from shared.client import ACCEPT, USER_AGENT, ITwinClient
from shared.errors import (
    Conflict,
    Forbidden,
    ITwinError,
    NotFound,
    RateLimited,
    ServerError,
    Throttled,
    TokenError,
    TransportError,
    Unauthorized,
    Unprocessable,
)
from shared.pacing import SAFETY, Pacer
from shared.resources import ITwinApi
from shared.retry import RetryPolicy
from shared.settings import Settings


def make_api(simulator, captured, policy=None, **overrides) -> ITwinApi:
    settings = Settings.from_env({**settings_for(simulator), **overrides})
    return ITwinApi(ITwinClient(settings, telemetry=captured.telemetry, policy=policy, timeout=(2.0, 1.0)))


@pytest.fixture
def api(simulator, captured):
    return make_api(simulator, captured)


def client_errors(captured):
    return {dict(k)["error.type"]: (dict(k), v) for k, v in captured.counts("itwin.api.client_errors").items()}


def test_operations_return_typed_objects_and_send_the_documented_headers(api, simulator):
    connection = api.create_connection(IMODEL, "nightly")
    assert (connection.imodel_id, connection.display_name, connection.authentication_type) == (
        IMODEL,
        "nightly",
        "Service",
    )
    assert api.get_connection(connection.id) == connection
    job = api.create_job(JOB_BODY)
    assert job.state == "unsubmitted"
    assert api.submit_job(job.id).state == "active"
    assert api.cancel_job(job.id).state == "cancelled"
    run = api.create_run({"testId": "t1", "iModelId": IMODEL, "namedVersionId": "v1"})
    assert api.get_run(run.id).id == run.id
    api.delete_run(run.id)
    api.delete_connection(connection.id)
    post = next(r for r in simulator.api_calls() if r.method == "POST")
    assert post.headers["Accept"] == ACCEPT
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["User-Agent"] == USER_AGENT
    assert post.headers["Authorization"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("call", "cls", "code", "operation", "method"),
    [
        (lambda api: api.delete_connection(MISSING), NotFound, "ConnectionNotFound", "connections.delete", "DELETE"),
        (lambda api: api.get_connection(MISSING), NotFound, "ConnectionNotFound", "connections.get", "GET"),
        (lambda api: api.list_connections(MISSING), NotFound, "ConnectionNotFound", "connections.list", "GET"),
        (
            lambda api: api.delete_connection("not/valid"),
            Unprocessable,
            "InvalidExportConnectionRequest",
            "connections.delete",
            "DELETE",
        ),
        (
            lambda api: api.create_connection("not-a-guid", "x"),
            Unprocessable,
            "InvalidExportConnectionRequest",
            "connections.create",
            "POST",
        ),
        (lambda api: api.delete_job(MISSING), NotFound, "JobNotFound", "jobs.delete", "DELETE"),
        (lambda api: api.get_job(MISSING), NotFound, "JobNotFound", "jobs.get", "GET"),
        (lambda api: api.delete_run(MISSING), NotFound, "ClashDetectionRunNotFound", "runs.delete", "DELETE"),
        (lambda api: api.get_run(MISSING), NotFound, "ClashDetectionRunNotFound", "runs.get", "GET"),
    ],
)
def test_each_documented_error_raises_its_class_and_is_counted(api, captured, call, cls, code, operation, method):
    with pytest.raises(cls) as caught:
        call(api)
    assert caught.value.code == code
    assert caught.value.operation == operation
    attributes, value = client_errors(captured)[code]
    assert value == 1
    assert attributes == {
        "http.request.method": method,
        "http.response.status_code": caught.value.status,
        "error.type": code,
        "itwin.operation": operation,
    }


def test_a_422_carries_the_documented_details_and_targets(api):
    with pytest.raises(Unprocessable) as caught:
        api.create_connection("not-a-guid", "x")
    assert [(d.code, d.target) for d in caught.value.details] == [("InvalidValue", "imodelId")]


def test_deleting_a_submitted_job_is_refused_with_invalid_change(api):
    job = api.create_job(JOB_BODY)
    api.submit_job(job.id)
    with pytest.raises(Unprocessable) as caught:
        api.delete_job(job.id)
    assert caught.value.code == "InvalidContextCaptureRequest"
    assert caught.value.details[0].code == "InvalidChange"


def test_a_token_without_the_platform_scope_gets_403_with_the_usual_cause(simulator, captured):
    api = make_api(simulator, captured, ITWIN_SCOPE="some-other-scope")
    with pytest.raises(Forbidden) as caught:
        api.list_connections(IMODEL)
    assert caught.value.code == "InsufficientPermissions"
    assert "not a member of the iTwin" in str(caught.value)
    assert "InsufficientPermissions" in client_errors(captured)


def test_a_non_json_error_body_still_gives_a_useful_error_and_is_counted_by_status(api, simulator, captured):
    simulator.fail_next("DELETE", "/export/connections/", 418, body=b"<html>I'm a teapot</html>")
    with pytest.raises(ITwinError) as caught:
        api.delete_connection(MISSING)
    assert caught.value.status == 418
    assert "not an iTwin error object" in caught.value.message
    assert "teapot" in caught.value.message
    assert client_errors(captured)["418"][0]["error.type"] == "418"


def test_a_thousand_calls_from_sixteen_threads_make_one_token_request(api, simulator):
    failures = []

    def work():
        for _ in range(1000 // 16 + 1):
            try:
                api.get_connection(MISSING)
            except NotFound:
                pass
            except Exception as exc:
                failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(simulator.api_calls()) >= 1000
    assert simulator.token_requests == 1


def test_a_401_fetches_one_new_token_and_repeats_the_call_once(api, simulator):
    api.list_connections(api.create_connection(IMODEL, "a").imodel_id)
    simulator.revoke_tokens()
    assert len(api.list_connections(IMODEL)) == 1
    assert simulator.token_requests == 2
    statuses = [r.status for r in simulator.api_calls()]
    assert statuses[-2:] == [401, 200]


def test_a_second_401_after_the_refresh_is_raised(api, simulator, captured):
    simulator.fail_next("GET", "/export/connections", 401, times=2)
    with pytest.raises(Unauthorized):
        api.list_connections(IMODEL)
    assert simulator.token_requests == 2
    assert len(simulator.api_calls()) == 2


def test_a_lost_credential_is_raised_within_one_call_even_on_an_api_paced_slower_than_the_budget(simulator, captured):
    # One call per 2.1 s on the pacer's clock, which starts on a slot, and a budget of 1 s: the repeat with a fresh
    # token takes the refused call's slot, or a credential that is gone would come back as an endless pacing wait.
    slot = 1 / (0.5 * SAFETY)
    clock = ManualClock(1000 * slot)
    client = ITwinClient(
        Settings.from_env(settings_for(simulator)),
        telemetry=captured.telemetry,
        policy=RetryPolicy(budget=1.0),
        pacer=Pacer({"clashdetection": 0.5}, clock=clock, monotonic=clock),
        clock=clock,
        sleep=clock.advance,
    )
    simulator.fail_next("DELETE", "/clashdetection/runs/", 401, times=2)
    with pytest.raises(Unauthorized):
        ITwinApi(client).delete_run("a-run")
    assert [r.status for r in simulator.api_calls()] == [401, 401]
    assert simulator.token_requests == 2


def test_a_token_is_renewed_before_it_expires(make_simulator, captured):
    simulator = make_simulator(token_lifetime=3)
    api = make_api(simulator, captured)
    api.create_connection(IMODEL, "a")
    time.sleep(1.7)  # past half the lifetime: the client must renew, not use a token about to expire
    api.list_connections(IMODEL)
    assert simulator.token_requests == 2
    assert all(r.status != 401 for r in simulator.api_calls())


def test_retry_after_is_honoured_and_never_shortened(api, simulator):
    api.create_connection(IMODEL, "a")
    simulator.fail_next("GET", "/export/connections", 429, headers={"Retry-After": "1"})
    api.list_connections(IMODEL)
    refused, repeated = simulator.api_calls()[-2:]
    assert refused.status == 429
    assert repeated.status == 200
    assert repeated.started - refused.started >= 1.0


def test_a_wait_longer_than_the_budget_raises_at_once_with_retry_after(simulator, captured):
    api = make_api(simulator, captured, policy=RetryPolicy(budget=5.0))
    simulator.fail_next("DELETE", "/export/connections/", 429, headers={"Retry-After": "30"})
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        api.delete_connection(MISSING)
    assert time.monotonic() - started < 2.0
    assert caught.value.retry_after == 30.0
    assert "429" in client_errors(captured) or "RateLimitExceeded" in client_errors(captured)


def test_a_503_with_a_long_retry_after_raises_at_once_keeping_the_apis_wait(simulator, captured):
    api = make_api(simulator, captured, policy=RetryPolicy(budget=1.0))
    simulator.fail_next("DELETE", "/export/connections/", 503, headers={"Retry-After": "120"})
    with pytest.raises(ServerError) as caught:
        api.delete_connection(MISSING)
    assert caught.value.retry_after == 120.0
    assert len(simulator.api_calls()) == 1


def test_after_a_long_429_other_calls_to_that_api_are_not_sent_and_not_slept_through(simulator, captured):
    api = make_api(simulator, captured, policy=RetryPolicy(budget=1.0), ITWIN_MAX_RETRY_AFTER="1h")
    simulator.fail_next("DELETE", "/clashdetection/runs/", 429, headers={"Retry-After": "1800"})
    with pytest.raises(RateLimited):
        api.delete_run("first-run")
    started = time.monotonic()
    with pytest.raises(Throttled) as caught:
        api.get_run("an-unrelated-run")
    assert time.monotonic() - started < 0.5
    assert 1790 < caught.value.retry_after <= 1800  # the Retry-After, whatever this process's own pace
    assert caught.value.transient
    assert [r.path for r in simulator.api_calls()] == ["/clashdetection/runs/first-run"]


def test_retry_after_inf_is_the_longest_honoured_wait_not_a_crash(simulator, captured):
    api = make_api(simulator, captured, policy=RetryPolicy(budget=1.0), ITWIN_MAX_RETRY_AFTER="24h")
    simulator.fail_next("DELETE", "/export/connections/", 429, headers={"Retry-After": "inf"})
    with pytest.raises(RateLimited) as caught:
        api.delete_connection(MISSING)
    assert caught.value.retry_after == 24 * 3600


def test_server_errors_on_idempotent_calls_back_off_and_repeat(api, simulator):
    simulator.fail_next("GET", "/export/connections/", 503, times=2)
    with pytest.raises(NotFound):
        api.get_connection(MISSING)
    assert [r.status for r in simulator.api_calls()] == [503, 503, 404]


def test_a_repeat_that_pacing_holds_back_raises_the_failure_it_would_have_repeated(simulator, captured):
    settings = Settings.from_env({**settings_for(simulator), "ITWIN_RATE_LIMITS": "clashdetection=0.5"})
    still = ManualClock(0.0)  # the first call takes the slot at 0, the next one's is 2 s later: past the budget
    pacer = Pacer(settings.rate_limits, clock=still, monotonic=still)
    api = ITwinApi(ITwinClient(settings, telemetry=captured.telemetry, pacer=pacer, policy=RetryPolicy(budget=1.0)))
    simulator.fail_next("DELETE", "/clashdetection/runs/", 503, times=2)
    with pytest.raises(ServerError):  # not Throttled: that would be a wait, which uses up no attempt
        api.delete_run(MISSING)
    assert [r.status for r in simulator.api_calls()] == [503]


def test_a_create_is_not_repeated_after_a_server_error(api, simulator):
    simulator.fail_next("POST", "/export/connections", 500)
    with pytest.raises(ServerError):
        api.create_connection(IMODEL, "a")
    assert len(simulator.api_calls()) == 1


def test_a_stalled_answer_is_a_transport_error_and_a_create_is_not_repeated(api, simulator):
    simulator.faults = Faults(stall_rate=1.0, stall_seconds=2.0, seed=1)
    with pytest.raises(TransportError):
        api.create_connection(IMODEL, "a")
    assert len(simulator.api_calls()) == 1


def test_a_dropped_connection_on_a_get_is_repeated(api, simulator):
    simulator.faults = Faults(drop_rate=1.0, seed=1)
    with pytest.raises(TransportError) as caught:
        api.get_connection(MISSING)
    assert caught.value.retry_after is None  # the API named no wait: the worker's redelivery backoff decides
    assert len(simulator.api_calls()) == RetryPolicy().max_attempts


def test_a_connection_in_use_is_deleted_once_its_run_ends(api, simulator):
    connection = api.create_connection(IMODEL, "busy")
    simulator.set_connection_in_use(connection.id, seconds=0.5)
    api.delete_connection(connection.id)
    statuses = [r.status for r in simulator.api_calls() if r.method == "DELETE"]
    assert statuses[0] == 409
    assert statuses[-1] == 204
    assert connection.id not in simulator.connections


def test_a_connection_still_in_use_is_raised_as_a_transient_conflict(simulator, captured):
    api = make_api(simulator, captured, policy=RetryPolicy(max_attempts=2, backoff_base=0.01))
    connection = api.create_connection(IMODEL, "busy")
    simulator.set_connection_in_use(connection.id)
    with pytest.raises(Conflict) as caught:
        api.delete_connection(connection.id)
    assert caught.value.code == "ConnectionAlreadyInUse"
    assert caught.value.transient


def test_listing_follows_next_links_over_every_page(make_simulator, captured):
    simulator = make_simulator(default_page_size=2)
    api = make_api(simulator, captured)
    created = {api.create_connection(IMODEL, f"c{i}").id for i in range(5)}
    assert {c.id for c in api.list_connections(IMODEL)} == created
    assert len([r for r in simulator.api_calls() if r.method == "GET"]) == 3


def test_listing_puts_the_imodel_filter_back_when_a_next_link_drops_it(make_simulator, captured):
    simulator = make_simulator(default_page_size=2)
    api = make_api(simulator, captured)
    mine = {api.create_connection(IMODEL, f"mine{i}").id for i in range(3)}
    for i in range(3):
        api.create_connection(OTHER_IMODEL, f"theirs{i}")

    assert {c.id for c in api.list_connections(IMODEL)} == mine
    lists = [r for r in simulator.api_calls() if r.method == "GET"]
    assert len(lists) == 2
    assert all(r.query.get("imodelId") == IMODEL for r in lists)


def test_connections_of_another_imodel_in_a_list_answer_are_never_returned(api, simulator):
    theirs = {"id": "VRZHoBhrnkGrAev0-_-d_xwvyrzjgaVGka5wU967Q7M", "iModelId": OTHER_IMODEL, "displayName": "30"}
    untagged = {"id": "fc226d0d-1647-48d7-8c11-f1f74f2d9808", "displayName": "30"}
    simulator.fail_next("GET", "/export/connections", 200, body={"connections": [theirs, untagged], "_links": {}})
    assert api.list_connections(IMODEL) == []


def test_a_next_link_that_repeats_stops_the_listing_with_an_error(api, simulator):
    loop = {"connections": [], "_links": {"next": {"href": f"{simulator.url}/export/connections?$skip=0&$top=2"}}}
    simulator.fail_next("GET", "/export/connections", 200, body=loop, times=10)
    with pytest.raises(ITwinError, match="repeats a next link"):
        api.list_connections(IMODEL)
    assert len(simulator.api_calls()) == 2


def test_clash_detection_calls_are_paced_under_six_per_second(api, simulator):
    started = time.monotonic()
    for _ in range(13):
        with pytest.raises(NotFound):
            api.get_run(MISSING)
    assert time.monotonic() - started >= 2.0
    assert all(r.status == 404 for r in simulator.api_calls("clashdetection"))


def test_each_attempt_is_a_client_span_and_a_duration_point(api, simulator, captured):
    simulator.fail_next("GET", "/export/connections/", 503)
    with pytest.raises(NotFound):
        api.get_connection(MISSING)
    spans = [s for s in captured.spans() if s.kind is SpanKind.CLIENT]
    assert [s.attributes["http.response.status_code"] for s in spans] == [503, 404]
    assert all(s.status.status_code is StatusCode.ERROR for s in spans)
    assert spans[0].attributes["server.address"] == "127.0.0.1"
    points = captured.points("http.client.request.duration")
    assert sum(p.count for p in points) == 2
    assert {p.attributes["error.type"] for p in points} == {"503", "404"}


def test_the_token_never_appears_in_spans_or_metrics(api, simulator, captured):
    api.create_connection(IMODEL, "a")
    with pytest.raises(NotFound):
        api.get_connection(MISSING)
    token = simulator.api_calls()[0].headers["Authorization"].removeprefix("Bearer ")
    recorded = repr([dict(s.attributes) for s in captured.spans()]) + repr(captured.reader.get_metrics_data())
    assert token not in recorded
    assert simulator.client_secret not in recorded


def test_a_wrong_secret_is_a_permanent_token_error(simulator, captured):
    api = make_api(simulator, captured, ITWIN_CLIENT_SECRET="wrong-secret")
    with pytest.raises(TokenError) as caught:
        api.list_connections(IMODEL)
    assert caught.value.code == "invalid_client"
    assert not caught.value.transient
    assert "wrong-secret" not in str(caught.value)
    assert captured.counts("itwin.token.failures") == {(("error.type", "invalid_client"),): 1}


def test_a_token_service_outage_is_a_transient_token_error(simulator, captured):
    api = make_api(simulator, captured)
    simulator.token_service_down = True
    with pytest.raises(TokenError) as caught:
        api.list_connections(IMODEL)
    assert caught.value.transient
    assert captured.counts("itwin.token.failures") == {(("error.type", caught.value.code),): 1}
    assert caught.value.code == "TokenServiceUnavailable"


DISCOVERY = "/.well-known/openid-configuration"


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (429, None, {"Retry-After": "3"}),
        (404, b"<html>Not Found</html>", None),
        (200, b"<html>a proxy's page</html>", None),
    ],
)
def test_a_discovery_answer_that_may_pass_is_transient_and_a_call_after_a_few_seconds_works(
    simulator, captured, status, body, headers
):
    clock = Clock()
    settings = Settings.from_env(settings_for(simulator))
    api = ITwinApi(ITwinClient(settings, telemetry=captured.telemetry, timeout=(2.0, 1.0), clock=clock))
    simulator.fail_next("GET", DISCOVERY, status, body=body, headers=headers)
    with pytest.raises(TokenError) as caught:
        api.get_connection(MISSING)
    assert caught.value.transient
    assert caught.value.code == "TokenServiceUnavailable"
    assert caught.value.retry_after == (3.0 if status == 429 else None)
    with pytest.raises(TokenError):  # remembered: no request to a failing token service meanwhile
        api.get_connection(MISSING)
    clock.skip(FAILURE_MEMORY)
    with pytest.raises(NotFound):
        api.get_connection(MISSING)


class Clock:
    """The monotonic clock, with seconds a test can skip."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"issuer": "https://ims.example.com"}, id="missing-endpoints"),
        pytest.param(None, id="issuer-on-another-host"),
    ],
)
def test_a_discovery_document_that_arrived_and_is_unusable_is_permanent(api, simulator, document):
    if document is None:
        document = {
            "issuer": "https://ims.example.com",
            "authorization_endpoint": f"{simulator.url}/connect/authorize",
            "token_endpoint": f"{simulator.url}/connect/token",
        }
    simulator.fail_next("GET", DISCOVERY, 200, body=document)
    with pytest.raises(TokenError) as caught:
        api.get_connection(MISSING)
    assert not caught.value.transient
    assert caught.value.code == "TokenServiceMisconfigured"
    assert "ITWIN_AUTHORITY" in str(caught.value)


def test_discovery_is_read_once_for_msal(api, simulator):
    with pytest.raises(NotFound):
        api.get_connection(MISSING)
    assert len([r for r in simulator.requests if r.path == DISCOVERY]) == 1


def test_a_link_to_another_host_is_never_followed(api):
    with pytest.raises(ITwinError, match="outside ITWIN_API_URL"):
        api.client.call("GET", "https://evil.example.com/export/connections", operation="connections.list")


def test_listing_runs_of_a_project_follows_continuation_links(make_simulator, captured):
    simulator = make_simulator(default_page_size=2, rate_limits={})
    api = make_api(simulator, captured)
    created = {simulator.add_run(project_id="p-1", test_id="t")["id"] for _ in range(5)}
    simulator.add_run(project_id="p-2", test_id="t")
    assert {run.id for run in api.list_runs("p-1")} == created
    assert len(simulator.api_calls()) == 3


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "HeaderNotFound", Unauthorized),
        (429, "RateLimitExceeded", RateLimited),
        (429, "TooManyRequests", RateLimited),
        (409, "ConnectionAlreadyInUse", Conflict),
    ],
)
def test_the_seeds_other_codes_are_raised_and_counted(simulator, captured, status, code, cls):
    api = make_api(simulator, captured, policy=RetryPolicy(max_attempts=1, budget=0.0))
    body = {"error": {"code": code, "message": "as the seeds document"}}
    simulator.fail_next("DELETE", "/export/connections/", status, headers={"Retry-After": "5"}, body=body, times=2)
    with pytest.raises(cls) as caught:
        api.delete_connection(MISSING)
    assert caught.value.code == code
    attributes, value = client_errors(captured)[code]
    assert attributes["http.response.status_code"] == status
    assert attributes["itwin.operation"] == "connections.delete"
    assert value == len(simulator.api_calls())


def test_a_page_size_out_of_limits_is_a_422_with_the_top_target(api, captured):
    api.create_connection(IMODEL, "a")
    with pytest.raises(Unprocessable) as caught:
        api.client.call(
            "GET", "/export/connections", operation="connections.list", params={"iModelId": IMODEL, "$top": "0"}
        )
    assert caught.value.code == "InvalidConnectionsRequest"
    assert ("InvalidValue", "$top") in [(d.code, d.target) for d in caught.value.details]
    assert "InvalidConnectionsRequest" in client_errors(captured)

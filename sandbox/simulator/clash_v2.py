"""Clash Detection v2 (``/clash-detection/itwins/{iTwinId}/...``): runs started, clash reports listed with a
continuation token, read, runs cancelled and reports deleted.

From the operation pages: "Run clash detection tests" is ``POST .../runs/jobs`` with ``{"jobs": [{testId, iModelId,
changesetId, testSettings?}], "operation": "run"}``, one test per request, answered 200 ``{"runs": [{testId,
clashReportId, status}]}``; "Get clash detection reports" is ``GET .../reports[?$top][&$continuationToken]`` ($top 10
by default, 100 at most; the ``repository-id`` header keeps one iModel's reports), answered ``{"count", "reports",
"_links": {self, next, prev}}``; "Get clash detection report" answers ``{"metadata", "report"}``; "Cancel clash
detection runs" and "Delete clash detection reports" are ``POST .../reports/jobs/cancellation`` and
``.../reports/jobs/deletion`` with ``{"jobs": [reportId], "operation": "cancel" | "delete"}``, one id at a time.
Errors the pages give: 404 ``iTwinNotFound`` "Requested iTwin is not available.", 422 ``InvalidDeleteReportsRequest``
"Clash Detection Reports Deletion Failed.", 429 ``RateLimitExceeded`` with Retry-After (6 calls a second).

Where the pages are silent, the simulator's own choices:
- a report's numeric ``status``: 0 running, 1 completed (the page's finished example), 2 failed, 3 cancelled; a run
  stays running until a test moves it on (`Simulator.set_report_status`), and the run answer says ``"Queued"``;
- a malformed run request is 400 ``InvalidClashDetectionRequest`` with a detail per field (``jobs[0].testId``); the
  page lists a 400 and no body;
- a malformed list request ($top out of 1-100, a bad token) is 422 ``InvalidClashDetectionRequest`` naming it;
- an unknown report is 404 ``ClashReportNotFound`` on read; cancelling one that is unknown or no longer running is
  422 ``InvalidCancelRunsRequest`` "Clash Detection Runs Cancellation Failed." (shaped like the deletion's error);
  deleting one that is unknown or still running is 422 ``InvalidDeleteReportsRequest``;
- a cancel or delete that works answers 204 without a body;
- an iTwin is known when it is the simulator's default iTwin or the iTwin of a registered iModel; test ids are not
  checked (the simulator keeps no tests), and the iModel is not checked against the iTwin.
"""

from __future__ import annotations

from typing import Any

from .protocol import (
    ApiError,
    RecordedRequest,
    Response,
    continuation_token,
    detail,
    is_guid,
    json_response,
    no_content,
    parse_int,
    query_value,
    token_offset,
)
from .state import REPORT_CANCELLED, REPORT_RUNNING, World

CODE = "InvalidClashDetectionRequest"
MESSAGE = "Invalid clash detection request."
DEFAULT_TOP = 10
MAX_TOP = 100


def _itwin(world: World, itwin_id: str) -> str:
    known = {world.default_itwin_id.lower(), *(i.lower() for i in world.imodels.values())}
    if not is_guid(itwin_id) or itwin_id.lower() not in known:
        raise ApiError(404, "iTwinNotFound", "Requested iTwin is not available.")
    return itwin_id


def _body(request: RecordedRequest, status: int, code: str, message: str) -> dict[str, Any]:
    try:
        payload = request.json() if request.body else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ApiError(
            status, code, message, details=[detail("InvalidRequestBody", "Error parsing JSON, malformed JSON.")]
        )
    return payload


def run_tests(world: World, request: RecordedRequest, itwin_id: str) -> Response:
    """POST .../runs/jobs: 200 ``{"runs": [{testId, clashReportId, status}]}``; 400 naming each field; 404."""
    itwin_id = _itwin(world, itwin_id)
    payload = _body(request, 400, CODE, MESSAGE)
    details = []
    if payload.get("operation") != "run":
        details.append(detail("InvalidValue", "operation must be 'run'.", "operation"))
    jobs = payload.get("jobs")
    if not isinstance(jobs, list) or len(jobs) != 1 or not isinstance(jobs[0], dict):
        details.append(detail("InvalidValue", "jobs must hold exactly one test to run.", "jobs"))
        raise ApiError(400, CODE, MESSAGE, details=details)
    job = jobs[0]
    for name in ("testId", "iModelId", "changesetId"):
        value = job.get(name)
        if value is None:
            details.append(detail("MissingRequiredProperty", f"{name} was not provided.", f"jobs[0].{name}"))
        elif not isinstance(value, str) or not value.strip() or (name != "changesetId" and not is_guid(value)):
            details.append(detail("InvalidValue", f"Provided {name} value is not valid.", f"jobs[0].{name}"))
    settings = job.get("testSettings", {})
    limit = settings.get("resultsLimit", 100_000) if isinstance(settings, dict) else None
    if isinstance(limit, str) and limit.isdigit():
        limit = int(limit)  # the page's own example sends "10000"
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100_000:
        details.append(detail("InvalidValue", "Provided resultsLimit value is not valid.", "jobs[0].testSettings"))
    if details:
        raise ApiError(400, CODE, MESSAGE, details=details)
    report = world.add_report(
        itwin_id=itwin_id,
        test_id=job["testId"],
        imodel_id=job["iModelId"],
        changeset_id=job["changesetId"],
        results_limit=limit,
    )
    return json_response(200, {"runs": [{"testId": job["testId"], "clashReportId": report["id"], "status": "Queued"}]})


def list_reports(world: World, request: RecordedRequest, itwin_id: str) -> Response:
    """GET .../reports[?$top][&$continuationToken]: ``{"count", "reports", "_links"}``; next is null on the last
    page. ``continuationToken`` without the ``$`` is accepted too."""
    itwin_id = _itwin(world, itwin_id)
    top = parse_int(query_value(request.query, "$top"), DEFAULT_TOP)
    token = query_value(request.query, "$continuationToken") or query_value(request.query, "continuationToken")
    offset = 0 if token is None else token_offset(token)
    details = []
    if top is None or not 1 <= top <= MAX_TOP:
        details.append(detail("InvalidValue", "Page size is out of limits.", "$top"))
    if offset is None:
        details.append(detail("InvalidValue", "Provided continuationToken value is not valid.", "$continuationToken"))
    if details:
        raise ApiError(422, CODE, MESSAGE, details=details)
    assert top is not None
    assert offset is not None
    repository = request.headers.get("repository-id")
    matching = [
        r
        for r in world.reports.values()
        if r["iTwinId"].lower() == itwin_id.lower()
        and (not repository or r["repositoryId"].lower() == repository.lower())
    ]
    base = f"{world.base_url}/clash-detection/itwins/{itwin_id}/reports"
    next_link = None
    if offset + top < len(matching):
        next_link = {"href": f"{base}?$top={top}&$continuationToken={continuation_token(offset + top)}"}
    page = [{**r, "vStatuses": {"new": 0, "open": 0, "resolved": 0, "ms": 0, "rs": 0, "multiSup": 0}} for r in matching]
    links = {"self": {"href": base}, "next": next_link, "prev": None}
    return json_response(200, {"count": len(matching), "reports": page[offset : offset + top], "_links": links})


def _report(world: World, itwin_id: str, report_id: str) -> dict[str, Any] | None:
    report = world.reports.get(report_id.lower())
    return report if report is not None and report["iTwinId"].lower() == itwin_id.lower() else None


def get_report(world: World, request: RecordedRequest, itwin_id: str, report_id: str) -> Response:
    """GET .../reports/{id}: 200 ``{"metadata", "report"}``; 404 ``ClashReportNotFound``."""
    itwin_id = _itwin(world, itwin_id)
    report = _report(world, itwin_id, report_id)
    if report is None:
        raise ApiError(404, "ClashReportNotFound", "Requested clash report is not available.")
    body = {"calculateOverlap": False, "elementsWLoaderrors": 0, "numProcessed": 0, "numResults": 0, "clashes": []}
    return json_response(200, {"metadata": report, "report": body})


def _one_id(payload: dict[str, Any], operation: str, code: str, message: str) -> str:
    details = []
    if payload.get("operation") != operation:
        details.append(detail("InvalidValue", f"operation must be '{operation}'.", "operation"))
    jobs = payload.get("jobs")
    if not isinstance(jobs, list) or len(jobs) != 1 or not is_guid(jobs[0]):
        details.append(detail("InvalidValue", "jobs must hold exactly one clash report id.", "jobs"))
    if details:
        raise ApiError(422, code, message, details=details)
    return jobs[0]


def cancel_runs(world: World, request: RecordedRequest, itwin_id: str) -> Response:
    """POST .../reports/jobs/cancellation ``{"jobs": [id], "operation": "cancel"}``: 204; 422 when the report is
    unknown or its run no longer in progress."""
    itwin_id = _itwin(world, itwin_id)
    code, message = "InvalidCancelRunsRequest", "Clash Detection Runs Cancellation Failed."
    report = _report(world, itwin_id, _one_id(_body(request, 422, code, message), "cancel", code, message))
    if report is None or report["status"] != REPORT_RUNNING:
        raise ApiError(422, code, message)
    report["status"] = REPORT_CANCELLED
    return no_content()


def delete_reports(world: World, request: RecordedRequest, itwin_id: str) -> Response:
    """POST .../reports/jobs/deletion ``{"jobs": [id], "operation": "delete"}``: 204; 422 when the report is
    unknown or still running (cancel it first)."""
    itwin_id = _itwin(world, itwin_id)
    code, message = "InvalidDeleteReportsRequest", "Clash Detection Reports Deletion Failed."
    report = _report(world, itwin_id, _one_id(_body(request, 422, code, message), "delete", code, message))
    if report is None or report["status"] == REPORT_RUNNING:
        raise ApiError(422, code, message)
    del world.reports[report["id"].lower()]
    return no_content()


ROUTES = (
    ("/clash-detection/itwins/{itwin_id}/runs/jobs", {"POST": run_tests}),
    ("/clash-detection/itwins/{itwin_id}/reports", {"GET": list_reports}),
    ("/clash-detection/itwins/{itwin_id}/reports/jobs/cancellation", {"POST": cancel_runs}),
    ("/clash-detection/itwins/{itwin_id}/reports/jobs/deletion", {"POST": delete_reports}),
    ("/clash-detection/itwins/{itwin_id}/reports/{report_id}", {"GET": get_report}),
)

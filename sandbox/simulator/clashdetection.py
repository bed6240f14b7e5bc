"""Clash Detection v1 (``/clashdetection``): runs started, listed with a continuation token, read, deleted."""

from __future__ import annotations

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
    parse_json_object,
    query_value,
    token_offset,
)
from .state import World

CODE = "InvalidClashDetectionRequest"
MESSAGE = "Invalid clash detection request."


def _run_not_found() -> ApiError:
    return ApiError(404, "ClashDetectionRunNotFound", "Requested run is not available.")


def create_run(world: World, request: RecordedRequest) -> Response:
    """POST /clashdetection/runs ``{testId, iModelId, namedVersionId}``: 201 ``{"run": {id, _links}}``; 422."""
    payload = parse_json_object(request.body, CODE, MESSAGE)
    details = []
    for name in ("testId", "iModelId", "namedVersionId"):
        value = payload.get(name)
        if value is None:
            details.append(detail("MissingRequiredProperty", f"{name} was not provided.", name))
        elif not isinstance(value, str) or not value.strip() or (name == "iModelId" and not is_guid(value)):
            details.append(detail("InvalidValue", f"Provided {name} value is not valid.", name))
    project_id = payload.get("projectId")
    if project_id is not None and not isinstance(project_id, str):
        details.append(detail("InvalidValue", "Provided projectId value is not valid.", "projectId"))
    if details:
        raise ApiError(422, CODE, MESSAGE, details=details)
    extra = {key: payload[key] for key in ("testSettings", "inPlace") if key in payload}
    run = world.add_run(
        test_id=payload["testId"],
        imodel_id=payload["iModelId"],
        named_version_id=payload["namedVersionId"],
        project_id=project_id,
        extra=extra,
    )
    link = run["_links"]["run"]["href"]
    return json_response(201, {"run": {"id": run["id"], "_links": {"run": {"href": link}}}}, {"Location": link})


def list_runs(world: World, request: RecordedRequest) -> Response:
    """GET /clashdetection/runs?projectId[&$top][&continuationToken]: ``{"runs", "_links": {"next"}}``.

    ``_links.next`` is null on the last page.
    """
    project_id = query_value(request.query, "projectId")
    top = parse_int(request.query.get("$top"), world.default_page_size)
    token = query_value(request.query, "continuationToken")
    offset = 0 if token is None else token_offset(token)
    details = []
    if not project_id:
        details.append(detail("MissingRequiredProperty", "projectId was not provided.", "projectId"))
    if top is None or not 1 <= top <= world.max_page_size:
        details.append(detail("InvalidValue", "Page size is out of limits.", "$top"))
    if offset is None:
        details.append(detail("InvalidValue", "Provided continuationToken value is not valid.", "continuationToken"))
    if details:
        raise ApiError(422, CODE, MESSAGE, details=details)
    assert top is not None
    assert offset is not None
    matching = [run for run in world.runs.values() if run["projectId"] == project_id]
    next_link = None
    if offset + top < len(matching):
        query = f"projectId={project_id}&$top={top}&continuationToken={continuation_token(offset + top)}"
        next_link = {"href": f"{world.base_url}/clashdetection/runs?{query}"}
    return json_response(200, {"runs": matching[offset : offset + top], "_links": {"next": next_link}})


def get_run(world: World, request: RecordedRequest, run_id: str) -> Response:
    """GET /clashdetection/runs/{id}: 200 ``{"run"}``; 404 ``ClashDetectionRunNotFound``."""
    run = world.runs.get(run_id)
    if run is None:
        raise _run_not_found()
    return json_response(200, {"run": run})


def delete_run(world: World, request: RecordedRequest, run_id: str) -> Response:
    """DELETE /clashdetection/runs/{id}: 204 without a body; 404 ``ClashDetectionRunNotFound``."""
    if world.runs.pop(run_id, None) is None:
        raise _run_not_found()
    return no_content()


ROUTES = (
    ("/clashdetection/runs", {"GET": list_runs, "POST": create_run}),
    ("/clashdetection/runs/{run_id}", {"GET": get_run, "DELETE": delete_run}),
)

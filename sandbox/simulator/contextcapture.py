"""Reality Modeling v1, "ContextCapture" (``/contextcapture``): jobs created, read, submitted, cancelled, deleted.

States: ``unsubmitted`` -> ``active`` (PATCH state active) -> ``success`` / ``failed`` (set by tests with
`Simulator.set_job_state`); ``unsubmitted`` or ``active`` -> ``cancelled`` (PATCH state cancelled).
"""

from __future__ import annotations

from typing import Any

from .protocol import (
    ApiError,
    RecordedRequest,
    Response,
    detail,
    is_guid,
    json_response,
    no_content,
    parse_json_object,
)
from .state import JOB_TYPES, World

CODE = "InvalidContextCaptureRequest"
TRANSITIONS = {"active": ("unsubmitted",), "cancelled": ("unsubmitted", "active")}


def _job_not_found() -> ApiError:
    return ApiError(404, "JobNotFound", "Requested job is not available.")


def _missing(name: str) -> dict[str, str]:
    return detail("MissingRequiredProperty", f"{name} was not provided.", name)


def _invalid(name: str) -> dict[str, str]:
    return detail("InvalidValue", f"Provided {name} value is not valid.", name)


def _validate_job(payload: dict[str, Any]) -> list[dict[str, str]]:
    details = []
    job_type = payload.get("type")
    if job_type is None:
        details.append(_missing("type"))
    elif job_type not in JOB_TYPES:
        details.append(_invalid("type"))
    name = payload.get("name")
    if name is None:
        details.append(_missing("name"))
    elif not isinstance(name, str) or not name.strip():
        details.append(_invalid("name"))
    workspace_id = payload.get("workspaceId")
    if workspace_id is None:
        details.append(_missing("workspaceId"))
    elif not is_guid(workspace_id):
        details.append(_invalid("workspaceId"))
    inputs = payload.get("inputs")
    if inputs is None:
        details.append(_missing("inputs"))
    elif not isinstance(inputs, list) or not inputs:
        details.append(_invalid("inputs"))
    else:
        for index, item in enumerate(inputs):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
                details.append(_invalid(f"inputs[{index}].id"))
    settings = payload.get("settings")
    if settings is None:
        details.append(_missing("settings"))
    elif not isinstance(settings, dict):
        details.append(_invalid("settings"))
    elif "outputs" in settings and not isinstance(settings["outputs"], list):
        details.append(_invalid("settings.outputs"))
    return details


def create_job(world: World, request: RecordedRequest) -> Response:
    """POST /contextcapture/jobs: 201 ``{"job"}`` in state unsubmitted; 422 with one detail per problem."""
    payload = parse_json_object(request.body, CODE, "Cannot create job.")
    details = _validate_job(payload)
    if details:
        raise ApiError(422, CODE, "Cannot create job.", details=details)
    extra = {}
    if "costEstimationParameters" in payload:
        extra["costEstimationParameters"] = payload["costEstimationParameters"]
    job = world.add_job(
        name=payload["name"],
        job_type=payload["type"],
        workspace_id=payload["workspaceId"],
        inputs=payload["inputs"],
        settings=payload["settings"],
        extra=extra,
    )
    return json_response(201, {"job": job}, {"Location": f"{world.base_url}/contextcapture/jobs/{job['id']}"})


def get_job(world: World, request: RecordedRequest, job_id: str) -> Response:
    """GET /contextcapture/jobs/{id}: 200 ``{"job"}``; 404 ``JobNotFound``."""
    job = world.jobs.get(job_id)
    if job is None:
        raise _job_not_found()
    return json_response(200, {"job": job})


def change_job(world: World, request: RecordedRequest, job_id: str) -> Response:
    """PATCH /contextcapture/jobs/{id} ``{"state": "active" | "cancelled"}``: 200 ``{"job"}``; 404; 422."""
    job = world.jobs.get(job_id)
    if job is None:
        raise _job_not_found()
    payload = parse_json_object(request.body, CODE, "Cannot modify job.")
    state = payload.get("state")
    if state is None:
        raise ApiError(422, CODE, "Cannot modify job.", details=[_missing("state")])
    if state not in TRANSITIONS:
        raise ApiError(422, CODE, "Cannot modify job.", details=[_invalid("state")])
    if job["state"] not in TRANSITIONS[state]:
        message = f"Cannot change the state of a job from '{job['state']}' to '{state}'."
        raise ApiError(422, CODE, "Cannot modify job.", details=[detail("InvalidChange", message, "state")])
    return json_response(200, {"job": world.set_job_state(job_id, state)})


def delete_job(world: World, request: RecordedRequest, job_id: str) -> Response:
    """DELETE /contextcapture/jobs/{id}: 204 when unsubmitted; 422 ``InvalidChange`` otherwise; 404."""
    job = world.jobs.get(job_id)
    if job is None:
        raise _job_not_found()
    if job["state"] != "unsubmitted":
        raise ApiError(
            422,
            CODE,
            "Cannot delete job.",
            details=[detail("InvalidChange", "Cannot delete an already submitted job.")],
        )
    del world.jobs[job_id]
    return no_content()


ROUTES = (
    ("/contextcapture/jobs", {"POST": create_job}),
    ("/contextcapture/jobs/{job_id}", {"GET": get_job, "PATCH": change_job, "DELETE": delete_job}),
)

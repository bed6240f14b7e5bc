"""Reality Modeling v2 (``/reality-modeling``): jobs created (and started: v2 has no workspace and no submit),
listed with ``$filter`` and a continuation token, read, their progress and messages read, and cancelled.

From the pages: ``POST /reality-modeling/jobs`` with ``{type, name, iTwinId, specifications: {inputs, outputs}}``
answers 201 ``{"job": {id, state: "Active", userId, executionInfo: {createdDateTime}, specifications, name, type,
iTwinId}}``; ``GET /reality-modeling/jobs[?$filter][&continuationToken][&$top]`` answers ``{"jobs", "_links":
{"next"}}`` (Bentley's client filters with ``iTwinId eq <id>``); ``GET .../jobs/{id}`` 200 ``{"job"}`` or 404
``JobNotFound`` "Requested job is not available."; ``DELETE .../jobs/{id}`` cancels. On completion the platform
emits ``realityModeling.jobCompleted.v2``. Job states (Bentley's reality-capture client): Queued, Active, Success,
Failed, TerminatingOnCancel, TerminatingOnFailure, Cancelled.

Where the pages are silent, the simulator's own choices:
- a malformed create is 400 (the page lists a 400) ``InvalidRealityModelingRequest`` "Cannot create job." with a
  detail per field; any GUID is an iTwin; any word is a job type; ``specifications`` is kept as sent;
- ``$filter`` takes clauses ``iTwinId eq <id>``, ``state eq <state>``, ``type eq <type>`` and ``name eq '<name>'``
  joined by `` and ``; anything else is 400 ``InvalidRealityModelingRequest`` naming ``$filter``; ``$top`` is 1 to
  the simulator's page size limit (a 400 naming ``$top`` otherwise); on the last page ``_links`` has no ``next``;
- DELETE of an Active or Queued job answers 200 ``{"job"}`` in state TerminatingOnCancel (as the sibling Reality
  Analysis v2 page shows); of a job that ended or is ending, 422 ``InvalidRealityModelingRequest`` "Cannot cancel
  job." with detail ``InvalidChange``; the job then stays there until a test moves it on
  (`Simulator.set_reality_job_state`), and reaching Success, Failed or Cancelled publishes
  ``realityModeling.jobCompleted.v2`` with content ``{"jobId"}`` (as v1's);
- progress is ``{"progress": {"state", "percentage"}}`` (100 once ended), messages ``{"messages": {"errors": [],
  "warnings": []}}``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from .protocol import (
    ApiError,
    RecordedRequest,
    Response,
    continuation_token,
    detail,
    is_guid,
    json_response,
    parse_int,
    parse_json_object,
    query_value,
    token_offset,
)
from .state import REALITY_JOB_ENDED, World

CODE = "InvalidRealityModelingRequest"
_JOB_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_CLAUSE = re.compile(r"\s*(iTwinId|state|type|name)\s+eq\s+('(?:[^']|'')*'|[^\s']+)\s*", re.IGNORECASE)


def _not_found() -> ApiError:
    return ApiError(404, "JobNotFound", "Requested job is not available.")


def _job(world: World, job_id: str) -> dict[str, Any]:
    job = world.reality_jobs.get(job_id.lower()) if is_guid(job_id) else None
    if job is None:
        raise _not_found()
    return job


def create_job(world: World, request: RecordedRequest) -> Response:
    """POST /reality-modeling/jobs: 201 ``{"job"}`` in state Active; 400 with one detail per problem."""
    payload = parse_json_object(request.body, CODE, "Cannot create job.")
    details = []
    for name, ok in (
        ("type", lambda v: isinstance(v, str) and _JOB_TYPE.fullmatch(v) is not None),
        ("iTwinId", is_guid),
        ("specifications", lambda v: isinstance(v, dict)),
    ):
        if payload.get(name) is None:
            details.append(detail("MissingRequiredProperty", f"{name} was not provided.", name))
        elif not ok(payload[name]):
            details.append(detail("InvalidValue", f"Provided {name} value is not valid.", name))
    name = payload.get("name")
    if name is not None and (not isinstance(name, str) or len(name.strip()) < 3):
        details.append(detail("InvalidValue", "Provided name value is not valid.", "name"))
    if details:
        raise ApiError(400, CODE, "Cannot create job.", details=details)
    job = world.add_reality_job(
        itwin_id=payload["iTwinId"],
        name=name or f"{payload['type']} job",
        job_type=payload["type"],
        specifications=payload["specifications"],
    )
    location = f"{world.base_url}/reality-modeling/jobs/{job['id']}"
    return json_response(201, {"job": job}, {"Location": location})


def _parse_filter(text: str) -> list[tuple[str, str]] | None:
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.fullmatch(part)
        if match is None:
            return None
        value = match.group(2)
        if value.startswith("'"):
            value = value[1:-1].replace("''", "'")
        clauses.append((match.group(1).lower(), value))
    return clauses


def list_jobs(world: World, request: RecordedRequest) -> Response:
    """GET /reality-modeling/jobs[?$filter][&continuationToken][&$top]: ``{"jobs", "_links"}``."""
    text = query_value(request.query, "$filter")
    top = parse_int(query_value(request.query, "$top"), world.default_page_size)
    token = query_value(request.query, "continuationToken")
    offset = 0 if token is None else token_offset(token)
    clauses = _parse_filter(text) if text else []
    details = []
    if clauses is None:
        details.append(detail("InvalidValue", "Provided $filter value is not valid.", "$filter"))
    if top is None or not 1 <= top <= world.max_page_size:
        details.append(detail("InvalidValue", "Page size is out of limits.", "$top"))
    if offset is None:
        details.append(detail("InvalidValue", "Provided continuationToken value is not valid.", "continuationToken"))
    if details:
        raise ApiError(400, CODE, "Cannot list jobs.", details=details)
    assert clauses is not None
    assert top is not None
    assert offset is not None
    fields = {"itwinid": "iTwinId", "state": "state", "type": "type", "name": "name"}

    def keeps(job: dict[str, Any]) -> bool:
        for field, value in clauses:
            have = str(job.get(fields[field], ""))
            if (have.lower() != value.lower()) if field == "itwinid" else have != value:
                return False
        return True

    matching = [job for job in world.reality_jobs.values() if keeps(job)]
    links: dict[str, Any] = {}
    if offset + top < len(matching):
        query = f"$top={top}&continuationToken={continuation_token(offset + top)}"
        if text:
            query = f"$filter={quote(text)}&{query}"
        links["next"] = {"href": f"{world.base_url}/reality-modeling/jobs?{query}"}
    return json_response(200, {"jobs": matching[offset : offset + top], "_links": links})


def get_job(world: World, request: RecordedRequest, job_id: str) -> Response:
    """GET /reality-modeling/jobs/{id}: 200 ``{"job"}``; 404 ``JobNotFound``."""
    return json_response(200, {"job": _job(world, job_id)})


def get_progress(world: World, request: RecordedRequest, job_id: str) -> Response:
    """GET /reality-modeling/jobs/{id}/progress: ``{"progress": {state, percentage}}``; 404."""
    job = _job(world, job_id)
    percentage = 100 if job["state"] in REALITY_JOB_ENDED else 0
    return json_response(200, {"progress": {"state": job["state"], "percentage": percentage}})


def get_messages(world: World, request: RecordedRequest, job_id: str) -> Response:
    """GET /reality-modeling/jobs/{id}/messages: ``{"messages": {errors, warnings}}``; 404."""
    _job(world, job_id)
    return json_response(200, {"messages": {"errors": [], "warnings": []}})


def cancel_job(world: World, request: RecordedRequest, job_id: str) -> Response:
    """DELETE /reality-modeling/jobs/{id}: 200 ``{"job"}`` TerminatingOnCancel; 404; 422 when it ended or ends."""
    job = _job(world, job_id)
    if job["state"] not in ("Active", "Queued"):
        message = f"Cannot cancel a job in state '{job['state']}'."
        raise ApiError(422, CODE, "Cannot cancel job.", details=[detail("InvalidChange", message, "state")])
    return json_response(200, {"job": world.set_reality_job_state(job_id, "TerminatingOnCancel")})


ROUTES = (
    ("/reality-modeling/jobs", {"GET": list_jobs, "POST": create_job}),
    ("/reality-modeling/jobs/{job_id}", {"GET": get_job, "DELETE": cancel_job}),
    ("/reality-modeling/jobs/{job_id}/progress", {"GET": get_progress}),
    ("/reality-modeling/jobs/{job_id}/messages", {"GET": get_messages}),
)

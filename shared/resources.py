"""Typed operations on Export connections, ContextCapture (v1) and Reality Modeling v2 jobs, Clash Detection v1
runs and Clash Detection v2 runs and reports."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests

from shared.client import ITwinClient
from shared.errors import ITwinError

log = logging.getLogger(__name__)

MAX_PAGES = 1000
V2_ACCEPT = "application/vnd.bentley.itwin-platform.v2+json"
IMODELS_ACCEPT = V2_ACCEPT  # the iModels API is at v2
_V2 = {"Accept": V2_ACCEPT}
# Clash Detection v2 answers a report's ``status`` as a number; the pages show 1 for a finished report and list no
# values. The simulator uses 0 for a run still going (see `sandbox.simulator.clash_v2`); any other value is a run that
# ended, which is all the worker asks (can it still be cancelled?).
CLASH_REPORT_RUNNING = 0


def _href(links: Any, name: str) -> str | None:
    link = links.get(name) if isinstance(links, dict) else None
    href = link.get("href") if isinstance(link, dict) else None
    return href if isinstance(href, str) and href else None


def _json(response: requests.Response, operation: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ITwinError(f"the API answered {operation} with a body that is not JSON") from None


def _object(response: requests.Response, key: str, operation: str) -> dict[str, Any]:
    payload = _json(response, operation)
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        raise ITwinError(f"the API answered {operation} without a {key!r} object carrying an id")
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _id(value: str) -> str:
    return quote(value, safe="")


def _with_params(url: str, params: Mapping[str, str]) -> dict[str, str]:
    """The ``params`` that ``url``'s own query lacks (names compared case-insensitively, as the API does)."""
    present = {name.lower() for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    return {name: value for name, value in params.items() if name.lower() not in present}


@dataclass(frozen=True)
class Connection:
    """An Export connection."""

    id: str
    imodel_id: str | None
    display_name: str | None
    itwin_id: str | None = None
    authentication_type: str | None = None
    last_run_href: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Connection:
        return cls(
            id=data["id"],
            imodel_id=data.get("iModelId"),
            display_name=data.get("displayName"),
            itwin_id=data.get("iTwinId"),
            authentication_type=data.get("authenticationType"),
            last_run_href=_href(data.get("_links"), "lastRun"),
        )


@dataclass(frozen=True)
class Job:
    """A ContextCapture (Reality Modeling v1) job. ``raw`` keeps every field the API returned."""

    id: str
    state: str | None
    name: str | None = None
    type: str | None = None
    workspace_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=data["id"],
            state=data.get("state"),
            name=data.get("name"),
            type=data.get("type"),
            workspace_id=data.get("workspaceId"),
            raw=data,
        )


@dataclass(frozen=True)
class Run:
    """A Clash Detection run."""

    id: str
    status: str | None = None
    display_name: str | None = None
    href: str | None = None
    test_id: str | None = None
    imodel_id: str | None = None
    named_version_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        test_href = _href(data.get("_links"), "test")
        return cls(
            id=data["id"],
            status=data.get("status"),
            display_name=data.get("displayName"),
            href=_href(data.get("_links"), "run"),
            test_id=_text(data.get("testId")) or (test_href.rstrip("/").rsplit("/", 1)[-1] if test_href else None),
            imodel_id=_text(data.get("iModelId")),
            named_version_id=_text(data.get("namedVersionId")),
        )


@dataclass(frozen=True)
class ClashReport:
    """A Clash Detection v2 clash report: what a run produces, named by the id the run answered with."""

    id: str
    itwin_id: str
    test_id: str | None = None
    imodel_id: str | None = None
    changeset_id: str | None = None
    status: Any = None
    href: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], itwin_id: str, href: str | None = None) -> ClashReport:
        return cls(
            id=data["id"],
            itwin_id=_text(data.get("iTwinId")) or itwin_id,
            test_id=_text(data.get("configurationId")),
            imodel_id=_text(data.get("repositoryId")),
            changeset_id=_text(data.get("changesetId")),
            status=data.get("status"),
            href=href,
        )

    @property
    def running(self) -> bool:
        return self.status == CLASH_REPORT_RUNNING


@dataclass(frozen=True)
class RealityJob:
    """A Reality Modeling v2 job. ``raw`` keeps every field the API returned."""

    id: str
    state: str | None
    name: str | None = None
    type: str | None = None
    itwin_id: str | None = None
    href: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], href: str | None = None) -> RealityJob:
        return cls(
            id=data["id"],
            state=data.get("state"),
            name=data.get("name"),
            type=data.get("type"),
            itwin_id=data.get("iTwinId"),
            href=href,
            raw=data,
        )


class ITwinApi:
    """The operations the app performs, each returning typed objects. Raises `ITwinError` subclasses."""

    def __init__(self, client: ITwinClient) -> None:
        self.client = client

    def _pages(
        self,
        path: str,
        params: dict[str, str],
        key: str,
        operation: str,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paged list, following ``_links.next.href`` until it is absent.

        A link is not trusted to keep the filter: seed 003's own ``next`` link drops ``imodelId``, so any of
        ``params`` a link leaves out is put back. A ``next`` link seen before, or more than `MAX_PAGES` pages,
        raises `ITwinError` instead of following the API round in circles.
        """
        url, seen = path, set()
        for _ in range(MAX_PAGES):
            query = _with_params(url, params)
            response = self.client.call("GET", url, operation=operation, params=query, headers=headers)
            payload = _json(response, operation)
            items = payload.get(key) if isinstance(payload, dict) else None
            if not isinstance(items, list):
                raise ITwinError(f"the API answered {operation} without a {key!r} list")
            yield from (item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str))
            seen.add((url, tuple(sorted(query.items()))))
            url = _href(payload.get("_links"), "next")
            if url is None:
                return
            if (url, tuple(sorted(_with_params(url, params).items()))) in seen:
                raise ITwinError(f"the API's paging for {operation} repeats a next link; stopped rather than loop")
        raise ITwinError(f"the API's paging for {operation} went past {MAX_PAGES} pages; stopped")

    # Export connections
    def create_connection(
        self,
        imodel_id: str,
        display_name: str,
        authentication_type: str = "Service",
        *,
        not_after: float | None = None,
    ) -> Connection:
        body = {"iModelId": imodel_id, "displayName": display_name, "authenticationType": authentication_type}
        response = self.client.call(
            "POST", "/export/connections", operation="connections.create", body=body, not_after=not_after
        )
        return Connection.from_json(_object(response, "connection", "connections.create"))

    def get_connection(self, connection_id: str) -> Connection:
        path = f"/export/connections/{_id(connection_id)}"
        response = self.client.call("GET", path, operation="connections.get")
        return Connection.from_json(_object(response, "connection", "connections.get"))

    def delete_connection(self, connection_id: str) -> None:
        path = f"/export/connections/{_id(connection_id)}"
        self.client.call("DELETE", path, operation="connections.delete")

    def list_connections(self, imodel_id: str) -> list[Connection]:
        """The iModel's connections (``imodelId``, as the operation index spells it). Items of another iModel are
        left out whatever the API sent, because callers delete what this returns."""
        pages = self._pages("/export/connections", {"imodelId": imodel_id}, "connections", "connections.list")
        connections = [Connection.from_json(item) for item in pages]
        mine = [c for c in connections if (c.imodel_id or "").lower() == imodel_id.lower()]
        if len(mine) < len(connections):
            log.warning(
                "connections.list for iModel %s answered %d connection(s) of other iModels; ignored them",
                imodel_id,
                len(connections) - len(mine),
            )
        return mine

    # ContextCapture jobs
    def create_job(self, body: Mapping[str, Any], *, not_after: float | None = None) -> Job:
        response = self.client.call(
            "POST", "/contextcapture/jobs", operation="jobs.create", body=body, not_after=not_after
        )
        return Job.from_json(_object(response, "job", "jobs.create"))

    def get_job(self, job_id: str) -> Job:
        response = self.client.call("GET", f"/contextcapture/jobs/{_id(job_id)}", operation="jobs.get")
        return Job.from_json(_object(response, "job", "jobs.get"))

    def _set_job_state(self, job_id: str, state: str, operation: str) -> Job:
        path = f"/contextcapture/jobs/{_id(job_id)}"
        response = self.client.call("PATCH", path, operation=operation, body={"state": state})
        if response.content:
            return Job.from_json(_object(response, "job", operation))
        return Job(id=job_id, state=state)

    def submit_job(self, job_id: str) -> Job:
        return self._set_job_state(job_id, "active", "jobs.submit")

    def cancel_job(self, job_id: str) -> Job:
        return self._set_job_state(job_id, "cancelled", "jobs.cancel")

    def delete_job(self, job_id: str) -> None:
        """Delete an unsubmitted job; a submitted one raises `Unprocessable` (``InvalidContextCaptureRequest``)."""
        self.client.call("DELETE", f"/contextcapture/jobs/{_id(job_id)}", operation="jobs.delete")

    # Clash Detection runs
    def create_run(self, body: Mapping[str, Any], *, not_after: float | None = None) -> Run:
        response = self.client.call(
            "POST", "/clashdetection/runs", operation="runs.create", body=body, not_after=not_after
        )
        return Run.from_json(_object(response, "run", "runs.create"))

    def get_run(self, run_id: str) -> Run:
        response = self.client.call("GET", f"/clashdetection/runs/{_id(run_id)}", operation="runs.get")
        return Run.from_json(_object(response, "run", "runs.get"))

    def list_runs(self, project_id: str) -> list[Run]:
        """The project's runs, each with its test (``Prefer: return=representation`` asks for the whole run)."""
        prefer = {"Prefer": "return=representation"}
        pages = self._pages("/clashdetection/runs", {"projectId": project_id}, "runs", "runs.list", prefer)
        return [Run.from_json(item) for item in pages]

    def find_runs(self, project_id: str, test_id: str, imodel_id: str, named_version_id: str) -> list[Run]:
        """The project's runs of ``test_id`` that can be of that iModel and named version (fields the list leaves
        out do not rule a run out)."""
        return [
            run
            for run in self.list_runs(project_id)
            if run.test_id == test_id
            and run.imodel_id in (None, imodel_id)
            and run.named_version_id in (None, named_version_id)
        ]

    def imodel_itwin(self, imodel_id: str) -> str:
        """The id of the iTwin (project) an iModel belongs to (iModels v2, "Get iModel details")."""
        path = f"/imodels/{_id(imodel_id)}"
        headers = {"Accept": IMODELS_ACCEPT}
        response = self.client.call("GET", path, operation="imodels.get", headers=headers)
        itwin_id = _object(response, "iModel", "imodels.get").get("iTwinId")
        if not isinstance(itwin_id, str) or not itwin_id:
            raise ITwinError(f"the API answered imodels.get for {imodel_id} without an iTwinId")
        return itwin_id

    def delete_run(self, run_id: str) -> None:
        self.client.call("DELETE", f"/clashdetection/runs/{_id(run_id)}", operation="runs.delete")

    # Clash Detection v2 (runs and their reports)
    def _clash_path(self, itwin_id: str, *rest: str) -> str:
        return "/".join(("/clash-detection/itwins", _id(itwin_id), *rest))

    def report_href(self, itwin_id: str, report_id: str) -> str:
        return f"{self.client.api_url}{self._clash_path(itwin_id, 'reports', _id(report_id))}"

    def run_clash_test(self, itwin_id: str, body: Mapping[str, Any], *, not_after: float | None = None) -> ClashReport:
        """Start one test ("Run clash detection tests", one job per request); the report the run fills."""
        job = {key: body[key] for key in ("testId", "iModelId", "changesetId", "testSettings") if key in body}
        response = self.client.call(
            "POST",
            self._clash_path(itwin_id, "runs", "jobs"),
            operation="clashRuns.create",
            body={"jobs": [job], "operation": "run"},
            headers=_V2,
            not_after=not_after,
        )
        payload = _json(response, "clashRuns.create")
        runs = payload.get("runs") if isinstance(payload, dict) else None
        first = runs[0] if isinstance(runs, list) and runs and isinstance(runs[0], dict) else {}
        report_id = _text(first.get("clashReportId"))
        if report_id is None:
            raise ITwinError("the API answered clashRuns.create without a run carrying a clashReportId")
        return ClashReport(
            id=report_id,
            itwin_id=itwin_id,
            test_id=_text(first.get("testId")) or body.get("testId"),
            imodel_id=body.get("iModelId"),
            changeset_id=body.get("changesetId"),
            href=self.report_href(itwin_id, report_id),
        )

    def get_clash_report(self, itwin_id: str, report_id: str) -> ClashReport:
        path = self._clash_path(itwin_id, "reports", _id(report_id))
        response = self.client.call("GET", path, operation="clashReports.get", headers=_V2)
        payload = _json(response, "clashReports.get")
        metadata = payload.get("metadata") if isinstance(payload, dict) else None
        if not isinstance(metadata, dict):
            raise ITwinError("the API answered clashReports.get without a 'metadata' object")
        return ClashReport.from_json({**metadata, "id": metadata.get("id") or report_id}, itwin_id)

    def list_clash_reports(self, itwin_id: str, imodel_id: str) -> list[ClashReport]:
        """The iTwin's reports of the iModel (the ``repository-id`` header narrows the list; reports of another
        iModel are left out whatever the API sent)."""
        headers = {**_V2, "repository-id": imodel_id}
        path = self._clash_path(itwin_id, "reports")
        pages = self._pages(
            path, {"$top": "100"}, "reports", "clashReports.list", headers
        )  # 100: the most a page holds
        reports = [ClashReport.from_json(item, itwin_id, self.report_href(itwin_id, item["id"])) for item in pages]
        return [r for r in reports if (r.imodel_id or imodel_id).lower() == imodel_id.lower()]

    def find_clash_reports(self, itwin_id: str, test_id: str, imodel_id: str, changeset_id: str) -> list[ClashReport]:
        """The reports a run of ``test_id`` on that iModel and changeset could have made."""
        return [
            r
            for r in self.list_clash_reports(itwin_id, imodel_id)
            if (r.test_id or "").lower() == test_id.lower() and r.changeset_id in (None, changeset_id)
        ]

    def cancel_clash_run(self, itwin_id: str, report_id: str) -> None:
        """ "Cancel clash detection runs", one report id; a run that ended raises `Unprocessable`."""
        path = self._clash_path(itwin_id, "reports", "jobs", "cancellation")
        body = {"jobs": [report_id], "operation": "cancel"}
        self.client.call("POST", path, operation="clashRuns.cancel", body=body, headers=_V2)

    def delete_clash_report(self, itwin_id: str, report_id: str) -> None:
        """ "Delete clash detection reports", one report id; an unknown one raises `Unprocessable`."""
        path = self._clash_path(itwin_id, "reports", "jobs", "deletion")
        body = {"jobs": [report_id], "operation": "delete"}
        self.client.call("POST", path, operation="clashReports.delete", body=body, headers=_V2)

    # Reality Modeling v2 jobs
    def reality_job_href(self, job_id: str) -> str:
        return f"{self.client.api_url}/reality-modeling/jobs/{_id(job_id)}"

    def create_reality_job(self, body: Mapping[str, Any], *, not_after: float | None = None) -> RealityJob:
        """Create and start a job (one call: v2 has no workspace and no submit)."""
        response = self.client.call(
            "POST",
            "/reality-modeling/jobs",
            operation="realityJobs.create",
            body=body,
            headers=_V2,
            not_after=not_after,
        )
        job = _object(response, "job", "realityJobs.create")
        return RealityJob.from_json(job, self.reality_job_href(job["id"]))

    def get_reality_job(self, job_id: str) -> RealityJob:
        path = f"/reality-modeling/jobs/{_id(job_id)}"
        response = self.client.call("GET", path, operation="realityJobs.get", headers=_V2)
        return RealityJob.from_json(_object(response, "job", "realityJobs.get"), self.reality_job_href(job_id))

    def cancel_reality_job(self, job_id: str) -> RealityJob:
        """DELETE cancels a v2 job; a job that ended raises `Unprocessable`."""
        path = f"/reality-modeling/jobs/{_id(job_id)}"
        response = self.client.call("DELETE", path, operation="realityJobs.cancel", headers=_V2)
        if response.content:
            return RealityJob.from_json(_object(response, "job", "realityJobs.cancel"), self.reality_job_href(job_id))
        return RealityJob(id=job_id, state="TerminatingOnCancel")

    def find_reality_jobs(self, itwin_id: str, name: str, job_type: str) -> list[RealityJob]:
        """The iTwin's jobs with this name and type. The list is filtered by iTwin (``$filter=iTwinId eq ..``, the
        one form Bentley's own client uses); name and type are compared here."""
        params = {"$filter": f"iTwinId eq {itwin_id}"}
        pages = self._pages("/reality-modeling/jobs", params, "jobs", "realityJobs.list", _V2)
        jobs = [RealityJob.from_json(item, self.reality_job_href(item["id"])) for item in pages]
        return [
            j
            for j in jobs
            if (j.itwin_id or itwin_id).lower() == itwin_id.lower() and j.name == name and j.type in (None, job_type)
        ]

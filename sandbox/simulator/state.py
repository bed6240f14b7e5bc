"""The simulated platform's data: iModels, Export connections, ContextCapture jobs, Clash Detection runs, webhooks.

All of it is guarded by one lock, which the simulator holds while an operation runs; the builders below are
shared by the HTTP operations and by the test set-up helpers, so both produce identical objects.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

JOB_TYPES = ("Full", "Calibration", "Reconstruction")
JOB_STATES = ("unsubmitted", "active", "success", "failed", "cancelled")
RUN_STATUSES = ("queued", "started", "inProgress", "completed", "completedToLimit", "failed", "cancelled")
# Clash Detection v2 writes a report's status as a number and lists no values; the page's finished example says 1.
# The simulator's own: 0 running, 1 completed, 2 failed, 3 cancelled.
REPORT_RUNNING, REPORT_COMPLETED, REPORT_FAILED, REPORT_CANCELLED = 0, 1, 2, 3
REPORT_STATUSES = {"running": 0, "completed": 1, "failed": 2, "cancelled": 3}
# Reality Modeling v2 job states (Bentley's reality-capture client, JobState).
REALITY_JOB_STATES = (
    "Queued",
    "Active",
    "Success",
    "Failed",
    "TerminatingOnCancel",
    "TerminatingOnFailure",
    "Cancelled",
)
REALITY_JOB_ENDED = ("Success", "Failed", "Cancelled")


def now_iso() -> str:
    """The current UTC time as the APIs write it (ISO 8601 with a Z)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class World:
    """Everything the APIs store. Callers hold `lock` while reading or changing it."""

    def __init__(self, *, max_page_size: int, default_page_size: int) -> None:
        self.lock = threading.RLock()
        self.base_url = ""
        self.max_page_size = max_page_size
        self.default_page_size = default_page_size
        self.default_itwin_id = str(uuid.uuid4())
        self.imodels: dict[str, str] = {}  # lower-case iModel id -> iTwin id
        self.connections: dict[str, dict[str, Any]] = {}
        self.in_use_until: dict[str, float] = {}  # connection id -> time.monotonic() deadline
        self.jobs: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.reports: dict[str, dict[str, Any]] = {}  # Clash Detection v2 clash reports by id (lower case)
        self.reality_jobs: dict[str, dict[str, Any]] = {}  # Reality Modeling v2 jobs by id (lower case)
        self.account_id = str(uuid.uuid4())  # the service application's account (scope of Account webhooks)
        self.webhooks: dict[str, dict[str, Any]] = {}  # id -> webhook, with its secret
        self.webhooks_allowed = True
        self.changesets = 0  # False: the application lacks webhooks_maintainer (every call is 403)

    def set_base_url(self, base_url: str) -> None:
        """Set the root every link points at; links of objects stored before the server started are fixed."""
        self.base_url = base_url
        for collection in (self.connections, self.jobs, self.runs):
            for item in collection.values():
                for link in (item.get("_links") or {}).values():
                    if isinstance(link, dict) and str(link.get("href", "")).startswith("/"):
                        link["href"] = base_url + link["href"]

    # -- iModels and Export connections ------------------------------------------------------------------
    def add_imodel(self, imodel_id: str, itwin_id: str | None = None) -> str:
        """Register an iModel (in the given or the default iTwin); returns its iTwin id."""
        key = imodel_id.lower()
        if itwin_id is not None or key not in self.imodels:
            self.imodels[key] = itwin_id or self.default_itwin_id
        return self.imodels[key]

    def add_connection(
        self,
        imodel_id: str,
        display_name: str,
        authentication_type: str = "User",
        connection_id: str | None = None,
    ) -> dict[str, Any]:
        """Store a new connection (registering its iModel) and return it."""
        itwin_id = self.add_imodel(imodel_id)
        connection_id = connection_id or str(uuid.uuid4())
        connection = {
            "id": connection_id,
            "displayName": display_name,
            "iModelId": imodel_id,
            "iTwinId": itwin_id,
            "authenticationType": authentication_type,
            "_links": {
                "iModel": {"href": f"{self.base_url}/imodels/{imodel_id}"},
                "iTwin": {"href": f"{self.base_url}/itwins/{itwin_id}"},
                "lastRun": None,
            },
        }
        self.connections[connection_id] = connection
        return connection

    def connection_in_use(self, connection_id: str) -> bool:
        """True while `set_connection_in_use` holds the connection."""
        deadline = self.in_use_until.get(connection_id)
        if deadline is None:
            return False
        if time.monotonic() < deadline:
            return True
        del self.in_use_until[connection_id]
        return False

    def set_connection_in_use(self, connection_id: str, seconds: float | None) -> None:
        """Hold the connection for `seconds` (None: until cleared; 0: clear now)."""
        if seconds is not None and seconds <= 0:
            self.in_use_until.pop(connection_id, None)
        else:
            self.in_use_until[connection_id] = math.inf if seconds is None else time.monotonic() + seconds

    def next_changeset_index(self) -> int:
        """A new changeset index (named versions point at one)."""
        self.changesets += 1
        return self.changesets

    # -- ContextCapture jobs -----------------------------------------------------------------------------
    def add_job(
        self,
        *,
        job_id: str | None = None,
        name: str = "Simulated job",
        job_type: str = "Full",
        workspace_id: str | None = None,
        inputs: list[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        state: str = "unsubmitted",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store a new ContextCapture job and return it."""
        if state not in JOB_STATES:
            raise ValueError(f"job state must be one of {JOB_STATES}; got {state!r}")
        stamp = now_iso()
        job = {
            "id": job_id or str(uuid.uuid4()),
            "name": name,
            "type": job_type,
            "state": state,
            "createdDateTime": stamp,
            "lastModifiedDateTime": stamp,
            "workspaceId": workspace_id or str(uuid.uuid4()),
            "iTwinId": self.default_itwin_id,
            "dataCenter": "EastUs",
            "inputs": inputs if inputs is not None else [{"id": str(uuid.uuid4()), "description": "photos"}],
            "settings": settings if settings is not None else {"outputs": ["3MX"]},
            **(extra or {}),
        }
        if state != "unsubmitted":
            job["executionInformation"] = {"submittedDateTime": stamp}
        self.jobs[job["id"]] = job
        return job

    def set_job_state(self, job_id: str, state: str) -> dict[str, Any]:
        """Move a job to `state` (any state, no transition rules) and return it; KeyError when unknown."""
        if state not in JOB_STATES:
            raise ValueError(f"job state must be one of {JOB_STATES}; got {state!r}")
        job = self.jobs[job_id]
        stamp = now_iso()
        if job["state"] == "unsubmitted" and state != "unsubmitted":
            job["executionInformation"] = {"submittedDateTime": stamp}
        if state in ("success", "failed", "cancelled"):
            job.setdefault("executionInformation", {})["endedDateTime"] = stamp
        job["state"] = state
        job["lastModifiedDateTime"] = stamp
        return job

    # -- Clash Detection runs ----------------------------------------------------------------------------
    def add_run(
        self,
        *,
        run_id: str | None = None,
        test_id: str | None = None,
        imodel_id: str | None = None,
        named_version_id: str | None = None,
        project_id: str | None = None,
        status: str = "queued",
        display_name: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store a new Clash Detection run and return it (its project is the iModel's iTwin by default)."""
        run_id = run_id or str(uuid.uuid4())
        test_id = test_id or str(uuid.uuid4())
        imodel_id = imodel_id or str(uuid.uuid4())
        if project_id is None:
            project_id = self.imodels.get(imodel_id.lower(), self.default_itwin_id)
        run = {
            "id": run_id,
            "displayName": display_name or f"Run {len(self.runs) + 1}",
            "testId": test_id,
            "iModelId": imodel_id,
            "namedVersionId": named_version_id or str(uuid.uuid4()),
            "projectId": project_id,
            "status": status,
            "executedDateTime": now_iso(),
            "count": 0,
            "userName": "service-application",
            "resultId": str(uuid.uuid4()),
            "_links": {
                "run": {"href": f"{self.base_url}/clashdetection/runs/{run_id}"},
                "test": {"href": f"{self.base_url}/clashdetection/tests/{test_id}"},
            },
            **(extra or {}),
        }
        self.runs[run_id] = run
        return run

    # -- Clash Detection v2 reports ----------------------------------------------------------------------------
    def add_report(
        self,
        *,
        itwin_id: str,
        test_id: str,
        imodel_id: str,
        changeset_id: str,
        report_id: str | None = None,
        status: int = REPORT_RUNNING,
        results_limit: int = 100_000,
    ) -> dict[str, Any]:
        """Store a new clash report (what "Run clash detection tests" starts) and return it."""
        report_id = report_id or str(uuid.uuid4())
        stamp = now_iso()
        report = {
            "id": report_id,
            "iTwinId": itwin_id,
            "repositoryId": imodel_id,
            "changesetId": changeset_id,
            "configurationId": test_id,
            "executed": stamp,
            "duration": 0,
            "numValidations": 0,
            "numElements": 0,
            "numRules": 0,
            "numIssues": 0,
            "status": status,
            "userId": str(uuid.uuid4()),
            "testSettings": {"resultsLimit": results_limit},
            "jobId": str(uuid.uuid4()),
            "configurationName": f"Test {test_id[:8]}",
            "changesetName": f"Changeset {changeset_id[:8]}",
            "repositoryName": f"iModel {imodel_id[:8]}",
            "modifiedBy": "service-application",
            "modifiedAt": stamp,
        }
        self.reports[report_id.lower()] = report
        return report

    # -- Reality Modeling v2 jobs ------------------------------------------------------------------------------
    def add_reality_job(
        self,
        *,
        itwin_id: str,
        name: str = "Simulated job",
        job_type: str = "Reconstruction",
        specifications: dict[str, Any] | None = None,
        job_id: str | None = None,
        state: str = "Active",
    ) -> dict[str, Any]:
        """Store a new Reality Modeling v2 job (created and started in one step) and return it."""
        if state not in REALITY_JOB_STATES:
            raise ValueError(f"job state must be one of {REALITY_JOB_STATES}; got {state!r}")
        job = {
            "id": job_id or str(uuid.uuid4()),
            "state": state,
            "userId": str(uuid.uuid4()),
            "executionInfo": {"createdDateTime": now_iso()},
            "specifications": specifications if specifications is not None else {"inputs": {}, "outputs": {}},
            "name": name,
            "type": job_type,
            "iTwinId": itwin_id,
        }
        if state != "Queued":
            job["executionInfo"]["startedDateTime"] = job["executionInfo"]["createdDateTime"]
        self.reality_jobs[job["id"].lower()] = job
        return job

    def set_reality_job_state(self, job_id: str, state: str) -> dict[str, Any]:
        """Move a v2 job to ``state`` (no transition rules) and return it; KeyError when unknown."""
        if state not in REALITY_JOB_STATES:
            raise ValueError(f"job state must be one of {REALITY_JOB_STATES}; got {state!r}")
        job = self.reality_jobs[job_id.lower()]
        job["state"] = state
        if state in REALITY_JOB_ENDED:
            job["executionInfo"]["endedDateTime"] = now_iso()
        return job

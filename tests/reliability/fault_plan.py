"""The commands the fault runs send, and the faults they meet: shared by the one-host and the two-host runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reliability_kit import new_id

from sandbox.itwin_platform import Faults, Simulator

CONNECTIONS_PER_IMODEL = 2  # what each delete-by-iModel fans out to
RETRY_AFTER = 1
READ_TIMEOUT = 1.0  # the worker's client stops waiting for an answer after this long (production: 10 s)
STALL_SECONDS = 1.25  # past READ_TIMEOUT; done before a rescheduled message (visible >= 1 s later) comes back
FAULTS = Faults(
    error_rate=0.14,
    statuses=(500, 503, 429),
    retry_after=RETRY_AFTER,
    drop_rate=0.03,
    stall_rate=0.03,
    stall_seconds=STALL_SECONDS,
    seed=20240611,
)


@dataclass
class Planned:
    """One command sent, and the simulator objects it acts on."""

    kind: str  # "create connection", ..., or "delete connection by iModel"
    message: dict[str, Any]
    imodel_id: str | None = None
    name: str | None = None  # connection display name, job name or clash test id
    id: str | None = None
    children: list[str] = field(default_factory=list)  # connection ids a delete-by-iModel fans out to

    @property
    def key(self) -> str:
        return self.message["correlationId"]


def plan_commands(simulator: Simulator, per_kind: int, *, v2: bool = False) -> list[Planned]:
    """``per_kind`` commands of each kind, with the state each acts on; each carries its own correlationId. ``v2``:
    Clash Detection v2 runs and Reality Modeling v2 jobs are created too."""
    planned: list[Planned] = []
    for i in range(per_kind):
        imodel = new_id()
        if i % 2:
            simulator.add_imodel(imodel)  # the others meet a 404 on the list first: an iModel the API does not know
        body = {"iModelId": imodel, "displayName": f"nightly-{i}", "authenticationType": "Service"}
        message = {"action": "create", "resource": "connection", "body": body}
        planned.append(Planned("create connection", message, imodel_id=imodel, name=f"nightly-{i}"))

        connection = simulator.add_connection(new_id(), f"doomed-{i}")
        message = {"action": "delete", "resource": "connection", "id": connection["id"]}
        planned.append(Planned("delete connection", message, id=connection["id"]))

        imodel = new_id()
        ids = [simulator.add_connection(imodel, f"c{n}")["id"] for n in range(CONNECTIONS_PER_IMODEL)]
        message = {"action": "delete", "resource": "connection", "iModelId": imodel}
        planned.append(Planned("delete connection by iModel", message, imodel_id=imodel, children=ids))

        body = {
            "type": "Full",
            "name": f"survey-{i}",
            "workspaceId": new_id(),
            "inputs": [{"id": new_id(), "description": "photos"}],
            "settings": {"outputs": ["3MX"]},
        }
        planned.append(Planned("create job", {"action": "create", "resource": "job", "body": body}, name=f"survey-{i}"))

        for action, state in (("submit", "unsubmitted"), ("cancel", "active"), ("delete", "unsubmitted")):
            job = simulator.add_job(state=state)
            planned.append(
                Planned(f"{action} job", {"action": action, "resource": "job", "id": job["id"]}, id=job["id"])
            )

        body = {"testId": f"test-{i}", "iModelId": new_id(), "namedVersionId": f"version-{i}"}
        message = {"action": "create", "resource": "run", "projectId": simulator.itwin_id, "body": body}
        planned.append(Planned("create run", message, name=f"test-{i}"))

        run = simulator.add_run()
        planned.append(Planned("delete run", {"action": "delete", "resource": "run", "id": run["id"]}, id=run["id"]))
        if v2:
            planned.extend(_v2_creates(simulator, i))
    for n, item in enumerate(planned):
        item.message["correlationId"] = f"rel-{n:05d}"
    return planned


def _v2_creates(simulator: Simulator, i: int) -> list[Planned]:
    """A Clash Detection v2 run and a Reality Modeling v2 job, each its own test or name so it can be counted."""
    test_id, imodel = new_id(), new_id()
    simulator.add_imodel(imodel, simulator.itwin_id)
    body = {"testId": test_id, "iModelId": imodel, "changesetId": f"changeset-{i}"}
    run = {"action": "create", "resource": "clashRun", "iTwinId": simulator.itwin_id, "body": body}
    job_body = {
        "type": "Reconstruction",
        "name": f"mesh-{i}",
        "iTwinId": simulator.itwin_id,
        "specifications": {"inputs": {"scene": new_id()}, "outputs": {"exports": [{"format": "3DTiles"}]}},
    }
    job = {"action": "create", "resource": "realityJob", "body": job_body}
    return [Planned("create clashRun", run, name=test_id), Planned("create realityJob", job, name=f"mesh-{i}")]

"""What the benchmarks send: service tokens and seeded connections straight from the simulator's API, the bare
session the worker is measured against, and the kinds of command benchmark 3 counts calls for. Shared by
`bench.figures` and `bench.ledger_cost`, so that neither imports the other."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from shared.outcomes import Outcome

IMODEL = "a0471655-6b18-419e-ab01-ebf4fbff9dff"


def service_token(session: requests.Session, sim: Any) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "scope": "itwin-platform",
    }
    response = session.post(f"{sim.url}/connect/token", data=form, timeout=10)
    response.raise_for_status()
    return response.json()["access_token"]


def seed_connections(url: str, token: str, count: int, threads: int = 4) -> list[str]:
    """Create ``count`` Export connections through the API; their ids in creation order."""
    chunks: list[list[str]] = [[] for _ in range(threads)]

    def create(chunk: list[str], n: int) -> None:
        with requests.Session() as session:
            headers = {"Authorization": f"Bearer {token}"}
            for _ in range(n):
                body = {"iModelId": IMODEL, "displayName": f"bench-{uuid.uuid4()}", "authenticationType": "Service"}
                response = session.post(f"{url}/export/connections", json=body, headers=headers, timeout=10)
                response.raise_for_status()
                chunk.append(response.json()["connection"]["id"])

    pool = [
        threading.Thread(target=create, args=(chunk, count // threads + (i < count % threads)))
        for i, chunk in enumerate(chunks)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    ids = [i for chunk in chunks for i in chunk]
    if len(ids) != count:
        raise RuntimeError(f"seeding made {len(ids)} of {count} connections")
    return ids


def bare_path(session: requests.Session, url: str, token: str, ids: list[str]) -> Callable[[], int]:
    """The same DELETEs from a bare session with a fixed token."""
    urls = [f"{url}/export/connections/{i}" for i in ids]
    headers = {"Authorization": f"Bearer {token}"}

    def run() -> int:
        succeeded = 0
        for target in urls:
            succeeded += session.delete(target, headers=headers).status_code == 204
        return succeeded

    return run


@dataclass(frozen=True)
class Kind:
    key: str
    label: str
    prepare: Callable[[Any, int], dict[str, Any]]  # (simulator, index) -> the command message
    outcome: Outcome
    limit: float  # calls per command at most
    exact: bool  # the target is "= limit", not "≤ limit"


def _job_body(i: int) -> dict[str, Any]:
    return {
        "type": "Full",
        "name": f"bench job {i}",
        "workspaceId": str(uuid.uuid4()),
        "inputs": [{"id": str(uuid.uuid4()), "description": "photos"}],
        "settings": {"outputs": ["Cesium 3D Tiles"]},
    }


NEW_IMODEL = "0f3e2a58-5c55-4a3c-9a36-1f4c0cf1b1c2"

KINDS = (
    Kind(
        "delete_connection",
        "delete connection by id",
        lambda sim, i: {"action": "delete", "resource": "connection", "id": sim.add_connection(IMODEL, f"k{i}")["id"]},
        Outcome.SUCCEEDED,
        1.0,
        True,
    ),
    Kind(
        "delete_job",
        "delete job by id",
        lambda sim, i: {"action": "delete", "resource": "job", "id": sim.add_job()["id"]},
        Outcome.SUCCEEDED,
        1.0,
        True,
    ),
    Kind(
        "delete_run",
        "delete run by id",
        lambda sim, i: {"action": "delete", "resource": "run", "id": sim.add_run()["id"]},
        Outcome.SUCCEEDED,
        1.0,
        True,
    ),
    Kind(
        "submit_job",
        "submit job",
        lambda sim, i: {"action": "submit", "resource": "job", "id": sim.add_job()["id"]},
        Outcome.SUCCEEDED,
        1.0,
        True,
    ),
    Kind(
        "cancel_job",
        "cancel job",
        lambda sim, i: {"action": "cancel", "resource": "job", "id": sim.add_job(state="active")["id"]},
        Outcome.SUCCEEDED,
        1.0,
        True,
    ),
    Kind(
        "create_connection_new",
        "create connection (new)",
        lambda sim, i: {
            "action": "create",
            "resource": "connection",
            "body": {"iModelId": NEW_IMODEL, "displayName": f"new-{i}", "authenticationType": "Service"},
        },
        Outcome.SUCCEEDED,
        2.0,
        False,
    ),
    Kind(
        "create_connection_existing",
        "create connection (exists already)",
        lambda sim, i: {
            "action": "create",
            "resource": "connection",
            "body": {
                "iModelId": IMODEL,
                "displayName": sim.add_connection(IMODEL, f"existing-{i}")["displayName"],
                "authenticationType": "Service",
            },
        },
        Outcome.ALREADY_DONE,
        2.0,
        False,
    ),
    Kind(
        "create_job",
        "create job",
        lambda sim, i: {"action": "create", "resource": "job", "body": _job_body(i)},
        Outcome.SUCCEEDED,
        1.0,
        True,
    ),
    Kind(
        "create_run",
        "create run",
        lambda sim, i: {
            "action": "create",
            "resource": "run",
            "body": {"testId": f"test-{i}", "iModelId": IMODEL, "namedVersionId": f"nv-{i}"},
            "projectId": sim.itwin_id,
        },
        Outcome.SUCCEEDED,
        1.0,
        True,
    ),
)

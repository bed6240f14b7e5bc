"""Before replaying a create whose outcome is unknown: does the resource exist already, where the API can say?

- Export connections: listed by iModel, matched by ``displayName`` (the worker's own test before creating).
- Clash Detection runs: listed by project (the iModel's iTwin), matched by test, iModel and named version, and
  run at or after one hour before the failure. Only with the iTwin id (``--itwin-id``): the command does not hold it.
- ContextCapture (Reality Modeling v1) jobs: v1 has no job list, so a job is only found by its id, which the
  lost answer carried. Nothing can be checked; the operator has to look.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ops.dead_letters import DeadLetter
from ops.platform_api import PlatformApi
from shared.errors import ITwinError, NotFound

RUN_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Finding:
    """``exists``: True, False, or None when the API cannot tell; ``summary`` says what was found."""

    exists: bool | None
    summary: str


def _last_segment(link: Any) -> str | None:
    href = link.get("href") if isinstance(link, dict) else None
    return href.rstrip("/").rsplit("/", 1)[-1] if isinstance(href, str) and href else None


def _run_matches(run: dict[str, Any], body: dict[str, Any], since: datetime | None) -> bool:
    links = run.get("_links") if isinstance(run.get("_links"), dict) else {}
    test = run.get("testId") or _last_segment(links.get("test"))
    if test != body.get("testId"):
        return False
    for field in ("iModelId", "namedVersionId"):
        if run.get(field) is not None and str(run[field]).lower() != str(body.get(field, "")).lower():
            return False
    executed = run.get("executedDateTime")
    if since is None or not isinstance(executed, str):
        return True
    try:
        when = datetime.fromisoformat(executed)
    except ValueError:
        return True
    return when >= since


class ExistenceChecker:
    """Looks for the resource a dead-lettered create would make."""

    def __init__(self, api: PlatformApi, itwin_id: str | None = None) -> None:
        self.api = api
        self.itwin_id = itwin_id

    def check(self, letter: DeadLetter) -> Finding:
        command = letter.command
        if command is None or command.action != "create":
            return Finding(False, "not a create")
        body = dict(command.body or {})
        try:
            if command.resource == "connection":
                return self._connection(body)
            if command.resource == "run":
                return self._run(body, letter.when)
        except ITwinError as error:
            return Finding(None, f"could not check ({error})")
        return Finding(
            None,
            f"ContextCapture v1 jobs cannot be listed, so whether job {body.get('name')!r} of workspace "
            f"{body.get('workspaceId')} was created cannot be checked: look for it in the workspace",
        )

    def _connection(self, body: dict[str, Any]) -> Finding:
        imodel, name = body.get("iModelId"), body.get("displayName")
        try:
            connections = self.api.list_connections(str(imodel))
        except NotFound:
            return Finding(False, f"iModel {imodel} is not available to Export, so it has no connection")
        found = [c for c in connections if c.display_name == name]
        if found:
            return Finding(True, f"iModel {imodel} has the connection {found[0].id} named {name!r}")
        return Finding(False, f"iModel {imodel} has {len(connections)} connection(s), none named {name!r}")

    def _run(self, body: dict[str, Any], failed_at: datetime | None) -> Finding:
        if not self.itwin_id:
            return Finding(
                None,
                "Clash Detection runs can only be listed by project: give --itwin-id (the iModel's iTwin) to check",
            )
        since = failed_at - RUN_WINDOW if failed_at else None
        runs = [r for r in self.api.runs_in_project(self.itwin_id) if _run_matches(r, body, since)]
        what = f"test {body.get('testId')} on named version {body.get('namedVersionId')}"
        if runs:
            ids = ", ".join(str(r.get("id")) for r in runs[:3])
            return Finding(True, f"project {self.itwin_id} has {len(runs)} run(s) of {what} since then: {ids}")
        return Finding(False, f"project {self.itwin_id} has no run of {what} since an hour before it failed")

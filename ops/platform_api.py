"""The iTwin Platform calls the tool makes beyond the app's own: Webhooks v2, and detailed Clash Detection runs.

Everything goes through the app's `ITwinClient` (service token, retries, typed errors). Two APIs want headers the
client does not send: Webhooks v2 answers v2 only to ``Accept: application/vnd.bentley.itwin-platform.v2+json``
(the same path with the v1 header is the older Webhooks API), and Clash Detection lists runs in full only with
``Prefer: return=representation``. A transport adapter mounted on each API's URL prefix adds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from ops.reach import API_POLICY
from shared.client import ITwinClient, new_session
from shared.errors import ITwinError
from shared.resources import ITwinApi
from shared.settings import Settings

ACCEPT_V2 = "application/vnd.bentley.itwin-platform.v2+json"


class _HeaderAdapter(requests.adapters.HTTPAdapter):
    """Sets fixed headers on every request it sends."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__()
        self._headers = dict(headers)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        request.headers.update(self._headers)
        return super().send(request, *args, **kwargs)


def platform_session(settings: Settings, ca_bundle: str | None = None) -> requests.Session:
    """The app's pooled session, with the Webhooks v2 and Clash Detection headers on their prefixes; ``ca_bundle``
    replaces the CAs it trusts (``REQUESTS_CA_BUNDLE`` from the environment otherwise)."""
    session = new_session(settings.api_url, settings.authority)
    if ca_bundle:
        session.verify = ca_bundle
    session.mount(f"{settings.api_url}/webhooks", _HeaderAdapter({"Accept": ACCEPT_V2}))
    session.mount(f"{settings.api_url}/clashdetection/runs", _HeaderAdapter({"Prefer": "return=representation"}))
    return session


@dataclass(frozen=True)
class Webhook:
    """A Webhooks v2 subscription (its secret is never readable)."""

    id: str
    scope: str | None
    scope_id: str | None
    active: bool
    callback_url: str
    event_types: tuple[str, ...]
    created: str | None = None
    modified: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``: the API's own camelCase names, as every other ``--json`` of the tool uses."""
        return {
            "id": self.id,
            "scope": self.scope,
            "scopeId": self.scope_id,
            "active": self.active,
            "callbackUrl": self.callback_url,
            "eventTypes": list(self.event_types),
            "created": self.created,
            "modified": self.modified,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Webhook:
        types = data.get("eventTypes")
        return cls(
            id=str(data["id"]),
            scope=data.get("scope"),
            scope_id=data.get("scopeId"),
            active=bool(data.get("active")),
            callback_url=str(data.get("callbackUrl") or ""),
            event_types=tuple(str(t) for t in types) if isinstance(types, list) else (),
            created=data.get("created"),
            modified=data.get("modified"),
        )


def _webhook(response: requests.Response, operation: str) -> Webhook:
    """The webhook in an answer: GET and PATCH give the object itself; create wraps it in ``"webhook"``."""
    try:
        payload = response.json()
    except ValueError:
        raise ITwinError(f"the API answered {operation} with a body that is not JSON") from None
    if isinstance(payload, dict) and isinstance(payload.get("webhook"), dict):
        payload = payload["webhook"]
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        raise ITwinError(f"the API answered {operation} without a webhook carrying an id")
    return Webhook.from_json(payload)


def _id(value: str) -> str:
    return quote(value, safe="")


class PlatformApi(ITwinApi):
    """`ITwinApi` plus webhooks and detailed runs."""

    @classmethod
    def from_settings(cls, settings: Settings, ca_bundle: str | None = None) -> PlatformApi:
        """Through the app's client, with the tool's bounds on retries (`ops.reach.API_POLICY`)."""
        return cls(ITwinClient(settings, session=platform_session(settings, ca_bundle), policy=API_POLICY))

    def webhooks(self) -> list[Webhook]:
        return [Webhook.from_json(item) for item in self._pages("/webhooks", {}, "webhooks", "webhooks.list")]

    def get_webhook(self, webhook_id: str) -> Webhook:
        response = self.client.call("GET", f"/webhooks/{_id(webhook_id)}", operation="webhooks.get")
        return _webhook(response, "webhooks.get")

    def create_webhook(self, body: Mapping[str, Any]) -> Webhook:
        response = self.client.call("POST", "/webhooks", operation="webhooks.create", body=body)
        return _webhook(response, "webhooks.create")

    def update_webhook(self, webhook_id: str, changes: Mapping[str, Any]) -> Webhook:
        path = f"/webhooks/{_id(webhook_id)}"
        return _webhook(self.client.call("PATCH", path, operation="webhooks.update", body=changes), "webhooks.update")

    def delete_webhook(self, webhook_id: str) -> None:
        self.client.call("DELETE", f"/webhooks/{_id(webhook_id)}", operation="webhooks.delete")

    def runs_in_project(self, project_id: str) -> list[dict[str, Any]]:
        """Every Clash Detection run of a project (an iTwin), as the API describes it."""
        return list(self._pages("/clashdetection/runs", {"projectId": project_id}, "runs", "runs.list"))

"""Webhooks v2 (``/webhooks``): subscriptions created, listed, read, updated (activated) and deleted.

Only service applications call it, and the documented permission is ``webhooks_maintainer`` on the iTwin (or
organization administrator): with `World.webhooks_allowed` False every call answers 403. A webhook starts
inactive; ``PATCH {"active": true}`` activates it. A create without ``secret`` gets a generated one, returned
once in the create answer; otherwise a secret is never returned.

Two choices the reference pages leave open, made here: the create answer wraps the webhook as
``{"webhook": {...}}`` while GET and PATCH answer the object itself (as the GET page shows), and an
``http://`` callback is accepted on a loopback host, because the local functions host serves plain HTTP.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit

from .protocol import (
    INSUFFICIENT_PERMISSIONS,
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
    token_offset,
)
from .state import World, now_iso

SCOPES = ("Account", "iTwin")
MIN_SECRET = 32
PUBLIC_FIELDS = ("id", "scope", "scopeId", "active", "callbackUrl", "eventTypes", "created", "modified")
_EVENT_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9]*\.[A-Za-z][A-Za-z0-9]*\.v\d+$")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
CREATE_CODE = "InvalidCreateWebhookRequest"
CREATE_MESSAGE = "Cannot create a webhook. Make sure the request body is valid."
UPDATE_CODE = "InvalidUpdateWebhookRequest"
UPDATE_MESSAGE = "Cannot update a webhook. Make sure the request body is valid."
NOT_MAINTAINER = (
    f"{INSUFFICIENT_PERMISSIONS} Webhooks need the webhooks_maintainer permission on the iTwin, "
    "or an organization administrator."
)


def public(webhook: dict[str, Any]) -> dict[str, Any]:
    """The webhook as the API shows it (never its secret)."""
    return {key: webhook[key] for key in PUBLIC_FIELDS}


def _not_found() -> ApiError:
    return ApiError(404, "WebhookNotFound", "Requested webhook is not available.")


def _check_allowed(world: World) -> None:
    if not world.webhooks_allowed:
        raise ApiError(403, "InsufficientPermissions", NOT_MAINTAINER)


def _callback_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "callbackUrl must be a URL."
    parts = urlsplit(value)
    secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)
    if not secure or not parts.hostname:
        return "callbackUrl must be an HTTPS URL."
    return None


def _check_fields(payload: dict[str, Any], allowed: set[str]) -> list[dict[str, str]]:
    """Problems with the fields a create or update may carry, one detail each, with its target."""
    details = []
    for key in sorted(set(payload) - allowed):
        details.append(detail("InvalidRequestBody", f"{key} is not a property that can be set.", key))
    if "callbackUrl" in payload:
        problem = _callback_problem(payload["callbackUrl"])
        if problem:
            details.append(detail("InvalidValue", problem, "callbackUrl"))
    if "secret" in payload:
        secret = payload["secret"]
        if not isinstance(secret, str) or len(secret) < MIN_SECRET:
            details.append(detail("InvalidValue", f"secret must be at least {MIN_SECRET} characters.", "secret"))
    if "eventTypes" in payload:
        types = payload["eventTypes"]
        if not isinstance(types, list) or not types:
            details.append(detail("InvalidValue", "eventTypes must be a non-empty array.", "eventTypes"))
        else:
            for index, value in enumerate(types):
                if not isinstance(value, str) or not _EVENT_TYPE.match(value):
                    message = f"{value!r} is not an event type such as iModels.iModelDeleted.v1."
                    details.append(detail("InvalidValue", message, f"eventTypes[{index}]"))
    if "active" in payload and not isinstance(payload["active"], bool):
        details.append(detail("InvalidValue", "active must be true or false.", "active"))
    return details


def create_webhook(world: World, request: RecordedRequest) -> Response:
    """POST /webhooks: 201 ``{"webhook"}`` (inactive; ``secret`` only when generated); 422 with details."""
    _check_allowed(world)
    payload = parse_json_object(request.body, CREATE_CODE, CREATE_MESSAGE)
    details = _check_fields(payload, {"callbackUrl", "scope", "scopeId", "secret", "eventTypes"})
    for name in ("callbackUrl", "scope", "eventTypes"):
        if name not in payload:
            details.append(detail("MissingRequiredProperty", f"{name} is required.", name))
    scope = payload.get("scope")
    if "scope" in payload and scope not in SCOPES:
        details.append(detail("InvalidValue", "scope must be Account or iTwin.", "scope"))
    scope_id = payload.get("scopeId")
    if scope == "iTwin" and not is_guid(scope_id):
        message = "scopeId (an iTwin id) is required for scope iTwin."
        details.append(detail("MissingRequiredProperty", message, "scopeId"))
    if details:
        raise ApiError(422, CREATE_CODE, CREATE_MESSAGE, details=details)
    generated = "secret" not in payload
    stamp = now_iso()
    webhook = {
        "id": str(uuid.uuid4()),
        "scope": scope,
        "scopeId": scope_id if scope == "iTwin" else world.account_id,
        "active": False,
        "callbackUrl": payload["callbackUrl"],
        "eventTypes": list(payload["eventTypes"]),
        "created": stamp,
        "modified": stamp,
        "secret": secrets.token_hex(32) if generated else payload["secret"],
    }
    world.webhooks[webhook["id"]] = webhook
    answer = public(webhook)
    if generated:
        answer["secret"] = webhook["secret"]
    return json_response(201, {"webhook": answer}, {"Location": f"{world.base_url}/webhooks/{webhook['id']}"})


def list_webhooks(world: World, request: RecordedRequest) -> Response:
    """GET /webhooks[?$top][&continuationToken]: ``{"webhooks", "_links": {"next"}}`` in creation order."""
    _check_allowed(world)
    top = parse_int(request.query.get("$top"), world.default_page_size)
    token = request.query.get("continuationToken")
    offset = 0 if token is None else token_offset(token)
    details = []
    if top is None or not 1 <= top <= world.max_page_size:
        details.append(detail("InvalidValue", "Page size is out of limits.", "$top"))
    if offset is None:
        details.append(detail("InvalidValue", "Provided continuationToken value is not valid.", "continuationToken"))
    if details:
        raise ApiError(422, "InvalidWebhooksRequest", "Cannot list webhooks.", details=details)
    assert top is not None
    assert offset is not None
    items = [public(w) for w in world.webhooks.values()]
    next_link = None
    if offset + top < len(items):
        query = f"$top={top}&continuationToken={continuation_token(offset + top)}"
        next_link = {"href": f"{world.base_url}/webhooks?{query}"}
    return json_response(200, {"webhooks": items[offset : offset + top], "_links": {"next": next_link}})


def get_webhook(world: World, request: RecordedRequest, webhook_id: str) -> Response:
    """GET /webhooks/{id}: 200 with the webhook object; 404 ``WebhookNotFound``."""
    _check_allowed(world)
    webhook = world.webhooks.get(webhook_id)
    if webhook is None:
        raise _not_found()
    return json_response(200, public(webhook))


def update_webhook(world: World, request: RecordedRequest, webhook_id: str) -> Response:
    """PATCH /webhooks/{id} with any of active, secret, eventTypes, callbackUrl: 200; 404; 422 with details."""
    _check_allowed(world)
    webhook = world.webhooks.get(webhook_id)
    if webhook is None:
        raise _not_found()
    payload = parse_json_object(request.body, UPDATE_CODE, UPDATE_MESSAGE)
    details = _check_fields(payload, {"active", "secret", "eventTypes", "callbackUrl"})
    if details:
        raise ApiError(422, UPDATE_CODE, UPDATE_MESSAGE, details=details)
    webhook.update(payload)
    webhook["modified"] = now_iso()
    return json_response(200, public(webhook))


def delete_webhook(world: World, request: RecordedRequest, webhook_id: str) -> Response:
    """DELETE /webhooks/{id}: 204; 404 ``WebhookNotFound``."""
    _check_allowed(world)
    if world.webhooks.pop(webhook_id, None) is None:
        raise _not_found()
    return no_content()


ROUTES = (
    ("/webhooks", {"GET": list_webhooks, "POST": create_webhook}),
    ("/webhooks/{webhook_id}", {"GET": get_webhook, "PATCH": update_webhook, "DELETE": delete_webhook}),
)

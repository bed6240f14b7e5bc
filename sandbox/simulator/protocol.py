"""Wire-level pieces every simulated service shares: recorded requests, answers and iTwin error bodies.

An iTwin Platform error body is ``{"error": {"code", "message", "target"?, "details"?: [...]}}``; `ApiError`
carries one and becomes a `Response` in exactly one place (`ApiError.response`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

JSON = "application/json; charset=utf-8"
HTML = "text/html; charset=utf-8"

_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_URL_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{43}")

HEADER_NOT_FOUND = "Header Authorization was not found in the request. Access denied."
INSUFFICIENT_PERMISSIONS = "The user has insufficient permissions for the requested operation."
EXPORT_RATE_LIMIT = "The client sent more requests than allowed by this API for the current tier of the client."
RATE_LIMIT = "More requests were received than the subscription rate-limit allows."
MALFORMED_JSON = "Error parsing JSON, malformed JSON."

# The APIs whose throttling answer uses the newer `RateLimitExceeded` spelling (the others say `TooManyRequests`):
# Export, and the v2 APIs (the Clash Detection v2 and Reality Analysis v2 pages show it).
_RATE_LIMIT_EXCEEDED_APIS = frozenset({"export", "clash-detection", "reality-modeling"})


def is_guid(value: object) -> bool:
    """True when `value` is a string shaped like a GUID (any letter case)."""
    return isinstance(value, str) and _GUID.fullmatch(value) is not None


def is_url_safe_id(value: object) -> bool:
    """True for the 43-character URL-safe ids some Export examples use (``VRZHoBhrnk...Q7M``)."""
    return isinstance(value, str) and _URL_SAFE_ID.fullmatch(value) is not None


class Headers(dict[str, str]):
    """Request headers: keys are stored lower-case and every lookup ignores case."""

    def __init__(self, items: Any = ()) -> None:
        pairs = items.items() if hasattr(items, "items") else items
        super().__init__((str(key).lower(), value) for key, value in pairs)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """The header's value, whatever the case of `key`, else `default`."""
        return super().get(key.lower(), default)


@dataclass(eq=False)
class RecordedRequest:
    """One request as the simulator received it, and what became of it.

    `status` is the status answered, or None while in progress and for a dropped connection. `fault` names what
    answered instead of the real operation: ``"rate-limited"``, ``"scripted"``, ``"error"``, ``"drop"``,
    ``"stall"`` (a stall still does the operation) or None.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    api: str
    started: float
    status: int | None = None
    fault: str | None = None

    @property
    def is_api_call(self) -> bool:
        """True for calls to the APIs, False for the token service and the discovery document."""
        return self.api not in ("connect", ".well-known")

    def json(self) -> Any:
        """The body parsed as JSON (raises `ValueError` when it is not JSON)."""
        return json.loads(self.body)


@dataclass
class Response:
    """An answer to write, or `drop=True` to close the connection without one. ``pieces``: a body written piece
    by piece (a trickle, or more bytes than memory should hold) after a ``Content-Length`` of ``length``."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    pieces: Callable[[], Iterator[bytes]] | None = None
    length: int = 0


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, {"Content-Type": JSON, **(headers or {})})


def no_content() -> Response:
    """A 204 answer, which has no body."""
    return Response(204)


def detail(code: str, message: str, target: str | None = None) -> dict[str, str]:
    """One entry of an error body's ``details`` list."""
    entry = {"code": code, "message": message}
    if target is not None:
        entry["target"] = target
    return entry


def error_body(code: str, message: str, target: str | None = None, details: list[dict] | None = None) -> dict:
    """An iTwin Platform error body."""
    error: dict[str, Any] = {"code": code, "message": message}
    if target is not None:
        error["target"] = target
    if details:
        error["details"] = details
    return {"error": error}


class ApiError(Exception):
    """An API answering with an iTwin error body; `response()` turns it into the answer."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        target: str | None = None,
        details: list[dict] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.details = details or []
        self.headers = headers or {}

    def response(self) -> Response:
        """The answer carrying this error."""
        return json_response(self.status, error_body(self.code, self.message, self.target, self.details), self.headers)


def rate_limited(api: str, retry_after: int) -> ApiError:
    """The 429 an API answers when over its rate limit (the code spelling depends on the API)."""
    if api in _RATE_LIMIT_EXCEEDED_APIS:
        code, message = "RateLimitExceeded", EXPORT_RATE_LIMIT
    else:
        code, message = "TooManyRequests", RATE_LIMIT
    return ApiError(429, code, message, headers={"Retry-After": str(retry_after)})


def default_error(status: int, api: str, retry_after: int = 1) -> ApiError:
    """A plausible iTwin error for `status` (the code is the reason phrase without spaces)."""
    if status == 429:
        return rate_limited(api, retry_after)
    if status == 401:
        return ApiError(401, "InvalidToken", "The access token is not valid.")
    if status == 403:
        return ApiError(403, "InsufficientPermissions", INSUFFICIENT_PERMISSIONS)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    code = re.sub(r"[^A-Za-z0-9]", "", phrase.title()) or "Error"
    return ApiError(status, code, f"The simulator answered {status} {phrase}.")


def proxy_page(status: int) -> Response:
    """An HTML error page such as a reverse proxy in front of the API sends (no iTwin error body)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    title = f"{status} {phrase}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Response(status, page.encode(), {"Content-Type": HTML})


def parse_json_object(body: bytes, code: str, message: str) -> dict[str, Any]:
    """The body as a JSON object, else a 422 `code` with detail ``InvalidRequestBody``."""
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ApiError(422, code, message, details=[detail("InvalidRequestBody", MALFORMED_JSON)])
    return payload


def parse_int(raw: str | None, default: int) -> int | None:
    """`raw` as a whole number, `default` when absent, None when it is not a whole number."""
    if raw is None:
        return default
    text = raw.strip()
    if not text.lstrip("-").isdigit():
        return None
    return int(text)


def query_value(query: dict[str, str], name: str) -> str | None:
    """A query parameter looked up case-insensitively (``iModelId`` and ``imodelid`` both match)."""
    lowered = name.lower()
    for key, value in query.items():
        if key.lower() == lowered:
            return value
    return None


def continuation_token(offset: int) -> str:
    """An opaque ``continuationToken`` for the page starting at ``offset``."""
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def token_offset(token: str) -> int | None:
    """The offset a `continuation_token` stands for, or None when it is not one."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    prefix, _, number = text.partition(":")
    return int(number) if prefix == "offset" and number.isdigit() else None

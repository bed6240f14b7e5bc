"""The one error tree, mirroring the iTwin Platform error body ``{"error": {code, message, target, details}}``.

    ITwinError                     anything the client raises
    ├── TransportError             no response: timeout, reset, DNS, TLS
    ├── Throttled                  not sent: calls to the API are held longer than the caller may wait
    ├── TokenError                 the token service refused us or could not be reached
    └── ApiError                   the API answered with a non-2xx status
        ├── BadRequest             400
        ├── Unauthorized           401
        ├── Forbidden              403 (usually: the service app is not a member of the iTwin)
        ├── NotFound               404
        ├── Conflict               409
        ├── Unprocessable          422
        ├── RateLimited            429, with ``retry_after`` seconds
        ├── OtherClientError       any other 4xx
        └── ServerError            5xx

Every error may carry ``retry_after``: the seconds after which repeating makes sense, set when the client
gives up on a transient failure so that the caller can reschedule instead of sleeping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_SNIPPET = 120
# An error body is not ours to trust: keep what fits in a log line and a poison envelope.
_MAX_DETAILS = 50
_MAX_TEXT = 1000
REQUEST_ID_HEADERS = ("X-Request-Id", "X-Correlation-Id", "Request-Id", "x-ms-request-id")


@dataclass(frozen=True)
class ErrorDetail:
    """One entry of the API's ``details`` array."""

    code: str | None
    message: str | None
    target: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "target": self.target}


class ITwinError(Exception):
    """Base of every error the iTwin client raises."""

    status: int | None = None
    transient = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        target: str | None = None,
        details: tuple[ErrorDetail, ...] = (),
        operation: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.target = target
        self.details = details
        self.operation = operation
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        """The error in the iTwin shape plus its status, for poison envelopes and HTTP answers."""
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "target": self.target,
            "details": [d.to_dict() for d in self.details],
        }

    def __str__(self) -> str:
        head = " ".join(str(p) for p in (self.status, self.code) if p is not None)
        where = f" ({self.operation})" if self.operation else ""
        return f"{head}: {self.message}{where}" if head else f"{self.message}{where}"


class TransportError(ITwinError):
    """The request got no answer: a timeout, a reset connection, a DNS or TLS failure."""

    transient = True


class Throttled(ITwinError):
    """The call was not sent: this process holds calls to the API (after a 429, or to pace them) for longer than
    the caller's budget. ``retry_after`` says when to offer the work again; nothing reached the API, so repeating
    is safe. ``linger`` is how long the caller should stay busy after handing the work back (see `ITwinClient`).
    ``slot``: a slot of the shared schedule reserved for the call (`shared.schedule.Slot`), which the work carries
    back to the queue, to be sent at without reserving again."""

    transient = True

    def __init__(self, message: str, *, linger: float = 0.0, slot: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.linger = linger
        self.slot = slot


class TokenError(ITwinError):
    """No service token: ``transient`` when the token service is unreachable or failing."""

    def __init__(self, message: str, *, transient: bool, code: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, code=code, **kwargs)
        self.transient = transient


class ApiError(ITwinError):
    """A non-2xx answer from the API, with the parsed error body and the request id."""

    def __init__(self, status: int, message: str, *, request_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} [request id {self.request_id}]" if self.request_id else text


class BadRequest(ApiError):
    """400: the request was malformed."""


class Unauthorized(ApiError):
    """401: the token was missing, unknown or expired."""


class Forbidden(ApiError):
    """403: the token is valid but lacks permission."""

    HINT = (
        "A 403 usually means the service application is not a member of the iTwin: add its email "
        "<client id>@apps.imsoidc.bentley.com to the iTwin (Access Control API or the iTwin's team page)."
    )

    def __init__(self, status: int, message: str, **kwargs: Any) -> None:
        super().__init__(status, f"{message} {self.HINT}", **kwargs)


class NotFound(ApiError):
    """404: the resource does not exist (or is not visible to this application)."""


class Conflict(ApiError):
    """409: the resource is busy, for example ``ConnectionAlreadyInUse`` while a run is active."""

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.code == "ConnectionAlreadyInUse"


class Unprocessable(ApiError):
    """422: the request was understood but its content is invalid."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` says how long to wait."""

    transient = True


class OtherClientError(ApiError):
    """Any other 4xx."""


class ServerError(ApiError):
    """5xx: the platform (or a proxy before it) failed."""

    transient = True


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
    429: RateLimited,
}


def error_class(status: int) -> type[ApiError]:
    """The exception class for an HTTP status of 400 or more."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, OtherClientError)


def _text(value: Any) -> str | None:
    return value[:_MAX_TEXT] if isinstance(value, str) else None


def parse_error_body(status: int, reason: str, content_type: str, body: bytes) -> dict[str, Any]:
    """Code, message, target and details from an error body, with a useful message when the body has none."""
    try:
        error = json.loads(body)["error"]
        if not isinstance(error, dict):
            raise TypeError("error is not an object")
    except (ValueError, KeyError, TypeError, RecursionError):
        kind = content_type.split(";")[0].strip() or "no content type"
        snippet = body[:_SNIPPET].decode("utf-8", "replace").strip()
        shown = f"; it begins {snippet!r}" if snippet else "; the body was empty"
        return {
            "code": None,
            "message": f"HTTP {status} {reason}: the body is not an iTwin error object ({kind}){shown}",
            "target": None,
            "details": (),
        }
    listed = error.get("details")
    details = tuple(
        ErrorDetail(_text(d.get("code")), _text(d.get("message")), _text(d.get("target")))
        for d in (listed[:_MAX_DETAILS] if isinstance(listed, list) else ())
        if isinstance(d, dict)
    )
    return {
        "code": _text(error.get("code")),
        "message": _text(error.get("message")) or f"HTTP {status} {reason}",
        "target": _text(error.get("target")),
        "details": details,
    }


def api_error(
    status: int,
    reason: str,
    headers: Any,
    body: bytes,
    *,
    operation: str | None = None,
    retry_after: float | None = None,
) -> ApiError:
    """Build the `ApiError` subclass that fits a non-2xx answer."""
    fields = parse_error_body(status, reason, headers.get("Content-Type", ""), body)
    request_id = next((headers[h] for h in REQUEST_ID_HEADERS if headers.get(h)), None)
    return error_class(status)(status, request_id=request_id, operation=operation, retry_after=retry_after, **fields)


def is_transient(error: BaseException) -> bool:
    """True when repeating later may succeed: 429, 409 ConnectionAlreadyInUse, 5xx, transport, token outage."""
    return isinstance(error, ITwinError) and bool(error.transient)

"""Service (client-credentials) tokens from IMS through MSAL, one application per process.

MSAL's quirks, and what this module does about each:
- It rejects a path-less authority such as ``https://ims.bentley.com``. We hand MSAL the authority with a
  placeholder path segment and serve its discovery request from ``{authority}/.well-known/openid-configuration``.
  The issuer check still applies: MSAL accepts an issuer on the same scheme and host.
- It raises ``ValueError`` for any discovery answer it cannot use, a 429 as much as a wrong document. We read
  the document first (`discovery_problem` decides what is transient) and give MSAL the answer we read.
- Its own cache never serves a token with under 300 s left, and caches nothing when the server echoes another
  scope, so short-lived tokens would mean a token request per call. We keep the current token ourselves and renew
  it before ``min(300 s, half its lifetime)`` remains; it is never used after it expires.
- It does not coalesce concurrent callers. One lock makes every thread wait for the one request in flight, each
  for no longer than its own call's deadline; a failed request is remembered for `FAILURE_MEMORY`, so callers
  meanwhile fail at once instead of queueing behind another request to a service that hangs.
- It follows redirects on the token request, which carries the client secret in its body (``requests`` posts the
  body again to a 307's or 308's new host). Our client follows none, there or on discovery, and says so.
- Its answers are read by ``requests`` with a read timeout per wait for bytes; ours are read whole within the
  connect and read timeouts together, and at most `TOKEN_BODY_LIMIT` bytes (`shared.bodies`).
- It fetches discovery inside its constructor. The application is built on first use, so importing the app and
  starting the host do no I/O, and a token service outage at start-up is retried on the next call.
- Given a ``requests.Session`` as ``http_client`` it ignores its own ``timeout``; the adapter adds ours.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msal
import msal.exceptions
import requests

from shared.bodies import ERROR_BODY_LIMIT, BodyNotRead, read_body
from shared.errors import TokenError
from shared.retry import retry_after_of
from shared.telemetry import Telemetry, default_telemetry

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
_PLACEHOLDER_SEGMENT = "/oidc"
_RENEW_BEFORE = 300.0
FAILURE_MEMORY = 5.0  # seconds a failed token request is answered from memory
TOKEN_BODY_LIMIT = ERROR_BODY_LIMIT  # a token response or a discovery document is a few KiB
# Answers from the token service that no repeat will fix.
_PERMANENT_ERRORS = frozenset(
    {"invalid_client", "unauthorized_client", "invalid_scope", "invalid_grant", "unsupported_grant_type"}
)


class AnswerNotRead(requests.ConnectionError):
    """The token service's answer did not arrive whole within the timeouts or the size cap."""


def bounded_request(
    session: requests.Session,
    method: str,
    url: str,
    timeout: tuple[float, float],
    clock: Callable[[], float],
    **kw: Any,
) -> requests.Response:
    """One request to the token service, read whole within ``timeout``'s sum and `TOKEN_BODY_LIMIT`, never following
    a redirect. Raises `AnswerNotRead` when the answer did not arrive whole, `TokenError` on a redirect."""
    deadline = clock() + sum(timeout)
    response = session.request(method, url, timeout=timeout, stream=True, allow_redirects=False, **kw)
    try:
        read_body(response, deadline=deadline, limit=TOKEN_BODY_LIMIT, clock=clock)
    except BodyNotRead as exc:
        raise AnswerNotRead(str(exc)) from None
    if response.is_redirect:
        where = urlsplit(response.headers.get("Location", "")).netloc or "another address"
        raise TokenError(
            f"the token service at {url} answered HTTP {response.status_code}, a redirect to {where}, which is not "
            "followed: the request carries the client secret. Set ITWIN_AUTHORITY to the token service's own address.",
            transient=False,
            code="TokenServiceMisconfigured",
        )
    return response


class _MsalHttpClient:
    """The ``http_client`` MSAL calls: our pooled session, our timeouts, and the discovery answer we already read."""

    def __init__(
        self,
        session: requests.Session,
        timeout: tuple[float, float],
        answers: dict[str, requests.Response],
        clock: Callable[[], float],
    ):
        self._session = session
        self._timeout = timeout
        self._answers = answers
        self._clock = clock

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        if url in self._answers:
            return self._answers.pop(url)
        kwargs.pop("timeout", None)
        return bounded_request(self._session, "GET", url, self._timeout, self._clock, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.pop("timeout", None)
        return bounded_request(self._session, "POST", url, self._timeout, self._clock, **kwargs)

    def close(self) -> None:
        """MSAL may close its client; the session is shared, so it stays open."""


def msal_authority(authority: str) -> tuple[str, str, str]:
    """The authority to give MSAL, the discovery URL MSAL will ask for, and where that document really is.

    They differ for a path-less authority such as ``https://ims.bentley.com``, which MSAL refuses: it gets a
    placeholder path segment, and its discovery request is answered from the root.
    """
    authority = authority.rstrip("/")
    if urlsplit(authority).path.strip("/"):
        return authority, authority + DISCOVERY_PATH, authority + DISCOVERY_PATH
    placeholder = authority + _PLACEHOLDER_SEGMENT
    return placeholder, placeholder + DISCOVERY_PATH, authority + DISCOVERY_PATH


def discovery_problem(status: int, body: bytes) -> tuple[bool, str] | None:
    """What is wrong with a discovery answer, as ``(transient, description)``; None when it is usable.

    Only a document that arrived whole and is wrong (no token endpoint) is permanent. A 429, a 4xx or 5xx, or a
    200 that is not a JSON object is what a throttling service, a proxy or a half-deployed one answers: transient.
    """
    if status != 200:
        return True, f"its discovery document answered HTTP {status}"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        return True, "its discovery document answered 200 with something that is not a JSON object"
    missing = [key for key in ("issuer", "authorization_endpoint", "token_endpoint") if key not in document]
    if missing:
        return False, f"its discovery document has no {', '.join(missing)}"
    return None


@dataclass(frozen=True)
class _Token:
    value: str = ""
    renew_at: float = 0.0  # before expiry by min(300 s, half the lifetime), so it is never used after


class TokenProvider:
    """Gives a valid service token for ``scope``: one token request per lifetime, whatever the thread count."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        authority: str,
        scope: str,
        *,
        session: requests.Session,
        timeout: tuple[float, float],
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
        max_retry_after: float = 900.0,
    ) -> None:
        self._client_id = client_id
        self._secret = client_secret
        self._authority = authority
        self._scopes = [scope]
        self._session = session
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None
        self._token = _Token()
        self._failure: tuple[TokenError, float] | None = None  # the last failed request, and until when it stands
        self._telemetry = telemetry or default_telemetry()
        self._max_retry_after = max_retry_after

    def token(self, *, stale: str | None = None, deadline: float | None = None) -> str:
        """A token valid now. Pass ``stale`` (a token the API refused) to force one fresh token request.

        ``deadline`` (this provider's clock): the latest the caller waits for another thread's token request.
        Raises `TokenError` (``transient`` when the token service is unreachable or failing, or busy past
        ``deadline``).
        """
        wait = -1.0 if deadline is None else max(0.0, deadline - self._clock())
        if not self._lock.acquire(timeout=wait):
            raise TokenError(
                f"no service token within this call's budget ({wait:.1f} s): another call's token request is still "
                "waiting for the token service; the work goes back to the queue",
                transient=True,
                code="TokenServiceUnavailable",
            )
        try:
            return self._current(stale)
        finally:
            self._lock.release()

    def _current(self, stale: str | None) -> str:
        now = self._clock()
        current = self._token
        refused = stale is not None and stale == current.value
        if current.value and now < current.renew_at and not refused:
            return current.value
        try:
            if self._failure is not None and now < self._failure[1]:
                raise self._failure[0]  # a call that fails for it counts as much as the one that found it
            try:
                self._token = self._fetch()
            except TokenError as error:
                self._failure = (error, self._clock() + FAILURE_MEMORY)
                raise
        except TokenError as error:
            self._telemetry.token_failures.add(1, {"error.type": error.code or type(error).__name__})
            raise
        self._failure = None
        return self._token.value

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            authority, requested, real = msal_authority(self._authority)
            discovery = self._discover(real)
            try:
                self._app = msal.ConfidentialClientApplication(
                    self._client_id,
                    client_credential=self._secret,
                    oidc_authority=authority,
                    http_client=_MsalHttpClient(self._session, self._timeout, {requested: discovery}, self._clock),
                )
            except requests.RequestException as exc:
                raise self._unreachable(type(exc).__name__) from None
            except (ValueError, KeyError) as exc:
                # The document arrived and was read, yet MSAL refuses it: an issuer on another host, say.
                raise TokenError(
                    f"the token service at {self._authority} is not usable: {exc}. Check ITWIN_AUTHORITY.",
                    transient=False,
                    code="TokenServiceMisconfigured",
                ) from None
        return self._app

    def _discover(self, url: str) -> requests.Response:
        """Read the discovery document; raises `TokenError`, permanent only when it arrived and is unusable."""
        try:
            response = bounded_request(self._session, "GET", url, self._timeout, self._clock)
        except requests.RequestException as exc:
            raise self._unreachable(_what(exc)) from None
        problem = discovery_problem(response.status_code, response.content)
        if problem is None:
            return response
        transient, description = problem
        if transient:
            raise self._unreachable(
                description, retry_after=retry_after_of(response.headers.get("Retry-After"), self._max_retry_after, url)
            ) from None
        raise TokenError(
            f"the token service at {self._authority} is not usable: {description}. Check ITWIN_AUTHORITY.",
            transient=False,
            code="TokenServiceMisconfigured",
        )

    def _unreachable(self, what: str, retry_after: float | None = None) -> TokenError:
        return TokenError(
            f"the token service at {self._authority} could not be used ({what}); retry later. "
            "If this lasts, check ITWIN_AUTHORITY.",
            transient=True,
            code="TokenServiceUnavailable",
            retry_after=retry_after,
        )

    def _fetch(self) -> _Token:
        app = self._application()
        app.remove_tokens_for_client()  # our cache decides when to renew; MSAL's must not hand back the old one
        started = self._clock()
        try:
            result = app.acquire_token_for_client(scopes=self._scopes)
        except (requests.RequestException, msal.exceptions.MsalServiceError) as exc:
            # MsalServiceError: the token endpoint answered 5xx (or another non-token page).
            raise TokenError(
                f"the token service could not be reached or failed ({_what(exc)}); retry later",
                transient=True,
                code="TokenServiceUnavailable",
            ) from None
        except ValueError:
            raise TokenError(
                "the token service answered with something that is not a token response; retry later",
                transient=True,
                code="TokenServiceUnavailable",
            ) from None
        if "access_token" not in result:
            code = str(result.get("error") or "TokenRequestFailed")
            permanent = code in _PERMANENT_ERRORS
            hint = " Check ITWIN_CLIENT_ID, ITWIN_CLIENT_SECRET and ITWIN_SCOPE." if permanent else ""
            raise TokenError(
                f"the token service refused the request: {code}: "
                f"{result.get('error_description') or 'no description'}.{hint}",
                transient=not permanent,
                code=code,
            )
        lifetime = float(result.get("expires_in") or 0)
        log.debug("service token obtained from %s, lifetime %.0f s", result.get("token_source"), lifetime)
        return _Token(result["access_token"], started + lifetime - min(_RENEW_BEFORE, lifetime / 2))


def _what(exc: Exception) -> str:
    """A failed request in a few words: what `AnswerNotRead` says, else the exception's type."""
    return str(exc) if isinstance(exc, AnswerNotRead) else type(exc).__name__

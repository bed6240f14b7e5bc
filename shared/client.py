"""The iTwin Platform HTTP client: one pooled session, service tokens, typed errors, bounded retries, pacing,
and telemetry for every attempt. Resource operations live in `shared.resources`; this module moves requests."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared import PROJECT, __version__
from shared.auth import TokenProvider
from shared.bodies import ERROR_BODY_LIMIT, SUCCESS_BODY_LIMIT, BodyNotRead, read_body
from shared.errors import ITwinError, RateLimited, ServerError, Throttled, TransportError, Unauthorized, api_error
from shared.pacing import Pacer
from shared.retry import RetryPolicy, retry_after_of, retry_delay
from shared.schedule import SharedPacer, Slot, taken
from shared.settings import Settings
from shared.telemetry import Telemetry, default_telemetry

log = logging.getLogger(__name__)

ACCEPT = "application/vnd.bentley.itwin-platform.v1+json"
USER_AGENT = f"{PROJECT}/{__version__} python-requests/{requests.__version__}"
DEFAULT_TIMEOUT = (3.05, 10.0)  # connect, read (seconds)
POOL_SIZE = 32


def new_session(*origins: str) -> requests.Session:
    """A pooled session that reads the environment once, where requests would read it on every call.

    TLS trust follows requests' conventions (``REQUESTS_CA_BUNDLE``, then ``CURL_CA_BUNDLE``, else certifi) and
    verification stays on; proxies come from the usual variables (``HTTPS_PROXY``, ``NO_PROXY``...) for each of
    ``origins``. Reading them per call cost about 0.2 ms of CPU each (see BENCHMARKS.md).
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    for origin in origins:
        target = urlsplit(origin)
        proxy = requests.utils.get_environ_proxies(origin).get(target.scheme)
        if proxy:
            session.proxies[f"{target.scheme}://{target.hostname}"] = proxy
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class ITwinClient:
    """Sends requests to the iTwin Platform API and returns 2xx responses; anything else raises `ITwinError`.

    Collaborators are arguments with production defaults, so tests pass real local ones (the simulator's
    token service and API over HTTPS) and replace only time.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        tokens: TokenProvider | None = None,
        telemetry: Telemetry | None = None,
        pacer: Pacer | SharedPacer | None = None,
        policy: RetryPolicy | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_url = settings.api_url
        self._origin = urlsplit(settings.api_url)
        self._root = self._origin.path.rstrip("/")  # an API Management front end may serve the API under a path
        self.max_retry_after = settings.max_retry_after
        self.session = session or new_session(settings.api_url, settings.authority)
        self.tokens = tokens or TokenProvider(
            settings.client_id,
            settings.client_secret,
            settings.authority,
            settings.scope,
            session=self.session,
            timeout=timeout,
            clock=clock,
            telemetry=telemetry,
            max_retry_after=settings.max_retry_after,
        )
        self.telemetry = telemetry or default_telemetry()
        self.pacer = pacer or Pacer(settings.rate_limits)
        self.policy = policy or RetryPolicy()
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep

    def call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        budget: float | None = None,
        not_after: float | None = None,
    ) -> requests.Response:
        """Send ``method path`` (a path under ITWIN_API_URL, or a link the API returned) until it succeeds.

        Repeats within the retry policy and ``budget`` seconds (default: the policy's), and never waits past the
        budget, for pacing either: when the next try would come later, raises the last error (or `Throttled`,
        when nothing was sent) with ``retry_after`` set only where the API said how long to wait. Raises
        `ITwinError` subclasses. ``not_after`` (this client's clock): no attempt is sent later; `Throttled` then
        says nothing was (a create whose lease ran out, see `shared.ledger`).
        """
        url = self._url(path)
        api = self.api_of(url)
        data = None if body is None else json.dumps(body).encode()
        deadline = self._clock() + (self.policy.budget if budget is None else budget)
        stale: str | None = None
        refreshed = False
        attempt = 0
        slot: Slot | None = None
        error: ITwinError | None = None
        while True:
            attempt += 1
            if stale is None:
                try:
                    slot = self._pace(api, operation, deadline)
                except Throttled:
                    if error is None:
                        raise
                    # A repeat that pacing holds back was not sent; the failure it would have repeated stands, so
                    # an attempt is used up as for any other failure (a wait would repeat a 503 forever).
                    raise error from None
            # else: the repeat with a fresh token after a 401 takes the refused call's slot: a call refused for its
            # token was not carried out, and pacing it again could turn a lost credential into endless waits.
            token = self.tokens.token(stale=stale, deadline=deadline)
            stale = None
            if not_after is not None and self._clock() > not_after:
                raise Throttled(
                    f"not sent: {operation} would go out after this delivery's lease on it ran out; the command goes "
                    "back to the queue",
                    operation=operation,
                    retry_after=0.0,
                )
            response, error = self._attempt(method, url, params, data, token, operation, headers)
            if error is None:
                self.pacer.accepted(api)
                return response
            if isinstance(error, Unauthorized) and not refreshed:
                refreshed, stale = True, token
                continue
            delay = retry_delay(error, method, attempt, self.policy)
            if isinstance(error, RateLimited) and delay is not None:
                if isinstance(self.pacer, SharedPacer):
                    self.pacer.throttled(api, delay, slot)
                else:
                    self.pacer.throttled(api, delay)
            elif error.status is not None and not isinstance(error, RateLimited | Unauthorized):
                self.pacer.accepted(api)  # answered, so the API's limit counted it: the call went through
            if delay is None:
                raise error
            if isinstance(error, ServerError) and error.retry_after is not None:
                self.pacer.hold(api, delay)
            if attempt >= self.policy.max_attempts or self._clock() + delay > deadline:
                raise error
            log.info("%s %s: %s; repeating in %.2f s", method, operation, error, delay)
            self._sleep(delay)

    def _pace(self, api: str, operation: str, deadline: float) -> Slot | None:
        """Wait for this process's next slot for ``api``; raise `Throttled` when it comes after ``deadline``. The
        shared schedule's slot the call goes at, if any.

        When a 429 arrived while this call waited for its slot, the slot is void: it asks for a new one.
        """
        if isinstance(self.pacer, SharedPacer):
            return self._pace_shared(self.pacer, api, operation, deadline)
        while True:
            remaining = max(0.0, deadline - self._clock())
            delay = self.pacer.reserve(api, remaining)
            if delay > remaining:
                held = self.pacer.held(api)
                if held > remaining:
                    raise Throttled(
                        f"not sent: calls to {api} are held for {held:.1f} s after a 429 (Retry-After), "
                        "longer than this invocation waits",
                        operation=operation,
                        retry_after=held,
                    )
                # This instance's own next slot is far: another instance may have one sooner. The work goes back
                # at once, and this invocation stays busy for the time it would have waited, so that the instance
                # does not take more work than it can send: a give-back with a visibility delay instead would keep
                # the work hidden from the instances that can send it.
                raise Throttled(
                    f"not sent: this instance's next slot for calls to {api} is in {delay:.1f} s, later than this "
                    "invocation waits",
                    operation=operation,
                    retry_after=0.0,
                    linger=remaining,
                )
            if delay <= 0:
                return None
            self._sleep(delay)
            if self.pacer.held(api) <= 0:
                return None

    def _pace_shared(self, pacer: SharedPacer, api: str, operation: str, deadline: float) -> Slot | None:
        """`_pace` by the shared schedule (`shared.schedule`): a slot the command carries is used as it is; a slot
        reserved now that lies past the budget goes back with the command (`Throttled.slot`), to be sent at by
        whoever receives it; with the table failing, this process's own pacer decides, as in `_pace`.

        The token comes first: a call sent later than its slot (behind a token request) crowds the next ones.
        """
        self.tokens.token(deadline=deadline)
        carried = taken(api)
        while True:
            remaining = max(0.0, deadline - self._clock())
            reservation = pacer.redeem(carried) if carried is not None else None
            carried = None
            if reservation is None:
                reservation = pacer.reserve(api, remaining)
            wait, slot = reservation.wait, reservation.slot
            if wait > remaining or reservation.beyond:
                held = pacer.held(api)
                if slot is None and held > remaining:
                    raise Throttled(
                        f"not sent: calls to {api} are held for {held:.1f} s after a 429 (Retry-After), "
                        "longer than this invocation waits",
                        operation=operation,
                        retry_after=held,
                    )
                if slot is not None or reservation.beyond:
                    what = "its reserved slot" if slot is not None else "the shared schedule's next free slot"
                    raise Throttled(
                        f"not sent: {what} for calls to {api} is in {wait:.1f} s, later than this invocation "
                        "waits; the command goes back to the queue until then",
                        operation=operation,
                        retry_after=wait,
                        slot=slot,
                    )
                raise Throttled(
                    f"not sent: this instance's next slot for calls to {api} is in {wait:.1f} s (paced locally: "
                    "the shared schedule does not answer), later than this invocation waits",
                    operation=operation,
                    retry_after=0.0,
                    linger=remaining,
                )
            if wait > 0:
                self._sleep(wait)
                if slot is not None and pacer.late(slot):
                    continue  # woke up late (a busy host): sent now, the call would crowd the next slot's
            if pacer.held(api) <= 0:
                return slot

    def api_of(self, url: str) -> str:
        """The API a URL belongs to (``clashdetection``...): its first path segment after ITWIN_API_URL's path."""
        path = urlsplit(url).path
        if self._root and path.startswith(self._root + "/"):
            path = path[len(self._root) :]
        return path.strip("/").split("/", 1)[0]

    def _url(self, path: str) -> str:
        if not path.startswith("https://") and not path.startswith("http://"):
            return f"{self.api_url}/{path.lstrip('/')}"
        target = urlsplit(path)
        if (target.scheme, target.netloc) != (self._origin.scheme, self._origin.netloc):
            # Never send our token to a host other than ITWIN_API_URL's, whatever a link says.
            raise ITwinError(f"refusing to follow a link outside ITWIN_API_URL: {target.netloc}")
        return path

    def _attempt(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: bytes | None,
        token: str,
        operation: str,
        extra_headers: Mapping[str, str] | None = None,
    ) -> tuple[requests.Response | None, ITwinError | None]:
        target = urlsplit(url)
        port = target.port or (443 if target.scheme == "https" else 80)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": target.hostname,
            "server.port": port,
        }
        headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT, **(extra_headers or {})}
        if data is not None:
            headers["Content-Type"] = "application/json"
        with self.telemetry.tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={**attributes, "url.full": url, "itwin.operation": operation},
        ) as span:
            inject(headers)
            headers["Authorization"] = f"Bearer {token}"
            started = self._clock()
            # One attempt's whole answer, not only each wait for bytes, within its connect and read timeouts.
            deadline = started + sum(self._timeout)
            try:
                response = self.session.request(
                    method, url, params=params, data=data, headers=headers, timeout=self._timeout, stream=True
                )
                failed = response.status_code >= 400
                limit = ERROR_BODY_LIMIT if failed else SUCCESS_BODY_LIMIT
                read_body(response, deadline=deadline, limit=limit, clock=self._clock, cut=failed)
            except (requests.RequestException, BodyNotRead) as exc:
                what = str(exc) if isinstance(exc, BodyNotRead) else f"got no answer: {type(exc).__name__}"
                attributes["error.type"] = type(exc).__qualname__
                self._finish(span, attributes, started, what)
                return None, TransportError(f"{method} {target.path} {what}", operation=operation)
            status = response.status_code
            attributes["http.response.status_code"] = status
            if status < 400:
                self._finish(span, attributes, started, None)
                return response, None
            attributes["error.type"] = str(status)
            error = api_error(
                status,
                response.reason or "",
                response.headers,
                response.content,
                operation=operation,
                retry_after=retry_after_of(response.headers.get("Retry-After"), self.max_retry_after, url),
            )
            if error.code:
                span.set_attribute("itwin.error.code", error.code)
            self._finish(span, attributes, started, f"{status} {error.code or ''}".strip())
            if status < 500:
                self.telemetry.client_errors.add(
                    1,
                    {
                        "http.request.method": method,
                        "http.response.status_code": status,
                        "error.type": error.code or str(status),
                        "itwin.operation": operation,
                    },
                )
            return response, error

    def _finish(self, span: Any, attributes: dict[str, Any], started: float, failure: str | None) -> None:
        self.telemetry.request_duration.record(self._clock() - started, attributes)
        span.set_attributes(attributes)
        if failure:
            span.set_status(Status(StatusCode.ERROR, failure))

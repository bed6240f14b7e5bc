"""`Simulator`: the request pipeline and the control surface tests use.

Every request is recorded first. Then the discovery document and the token service answer their own paths;
any other path is an API call and goes through, in order: authentication (401/403), the API's rate limit (429),
answers scripted with `fail_next` / `drop_next` / `stall_next`, random `Faults`, and finally the operation,
which runs under the state lock.
"""

from __future__ import annotations

import copy
import re
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import clash_v2, clashdetection, contextcapture, export, imodels, reality_modeling, webhooks
from .events import DEFAULT_RESEND_DELAYS, DEFAULT_TIMEOUT, Deliverer, DeliveryAttempt, Event
from .faults import FaultPicker, Faults, RateLimiter, Scripted
from .identity import API_SCOPE, Identity
from .protocol import ApiError, RecordedRequest, Response, json_response, rate_limited
from .server import TlsHttpServer, tls_material
from .state import REALITY_JOB_ENDED, REPORT_STATUSES, World

DEFAULT_RATE_LIMITS: dict[str, float] = {"clashdetection": 6.0, "clash-detection": 6.0}

Handler = Callable[..., Response]


def _compile(routes: Iterable[tuple[str, dict[str, Handler]]]) -> list[tuple[re.Pattern[str], dict[str, Handler]]]:
    compiled = []
    for template, handlers in routes:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        compiled.append((re.compile(pattern), handlers))
    return compiled


_ROUTES = _compile(
    (
        *export.ROUTES,
        *contextcapture.ROUTES,
        *clashdetection.ROUTES,
        *clash_v2.ROUTES,
        *reality_modeling.ROUTES,
        *imodels.ROUTES,
        *webhooks.ROUTES,
    )
)
COMPLETED_JOB_STATES = ("success", "failed")


class Simulator:
    """An iTwin Platform (token service + Export, ContextCapture and Reality Modeling v2, Clash Detection v1 and v2,
    iModels and Webhooks APIs) on loopback HTTPS.

    `url` is both the token authority and the API root. Use it as a context manager or call `start`/`stop`.
    `rate_limits` maps an API (the first path segment) to calls per second; it replaces the default
    ``{"clashdetection": 6.0, "clash-detection": 6.0}``, so pass ``{}`` for no limits. Introspection and set-up
    methods are thread-safe.
    """

    def __init__(
        self,
        *,
        client_id: str = "sim-client-id",
        client_secret: str = "sim-client-secret",  # noqa: S107 - the simulator's own test client
        token_lifetime: float = 3600.0,
        rate_limits: dict[str, float] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_page_size: int = 1000,
        default_page_size: int = 100,
        max_recorded: int = 100_000,
        on_answer: Callable[[RecordedRequest], None] | None = None,
        delivery_timeout: float = DEFAULT_TIMEOUT,
        resend_delays: tuple[float, ...] = DEFAULT_RESEND_DELAYS,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.host = host
        self.port = port
        self.rate_limits: dict[str, float] = dict(DEFAULT_RATE_LIMITS if rate_limits is None else rate_limits)
        self.on_answer = on_answer
        self.url = ""
        self.ca_path = ""
        self._identity = Identity(client_id, client_secret, token_lifetime)
        self._world = World(max_page_size=max_page_size, default_page_size=default_page_size)
        self._deliverer = Deliverer(self._world, timeout=delivery_timeout, resend_delays=resend_delays)
        self._limiter = RateLimiter()
        self._picker = FaultPicker(Faults())
        self._scripted: list[Scripted] = []
        self._records: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._token_requests = 0
        self._lock = threading.Lock()  # records, counters and scripted answers (not the API state)
        self._stopping = threading.Event()
        self._server: TlsHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._clock = time.monotonic

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> Simulator:
        """Bind, start serving in a background thread, and return self (`url` and `ca_path` are then set)."""
        if self._server is not None:
            return self
        material = tls_material()
        self._stopping.clear()
        self._server = TlsHttpServer((self.host, self.port), material.context, self)
        port = self._server.server_address[1]
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104 - a host, not a bind
        self.url = f"https://{host}:{port}"
        self.ca_path = material.ca_path
        with self._world.lock:
            self._world.set_base_url(self.url)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="itwin-simulator", daemon=True
        )
        self._thread.start()
        self._deliverer.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and end stalls early. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        self._deliverer.stop()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def ca_pem(self) -> bytes:
        """The PEM of the CA the server certificate chains to."""
        return tls_material().ca_pem

    @property
    def itwin_id(self) -> str:
        """The iTwin (Clash Detection project) used when none is given."""
        return self._world.default_itwin_id

    # -- introspection ------------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (the newest `max_recorded`)."""
        with self._lock:
            return list(self._records)

    def api_calls(self, api: str | None = None) -> list[RecordedRequest]:
        """Recorded API calls (not token or discovery requests), optionally only those to `api`."""
        return [r for r in self.requests if r.is_api_call and (api is None or r.api == api)]

    def clear_requests(self) -> None:
        """Forget the recorded requests (the token request count is kept)."""
        with self._lock:
            self._records.clear()

    @property
    def token_requests(self) -> int:
        """How many POSTs reached /connect/token, whatever their outcome."""
        with self._lock:
            return self._token_requests

    @property
    def connections_opened(self) -> int:
        """How many TLS connections clients opened (keep-alive clients open few)."""
        return self._server.connections_opened if self._server is not None else 0

    @property
    def connections(self) -> dict[str, dict[str, Any]]:
        """A copy of the Export connections by id."""
        with self._world.lock:
            return copy.deepcopy(self._world.connections)

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        """A copy of the ContextCapture jobs by id."""
        with self._world.lock:
            return copy.deepcopy(self._world.jobs)

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        """A copy of the Clash Detection runs by id."""
        with self._world.lock:
            return copy.deepcopy(self._world.runs)

    # -- state set-up -------------------------------------------------------------------------------------
    def add_imodel(self, imodel_id: str, itwin_id: str | None = None) -> None:
        """Make an iModel known (listing its connections then answers 200, not 404)."""
        with self._world.lock:
            self._world.add_imodel(imodel_id, itwin_id)

    def add_connection(
        self,
        imodel_id: str,
        display_name: str,
        authentication_type: str = "Service",
        *,
        connection_id: str | None = None,
    ) -> dict[str, Any]:
        """Store an Export connection (registering its iModel); returns a copy of it.

        `connection_id` defaults to a new GUID; a 43-character URL-safe id works too.
        """
        with self._world.lock:
            return copy.deepcopy(
                self._world.add_connection(imodel_id, display_name, authentication_type, connection_id)
            )

    def set_connection_in_use(self, connection_id: str, seconds: float | None = None) -> None:
        """Make DELETE of the connection answer 409 ConnectionAlreadyInUse for `seconds`.

        None holds it until called again with ``seconds=0``, which clears it.
        """
        with self._world.lock:
            self._world.set_connection_in_use(connection_id, seconds)

    def add_job(
        self,
        job_id: str | None = None,
        *,
        name: str = "Simulated job",
        job_type: str = "Full",
        workspace_id: str | None = None,
        inputs: list[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        state: str = "unsubmitted",
    ) -> dict[str, Any]:
        """Store a ContextCapture job in any state; returns a copy of it."""
        with self._world.lock:
            job = self._world.add_job(
                job_id=job_id,
                name=name,
                job_type=job_type,
                workspace_id=workspace_id,
                inputs=inputs,
                settings=settings,
                state=state,
            )
            return copy.deepcopy(job)

    def set_job_state(self, job_id: str, state: str) -> dict[str, Any]:
        """Move a job to any state (e.g. ``success`` once "processing" is done); KeyError when unknown.

        Reaching ``success`` or ``failed`` publishes ``realityModeling.jobCompleted.v1`` ``{jobId}``.
        """
        with self._world.lock:
            job = copy.deepcopy(self._world.set_job_state(job_id, state))
        if state in COMPLETED_JOB_STATES:
            self.publish("realityModeling.jobCompleted.v1", {"jobId": job_id}, job["iTwinId"])
        return job

    def add_run(
        self,
        run_id: str | None = None,
        *,
        test_id: str | None = None,
        imodel_id: str | None = None,
        named_version_id: str | None = None,
        project_id: str | None = None,
        status: str = "queued",
        display_name: str | None = None,
    ) -> dict[str, Any]:
        """Store a Clash Detection run (project: the iModel's iTwin, else `itwin_id`); returns a copy."""
        with self._world.lock:
            run = self._world.add_run(
                run_id=run_id,
                test_id=test_id,
                imodel_id=imodel_id,
                named_version_id=named_version_id,
                project_id=project_id,
                status=status,
                display_name=display_name,
            )
            return copy.deepcopy(run)

    def set_run_status(self, run_id: str, status: str) -> dict[str, Any]:
        """Change a run's status (e.g. ``completed``); KeyError when unknown."""
        with self._world.lock:
            run = self._world.runs[run_id]
            run["status"] = status
            return copy.deepcopy(run)

    @property
    def reports(self) -> dict[str, dict[str, Any]]:
        """A copy of the Clash Detection v2 clash reports by id (lower case)."""
        with self._world.lock:
            return copy.deepcopy(self._world.reports)

    def add_report(
        self,
        *,
        test_id: str,
        imodel_id: str,
        changeset_id: str,
        itwin_id: str | None = None,
        status: str = "running",
    ) -> dict[str, Any]:
        """Store a clash report as a Clash Detection v2 run makes it (iTwin: the iModel's, else `itwin_id`);
        ``status``: running, completed, failed or cancelled. Returns a copy."""
        with self._world.lock:
            itwin = itwin_id or self._world.imodels.get(imodel_id.lower(), self._world.default_itwin_id)
            report = self._world.add_report(
                itwin_id=itwin,
                test_id=test_id,
                imodel_id=imodel_id,
                changeset_id=changeset_id,
                status=REPORT_STATUSES[status],
            )
            return copy.deepcopy(report)

    def set_report_status(self, report_id: str, status: str) -> dict[str, Any]:
        """Move a clash report's run on: running, completed, failed or cancelled; KeyError when unknown."""
        with self._world.lock:
            report = self._world.reports[report_id.lower()]
            report["status"] = REPORT_STATUSES[status]
            return copy.deepcopy(report)

    @property
    def reality_jobs(self) -> dict[str, dict[str, Any]]:
        """A copy of the Reality Modeling v2 jobs by id (lower case)."""
        with self._world.lock:
            return copy.deepcopy(self._world.reality_jobs)

    def add_reality_job(
        self,
        *,
        name: str = "Simulated job",
        job_type: str = "Reconstruction",
        itwin_id: str | None = None,
        state: str = "Active",
    ) -> dict[str, Any]:
        """Store a Reality Modeling v2 job in any state (iTwin: `itwin_id` by default); returns a copy."""
        with self._world.lock:
            job = self._world.add_reality_job(
                itwin_id=itwin_id or self._world.default_itwin_id, name=name, job_type=job_type, state=state
            )
            return copy.deepcopy(job)

    def set_reality_job_state(self, job_id: str, state: str) -> dict[str, Any]:
        """Move a v2 job to any state; KeyError when unknown. Reaching Success, Failed or Cancelled publishes
        ``realityModeling.jobCompleted.v2`` ``{jobId}``."""
        with self._world.lock:
            job = copy.deepcopy(self._world.set_reality_job_state(job_id, state))
        if state in REALITY_JOB_ENDED:
            self.publish("realityModeling.jobCompleted.v2", {"jobId": job["id"]}, job["iTwinId"])
        return job

    # -- iModel events and webhooks -----------------------------------------------------------------------
    def create_imodel(self, imodel_id: str | None = None, *, itwin_id: str | None = None, name: str = "") -> str:
        """Make an iModel known and publish ``iModels.iModelCreated.v1``; returns its id."""
        imodel_id = imodel_id or str(uuid.uuid4())
        with self._world.lock:
            itwin = self._world.add_imodel(imodel_id, itwin_id)
        self.publish("iModels.iModelCreated.v1", {"imodelId": imodel_id, "iModelName": name or imodel_id}, itwin)
        return imodel_id

    def delete_imodel(self, imodel_id: str, *, user_id: str = "simulated-user") -> None:
        """Publish ``iModels.iModelDeleted.v1`` for a known iModel (KeyError when unknown).

        Export keeps listing the iModel's connections afterwards: whether the real API still lists the
        connections of a deleted iModel is not documented, and removing them is the subscriber's job.
        """
        with self._world.lock:
            itwin = self._world.imodels[imodel_id.lower()]
        self.publish("iModels.iModelDeleted.v1", {"imodelId": imodel_id, "userId": user_id}, itwin)

    def create_named_version(self, imodel_id: str, name: str = "", *, user_id: str = "simulated-user") -> str:
        """Publish ``iModels.namedVersionCreated.v1`` for a known iModel (KeyError when unknown); returns the
        new version's id."""
        with self._world.lock:
            itwin = self._world.imodels[imodel_id.lower()]
            index = self._world.next_changeset_index()
        version_id = str(uuid.uuid4())
        content = {
            "imodelId": imodel_id,
            "versionId": version_id,
            "versionName": name or f"Version {index}",
            "changesetId": uuid.uuid4().hex + uuid.uuid4().hex[:8],
            "changesetIndex": index,
            "userId": user_id,
        }
        self.publish("iModels.namedVersionCreated.v1", content, itwin)
        return version_id

    def publish(self, event_type: str, content: dict[str, Any], itwin_id: str | None = None) -> int:
        """Deliver an event to every active webhook subscribed to it (in the background); returns how many."""
        return self._deliverer.publish(Event(event_type, content, itwin_id or self.itwin_id))

    def wait_for_deliveries(self, timeout: float = 10.0) -> bool:
        """Wait until every delivery, resends included, has been sent or given up; False on timeout."""
        return self._deliverer.wait(timeout)

    @property
    def deliveries(self) -> list[DeliveryAttempt]:
        """Every delivery attempt so far, in the order they finished."""
        return self._deliverer.attempts

    @property
    def webhooks(self) -> dict[str, dict[str, Any]]:
        """A copy of the webhooks by id, secrets included."""
        with self._world.lock:
            return copy.deepcopy(self._world.webhooks)

    @property
    def webhooks_allowed(self) -> bool:
        """False: the application lacks the webhooks_maintainer permission; every Webhooks call is 403."""
        return self._world.webhooks_allowed

    @webhooks_allowed.setter
    def webhooks_allowed(self, value: bool) -> None:
        with self._world.lock:
            self._world.webhooks_allowed = bool(value)

    @property
    def account_id(self) -> str:
        """The application's account: the ``scopeId`` of its Account webhooks."""
        return self._world.account_id

    # -- tokens -------------------------------------------------------------------------------------------
    def issue_token(self, scope: str = API_SCOPE, lifetime: float | None = None) -> str:
        """A token as the token service would issue it, without a request."""
        return self._identity.issue(scope, lifetime)

    def revoke_tokens(self) -> None:
        """Every token issued so far becomes unknown: API calls carrying one answer 401 InvalidToken."""
        self._identity.revoke_all()

    @property
    def token_service_down(self) -> bool:
        """While True, /connect/token answers 503 (discovery keeps working)."""
        return self._identity.down

    @token_service_down.setter
    def token_service_down(self, value: bool) -> None:
        self._identity.down = bool(value)

    @property
    def token_lifetime(self) -> float:
        """Seconds a newly issued token stays valid (`expires_in` is its whole part)."""
        return self._identity.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, value: float) -> None:
        self._identity.token_lifetime = float(value)

    # -- faults -------------------------------------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        """The random faults applied to API calls; assigning restarts the random sequence from its seed."""
        return self._picker.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self._picker = FaultPicker(value)

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | dict | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` matching calls with `status` instead of doing the work.

        Matches calls whose method is `method` (``"*"``: any) and whose path starts with `path_prefix`;
        the token service and discovery paths can be scripted too. `body`: a dict is sent as JSON, bytes as
        they are (HTML when they start with ``<``), None as the default iTwin error body for the status.
        API calls still pass authentication and the rate limit first. Earlier entries match first.
        """
        self._script(Scripted(method.upper(), path_prefix, times, status, headers, body))

    def drop_next(self, method: str, path_prefix: str, *, times: int = 1) -> None:
        """Close the connection of the next `times` matching calls without answering (no state change)."""
        self._script(Scripted(method.upper(), path_prefix, times, drop=True))

    def stall_next(self, method: str, path_prefix: str, seconds: float, *, times: int = 1) -> None:
        """Make the next `times` matching calls wait `seconds`, then do the work and answer normally."""
        self._script(Scripted(method.upper(), path_prefix, times, stall_seconds=seconds))

    def trickle_next(
        self, method: str, path_prefix: str, status: int, body: bytes, *, every: float, times: int = 1
    ) -> None:
        """Answer the next `times` matching calls with `status` and `body` sent one byte every `every` seconds (a
        server that keeps a read timeout from ever firing), without doing the work."""

        def pieces() -> Iterator[bytes]:
            for byte in body:
                if self._stopping.wait(every):
                    return
                yield bytes([byte])

        self._script(Scripted(method.upper(), path_prefix, times, status, pieces=pieces, length=len(body)))

    def flood_next(self, method: str, path_prefix: str, status: int, size: int, *, times: int = 1) -> None:
        """Answer the next `times` matching calls with `status` and a body of `size` bytes (generated as it is sent:
        the simulator holds none of it), without doing the work."""

        def pieces() -> Iterator[bytes]:
            block = b" " * 65536
            for start in range(0, size, len(block)):
                if self._stopping.is_set():
                    return
                yield block[: size - start]

        self._script(Scripted(method.upper(), path_prefix, times, status, pieces=pieces, length=size))

    def reset_rate_limits(self) -> None:
        """Forget the calls counted against the rate limits."""
        self._limiter.reset()

    def _script(self, entry: Scripted) -> None:
        if entry.remaining < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._scripted.append(entry)

    def answer_in_process(self, request: RecordedRequest) -> Response:
        """Answer ``request`` without a socket, as the server would (recorded, faults and scripts applied): for
        tests that drive the simulator step by step from their own threads. Links point at `url` as set."""
        self._record(request)
        response = self._answer(request)
        if not response.drop:
            request.status = response.status
        self._answered(request)
        return response

    def clear_resources(self) -> None:
        """Forget every connection, job, run and report (iModels and tokens stay): a fresh world for the next
        scenario."""
        with self._world.lock:
            self._world.connections.clear()
            self._world.in_use_until.clear()
            self._world.jobs.clear()
            self._world.runs.clear()
            self._world.reports.clear()
            self._world.reality_jobs.clear()

    # -- the pipeline (called from the server's connection threads) --------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._records.append(request)
            if request.path == "/connect/token" and request.method == "POST":
                self._token_requests += 1

    def _answered(self, request: RecordedRequest) -> None:
        if self.on_answer is not None:
            self.on_answer(request)

    def _answer(self, request: RecordedRequest) -> Response:
        try:
            scripted = self._scripted_for(request) if not request.is_api_call else None
            if scripted is not None:
                return scripted
            if request.path == "/.well-known/openid-configuration":
                return self._identity.discovery(self.url)
            if request.path == "/.well-known/openid-configuration/jwks":
                return self._identity.jwks()
            if request.path == "/connect/token":
                if request.method != "POST":
                    raise ApiError(405, "MethodNotAllowed", "Use POST.", headers={"Allow": "POST"})
                return self._identity.token(request.headers, request.body)
            if not request.is_api_call:
                raise ApiError(404, "ResourceNotFound", f"No resource at {request.path}.")
            return self._api_call(request)
        except ApiError as error:
            return error.response()
        except Exception:
            traceback.print_exc(file=sys.stderr)
            return json_response(
                500, {"error": {"code": "InternalServerError", "message": "The simulator failed; see its log."}}
            )

    def _api_call(self, request: RecordedRequest) -> Response:
        self._identity.authenticate(request.headers.get("Authorization"))
        retry_after = self._limiter.admit(request.api, self.rate_limits.get(request.api), self._clock())
        if retry_after is not None:
            request.fault = "rate-limited"
            raise rate_limited(request.api, retry_after)
        scripted = self._scripted_for(request)
        if scripted is not None:
            return scripted
        picker = self._picker
        if picker.faults.latency and self._stopping.wait(picker.faults.latency):
            return Response(0, drop=True)
        fault = picker.pick(request.api)
        if fault is not None:
            request.fault = fault.kind
            if fault.kind == "drop":
                return Response(0, drop=True)
            if fault.kind == "error":
                assert fault.response is not None
                return fault.response
            if self._stopping.wait(fault.seconds):
                return Response(0, drop=True)
        return self._operate(request)

    def _scripted_for(self, request: RecordedRequest) -> Response | None:
        """The scripted answer for this request, or None (also after a scripted stall, to go on normally)."""
        with self._lock:
            entry = next((e for e in self._scripted if e.matches(request.method, request.path)), None)
            if entry is None:
                return None
            entry.remaining -= 1
            if entry.remaining == 0:
                self._scripted.remove(entry)
        request.fault = "scripted"
        if entry.drop:
            return Response(0, drop=True)
        if entry.stall_seconds is not None:
            return Response(0, drop=True) if self._stopping.wait(entry.stall_seconds) else None
        return entry.response(request.api)

    def _operate(self, request: RecordedRequest) -> Response:
        for pattern, handlers in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            handler = handlers.get(request.method)
            if handler is None:
                allowed = ", ".join(handlers)
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    f"{request.method} is not allowed on {request.path}; allowed: {allowed}.",
                    headers={"Allow": allowed},
                )
            with self._world.lock:
                return handler(self._world, request, **match.groupdict())
        raise ApiError(404, "ResourceNotFound", f"No resource at {request.path}.")

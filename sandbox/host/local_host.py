"""The local host itself: :class:`LocalHost` indexes an app, starts its HTTP server, queue pollers and timers, and
stops them in order."""

from __future__ import annotations

import collections
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest

from sandbox.host.functions import HttpFunction, QueueFunction, TimerFunction, app_functions, index
from sandbox.host.http_server import Handler, HttpServer
from sandbox.host.invocation import Context, call
from sandbox.host.queues import QueuePoller, queue_connection_string
from sandbox.host.settings import load_host_settings
from sandbox.timers import TimerRunner

log = logging.getLogger("sandbox.host")  # one logger for the whole local host


class LocalHost:
    """Runs a FunctionApp's HTTP and queue triggers locally. See the `sandbox.host` package docstring.

    ``environ`` (default ``os.environ``) resolves queue connections and ``%setting%`` queue names; the app's own code
    still reads ``os.environ``. ``name`` starts the names of the threads that run queue invocations, so that two
    hosts in one process can be told apart. ``port=0`` picks a free port; ``lease_seconds`` is how long a received
    message stays invisible while its function runs (renewed at half-time). ``invocation_log_level`` is the level of
    the "Executing ..." / "Executed ... (Succeeded ...)" pair each invocation logs, as the Functions host does (INFO);
    `make dev` logs them at DEBUG, so that its log is the commands' outcomes. A failed invocation is always an ERROR.
    """

    def __init__(
        self,
        app: func.FunctionApp,
        host_json_path: str | os.PathLike[str] | Mapping[str, Any] | None = "host.json",
        environ: Mapping[str, str] | None = None,
        port: int = 0,
        lease_seconds: int = 30,
        *,
        bind: str = "127.0.0.1",
        name: str = "host",
        invocation_log_level: int = logging.INFO,
    ) -> None:
        if lease_seconds < 1:
            raise ValueError("lease_seconds must be at least 1")
        self.app = app
        self.name = name  # prefixes the names of the threads that run queue invocations
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.settings = load_host_settings(host_json_path)
        self.requested_port = port
        self.bind = bind
        self.lease_seconds = int(lease_seconds)
        self.invocation_log_level = invocation_log_level
        http, queue, timers, skipped = index(app_functions(app), self.settings, self.environ)
        self.http_functions: list[HttpFunction] = http
        self.queue_functions: list[QueueFunction] = queue
        self.timer_functions: list[TimerFunction] = timers
        self.skipped: list[str] = skipped
        self.functions: dict[str, HttpFunction | QueueFunction | TimerFunction] = {
            f.name: f for f in [*http, *queue, *timers]
        }
        self._timers: list[TimerRunner] = []
        self.invocations: collections.Counter[tuple[str, str]] = collections.Counter()
        self._counter_lock = threading.Lock()
        self._server: HttpServer | None = None
        self._server_thread: threading.Thread | None = None
        self._pollers: list[QueuePoller] = []
        self._http_in_flight = 0
        self._http_changed = threading.Condition()
        self._state = "new"

    # lifecycle

    def start(self) -> LocalHost:
        if self._state != "new":
            raise RuntimeError(f"the host is {self._state}; start() works once")
        conns = {f.name: queue_connection_string(f, self.environ) for f in self.queue_functions}
        self._server = HttpServer((self.bind, self.requested_port), Handler)
        self._server.host = self
        self._server_thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._server_thread.start()
        self._state = "running"
        for function in self.queue_functions:
            poller = QueuePoller(self, function, conns[function.name])
            self._pollers.append(poller)
            poller.start()
        for timer in self.timer_functions:
            runner = TimerRunner(
                timer.name,
                timer.schedule,
                lambda past_due, timer=timer: self.run_timer(timer.name, past_due=past_due),
                run_on_startup=timer.run_on_startup,
            )
            self._timers.append(runner)
            runner.start()
        log.info(
            "Host started on %s: %d HTTP function(s), %d queue function(s), %d timer function(s)",
            self.url,
            len(self.http_functions),
            len(self.queue_functions),
            len(self.timer_functions),
        )
        return self

    def stop(self) -> None:
        """Stop taking HTTP requests and polling, then wait for in-flight invocations to finish and settle."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopping"
        assert self._server is not None
        assert self._server_thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._server_thread.join()
        for runner in self._timers:
            runner.stop()
        for poller in self._pollers:
            poller.stop_polling.set()
        for poller in self._pollers:
            poller.stop()
        with self._http_changed:
            while self._http_in_flight:
                self._http_changed.wait()
        self._state = "stopped"
        log.info("Host stopped")

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # what tests look at

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the host is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (no route prefix)."""
        return f"http://{self.bind}:{self.port}"

    def function_url(self, name: str) -> str:
        """The URL of an HTTP function, route template included: ``http://127.0.0.1:7071/api/items/{id}``."""
        function = self.functions[name]
        if not isinstance(function, HttpFunction):
            raise ValueError(f"{name} is not an HTTP function")
        return self.url + function.path

    @property
    def in_flight(self) -> int:
        return self._http_in_flight + sum(p.in_flight for p in self._pollers)

    def count(self, function_name: str, outcome: str | None = None) -> int:
        """Invocations of a function: ``outcome`` "succeeded" or "failed" (None: both), or messages "poisoned"."""
        with self._counter_lock:
            if outcome is None:
                return self.invocations[(function_name, "succeeded")] + self.invocations[(function_name, "failed")]
            return self.invocations[(function_name, outcome)]

    def _count(self, function_name: str, outcome: str) -> None:
        with self._counter_lock:
            self.invocations[(function_name, outcome)] += 1

    def run_timer(self, name: str, *, past_due: bool = False) -> None:
        """Invoke a timer function now, as its schedule would (tests call this rather than wait for 03:17)."""
        function = self.functions[name]
        if not isinstance(function, TimerFunction):
            raise ValueError(f"{name} is not a timer function")
        invocation_id = str(uuid.uuid4())
        kwargs: dict[str, Any] = {function.binding_name: TimerRequest(past_due=past_due)}
        if function.wants_context:
            kwargs["context"] = Context(invocation_id, function.name, str(Path.cwd()))
        log.log(self.invocation_log_level, "Executing '%s' (Reason='Timer fired', Id=%s)", function.name, invocation_id)
        try:
            call(function.user_function, kwargs)
        except Exception:
            log.exception("Executed '%s' (Failed, Id=%s)", function.name, invocation_id)
            self._count(function.name, "failed")
            return
        log.log(self.invocation_log_level, "Executed '%s' (Succeeded, Id=%s)", function.name, invocation_id)
        self._count(function.name, "succeeded")

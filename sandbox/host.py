"""A small local Azure Functions host: runs a v2-model ``func.FunctionApp``'s HTTP, queue and timer triggers.

Azure Functions Core Tools (``func start``) cannot be installed on these machines, so this module plays its part for
local runs and integration tests:

    python -m sandbox.host [--app function_app:app] [--host-json host.json] [--settings local.settings.json]
                           [--port 7071]

The CLI loads ``local.settings.json`` ``Values`` into the environment like ``func start`` (variables already set
win), imports the app, prints the URL of each HTTP function and the queues it polls, and runs until SIGINT/SIGTERM.
In tests::

    with LocalHost(app, tmp_path / "host.json", environ={"AzureWebJobsStorage": azurite.connection_string}) as host:
        requests.post(f"{host.url}/api/commands", ...)

What it does, like the Functions host:

- Indexes the app once (``app.get_functions()`` raises on a second call, so results are cached per app object:
  use :func:`app_functions` when you need them too) and reads each function's trigger, binding names and user
  function.
- ``host.json``: ``extensions.http.routePrefix`` (default ``api``) and ``extensions.queues``: ``maxDequeueCount``
  (5), ``visibilityTimeout`` (``"00:00:00"``), ``batchSize`` (16, at most 32), ``newBatchThreshold``
  (batchSize / 2), ``maxPollingInterval`` (2 s here; 1 min in Azure), ``messageEncoding`` (``base64`` or ``none``).
- HTTP triggers: ``http://127.0.0.1:<port>/<routePrefix>/<route>``, route templates with ``{name}``,
  ``{name:int}`` (and the other common constraints), ``{name?}``, ``{name=default}`` and ``{*rest}``; literal
  segments match case-insensitively. Unknown route: 404; known route, other method: 405. An exception in the
  function: 500. **Keys are not enforced**: like Core Tools locally, ``FUNCTION`` and ``ADMIN`` auth levels are
  reported but any caller gets in.
- Queue triggers: one poller per function, on the connection string in the app setting the trigger names
  (``connection``, or ``AzureWebJobs<connection>``; empty means ``AzureWebJobsStorage``; ``UseDevelopmentStorage=true``
  works; identity-based ``__queueServiceUri`` settings do not). ``%setting%`` in a queue name is resolved. The
  queue is created when missing. Messages are leased for ``lease_seconds`` and the lease is renewed while the
  function runs. Success deletes the message. A failure (an exception, or a body that is not base64 under
  ``base64`` encoding) makes the message visible again after ``visibilityTimeout``; once its dequeue count has
  reached ``maxDequeueCount`` the original content goes to ``<queue>-poison`` (created when missing) instead.
- OpenTelemetry (CLI): with ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` and
  ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set, exports through azure-monitor-opentelemetry like the Python worker.
- A parameter named ``context`` gets a :class:`func.Context`. A queue trigger parameter annotated ``str`` or ``bytes``
  gets the body; otherwise an ``azure.functions.queue.QueueMessage``. ``async def`` functions work.

- Timer triggers (`sandbox.timers`): six-field NCRONTAB schedules in UTC, ``runOnStartup``; ``run_timer(name)``
  invokes one at once.

Not supported: other trigger types (such functions are skipped with a warning, see ``LocalHost.skipped``), input
and output bindings other than the HTTP ``$return`` (construction fails), function keys, the admin API.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import importlib
import inspect
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.decorators.utils import StringifyEnumJsonEncoder
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import LinearRetry, QueueClient

from sandbox.timers import Schedule, TimerRunner

__all__ = [
    "HostSettings",
    "HttpFunction",
    "LocalHost",
    "QueueFunction",
    "app_functions",
    "compile_route",
    "configure_telemetry",
    "load_app",
    "load_host_settings",
    "load_local_settings",
    "main",
    "parse_timespan",
]

log = logging.getLogger("sandbox.host")

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")
MIN_POLLING_INTERVAL = 0.1

# --------------------------------------------------------------------------------------------------------- host.json


@dataclass(frozen=True)
class HostSettings:
    """What the host uses from host.json (durations in seconds)."""

    route_prefix: str = "api"
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 2.0
    min_polling_interval: float = MIN_POLLING_INTERVAL
    message_encoding: str = "base64"


_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)$")


def parse_timespan(value: str | float | int) -> float:
    """A .NET TimeSpan as host.json writes it (``"hh:mm:ss"``, ``"d.hh:mm:ss"``, ``"00:00:00.250"``) in seconds.

    Plain numbers are taken as seconds.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    match = _TIMESPAN.match(value.strip())
    if not match:
        raise ValueError(f"not a duration (expected hh:mm:ss): {value!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _get_ci(mapping: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """host.json keys are case-insensitive."""
    for name, value in mapping.items():
        if name.lower() == key.lower():
            return value
    return default


def load_host_settings(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> HostSettings:
    """Read host.json (a path, an already parsed mapping, or None for the defaults)."""
    if source is None:
        doc: Mapping[str, Any] = {}
    elif isinstance(source, Mapping):
        doc = source
    else:
        doc = json.loads(Path(source).read_text(encoding="utf-8-sig"))
    extensions = _get_ci(doc, "extensions", {}) or {}
    http = _get_ci(extensions, "http", {}) or {}
    queues = _get_ci(extensions, "queues", {}) or {}

    route_prefix = str(_get_ci(http, "routePrefix", "api")).strip("/")
    batch_size = int(_get_ci(queues, "batchSize", 16))
    if not 1 <= batch_size <= 32:
        raise ValueError(f"host.json extensions.queues.batchSize must be 1..32, not {batch_size}")
    new_batch_threshold = int(_get_ci(queues, "newBatchThreshold", batch_size // 2))
    max_dequeue_count = int(_get_ci(queues, "maxDequeueCount", 5))
    if max_dequeue_count < 1:
        raise ValueError(f"host.json extensions.queues.maxDequeueCount must be at least 1, not {max_dequeue_count}")
    encoding = str(_get_ci(queues, "messageEncoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise ValueError(f"host.json extensions.queues.messageEncoding must be base64 or none, not {encoding!r}")
    max_polling = parse_timespan(_get_ci(queues, "maxPollingInterval", 2.0))
    return HostSettings(
        route_prefix=route_prefix,
        max_dequeue_count=max_dequeue_count,
        visibility_timeout=parse_timespan(_get_ci(queues, "visibilityTimeout", 0)),
        batch_size=batch_size,
        new_batch_threshold=max(0, new_batch_threshold),
        max_polling_interval=max(max_polling, MIN_POLLING_INTERVAL),
        min_polling_interval=min(MIN_POLLING_INTERVAL, max(max_polling, 0.01)),
        message_encoding=encoding,
    )


# -------------------------------------------------------------------------------------------------------- app model

_FUNCTIONS: weakref.WeakKeyDictionary[Any, list[func.Function]] = weakref.WeakKeyDictionary()
_FUNCTIONS_LOCK = threading.Lock()


def app_functions(app: func.FunctionApp) -> list[func.Function]:
    """``app.get_functions()``, cached: the SDK raises "duplicate function name" on a second call."""
    with _FUNCTIONS_LOCK:
        if app not in _FUNCTIONS:
            try:
                functions = app.get_functions()
            except ValueError:
                # Somebody else indexed this app already. Build the functions again from the registered builders
                # (private, but building is idempotent) rather than fail.
                builders = getattr(app, "_function_builders", None)
                if builders is None:
                    raise
                functions = [builder.build(getattr(app, "auth_level", None)) for builder in builders]
            _FUNCTIONS[app] = list(functions)
        return _FUNCTIONS[app]


def _binding_dicts(fn: func.Function) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in fn.get_raw_bindings()]


def _trigger_dict(fn: func.Function) -> dict[str, Any]:
    trigger = fn.get_trigger()
    assert trigger is not None
    return json.loads(json.dumps(trigger.get_dict_repr(), cls=StringifyEnumJsonEncoder))


_PARAM = re.compile(r"\{([^{}]+)\}")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "float": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "bool": r"(?:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"\{?[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}\}?",
}


@dataclass(frozen=True)
class CompiledRoute:
    template: str  # the full path template, "/api/items/{id}"
    regex: re.Pattern[str]
    groups: Mapping[str, str]  # regex group -> route parameter name
    defaults: Mapping[str, str]
    literal_length: int

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        if m is None:
            return None
        params = dict(self.defaults)
        for group, name in self.groups.items():
            value = m.group(group)
            if value is not None:
                params[name] = unquote(value)
        return params


def compile_route(prefix: str, route: str) -> CompiledRoute:
    """An ASP.NET-style route template (what Functions routes are) as a regex over the request path."""
    full = "/".join(part.strip("/") for part in (prefix, route) if part and part.strip("/"))
    pattern = ""
    groups: dict[str, str] = {}
    defaults: dict[str, str] = {}
    literal_length = 0
    for segment in full.split("/") if full else []:
        segment_re, optional, pos = "", False, 0
        for m in _PARAM.finditer(segment):
            literal = segment[pos : m.start()]
            literal_length += len(literal)
            segment_re += re.escape(literal)
            spec = m.group(1).strip()
            catch_all = spec.startswith("*")
            spec = spec.lstrip("*")
            is_optional = spec.endswith("?")
            spec = spec.rstrip("?")
            default = None
            if "=" in spec:
                spec, default = spec.split("=", 1)
            name, *constraints = spec.split(":")
            expr = "[^/]+"
            for constraint in constraints:
                if constraint.lower() in _CONSTRAINTS:
                    expr = _CONSTRAINTS[constraint.lower()]
                    break
            if catch_all:
                expr = ".*"
            group = f"p{len(groups)}"
            groups[group] = name.strip()
            if default is not None:
                defaults[name.strip()] = default
            segment_re += f"(?P<{group}>{expr})"
            if (catch_all or is_optional or default is not None) and m.group(0) == segment:
                optional = True
            pos = m.end()
        literal_length += len(segment) - pos
        segment_re += re.escape(segment[pos:])
        pattern += f"(?:/{segment_re})?" if optional else f"/{segment_re}"
    return CompiledRoute(
        template="/" + full,
        regex=re.compile(f"^{pattern}/?$", re.IGNORECASE),
        groups=groups,
        defaults=defaults,
        literal_length=literal_length,
    )


@dataclass(frozen=True)
class HttpFunction:
    name: str
    route: str  # as declared (the function name when the decorator gave none)
    methods: tuple[str, ...] | None  # None: every method
    auth_level: str  # "anonymous", "function" or "admin"
    binding_name: str
    user_function: Callable[..., Any] = field(repr=False)
    compiled: CompiledRoute = field(repr=False)
    wants_context: bool = False

    @property
    def path(self) -> str:
        """The URL path template, route prefix included: ``/api/items/{id}``."""
        return self.compiled.template

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods


@dataclass(frozen=True)
class QueueFunction:
    name: str
    queue_name: str  # resolved (%setting% replaced) and lower-cased, as Storage names queues
    connection: str  # the app setting naming the storage account
    binding_name: str
    user_function: Callable[..., Any] = field(repr=False)
    body_type: str = "message"  # "message", "str" or "bytes": what the trigger parameter gets
    wants_context: bool = False

    @property
    def poison_queue_name(self) -> str:
        return f"{self.queue_name}-poison"


@dataclass(frozen=True)
class TimerFunction:
    name: str
    schedule: Schedule
    run_on_startup: bool
    binding_name: str
    user_function: Callable[..., Any] = field(repr=False)
    wants_context: bool = False


class _Context(func.Context):
    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._tls = threading.local()
        self._tls.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return SimpleNamespace(trace_parent="", trace_state="", attributes={})

    @property
    def retry_context(self) -> Any:
        return SimpleNamespace(retry_count=0, max_retry_count=0, exception=None)


def _resolve_app_settings(value: str, environ: Mapping[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in environ:
            raise ValueError(f"app setting {name!r} (used as %{name}%) is not set")
        return environ[name]

    return re.sub(r"%([^%]+)%", replace, value)


def _parameters(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(fn).parameters


def _check_parameters(name: str, fn: Callable[..., Any], binding_name: str) -> bool:
    """Whether the function wants a ``context``; raises when its parameters don't fit its bindings."""
    params = _parameters(fn)
    if binding_name not in params:
        raise ValueError(f"function {name}: its trigger binding {binding_name!r} is not a parameter of {fn!r}")
    for param in params.values():
        if param.name in (binding_name, "context") or param.default is not inspect.Parameter.empty:
            continue
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        raise ValueError(f"function {name}: parameter {param.name!r} has no binding (the local host has none)")
    return "context" in params


def _index(
    functions: Iterable[func.Function], settings: HostSettings, environ: Mapping[str, str]
) -> tuple[list[HttpFunction], list[QueueFunction], list[TimerFunction], list[str]]:
    http: list[HttpFunction] = []
    queue: list[QueueFunction] = []
    timers: list[TimerFunction] = []
    skipped: list[str] = []
    for fn in functions:
        name = fn.get_function_name() or fn.get_user_function().__name__
        trigger = _trigger_dict(fn)
        kind = trigger.get("type")
        user_function = fn.get_user_function()
        binding_name = trigger["name"]
        if kind not in ("httpTrigger", "queueTrigger", "timerTrigger"):
            log.warning("function %s: %s triggers are not supported by the local host; skipped", name, kind)
            skipped.append(name)
            continue
        for binding in _binding_dicts(fn):
            if binding["name"] == binding_name or (kind == "httpTrigger" and binding.get("type") == "http"):
                continue
            raise ValueError(
                f"function {name}: binding {binding['name']!r} ({binding.get('type')}) is not supported by the "
                "local host, which runs HTTP, queue and timer triggers only"
            )
        wants_context = _check_parameters(name, user_function, binding_name)
        if kind == "timerTrigger":
            schedule = _resolve_app_settings(str(trigger["schedule"]), environ)
            timers.append(
                TimerFunction(
                    name=name,
                    schedule=Schedule.parse(schedule),
                    run_on_startup=bool(trigger.get("runOnStartup")),
                    binding_name=binding_name,
                    user_function=user_function,
                    wants_context=wants_context,
                )
            )
        elif kind == "httpTrigger":
            route = trigger.get("route") or name
            methods = trigger.get("methods")
            http.append(
                HttpFunction(
                    name=name,
                    route=route,
                    methods=tuple(str(m).upper() for m in methods) if methods else None,
                    auth_level=str(trigger.get("authLevel") or "function").lower(),
                    binding_name=binding_name,
                    user_function=user_function,
                    compiled=compile_route(settings.route_prefix, route),
                    wants_context=wants_context,
                )
            )
        else:
            annotation = _parameters(user_function)[binding_name].annotation
            body_type = "message"
            if annotation in (str, "str"):
                body_type = "str"
            elif annotation in (bytes, "bytes"):
                body_type = "bytes"
            queue.append(
                QueueFunction(
                    name=name,
                    queue_name=_resolve_app_settings(trigger["queueName"], environ).lower(),
                    connection=trigger.get("connection") or "AzureWebJobsStorage",
                    binding_name=binding_name,
                    user_function=user_function,
                    body_type=body_type,
                    wants_context=wants_context,
                )
            )
    return http, queue, timers, skipped


def _call(user_function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    result = user_function(**kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


# ------------------------------------------------------------------------------------------------------------- HTTP


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    host: LocalHost


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    server_version = "sandbox-functions-host"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        self.close_connection = True
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._send(400, {}, b"bad request body")
            return
        status, headers, payload = self.server.host._dispatch_http(
            self.command, self.path, dict(_merge_headers(self.headers.items())), body
        )
        self._send(status, headers, payload)

    def _send(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() in ("content-length", "transfer-encoding", "connection", "date", "server"):
                continue
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)


for _method in HTTP_METHODS:
    setattr(_Handler, f"do_{_method}", _Handler._handle)


def _merge_headers(items: Iterable[tuple[str, str]]) -> Iterable[tuple[str, str]]:
    merged: dict[str, tuple[str, str]] = {}
    for name, value in items:
        key = name.lower()
        merged[key] = (merged[key][0], f"{merged[key][1]}, {value}") if key in merged else (name, value)
    return merged.values()


def _response_parts(result: Any) -> tuple[int, dict[str, str], bytes]:
    if isinstance(result, func.HttpResponse):
        headers = dict(result.headers.items())
        if not any(name.lower() == "content-type" for name in headers):
            mimetype = result.mimetype
            headers["Content-Type"] = (
                f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
            )
        return result.status_code, headers, result.get_body() or b""
    if result is None:
        return 204, {}, b""
    if isinstance(result, str):
        return 200, {"Content-Type": "text/plain; charset=utf-8"}, result.encode()
    if isinstance(result, bytes | bytearray):
        return 200, {"Content-Type": "application/octet-stream"}, bytes(result)
    return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(result).encode()


# ----------------------------------------------------------------------------------------------------------- queues


@dataclass
class _Lease:
    message_id: str
    pop_receipt: str
    renew_at: float
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _QueuePoller:
    """Polls one queue for one function, runs invocations in a small pool, settles each message."""

    def __init__(self, host: LocalHost, function: QueueFunction, conn_str: str) -> None:
        self.host = host
        self.function = function
        self.settings = host.settings
        retry = LinearRetry(backoff=0.5, retry_total=3, random_jitter_range=0.2)
        self.client = QueueClient.from_connection_string(conn_str, function.queue_name, retry_policy=retry)
        self.poison_client = QueueClient.from_connection_string(
            conn_str, function.poison_queue_name, retry_policy=retry
        )
        self.max_in_flight = self.settings.batch_size + self.settings.new_batch_threshold
        self.pool = ThreadPoolExecutor(
            max_workers=self.max_in_flight, thread_name_prefix=f"{host.name}-queue-{function.name}"
        )
        self.leases: dict[str, _Lease] = {}
        self.in_flight = 0
        self.changed = threading.Condition()
        self.stop_polling = threading.Event()
        self.stop_leases = threading.Event()
        self.queue_ready = False
        self.poison_ready = False
        self.poll_thread = threading.Thread(target=self._poll, name=f"poll-{function.name}", daemon=True)
        self.lease_thread = threading.Thread(target=self._keep_leases, name=f"lease-{function.name}", daemon=True)

    def start(self) -> None:
        self.poll_thread.start()
        self.lease_thread.start()

    def stop(self) -> None:
        self.stop_polling.set()
        with self.changed:
            self.changed.notify_all()
        self.poll_thread.join()
        self.pool.shutdown(wait=True)  # in-flight invocations finish and settle their messages
        self.stop_leases.set()
        self.lease_thread.join()
        self.client.close()
        self.poison_client.close()

    # polling

    def _poll(self) -> None:
        interval = self.settings.min_polling_interval
        while not self.stop_polling.is_set():
            with self.changed:
                while self.in_flight > self.settings.new_batch_threshold and not self.stop_polling.is_set():
                    self.changed.wait(1.0)
            if self.stop_polling.is_set():
                return
            try:
                self._ensure_queue()
                count = min(self.settings.batch_size, self.max_in_flight - self.in_flight)
                messages = list(
                    self.client.receive_messages(
                        messages_per_page=count, max_messages=count, visibility_timeout=self.host.lease_seconds
                    )
                )
            except AzureError as exc:
                if isinstance(exc, ResourceNotFoundError):
                    self.queue_ready = False  # deleted under us: create it again on the next poll
                log.warning("queue %s: polling failed: %s", self.function.queue_name, exc)
                self.stop_polling.wait(self.settings.max_polling_interval)
                continue
            if messages:
                interval = self.settings.min_polling_interval
                for message in messages:
                    self._dispatch(message)
                continue
            self.stop_polling.wait(interval)
            interval = min(interval * 2, self.settings.max_polling_interval)

    def _ensure_queue(self) -> None:
        if not self.queue_ready:
            with contextlib.suppress(ResourceExistsError):
                self.client.create_queue()
            self.queue_ready = True

    def _dispatch(self, message: Any) -> None:
        lease = _Lease(message.id, message.pop_receipt, time.monotonic() + self.host.lease_seconds / 2)
        with self.changed:
            self.in_flight += 1
            self.leases[message.id] = lease
        self.pool.submit(self._run, message, lease)

    # invocation

    def _run(self, message: Any, lease: _Lease) -> None:
        fn = self.function
        invocation_id = str(uuid.uuid4())
        started = time.monotonic()
        try:
            error: BaseException | None = None
            try:
                body = self._decode(message.content)
                self._invoke(message, body, invocation_id)
            except Exception as exc:
                error = exc
            elapsed_ms = (time.monotonic() - started) * 1000
            with lease.lock:
                lease.done = True
            if error is None:
                log.log(
                    self.host.invocation_log_level,
                    "Executed '%s' (Succeeded, Id=%s, message %s, dequeue count %s, %.0f ms)",
                    fn.name,
                    invocation_id,
                    message.id,
                    message.dequeue_count,
                    elapsed_ms,
                )
                self.host._count(fn.name, "succeeded")
                self._delete(lease)
            else:
                log.error(
                    "Executed '%s' (Failed, Id=%s, message %s, dequeue count %s, %.0f ms): %s",
                    fn.name,
                    invocation_id,
                    message.id,
                    message.dequeue_count,
                    elapsed_ms,
                    error,
                    exc_info=error,
                )
                self.host._count(fn.name, "failed")
                self._settle_failure(message, lease)
        except Exception:
            log.exception("queue %s: settling message %s failed", fn.queue_name, message.id)
        finally:
            with self.changed:
                self.in_flight -= 1
                self.leases.pop(message.id, None)
                self.changed.notify_all()

    def _decode(self, content: Any) -> bytes:
        if content is None:
            return b""
        raw = content if isinstance(content, bytes) else str(content).encode("utf-8")
        if self.settings.message_encoding == "none":
            return raw
        try:
            return base64.b64decode(b"".join(raw.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                "the message is not valid base64 (host.json extensions.queues.messageEncoding is base64); "
                "send base64 content or set messageEncoding to none"
            ) from exc

    def _invoke(self, message: Any, body: bytes, invocation_id: str) -> None:
        fn = self.function
        value: Any
        if fn.body_type == "bytes":
            value = body
        elif fn.body_type == "str":
            value = body.decode("utf-8")
        else:
            value = QueueMessage(
                id=message.id,
                body=body,
                dequeue_count=message.dequeue_count,
                expiration_time=message.expires_on,
                insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on,
                pop_receipt=message.pop_receipt,
            )
        kwargs: dict[str, Any] = {fn.binding_name: value}
        if fn.wants_context:
            kwargs["context"] = _Context(invocation_id, fn.name, str(Path.cwd()))
        log.log(
            self.host.invocation_log_level,
            "Executing '%s' (Reason='New queue message detected on '%s'.', Id=%s)",
            fn.name,
            fn.queue_name,
            invocation_id,
        )
        _call(fn.user_function, kwargs)

    def _delete(self, lease: _Lease) -> None:
        try:
            self.client.delete_message(lease.message_id, pop_receipt=lease.pop_receipt)
        except ResourceNotFoundError:
            log.warning("queue %s: message %s was already gone", self.function.queue_name, lease.message_id)

    def _settle_failure(self, message: Any, lease: _Lease) -> None:
        fn = self.function
        dequeue_count = message.dequeue_count or 0
        if dequeue_count >= self.settings.max_dequeue_count:
            if not self.poison_ready:
                with contextlib.suppress(ResourceExistsError):
                    self.poison_client.create_queue()
                self.poison_ready = True
            self.poison_client.send_message(message.content)
            log.warning(
                "Message %s has reached MaxDequeueCount of %s: moving it to queue '%s'",
                message.id,
                self.settings.max_dequeue_count,
                fn.poison_queue_name,
            )
            self.host._count(fn.name, "poisoned")
            self._delete(lease)
            return
        visibility = math.ceil(self.settings.visibility_timeout)
        try:
            self.client.update_message(lease.message_id, pop_receipt=lease.pop_receipt, visibility_timeout=visibility)
        except ResourceNotFoundError:
            log.warning("queue %s: message %s was already gone", fn.queue_name, lease.message_id)
            return
        log.info("queue %s: message %s will be visible again in %s s", fn.queue_name, message.id, visibility)

    # leases

    def _keep_leases(self) -> None:
        tick = min(1.0, self.host.lease_seconds / 4)
        while not self.stop_leases.wait(tick):
            with self.changed:
                leases = list(self.leases.values())
            now = time.monotonic()
            for lease in leases:
                if lease.renew_at > now:
                    continue
                with lease.lock:
                    if lease.done:
                        continue
                    try:
                        updated = self.client.update_message(
                            lease.message_id, pop_receipt=lease.pop_receipt, visibility_timeout=self.host.lease_seconds
                        )
                    except AzureError as exc:
                        log.warning(
                            "queue %s: renewing lease of %s failed: %s", self.function.queue_name, lease.message_id, exc
                        )
                        lease.renew_at = now + tick
                        continue
                    lease.pop_receipt = updated.pop_receipt
                    lease.renew_at = now + self.host.lease_seconds / 2
                    log.debug("queue %s: renewed lease of %s", self.function.queue_name, lease.message_id)


def _connection_string(function: QueueFunction, environ: Mapping[str, str]) -> str:
    for name in (function.connection, f"AzureWebJobs{function.connection}"):
        value = environ.get(name)
        if value:
            return value
    raise ValueError(
        f"function {function.name}: app setting {function.connection!r} (the queue trigger's connection) is not set; "
        "put a storage connection string in it (local.settings.json Values or the environment)"
    )


# ------------------------------------------------------------------------------------------------------------- host


class LocalHost:
    """Runs a FunctionApp's HTTP and queue triggers locally. See the module docstring.

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
        http, queue, timers, skipped = _index(app_functions(app), self.settings, self.environ)
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
        self._server: _HttpServer | None = None
        self._server_thread: threading.Thread | None = None
        self._pollers: list[_QueuePoller] = []
        self._http_in_flight = 0
        self._http_changed = threading.Condition()
        self._state = "new"

    # lifecycle

    def start(self) -> LocalHost:
        if self._state != "new":
            raise RuntimeError(f"the host is {self._state}; start() works once")
        conns = {f.name: _connection_string(f, self.environ) for f in self.queue_functions}
        self._server = _HttpServer((self.bind, self.requested_port), _Handler)
        self._server.host = self
        self._server_thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._server_thread.start()
        self._state = "running"
        for function in self.queue_functions:
            poller = _QueuePoller(self, function, conns[function.name])
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
            kwargs["context"] = _Context(invocation_id, function.name, str(Path.cwd()))
        log.log(self.invocation_log_level, "Executing '%s' (Reason='Timer fired', Id=%s)", function.name, invocation_id)
        try:
            _call(function.user_function, kwargs)
        except Exception:
            log.exception("Executed '%s' (Failed, Id=%s)", function.name, invocation_id)
            self._count(function.name, "failed")
            return
        log.log(self.invocation_log_level, "Executed '%s' (Succeeded, Id=%s)", function.name, invocation_id)
        self._count(function.name, "succeeded")

    # HTTP dispatch

    def _dispatch_http(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        path = parts.path or "/"
        matches = [(f, p) for f in self.http_functions if (p := f.compiled.match(path)) is not None]
        if not matches:
            if path == "/" and method in ("GET", "HEAD"):
                return 200, {"Content-Type": "text/plain; charset=utf-8"}, b"Your local Functions host is running.\n"
            return 404, {}, b""
        allowed = [(f, p) for f, p in matches if f.allows(method)]
        if not allowed:
            methods = sorted({m for f, _ in matches for m in (f.methods or HTTP_METHODS)})
            return 405, {"Allow": ", ".join(methods)}, b""
        function, route_params = max(
            allowed, key=lambda fp: (fp[0].compiled.literal_length, -len(fp[0].compiled.groups))
        )
        params: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        host_header = next((v for k, v in headers.items() if k.lower() == "host"), f"{self.bind}:{self.port}")
        url = f"http://{host_header}{target if target.startswith('/') else path}"
        request = func.HttpRequest(
            method=method, url=url, headers=headers, params=params, route_params=route_params, body=body
        )
        invocation_id = str(uuid.uuid4())
        kwargs: dict[str, Any] = {function.binding_name: request}
        if function.wants_context:
            kwargs["context"] = _Context(invocation_id, function.name, str(Path.cwd()))
        with self._http_changed:
            self._http_in_flight += 1
        started = time.monotonic()
        log.log(
            self.invocation_log_level,
            "Executing '%s' (Reason='This function was programmatically called via the host APIs.', Id=%s)",
            function.name,
            invocation_id,
        )
        try:
            result = _call(function.user_function, kwargs)
            status, response_headers, payload = _response_parts(result)
        except Exception:
            log.exception("Executed '%s' (Failed, Id=%s)", function.name, invocation_id)
            self._count(function.name, "failed")
            return 500, {}, b""
        finally:
            with self._http_changed:
                self._http_in_flight -= 1
                self._http_changed.notify_all()
        elapsed_ms = (time.monotonic() - started) * 1000
        log.log(
            self.invocation_log_level,
            "Executed '%s' (Succeeded, Id=%s, %s %s -> %s, %.0f ms)",
            function.name,
            invocation_id,
            method,
            path,
            status,
            elapsed_ms,
        )
        self._count(function.name, "succeeded")
        return status, response_headers, payload


# -------------------------------------------------------------------------------------------------------------- CLI


def load_local_settings(path: str | os.PathLike[str], environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Put ``local.settings.json`` ``Values`` into ``environ`` (default ``os.environ``) without overriding what is
    already set, like ``func start``. Returns the names it set. A missing file sets nothing."""
    target = os.environ if environ is None else environ
    file = Path(path)
    if not file.exists():
        return []
    doc = json.loads(file.read_text(encoding="utf-8-sig"))
    values = doc.get("Values") or {}
    loaded = []
    for name, value in values.items():
        if name in target:
            continue
        target[name] = "" if value is None else str(value)
        loaded.append(name)
    return loaded


def load_app(spec: str) -> func.FunctionApp:
    """``module:attribute`` (``function_app:app``); with no attribute, the module's only FunctionApp."""
    module_name, _, attribute = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if attribute:
        app = getattr(module, attribute)
    else:
        apps = [v for v in vars(module).values() if isinstance(v, func.FunctionApp)]
        if len(apps) != 1:
            raise ValueError(f"{module_name} has {len(apps)} FunctionApp objects: say which one, {module_name}:<name>")
        app = apps[0]
    if not isinstance(app, func.FunctionApp):
        raise TypeError(f"{spec} is a {type(app).__name__}, not a func.FunctionApp")
    return app


def configure_telemetry(environ: MutableMapping[str, str]) -> bool:
    """Export the app's OpenTelemetry as the Azure Functions Python worker does: through azure-monitor-opentelemetry
    when ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`` is true and ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is
    set (in a test, pointing at `sandbox.ingestion.IngestionSink`). Live metrics, the exporter's own usage statistics,
    its remote configuration and its offline storage stay off: they would reach Microsoft endpoints or write to disk.
    Returns whether it did."""
    enabled = environ.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "").strip().lower() == "true"
    connection_string = environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
    if not (enabled and connection_string):
        return False
    for switch in (
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED",
        "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED",
    ):
        environ.setdefault(switch, "true")
    from azure.monitor.opentelemetry import configure_azure_monitor  # heavy: only when asked for

    configure_azure_monitor(
        connection_string=connection_string, enable_live_metrics=False, disable_offline_storage=True
    )
    return True


def describe(host: LocalHost) -> str:
    lines = ["Functions:"]
    for f in host.http_functions:
        methods = ",".join(f.methods) if f.methods else "ALL"
        note = "" if f.auth_level == "anonymous" else f" (auth level {f.auth_level}: keys not enforced locally)"
        lines.append(f"  {f.name}: [{methods}] {host.url}{f.path}{note}")
    for q in host.queue_functions:
        lines.append(
            f"  {q.name}: queueTrigger on '{q.queue_name}' (connection {q.connection}, poison '{q.poison_queue_name}')"
        )
    for name in host.skipped:
        lines.append(f"  {name}: skipped (trigger type not supported by the local host)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.host", description="Run a Functions app locally.")
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the FunctionApp")
    parser.add_argument("--host-json", default="host.json", help="host.json (defaults apply when missing)")
    parser.add_argument("--settings", default="local.settings.json", help="local.settings.json (Values → env)")
    parser.add_argument("--port", type=int, default=7071, help="HTTP port (0: a free one)")
    parser.add_argument("--bind", default="127.0.0.1", help="HTTP address")
    parser.add_argument("--lease-seconds", type=int, default=30, help="queue message lease while a function runs")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loaded = load_local_settings(args.settings)
    if Path(args.settings).exists():
        log.info("Loaded %d setting(s) from %s", len(loaded), args.settings)
    else:
        log.warning("%s not found: using the environment only", args.settings)
    if configure_telemetry(os.environ):
        log.info("Exporting OpenTelemetry to Application Insights (APPLICATIONINSIGHTS_CONNECTION_STRING)")
    host_json: str | None = args.host_json
    if not Path(args.host_json).exists():
        log.warning("%s not found: using host.json defaults", args.host_json)
        host_json = None

    try:
        app = load_app(args.app)
        host = LocalHost(app, host_json, port=args.port, lease_seconds=args.lease_seconds, bind=args.bind)
    except (ImportError, ValueError, TypeError, AttributeError) as exc:
        log.error("cannot load %s: %s", args.app, exc)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        host.start()
    except (OSError, ValueError) as exc:
        log.error("cannot start the host: %s", exc)
        return 2
    print(describe(host), flush=True)
    print(f"Host running on {host.url}; Ctrl+C stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

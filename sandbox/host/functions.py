"""The app model: the functions a ``func.FunctionApp`` declares, indexed once into the HTTP, queue and timer
functions the local host runs (:func:`index`)."""

from __future__ import annotations

import inspect
import json
import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from azure.functions.decorators.utils import StringifyEnumJsonEncoder

from sandbox.host.routes import CompiledRoute, compile_route
from sandbox.host.settings import HostSettings
from sandbox.timers import Schedule

log = logging.getLogger("sandbox.host")  # one logger for the whole local host

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


@dataclass(frozen=True)
class HttpFunction:
    """An HTTP-triggered function, its route compiled."""

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
    """A queue-triggered function and the queue it polls."""

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
    """A timer-triggered function and its schedule."""

    name: str
    schedule: Schedule
    run_on_startup: bool
    binding_name: str
    user_function: Callable[..., Any] = field(repr=False)
    wants_context: bool = False


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


def index(
    functions: Iterable[func.Function], settings: HostSettings, environ: Mapping[str, str]
) -> tuple[list[HttpFunction], list[QueueFunction], list[TimerFunction], list[str]]:
    """The app's HTTP, queue and timer functions, and the names of those skipped (other triggers); raises
    ValueError for bindings or parameters the local host cannot serve."""
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

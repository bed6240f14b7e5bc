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

Where each part lives, by module: ``settings`` (host.json, local.settings.json), ``functions`` (the app's functions,
indexed), ``routes`` (route templates), ``http_server`` (HTTP triggers), ``queues`` (queue triggers), ``invocation``
(the ``context`` argument, calling a function), ``local_host`` (:class:`LocalHost`: start, stop, counts, timers),
``telemetry`` (OpenTelemetry export) and ``cli`` (``python -m sandbox.host``); schedules in ``sandbox.timers``.
"""

from sandbox.host.cli import load_app, main
from sandbox.host.functions import HttpFunction, QueueFunction, app_functions
from sandbox.host.local_host import LocalHost
from sandbox.host.routes import compile_route
from sandbox.host.settings import HostSettings, load_host_settings, load_local_settings, parse_timespan
from sandbox.host.telemetry import configure_telemetry

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

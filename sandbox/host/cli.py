"""``python -m sandbox.host``: load ``local.settings.json`` and the app, start a :class:`LocalHost`, run until
SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import azure.functions as func

from sandbox.host.local_host import LocalHost
from sandbox.host.settings import load_local_settings
from sandbox.host.telemetry import configure_telemetry

log = logging.getLogger("sandbox.host")  # one logger for the whole local host


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


def describe(host: LocalHost) -> str:
    """The functions a started host runs, one line each, as ``func start`` lists them."""
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
    """``python -m sandbox.host``: returns 0 after SIGINT/SIGTERM, 2 when the app cannot be loaded or started."""
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

"""`make dev`: the whole app on one machine with no Azure account.

Starts Azurite (queues), the iTwin Platform simulator and the functions (the local host in `sandbox.host`, or
`func start` when Azure Functions Core Tools are on the PATH), and logs each command's outcome as it happens.
With the simulator it then shows the whole loop: `python -m ops webhook create --activate` registers the webhook
against the local host, the demo iModel is deleted in the simulator, the simulator delivers the signed event, and
the iModel's connections are deleted. The settings the sandbox runs with are written to
`.sandbox/local.settings.json`, for `python -m ops --settings .sandbox/local.settings.json ...` in another
terminal; changes to its webhook secrets are reloaded (as a restart would), so `webhook rotate-secret` works live.
Settings come from `local.settings.json` when it exists (the environment wins). With real `ITWIN_*` values there,
the same command talks to the real iTwin Platform and no simulator is started. Azurite listens on its default ports
(blob 10000, queue 10001, table 10002: what `UseDevelopmentStorage=true` and Azure Storage Explorer's local emulator
connection expect), each taken one replaced by a free port with a message; `--persist` keeps its data in
`.sandbox/azurite` across runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path

from ops.cli import main as ops_main
from ops.local_settings import LocalSettingsFile
from sandbox.azurite import DEFAULT_PORTS, Azurite, app_queues
from sandbox.host import LocalHost, load_local_settings
from sandbox.itwin_platform import RecordedRequest, Simulator
from sandbox.settings_reload import SettingsReloader
from shared.settings import STORAGE_CONNECTION
from shared.signature import PREVIOUS_SECRET_SETTING, SECRET_SETTING

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".sandbox"
SANDBOX_SETTINGS = WORK / "local.settings.json"
AZURITE_DATA = WORK / "azurite"
DEMO_IMODEL = "5db42812-ebb8-4c58-98a4-2eaa99e0d8b6"
log = logging.getLogger("sandbox.dev")


def _unset(name: str) -> bool:
    value = os.environ.get(name, "").strip()
    return not value or value.startswith("<")


def _log_api_call(request: RecordedRequest) -> None:
    if request.is_api_call:
        log.info("simulator: %s %s -> %s", request.method, request.path, request.status or "dropped")


def _start_simulator(stack: ExitStack, port: int) -> Simulator:
    simulator = stack.enter_context(Simulator(port=port, on_answer=_log_api_call))
    os.environ.update(
        ITWIN_CLIENT_ID=simulator.client_id,
        ITWIN_CLIENT_SECRET=simulator.client_secret,
        ITWIN_AUTHORITY=simulator.url,
        ITWIN_API_URL=simulator.url,
        REQUESTS_CA_BUNDLE=simulator.ca_path,
    )
    for name in ("nightly", "weekly"):
        simulator.add_connection(DEMO_IMODEL, name)
    return simulator


def _start_azurite(stack: ExitStack, ports: Mapping[str, int], persist: bool) -> Azurite:
    location = AZURITE_DATA if persist else None
    if location:
        location.mkdir(parents=True, exist_ok=True)
    azurite = Azurite(port=ports["queue"], table_port=ports["table"], blob_port=ports["blob"], location=location)
    stack.enter_context(azurite)
    os.environ[STORAGE_CONNECTION] = azurite.connection_string
    app_queues(azurite.connection_string, clear=not persist)
    return azurite


def azurite_ports(
    wanted: Mapping[str, int], is_taken: Callable[[int], bool] | None = None
) -> tuple[dict[str, int], list[str]]:
    """The port for each of Azurite's services ("blob", "queue", "table"): the wanted one when it is free, else 0 (a
    free one, which Azurite picks). Returns the ports and, for each taken port, what to say about it."""
    is_taken = is_taken or taken
    ports: dict[str, int] = {}
    notes: list[str] = []
    for service, port in wanted.items():
        if port and is_taken(port):
            ports[service] = 0
            notes.append(
                f"port {port} (Azurite's {service} service) is taken on 127.0.0.1: another Azurite, perhaps; "
                f"using a free port instead, so Azure Storage Explorer's local emulator connection will not find "
                f"it: connect it with the connection string printed below"
            )
        else:
            ports[service] = port
    return ports, notes


def _describe_azurite(azurite: Azurite, persist: bool, fell_back: bool) -> str:
    where = f"kept in {AZURITE_DATA.relative_to(ROOT)}" if persist else "in memory; make dev PERSIST=1 keeps it"
    text = f"Azurite: blob {azurite.blob_port}, queue {azurite.port}, table {azurite.table_port} ({where})"
    if fell_back:
        return f"{text}\n  Storage Explorer: connect with {azurite.connection_string}"
    return f"{text}\n  Storage Explorer: its local storage emulator connection (default ports)"


def _write_sandbox_settings(base: str) -> Path:
    """The settings the sandbox runs with, for `python -m ops --settings .sandbox/local.settings.json`."""
    names = ("ITWIN_CLIENT_ID", "ITWIN_CLIENT_SECRET", "ITWIN_AUTHORITY", "ITWIN_API_URL", "REQUESTS_CA_BUNDLE")
    values = {name: os.environ[name] for name in (*names, STORAGE_CONNECTION, SECRET_SETTING)}
    values["ITWIN_WEBHOOK_URL"] = f"{base}/api/webhooks/itwin"
    if os.environ.get(PREVIOUS_SECRET_SETTING):
        values[PREVIOUS_SECRET_SETTING] = os.environ[PREVIOUS_SECRET_SETTING]
    SANDBOX_SETTINGS.unlink(missing_ok=True)
    LocalSettingsFile(SANDBOX_SETTINGS).update(values)
    return SANDBOX_SETTINGS


def _demo(simulator: Simulator, imodel_id: str, connections: int) -> None:
    """Delete an iModel in the simulator: it delivers iModels.iModelDeleted.v1 to the webhook."""
    print(
        f"\nDeleting iModel {imodel_id} (with {connections} Export connections) in the simulator; "
        "press Enter to delete another.",
        flush=True,
    )
    simulator.delete_imodel(imodel_id)


def _demo_on_enter(simulator: Simulator) -> None:
    """At a terminal, each Enter deletes a new demo iModel with two connections."""
    for _ in sys.stdin:
        imodel_id = str(uuid.uuid4())
        for name in ("nightly", "weekly"):
            simulator.add_connection(imodel_id, name)
        _demo(simulator, imodel_id, 2)


def taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on ``host:port`` (or it cannot be bound for another reason)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def port_problems(wanted: list[tuple[str, str, str, int]]) -> list[str]:
    """What to say for each (what, make variable, option, port) whose port is taken: which, and how to choose."""
    return [
        f"port {port} ({what}) is taken on 127.0.0.1: another `make dev` or `func start`, perhaps. Stop it, or "
        f"choose another port: make dev {variable}={port + 1} (python -m sandbox.dev {option} {port + 1})"
        for what, variable, option, port in wanted
        if port and taken(port)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.dev", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=str(ROOT / "local.settings.json"))
    parser.add_argument("--port", type=int, default=7071, help="functions HTTP port (default 7071)")
    parser.add_argument("--simulator-port", type=int, default=5443, help="the simulator's HTTPS port (default 5443)")
    azurite_help = "Azurite's {} port (default {}; when taken, a free one)"
    parser.add_argument(
        "--azurite-blob-port",
        type=int,
        default=DEFAULT_PORTS["blob"],
        help=azurite_help.format("blob", DEFAULT_PORTS["blob"]),
    )
    parser.add_argument(
        "--azurite-port",
        dest="azurite_queue_port",
        type=int,
        default=DEFAULT_PORTS["queue"],
        help=azurite_help.format("queue", DEFAULT_PORTS["queue"]),
    )
    parser.add_argument(
        "--azurite-table-port",
        type=int,
        default=DEFAULT_PORTS["table"],
        help=azurite_help.format("table", DEFAULT_PORTS["table"]),
    )
    parser.add_argument("--persist", action="store_true", help="keep Azurite's data in .sandbox/azurite across runs")
    parser.add_argument("--verbose", action="store_true", help="log each invocation's Executing/Executed lines too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    # The Storage SDK logs every request and response at INFO; the outcomes are what matters here.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    load_local_settings(args.settings, os.environ)
    storage = os.environ.get(STORAGE_CONNECTION, "")
    needs_azurite = not storage or storage == "UseDevelopmentStorage=true"
    wanted = [("the functions", "PORT", "--port", args.port)]
    if _unset("ITWIN_CLIENT_ID"):
        wanted.append(("the iTwin Platform simulator", "SIMULATOR_PORT", "--simulator-port", args.simulator_port))
    if problems := port_problems(wanted):
        for problem in problems:
            print(f"make dev: {problem}", file=sys.stderr)
        return 1
    wanted_azurite = {
        "blob": args.azurite_blob_port,
        "queue": args.azurite_queue_port,
        "table": args.azurite_table_port,
    }
    ports, notes = azurite_ports(wanted_azurite) if needs_azurite else ({}, [])
    for note in notes:
        print(f"make dev: {note}", file=sys.stderr)

    stopping = threading.Event()
    # Handlers of our own for both: a process started in the background by a shell without job control inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with ExitStack() as stack:
        simulator = _start_simulator(stack, args.simulator_port) if _unset("ITWIN_CLIENT_ID") else None
        if needs_azurite:
            azurite = _start_azurite(stack, ports, args.persist)
            print(_describe_azurite(azurite, args.persist, bool(notes)))
        if _unset("ITWIN_WEBHOOK_SECRET"):
            os.environ["ITWIN_WEBHOOK_SECRET"] = secrets.token_urlsafe(32)
            print("ITWIN_WEBHOOK_SECRET was not set: using a random one for this run.")
        base = f"http://127.0.0.1:{args.port}"
        if shutil.which("func"):
            func = subprocess.Popen(["func", "start", "--port", str(args.port)], cwd=ROOT)  # noqa: S603, S607
            stack.callback(func.terminate)
        else:
            level = logging.INFO if args.verbose else logging.DEBUG
            stack.enter_context(LocalHost(_load_app(), ROOT / "host.json", port=args.port, invocation_log_level=level))
        target = f"the simulator at {simulator.url}" if simulator else os.environ.get("ITWIN_API_URL", "")
        print(f"\nFunctions on {base}/api  (iTwin Platform: {target})")
        print(f"  POST {base}/api/commands         GET {base}/api/commands/{{id}}")
        print(f"  POST {base}/api/webhooks/itwin   GET {base}/api/health")
        if simulator:
            settings = _write_sandbox_settings(base)
            stack.enter_context(SettingsReloader(settings, (SECRET_SETTING, PREVIOUS_SECRET_SETTING)))
            tool = f"python -m ops --settings {settings.relative_to(ROOT)}"
            print(f"\nRegistering the webhook: {tool} webhook create --activate", flush=True)
            if ops_main(["--settings", str(settings), "webhook", "create", "--activate"], environ=dict(os.environ)):
                print("The webhook could not be registered (see above).", flush=True)
            print(
                "\nIn another terminal: .venv/bin/python -m ops commands list | poison list | webhook list"
                "\n                     .venv/bin/python -m sandbox.send_event iModels.iModelDeleted.v1 --imodel ID"
            )
        print("Outcomes are logged below as they happen. Ctrl-C stops everything.", flush=True)
        if simulator:
            _demo(simulator, DEMO_IMODEL, 2)
            if sys.stdin.isatty():
                threading.Thread(target=_demo_on_enter, args=(simulator,), daemon=True).start()
        stopping.wait()
        print("stopping...")
    return 0


def _load_app():
    sys.path.insert(0, str(ROOT))
    from function_app import app

    return app


if __name__ == "__main__":
    sys.exit(main())

"""`make dev`: the whole app on one machine with no Azure account.

Starts Azurite (queues), the iTwin Platform simulator and the functions (the local host in `sandbox.host`, or
`func start` when Azure Functions Core Tools are on the PATH), prints the URLs and a `curl` that sends a signed
webhook, and logs each command's outcome as it happens. Settings come from `local.settings.json` when it exists
(the environment wins). With real `ITWIN_*` values there, the same command talks to the real iTwin Platform and
no simulator is started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from pathlib import Path

from sandbox.azurite import Azurite, app_queues
from sandbox.host import LocalHost, load_local_settings
from sandbox.itwin_platform import RecordedRequest, Simulator
from shared.rules import format_enqueued
from shared.settings import STORAGE_CONNECTION
from shared.signature import sign

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".sandbox"
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


def _start_azurite(stack: ExitStack, port: int) -> Azurite:
    azurite = stack.enter_context(Azurite(port=port))
    os.environ[STORAGE_CONNECTION] = azurite.connection_string
    app_queues(azurite.connection_string)
    return azurite


def _demo_curl(base: str) -> str:
    WORK.mkdir(exist_ok=True)
    event = {
        "content": {"imodelId": DEMO_IMODEL, "userId": "dev"},
        "eventType": "iModels.iModelDeleted.v1",
        "enqueuedDateTime": format_enqueued(datetime.now(UTC)),
        "iTwinId": "4tb42812-ebb8-4c58-98a4-2eaa99e0d8b6",
        "messageId": "dev-1",
        "webhookId": "dev-webhook",
    }
    body = json.dumps(event).encode()
    (WORK / "event.json").write_bytes(body)
    signature = sign(body, os.environ["ITWIN_WEBHOOK_SECRET"])
    return (
        f"curl -i -X POST {base}/api/webhooks/itwin -H 'Signature: {signature}' "
        f"--data-binary @{(WORK / 'event.json').relative_to(ROOT)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.dev", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=str(ROOT / "local.settings.json"))
    parser.add_argument("--port", type=int, default=7071, help="functions HTTP port (default 7071)")
    parser.add_argument("--simulator-port", type=int, default=5443)
    parser.add_argument("--azurite-port", type=int, default=10001)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    load_local_settings(args.settings, os.environ)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with ExitStack() as stack:
        simulator = _start_simulator(stack, args.simulator_port) if _unset("ITWIN_CLIENT_ID") else None
        storage = os.environ.get(STORAGE_CONNECTION, "")
        if not storage or storage == "UseDevelopmentStorage=true":
            _start_azurite(stack, args.azurite_port)
        if _unset("ITWIN_WEBHOOK_SECRET"):
            os.environ["ITWIN_WEBHOOK_SECRET"] = secrets.token_urlsafe(32)
            print("ITWIN_WEBHOOK_SECRET was not set: using a random one for this run.")
        base = f"http://127.0.0.1:{args.port}"
        if shutil.which("func"):
            func = subprocess.Popen(["func", "start", "--port", str(args.port)], cwd=ROOT)  # noqa: S603, S607
            stack.callback(func.terminate)
        else:
            stack.enter_context(LocalHost(_load_app(), ROOT / "host.json", port=args.port))
        target = f"the simulator at {simulator.url}" if simulator else os.environ.get("ITWIN_API_URL", "")
        print(f"\nFunctions on {base}/api  (iTwin Platform: {target})")
        print(f"  POST {base}/api/commands      GET {base}/api/health      POST {base}/api/webhooks/itwin")
        if simulator:
            print(f"\nThe simulator holds 2 Export connections of iModel {DEMO_IMODEL}.")
            print("Delete them with a signed iModels.iModelDeleted.v1 delivery:")
        print(f"  {_demo_curl(base)}")
        print("Outcomes are logged below as they happen. Ctrl-C stops everything.\n", flush=True)
        with suppress(KeyboardInterrupt):
            stopping.wait()
        print("stopping...")
    return 0


def _load_app():
    sys.path.insert(0, str(ROOT))
    from function_app import app

    return app


if __name__ == "__main__":
    sys.exit(main())

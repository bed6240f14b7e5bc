"""local.settings.example.json, copied to local.settings.json, serves `func start` and the local host (make dev)."""

import json
from pathlib import Path

from sandbox.azurite import DEFAULT_PORTS
from sandbox.host import load_local_settings
from shared.ledger import Ledger
from shared.queues import queue_service

EXAMPLE = Path(__file__).resolve().parents[2] / "local.settings.example.json"


def test_the_example_has_what_func_start_requires():
    document = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert document["IsEncrypted"] is False
    assert document["Values"]["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert document["Values"]["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"


def test_every_value_is_a_string_as_func_start_reads_them():
    values = json.loads(EXAMPLE.read_text(encoding="utf-8"))["Values"]
    assert all(isinstance(value, str) for value in values.values())


def test_its_storage_takes_the_app_to_azurite_on_the_default_ports_make_dev_uses():
    environ: dict[str, str] = {}
    load_local_settings(EXAMPLE, environ)
    queues = queue_service(environ)
    ledger = Ledger.from_environment(environ)
    assert queues.url.startswith(f"http://127.0.0.1:{DEFAULT_PORTS['queue']}/devstoreaccount1")
    assert ledger.table.url.startswith(f"http://127.0.0.1:{DEFAULT_PORTS['table']}/devstoreaccount1")

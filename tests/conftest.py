"""Shared fixtures: the iTwin Platform simulator (`sandbox.itwin_platform`), fresh for every test; and the order in
which `make test`'s two workers take the modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from app_settings import settings_for
from azure.storage.queue import QueueClient
from otel_capture import Captured

from sandbox.azurite import Azurite, app_queues
from sandbox.itwin_platform import Simulator
from shared.ledger import Ledger

# The modules that take longest (a minute or two each, mostly waiting), started first: `make test` runs the suite
# on two workers (pytest-xdist, one module per worker at a time, in this order), and the short modules then fill in
# around them instead of leaving one worker on a long module at the end.
LONGEST_FIRST = (
    "test_reliability_operations.py",
    "test_reliability_restart.py",
    "test_create_interleavings.py",
    "test_reliability_faults.py",
    "test_reliability_instances.py",
    "test_bench_smoke.py",
    "test_ops_poison.py",
    "test_worker_indexing.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the `LONGEST_FIRST` modules to the front, in that order; the rest keep theirs."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture
def make_simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Simulator]]:
    """A factory of started simulators (keyword arguments as for `Simulator`), all stopped after the test.

    It points REQUESTS_CA_BUNDLE at the simulators' CA: on these machines that variable is set globally and
    overrides `requests.Session.verify`.
    """
    started: list[Simulator] = []

    def make(**options: Any) -> Simulator:
        simulator = Simulator(**options).start()
        started.append(simulator)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", simulator.ca_path)
        return simulator

    yield make
    for simulator in started:
        simulator.stop()


@pytest.fixture
def simulator(make_simulator: Callable[..., Simulator]) -> Simulator:
    """A started simulator with default options and empty state."""
    return make_simulator()


@pytest.fixture
def simulator_env(simulator: Simulator) -> dict[str, str]:
    """The ITWIN_* settings (client id and secret, authority, API URL) pointing at `simulator`."""
    return settings_for(simulator)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's queue service on a free port, in memory, for the whole session."""
    with Azurite() as running:
        yield running


@pytest.fixture
def queues(azurite: Azurite) -> Iterator[dict[str, QueueClient]]:
    """The app's command and poison queues on the session's Azurite (their names are fixed), empty for this test."""
    clients = app_queues(azurite.connection_string)
    yield clients
    for client in clients.values():
        client.clear_messages()


@pytest.fixture
def ledger(azurite: Azurite, queues: dict[str, QueueClient]) -> Iterator[Ledger]:
    """The command ledger on the session's Azurite (its table name is fixed), emptied after this test."""
    ledger = Ledger.from_environment({"AzureWebJobsStorage": azurite.connection_string})
    yield ledger
    for entity in list(ledger.table.list_entities(select=["PartitionKey", "RowKey"])):
        ledger.table.delete_entity(entity["PartitionKey"], entity["RowKey"])


@pytest.fixture
def captured() -> Captured:
    """A `Telemetry` with in-memory metric and span readers."""
    return Captured()

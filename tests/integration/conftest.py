"""Fixtures for the integration tests: one Azurite queue service for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueServiceClient

from sandbox.azurite import Azurite
from shared.settings import COMMAND_QUEUE, POISON_QUEUE


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's queue service on a free port, in memory. Tests stay independent by using their own queue names."""
    with Azurite() as running:
        yield running


@pytest.fixture
def queues(azurite: Azurite) -> dict[str, QueueClient]:
    """The app's command and poison queues on the session's Azurite, created or emptied for this test."""
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    clients = {}
    for name in (COMMAND_QUEUE, POISON_QUEUE):
        client = service.get_queue_client(name)
        try:
            client.create_queue()
        except ResourceExistsError:
            client.clear_messages()
        clients[name] = client
    return clients

"""What the ledger's integration tests share: the app's queues on Azurite, and a run create on the simulator."""

from __future__ import annotations

from samples import IMODEL

from shared.queues import CommandQueue
from shared.settings import COMMAND_QUEUE, POISON_QUEUE

TEST_ID = "clash-test-1"
VERSION = "version-7"


def queue_of(queues) -> CommandQueue:
    return CommandQueue(queues[COMMAND_QUEUE], queues[POISON_QUEUE])


def run_command(simulator, project=True) -> dict:
    """A run create of `TEST_ID` on `IMODEL` (known to the simulator, in its iTwin), with or without projectId."""
    simulator.add_imodel(IMODEL, simulator.itwin_id)
    command = {
        "action": "create",
        "resource": "run",
        "body": {"testId": TEST_ID, "iModelId": IMODEL, "namedVersionId": VERSION},
    }
    return {**command, "projectId": simulator.itwin_id} if project else command

"""POST /api/commands is all or none on a real queue (Azurite), even when storage fails part-way."""

from __future__ import annotations

import json

import pytest

from shared.http_api import accept_commands
from shared.queues import CommandQueue
from shared.settings import COMMAND_QUEUE, POISON_QUEUE

pytestmark = pytest.mark.integration

BATCH = json.dumps([{"action": "delete", "resource": "run", "id": f"r{i}"} for i in range(4)]).encode()


class Failing:
    """The real Azurite queue client, failing its ``fail_on``-th send (and every delete when asked)."""

    def __init__(self, client, fail_on: int = 0, deletes_fail: bool = False):
        self.client, self.fail_on, self.deletes_fail = client, fail_on, deletes_fail
        self.sends = 0

    def send_message(self, content, **kwargs):
        self.sends += 1
        if self.sends == self.fail_on:
            raise ConnectionError("storage went away")
        return self.client.send_message(content, **kwargs)

    def delete_message(self, message, pop_receipt):
        if self.deletes_fail:
            raise ConnectionError("still away")
        return self.client.delete_message(message, pop_receipt)

    def update_message(self, message, pop_receipt, **kwargs):
        return self.client.update_message(message, pop_receipt, **kwargs)


def on_queue(client) -> int:
    """Messages on the queue, hidden ones included."""
    return client.get_queue_properties().approximate_message_count


def visible(client) -> list[dict]:
    return [json.loads(m.content) for m in client.receive_messages(messages_per_page=32, visibility_timeout=1)]


def test_a_batch_is_visible_whole_once_accepted(queues):
    reply = accept_commands(BATCH, None, lambda: CommandQueue(queues[COMMAND_QUEUE], queues[POISON_QUEUE]))
    assert reply.status == 202
    assert sorted(m["id"] for m in visible(queues[COMMAND_QUEUE])) == ["r0", "r1", "r2", "r3"]


def test_a_storage_failure_part_way_leaves_nothing_on_the_queue(queues):
    sender = Failing(queues[COMMAND_QUEUE], fail_on=3)
    reply = accept_commands(BATCH, None, lambda: CommandQueue(sender, queues[POISON_QUEUE]))
    assert (reply.status, reply.body["error"]["code"]) == (503, "EnqueueFailed")
    assert [(d["code"], d["target"]) for d in reply.body["error"]["details"]] == [("MaybeEnqueued", "[2]")]
    assert on_queue(queues[COMMAND_QUEUE]) == 0


def test_when_taking_back_fails_too_the_answer_names_each_command_left_on_the_queue(queues):
    sender = Failing(queues[COMMAND_QUEUE], fail_on=3, deletes_fail=True)
    reply = accept_commands(BATCH, None, lambda: CommandQueue(sender, queues[POISON_QUEUE]))
    assert reply.status == 503
    assert [(d["code"], d["target"]) for d in reply.body["error"]["details"]] == [
        ("Enqueued", "[0]"),
        ("Enqueued", "[1]"),
        ("MaybeEnqueued", "[2]"),
    ]
    assert "2 of 4 command(s) were enqueued" in reply.body["error"]["message"]
    assert on_queue(queues[COMMAND_QUEUE]) == 2
    assert visible(queues[COMMAND_QUEUE]) == []  # hidden: they show when BATCH_HIDDEN_SECONDS run out

"""Taking commands in: each gets its id, its ledger row and its queue message, all of them or none.

Ids: a command with an ``idempotencyKey`` gets the id the ledger's key index binds that key to, so the same key finds
the same command on any instance, on any day of the retention period; the commands of a webhook delivery get ids
derived from its ``messageId`` (`shared.ledger.delivery_ids`); any other command a new id. A command whose id the
ledger already holds is a repeat: it keeps the earlier id and is not enqueued again, unless it is a different command
under the same key (`IdempotencyKeyReused`), or its row is still unsent (an earlier request failed between recording
and enqueueing it): then it is enqueued now.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from shared.commands import Command
from shared.ledger import Ledger, Record, day_of, idempotency_row_key, new_id
from shared.queues import CommandQueue, EnqueueFailed

log = logging.getLogger(__name__)

# What the worker adds or changes on the way: not part of what a caller asked for.
_BOOKKEEPING = frozenset(
    {"commandId", "firstEnqueued", "traceparent", "attempt", "waits", "lookUp", "leaseSeen", "leaseWaited", "slot"}
)


class IdempotencyKeyReused(Exception):
    """The command at ``index`` reuses the idempotency key of a different command, ``existing``."""

    def __init__(self, index: int, existing: str) -> None:
        super().__init__(f"command {index} reuses the idempotency key of command {existing}, a different command")
        self.index = index
        self.existing = existing


@dataclass(frozen=True)
class Accepted:
    """Per command: its id, and whether this request enqueued it (False: the ledger held it already)."""

    ids: list[str]
    enqueued: list[bool]


def same_command(stored: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when two command messages ask for the same thing (bookkeeping fields aside)."""

    def asked(message: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if k not in _BOOKKEEPING}

    return asked(stored) == asked(new)


def accept(
    commands: Sequence[Command],
    queue: CommandQueue,
    ledger: Ledger | None,
    now: datetime,
    *,
    ids: Sequence[str] | None = None,
    retention_days: int = 7,
) -> Accepted:
    """Record and enqueue ``commands`` (stamped with ``now`` and their ids), or raise and leave no trace.

    Raises `IdempotencyKeyReused`, `EnqueueFailed` (indexes into ``commands``), and storage errors.
    """
    ids = list(ids) if ids is not None else [_id_for(c, now) for c in commands]
    held: dict[int, Record] = {}
    if ledger is not None and any(c.idempotency_key for c in commands):
        oldest = day_of(now - timedelta(days=retention_days))
        for index, command in enumerate(commands):
            if command.idempotency_key and ids[index].startswith(day_of(now)):
                ids[index] = ledger.key_owner(idempotency_row_key(command.idempotency_key), ids[index], oldest)
    messages = [replace(c, command_id=i).enqueued(now).to_message() for c, i in zip(commands, ids, strict=True)]
    if ledger is not None:
        there = ledger.insert_absent(zip(ids, messages, strict=True), now)
        held = {index: there[i] for index, i in enumerate(ids) if i in there}
        fresh_ids = [i for i in ids if i not in there]
        for index, record in held.items():
            if not same_command(record.command, messages[index]):
                ledger.forget(fresh_ids)
                raise IdempotencyKeyReused(index, record.id)
    unsent = [index for index, record in held.items() if not record.sent and not record.final]
    fresh = [index for index in range(len(commands)) if index not in held]
    sending = fresh + unsent
    try:
        queue.send_all([messages[index] for index in sending])
    except EnqueueFailed as failure:
        stayed = {sending[i] for i in failure.enqueued} | {sending[failure.failed]}
        if ledger is not None:
            ledger.forget(ids[index] for index in fresh if index not in stayed)
        raise EnqueueFailed(failure, sending[failure.failed], sorted(stayed - {sending[failure.failed]})) from failure
    if ledger is not None and sending:
        _mark_sent(ledger, [ids[index] for index in sending])
    return Accepted(ids, [index in sending for index in range(len(commands))])


def _mark_sent(ledger: Ledger, command_ids: list[str]) -> None:
    """Mark rows sent; on failure they stay unsent, and a repeat of the command sends it once more (harmless)."""
    try:
        ledger.mark_sent(command_ids)
    except Exception as error:
        if not type(error).__module__.startswith("azure."):
            raise
        log.warning("%d command(s) are on the queue but still marked unsent: %s", len(command_ids), error)


def _id_for(command: Command, now: datetime) -> str:
    if command.idempotency_key:
        return f"{day_of(now)}-{idempotency_row_key(command.idempotency_key)}"
    return new_id(now)

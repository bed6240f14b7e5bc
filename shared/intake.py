"""Taking commands in: each gets its id, its ledger row and its queue message, all of them or none.

Ids: a command with an ``idempotencyKey`` gets the id that key maps to, so the same key finds the same command on any
instance; the commands of a webhook delivery get ids derived from its ``messageId`` (`shared.ledger.delivery_ids`);
any other command a new id. A command whose id the ledger already holds is a repeat: it keeps the earlier id and is
not enqueued again, unless it is a different command under the same key (`IdempotencyKeyReused`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from shared.commands import Command
from shared.ledger import Ledger, LedgerConflict, Record, day_of, idempotency_row_key, new_id
from shared.queues import CommandQueue, EnqueueFailed

# What the worker adds or changes on the way: not part of what a caller asked for.
_BOOKKEEPING = frozenset({"commandId", "firstEnqueued", "traceparent", "attempt", "waits"})


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
    messages = [replace(c, command_id=i).enqueued(now).to_message() for c, i in zip(commands, ids, strict=True)]
    held: dict[int, Record] = {}
    if ledger is not None:
        oldest = day_of(now - timedelta(days=retention_days))
        for index, command in enumerate(commands):
            if command.idempotency_key and ids[index].startswith(day_of(now)):
                found = ledger.find_key(idempotency_row_key(command.idempotency_key), oldest)
                if found is not None:
                    held[index] = found
        held.update(_record(ledger, ids, messages, held, now))
        for index, record in held.items():
            if not same_command(record.command, messages[index]):
                raise IdempotencyKeyReused(index, record.id)
            ids[index] = record.id
    fresh = [index for index in range(len(commands)) if index not in held]
    try:
        queue.send_all([messages[index] for index in fresh])
    except EnqueueFailed as failure:
        stayed = {fresh[i] for i in failure.enqueued} | {fresh[failure.failed]}
        if ledger is not None:
            ledger.forget(ids[index] for index in fresh if index not in stayed)
        raise EnqueueFailed(failure, fresh[failure.failed], sorted(stayed - {fresh[failure.failed]})) from failure
    return Accepted(ids, [index in fresh for index in range(len(commands))])


def _id_for(command: Command, now: datetime) -> str:
    if command.idempotency_key:
        return f"{day_of(now)}-{idempotency_row_key(command.idempotency_key)}"
    return new_id(now)


def _record(
    ledger: Ledger, ids: list[str], messages: list[dict[str, Any]], held: Mapping[int, Record], now: datetime
) -> dict[int, Record]:
    """Insert the rows not held already; what the ledger turned out to hold, by index (one retry on a race)."""
    found: dict[int, Record] = {}
    for _ in range(2):
        pending = [index for index in range(len(ids)) if index not in held and index not in found]
        try:
            ledger.record([(ids[index], messages[index]) for index in pending], now)
            return found
        except LedgerConflict as conflict:
            found.update({index: conflict.existing[ids[index]] for index in pending if ids[index] in conflict.existing})
    raise LedgerConflict({ids[index]: record for index, record in found.items()})

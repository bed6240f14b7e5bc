"""Command status from the command ledger, as ``python -m ops commands show|list`` prints it.

The ledger is the app's table ``itwincommands`` in the storage account of ``AzureWebJobsStorage`` (see
`shared.ledger`); ``GET /api/commands/{id}`` answers from the same rows, and ``commands show --json`` prints exactly
that answer. Listing reads one day partition at a time, newest first, by status: never the whole table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ops.errors import UsageError
from ops.output import when
from shared.ledger import Ledger, Record, Status, day_of, split_id

T = TypeVar("T")


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def error_summary(error: Any) -> str:
    """``code: message`` of an error in the iTwin shape, on one line."""
    if not isinstance(error, dict):
        return "-"
    code = error.get("code") or error.get("status") or "error"
    return f"{code}: {_one_line(error.get('message'))}"


def result_of(record: Record) -> str:
    """What a command came to, in a few words: the resource it made, its children, or its last error."""
    if record.resource:
        return f"{record.resource.type} {record.resource.id}"
    if record.children:
        return f"{len(record.children)} delete(s) enqueued"
    if record.error:
        return error_summary(record.error)
    return "-"


def kind_of(record: Record) -> str:
    """``"<action> <resource>"`` of the recorded command."""
    return f"{record.command.get('action', '?')} {record.command.get('resource', '?')}"


class CommandLedger:
    """The ledger as the tool reads and changes it: bad ids and storage failures become errors that say what to do."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _call(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from azure.core.exceptions import AzureError

        from ops.poison_queue import storage_error

        try:
            return call(*args, **kwargs)
        except AzureError as error:
            raise storage_error(error, what, service="table") from None

    def show(self, command_id: str) -> Record:
        """The command's row as ``GET /api/commands/{id}`` shows it, by its id or the start of one (the whole day,
        then the start of the key); `UsageError` for a bad, unknown or ambiguous id."""
        try:
            split_id(command_id)
        except ValueError:
            raise UsageError(
                f"{command_id!r} is not a command id: one looks like 20261123-c3f1a2... (the day it was accepted, "
                "then a key), as POST /api/commands answered or `python -m ops commands list` shows"
            ) from None
        record = self.get(command_id)
        if record is None:
            matches = self._call("read the command ledger", self.ledger.ids_starting, command_id)
            if len(matches) > 1:
                raise UsageError(f"{command_id!r} is the start of several command ids: give more of it")
            record = self.get(matches[0]) if matches else None
        if record is None:
            raise UsageError(
                f"no command {command_id} in the ledger: it was never accepted, or it is older than the ledger "
                "keeps (ITWIN_LEDGER_RETENTION); see `python -m ops commands list`"
            )
        return record

    def get(self, command_id: str) -> Record | None:
        """The row (``running`` while a create's lease is held), or None when there is none."""
        return self._call("read the command ledger", self.ledger.status, command_id)

    def recent(self, status: Status | None, days: int, now: datetime, limit: int) -> list[Record]:
        """Up to ``limit`` rows with ``status`` (None: any) accepted within the last ``days`` days, newest first."""
        oldest = day_of(now - timedelta(days=days))

        def newest() -> list[Record]:
            found = []
            for record in self.ledger.recent(status, oldest, now, limit):
                found.append(record)
                if len(found) >= limit:
                    break
            return found

        return self._call("read the command ledger", newest)

    def requeue(self, record: Record, now: datetime, token: str) -> bool:
        """Set a dead-lettered row back to queued, marked with a replay's ``token`` (see `Ledger.requeue`)."""
        assert record.etag is not None
        return self._call(
            "set the command's ledger row back to queued",
            self.ledger.requeue,
            record.id,
            now,
            record.etag,
            requeued_by=token,
        )


def show_lines(record: Record) -> list[str]:
    """``commands show``: the row in a readable layout, the command in full at the end."""
    lines = [
        f"id          {record.id}",
        f"status      {record.status.value}",
        f"command     {kind_of(record)}",
        f"attempts    {record.attempts}",
        f"waits       {record.waits}",
        f"created     {when(record.created)}",
        f"updated     {when(record.updated)}",
    ]
    resource = record.resource
    shown = f"{resource.type} {resource.id}" + (f"  {resource.href}" if resource.href else "") if resource else "-"
    lines.append(f"resource    {shown}")
    lines.append(f"error       {error_summary(record.error) if record.error else '-'}")
    for detail in (record.error or {}).get("details") or []:
        if isinstance(detail, dict):
            lines.append(f"            {detail.get('target') or '-'}: {detail.get('message')} ({detail.get('code')})")
    lines.append(f"children    {len(record.children) or '-'}")
    lines.extend(f"            {child}" for child in record.children)
    if record.requeued_by:
        dead_letter = record.requeued_by.removeprefix("replay-")
        lines.append(f"replayed    set back to queued by `poison replay` of dead letter {dead_letter}")
    lines.append("command:")
    lines.append(json.dumps(dict(record.command), indent=2, ensure_ascii=False))
    return lines


LIST_HEADERS = ["CREATED", "ID", "STATUS", "COMMAND", "ATTEMPTS", "UPDATED", "RESULT"]


def list_row(record: Record) -> list[str]:
    """One ``commands list`` row, under `LIST_HEADERS`."""
    return [
        when(record.created),
        record.id,
        record.status.value,
        kind_of(record),
        str(record.attempts),
        when(record.updated),
        result_of(record),
    ]

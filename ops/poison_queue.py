"""The two queues, as the tool uses them: the poison queue read and changed under leases, the command queue sent to.

A storage queue cannot be read by message id, and a peek shows at most 32 messages. So reading the whole poison
queue means receiving its messages, which hides each for a lease (its visibility timeout), and then releasing
them (visibility 0). A tool that dies meanwhile loses nothing: its leases run out and the messages come back.
Nothing else reads the poison queue, so hiding its messages for a few seconds costs nobody anything.

A pass that outlives its lease would see its first messages come round again, and could go on for ever: so a pass
stops at the first message it receives twice, or once it has received as many as the queue held when it began. A
scan's lease grows with that count (`SCAN_RATE`), so that it outlives the pass and the scan sees every message.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from ops.dead_letters import DeadLetter, parse_dead_letter
from ops.errors import OpsError
from shared.queues import CommandQueue, queue_service
from shared.settings import COMMAND_QUEUE, POISON_QUEUE

PEEK_LIMIT = 32  # the most messages one peek (or one receive) returns
# Letters a second a scan is sure to receive, even over a slow link (Azurite gives about 1,600): its lease is the
# count at the start over this, or more. Should the tool die, what it held comes back after that lease.
SCAN_RATE = 200
RELEASE_THREADS = 8  # releases at once: one update each, so a scan's end is bound by their round trips


class LeaseLost(Exception):
    """The message is no longer ours: another run received it, or it was deleted."""


@dataclass(frozen=True)
class Leased:
    """A received dead letter and the pop receipt that lets us change or delete it while the lease lasts."""

    letter: DeadLetter
    pop_receipt: str


def _letter(message: Any) -> DeadLetter:
    content = message.content
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    return parse_dead_letter(
        message.id,
        text,
        inserted_on=message.inserted_on,
        expires_on=message.expires_on,
    )


def storage_error(error: Exception, what: str, service: str = "queue") -> OpsError:
    """An Azure Storage failure as a message that says what to do; ``service``: ``queue``, or ``table`` (the
    command ledger)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceRequestTimeoutError,
        ServiceResponseError,
        ServiceResponseTimeoutError,
    )

    status = getattr(error, "status_code", None)
    if isinstance(error, ClientAuthenticationError) and status is None:
        first_line = str(error.message).splitlines()[0] if error.message else type(error).__name__
        return OpsError(f"cannot sign in to storage to {what}: run `az login` first ({first_line})")
    if isinstance(error, HttpResponseError):
        code = error.error_code or error.reason or ""
        if error.status_code == 403:
            role = "Storage Table Data Contributor" if service == "table" else "Storage Queue Data Contributor"
            return OpsError(
                f"storage refused to let you {what} (403 {code}): with a connection string check its key; with "
                f"az login you need the {role} role on the storage account"
            )
        if error.status_code == 404:
            missing = "the command ledger's table" if service == "table" else "the queue"
            return OpsError(f"cannot {what}: {missing} does not exist (404 {code}); is AzureWebJobsStorage right?")
        return OpsError(f"storage answered {error.status_code} {code} when asked to {what}")
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        if isinstance(error, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
            happened = "it timed out"
        else:  # the SDK's text starts with the connection object's repr; its last part is what happened
            happened = str(error).rsplit(": ", 1)[-1]
        verb = "reach" if isinstance(error, ServiceRequestError) else "hear from"
        return OpsError(
            f"cannot {verb} storage to {what} ({happened}): check AzureWebJobsStorage, and that the storage account "
            "(Azurite under `make dev`) is running and reachable from here"
        )
    return OpsError(f"could not {what}: {type(error).__name__}: {error}")


class Queues:
    """``itwin-commands-poison`` and ``itwin-commands`` (`azure.storage.queue.QueueClient` objects)."""

    def __init__(self, poison: Any, commands: Any) -> None:
        self.poison = poison
        self.commands = commands
        self._sender = CommandQueue(commands, poison)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], **client_options: Any) -> Queues:
        """Raises `SettingsError` when ``AzureWebJobsStorage`` is set in neither form; ``client_options`` go to the
        queue clients (`ops.reach.QUEUE_OPTIONS`)."""
        service = queue_service(environ, **client_options)
        return cls(service.get_queue_client(POISON_QUEUE), service.get_queue_client(COMMAND_QUEUE))

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from azure.core.exceptions import AzureError

        try:
            return call(*args, **kwargs)
        except AzureError as error:
            raise storage_error(error, what) from None

    def count(self) -> int:
        """Messages on the poison queue, visible or not (the service's approximation)."""
        properties = self._call("read the poison queue", self.poison.get_queue_properties)
        return int(properties.approximate_message_count or 0)

    def peek(self) -> list[DeadLetter]:
        """Up to 32 visible dead letters, without changing anything."""
        return [_letter(m) for m in self._call("read the poison queue", self.poison.peek_messages, PEEK_LIMIT)]

    def receive(self, lease: int, limit: int = PEEK_LIMIT) -> list[Leased]:
        """Up to ``limit`` visible dead letters, each hidden from others for ``lease`` seconds."""
        pages = self._call(
            "read the poison queue",
            self.poison.receive_messages,
            messages_per_page=min(limit, PEEK_LIMIT),
            max_messages=limit,
            visibility_timeout=lease,
        )
        return [Leased(_letter(m), m.pop_receipt) for m in self._call("read the poison queue", list, pages)]

    def _update(self, leased: Leased, *, content: str | None, visibility: int) -> Leased:
        from azure.core.exceptions import HttpResponseError

        try:
            updated = self.poison.update_message(
                leased.letter.id, leased.pop_receipt, content=content, visibility_timeout=visibility
            )
        except HttpResponseError as error:
            if error.status_code in (400, 404):  # PopReceiptMismatch, MessageNotFound
                raise LeaseLost(leased.letter.id) from None
            raise storage_error(error, "update a dead letter") from None
        letter = leased.letter if content is None else replace(leased.letter, text=content)
        return Leased(letter, updated.pop_receipt)

    def mark(self, leased: Leased, content: str, lease: int) -> Leased:
        """Replace the envelope's text and renew the lease; raises `LeaseLost`."""
        return self._update(leased, content=content, visibility=lease)

    def release(self, leased: Leased) -> None:
        """Make the dead letter visible again at once (quietly, if it is no longer ours)."""
        with contextlib.suppress(LeaseLost):
            self._update(leased, content=None, visibility=0)

    def delete(self, leased: Leased) -> None:
        """Remove the dead letter; raises `LeaseLost` when it is no longer ours."""
        from azure.core.exceptions import HttpResponseError

        try:
            self.poison.delete_message(leased.letter.id, leased.pop_receipt)
        except HttpResponseError as error:
            if error.status_code in (400, 404):
                raise LeaseLost(leased.letter.id) from None
            raise storage_error(error, "delete a dead letter") from None

    def send_command(self, message: Mapping[str, Any]) -> None:
        """Put a command on ``itwin-commands``, visible at once and never expiring, as the app's own sends."""
        self._call("send to itwin-commands", self._sender.send, message)

    def peek_commands(self) -> list[Any]:
        """The first (up to 32) commands waiting on ``itwin-commands``, decoded where they are JSON."""
        messages = self._call("read itwin-commands", self.commands.peek_messages, PEEK_LIMIT)
        decoded = []
        for message in messages:
            try:
                decoded.append(json.loads(message.content))
            except (TypeError, ValueError):
                continue
        return decoded

    def scan(self, lease: int = 30) -> list[DeadLetter]:
        """Every dead letter (as many as the queue held when the scan began), in queue order, each once, leaving
        the queue as it was.

        One peek when it shows them all; otherwise receive them under a lease of at least ``lease`` seconds, long
        enough for the pass (`SCAN_RATE`), then release them.
        """
        peeked = self.peek()
        if len(peeked) < PEEK_LIMIT:
            return peeked
        expected = max(self.count(), len(peeked))  # the count is the service's approximation
        held: list[Leased] = []
        try:
            held.extend(self.leases(max(lease, math.ceil(expected / SCAN_RATE)), PEEK_LIMIT, limit=expected))
        finally:
            self.release_all(held)
        return [leased.letter for leased in held]

    def leases(self, lease: int, batch: int, limit: int | None = None) -> Iterator[Leased]:
        """Receive dead letters ``batch`` at a time, each once: until none is visible, one comes round again (a
        lease ran out), or ``limit`` have been received. Those received but not handed out are released, also when
        the caller stops early."""
        seen: set[str] = set()
        pending: list[Leased] = []
        try:
            while limit is None or len(seen) < limit:
                pending = self.receive(lease, batch)
                if not pending:
                    return
                while pending:
                    if pending[0].letter.id in seen or (limit is not None and len(seen) >= limit):
                        return
                    leased = pending.pop(0)
                    seen.add(leased.letter.id)
                    yield leased
        finally:
            self.release_all(pending)

    def release_all(self, held: list[Leased]) -> None:
        """Release each (quietly, those no longer ours), several at a time."""
        if len(held) <= 1:
            for leased in held:
                self.release(leased)
            return
        with ThreadPoolExecutor(RELEASE_THREADS, thread_name_prefix="release") as pool:
            list(pool.map(self.release, held))

    def purge(self, ids: set[str], progress: Any) -> int:
        """Delete the dead letters with these ids; how many were deleted (the others were taken, or not reached).
        ``progress`` advances once per id found."""
        deleted = 0
        found = 0
        held: list[Leased] = []
        try:
            for leased in self.leases(lease=30, batch=PEEK_LIMIT, limit=self.count()):
                if leased.letter.id not in ids:
                    held.append(leased)
                    continue
                with contextlib.suppress(LeaseLost):
                    self.delete(leased)
                    deleted += 1
                found += 1
                progress.advance()
                if found == len(ids):
                    break
        finally:
            self.release_all(held)
        return deleted

"""The command ledger: one row per command in Azure Table Storage (table `LEDGER_TABLE`, the app's own storage
account), so that anyone can ask what became of a command, and a create happens once across all instances.

Ids and partitions. A command id is ``<day>-<key>``: ``day`` (``yyyymmdd``, UTC) is the row's PartitionKey and
``key`` its RowKey, so a lookup by id is one point read and a whole day is dropped at once when it leaves the
retention period. Keys: ``c<uuid>`` for a command posted without an idempotency key; ``k<hash of the key>`` with
one; ``w<hash of the delivery's messageId>-<n>`` for the n-th command of a webhook delivery, on the day the platform
enqueued it, so every instance derives the same id from a replay; ``<parent key>.<hash of the connection id>`` for
a fan-out's children, so that a redelivered fan-out names each connection as the first delivery did.

An idempotency key is bound to its command by an index row (PartitionKey ``keys<2 hex digits>``, RowKey the key's
``k<hash>``, holding the command id): whoever inserts it first decides the day, so the same key posted twice at once
across midnight is one command, and a keyed POST is a point read or insert whatever the table's size. Retention
deletes the index row with the day of the command it points to.

A resource whose end an event reports by its id alone (a Reality Modeling v2 job: ``realityModeling.jobCompleted.v2``
``{jobId}``) is bound to the command that made it the same way (PartitionKey ``made<2 hex digits>``, RowKey
``r<hash of type and id>``), written before that command's result; the event's ``record`` command then writes the
state it ended in into that command's row (``resourceState``). Retention deletes it with the command's day.

The protocol. Every write is conditional: an insert only where nothing is (409 otherwise), an update only on the
ETag read (412 otherwise). No decision compares two machines' clocks; times in rows are for people. One write is
not, and decides nothing: `Ledger.record_state` merges a finished resource's last known state into its command's
row (two columns no transition reads); the last record written is the one kept.

- **Accepted**: the front end inserts the row unsent (``sent`` false), enqueues the message, then marks it sent.
  A repeat of the command (same key or messageId) that finds the row unsent and not final enqueues it again: a
  front end that failed between insert and enqueue loses nothing, and a second message is harmless (below).
- **Held**: a delivery of a create claims the row by writing a fresh lease token and its process (``holder``) on
  the ETag it read; exactly one of any number of concurrent deliveries succeeds. Only the holder may call the API's
  create, and only within `LEASE` minus `LEASE_MARGIN` of sending its claim, by its own monotonic clock: a holder
  delayed past that (a hanging token service, a paused VM) gives the command back instead of creating.
- **Finished** or **given back**: the holder writes its result (and clears the lease) on the ETag its claim
  returned; a write that finds the ETag changed re-reads and writes again while the lease is still its own. A
  result the store could not take stays in the process and is written by its next invocation.
- **Handed over**: a holder whose create got no answer (a timeout, a dropped connection, a 5xx other than 503)
  keeps the lease, because the platform may still carry the request out. The message it gives back carries the
  lease's token as waited out and shows after `SETTLE`; whoever receives it takes the lease over at once and looks
  up what the create made. Every other delivery still waits `LEASE`. This rests on one assumption about the
  platform: a request it has not answered when the client gives up (10 s in production) takes effect within
  `SETTLE` of that, or never. A request carried out later than that could be made twice.
- **Taken over**: another delivery that finds the lease held waits, carrying the lease token it saw in its
  message, and takes over only when the same token is still there after its queue delays add up to `LEASE`. The
  queue's visibility delay measures that time, so clock skew between instances cannot shorten it; a holder alive
  that long has stopped creating (above), so the taker cannot race it. The taker then looks up what the holder may
  have made before creating: Export connections by iModel and name; and, minus those that existed before the
  holder's create (``before``), Clash Detection v1 runs by project, test and named version, Clash Detection v2
  clash reports by iTwin, iModel, test and changeset (a v2 run is named by its report, and "Get clash detection
  reports" lists them), and Reality Modeling v2 jobs by iTwin, name and type (``GET /reality-modeling/jobs`` with
  ``$filter=iTwinId eq ..``). A ContextCapture v1 job, which cannot be looked up (v1 has no job list), is
  dead-lettered with ``CreateOutcomeUnknown``: the only create kind left that is. ``before`` is listed at a
  listed create's first hold and kept while no create may have been made since, so one limit remains: a run
  (report, job) that another command makes with the same test and version (changeset; iTwin and name) while this
  one waits could be taken for this one's, if this one's create then loses its answer without having been carried
  out. Give v2 jobs names that say which command made them to rule that out. A delivery that finds its own
  process's lease, with no
  invocation of this process working on it, knows the holder ended: it writes a result the process kept, or takes
  the lease over at once if that holder never sent its create (otherwise it waits as above).

Deletes, submits and cancels take no lease: two deliveries at once may both call the API, which is harmless, and
`shared.worker` decides which result the row keeps.

Operations. ``python -m ops`` lists rows by status a day partition at a time (never the whole table), and a replay
of a dead letter sets its command's row back to ``queued`` (`Ledger.requeue`) before sending it again.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

LEDGER_TABLE = "itwincommands"
# How long a create's lease keeps other deliveries from taking the create over. The holder sends no create later
# than LEASE - LEASE_MARGIN after sending its claim, measured on its own clock, so it needs no agreement between
# machines. The margin covers all a create sent at that last moment may still do: reach the API, be waited on by
# the client (REQUEST_LIMIT at most), and take effect up to SETTLE after the client gave up; so a taker, which
# looks only after LEASE, finds whatever it made.
LEASE = timedelta(minutes=2)
# The longest a create the client stopped waiting for may still take effect on the platform (see "Handed over").
SETTLE = timedelta(seconds=30)
# The longest the client spends on one request: connecting and waiting for its answer (`shared.client.DEFAULT_TIMEOUT`)
# with room to spare.
REQUEST_LIMIT = timedelta(seconds=20)
LEASE_MARGIN = SETTLE + REQUEST_LIMIT + timedelta(seconds=10)
_MAX_ERROR_BYTES = 30_000
_KEY_INDEX = "keys"
_RESOURCE_INDEX = "made"
# Resources whose end an event reports by their id alone (realityModeling.jobCompleted.v2 {jobId}): the row of the
# command that made one is found through an index row, and records the state it ended in (``resourceState``).
INDEXED_RESOURCES = frozenset({"realityJob"})
_TRANSACTION = 100  # the table service's limit on operations in one transaction


class Status(StrEnum):
    """What became of a command, as `GET /api/commands/{id}` says it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ALREADY_DONE = "already_done"
    RESCHEDULED = "rescheduled"
    FANNED_OUT = "fanned_out"
    DEAD_LETTERED = "dead_lettered"
    IMODEL_UNAVAILABLE = "imodel_unavailable"


FINAL_STATUSES = frozenset(
    {Status.SUCCEEDED, Status.ALREADY_DONE, Status.FANNED_OUT, Status.DEAD_LETTERED, Status.IMODEL_UNAVAILABLE}
)
# `running` is not stored: it is a queued or rescheduled row whose create is held right now.
_STORED_AS = {Status.RUNNING: (Status.QUEUED, Status.RESCHEDULED)}


@dataclass(frozen=True)
class Resource:
    """What a create made."""

    type: str
    id: str
    href: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"type": self.type, "id": self.id, "href": self.href}


@dataclass(frozen=True)
class Record:
    """A command's row, as read."""

    id: str
    command: Mapping[str, Any]
    status: Status
    attempts: int = 0
    waits: int = 0
    created: datetime | None = None
    updated: datetime | None = None
    resource: Resource | None = None
    error: Mapping[str, Any] | None = None
    children: tuple[str, ...] = ()
    uncertain: bool = False  # a create may have been carried out without an answer
    requeued_by: str | None = None  # who last set a dead-lettered row back to queued (a replay's token)
    sent: bool = True  # False until the front end saw its message on the queue
    holder: str | None = None  # the process holding the create's lease
    lease: str | None = None  # the lease's token: a new one for every claim and take-over
    before: tuple[str, ...] | None = None  # runs that matched before the holder's create: not made by it
    resource_state: str | None = None  # the state the resource ended in, as an event reported it
    etag: str | None = field(default=None, compare=False, repr=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The answer of ``GET /api/commands/{id}``."""
        return {
            "id": self.id,
            "status": self.status.value,
            "command": dict(self.command),
            "attempts": self.attempts,
            "waits": self.waits,
            "created": _iso(self.created),
            "updated": _iso(self.updated),
            "resource": self.resource.to_dict() if self.resource else None,
            "resourceState": self.resource_state,
            "error": dict(self.error) if self.error else None,
            "children": list(self.children),
        }


@dataclass(frozen=True)
class Lease:
    """A create's lease as its holder has it: the token it wrote and the row's ETag after writing it."""

    token: str
    etag: str


def day_of(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d")


_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-")


def split_id(command_id: str) -> tuple[str, str]:
    """``(PartitionKey, RowKey)`` of a command id; raises `ValueError` for a string that is not one (at most 109
    characters: the day, a dash, and a key of up to 100 letters, digits, dots and dashes)."""
    day, sep, key = command_id.partition("-")
    if not (
        sep
        and len(day) == 8
        and day.isdigit()
        and day.isascii()
        and 0 < len(key) <= 100
        and key[0].isalnum()
        and set(key) <= _ID_CHARS
    ):
        raise ValueError(f"{command_id[:120]!r} is not a command id")
    return day, key


def new_id(now: datetime) -> str:
    return f"{day_of(now)}-c{uuid.uuid4().hex}"


def idempotency_row_key(key: str) -> str:
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:40]


def delivery_ids(message_id: str, enqueued_at: datetime, count: int) -> list[str]:
    """The ids of the ``count`` commands of a webhook delivery: the same on every instance for every resend."""
    digest = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    return [f"{day_of(enqueued_at)}-w{digest}-{n}" for n in range(count)]


def child_id(parent_id: str, connection_id: str) -> str:
    """The id of a fan-out's delete of ``connection_id``: the same whenever the parent is delivered."""
    return f"{parent_id}.{hashlib.sha256(connection_id.encode()).hexdigest()[:16]}"


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else None


def _error_json(error: Mapping[str, Any] | None) -> str | None:
    if not error:
        return None
    text = json.dumps(error, separators=(",", ":"))
    if len(text.encode()) > _MAX_ERROR_BYTES:
        text = json.dumps({**error, "details": [], "message": str(error.get("message", ""))[:2000]})
    return text


def _key_index(row_key: str) -> tuple[str, str]:
    return f"{_KEY_INDEX}{row_key[1:3]}", row_key


def _resource_index(resource_type: str, resource_id: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{resource_type}:{resource_id.lower()}".encode()).hexdigest()
    return f"{_RESOURCE_INDEX}{digest[:2]}", f"r{digest[:40]}"


class Ledger:
    """Reads and writes command rows through an ``azure.data.tables.TableClient`` (Azurite locally)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], **client_options: Any) -> Ledger:
        """The ledger on ``AzureWebJobsStorage`` in either form; ``client_options`` go to the table client (the
        benchmarks pass azure-core's ``raw_request_hook`` and ``raw_response_hook`` to count requests)."""
        from azure.data.tables import TableServiceClient  # imported on first use: keeps cold start short

        from shared.storage import connection_string, endpoint_and_credential

        text = connection_string(environ)
        if text:
            service = TableServiceClient.from_connection_string(text, **client_options)
        else:
            url, credential = endpoint_and_credential(environ, "table")
            service = TableServiceClient(endpoint=url, credential=credential, **client_options)
        return cls(service.get_table_client(LEDGER_TABLE))

    # -- acceptance ---------------------------------------------------------------------------------------------
    def key_owner(self, row_key: str, candidate_id: str, oldest_day: str) -> str:
        """The command id an idempotency key (its ``k<hash>`` row key) stands for: the one its index row names,
        unless that command's day is before ``oldest_day`` (past retention), else ``candidate_id``, which the
        index then names. One insert, or an insert and a point read; concurrent callers all get the same id."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

        partition, key = _key_index(row_key)
        entity = {"PartitionKey": partition, "RowKey": key, "commandId": candidate_id}
        for _ in range(3):
            try:
                self.table.create_entity(entity)
                return candidate_id
            except ResourceExistsError:
                pass
            try:
                found = self.table.get_entity(partition, key)
            except ResourceNotFoundError:
                continue
            if found["commandId"] >= oldest_day:  # ids start with their day
                return found["commandId"]
            try:  # the key's command is past retention: the key is free again
                self.table.update_entity(
                    entity, etag=found.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )
                return candidate_id
            except HttpResponseError as failure:
                if failure.status_code not in (404, 412):
                    raise
        raise RuntimeError(f"the idempotency index row {key} kept changing; retry")

    def insert_absent(
        self, rows: Iterable[tuple[str, Mapping[str, Any]]], now: datetime, *, sent: bool = False
    ) -> dict[str, Record]:
        """Insert a queued row per ``(id, command message)`` where none is; what the ledger held for the others.

        Rows go in one transaction per day and 100 rows; a transaction that meets a row already there is sent again
        without it, so every absent row is inserted whatever its place in the batch.
        """
        from azure.data.tables import TableTransactionError

        held: dict[str, Record] = {}
        entities = [self._new_entity(command_id, message, now, sent) for command_id, message in rows]
        for day in sorted({e["PartitionKey"] for e in entities}):
            of_day = [e for e in entities if e["PartitionKey"] == day]
            for start in range(0, len(of_day), _TRANSACTION):
                pending = of_day[start : start + _TRANSACTION]
                for _ in range(len(pending) + 2):  # each retry finds one row there at least, or the rows went
                    if not pending:
                        break
                    try:
                        self.table.submit_transaction([("create", e) for e in pending])
                        break
                    except TableTransactionError as error:
                        if error.error_code != "EntityAlreadyExists":
                            raise
                    there = {i: r for e in pending if (r := self.get(i := f"{day}-{e['RowKey']}")) is not None}
                    held.update(there)
                    pending = [e for e in pending if f"{day}-{e['RowKey']}" not in there]
                else:
                    raise RuntimeError(f"rows of {day} kept appearing and vanishing while being inserted; retry")
        return held

    def mark_sent(self, command_ids: Iterable[str]) -> None:
        """Note that the commands' messages are on the queue (one transaction per day and 100 rows)."""
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import UpdateMode

        keys = [split_id(i) for i in command_ids]
        for day in sorted({d for d, _ in keys}):
            of_day = [k for d, k in keys if d == day]
            for start in range(0, len(of_day), _TRANSACTION):
                chunk = [{"PartitionKey": day, "RowKey": k, "sent": True} for k in of_day[start : start + _TRANSACTION]]
                try:
                    self.table.submit_transaction([("update", e, {"mode": UpdateMode.MERGE}) for e in chunk])
                except HttpResponseError as failure:  # a row went (forgotten, or past retention): mark the others
                    if failure.status_code != 404:
                        raise
                    for entity in chunk:
                        self._merge(entity, None)

    def forget(self, command_ids: Iterable[str]) -> None:
        """Delete rows recorded for commands that were then not enqueued."""
        for command_id in command_ids:
            day, key = split_id(command_id)
            self.table.delete_entity(day, key)

    @staticmethod
    def _new_entity(command_id: str, message: Mapping[str, Any], now: datetime, sent: bool) -> dict[str, Any]:
        day, key = split_id(command_id)
        return {
            "PartitionKey": day,
            "RowKey": key,
            "command": json.dumps(message, separators=(",", ":")).encode(),
            "status": Status.QUEUED.value,
            "attempts": 0,
            "waits": 0,
            "created": now,
            "updated": now,
            "sent": sent,
        }

    # -- reading ------------------------------------------------------------------------------------------------
    def get(self, command_id: str) -> Record | None:
        """The command's row, or None when there is none (unknown, or past the retention period)."""
        from azure.core.exceptions import ResourceNotFoundError

        day, key = split_id(command_id)
        try:
            return _record(command_id, self.table.get_entity(day, key))
        except ResourceNotFoundError:
            return None

    def status(self, command_id: str) -> Record | None:
        """The row, shown as ``running`` while a create's lease on it is held."""
        record = self.get(command_id)
        return _shown(record) if record else None

    def ids_starting(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` ids of commands whose id starts with ``prefix`` (a whole day, then the start of a key):
        one RowKey range within one partition."""
        day, key = split_id(prefix)
        after = key[:-1] + chr(ord(key[-1]) + 1)
        query = "PartitionKey eq @day and RowKey ge @key and RowKey lt @after"
        entities = self.table.query_entities(
            query, parameters={"day": day, "key": key, "after": after}, select=["RowKey"], results_per_page=limit
        )
        found: list[str] = []
        for entity in entities:
            found.append(f"{day}-{entity['RowKey']}")
            if len(found) >= limit:
                break
        return found

    def recent(self, status: Status | None, oldest_day: str, now: datetime, limit: int) -> Iterator[Record]:
        """Up to ``limit`` rows per day with ``status`` (None: any), newest first, from ``now``'s day back to
        ``oldest_day``. A day is read by its PartitionKey (and status), a few small columns of each row, keeping
        only the newest ``limit``; those are then read whole. A caller that stops early reads no further day.
        """
        day = now
        while (partition := day_of(day)) >= oldest_day:
            for key in self._newest_of_day(partition, status, limit):
                record = self.get(f"{partition}-{key}")
                if record is not None and (status is None or _shown(record).status is status):
                    yield _shown(record)
            day -= timedelta(days=1)

    def _newest_of_day(self, day: str, status: Status | None, limit: int) -> list[str]:
        stored = _STORED_AS.get(status, (status,)) if status else ()
        names = {f"s{n}": s.value for n, s in enumerate(stored)}
        query = "PartitionKey eq @day"
        if names:  # spaces around the brackets: the SDK splits the filter on them
            query += " and ( " + " or ".join(f"status eq @{name}" for name in names) + " )"
        newest: list[tuple[datetime, str]] = []
        columns = ["RowKey", "created", "lease", "status"]
        for entity in self.table.query_entities(query, parameters={"day": day, **names}, select=columns):
            if entity.get("created") is None:
                continue  # not a command's row
            held = bool(entity.get("lease"))
            if (status in (Status.QUEUED, Status.RESCHEDULED) and held) or (status is Status.RUNNING and not held):
                continue
            item = (entity["created"], entity["RowKey"])
            if len(newest) < limit:
                heapq.heappush(newest, item)
            else:
                heapq.heappushpop(newest, item)
        return [key for _, key in sorted(newest, reverse=True)]

    # -- the worker ---------------------------------------------------------------------------------------------
    def adopt(self, command_id: str, message: Mapping[str, Any], now: datetime) -> Record:
        """The row of a command whose message came without one (a producer that wrote to the queue itself, or a
        replay after the row left retention): inserted as sent, or the row another delivery inserted first."""
        held = self.insert_absent([(command_id, message)], now, sent=True)
        record = held.get(command_id) or self.get(command_id)
        if record is None:
            raise RuntimeError(f"the row of {command_id} vanished as it was inserted; retry")
        return record

    def hold(
        self,
        record: Record,
        holder: str,
        now: datetime,
        *,
        before: Iterable[str] | None = None,
        token: str | None = None,
    ) -> Lease | None:
        """Claim or take over ``record``'s create: a fresh lease (``token``, or a new one), written only on the ETag
        read. None when the row changed first. ``before``: the runs that match the create now (see the module's
        docstring)."""
        assert record.etag is not None
        token = token or uuid.uuid4().hex
        day, key = split_id(record.id)
        entity: dict[str, Any] = {"PartitionKey": day, "RowKey": key, "holder": holder, "lease": token, "heldAt": now}
        if before is not None:
            entity["before"] = json.dumps(sorted(before))
        etag = self._merge(entity, record.etag)
        return Lease(token, etag) if etag else None

    def finish(
        self,
        command_id: str,
        status: Status,
        now: datetime,
        *,
        attempts: int,
        waits: int,
        etag: str | None = None,
        resource: Resource | None = None,
        error: Mapping[str, Any] | None = None,
        children: Iterable[str] = (),
        uncertain: bool = False,
        release: bool = False,
    ) -> str | None:
        """Write a delivery's result to the row, only if it is unchanged since read (``etag``; without one, only if
        it exists); ``release`` clears the lease. The row's new ETag, or None when someone else changed it first.
        """
        day, key = split_id(command_id)
        entity: dict[str, Any] = {
            "PartitionKey": day,
            "RowKey": key,
            "status": status.value,
            "attempts": attempts,
            "waits": waits,
            "updated": now,
            "uncertain": uncertain,
        }
        if release:
            entity.update(holder="", lease="")
        if resource:
            entity.update(resourceType=resource.type, resourceId=resource.id, resourceHref=resource.href or "")
        error_text = _error_json(error)
        if error_text:
            entity["error"] = error_text
        children = list(children)
        if children:
            entity["children"] = json.dumps(children)
        return self._merge(entity, etag)

    def _merge(self, entity: Mapping[str, Any], etag: str | None) -> str | None:
        """MERGE ``entity`` if the row's ETag is ``etag`` (None: if the row exists); its new ETag, or None."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import UpdateMode

        try:  # If-Match: the ETag read, or "*" (the row must still exist)
            written = self.table.update_entity(
                entity, mode=UpdateMode.MERGE, etag=etag or "*", match_condition=MatchConditions.IfNotModified
            )
        except HttpResponseError as failure:
            if failure.status_code in (404, 412):
                return None
            raise
        return written["etag"]

    def children_of(self, parent_id: str) -> list[str]:
        """The ids of the children a fan-out recorded: one RowKey range within the parent's partition."""
        day, key = split_id(parent_id)
        query = "PartitionKey eq @day and RowKey gt @first and RowKey lt @after"
        entities = self.table.query_entities(
            query, parameters={"day": day, "first": key + ".", "after": key + "/"}, select=["RowKey"]
        )
        return [f"{day}-{e['RowKey']}" for e in entities]

    # -- operations ---------------------------------------------------------------------------------------------
    def requeue(self, command_id: str, now: datetime, etag: str, *, requeued_by: str | None = None) -> bool:
        """Set a dead-lettered row back to ``queued``, so that its command, sent again under the same id, is
        carried out again rather than answered ``already_done`` (``python -m ops poison replay`` does this before
        it sends the command back).

        Attempts and waits go back to 0; the last error stays (it is what the command last met); a create's lease
        is cleared, so that the next delivery claims it anew. ``requeued_by`` (a replay's token) is kept in the row,
        for the replay to recognise its own requeue. Done only if the row is unchanged since it was read
        dead-lettered (``etag``); False when it changed first.
        """
        day, key = split_id(command_id)
        row = {
            "PartitionKey": day,
            "RowKey": key,
            "status": Status.QUEUED.value,
            "attempts": 0,
            "waits": 0,
            "updated": now,
            "uncertain": False,
            "holder": "",
            "lease": "",
            "requeuedBy": requeued_by or "",
        }
        return self._merge(row, etag) is not None

    # -- retention ----------------------------------------------------------------------------------------------
    def index_resource(self, resource: Resource, command_id: str) -> None:
        """Remember that ``command_id`` made ``resource`` (one of `INDEXED_RESOURCES`): an event naming only the
        resource then finds its command. Writing it again is harmless."""
        partition, key = _resource_index(resource.type, resource.id)
        self.table.upsert_entity({"PartitionKey": partition, "RowKey": key, "commandId": command_id})

    def command_of(self, resource_type: str, resource_id: str) -> str | None:
        """The id of the command that made this resource, or None when no kept command did."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.table.get_entity(*_resource_index(resource_type, resource_id)).get("commandId")
        except ResourceNotFoundError:
            return None

    def record_state(self, command_id: str, state: str, now: datetime) -> bool:
        """Write the state the command's resource ended in; False when the row is gone (past retention). The one
        unconditional write of the ledger (a merge of two columns no transition reads: see the module docstring)."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        day, key = split_id(command_id)
        entity = {"PartitionKey": day, "RowKey": key, "resourceState": state, "resourceStateAt": now}
        try:
            self.table.update_entity(entity, mode=UpdateMode.MERGE)
        except ResourceNotFoundError:
            return False
        return True

    def drop_days_before(self, oldest_kept: datetime, lookback_days: int = 30) -> int:
        """Delete every row of the days before ``oldest_kept``'s, looking back ``lookback_days`` days; the count.

        Each day is one partition, read by its PartitionKey alone a page at a time and deleted 100 rows per
        transaction as it is read, so memory stays flat whatever a day holds. The idempotency index row of a keyed
        command goes with it, if it still names that command, and so does the index row of a resource it made.
        """
        dropped = 0
        for back in range(1, lookback_days + 1):
            day = day_of(oldest_kept - timedelta(days=back))
            pages = self.table.query_entities(
                "PartitionKey eq @day",
                parameters={"day": day},
                select=["RowKey", "resourceType", "resourceId"],
                results_per_page=_TRANSACTION,
            ).by_page()
            for page in pages:
                rows = list(page)
                if not rows:
                    continue
                self.table.submit_transaction([("delete", {"PartitionKey": day, "RowKey": r["RowKey"]}) for r in rows])
                for row in rows:
                    command_id = f"{day}-{row['RowKey']}"
                    if row["RowKey"].startswith("k"):
                        self._drop_index(_key_index(row["RowKey"]), command_id)
                    if row.get("resourceType") in INDEXED_RESOURCES and row.get("resourceId"):
                        self._drop_index(_resource_index(row["resourceType"], row["resourceId"]), command_id)
                dropped += len(rows)
        return dropped

    def _drop_index(self, index: tuple[str, str], command_id: str) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        partition, key = index
        try:
            found = self.table.get_entity(partition, key)
        except ResourceNotFoundError:
            return
        if found.get("commandId") != command_id:
            return  # the key was taken again by a later command
        try:
            self.table.delete_entity(
                partition, key, etag=found.metadata["etag"], match_condition=MatchConditions.IfNotModified
            )
        except HttpResponseError as failure:
            if failure.status_code not in (404, 412):
                raise


def _shown(record: Record) -> Record:
    """A row as the status API shows it: ``running`` while a create's lease is held."""
    if record.lease and not record.final:
        return replace(record, status=Status.RUNNING)
    return record


def _record(command_id: str, entity: Mapping[str, Any]) -> Record:
    resource = None
    if entity.get("resourceId"):
        resource = Resource(entity["resourceType"], entity["resourceId"], entity.get("resourceHref") or None)
    raw_command = entity.get("command") or b"{}"
    return Record(
        id=command_id,
        command=json.loads(raw_command),
        status=Status(entity.get("status", Status.QUEUED.value)),
        attempts=int(entity.get("attempts") or 0),
        waits=int(entity.get("waits") or 0),
        created=entity.get("created"),
        updated=entity.get("updated"),
        resource=resource,
        error=json.loads(entity["error"]) if entity.get("error") else None,
        children=tuple(json.loads(entity["children"])) if entity.get("children") else (),
        uncertain=bool(entity.get("uncertain")),
        requeued_by=entity.get("requeuedBy") or None,
        sent=entity.get("sent") is not False,
        holder=entity.get("holder") or None,
        lease=entity.get("lease") or None,
        before=tuple(json.loads(entity["before"])) if entity.get("before") else None,
        resource_state=entity.get("resourceState") or None,
        etag=getattr(entity, "metadata", {}).get("etag"),
    )

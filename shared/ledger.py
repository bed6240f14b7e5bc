"""The command ledger: one row per command in Azure Table Storage (table `LEDGER_TABLE`, the app's own storage
account), so that anyone can ask what became of a command, and a create happens once across all instances.

Ids and partitions. A command id is ``<day>-<key>``: ``day`` (``yyyymmdd``, UTC) is the row's PartitionKey and
``key`` its RowKey, so a lookup by id is one point read and a whole day is dropped at once when it leaves the
retention period. Keys: ``c<uuid>`` for a command posted without an idempotency key; ``k<hash of the key>`` with
one; ``w<hash of the delivery's messageId>-<n>`` for the n-th command of a webhook delivery, on the day the platform
enqueued it, so every instance derives the same id from a replay; ``<parent key>.<n>`` for a fan-out's children.

Rows. The command's row holds the command (JSON), its status, attempts and waits, timestamps, the resource a create
made (type, id, href), the last error in the iTwin error shape, and a fan-out's children. Before a create, the
worker inserts a second row, the claim (RowKey ``<key>~claim``: who, since when): the insert succeeds for exactly one
delivery, on any instance, which then owns the create. Every write is conditional: inserts only if absent (the
accepted batch is one transaction, all or none), updates only if the row is unchanged since it was read (ETag), or,
for the owner of a claim, only if the row still exists.

Operations. ``python -m ops`` lists rows by status a day partition at a time (never the whole table), and a replay
of a dead letter sets its command's row back to ``queued`` (`Ledger.requeue`) before sending it again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

LEDGER_TABLE = "itwincommands"
CLAIM_SUFFIX = "~claim"
# A claim is held for the function timeout (no invocation runs longer) plus this, for clocks that disagree.
CLAIM_MARGIN = timedelta(seconds=30)
DEFAULT_CLAIM_TTL = timedelta(minutes=5) + CLAIM_MARGIN  # host.json's functionTimeout is 5 minutes
_MAX_ERROR_BYTES = 30_000


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
# `running` is not stored: it is a queued or rescheduled row whose create is claimed right now.
_STORED_AS = {Status.RUNNING: (Status.QUEUED, Status.RESCHEDULED)}


class LedgerConflict(Exception):
    """Some rows of a batch exist already; ``existing`` maps their ids to what the ledger holds."""

    def __init__(self, existing: Mapping[str, Record]) -> None:
        super().__init__(f"{len(existing)} command(s) are in the ledger already")
        self.existing = dict(existing)


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
            "error": dict(self.error) if self.error else None,
            "children": list(self.children),
        }


@dataclass(frozen=True)
class Claim:
    """The result of trying to claim a create: ``ours``, or the row and claim someone else holds."""

    ours: bool
    record: Record | None = None
    owner: str | None = None
    claimed_at: datetime | None = None
    etag: str | None = None

    def stale(self, now: datetime, ttl: timedelta) -> bool:
        """True when the holder recorded a result after claiming, or its invocation must have ended (``ttl``)."""
        if self.claimed_at is None:
            return True
        record = self.record
        finished = record is not None and record.updated is not None and record.updated > self.claimed_at
        return finished or now - self.claimed_at > ttl


def day_of(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d")


def split_id(command_id: str) -> tuple[str, str]:
    """``(PartitionKey, RowKey)`` of a command id; raises `ValueError` for a string that is not one."""
    day, sep, key = command_id.partition("-")
    if not (sep and len(day) == 8 and day.isdigit() and key and key.replace("-", "").replace(".", "").isalnum()):
        raise ValueError(f"{command_id!r} is not a command id")
    return day, key


def new_id(now: datetime) -> str:
    return f"{day_of(now)}-c{uuid.uuid4().hex}"


def idempotency_row_key(key: str) -> str:
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:40]


def delivery_ids(message_id: str, enqueued_at: datetime, count: int) -> list[str]:
    """The ids of the ``count`` commands of a webhook delivery: the same on every instance for every resend."""
    digest = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    return [f"{day_of(enqueued_at)}-w{digest}-{n}" for n in range(count)]


def child_ids(parent_id: str, count: int) -> list[str]:
    return [f"{parent_id}.{n}" for n in range(count)]


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else None


def _error_json(error: Mapping[str, Any] | None) -> str | None:
    if not error:
        return None
    text = json.dumps(error, separators=(",", ":"))
    if len(text.encode()) > _MAX_ERROR_BYTES:
        text = json.dumps({**error, "details": [], "message": str(error.get("message", ""))[:2000]})
    return text


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
    def record(self, rows: Iterable[tuple[str, Mapping[str, Any]]], now: datetime) -> None:
        """Insert a queued row per ``(id, command message)``, all or none, in one transaction per day.

        Raises `LedgerConflict` with what the ledger holds when any of the ids is there already.
        """
        from azure.data.tables import TableTransactionError

        batch = [self._new_entity(command_id, message, now) for command_id, message in rows]
        for day in sorted({e["PartitionKey"] for e in batch}):
            operations = [("create", e) for e in batch if e["PartitionKey"] == day]
            for start in range(0, len(operations), 100):
                try:
                    self.table.submit_transaction(operations[start : start + 100])
                except TableTransactionError as error:
                    if error.error_code != "EntityAlreadyExists":
                        raise
                    ids = [f"{e['PartitionKey']}-{e['RowKey']}" for _, e in operations[start : start + 100]]
                    raise LedgerConflict({i: r for i in ids if (r := self.get(i)) is not None}) from None

    def forget(self, command_ids: Iterable[str]) -> None:
        """Delete rows recorded for commands that were then not enqueued."""
        for command_id in command_ids:
            day, key = split_id(command_id)
            self.table.delete_entity(day, key)

    @staticmethod
    def _new_entity(command_id: str, message: Mapping[str, Any], now: datetime) -> dict[str, Any]:
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

    def find_key(self, row_key: str, oldest_day: str) -> Record | None:
        """The row with ``row_key`` on any day from ``oldest_day`` on (an idempotency key's earlier use)."""
        query = "PartitionKey ge @oldest and RowKey eq @key"
        for entity in self.table.query_entities(query, parameters={"oldest": oldest_day, "key": row_key}):
            return _record(f"{entity['PartitionKey']}-{row_key}", entity)
        return None

    def ids_starting(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` ids of commands whose id starts with ``prefix`` (a whole day, then the start of a key):
        one RowKey range within one partition."""
        day, key = split_id(prefix)
        after = key[:-1] + chr(ord(key[-1]) + 1)
        query = "PartitionKey eq @day and RowKey ge @key and RowKey lt @after"
        found: list[str] = []
        entities = self.table.query_entities(
            query, parameters={"day": day, "key": key, "after": after}, select=["RowKey"], results_per_page=limit + 1
        )
        for entity in entities:
            if not entity["RowKey"].endswith(CLAIM_SUFFIX):
                found.append(f"{day}-{entity['RowKey']}")
                if len(found) >= limit:
                    break
        return found

    def status(self, command_id: str, claim_ttl: timedelta) -> Record | None:
        """The row, shown as ``running`` while a claim on it is held: one query over the row and its claim."""
        rows = self._with_claim(command_id)
        record, claim = rows.get("row"), rows.get("claim")
        if record is None or record.final or claim is None:
            return record
        held = not Claim(False, record, claimed_at=claim["claimedAt"]).stale(datetime.now(UTC), claim_ttl)
        return replace(record, status=Status.RUNNING) if held else record

    def _with_claim(self, command_id: str) -> dict[str, Any]:
        day, key = split_id(command_id)
        found: dict[str, Any] = {}
        query = "PartitionKey eq @day and ( RowKey eq @key or RowKey eq @claim )"  # spaces: the SDK splits on them
        for entity in self.table.query_entities(
            query, parameters={"day": day, "key": key, "claim": key + CLAIM_SUFFIX}
        ):
            if entity["RowKey"] == key:
                found["row"] = _record(command_id, entity)
            else:
                found["claim"] = entity
        return found

    def recent(
        self, status: Status | None, oldest_day: str, now: datetime, claim_ttl: timedelta = DEFAULT_CLAIM_TTL
    ) -> Iterator[Record]:
        """The rows with ``status`` (None: any) of the days from ``oldest_day`` to ``now``'s, newest first.

        Each day is one partition, queried by its PartitionKey and the status, newest day first, so a caller that
        stops early reads no further. A row whose create is claimed right now shows as ``running``, as `status`
        shows it (a second query per day, for claims taken within ``claim_ttl``). Claims themselves are not rows.
        """
        day = now
        while (partition := day_of(day)) >= oldest_day:
            yield from self._recent_day(partition, status, now, claim_ttl)
            day -= timedelta(days=1)

    def _recent_day(self, day: str, status: Status | None, now: datetime, claim_ttl: timedelta) -> list[Record]:
        stored = _STORED_AS.get(status, (status,)) if status else ()
        names = {f"s{n}": s.value for n, s in enumerate(stored)}
        query = "PartitionKey eq @day"
        if names:  # spaces around the brackets: the SDK splits the filter on them
            query += " and ( " + " or ".join(f"status eq @{name}" for name in names) + " )"
        records = [
            _record(f"{day}-{e['RowKey']}", e)
            for e in self.table.query_entities(query, parameters={"day": day, **names})
            if not e["RowKey"].endswith(CLAIM_SUFFIX)
        ]
        if status in (None, Status.QUEUED, Status.RESCHEDULED, Status.RUNNING) and records:
            held = {
                e["RowKey"].removesuffix(CLAIM_SUFFIX): e["claimedAt"]
                for e in self.table.query_entities(
                    "PartitionKey eq @day and claimedAt ge @since", parameters={"day": day, "since": now - claim_ttl}
                )
            }
            records = [
                replace(r, status=Status.RUNNING)
                if not r.final
                and (at := held.get(r.id.partition("-")[2]))
                and not Claim(False, r, claimed_at=at).stale(now, claim_ttl)
                else r
                for r in records
            ]
        if status is not None:
            records = [r for r in records if r.status is status]
        return sorted(records, key=lambda r: r.created or datetime.min.replace(tzinfo=UTC), reverse=True)

    # -- the worker ---------------------------------------------------------------------------------------------
    def claim(self, command_id: str, owner: str, now: datetime) -> Claim:
        """Claim a create (insert-if-absent); when someone holds it, what the row and the claim say."""
        from azure.core.exceptions import ResourceExistsError

        day, key = split_id(command_id)
        try:
            self.table.create_entity(
                {"PartitionKey": day, "RowKey": key + CLAIM_SUFFIX, "owner": owner, "claimedAt": now}
            )
            return Claim(ours=True)
        except ResourceExistsError:
            pass
        rows = self._with_claim(command_id)
        held = rows.get("claim")
        if held is None:  # released between the insert and the read: try once more next delivery
            return Claim(ours=False, record=rows.get("row"), claimed_at=now)
        return Claim(
            ours=False,
            record=rows.get("row"),
            owner=held.get("owner"),
            claimed_at=held.get("claimedAt"),
            etag=held.metadata.get("etag"),
        )

    def take_over(self, command_id: str, claim: Claim, owner: str, now: datetime) -> bool:
        """Take a stale claim over, if nobody else did first (If-Match on the claim's ETag). False without an ETag:
        a claim deleted between a delivery's insert and its read (a replay's requeue drops claims) is not taken
        over; the next delivery claims it."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import UpdateMode

        if not claim.etag:
            return False
        day, key = split_id(command_id)
        entity = {"PartitionKey": day, "RowKey": key + CLAIM_SUFFIX, "owner": owner, "claimedAt": now}
        try:
            self.table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=claim.etag, match_condition=MatchConditions.IfNotModified
            )
        except HttpResponseError as error:
            if error.status_code in (404, 412):
                return False
            raise
        return True

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
    ) -> bool:
        """Write a delivery's result to the row: only if it is unchanged since read (``etag``), or, without one
        (the caller owns the claim), only if it exists. False when someone else changed it first."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import UpdateMode

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
        if resource:
            entity.update(resourceType=resource.type, resourceId=resource.id, resourceHref=resource.href or "")
        error_text = _error_json(error)
        if error_text:
            entity["error"] = error_text
        children = list(children)
        if children:
            entity["children"] = json.dumps(children)
        try:  # If-Match: the ETag read, or "*" (the row must still exist)
            self.table.update_entity(
                entity, mode=UpdateMode.MERGE, etag=etag or "*", match_condition=MatchConditions.IfNotModified
            )
        except HttpResponseError as failure:
            if failure.status_code in (404, 412):
                return False
            raise
        return True

    # -- operations ---------------------------------------------------------------------------------------------
    def requeue(self, command_id: str, now: datetime, etag: str, *, requeued_by: str | None = None) -> bool:
        """Set a dead-lettered row back to ``queued``, so that its command, sent again under the same id, is
        carried out again rather than answered ``already_done`` (``python -m ops poison replay`` does this before
        it sends the command back).

        Attempts and waits go back to 0; the last error stays (it is what the command last met); a create's
        claim is dropped, so that the next delivery claims it anew. ``requeued_by`` (a replay's token) is kept
        in the row, for the replay to recognise its own requeue. One transaction, done only if the row is
        unchanged since it was read dead-lettered (``etag``) and the claim unchanged since read here; False when
        either changed first.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        day, key = split_id(command_id)
        row = {
            "PartitionKey": day,
            "RowKey": key,
            "status": Status.QUEUED.value,
            "attempts": 0,
            "waits": 0,
            "updated": now,
            "uncertain": False,
            "requeuedBy": requeued_by or "",
        }
        unchanged = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        operations: list[tuple[Any, ...]] = [("update", row, {"mode": UpdateMode.MERGE, **unchanged})]
        try:
            claim = self.table.get_entity(day, key + CLAIM_SUFFIX, select=["PartitionKey", "RowKey"])
        except ResourceNotFoundError:
            claim = None
        if claim is not None:
            claim_unchanged = {**unchanged, "etag": claim.metadata["etag"]}
            operations.append(("delete", {"PartitionKey": day, "RowKey": key + CLAIM_SUFFIX}, claim_unchanged))
        try:
            self.table.submit_transaction(operations)
        except HttpResponseError as failure:  # TableTransactionError is one
            if failure.status_code in (404, 412):
                return False
            raise
        return True

    # -- retention ----------------------------------------------------------------------------------------------
    def drop_days_before(self, oldest_kept: datetime, lookback_days: int = 30) -> int:
        """Delete every row of the days before ``oldest_kept``'s, looking back ``lookback_days`` days; the count.

        Each day is one partition: it is read by its PartitionKey alone and deleted 100 rows per transaction.
        """
        dropped = 0
        for back in range(1, lookback_days + 1):
            day = day_of(oldest_kept - timedelta(days=back))
            keys = [
                e["RowKey"]
                for e in self.table.query_entities("PartitionKey eq @day", parameters={"day": day}, select=["RowKey"])
            ]
            for start in range(0, len(keys), 100):
                self.table.submit_transaction(
                    [("delete", {"PartitionKey": day, "RowKey": k}) for k in keys[start : start + 100]]
                )
            dropped += len(keys)
        return dropped


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
        etag=getattr(entity, "metadata", {}).get("etag"),
    )

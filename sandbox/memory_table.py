"""`MemoryTable`: the subset of ``azure.data.tables.TableClient`` the ledger and the shared pacing schedule use, in
memory, with Table Storage's conditional writes, for tests and the benchmarks' discrete-event model.

Inserts fail on an existing row (409), updates and deletes fail on a changed ETag (412) or a missing row (404), a
transaction (creates, updates, deletes) is all or nothing, and every write gives a new ETag. ``step`` is called
before every operation (the create-protocol explorer's scheduler hook, `tests/integration/interleavings.py`), and
with ``answer_points`` also after an update has landed, before its caller hears of it; ``observe`` is told what
each caller saw. ``ops`` counts the operations by kind.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode


def _error(status: int, message: str) -> HttpResponseError:
    error = HttpResponseError(message=message)
    error.status_code = status
    return error


def _nothing(_: str) -> None:
    pass


class MemoryTable:
    """A table in memory that honours ETags as Table Storage does (see the module's docstring)."""

    def __init__(
        self,
        step: Callable[[str], None] = _nothing,
        observe: Callable[[str], None] = _nothing,
        answer_points: bool = False,
    ) -> None:
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        self._step = step
        self._observe = observe
        self._answer_points = answer_points
        self._versions = itertools.count(1)
        self.ops: Counter[str] = Counter()

    def _seen(self, operation: Callable[[], Any]) -> Any:
        """Run ``operation``, noting what the caller saw (its answer or its error) for the state's fingerprint."""
        try:
            result = operation()
        except Exception as error:
            self._observe(f"-> {type(error).__name__} {getattr(error, 'status_code', '')}")
            raise
        shown = {**result, "@etag": result.metadata["etag"]} if isinstance(result, TableEntity) else result
        self._observe(f"-> {json.dumps(shown, default=str, sort_keys=True)}")
        return result

    def _entity(self, key: tuple[str, str]) -> TableEntity:
        row, version = self.rows[key]
        entity = TableEntity(copy.deepcopy(row))
        entity._metadata = {"etag": f'W/"{version}"'}
        return entity

    def _check(self, key: tuple[str, str], etag: str | None, match: Any) -> None:
        if key not in self.rows:
            error = ResourceNotFoundError(message="ResourceNotFound")
            error.status_code = 404
            raise error
        if match == MatchConditions.IfNotModified and etag not in (None, "*", f'W/"{self.rows[key][1]}"'):
            raise _error(412, "UpdateConditionNotSatisfied")

    def get_entity(self, partition_key: str, row_key: str, **_: Any) -> TableEntity:
        self.ops["read"] += 1
        self._step(f"table get {row_key[:6]}")
        return self._seen(lambda: self._get((partition_key, row_key)))

    def _get(self, key: tuple[str, str]) -> TableEntity:
        if key not in self.rows:
            raise ResourceNotFoundError(message="ResourceNotFound")
        return self._entity(key)

    def query_entities(self, query_filter: str, *, parameters: dict[str, Any] | None = None, **_: Any) -> list:
        """The rows of one partition: only ``PartitionKey eq @name`` (with ``parameters``) or ``PartitionKey eq
        'value'`` is understood. One request, as one page of Table Storage's query is."""
        self.ops["query"] += 1
        self._step("table query")
        left, _, right = query_filter.partition(" eq ")
        if left.strip() != "PartitionKey" or not right.strip():
            raise NotImplementedError(query_filter)
        value = right.strip()
        partition = (parameters or {})[value[1:]] if value.startswith("@") else value.strip("'")
        return [self._entity(key) for key in sorted(self.rows) if key[0] == partition]

    def create_entity(self, entity: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.ops["insert"] += 1
        self._step("table insert")
        return self._seen(lambda: self._insert(entity))

    def _insert(self, entity: dict[str, Any]) -> dict[str, Any]:
        key = (entity["PartitionKey"], entity["RowKey"])
        if key in self.rows:
            raise ResourceExistsError(message="EntityAlreadyExists")
        return self._write(key, dict(entity))

    def update_entity(
        self, entity: dict[str, Any], mode: Any = UpdateMode.MERGE, etag: str | None = None, match_condition=None, **_
    ) -> dict[str, Any]:
        self.ops["update"] += 1
        self._step("table update")
        answer = self._seen(lambda: self._update(entity, mode, etag, match_condition))
        if self._answer_points:
            self._step("table update answered")  # the write has landed; its caller has not heard yet (or dies first)
        return answer

    def _update(self, entity: dict[str, Any], mode: Any, etag: str | None, match_condition: Any) -> dict[str, Any]:
        key = (entity["PartitionKey"], entity["RowKey"])
        self._check(key, etag, match_condition)
        row = {**self.rows[key][0], **entity} if mode == UpdateMode.MERGE else dict(entity)
        return self._write(key, row)

    def submit_transaction(self, operations: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        self.ops["transaction"] += 1
        self._step("table transaction")
        return self._seen(lambda: self._transaction(operations))

    def _transaction(self, operations: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        before = dict(self.rows)
        answers = []
        try:
            for operation in operations:
                kind, entity = operation[0], operation[1]
                options = operation[2] if len(operation) > 2 else {}
                key = (entity["PartitionKey"], entity["RowKey"])
                if kind == "create":
                    if key in self.rows:
                        error = TableTransactionError(message="EntityAlreadyExists")
                        error.error_code, error.status_code = "EntityAlreadyExists", 409
                        raise error
                    answers.append(self._write(key, dict(entity)))
                elif kind == "update":
                    self._check(key, options.get("etag"), options.get("match_condition"))
                    merged = options.get("mode", UpdateMode.MERGE) == UpdateMode.MERGE
                    answers.append(self._write(key, {**self.rows[key][0], **entity} if merged else dict(entity)))
                elif kind == "delete":
                    self._check(key, options.get("etag"), options.get("match_condition"))
                    del self.rows[key]
                    answers.append({})
                else:
                    raise NotImplementedError(kind)
        except Exception:
            self.rows = before
            raise
        return answers

    def _write(self, key: tuple[str, str], row: dict[str, Any]) -> dict[str, Any]:
        version = next(self._versions)
        self.rows[key] = (row, version)
        return {"etag": f'W/"{version}"'}

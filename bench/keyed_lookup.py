"""Keyed POSTs against a large ledger: what accepting one command with an idempotency key (`shared.intake.accept`, on
Azurite's table and queue services) costs on an empty ledger table and on one holding 200,000 retained rows over 7
day-partitions, one in ten keyed with its index row. Table requests are counted as sent (`RequestLog`, as in benchmark
7) for a new key and for a repeated one, on both tables, and should not depend on the table's size: a new key is a point
insert of its index row, the row's transaction and the one marking it sent; a repeat is that insert refused, a point
read of the index row, the transaction refused and a point read of the row. Wall time is the median of 200 keyed POSTs
with new keys on each table, after a warm-up, with the median answer time of each kind of table request in them. Where
point operations are index lookups the ratio should be near 1; Azurite (LokiJS) finds a row by its PartitionKey index
and then scans that partition for the RowKey, so here the two transactions in today's partition (about 28,600 rows) take
longer and the ratio is above 1, while the insert into the key index's small partition does not. Run it with ``python -m
bench.keyed_lookup``; not part of ``make bench``.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.ledger_cost import RequestLog, Sent, tally
from shared.commands import Command, validate
from shared.intake import accept
from shared.ledger import Ledger, day_of, idempotency_row_key, new_id
from shared.queues import CommandQueue
from shared.settings import COMMAND_QUEUE, POISON_QUEUE

ROWS = 200_000  # retained rows in the large table
DAYS = 7  # day-partitions they spread over, ending today
KEYED_EVERY = 10  # one retained row in ten carries an idempotency key
CHUNK = 100  # rows per insert_absent call (one transaction)
POSTS = 200  # timed keyed POSTs per table
WARMUP = 20
THREADS = 4  # concurrent requests while filling the table


def _command(name: str, keyed: bool = True) -> Command:
    """A delete of run ``run-<name>``, keyed ``bench-<name>`` or not: the same command every time it is asked for."""
    body: dict[str, Any] = {"action": "delete", "resource": "run", "id": f"run-{name}"}
    if keyed:
        body["idempotencyKey"] = f"bench-{name}"
    return validate(body)


def fill(ledger: Ledger, now: datetime) -> int:
    """`ROWS` sent rows over `DAYS` days ending with ``now``'s, one in `KEYED_EVERY` keyed and bound to its key by
    an index row (`Ledger.key_owner`), as `accept` would have left them on their day; the number of keyed rows."""
    oldest = day_of(now - timedelta(days=DAYS))
    keyed = 0
    with ThreadPoolExecutor(THREADS, thread_name_prefix="fill") as pool:
        for offset in range(DAYS):
            when = now - timedelta(days=offset)
            rows: list[tuple[str, dict[str, Any]]] = []
            keys: list[tuple[str, str]] = []
            for index in range(offset, ROWS, DAYS):
                command = _command(f"retained-{index}", keyed=index % KEYED_EVERY == 0)
                row_key = idempotency_row_key(command.idempotency_key) if command.idempotency_key else ""
                command_id = f"{day_of(when)}-{row_key}" if row_key else new_id(when)
                rows.append((command_id, replace(command, command_id=command_id).enqueued(when).to_message()))
                if row_key:
                    keys.append((row_key, command_id))
            chunks = [rows[start : start + CHUNK] for start in range(0, len(rows), CHUNK)]
            list(pool.map(lambda chunk, when=when: ledger.insert_absent(chunk, when, sent=True), chunks))
            list(pool.map(lambda key: ledger.key_owner(*key, oldest), keys))
            keyed += len(keys)
    return keyed


def _post(queue: CommandQueue, ledger: Ledger, command: Command, new: bool) -> float:
    """Seconds to accept ``command`` alone; raises unless it was enqueued (new) or found held (a repeat)."""
    began = time.perf_counter()
    accepted = accept([command], queue, ledger, datetime.now(UTC))
    seconds = time.perf_counter() - began
    if accepted.enqueued != [new]:
        raise RuntimeError(f"{command.idempotency_key}: enqueued {accepted.enqueued}, expected {[new]}")
    return seconds


def measure(clients: dict[str, Any], ledger: Ledger, tables: RequestLog, label: str, repeat: Command) -> dict[str, Any]:
    """On the table as it is: the median seconds of `POSTS` keyed POSTs with new keys, and their table requests;
    the table requests of one more new key and of ``repeat``, a key the ledger holds. Empties the command queue."""
    queue = CommandQueue(clients[COMMAND_QUEUE], clients[POISON_QUEUE])
    for index in range(WARMUP):
        _post(queue, ledger, _command(f"{label}-warmup-{index}"), new=True)
    tables.take()
    seconds = [_post(queue, ledger, _command(f"{label}-{index}"), new=True) for index in range(POSTS)]
    timed = tables.take()
    _post(queue, ledger, _command(f"{label}-counted"), new=True)
    counted_new = tables.take()
    _post(queue, ledger, repeat, new=False)
    counted_repeat = tables.take()
    clients[COMMAND_QUEUE].clear_messages()
    return {"median": statistics.median(seconds), "timed": timed, "new": counted_new, "repeat": counted_repeat}


def _requests(sent: list[Sent]) -> str:
    return f"{len(sent)} ({tally(sent)})"


def _each(sent: list[Sent]) -> str:
    """``"insert 1.10 ms, transaction 4.20 ms"``: the median answer time of each kind of request."""
    labels = dict.fromkeys(s.label for s in sent)
    return ", ".join(f"{n} {statistics.median(s.seconds for s in sent if s.label == n) * 1000:.2f} ms" for n in labels)


def main() -> None:
    from sandbox.azurite import Azurite, app_queues

    started = time.perf_counter()
    with Azurite() as azurite:
        clients = app_queues(azurite.connection_string)
        environ = {"AzureWebJobsStorage": azurite.connection_string}
        tables = RequestLog()
        ledger = Ledger.from_environment(environ, **tables.hooks)
        empty = measure(clients, ledger, tables, "empty", repeat=_command(f"empty-{POSTS - 1}"))
        filling = time.perf_counter()
        keyed = fill(Ledger.from_environment(environ), datetime.now(UTC))
        filled = time.perf_counter() - filling
        # retained-20 is keyed and on the oldest day: 20 % KEYED_EVERY == 0, 20 % DAYS == DAYS - 1
        large = measure(clients, ledger, tables, "large", repeat=_command("retained-20"))
    ratio = large["median"] / empty["median"]
    rows = [
        ("table requests, new key", _requests(empty["new"]), _requests(large["new"])),
        ("table requests, repeated key", _requests(empty["repeat"]), _requests(large["repeat"])),
        (f"median of {POSTS} keyed POSTs", f"{empty['median'] * 1000:.2f} ms", f"{large['median'] * 1000:.2f} ms"),
        ("  median table request in them", _each(empty["timed"]), _each(large["timed"])),
        ("large / empty, median wall time", "", f"{ratio:.2f}"),
    ]
    header = ("keyed POST (accept, one command)", "empty table", f"{ROWS:,} rows")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(
        f"filled {ROWS:,} rows ({keyed:,} keyed, with their index rows) over {DAYS} days in {filled:.0f} s; "
        f"the whole run {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()

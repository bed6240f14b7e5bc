"""Benchmark 7: what the command ledger costs, with it and without it, against Azurite's table and queue services
and the simulator on loopback.

- Acceptance: the table requests ``POST /api/commands`` (`shared.http_api.accept_commands`, on Azurite's queue)
  makes to accept a batch of 100 commands, and its wall time with and without the ledger for batches of 1 and 100.
- The worker: the table requests `Worker.handle` makes per command, by kind, for a fan-out and for deliveries of
  commands that are done already.
- Wall time: deletes through a ledger-backed `Worker.handle` against the same DELETEs from a bare
  `requests.Session`, in interleaved blocks with the worker without the ledger, as in benchmark 1.

Requests are counted as sent: the ledger is built as production builds it (`Ledger.from_environment`), with
azure-core's request and response hooks recording each HTTP request its table client sends, retries included
(`RequestLog`); the acceptance path's queue client is counted the same way.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from bench.harness import MemoryQueue, Otel, ca_bundle, child_simulator, drain, make_worker, simulator_settings
from bench.table import Table
from bench.workload import KINDS, NEW_IMODEL, bare_path, seed_connections, service_token
from shared.commands import validate
from shared.http_api import Reply, accept_commands
from shared.ledger import Ledger, new_id
from shared.outcomes import Outcome
from shared.queues import CommandQueue
from shared.settings import COMMAND_QUEUE, POISON_QUEUE
from shared.worker import Worker

# Table requests to accept a batch of up to 100 commands: the rows' transaction, and the one marking them sent.
ACCEPT_REQUESTS_TARGET = 2
WORKER_ROUND_TRIPS_TARGET = 2  # table requests per command in the worker: the read and the result
CREATE_ROUND_TRIPS_TARGET = 3  # a create: the read, the lease and the result
BATCH = 100  # the most commands one POST /api/commands takes
FAN_OUT_IMODEL = "5b1f0d7e-2c64-4f0b-9d3e-7a2b8c9e4f11"


@dataclass(frozen=True)
class LedgerSizes:
    deletes: int  # per variant, timed
    blocks: int  # interleaved blocks per variant
    warmup: int
    per_kind: int  # commands per kind, counted
    fan_out: int  # connections of the iModel a counted delete-by-iModel fans out to
    singles: int  # timed POSTs of one command, per variant
    batches: int  # timed POSTs of 100 commands, per variant
    keyed: int  # commands with idempotency keys in the counted keyed POST


FULL = LedgerSizes(1000, 10, 50, 20, 20, 200, 10, 100)
SMOKE = LedgerSizes(40, 2, 5, 3, 3, 4, 1, 10)


# -- counting requests as sent ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    """One HTTP request as sent: its method, its URL's path, and the seconds until its answer arrived."""

    method: str
    path: str
    seconds: float

    @property
    def label(self) -> str:
        """What the request did to a table: read, query, insert, merge, replace, delete or transaction."""
        if self.path.endswith("/$batch"):
            return "transaction"
        if self.method == "GET":
            return "query" if self.path.endswith("()") else "read"
        verbs = {"POST": "insert", "PATCH": "merge", "MERGE": "merge", "PUT": "replace", "DELETE": "delete"}
        return verbs.get(self.method, self.method)


class RequestLog:
    """The HTTP requests an azure-core client sends, recorded by its ``raw_request_hook`` and ``raw_response_hook``
    (given to the client as `hooks`). Both run once per request sent, after the retry policy: a retry is another
    request. A request that gets no answer at all is not recorded."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    @property
    def hooks(self) -> dict[str, Callable[[Any], None]]:
        return {"raw_request_hook": self._sending, "raw_response_hook": self._answered}

    @staticmethod
    def _sending(request: Any) -> None:
        request.context["bench.sent_at"] = time.perf_counter()

    def _answered(self, response: Any) -> None:
        http = response.http_request
        seconds = time.perf_counter() - response.context["bench.sent_at"]
        self.sent.append(Sent(http.method, urlsplit(http.url).path, seconds))

    def take(self) -> list[Sent]:
        """The requests sent since the last call."""
        sent, self.sent = self.sent, []
        return sent


def tally(sent: list[Sent]) -> str:
    """``"read 20, merge 20"``: the requests by what they did, in the order first seen."""
    return ", ".join(f"{label} {n}" for label, n in Counter(s.label for s in sent).items()) or "none"


# -- the benchmark ------------------------------------------------------------------------------------------------
@contextmanager
def azurite_starting() -> Iterator[Callable[[], Any]]:
    """Azurite (`sandbox.azurite.Azurite`) starting in a thread, so its second of start-up overlaps the counting
    benchmarks; the callable waits for it and returns it (or raises why it did not start). Stopped on exit."""
    from sandbox.azurite import Azurite

    azurite = Azurite()
    with ThreadPoolExecutor(1, thread_name_prefix="azurite-start") as pool:
        starting = pool.submit(azurite.start)
        try:
            yield starting.result
        finally:
            wait([starting])
            azurite.stop()


def ledger_cost(table: Table, smoke: bool, otel: Otel, simulator: type, azurite: Any) -> None:
    """Benchmark 7 on one started Azurite (tables and queues): acceptance, the worker's round trips, its wall time."""
    from sandbox.azurite import app_queues

    sizes = SMOKE if smoke else FULL
    app_queues(azurite.connection_string)
    tables = RequestLog()
    ledger = Ledger.from_environment({"AzureWebJobsStorage": azurite.connection_string}, **tables.hooks)
    acceptance(table, sizes, azurite.connection_string, tables, ledger)
    worker_round_trips(table, sizes, otel, simulator, tables, ledger)
    worker_wall_time(table, sizes, otel, tables, ledger, azurite.process.pid)


def accepted(ledger: Ledger, messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages as `shared.intake.accept` enqueues them: each with a new id, its queued row in the ledger
    (one transaction per 100) and its first-enqueued time."""
    now = datetime.now(UTC)
    commands = [replace(validate(message), command_id=new_id(now)).enqueued(now) for message in messages]
    ledger.insert_absent([(c.command_id or "", c.to_message()) for c in commands], now)
    return [c.to_message() for c in commands]


# -- acceptance ---------------------------------------------------------------------------------------------------
def _body(count: int, keyed: bool = False) -> bytes:
    """A POST /api/commands body of ``count`` deletes (one object for one command), with idempotency keys or not."""
    commands: list[dict[str, Any]] = [
        {"action": "delete", "resource": "run", "id": f"run-{uuid.uuid4().hex[:12]}"} for _ in range(count)
    ]
    if keyed:
        for command in commands:
            command["idempotencyKey"] = f"bench-{uuid.uuid4()}"
    return json.dumps(commands if count > 1 else commands[0]).encode()


def acceptance(table: Table, sizes: LedgerSizes, connection: str, tables: RequestLog, ledger: Ledger) -> None:
    """Wall time with and without the ledger for batches of 1 and 100, interleaved; the table requests of the first
    batch of 100 with the ledger, and of a batch whose commands carry idempotency keys."""
    from azure.storage.queue import QueueServiceClient

    queues = RequestLog()
    service = QueueServiceClient.from_connection_string(connection, **queues.hooks)
    commands = service.get_queue_client(COMMAND_QUEUE)
    queue = CommandQueue(commands, service.get_queue_client(POISON_QUEUE))

    def post(body: bytes, with_ledger: bool) -> Reply:
        reply = accept_commands(body, None, lambda: queue, (lambda: ledger) if with_ledger else (lambda: None))
        if reply.status != 202:
            raise RuntimeError(f"POST /api/commands answered {reply.status}: {reply.body}")
        return reply

    variants = ("ledger", "none")
    single = _body(1)  # no idempotency keys: every POST of a body is new commands
    for variant in variants:  # warm-up
        post(single, with_ledger=variant == "ledger")
    counted: dict[str, tuple[Reply, list[Sent], list[Sent]]] = {}
    timed: dict[int, tuple[dict[str, float], int]] = {}
    for size, repeats in ((1, sizes.singles), (BATCH, sizes.batches)):
        body = _body(size)
        seconds = dict.fromkeys(variants, 0.0)
        for index in range(repeats):
            for variant in variants if index % 2 == 0 else variants[::-1]:
                tables.take(), queues.take()
                began = time.perf_counter()
                reply = post(body, with_ledger=variant == "ledger")
                seconds[variant] += time.perf_counter() - began
                if size == BATCH and variant == "ledger" and index == 0:
                    counted["plain"] = (reply, tables.take(), queues.take())
            if size > 1 or index % 50 == 49:
                commands.clear_messages()
        timed[size] = (seconds, repeats)
    tables.take(), queues.take()
    keyed_reply = post(_body(sizes.keyed, keyed=True), with_ledger=True)
    counted["keyed"] = (keyed_reply, tables.take(), queues.take())
    commands.clear_messages()

    reply, sent, on_queue = counted["plain"]
    transactions = sum(s.label == "transaction" for s in sent)
    table.add(
        "ledger.accept_requests",
        f"Ledger: table requests to accept a batch of {BATCH} commands (POST /api/commands, one partition)",
        len(sent),
        f"{len(sent)} ({tally(sent)}; {reply.body['accepted']} accepted; the queue: {len(on_queue)} requests)",
        f"= {ACCEPT_REQUESTS_TARGET}",
        len(sent) == ACCEPT_REQUESTS_TARGET == transactions and reply.body["accepted"] == BATCH,
    )
    _, keyed_sent, _ = counted["keyed"]
    table.add(
        "ledger.accept_keyed",
        f"Ledger: table requests to accept a batch of {sizes.keyed} commands, each with an idempotency key",
        len(keyed_sent),
        f"{len(keyed_sent)} ({tally(keyed_sent)}: an insert of each key's index row, then the rows' transaction "
        "and the one marking them sent)",
    )
    table.counts.update(
        {
            "ledger.accept.batch": BATCH,
            "ledger.accept.accepted": reply.body["accepted"],
            "ledger.accept.table_requests": len(sent),
            "ledger.accept.transactions": transactions,
            "ledger.accept.queue_requests": len(on_queue),
            "ledger.accept_keyed.commands": sizes.keyed,
            "ledger.accept_keyed.accepted": keyed_reply.body["accepted"],
            "ledger.accept_keyed.table_requests": len(keyed_sent),
            "ledger.accept_keyed.transactions": sum(s.label == "transaction" for s in keyed_sent),
        }
    )
    for size, (seconds, repeats) in timed.items():
        ratio = seconds["ledger"] / seconds["none"]
        mean = {variant: seconds[variant] / repeats * 1000 for variant in variants}
        table.add(
            f"ledger.accept_{size}",
            f"Ledger: POST /api/commands (accept_commands on Azurite's queue), batch of {size}, with / without the "
            "ledger, wall time",
            ratio,
            f"{ratio:.2f} ({mean['ledger']:.1f} ms / {mean['none']:.1f} ms per batch, {repeats} of each, interleaved)",
        )
        table.counts[f"ledger.accept_{size}.batches"] = repeats


# -- the worker's round trips -------------------------------------------------------------------------------------
def _counted_row(
    table: Table,
    key: str,
    label: str,
    measured: tuple[list[Sent], int, list[Outcome]],
    expected: Outcome,
    limit: int | None = WORKER_ROUND_TRIPS_TARGET,
    then: str = "",
) -> None:
    """A row of table round trips per command (``limit`` None: informational), and the counts behind it."""
    sent, calls, outcomes = measured
    commands = len(outcomes)
    per = len(sent) / commands
    ended = sum(outcome is expected for outcome in outcomes)
    table.add(
        f"ledger.worker_{key}",
        f"Ledger, worker: table round trips per command: {label}",
        per,
        f"{per:.2f} ({tally(sent)} for {commands}; {ended} {expected.value}; API calls {calls / commands:.2f} "
        f"per command{then})",
        f"≤ {limit}" if limit is not None else "—",
        per <= limit and ended == commands if limit is not None else None,
    )
    table.counts[f"ledger.worker.{key}.commands"] = commands
    table.counts[f"ledger.worker.{key}.table_requests"] = len(sent)
    table.counts[f"ledger.worker.{key}.api_calls"] = calls
    table.counts[f"ledger.worker.{key}.{expected.value}"] = ended


def worker_round_trips(
    table: Table, sizes: LedgerSizes, otel: Otel, simulator: type, tables: RequestLog, ledger: Ledger
) -> None:
    """Table requests per command through a ledger-backed `Worker.handle`, by kind (the kinds of benchmark 3);
    a delete by iModel that fans out; and second deliveries of commands that are done."""
    with simulator(rate_limits={}) as sim, ca_bundle(sim.ca_path):
        sim.add_imodel(NEW_IMODEL)
        sim.add_connection(NEW_IMODEL, "someone else's")
        queue = MemoryQueue()
        settings = simulator_settings(sim, ITWIN_RATE_LIMITS="clashdetection=10000")
        worker = make_worker(settings, otel.telemetry, queue, ledger=ledger)
        worker.api.client.tokens.token()

        def measure(messages: list[dict[str, Any]]) -> tuple[list[Sent], int, list[Outcome]]:
            sim.clear_requests()
            tables.take()
            outcomes = [worker.handle(json.dumps(message).encode()) for message in messages]
            return tables.take(), len(sim.api_calls()), outcomes

        delivered: dict[str, list[dict[str, Any]]] = {}
        for kind in KINDS:
            delivered[kind.key] = accepted(ledger, [kind.prepare(sim, i) for i in range(sizes.per_kind)])
            limit = CREATE_ROUND_TRIPS_TARGET if kind.key.startswith("create") else WORKER_ROUND_TRIPS_TARGET
            _counted_row(table, kind.key, kind.label, measure(delivered[kind.key]), kind.outcome, limit)

        for i in range(sizes.fan_out):
            sim.add_connection(FAN_OUT_IMODEL, f"fan-out-{i}")
        by_imodel = {"action": "delete", "resource": "connection", "iModelId": FAN_OUT_IMODEL}
        fan_out = measure(accepted(ledger, [by_imodel]))
        tables.take()
        children = drain(queue, worker, 1)
        child_sent = tables.take()
        _counted_row(
            table,
            "fan_out",
            f"delete connection by iModel (fan-out to {sizes.fan_out}: read, its children's rows, result)",
            fan_out,
            Outcome.FANNED_OUT,
            limit=None,
            then=f"; then {len(child_sent) / sizes.fan_out:.2f} per child delete, {tally(child_sent)}",
        )
        table.counts["ledger.worker.fan_out.children_succeeded"] = children.get(Outcome.SUCCEEDED.value, 0)
        table.counts["ledger.worker.fan_out.children_table_requests"] = len(child_sent)

        for key, label in (("create_run", "create run"), ("delete_run", "delete run by id")):
            again = measure(delivered[key])
            _counted_row(table, f"again_{key}", f"{label}, delivered again once done", again, Outcome.ALREADY_DONE)


# -- wall time of the worker --------------------------------------------------------------------------------------
def _handle_all(worker: Worker, messages: list[dict[str, Any]]) -> Callable[[], int]:
    """The messages through `Worker.handle`, as the queue trigger passes them (bytes); the number that succeeded."""
    raw = [json.dumps(message).encode() for message in messages]

    def run() -> int:
        return sum(worker.handle(body) is Outcome.SUCCEEDED for body in raw)

    return run


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds process ``pid`` has used (Linux ``/proc``); None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_wall_time(
    table: Table, sizes: LedgerSizes, otel: Otel, tables: RequestLog, ledger: Ledger, azurite_pid: int
) -> None:
    """Deletes by id: the worker with the ledger, a bare session and the worker without it, in interleaved blocks;
    Azurite's own CPU time while the ledger's blocks run."""
    block = sizes.deletes // sizes.blocks
    per_variant = sizes.warmup + block * sizes.blocks
    names = ("ledger", "bare", "worker")
    with child_simulator() as sim, ca_bundle(sim.ca_path), requests.Session() as session:
        token = service_token(session, sim)
        ids = seed_connections(sim.url, token, per_variant * len(names))
        chunks = {name: ids[i * per_variant : (i + 1) * per_variant] for i, name in enumerate(names)}
        queue = MemoryQueue()
        workers = {
            "ledger": make_worker(sim.settings(), otel.telemetry, queue, ledger=ledger),
            "worker": make_worker(sim.settings(), otel.telemetry, queue),
        }
        deletes = {n: [{"action": "delete", "resource": "connection", "id": i} for i in chunks[n]] for n in names}
        messages = {"ledger": accepted(ledger, deletes["ledger"]), "worker": deletes["worker"]}

        def path(name: str, start: int, stop: int) -> Callable[[], int]:
            if name == "bare":
                return bare_path(session, sim.url, token, chunks[name][start:stop])
            return _handle_all(workers[name], messages[name][start:stop])

        done = {name: path(name, 0, sizes.warmup)() for name in names}
        tables.take()
        seconds = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        azurite_cpu: float | None = None  # stays None where /proc cannot be read
        blocks: dict[str, list[float]] = {name: [] for name in names}
        for index in range(sizes.blocks):
            for name in names if index % 2 == 0 else names[::-1]:
                start = sizes.warmup + index * block
                run = path(name, start, start + block)
                azurite_before = cpu_seconds(azurite_pid) if name == "ledger" else None
                began, began_cpu = time.perf_counter(), time.process_time()
                done[name] += run()
                blocks[name].append(time.perf_counter() - began)
                seconds[name] += blocks[name][-1]
                cpu[name] += time.process_time() - began_cpu
                azurite_after = cpu_seconds(azurite_pid) if name == "ledger" else None
                if azurite_before is not None and azurite_after is not None:
                    azurite_cpu = (azurite_cpu or 0.0) + azurite_after - azurite_before
        sent = tables.take()  # only the ledger's worker uses the table
    measured = block * sizes.blocks
    ratio, without = seconds["ledger"] / seconds["bare"], seconds["worker"] / seconds["bare"]
    median_block = {
        name: statistics.median(w / b for w, b in zip(blocks[name], blocks["bare"], strict=True))
        for name in ("ledger", "worker")
    }
    extra = (seconds["ledger"] - seconds["worker"]) / measured * 1e6
    in_table = sum(s.seconds for s in sent) / measured * 1e6
    median = statistics.median(s.seconds for s in sent) * 1e6 if sent else 0.0
    cpu_extra = (cpu["ledger"] - cpu["worker"]) / measured * 1e6
    azurite = f"{azurite_cpu / len(sent) * 1e6:.0f} µs" if azurite_cpu is not None and sent else "(not measured)"
    table.add(
        "ledger.overhead_ratio",
        f"Ledger: {measured:,} deletes via Worker.handle with the ledger (Azurite's tables) / bare requests.Session, "
        "wall time",
        ratio,
        f"{ratio:.2f} ({seconds['ledger']:.2f} s / {seconds['bare']:.2f} s; {sizes.blocks} interleaved blocks of "
        f"{block}, median block {median_block['ledger']:.2f}; the worker without the ledger {without:.2f}, median "
        f"block {median_block['worker']:.2f})",
    )
    table.add(
        "ledger.overhead_per_call",
        "Ledger: per delete, what the ledger adds to the worker (wall; CPU of this process) and its table round trips",
        extra,
        f"wall +{extra:.0f} µs, of which {len(sent) / measured:.0f} table round trips {in_table:.0f} µs (median "
        f"{median:.0f} µs each; {tally(sent)}); CPU +{cpu_extra:.0f} µs here, and Azurite's own {azurite} per "
        "table request",
    )
    table.counts.update(
        {
            "ledger.overhead.deletes": measured,
            "ledger.overhead.table_requests": len(sent),
            "ledger.overhead.succeeded": sum(done.values()),
            "ledger.overhead.expected": per_variant * len(names),
        }
    )

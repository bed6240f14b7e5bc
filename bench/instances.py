"""The parts of the multi-instance benchmark that run in other processes: the simulator with a control pipe, the
shared command queue, and one worker instance.

Every part is a separate OS process started with ``spawn``: an instance imports what a worker instance imports and
nothing of the measuring process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.managers import BaseManager
from typing import Any

from bench.harness import MemoryQueue, Otel, drain, make_worker

SPAWN = multiprocessing.get_context("spawn")
API = "clashdetection"
IMODEL = "a0471655-6b18-419e-ab01-ebf4fbff9dff"
SAMPLE_EVERY = 0.2  # seconds between samples of an instance's allowed rate


# -- the simulator, in its own process, with a pipe to change its limits and read what it recorded -------------
def _serve_simulator(conn: Connection, rate_limits: dict[str, float]) -> None:
    from sandbox.itwin_platform import Simulator

    with Simulator(rate_limits=rate_limits) as sim:
        conn.send(
            {"url": sim.url, "ca_path": sim.ca_path, "client_id": sim.client_id, "client_secret": sim.client_secret}
        )
        while True:
            command, *args = conn.recv()
            if command == "limit":
                api, rate = args
                sim.rate_limits = {**sim.rate_limits, api: rate}
                conn.send(None)
            elif command == "clear":
                sim.clear_requests()
                sim.reset_rate_limits()
                conn.send(len(sim.runs))
            elif command == "calls":
                to_wall = time.time() - time.monotonic()
                calls = [(r.started + to_wall, r.status) for r in sim.api_calls(args[0])]
                conn.send({"calls": calls, "runs": len(sim.runs)})
            else:
                conn.send(None)
                return


class Platform:
    """The simulator in a child process: ``set_limit`` replaces an API's rate at once, as a platform would."""

    def __init__(self, conn: Connection, info: dict[str, str]) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.url = info["url"]
        self.ca_path = info["ca_path"]
        self.client_id = info["client_id"]
        self.client_secret = info["client_secret"]

    def _ask(self, *command: Any) -> Any:
        with self._lock:
            self._conn.send(command)
            return self._conn.recv()

    def set_limit(self, api: str, rate: float) -> None:
        self._ask("limit", api, rate)

    def clear(self) -> int:
        """Forget recorded calls and the calls counted against the limits; returns the runs created so far."""
        return self._ask("clear")

    def calls(self, api: str) -> tuple[list[tuple[float, int | None]], int]:
        """Each recorded call to ``api`` as (wall-clock time, status), and the runs created so far."""
        answer = self._ask("calls", api)
        return [tuple(call) for call in answer["calls"]], answer["runs"]


@contextmanager
def platform(rate_limits: dict[str, float]) -> Iterator[Platform]:
    parent, child = SPAWN.Pipe()
    process = SPAWN.Process(target=_serve_simulator, args=(child, rate_limits), name="simulator", daemon=True)
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the simulator process did not start within 60 s")
        handle = Platform(parent, parent.recv())
        yield handle
        handle._ask("stop")
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join()


# -- the shared command queue ------------------------------------------------------------------------------------
_QUEUE: list[MemoryQueue] = []


def _commands() -> MemoryQueue:
    if not _QUEUE:
        _QUEUE.append(MemoryQueue())
    return _QUEUE[0]


class QueueServer(BaseManager):
    """One `MemoryQueue` in a server process that every instance reaches over a local socket, as instances reach
    one storage queue: a message sent with a visibility delay is handed out again only once the delay is over."""


QueueServer.register("commands", callable=_commands)


@dataclass(frozen=True)
class SharedQueue:
    """Where the queue server listens, and the key instances need to connect."""

    address: Any
    authkey: bytes

    def connect(self) -> Any:
        """A proxy of the shared `MemoryQueue` (one connection per thread that uses it)."""
        server = QueueServer(address=self.address, authkey=self.authkey)
        server.connect()
        return server.commands()  # type: ignore[attr-defined]


@contextmanager
def queue_server() -> Iterator[SharedQueue]:
    authkey = os.urandom(32)
    server = QueueServer(ctx=SPAWN, authkey=authkey)
    server.start()
    try:
        yield SharedQueue(server.address, authkey)
    finally:
        server.shutdown()


def create_run(index: int) -> str:
    body = {"testId": f"scale-test-{index}", "iModelId": IMODEL, "namedVersionId": f"nv-{index}"}
    return json.dumps({"action": "create", "resource": "run", "body": body})


# -- one instance -------------------------------------------------------------------------------------------------
@dataclass
class InstanceResult:
    """What one instance did, by its own count; ``samples`` are (wall-clock time, allowed calls/s to the API)."""

    index: int
    outcomes: dict[str, int]
    dead_lettered: int
    finished: float
    samples: list[tuple[float, float]] = field(default_factory=list)
    table: dict[str, int] = field(default_factory=dict)  # the shared schedule's table requests and fallbacks


@dataclass(frozen=True)
class InstanceSpec:
    index: int
    env: dict[str, str]
    ca_path: str
    queue: SharedQueue
    threads: int
    storage: str | None = None  # a connection string: pace by the shared schedule in its table
    delay: float = 0.0  # seconds after the start before this instance takes work (starts spread out)


def run_instance(spec: InstanceSpec, ready: Any, start: Any, results: Any) -> None:
    """A worker instance: its own client, pacer and worker (production `WORKER_POLICY`), on the shared queue.

    It holds a token before ``ready`` (an instance that has run before does), starts on ``start`` and returns when
    the shared queue is drained.
    """
    os.environ["REQUESTS_CA_BUNDLE"] = spec.ca_path
    queue = spec.queue.connect()
    otel = Otel.production_like()
    poison = MemoryQueue()
    shared = None
    if spec.storage is not None:
        from shared.ledger import Ledger
        from shared.schedule import SharedPacer, table_client_options
        from shared.settings import Settings

        settings = Settings.from_env(spec.env)
        table = Ledger.from_environment({"AzureWebJobsStorage": spec.storage}, **table_client_options()).table
        shared = SharedPacer(table, settings.rate_limits, settings.tier_limits)
    worker = make_worker(spec.env, otel.telemetry, queue, poison, pacer=shared)
    worker.api.client.tokens.token()
    pacer = worker.api.client.pacer
    ready.wait()
    start.wait()
    if spec.delay:
        time.sleep(spec.delay)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.time(), pacer.rate(API)))
            stop.wait(SAMPLE_EVERY)

    sampler = threading.Thread(target=sample, name="rate-sampler")
    sampler.start()
    outcomes = drain(queue, worker, spec.threads)
    finished = time.time()
    stop.set()
    sampler.join()
    otel.shutdown()
    counts = dict(shared.counts) if shared is not None else {}
    results.put(InstanceResult(spec.index, outcomes, poison.sent, finished, samples, counts))

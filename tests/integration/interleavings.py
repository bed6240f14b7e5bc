"""Systematic exploration of the create protocol: every interleaving of a few deliveries of one create, with a crash
point after each storage or API step, on instances whose clocks disagree.

Each delivery runs the real `Worker.handle` (the real `Ledger`, `ITwinClient`, `ITwinApi` and the simulator's API
logic) in a thread of its own, and every storage or API step first waits for its turn here. A schedule says, step by
step, which delivery goes on, or that one's process dies where it stands. The explorer enumerates schedules by
depth-first search, replaying each from the start (a thread cannot be forked), and prunes a schedule that reaches a
state already explored: the same table, platform and queue, and each delivery having seen the same answers (ids and
tokens named by order of appearance, so that two runs of one schedule compare equal). When no delivery can go on,
the queue is drained on fresh instances, time jumping to each message's visibility, and the end state is checked.

`MemoryTable` (`sandbox.memory_table`, shared with the pacing schedule's tests and the benchmarks' model) honours
ETags as Table Storage does: inserts fail on an existing row (409), updates and deletes fail on a changed ETag (412)
or a missing row (404), a transaction is all or nothing, and every write gives a new ETag.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import urllib3

from sandbox.memory_table import MemoryTable
from sandbox.simulator.protocol import Headers, RecordedRequest
from shared.client import ITwinClient
from shared.ledger import Ledger
from shared.pacing import Pacer
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.retry import RetryPolicy
from shared.settings import Settings
from shared.telemetry import Telemetry
from shared.worker import Worker

API_URL = "https://itwin.invalid"
# Steps that commute with any step of another delivery: see `World.choices`.
INDEPENDENT = frozenset({"queue send", "ack", "api GET imodels"})
REDELIVERY_SECONDS = 30  # a message whose delivery died shows again after its visibility timeout
SETTLE_SECONDS = 30.0  # a call the client gave up on lands within this long (the worker's default `settle`)
MAX_DRAIN = 40  # deliveries after the explored ones; more means the command never settles


class Crashed(BaseException):
    """The delivery's process died at this step (raised in its thread; nothing of the worker catches it)."""


class MemoryQueue:
    """A queue's sending side, in memory: messages with the virtual time they become visible."""

    def __init__(self, world: World, messages: list[tuple[float, str]]) -> None:
        self.world = world
        self.messages = messages

    def send_message(self, content: str, *, visibility_timeout: int | None = None, **_: Any) -> Any:
        self.world.step("queue send")
        self.messages.append((self.world.time + (visibility_timeout or 0), content))

    def update_message(self, *_: Any, **__: Any) -> None:
        raise NotImplementedError

    def delete_message(self, *_: Any, **__: Any) -> None:
        raise NotImplementedError


class InProcessAdapter(requests.adapters.BaseAdapter):
    """requests' transport to the simulator's own request handling, one step per API call. A delivery whose
    step is granted ``lose`` has its call carried out and then gets no answer (a dropped connection); one granted
    ``stall`` gets no answer while its call is still on its way: the call lands later, when the explorer says so or
    at the latest once `SETTLE_SECONDS` have passed (see `World.pending`)."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:
        parts = urlsplit(request.url)
        method = request.method or "GET"
        mode = self.world.step(f"api {method} {parts.path.split('/')[1]}", api_write=method == "POST")
        recorded = RecordedRequest(
            method=method,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=Headers(request.headers.items()),
            body=request.body or b"",
            api=parts.path.lstrip("/").split("/", 1)[0],
            started=0.0,
        )
        if mode == "stall":
            self.world.pending.append((self.world.time + SETTLE_SECONDS, recorded))
            self.world.observe("-> no answer yet")
            raise requests.ReadTimeout("no answer within the read timeout")
        answer = self.world.simulator.answer_in_process(recorded)
        if mode == "lose" or answer.drop:
            self.world.observe("-> no answer")
            raise requests.ConnectionError("the connection was closed without an answer")
        self.world.observe(f"-> {answer.status} {answer.body.decode(errors='replace')}")
        response = requests.Response()
        response.status_code = answer.status
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(answer.body), headers=answer.headers, status=answer.status, preload_content=False
        )
        response.headers.update(answer.headers)
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass


class StaticTokens:
    """One token the simulator issued, for every instance: tokens are not what is explored here."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self, *, stale: str | None = None, deadline: float | None = None) -> str:
        return self._token


@dataclass
class Delivery:
    """One delivery of a message, in its thread, on one instance (process)."""

    index: int
    instance: int
    message: str
    thread: threading.Thread | None = None
    waiting: str | None = None  # the step it waits to take; None while it runs or once it ended
    api_write: bool = False
    ended: bool = False
    crashed: bool = False
    outcome: str | None = None
    seen: list[str] = field(default_factory=list)


class World:
    """One exploration run: a table, a queue, the simulator's platform, instances and their deliveries."""

    def __init__(self, scenario: Scenario) -> None:
        self._local = threading.local()
        self.scenario = scenario
        self.simulator = scenario.simulator
        self.simulator.clear_resources()
        scenario.prepare(self.simulator)
        self.time = 1_000_000.0
        self.queue: list[tuple[float, str]] = []
        self.poison: list[tuple[float, str]] = []
        self.table = MemoryTable(self.step, self.observe, scenario.answer_points)
        self.ledger = Ledger(self.table)
        self.command_id = scenario.command_id
        self.ledger.insert_absent([(self.command_id, json.loads(scenario.message))], self.wall(0), sent=True)
        self.workers: dict[int, Worker] = {}
        self.dead: set[int] = set()
        self.deliveries: list[Delivery] = []
        self._cv = threading.Condition()
        self._turn: int | None = None
        self._crash: set[int] = set()
        self._modes: dict[int, str] = {}
        # calls whose client gave up before they landed: (the latest they land, the request)
        self.pending: list[tuple[float, RecordedRequest]] = []

    # -- clocks and instances ------------------------------------------------------------------------------
    def wall(self, instance: int) -> datetime:
        return datetime.fromtimestamp(self.time + self.scenario.skew(instance), UTC)

    def worker(self, instance: int) -> Worker:
        if instance not in self.workers:
            settings = Settings(client_id="explorer", client_secret="-", api_url=API_URL, rate_limits={})
            session = requests.Session()
            session.mount("https://", InProcessAdapter(self))
            client = ITwinClient(
                settings,
                session=session,
                tokens=StaticTokens(self.scenario.token),
                telemetry=self.scenario.telemetry,
                pacer=Pacer({}),
                policy=RetryPolicy(max_attempts=1, budget=1.0),
                clock=lambda: self.time,
                sleep=lambda seconds: None,
            )
            self.workers[instance] = Worker(
                ITwinApi(client),
                CommandQueue(MemoryQueue(self, self.queue), MemoryQueue(self, self.poison)),
                self.scenario.telemetry,
                max_attempts=8,
                ledger=self.ledger,
                owner=f"instance-{instance}",
                now=lambda: self.time + self.scenario.skew(instance),
                sleep=lambda seconds: None,
                monotonic=lambda: self.time,
            )
        return self.workers[instance]

    # -- the scheduler -------------------------------------------------------------------------------------
    def step(self, label: str, api_write: bool = False) -> str:
        """Called by a delivery's thread before each operation: waits for its turn. Returns how an API call goes:
        ``go``, ``lose`` (carried out, no answer) or ``stall`` (no answer, carried out later)."""
        me: Delivery | None = getattr(self._local, "delivery", None)
        if me is None:  # the world's own set-up
            return "go"
        with self._cv:
            me.waiting, me.api_write = label, api_write
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._turn == me.index)
            self._turn = None
            me.waiting = None
            if me.index in self._crash:
                raise Crashed
            mode = self._modes.pop(me.index, "go")
        me.seen.append(label)
        return mode

    def observe(self, summary: str) -> None:
        """What the current delivery saw of its last step (the fingerprint holds it: its next steps follow)."""
        me: Delivery | None = getattr(self._local, "delivery", None)
        if me is not None:
            me.seen.append(summary)

    def start(self, message: str, instance: int) -> Delivery:
        delivery = Delivery(len(self.deliveries), instance, message)
        self.deliveries.append(delivery)
        worker = self.worker(instance)

        def run() -> None:
            self._local.delivery = delivery
            try:
                delivery.outcome = worker.handle(message).value
                self.step("ack")  # the host deletes the message; dying here means it is delivered again
            except Crashed:
                delivery.crashed = True
                self.dead.add(instance)
            except Exception as error:  # the host retries the message
                delivery.outcome = f"raised {type(error).__name__}"
                self.queue.append((self.time + REDELIVERY_SECONDS, message))
            with self._cv:
                delivery.ended = True
                if delivery.crashed:
                    self.queue.append((self.time + REDELIVERY_SECONDS, message))
                self._cv.notify_all()

        delivery.thread = threading.Thread(target=run, daemon=True)
        delivery.thread.start()
        self._settle(delivery)
        return delivery

    def _settle(self, delivery: Delivery) -> None:
        with self._cv:
            self._cv.wait_for(lambda: delivery.ended or delivery.waiting is not None)

    def grant(self, index: int, *, crash: bool = False, mode: str = "go") -> None:
        delivery = self.deliveries[index]
        with self._cv:
            if crash:
                self._crash.add(index)
            self._modes[index] = mode
            self._turn = index
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._turn is None)
        if delivery.thread is not None and crash:
            delivery.thread.join()
        self._settle(delivery)

    def choices(self) -> list[tuple[str, int]]:
        """What may happen next: a waiting delivery takes its step, loses the answer of its create (carried out
        now, or still on its way), or dies; or a create on its way lands.

        A step that commutes with every step of the others (`INDEPENDENT`: sending to the queue, which only the
        drain reads; acknowledging; reading an iModel) is taken first, alone with the chance of dying before it:
        any order of it against the others' steps reaches the same state (partial-order reduction).
        """
        waiting = [d for d in self.deliveries if not d.ended and d.waiting is not None]
        alone = next((d for d in waiting if d.waiting in INDEPENDENT), None)
        options: list[tuple[str, int]] = []
        for d in [alone] if alone else waiting:
            options.append(("go", d.index))
            if d.api_write and self.scenario.lose_answers:
                options.extend([("lose", d.index), ("stall", d.index)])
            if d.index < self.scenario.mortal:
                options.append(("crash", d.index))
        if not alone:
            options.extend(("land", k) for k in range(len(self.pending)))
        return options

    def apply(self, choice: tuple[str, int]) -> None:
        kind, index = choice
        if kind == "land":
            self.simulator.answer_in_process(self.pending.pop(index)[1])
        else:
            self.grant(index, crash=kind == "crash", mode=kind if kind in ("lose", "stall") else "go")

    def land(self, until: float) -> None:
        """Calls on their way whose latest landing is ``until`` or earlier land now (the drain's clock moves)."""
        for due, recorded in sorted(self.pending, key=lambda p: p[0]):
            if due <= until:
                self.simulator.answer_in_process(recorded)
        self.pending = [p for p in self.pending if p[0] > until]

    def abandon(self) -> None:
        """End every delivery still waiting (their threads unwind as if their processes died)."""
        for d in self.deliveries:
            if not d.ended and d.waiting is not None:
                self.grant(d.index, crash=True)

    # -- the end -------------------------------------------------------------------------------------------
    def drain(self) -> None:
        """Deliver what is on the queue, earliest first, each on a fresh instance, until it is empty."""
        for _ in range(MAX_DRAIN):
            if not self.queue:
                self.land(float("inf"))
                return
            self.queue.sort()
            visible, message = self.queue.pop(0)
            self.time = max(self.time, visible)
            self.land(self.time)
            delivery = self.start(message, instance=100 + len(self.deliveries))
            while not delivery.ended:
                self.grant(delivery.index)
        raise AssertionError(f"the command did not settle within {MAX_DRAIN} deliveries: {self.describe()}")

    def fingerprint(self) -> str:
        """The state, with ids and tokens named by their order of appearance."""
        rows = sorted((k, sorted(r.items(), key=str), v) for k, (r, v) in self.table.rows.items())
        platform = [sorted(self.simulator.runs), sorted(self.simulator.jobs), sorted(self.simulator.connections)]
        state = {
            "rows": rows,
            "platform": platform,
            "queue": sorted(self.queue),
            "pending": sorted((due, r.method, r.path, r.body.decode()) for due, r in self.pending),
            "deliveries": [(d.instance, d.seen, d.waiting, d.ended, d.crashed, d.outcome) for d in self.deliveries],
            "dead": sorted(self.dead),
        }
        return _canonical(json.dumps(state, default=str))

    def describe(self) -> str:
        """The row, and each delivery's steps and end, for a failure's message."""
        record = self.ledger.get(self.command_id)
        steps = [
            (d.instance, [s for s in d.seen if not s.startswith("->")], d.outcome or "crashed") for d in self.deliveries
        ]
        row = {"status": record.status.value, "resource": record.resource, "lease": record.lease} if record else None
        return json.dumps({"row": row, "deliveries": steps, "queued": len(self.queue)}, default=str)


_TOKENS = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _canonical(text: str) -> str:
    names: dict[str, str] = {}
    return _TOKENS.sub(lambda m: names.setdefault(m.group(0), f"<{len(names)}>"), text)


@dataclass
class Scenario:
    """What is explored: a create message delivered ``copies`` times at once, and the checks of its end."""

    simulator: Any
    token: str
    telemetry: Telemetry
    command_id: str
    message: str
    copies: int
    skews: tuple[float, ...]
    mortal: int = 3  # the first this many deliveries may die, each at any of its steps
    lose_answers: bool = True
    instances: tuple[int, ...] = (0, 1, 2)  # the instance (process) of each delivery: equal ones share a worker
    answer_points: bool = False  # a step between an update landing and its caller hearing of it (see `MemoryTable`)
    prepare: Callable[[Any], None] = lambda simulator: None

    def skew(self, instance: int) -> float:
        return self.skews[instance % len(self.skews)]


@dataclass
class Explored:
    schedules: int = 0  # complete schedules run to their end and checked
    states: int = 0  # distinct states reached
    pruned: int = 0  # schedules cut short at a state already explored


def explore(scenario: Scenario, check: Callable[[World], None]) -> Explored:
    """Every schedule of ``scenario``'s deliveries, up to equal states; ``check`` each end (after the drain)."""
    counts = Explored()
    seen: set[str] = set()
    pending: list[list[tuple[str, int]]] = [[]]
    while pending:
        prefix = pending.pop()
        world = World(scenario)
        try:
            for copy_index in range(scenario.copies):
                world.start(scenario.message, instance=scenario.instances[copy_index])
            for choice in prefix:
                world.apply(choice)
            while True:
                state = world.fingerprint()
                if state in seen:
                    counts.pruned += 1
                    world.abandon()
                    break
                seen.add(state)
                counts.states += 1
                options = world.choices()
                if not options:
                    world.drain()
                    check(world)
                    counts.schedules += 1
                    break
                pending.extend([*prefix, option] for option in reversed(options[1:]))
                prefix = [*prefix, options[0]]
                world.apply(options[0])
        except AssertionError as failure:
            raise AssertionError(f"{failure}\nschedule: {prefix}\nend: {world.describe()}") from None
    return counts


def created(world: World, resource: str) -> list[str]:
    """The ids of what the platform holds of ``resource``."""
    made = {"run": world.simulator.runs, "job": world.simulator.jobs, "connection": world.simulator.connections}
    return sorted(made[resource])


def all_ends(deliveries: Iterator[Delivery]) -> list[str]:
    return [d.outcome or "crashed" for d in deliveries]

"""The shared pacing schedule on Azurite's table, with the real worker, client and simulator: a command whose slot
lies past its invocation's budget goes back carrying it and is sent at it; instances on one schedule get no 429;
Azurite stopped and started again mid-run sends the instances to their own pacers and back, with every command
carried out once."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from app_settings import settings_for
from azure.data.tables import TableServiceClient
from manual_clock import ManualClock

from bench.harness import MemoryQueue, drain, make_worker
from sandbox.azurite import Azurite
from sandbox.itwin_platform import Simulator
from sandbox.memory_table import MemoryTable
from shared.client import ITwinClient
from shared.errors import NotFound
from shared.ledger import LEDGER_TABLE, Ledger
from shared.outcomes import Outcome
from shared.resources import ITwinApi
from shared.retry import RetryPolicy
from shared.schedule import SharedPacer, table_client_options
from shared.settings import Settings
from shared.telemetry import Telemetry

pytestmark = pytest.mark.integration

API = "clashdetection"
IMODEL = "a0471655-6b18-419e-ab01-ebf4fbff9dff"


def create_run(index: int) -> str:
    body = {"testId": f"shared-{index}", "iModelId": IMODEL, "namedVersionId": f"nv-{index}"}
    return json.dumps({"action": "create", "resource": "run", "body": body})


def schedule_table(connection_string: str):
    return Ledger.from_environment({"AzureWebJobsStorage": connection_string}, **table_client_options()).table


class Recording(MemoryQueue):
    """The in-memory queue, remembering each message sent back and its delay."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_back: list[tuple[dict, int | None]] = []

    def send_message(self, content, *, visibility_timeout=None, **kwargs):
        self.sent_back.append((json.loads(content), visibility_timeout))
        super().send_message(content, visibility_timeout=visibility_timeout, **kwargs)


def test_a_slot_past_the_budget_goes_back_with_the_command_and_is_sent_at_without_a_table_request(
    make_simulator, ledger: Ledger, azurite: Azurite
):
    simulator: Simulator = make_simulator(rate_limits={API: 6.0})
    pacer = SharedPacer(schedule_table(azurite.connection_string), {API: 6.0})
    other = SharedPacer(schedule_table(azurite.connection_string), {API: 6.0})
    queue = Recording()
    worker = make_worker(settings_for(simulator), Telemetry(), queue, pacer=pacer)
    # GIVEN another instance holding the next 12 slots (2 s of the limit)
    taken = [other.reserve(API).slot for _ in range(12)]
    # WHEN three commands are handled here: their slots lie past the invocation's 1-s budget
    outcomes = [worker.handle(create_run(i)) for i in range(3)]
    # THEN each goes back carrying its slot, showing no later than it
    assert outcomes == [Outcome.RESCHEDULED] * 3
    back = [(m, delay) for m, delay in queue.sent_back if "slot" in m]
    assert len(back) == 3
    assert {m["slot"]["at"] for m, _ in back}.isdisjoint({round(s.at, 3) for s in taken})
    for message, delay in back:
        assert message["slot"]["api"] == API
        assert (delay or 0) <= message["slot"]["at"] - time.time() + 0.1
    # AND whoever receives them sends at the slot, with no table request
    writes = pacer.counts["writes"]
    assert drain(queue, worker, 3) == {"succeeded": 3}
    assert pacer.counts["writes"] == writes
    assert len(simulator.runs) == 3
    assert not [c for c in simulator.api_calls(API) if c.status == 429]


def test_four_instances_on_one_schedule_get_no_429(make_simulator, ledger: Ledger, azurite: Azurite):
    simulator: Simulator = make_simulator(rate_limits={API: 6.0})
    queue = MemoryQueue()
    for i in range(24):
        queue.send_message(create_run(i))
    pacers = [SharedPacer(schedule_table(azurite.connection_string), {API: 6.0}) for _ in range(4)]
    workers = [make_worker(settings_for(simulator), Telemetry(), queue, pacer=p) for p in pacers]
    outcomes: list[dict[str, int]] = []
    threads = [threading.Thread(target=lambda w=w: outcomes.append(drain(queue, w, 2))) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(simulator.runs) == 24
    # The slots leave 5% of a second spare; four instances as threads of one process (one GIL, with the simulator)
    # send a call late now and then. The benchmark runs instances as processes.
    assert len([c for c in simulator.api_calls(API) if c.status == 429]) <= 1
    writes = sum(p.counts["writes"] + p.counts["reads"] + p.counts["inserts"] for p in pacers)
    assert (
        writes <= 3 * 24
    )  # table requests, with the conflicts of four instances starting together (measured: ~2 a call)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_azurite_stopped_and_started_again_mid_run_sends_instances_to_local_pacing_and_back_losing_nothing(
    make_simulator, tmp_path: Path
):
    simulator: Simulator = make_simulator(rate_limits={API: 6.0})
    ports = {"port": _free_port(), "table_port": _free_port()}
    storage = Azurite(**ports, location=tmp_path / "azurite").start()
    try:
        TableServiceClient.from_connection_string(storage.connection_string).create_table_if_not_exists(LEDGER_TABLE)
        connection = storage.connection_string
        runs = 80
        queue = MemoryQueue()
        for i in range(runs):  # arriving over 12 s, so that instances reserve all along, outage included
            queue.send_message(create_run(i), visibility_timeout=i * 0.15)
        pacers = [SharedPacer(schedule_table(connection), {API: 6.0}) for _ in range(2)]
        workers = [make_worker(settings_for(simulator), Telemetry(), queue, pacer=p) for p in pacers]
        outcomes: list[dict[str, int]] = []
        threads = [threading.Thread(target=lambda w=w: outcomes.append(drain(queue, w, 3))) for w in workers]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        storage.stop()
        time.sleep(3.0)
        down = [p.counts["fallbacks"] for p in pacers]
        storage = Azurite(**ports, location=tmp_path / "azurite").start()
        reservations_before = [p.counts["reservations"] for p in pacers]
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        storage.stop()
    assert all(count >= 1 for count in down), "an instance did not notice that the table was gone"
    assert all(p.counts["reservations"] > before for p, before in zip(pacers, reservations_before, strict=True)), (
        "an instance did not come back to the shared schedule"
    )
    # Nothing lost, nothing doubled: every command made exactly one run, none was dead-lettered.
    assert len(simulator.runs) == runs
    assert sum(o.get("succeeded", 0) for o in outcomes) == runs
    assert sum(o.get("dead_lettered", 0) for o in outcomes) == 0


def test_a_call_whose_wait_for_its_slot_overran_reserves_again_instead_of_crowding_the_next_slot(make_simulator):
    simulator: Simulator = make_simulator(rate_limits={API: 6.0})
    clock = ManualClock(1000.0)
    table = MemoryTable()
    # No random pause before it reads whether its ask was served: a pause past the next slot would leave no wait.
    pacer = SharedPacer(table, {API: 6.0}, clock=clock, monotonic=clock, sleep=clock.advance, rand=lambda: 0.0)
    SharedPacer(table, {API: 6.0}, clock=clock, monotonic=clock).reserve(API)  # another instance takes the next slot
    overruns = [0.1]  # the first sleep wakes up 0.1 s late: more than a third of the 175-ms interval

    def sleep(seconds: float) -> None:
        clock.advance(seconds + (overruns.pop() if overruns else 0.0))

    client = ITwinClient(
        Settings.from_env(settings_for(simulator)),
        telemetry=Telemetry(),
        policy=RetryPolicy(budget=1.0),
        pacer=pacer,
        clock=clock,
        sleep=sleep,
    )
    with pytest.raises(NotFound):
        ITwinApi(client).delete_run("a-run")  # any answer will do: the call went, once
    assert pacer.counts["late slots"] == 1
    assert pacer.counts["reservations"] == 2
    assert len(simulator.api_calls(API)) == 1

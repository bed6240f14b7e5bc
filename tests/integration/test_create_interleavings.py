"""Every interleaving of two and of three deliveries of one create, with a crash point after each storage or API
step, and instance clocks up to five minutes apart (see `interleavings`): at most one resource, a final row that
says what happened, and nothing left waiting without a message.

Two deliveries: either may die at any step, and each create may lose its answer. Three: the first may die at any
step; the three start alike (one message, instances whose clocks the protocol never reads), so which one dies is
symmetric. `make soak` (SOAK=1) lets all three die and their creates lose answers too (some minutes).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest
from interleavings import Scenario, World, created, explore
from samples import IMODEL, JOB_BODY

from sandbox.itwin_platform import Simulator
from shared.commands import validate
from shared.ledger import Status, new_id
from shared.telemetry import Telemetry

pytestmark = pytest.mark.integration

SOAK = bool(os.environ.get("SOAK"))
SKEWS = (-300.0, 0.0, 300.0, -7.0)  # seconds each instance's wall clock is off, by instance
RUN_BODY = {"testId": "t-1", "iModelId": IMODEL, "namedVersionId": "v-1"}


@pytest.fixture(scope="module")
def platform():
    """The simulator's API logic, driven in-process (never started: no socket), with one token it issued."""
    simulator = Simulator(rate_limits={})
    simulator.add_imodel(IMODEL)
    return simulator, simulator.issue_token()


def scenario(platform, command: dict, copies: int, **options) -> Scenario:
    simulator, token = platform
    command_id = new_id(datetime.now(UTC))
    message = json.dumps({**validate(command).to_message(), "commandId": command_id})
    return Scenario(simulator, token, Telemetry(), command_id, message, copies, SKEWS, **options)


def one_effect(resource: str, lookable: bool):
    """The checks at the end of every schedule of a ``resource`` create."""

    def check(world: World) -> None:
        made = created(world, resource)
        record = world.ledger.get(world.command_id)
        assert len(made) <= 1, f"{len(made)} {resource}s made for one command"
        assert world.queue == [], "messages left on the queue"
        assert record.final, f"the row ended {record.status.value}, with no message left to finish it"
        assert record.lease is None, "the row ended held"
        if made:
            said = record.resource.id if record.resource else None
            unknown = record.status is Status.DEAD_LETTERED and record.error["code"] == "CreateOutcomeUnknown"
            assert said == made[0] or (not lookable and unknown), f"a {resource} was made; the row says {said}"
            if lookable:
                assert record.status in (Status.SUCCEEDED, Status.ALREADY_DONE)
        else:
            assert record.resource is None, "the row names a resource that was never made"
            assert record.status is Status.DEAD_LETTERED

    return check


RUN = {"action": "create", "resource": "run", "body": RUN_BODY}
JOB = {"action": "create", "resource": "job", "body": JOB_BODY}
MORTAL_OF_THREE = 3 if SOAK else 1
# (command, resource, whether the API can look it up, deliveries, how many may die, lost create answers)
CASES = {
    "run, 2 deliveries": (RUN, "run", True, 2, 2, True),
    "job, 2 deliveries": (JOB, "job", False, 2, 2, True),
    "run, 3 deliveries": (RUN, "run", True, 3, MORTAL_OF_THREE, SOAK),
    "job, 3 deliveries": (JOB, "job", False, 3, MORTAL_OF_THREE, SOAK),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_interleaving_and_crash_point_of_a_create_has_one_effect(platform, case):
    command, resource, lookable, copies, crashes, lose_answers = CASES[case]
    began = time.perf_counter()
    options = {"mortal": crashes, "lose_answers": lose_answers}
    explored = explore(scenario(platform, command, copies, **options), one_effect(resource, lookable))
    print(
        f"\n{case}: {explored.schedules} schedules run to the end and checked, {explored.states} distinct states, "
        f"{explored.pruned} cut at a state explored before ({time.perf_counter() - began:.1f} s)"
    )
    assert explored.schedules > 0

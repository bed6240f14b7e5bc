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
from typing import NamedTuple

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
CONNECTION = {"action": "create", "resource": "connection", "body": {"iModelId": IMODEL, "displayName": "nightly"}}
# An iModel Export does not know: listing its connections answers 404 until a connection is made for it.
UNLISTED = {**CONNECTION, "body": {"iModelId": "0f2d5c3e-9a41-4b7e-8c55-1d2e3f405162", "displayName": "nightly"}}
MORTAL_OF_THREE = 3 if SOAK else 1


class Case(NamedTuple):
    """One exploration: the command, what it makes, and how much may go wrong (see `Scenario`)."""

    command: dict
    resource: str
    lookable: bool  # whether the API can look the resource up after a lost answer
    copies: int
    mortal: int = 2
    lose_answers: bool = True
    instances: tuple[int, ...] = (0, 1, 2)
    answer_points: bool = SOAK


CASES = {
    # Two deliveries in one process share its worker and its book of leases, with a step between a hold landing and
    # its holder hearing of it (the window in which the other reads the row). A process dying ends both: none dies.
    "run, 2 deliveries in one process": Case(RUN, "run", True, 2, 0, SOAK, (0, 0), answer_points=True),
    "run, 2 deliveries": Case(RUN, "run", True, 2),
    "job, 2 deliveries": Case(JOB, "job", False, 2),
    "connection of an iModel Export does not list yet, 2 deliveries": Case(UNLISTED, "connection", True, 2),
    "run, 3 deliveries": Case(RUN, "run", True, 3, MORTAL_OF_THREE, SOAK),
}
if SOAK:  # `make test` stays under a minute; these add little it does not cover, at several times the cost
    CASES["connection, 2 deliveries"] = Case(CONNECTION, "connection", True, 2)
    CASES["job, 3 deliveries"] = Case(JOB, "job", False, 3, MORTAL_OF_THREE, SOAK)


@pytest.mark.parametrize("case", list(CASES))
def test_every_interleaving_and_crash_point_of_a_create_has_one_effect(platform, case):
    spec = CASES[case]
    began = time.perf_counter()
    options = {
        "mortal": spec.mortal,
        "lose_answers": spec.lose_answers,
        "instances": spec.instances,
        "answer_points": spec.answer_points,
    }
    explored = explore(
        scenario(platform, spec.command, spec.copies, **options), one_effect(spec.resource, spec.lookable)
    )
    print(
        f"\n{case}: {explored.schedules} schedules run to the end and checked, {explored.states} distinct states, "
        f"{explored.pruned} cut at a state explored before ({time.perf_counter() - began:.1f} s)"
    )
    assert explored.schedules > 0

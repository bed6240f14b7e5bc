import math

import pytest

from shared.pacing import SAFETY, Pacer


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_calls_to_a_paced_api_are_spaced_under_its_rate():
    pacer = Pacer({"clashdetection": 6.0}, clock=FakeClock())
    waits = [pacer.reserve("clashdetection") for _ in range(7)]
    interval = 1 / (6.0 * SAFETY)
    assert waits == pytest.approx([i * interval for i in range(7)])
    # Seven calls need more than one second, so a 6/s sliding window never sees a seventh.
    assert waits[6] > 1.0


def test_an_api_without_a_documented_rate_is_not_delayed():
    pacer = Pacer({"clashdetection": 6.0}, clock=FakeClock())
    assert [pacer.reserve("export") for _ in range(100)] == [0.0] * 100


def test_after_a_429_every_call_to_that_api_waits_until_retry_after_has_passed():
    clock = FakeClock()
    pacer = Pacer({}, clock=clock)
    pacer.hold("export", 2.0)
    assert pacer.reserve("export") == 2.0
    assert pacer.reserve("contextcapture") == 0.0
    clock.now += 2.0
    assert pacer.reserve("export") == 0.0


def test_a_wait_longer_than_the_callers_limit_is_reported_and_reserves_nothing():
    clock = FakeClock()
    pacer = Pacer({"clashdetection": 1.0}, clock=clock)
    pacer.hold("clashdetection", 1800.0)
    assert pacer.reserve("clashdetection", limit=1.0) == 1800.0
    assert pacer.reserve("clashdetection", limit=1.0) == 1800.0  # the refused caller took no slot
    clock.now += 1800.0
    assert pacer.reserve("clashdetection", limit=1.0) == 0.0


def test_an_unbounded_caller_still_gets_its_slot_reserved():
    pacer = Pacer({"clashdetection": 1.0 / SAFETY}, clock=FakeClock())
    assert pacer.reserve("clashdetection") == 0.0
    assert pacer.reserve("clashdetection", limit=math.inf) == pytest.approx(1.0)

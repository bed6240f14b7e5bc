import threading

import pytest

from shared.pacing import SAFETY, Pacer


class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.lock = threading.Lock()

    def clock(self):
        return self.now

    def sleep(self, seconds):
        with self.lock:
            self.now += seconds


def test_calls_to_a_paced_api_are_spaced_under_its_rate():
    time = FakeTime()
    pacer = Pacer({"clashdetection": 6.0}, clock=time.clock, sleep=time.sleep)
    waits = [pacer.slot("clashdetection") for _ in range(7)]
    interval = 1 / (6.0 * SAFETY)
    assert waits == pytest.approx([i * interval for i in range(7)])
    # Seven calls need more than one second, so a 6/s sliding window never sees a seventh.
    assert waits[6] > 1.0


def test_an_api_without_a_documented_rate_is_not_delayed():
    pacer = Pacer({"clashdetection": 6.0}, clock=FakeTime().clock)
    assert [pacer.slot("export") for _ in range(100)] == [0.0] * 100


def test_after_a_429_every_call_to_that_api_waits_until_retry_after_has_passed():
    time = FakeTime()
    pacer = Pacer({}, clock=time.clock, sleep=time.sleep)
    pacer.hold("export", 2.0)
    assert pacer.slot("export") == 2.0
    assert pacer.slot("contextcapture") == 0.0
    pacer.wait("export")
    assert time.now == 102.0
    assert pacer.slot("export") == 0.0

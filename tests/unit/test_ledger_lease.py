"""The lease's margin against the client's timeouts: a create sent at the last moment a holder may send one has
taken effect, or never will, by the time another delivery may take the lease over."""

from shared.client import DEFAULT_TIMEOUT
from shared.ledger import LEASE, LEASE_MARGIN, REQUEST_LIMIT, SETTLE


def test_the_margin_covers_a_whole_request_and_the_time_the_platform_may_take_after_it():
    assert REQUEST_LIMIT.total_seconds() >= sum(DEFAULT_TIMEOUT)
    assert LEASE_MARGIN >= REQUEST_LIMIT + SETTLE


def test_a_holder_still_has_time_to_create_after_its_hold():
    assert (LEASE - LEASE_MARGIN).total_seconds() >= 30

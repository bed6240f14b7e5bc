import logging
from datetime import UTC, datetime

import pytest

from shared.errors import Conflict, NotFound, RateLimited, ServerError, TransportError
from shared.retry import RedeliveryBackoff, RetryPolicy, parse_retry_after, retry_after_of, retry_delay

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy(backoff_base=0.5, backoff_cap=8.0)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        (" 7 ", 7.0),
        ("0.5", 0.5),
        ("Sun, 22 Nov 2026 12:00:30 GMT", 30.0),
        ("Sun, 22 Nov 2026 11:00:00 GMT", 0.0),
        ("-3", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header, seconds):
    assert parse_retry_after(header, NOW) == seconds


def test_a_429_waits_exactly_what_retry_after_says_for_any_method():
    error = RateLimited(429, "slow", retry_after=2.0)
    assert retry_delay(error, "POST", 1, POLICY) == 2.0
    assert retry_delay(error, "DELETE", 3, POLICY) == 2.0


def test_a_429_without_retry_after_waits_at_least_a_second():
    assert retry_delay(RateLimited(429, "slow"), "GET", 1, POLICY, rand=lambda: 0.0) == 1.0


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH"])
def test_server_and_transport_failures_back_off_on_idempotent_calls(method):
    for error in (ServerError(503, "down"), TransportError("reset")):
        assert retry_delay(error, method, 3, POLICY, rand=lambda: 1.0) == 2.0


def test_a_post_is_not_repeated_after_a_timeout_or_a_5xx():
    assert retry_delay(TransportError("timeout"), "POST", 1, POLICY) is None
    assert retry_delay(ServerError(500, "boom"), "POST", 1, POLICY) is None


def test_connection_already_in_use_is_repeated_only_for_delete():
    busy = Conflict(409, "busy", code="ConnectionAlreadyInUse")
    assert retry_delay(busy, "DELETE", 1, POLICY, rand=lambda: 1.0) == 0.5
    assert retry_delay(busy, "POST", 1, POLICY) is None


def test_permanent_errors_are_not_repeated():
    assert retry_delay(NotFound(404, "gone"), "GET", 1, POLICY) is None


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap():
    assert [POLICY.backoff(n, rand=lambda: 1.0) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert POLICY.backoff(4, rand=lambda: 0.25) == 1.0


@pytest.mark.parametrize("header", ["inf", "1e308", "99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_beyond_the_queues_seven_day_limit_is_clamped_to_it(header):
    assert parse_retry_after(header, NOW) == 7 * 24 * 3600


def test_a_503_with_retry_after_waits_exactly_that_on_idempotent_calls():
    refused = ServerError(503, "busy", retry_after=120.0)
    assert retry_delay(refused, "GET", 1, POLICY, rand=lambda: 1.0) == 120.0
    assert retry_delay(refused, "POST", 1, POLICY) is None


def test_the_delay_between_deliveries_grows_for_certain_up_to_its_cap():
    backoff = RedeliveryBackoff(base=5.0, cap=1800.0)
    lowest = [backoff.delay(n, rand=lambda: 0.0) for n in range(1, 11)]
    highest = [backoff.delay(n, rand=lambda: 1.0) for n in range(1, 11)]
    assert highest == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 1800]
    assert lowest == [h / 2 for h in highest]
    assert backoff.delay(10_000, rand=lambda: 1.0) == 1800.0


@pytest.mark.parametrize("header", ["0", "0.5", "-3", "Wed, 21 Oct 2015 07:28:00 GMT", "soon", None])
def test_a_retry_after_under_a_second_or_unreadable_counts_as_none(header):
    assert retry_after_of(header, longest=900) is None


def test_a_retry_after_beyond_the_longest_honoured_is_cut_to_it_and_logged(caplog):
    assert retry_after_of("2", longest=900) == 2.0
    with caplog.at_level(logging.WARNING, logger="shared.retry"):
        assert retry_after_of("604800", longest=900, url="https://api.example/clashdetection/runs") == 900
    assert "Retry-After '604800'" in caplog.text
    assert "ITWIN_MAX_RETRY_AFTER (900 s)" in caplog.text

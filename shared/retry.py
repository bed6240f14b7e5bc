"""When and how long to wait before repeating a call: pure functions, so tests need no clock."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from shared.errors import Conflict, ITwinError, RateLimited, ServerError, TransportError
from shared.queues import MAX_VISIBILITY_DELAY

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE", "PUT", "PATCH", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on repeating one call: attempts, a total time budget, and the backoff curve."""

    max_attempts: int = 4
    budget: float = 20.0
    backoff_base: float = 0.5
    backoff_cap: float = 8.0

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Full-jitter exponential backoff for the attempt that just failed (1-based)."""
        return rand() * min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))


@dataclass(frozen=True)
class RedeliveryBackoff:
    """How long a rescheduled command stays invisible on the queue when the API gave no ``Retry-After``.

    The delay grows with every delivery counted (the worker counts a failure's failures, a wait's deliveries: a
    connection stays busy for as long as its export runs), with "equal jitter": at least half the exponential
    step, so it grows for certain while instances still spread out.
    """

    base: float = 5.0
    cap: float = 1800.0

    def delay(self, delivery: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before delivery ``delivery + 1`` (``delivery`` is 1-based)."""
        step = min(self.cap, self.base * 2 ** min(delivery - 1, 32))
        return step / 2 + rand() * step / 2


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or bad.

    Values are clamped to the queue's 7-day visibility limit, the longest wait the worker can express.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN is not a wait
        return None
    return min(float(MAX_VISIBILITY_DELAY), max(0.0, seconds))


def retry_after_of(value: str | None, longest: float, url: str = "") -> float | None:
    """The wait a ``Retry-After`` header asks for, as the client honours it: None when absent, malformed or under a
    second (0, negative, a date in the past: repeating at once would only loop, so the growing backoff applies),
    and at most ``longest`` seconds (ITWIN_MAX_RETRY_AFTER), logged when the header asked for more."""
    seconds = parse_retry_after(value)
    if seconds is None or seconds < 1.0:
        return None
    if seconds > longest:
        log.warning(
            "%s answered Retry-After %r (%.0f s); waiting ITWIN_MAX_RETRY_AFTER (%.0f s) instead",
            url or "the API",
            value,
            seconds,
            longest,
        )
        return longest
    return seconds


def retry_delay(
    error: ITwinError,
    method: str,
    attempt: int,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before repeating after ``error``, or None when the call must not be repeated.

    429 waits exactly ``Retry-After`` (any method: the request was refused, not processed).
    5xx and transport failures are repeated only for idempotent methods: a POST may have succeeded. A 5xx that
    carries ``Retry-After`` (a 503 asking to come back later) waits exactly that, as a 429 does.
    409 ``ConnectionAlreadyInUse`` on DELETE backs off and repeats.
    """
    if isinstance(error, RateLimited):
        if error.retry_after is not None:
            return error.retry_after
        return max(1.0, policy.backoff(attempt, rand))
    idempotent = method.upper() in IDEMPOTENT_METHODS
    if isinstance(error, ServerError) and idempotent and error.retry_after is not None:
        return error.retry_after
    if isinstance(error, ServerError | TransportError) and idempotent:
        return policy.backoff(attempt, rand)
    if isinstance(error, Conflict) and error.transient and method.upper() == "DELETE":
        return policy.backoff(attempt, rand)
    return None

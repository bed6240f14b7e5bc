"""When and how long to wait before repeating a call: pure functions, so tests need no clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from shared.errors import Conflict, ITwinError, RateLimited, ServerError, TransportError

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


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or bad."""
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
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a wait


def retry_delay(
    error: ITwinError,
    method: str,
    attempt: int,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before repeating after ``error``, or None when the call must not be repeated.

    429 waits exactly ``Retry-After`` (any method: the request was refused, not processed).
    5xx and transport failures are repeated only for idempotent methods: a POST may have succeeded.
    409 ``ConnectionAlreadyInUse`` on DELETE backs off and repeats.
    """
    if isinstance(error, RateLimited):
        if error.retry_after is not None:
            return error.retry_after
        return max(1.0, policy.backoff(attempt, rand))
    idempotent = method.upper() in IDEMPOTENT_METHODS
    if isinstance(error, ServerError | TransportError) and idempotent:
        return policy.backoff(attempt, rand)
    if isinstance(error, Conflict) and error.transient and method.upper() == "DELETE":
        return policy.backoff(attempt, rand)
    return None

"""Client-side pacing, so this process stays under an API's documented rate limit to begin with."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

from shared.settings import DEFAULT_RATE_LIMITS

# Pace slightly under the limit: the server counts arrivals, which jitter by a few milliseconds.
SAFETY = 0.95


class Pacer:
    """Spaces calls to each API evenly under its rate and holds them all after a 429 until Retry-After passes.

    Thread-safe: every thread of the process shares one schedule per API. It only computes waits; the caller
    sleeps, bounded by its own budget.
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._intervals = {
            api: 1.0 / (rate * SAFETY) for api, rate in (DEFAULT_RATE_LIMITS if rates is None else rates).items()
        }
        self._next: dict[str, float] = {}
        self._held_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def reserve(self, api: str, limit: float = math.inf) -> float:
        """Reserve the next slot for ``api`` if it comes within ``limit`` seconds; return the seconds to wait.

        A wait longer than ``limit`` reserves nothing (the caller will not send) and is returned as it is, so
        the caller can give the work back to the queue for that long instead of sleeping through it.
        """
        with self._lock:
            now = self._clock()
            start = max(now, self._held_until.get(api, 0.0))
            interval = self._intervals.get(api)
            if interval is not None:
                start = max(start, self._next.get(api, 0.0))
            if start - now > limit:
                return start - now
            if interval is not None:
                self._next[api] = start + interval
            return start - now

    def hold(self, api: str, seconds: float) -> None:
        """After a 429: no call to ``api`` leaves this process for ``seconds``."""
        with self._lock:
            until = self._clock() + seconds
            self._held_until[api] = max(self._held_until.get(api, 0.0), until)

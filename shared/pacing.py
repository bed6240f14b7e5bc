"""Client-side pacing, so this process stays under an API's documented rate limit to begin with."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from shared.settings import DEFAULT_RATE_LIMITS

# Pace slightly under the limit: the server counts arrivals, which jitter by a few milliseconds.
SAFETY = 0.95


class Pacer:
    """Spaces calls to each API evenly under its rate and holds them all after a 429 until Retry-After passes.

    Thread-safe: every thread of the process shares one schedule per API.
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._intervals = {
            api: 1.0 / (rate * SAFETY) for api, rate in (DEFAULT_RATE_LIMITS if rates is None else rates).items()
        }
        self._next: dict[str, float] = {}
        self._held_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def slot(self, api: str) -> float:
        """Reserve the next slot for ``api`` and return the seconds to wait for it (0 when free)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._held_until.get(api, 0.0))
            interval = self._intervals.get(api)
            if interval is not None:
                start = max(start, self._next.get(api, 0.0))
                self._next[api] = start + interval
            return start - now

    def wait(self, api: str) -> None:
        """Block until the caller may send its next call to ``api``."""
        delay = self.slot(api)
        if delay > 0:
            self._sleep(delay)

    def hold(self, api: str, seconds: float) -> None:
        """After a 429: no call to ``api`` leaves this process for ``seconds``."""
        with self._lock:
            until = self._clock() + seconds
            self._held_until[api] = max(self._held_until.get(api, 0.0), until)

"""Webhook deliveries this process has accepted, by ``messageId``, so that a replay enqueues nothing again.

The platform resends a delivery it thinks failed, and a captured delivery can be replayed. Deliveries older than the
TTL are refused by their signed ``enqueuedDateTime`` (`shared.http_api`); within it, one instance answers a repeated
``messageId`` 202 without enqueueing. Across instances the commands themselves are what keeps a replay harmless:
deletes and connection creates are idempotent.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_TTL = 24 * 3600.0
DEFAULT_MAX_ENTRIES = 10_000


class RecentDeliveries:
    """A bounded, expiring set of message ids. Thread-safe."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, message_id: str) -> bool:
        """Record ``message_id``; False when it was already recorded and has not expired."""
        with self._lock:
            now = self._clock()
            while self._seen and next(iter(self._seen.values())) <= now - self._ttl:
                self._seen.popitem(last=False)
            if message_id in self._seen:
                return False
            self._seen[message_id] = now
            if len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return True

    def forget(self, message_id: str) -> None:
        """Drop ``message_id``, so that a resend of a delivery that failed here is accepted."""
        with self._lock:
            self._seen.pop(message_id, None)

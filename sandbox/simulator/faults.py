"""What goes wrong on purpose: random faults, scripted answers and per-API rate limits."""

from __future__ import annotations

import json
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from .protocol import JSON, Response, default_error, proxy_page


@dataclass(frozen=True)
class Faults:
    """How often API calls go wrong, chosen at random per call (token and discovery calls never fault).

    - `error_rate`: share of calls answered with one of `statuses` instead of doing the work. A 5xx answer
      carries the iTwin error body or, about half the time, a proxy's HTML page; a 429 carries
      ``Retry-After: retry_after`` and an iTwin body or, about a quarter of the time, no body at all.
    - `drop_rate`: share of calls whose connection is closed without any answer.
    - `stall_rate`: share of calls that wait `stall_seconds` and then do the work and answer normally: a client
      whose read timeout is shorter gives up, yet the server did the work.
    - `latency`: seconds added to every API call that passes authentication and rate limiting.
    - `seed`: makes the choices repeatable (for one thread of calls).

    Errors and drops never change state. The rates are shares of all calls, so their sum is at most 1.
    """

    error_rate: float = 0.0
    statuses: tuple[int, ...] = (500, 503, 429)
    retry_after: int = 1
    drop_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 5.0
    latency: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "stall_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be between 0 and 1; got {value!r}")
        if self.error_rate + self.drop_rate + self.stall_rate > 1.0 + 1e-9:
            raise ValueError("Faults: error_rate + drop_rate + stall_rate must not exceed 1")
        if self.error_rate and not self.statuses:
            raise ValueError("Faults.statuses must name at least one status when error_rate > 0")
        if self.stall_seconds < 0 or self.latency < 0 or self.retry_after < 0:
            raise ValueError("Faults: stall_seconds, latency and retry_after must not be negative")


@dataclass(frozen=True)
class Fault:
    """The fault picked for one call: an answer to send instead, a dropped connection, or a stall."""

    kind: Literal["error", "drop", "stall"]
    response: Response | None = None
    seconds: float = 0.0


class FaultPicker:
    """Draws faults for calls from one `Faults` setting with its own random generator (thread-safe)."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._random = random.Random(faults.seed)
        self._lock = threading.Lock()

    def pick(self, api: str) -> Fault | None:
        """The fault for the next call to `api`, or None when it goes through."""
        faults = self.faults
        with self._lock:
            roll = self._random.random()
            if roll < faults.drop_rate:
                return Fault("drop")
            roll -= faults.drop_rate
            if roll < faults.stall_rate:
                return Fault("stall", seconds=faults.stall_seconds)
            roll -= faults.stall_rate
            if roll >= faults.error_rate:
                return None
            status = self._random.choice(faults.statuses)
            variant = self._random.random()
        if status == 429:
            if variant < 0.25:
                return Fault("error", Response(429, headers={"Retry-After": str(faults.retry_after)}))
            return Fault("error", default_error(429, api, faults.retry_after).response())
        if status >= 500 and variant < 0.5:
            return Fault("error", proxy_page(status))
        return Fault("error", default_error(status, api, faults.retry_after).response())


@dataclass
class Scripted:
    """An answer queued with `Simulator.fail_next` (or `drop_next` / `stall_next`) for matching calls."""

    method: str
    path_prefix: str
    remaining: int
    status: int | None = None
    headers: dict[str, str] | None = None
    body: bytes | dict | None = None
    drop: bool = False
    stall_seconds: float | None = None
    pieces: Callable[[], Iterator[bytes]] | None = None  # the body, written piece by piece (see `Response`)
    length: int = 0

    def matches(self, method: str, path: str) -> bool:
        """True when this entry answers a `method` call to `path` (method ``"*"`` matches any)."""
        return self.method in ("*", method.upper()) and path.startswith(self.path_prefix)

    def response(self, api: str) -> Response:
        """The scripted error answer (a default iTwin error body for the status when no body was given)."""
        assert self.status is not None
        if self.body is None:
            response = default_error(self.status, api).response()
        elif isinstance(self.body, bytes):
            kind = "text/html; charset=utf-8" if self.body.lstrip()[:1] == b"<" else "text/plain; charset=utf-8"
            response = Response(self.status, self.body, {"Content-Type": kind})
        else:
            response = Response(self.status, json.dumps(self.body).encode(), {"Content-Type": JSON})
        if self.status == 204:
            response.body = b""
        if self.pieces is not None:
            response.body, response.pieces, response.length = b"", self.pieces, self.length
        response.headers.update(self.headers or {})
        return response


class RateLimiter:
    """Per-API sliding windows: at most `rate` calls in any one second (thread-safe).

    A rate below 1 allows one call per ``1/rate`` seconds. Refused calls do not count.
    """

    def __init__(self) -> None:
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, api: str, rate: float | None, now: float) -> int | None:
        """Count a call to `api` and return None, or return the Retry-After seconds (>= 1) when over the limit."""
        if not rate or rate <= 0:
            return None
        limit, window = (int(rate), 1.0) if rate >= 1 else (1, 1.0 / rate)
        with self._lock:
            calls = self._calls.setdefault(api, deque())
            while calls and calls[0] <= now - window:
                calls.popleft()
            if len(calls) >= limit:
                return max(1, math.ceil(calls[0] + window - now))
            calls.append(now)
            return None

    def reset(self) -> None:
        """Forget every counted call."""
        with self._lock:
            self._calls.clear()

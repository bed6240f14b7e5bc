"""Client-side pacing: each process finds its share of an API's rate limit by itself, with no shared store.

Flex Consumption runs many instances, and each has its own `Pacer`. Each starts at the API's configured ceiling
(``ITWIN_RATE_LIMITS``: the documented limit, 6/s for Clash Detection), cuts its rate when the API answers 429, and
probes back up while calls go through, never above the ceiling. An API without a configured rate is not paced until
a 429 tells it a rate (one that follows calls that went through). A ``Retry-After`` always wins: after a 429 no
call to that API leaves the process until it has passed.

The design, and why (the figures are in BENCHMARKS.md, from ``make bench``):

**Cut to what got through.** The AWS SDKs' "adaptive" retry mode cuts relative to the *measured* send rate, not
the allowed one. Here the cut is relative to the measured *accepted* rate: the calls the API answered with anything
but 429 (or 401) over the last second, or over the time three calls take at the current rate when that is longer.
When N processes start together at the ceiling the platform accepts L calls a second in all, so after one 429 each
the sum of their rates is about L; cutting the allowed rate by a factor would need about log(N) rounds, each costing
a 429 per process. The first cut goes to the accepted rate itself (``FIRST_CUT``); later cuts take ``CUT`` (0.85)
of it, but never more than ``CUT``² of the allowed rate in one step, so one unlucky second does not send a process
to the floor. One cut per ``Retry-After``: further 429s while it lasts answer calls sent before the cut.

**Probe up by calls more than by seconds.** AWS grows along a CUBIC curve in *time* since the last throttle, with
absolute constants. With 16 processes that is 16 probes at once: the sum overshoots every few seconds and 429s stay
common. Here the rate after a cut grows with the calls accepted since, ``cut rate x (1 + C n³)`` with ``C`` = 1e-5:
flat for the first ~20 calls (+8%), doubled after 46, x11 after 100 (CUBIC's shape: careful near the rate that was
refused, fast once far past it). Counting calls makes the probing scale-free: a process with 1/16 of the limit makes
1/16 of the calls, so it probes 16 times more slowly in time, and N processes together probe about as fast as one
alone, so 429s from probing stay a small share of calls whatever N is. That is also why one process whose limit
went from 6/s to 2/s and back is back at 6/s in about 60 calls (some 20 s), while 16 processes sharing a limit that
came back take N times longer to claim it. A growth in time besides, ``x e^(g t)`` with ``g`` = 0.01/s (x1.8 a
minute), brings back a process that was cut deep and so makes few calls; an additive increase per process would make
the sum of the probes grow with N, which is what a shared limit cannot afford.

**Calls on a shared grid of slots.** The platform counts calls in a one-second window: any 7 calls within a second
break a 6/s limit, even when the average is 5/s, and independent periodic senders bunch up like that often. So a
configured API's calls go on a grid of slots ``1 / (ceiling x SAFETY)`` apart, counted from the Unix epoch
(instances' clocks agree to milliseconds, the slots are 175 ms apart at 6/s), and a process at ``ceiling / k`` takes
every k-th slot from its own offset. A window then holds at most ``ceiling`` slots, so the limit breaks only where
two processes share a slot; whoever is refused draws a new offset. Rates are therefore ``ceiling / k`` for whole k,
and the floor is ``ceiling / FLOOR_SLOTS`` (128): up to 128 busy instances can share one limit.

Waits are computed, never slept here: the caller sleeps, bounded by its own budget, and when a 429 arrived while it
waited for its slot (`held`), it asks again instead of sending. Thread-safe: the threads of a process share one
schedule per API.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from shared.settings import DEFAULT_RATE_LIMITS

# Pace slightly under the limit: the server counts arrivals, which jitter by a few milliseconds.
SAFETY = 0.95
FIRST_CUT = 1.0
CUT = 0.85
GROWTH_PER_CALL = 1e-5  # C in rate x (1 + C n³), n = calls accepted since the last cut
GROWTH_PER_SECOND = 0.01  # g in x e^(g t), t = seconds since the last cut
ACCEPTED_WINDOW = 1.0  # seconds over which the accepted rate is measured (at least)
ACCEPTED_CALLS = 3  # ... or the time this many calls take at the current rate, when longer
FLOOR_SLOTS = 128  # the lowest rate is ceiling / FLOOR_SLOTS
UNCONFIGURED_FLOOR = 0.5  # calls/s at least, for an API paced only because it answered 429 (AWS's minimum too)


class Lane:
    """The pacing state of one API in one process. Not thread-safe: the `Pacer` holds a lock around it.

    ``ceiling`` is the configured rate (None: unpaced until the first 429, then paced without a grid or ceiling).
    """

    def __init__(self, ceiling: float | None, rand: Callable[[], float]) -> None:
        self.ceiling = ceiling
        self.slot = 1.0 / (ceiling * SAFETY) if ceiling else None  # seconds between grid slots
        self.floor = ceiling / FLOOR_SLOTS if ceiling else UNCONFIGURED_FLOOR
        self.remembered = max(ACCEPTED_WINDOW, ACCEPTED_CALLS / self.floor)  # seconds of accepted calls kept
        self._rand = rand
        self.cut_rate = ceiling or math.inf  # the rate right after the last cut
        self.cut_at: float | None = None  # when the last cut happened; None: never cut
        self.calls_since_cut = 0
        self.cut_hold_until = -math.inf  # 429s before this belong to the last cut
        self.held_until = -math.inf
        self.accepted_at: deque[float] = deque()
        self.offset = 0  # grid: this process's slots are those ≡ offset (mod k)
        self.last_slot: int | None = None  # grid: the last slot taken
        self.next_free = -math.inf  # no grid: when the next call may start

    def rate(self, now: float) -> float:
        """Calls per second allowed now (``inf``: not paced)."""
        if self.cut_at is None:
            return self.cut_rate
        grown = self.cut_rate * (1 + GROWTH_PER_CALL * self.calls_since_cut**3)
        grown *= math.exp(GROWTH_PER_SECOND * max(0.0, now - self.cut_at))
        return max(self.floor, min(self.ceiling or math.inf, grown))

    def allowed(self, now: float) -> float:
        """The rate this process sends at now: ``ceiling / k`` on the grid."""
        return self.ceiling / self.every(now) if self.ceiling is not None else self.rate(now)

    def every(self, now: float) -> int:
        """k: this process takes every k-th slot of the grid."""
        assert self.ceiling is not None
        return max(1, min(FLOOR_SLOTS, math.ceil(self.ceiling / self.rate(now) - 1e-9)))

    def start(self, now: float) -> tuple[float, int | None]:
        """When the next call may start (not before ``now``), and its grid slot when there is a grid."""
        earliest = max(now, self.held_until)
        if self.slot is not None:
            k = self.every(now)
            self.offset %= k
            index = math.ceil(earliest / self.slot - 1e-6)
            if self.last_slot is not None:
                index = max(index, self.last_slot + 1)
            index += (self.offset - index) % k
            at = index * self.slot
            return (earliest if at - earliest < 1e-6 * self.slot else at), index
        if self.cut_at is None:
            return earliest, None
        return max(earliest, self.next_free), None

    def take(self, start: float, slot: int | None) -> None:
        if slot is not None:
            self.last_slot = slot
        elif self.cut_at is not None:
            self.next_free = start + 1.0 / (self.rate(start) * SAFETY)

    def accepted(self, now: float) -> None:
        self.accepted_at.append(now)
        while self.accepted_at[0] <= now - self.remembered:
            self.accepted_at.popleft()
        if self.cut_at is not None:
            self.calls_since_cut += 1

    def throttled(self, now: float, seconds: float) -> None:
        self.held_until = max(self.held_until, now + seconds)
        if now < self.cut_hold_until:
            return
        rate = self.allowed(now)
        window = max(ACCEPTED_WINDOW, ACCEPTED_CALLS / rate)
        measured = sum(1 for at in self.accepted_at if at > now - window) / window
        if self.ceiling is None and self.cut_at is None and not measured:
            return  # nothing to measure a rate from (a first call refused): the Retry-After alone applies
        if self.cut_at is None:
            new = FIRST_CUT * min(rate, measured)
        else:
            new = max(CUT * min(rate, measured), CUT * CUT * rate)
        self.cut_rate = max(self.floor, new)
        self.cut_at, self.calls_since_cut = now, 0
        self.cut_hold_until = self.held_until
        if self.ceiling is not None:
            self.offset = self._draw(self.every(now))
        else:
            self.next_free = self.held_until

    def _draw(self, k: int) -> int:
        return min(k - 1, int(self._rand() * k))


class Pacer:
    """Paces calls to each API under its rate, adapting the rate to 429s, and holds an API after a 429.

    Thread-safe. ``clock`` is a wall clock by default, so that the slots of all instances line up; ``rand`` draws
    grid offsets. Both are arguments so tests replace them.
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._ceilings = dict(DEFAULT_RATE_LIMITS if rates is None else rates)
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._rand = rand

    def _lane(self, api: str) -> Lane:
        lane = self._lanes.get(api)
        if lane is None:
            lane = self._lanes[api] = Lane(self._ceilings.get(api), self._rand)
        return lane

    def reserve(self, api: str, limit: float = math.inf) -> float:
        """Reserve the next slot for ``api`` if it comes within ``limit`` seconds; return the seconds to wait.

        A wait longer than ``limit`` reserves nothing (the caller will not send) and is returned as it is, so
        the caller can give the work back to the queue for that long instead of sleeping through it.
        """
        with self._lock:
            now = self._clock()
            lane = self._lane(api)
            start, slot = lane.start(now)
            if start - now > limit:
                return start - now
            lane.take(start, slot)
            return start - now

    def held(self, api: str) -> float:
        """Seconds for which no call to ``api`` may leave this process (0: none). A caller that reserved a slot
        and finds the API held when the slot comes must not send: a 429 arrived meanwhile; it reserves again."""
        with self._lock:
            lane = self._lanes.get(api)
            return max(0.0, lane.held_until - self._clock()) if lane else 0.0

    def hold(self, api: str, seconds: float) -> None:
        """No call to ``api`` leaves this process for ``seconds`` (a 5xx's Retry-After); the rate stays."""
        with self._lock:
            lane = self._lane(api)
            lane.held_until = max(lane.held_until, self._clock() + seconds)

    def accepted(self, api: str) -> None:
        """The API took a call (it answered with anything but 429 or 401): count it towards probing up."""
        with self._lock:
            self._lane(api).accepted(self._clock())

    def throttled(self, api: str, seconds: float) -> None:
        """The API answered 429: hold it for ``seconds`` (its Retry-After) and cut this process's rate."""
        with self._lock:
            self._lane(api).throttled(self._clock(), seconds)

    def rate(self, api: str) -> float:
        """The calls per second this process allows itself to ``api`` now (``inf``: not paced)."""
        with self._lock:
            lane = self._lanes.get(api)
            if lane is None:
                return self._ceilings.get(api, math.inf)
            return lane.allowed(self._clock())

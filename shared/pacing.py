"""Client-side pacing: each process finds its share of an API's rate limit by itself, with no shared store.

Flex Consumption runs many instances, and each has its own `Pacer`. Each starts at the API's configured ceiling
(``ITWIN_RATE_LIMITS``: the documented limit, 6/s for Clash Detection), cuts its rate when the API answers 429, and
probes back up while calls go through, never above the ceiling. An API without a configured rate is not paced:
after a 429 its calls only wait out the ``Retry-After`` (see "APIs without a configured rate" below). A
``Retry-After`` always wins: after a 429 no call to that API leaves the process until it has passed.

The design, and why (the figures are in BENCHMARKS.md, from ``make bench``):

**Cut to what got through.** The AWS SDKs' "adaptive" retry mode cuts relative to the *measured* send rate, not the
allowed one. Here the cut is relative to the measured *accepted* rate: the calls the API answered with anything but 429
(or 401) over the last second, or over the time three calls take at the current rate when that is longer. When N
processes start together at the ceiling the platform accepts L calls a second in all, so after one 429 each the sum of
their rates is about L; cutting the allowed rate by a factor would need about log(N) rounds, each costing a 429 per
process. When the 429 is the only answer in that window (the first call of a burst after a quiet spell), the window
tells nothing, and a cut to it would go to the floor for one platform hiccup: the rate at which the process's last few
calls before went through is measured instead. A process with no such calls to measure (its first calls, or its first
after a long quiet spell) is not cut by one 429, which may be a hiccup as well as a limit that others already use (a
process sent to the floor by a hiccup on its first call sent one call every three minutes for ten: the reliability
suite's fault run did not settle); a second 429 among its last ``RECENT_ANSWERS`` answers sends it to the floor. That
costs a busy limit one more 429 per process that joins it. The first cut goes to the accepted rate itself
(``FIRST_CUT``); later cuts take ``CUT`` (0.85) of it, but never more than ``CUT``² of the allowed rate in one step, so
one unlucky second does not send a process to the floor. One cut per ``Retry-After``: further 429s while it lasts answer
calls sent before the cut. Two more rules keep isolated 429s (a shared slot, a platform hiccup) from wearing the rate
down: once a process has been cut, it cuts again only on the second 429 among its last ``RECENT_ANSWERS`` answers (a
lone one only moves it to another slot), and a process whose callers asked for less than ``BUSY_SHARE`` of its allowance
lately is not cut at all (it already sends less than its share; cutting it to what it happened to send would only delay
its next burst).

**Probe up by calls, and go back when a probe fails.** AWS grows along a CUBIC curve in *time* since the last
throttle, with absolute constants. With 16 processes that is 16 probes at once: the sum overshoots every few seconds
and 429s stay common. Here the rate after a cut grows with the calls accepted since, ``cut rate x (1 + C (n/p)³)``
with ``C`` = 1e-5 (CUBIC's shape: careful near the rate that was refused, fast once far past it). Counting calls makes
probing scale-free: a process with 1/16 of the limit makes 1/16 of the calls, so it probes 16 times more slowly in
time, and N processes together probe about as fast as one alone. ``p``, the patience, starts at
``PATIENCE_AFTER_CUT`` (2) after a cut, since the cut rate was measured, not guessed: a process cut to 1/6 of the
limit first probes above it after about 54 calls. A rate above the last one known to go through is a probe. A 429
answering a probe sends the process straight back to the known rate, to probe again as patiently: one 429 per
failed probe, where a cut would take two or more. A probe that holds for ``PROBE_CALLS`` calls becomes the known
rate, and ``p`` goes to 1: a limit that came back is taken up faster. One process whose limit went from 6/s to 2/s
and back is back at 6/s in some 20 s, however long the limit was low. Only a process whose cut found nothing
getting through (one that lost the first second to the others) also grows in time, ``x e^(g t)`` with ``g`` =
0.01/s (x1.8 a minute), since it makes too few calls to grow by them; an additive increase per process would make
the sum of the probes grow with N, which is what a shared limit cannot afford.

**Calls on a shared grid of slots.** The platform counts calls in a one-second window: any 7 calls within a second
break a 6/s limit, even when the average is 5/s, and independent periodic senders bunch up like that often. So a
configured API's calls go on a grid of slots ``1 / (ceiling x SAFETY)`` apart, counted from the Unix epoch
(instances' clocks agree to milliseconds, the slots are 175 ms apart at 6/s), and a process at ``ceiling / k`` takes
every k-th slot from its own offset. A window then holds at most ``ceiling`` slots, so the limit breaks only where
two processes share a slot; whoever is refused draws a new offset. Rates are therefore ``ceiling / k`` for whole k,
and the floor is ``ceiling / FLOOR_SLOTS`` (1024). A process at the floor still sends now and then (every three
minutes at 6/s), and every such call into a full grid is a 429 for someone: the floor is low so that the processes
that lost the first second add few of them, however many they are.

**APIs without a configured rate** are not paced. With no documented limit there is no ceiling to start from and
no grid, and a 429 there usually comes from the tier's limit, which counts every API together: what got through to
one API says little about its share. Pacing such an API at the rate measured when a 429 came turned isolated 429s
into a crawl (the reliability suite's fault run, with 4% of calls answered 429, went from 14 s to over 150 s).
Configure a rate to have an API paced.

**Clock steps.** The grid needs the wall clock; waits must not follow it when it steps (an NTP step, a VM resumed
from a pause). Every reading of the wall clock is checked against a monotonic one: when the two moved apart by more
than `STEP` since the last reading, the wall clock stepped, and everything remembered (the last slot, holds, recent
calls) moves with it. A step in either direction then adds no wait beyond the step's own second.

**Bounded memory.** Recent asks and accepted calls are kept only as far back, and only as many, as a decision can
use: the count that decides is never above ``ceiling + ACCEPTED_CALLS``, so no more are kept, whatever the ceiling.

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
RECENT_ANSWERS = 20  # after the first cut, a cut needs two 429s among this process's last 20 answers
BUSY_SHARE = 0.5  # a 429 cuts only a process that used at least this share of its allowance lately
FLOOR_SLOTS = 1024  # the lowest rate is ceiling / FLOOR_SLOTS
PATIENCE_AFTER_CUT = 2.0  # after a cut, probing counts calls at half speed: the cut rate was measured, not guessed
PROBE_CALLS = 10  # calls accepted at a higher rate before it counts as known to go through
STEP = 1.0  # seconds by which the wall clock may move apart from the monotonic one before it counts as a step


class Lane:
    """The pacing state of one API with a configured ``ceiling`` in one process. Not thread-safe: the `Pacer`
    holds a lock around it."""

    def __init__(self, ceiling: float, rand: Callable[[], float]) -> None:
        self.ceiling = ceiling
        self.slot = 1.0 / (ceiling * SAFETY)  # seconds between grid slots
        self.floor = ceiling / FLOOR_SLOTS
        self.remembered = ACCEPTED_CALLS / self.floor  # seconds of history kept, the longest window measured
        most = math.ceil(ceiling * ACCEPTED_WINDOW) + ACCEPTED_CALLS + 1  # more in a window decides nothing more
        self._rand = rand
        self.cut_rate = ceiling  # the rate right after the last cut
        self.cut_at: float | None = None  # when the last cut happened; None: never cut
        self.calls_since_cut = 0
        self.cut_hold_until = -math.inf  # 429s before this belong to the last cut
        self.accepted_at: deque[float] = deque(maxlen=most)
        self.asked_at: deque[float] = deque(maxlen=most)  # when callers asked for a slot, sent or held back
        self.refused_at: deque[float] = deque(maxlen=most)  # when 429s came
        self.answers: deque[bool] = deque(maxlen=RECENT_ANSWERS)  # True: refused (429)
        self.offset = 0  # this process's slots are those ≡ offset (mod k)
        self.last_slot: int | None = None  # the last slot taken
        self.safe = 1  # k known to go through: a smaller k is a probe
        self.probe_calls = 0  # calls accepted while probing
        self.patience = 1.0  # growth counts calls divided by this
        self.starved = False  # the last cut found nothing getting through: grow in time too

    def rate(self, now: float) -> float:
        """The rate allowed now, before it is rounded to a whole share of the slots."""
        if self.cut_at is None:
            return self.cut_rate
        grown = self.cut_rate * (1 + GROWTH_PER_CALL * (self.calls_since_cut / self.patience) ** 3)
        if self.starved:
            grown *= math.exp(GROWTH_PER_SECOND * max(0.0, now - self.cut_at))
        return max(self.floor, min(self.ceiling, grown))

    def every(self, now: float) -> int:
        """k: this process takes every k-th slot of the grid."""
        return max(1, min(FLOOR_SLOTS, math.ceil(self.ceiling / self.rate(now) - 1e-9)))

    def allowed(self, now: float) -> float:
        """The rate this process sends at now: ``ceiling / k``."""
        return self.ceiling / self.every(now)

    def start(self, earliest: float) -> tuple[float, int]:
        """The start of this process's next slot, not before ``earliest``, and its index."""
        k = self.every(earliest)
        self.offset %= k
        index = math.ceil(earliest / self.slot - 1e-6)
        if self.last_slot is not None:
            index = max(index, self.last_slot + 1)
        index += (self.offset - index) % k
        at = index * self.slot
        return (earliest if at - earliest < 1e-6 * self.slot else at), index

    def shift(self, seconds: float) -> None:
        """The wall clock stepped by ``seconds``: move every remembered time with it."""
        self.accepted_at = deque((at + seconds for at in self.accepted_at), maxlen=self.accepted_at.maxlen)
        self.asked_at = deque((at + seconds for at in self.asked_at), maxlen=self.asked_at.maxlen)
        self.refused_at = deque((at + seconds for at in self.refused_at), maxlen=self.refused_at.maxlen)
        self.cut_hold_until += seconds
        if self.cut_at is not None:
            self.cut_at += seconds
        if self.last_slot is not None:
            self.last_slot += round(seconds / self.slot)

    def asked(self, now: float) -> None:
        self.asked_at.append(now)
        while self.asked_at[0] <= now - self.remembered:
            self.asked_at.popleft()

    def take(self, slot: int) -> None:
        self.last_slot = slot

    def accepted(self, now: float) -> None:
        self.answers.append(False)
        self.accepted_at.append(now)
        while self.accepted_at[0] <= now - self.remembered:
            self.accepted_at.popleft()
        if self.cut_at is None:
            return
        self.calls_since_cut += 1
        k = self.every(now)
        if k < self.safe:
            self.probe_calls += 1
            if self.probe_calls >= PROBE_CALLS:  # the probe held: a new known rate, and probe sooner next time
                self.safe, self.probe_calls, self.patience = k, 0, 1.0

    def throttled(self, now: float, hold_until: float) -> None:
        """A 429: back to the known rate when it answers a probe; otherwise cut, unless it answers a call sent
        before the last cut, or it is a lone one, or this process sends less than its share anyway."""
        self.answers.append(True)
        self.refused_at.append(now)
        if now < self.cut_hold_until:
            return
        if self.cut_at is not None and self.every(now) < self.safe:
            self.cut_rate = self.ceiling / self.safe
            self.cut_at, self.calls_since_cut, self.probe_calls = now, 0, 0
            self.patience = PATIENCE_AFTER_CUT
            self.cut_hold_until = hold_until
            return
        if sum(self.answers) < 2 and (self.cut_at is not None or len(self.accepted_at) < 2):
            # A lone 429 among many accepted calls: two processes in one slot, or noise, not a limit too low. And
            # with nothing measured yet (the process's first calls, or its first after a long quiet spell), one 429
            # cannot tell a limit that others already use from a platform hiccup: the next one decides.
            self.offset = self._draw(self.every(now))
            return
        rate = self.allowed(now)
        window = max(ACCEPTED_WINDOW, ACCEPTED_CALLS / rate)
        if not self._busy(now, window, rate):
            return
        measured = self._accepted_rate(now, window)
        if self.cut_at is None:
            new = FIRST_CUT * min(rate, measured)
        else:
            new = max(CUT * min(rate, measured), CUT * CUT * rate)
        self.cut_rate = max(self.floor, new)
        self.starved = new <= self.floor
        self.cut_at, self.calls_since_cut, self.probe_calls = now, 0, 0
        self.patience = PATIENCE_AFTER_CUT
        self.cut_hold_until = hold_until
        self.safe = self.every(now)
        self.offset = self._draw(self.safe)

    def _accepted_rate(self, now: float, window: float) -> float:
        """The calls a second the API took from this process over the last ``window`` seconds. When the 429
        being answered is the only answer in it (the first call after a quiet spell), the window says nothing of
        what gets through, and a cut to it would go to the floor: the rate at which the API took this process's
        last ``ACCEPTED_CALLS`` calls before decides instead."""
        recent = sum(1 for at in self.accepted_at if at > now - window)
        refused = sum(1 for at in self.refused_at if at > now - window)
        if recent or refused > 1 or len(self.accepted_at) < 2:
            return recent / window
        last = list(self.accepted_at)[-ACCEPTED_CALLS:]
        return (len(last) - 1) / max(last[-1] - last[0], self.slot)

    def _busy(self, now: float, window: float, rate: float) -> bool:
        """Whether callers asked for at least ``BUSY_SHARE`` of this process's allowance over the window (or since
        they first asked, when that was within the window). Asking counts, sent or not: while a Retry-After holds
        the API, callers still ask."""
        asked = [at for at in self.asked_at if at > now - window]
        if not asked:
            return False
        span = window if self.asked_at[0] <= now - window else max(now - asked[0], 1.0 / rate)
        return len(asked) >= BUSY_SHARE * rate * span

    def _draw(self, k: int) -> int:
        return min(k - 1, int(self._rand() * k))


class Pacer:
    """Paces calls to each API under its rate, adapting the rate to 429s, and holds an API after a 429.

    Thread-safe. ``clock`` is a wall clock by default, so that the slots of all instances line up; ``monotonic``
    tells its steps from time passing (a test that drives ``clock`` by hand passes the same clock); ``rand`` draws
    grid offsets. All are arguments so tests replace them.
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._ceilings = dict(DEFAULT_RATE_LIMITS if rates is None else rates)
        self._lanes: dict[str, Lane] = {}
        self._held_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wall = clock
        self._monotonic = monotonic
        self._offset: float | None = None  # wall minus monotonic at the last reading
        self._rand = rand

    def _clock(self) -> float:
        """The wall clock now; a step since the last reading moves what is remembered with it. Under the lock."""
        now = self._wall()
        offset = now - self._monotonic()
        if self._offset is not None and abs(offset - self._offset) > STEP:
            step = offset - self._offset
            self._held_until = {api: until + step for api, until in self._held_until.items()}
            for lane in self._lanes.values():
                lane.shift(step)
        self._offset = offset
        return now

    def _lane(self, api: str) -> Lane | None:
        lane = self._lanes.get(api)
        if lane is None and api in self._ceilings:
            lane = self._lanes[api] = Lane(self._ceilings[api], self._rand)
        return lane

    def reserve(self, api: str, limit: float = math.inf) -> float:
        """Reserve the next slot for ``api`` if it comes within ``limit`` seconds; return the seconds to wait.

        A wait longer than ``limit`` reserves nothing (the caller will not send) and is returned as it is, so
        the caller can give the work back to the queue for that long instead of sleeping through it.
        """
        with self._lock:
            now = self._clock()
            start, slot = max(now, self._held_until.get(api, now)), None
            lane = self._lane(api)
            if lane is not None:
                lane.asked(now)
                start, slot = lane.start(start)
            if start - now > limit:
                return start - now
            if lane is not None and slot is not None:
                lane.take(slot)
            return start - now

    def held(self, api: str) -> float:
        """Seconds for which no call to ``api`` may leave this process (0: none). A caller that reserved a slot
        and finds the API held when the slot comes must not send: a 429 arrived meanwhile; it reserves again."""
        with self._lock:
            now = self._clock()  # first: a step it finds moves the hold
            return max(0.0, self._held_until.get(api, 0.0) - now)

    def hold(self, api: str, seconds: float) -> None:
        """No call to ``api`` leaves this process for ``seconds`` (a 5xx's Retry-After); the rate stays."""
        with self._lock:
            self._hold(api, self._clock() + seconds)

    def _hold(self, api: str, until: float) -> None:
        self._held_until[api] = max(self._held_until.get(api, until), until)

    def accepted(self, api: str) -> None:
        """The API took a call (it answered with anything but 429 or 401): count it towards probing up."""
        with self._lock:
            lane = self._lane(api)
            if lane is not None:
                lane.accepted(self._clock())

    def throttled(self, api: str, seconds: float) -> None:
        """The API answered 429: hold it for ``seconds`` (its Retry-After) and, when it has a configured rate,
        cut this process's rate."""
        with self._lock:
            now = self._clock()
            self._hold(api, now + seconds)
            lane = self._lane(api)
            if lane is not None:
                lane.throttled(now, self._held_until[api])

    def rate(self, api: str) -> float:
        """The calls per second this process allows itself to ``api`` now (``inf``: not paced)."""
        with self._lock:
            lane = self._lane(api)
            return lane.allowed(self._clock()) if lane is not None else math.inf

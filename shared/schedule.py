"""One pacing schedule shared by every instance, kept in the app's table, with today's pacer as its fallback.

`shared.pacing` paces each process by itself, and its own analysis shows what that cannot do: an instance learns
that a limit is shared only from a 429 of its own, so every instance that joins a busy limit pays one. Here the
instances share one schedule instead: a single entity in the ledger's table (PartitionKey `PARTITION`, RowKey
`ROW`, one JSON property) holds, per API, the GCRA "theoretical arrival time" (``tat``: the next free slot), the
rate the schedule issues slots at, and a generation; and one ``tat`` per window of the subscription's tier limits
(``ITWIN_TIER_LIMITS``), which every API's calls count against. ``ITWIN_SHARED_PACING=on`` turns it on.

**Reserving.** A slot for an API is its ``tat`` (or now, when that has passed); reserving it moves ``tat`` one
interval (``1 / (rate x SAFETY)``) past it, so the slots of one API are evenly spaced and a one-second window of the
platform never holds more than the limit. The tier's limits count every API together: each window's calls are
counted by slot time in buckets of a tenth of the window, and a bucket holds at most ``calls x SAFETY / 11`` (a
sliding window of any alignment overlaps at most 11 buckets), so no window, sliding or fixed, exceeds its limit; a
slot whose bucket is full moves to the next bucket with room. The cost: about 86% of a tier's limit is usable.
The change is written by
a conditional update on the entity's ETag (If-Match): of two instances that read the same state, one writes and the
other gets 412, reads again and recomputes. That is the only thing deciding who gets which slot: no decision
compares two machines' clocks. An instance keeps the state and ETag its last write returned, so while nobody else
writes, a reservation is one request. **Batching:** an instance has one table request in flight at a time; the
reservations its invocations ask for meanwhile (any API) go together in the next one, so contention and requests per
call fall as load rises (group commit). A slot is reserved only for a caller that asked, so nothing is reserved
ahead for work that may not come.

**A slot beyond the invocation's budget** is not given back: the command goes back to the queue with its visibility
delay set to the slot (rounded down to the queue's whole seconds, so it shows early) and carries the reservation
(``slot`` in the message: API, time, generation). Whoever receives it waits the rest and sends, with no table
request (`redeem`). Slots are not reserved more than `HORIZON` ahead: a command whose slot would lie further goes
back unreserved, to show when the schedule has come closer, so a limit that drops does not meet a long backlog of
slots reserved at the old rate.

**A 429 moves the shared schedule** (traffic the app does not see, a lowered limit, a slot sent late): the API's
``tat`` goes past the ``Retry-After`` for every instance. A second 429 within `STRIKE_WINDOW` (a lone one is more
likely a call sent late than a lower limit) cuts its rate by `CUT`, once per generation: a 429 answering a slot
reserved before the last cut (an older generation) does not cut again. A cut starts the API's schedule again after
the ``Retry-After`` at the new rate: the slots reserved before it are void, and a carried slot of an older
generation than this instance knows is not used; it reserves again. An instance whose copy of the state is older
than the cut still sends its carried slots at the old rate: a 429 each, at worst, which tells it. After
`PROBE_AFTER` seconds without a cut the rate doubles back towards the ceiling (``ITWIN_RATE_LIMITS``), one step per
reservation; a limit that came back is thus reached within a few seconds, and a limit that stays low costs a 429
every few seconds (one probe).

**Falls back, comes back.** A table request that fails (unreachable, 5xx, a timeout: the table client is built with
short timeouts and no retries) or that the caller waited on longer than `TABLE_WAIT` sends this process to its own
adaptive `Pacer` (`shared.pacing`) for `DOWN_FIRST` seconds, doubling to `DOWN_MOST` while it keeps failing; the
first reservation after that tries the table again, and one that succeeds brings the process back. The local pacer
is fed every answer all along, so it starts warm. Nothing is lost or doubled either way: pacing only delays calls,
never sends or drops one; a failure here never raises to the caller; a reservation whose write landed but whose
answer was lost is a slot nobody uses (a little throughput), never two calls in one slot.

**Failure modes, and what they cost.** Wall time places the slots (as the local pacer's grid does): an instance whose
clock is ``d`` behind sends its slots ``d`` late, one ahead reserves from a later "now". Skew costs pacing accuracy
(calls closer together than the interval, at worst a 429, which is a wait), never correctness. Other costs: an
instance in fallback while others use the table adds its local pace to the schedule's (429s until it returns); a
message shown later than its slot (a host that polls slowly: keep host.json's ``maxPollingInterval`` at 2 s) finds
its slot more than `LATE` past and reserves again (a second give-back); a slot reserved for a command that is then
not sent (the invocation died, the message expired) is a gap in the schedule; with many instances reserving at
once, 412s add requests (measured in BENCHMARKS.md). The entity is one row for every API: its throughput bounds
the reservations a second (Table Storage: about 1,000 writes a second per partition, far above any API's limit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from shared.pacing import SAFETY, Pacer

log = logging.getLogger(__name__)

PARTITION = "pacing"
ROW = "schedule"
CUT = 0.5  # a 429 cuts the shared rate to this share
GROW = 2.0  # ... and PROBE_AFTER seconds without one multiply it by this, up to the ceiling
PROBE_AFTER = 1.5
STRIKE_WINDOW = 2.0  # seconds: a cut needs a second 429 of the same generation within this long of the first
FLOOR_SHARE = 64  # the lowest shared rate is the ceiling / 64
TIER_BUCKETS = 10  # a tier window's calls are counted in buckets of a tenth of it
HORIZON = 60.0  # seconds: no slot is reserved further ahead
LATE = 0.5  # a carried slot more than this share of the API's interval past is void
MAX_BATCH = 64  # reservations in one table request
MAX_TRIES = 8  # conditional writes per request before giving up on contention (this call paces locally)
TABLE_TIMEOUT = 0.5  # seconds: the table client's connect and read timeouts (see `table_client_options`)
TABLE_WAIT = 2.0  # seconds a caller waits for a reservation before pacing locally
CONFLICT_PAUSE = 0.02  # seconds: the longest random pause after a 412 before reading again
DOWN_FIRST = 1.0
DOWN_MOST = 30.0


def table_client_options() -> dict[str, Any]:
    """Options for the schedule's own table client: short timeouts and no retries, so that a table that does not
    answer sends the process to its local pacer within about `TABLE_TIMEOUT`."""
    return {"retry_total": 0, "connection_timeout": TABLE_TIMEOUT, "read_timeout": TABLE_TIMEOUT}


# -- the slot a command carries ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """A reserved slot: when (wall clock, Unix seconds) a call to ``api`` may go, and the schedule's generation for
    that API when it was reserved."""

    api: str
    at: float
    gen: int = 0

    def to_message(self) -> dict[str, Any]:
        return {"api": self.api, "at": round(self.at, 3), "gen": self.gen}


_CARRIED: ContextVar[list[Slot] | None] = ContextVar("itwin_carried_slot", default=None)


@contextlib.contextmanager
def carrying(slot: Slot | None) -> Iterator[None]:
    """While the block runs, the first paced call to ``slot.api`` in this context uses ``slot`` (see `taken`)."""
    token = _CARRIED.set([slot] if slot is not None else None)
    try:
        yield
    finally:
        _CARRIED.reset(token)


def taken(api: str) -> Slot | None:
    """The slot carried for ``api`` in this context, once: a second call gets None."""
    box = _CARRIED.get()
    if box and box[0].api == api:
        return box.pop()
    return None


# -- the state and its pure changes ------------------------------------------------------------------------------
@dataclass
class ApiState:
    tat: float = 0.0  # the next free slot
    rate: float | None = None  # calls/s issued now (None: the API has no configured rate, only the tier)
    gen: int = 0  # cuts so far
    changed: float = 0.0  # when the rate last changed
    strike: float = 0.0  # when a lone 429 of this generation came (0: none lately)


@dataclass
class State:
    """The shared entity's content."""

    apis: dict[str, ApiState] = field(default_factory=dict)
    tier: dict[str, dict[str, int]] = field(default_factory=dict)  # window (s, as text) -> bucket index -> calls

    def to_json(self) -> str:
        apis = {name: [a.tat, a.rate, a.gen, a.changed, a.strike] for name, a in sorted(self.apis.items())}
        return json.dumps({"apis": apis, "tier": self.tier}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> State:
        data = json.loads(text or "{}")
        apis = {name: ApiState(*values) for name, values in (data.get("apis") or {}).items()}
        tier = {str(k): {str(i): int(n) for i, n in v.items()} for k, v in (data.get("tier") or {}).items()}
        return cls(apis, tier)

    def copy(self) -> State:
        return State.from_json(self.to_json())


@dataclass(frozen=True)
class Limits:
    """What the schedule paces: each API's ceiling (calls/s) and the tier's windows (seconds, calls)."""

    ceilings: Mapping[str, float]
    tier: tuple[tuple[float, int], ...] = ()

    def paced(self, api: str) -> bool:
        return api in self.ceilings or bool(self.tier)


def _api(state: State, limits: Limits, api: str, now: float) -> ApiState:
    ceiling = limits.ceilings.get(api)
    current = state.apis.get(api)
    if current is None:
        current = state.apis[api] = ApiState(rate=ceiling, changed=now)
    if ceiling is None:
        current.rate = None
    elif current.rate is None or current.rate > ceiling:
        current.rate = ceiling
    elif current.rate < ceiling and now - current.changed >= PROBE_AFTER:
        current.rate, current.changed = min(ceiling, current.rate * GROW), now
    return current


def _bucket(window: float) -> float:
    return window / TIER_BUCKETS


def _cap(calls: int) -> int:
    """Calls one bucket of a tier window may hold: a sliding window of any alignment overlaps at most
    ``TIER_BUCKETS + 1`` buckets, so that many full buckets stay within the limit (with `SAFETY`)."""
    return max(1, math.floor(calls * SAFETY / (TIER_BUCKETS + 1)))


def next_slot(state: State, limits: Limits, api: str, now: float) -> float:
    """When the next slot for ``api`` would be, without reserving it: the API's next free slot, moved to the next
    tier bucket that has room while its own is full."""
    at = max(now, _api(state, limits, api, now).tat)
    for _ in range(10_000):
        full = None
        for window, calls in limits.tier:
            size = _bucket(window)
            index = math.floor(at / size)
            if state.tier.get(_key(window), {}).get(str(index), 0) >= _cap(calls):
                full = (index + 1) * size
                break
        if full is None:
            return at
        at = full
    return at


def reserve(state: State, limits: Limits, asks: list[str], now: float) -> list[Slot | float]:
    """Reserve a slot per ask (an API name), in order, changing ``state``: each a `Slot`, or, where the slot would
    lie more than `HORIZON` ahead, the time it would be (nothing reserved)."""
    for window, _ in limits.tier:  # buckets no window that can still be reserved in reaches
        size = _bucket(window)
        oldest = math.floor(now / size) - TIER_BUCKETS - 1
        counts = state.tier.setdefault(_key(window), {})
        for index in [i for i in counts if int(i) < oldest]:
            del counts[index]
    answers: list[Slot | float] = []
    for api in asks:
        at = next_slot(state, limits, api, now)
        if at - now > HORIZON:
            answers.append(at)
            continue
        current = state.apis[api]
        if current.rate:
            current.tat = at + 1.0 / (current.rate * SAFETY)
        for window, _ in limits.tier:
            counts = state.tier.setdefault(_key(window), {})
            index = str(math.floor(at / _bucket(window)))
            counts[index] = counts.get(index, 0) + 1
        answers.append(Slot(api, at, current.gen))
    return answers


def throttled(state: State, limits: Limits, api: str, now: float, retry_after: float, gen: int | None) -> bool:
    """A 429 for ``api``: no slot before ``retry_after`` has passed, and the rate cut unless the call's slot was
    reserved before the last cut (``gen`` older). Whether it cut."""
    current = _api(state, limits, api, now)
    ceiling = limits.ceilings.get(api)
    if ceiling is None or current.rate is None or (gen is not None and gen < current.gen):
        current.tat = max(current.tat, now + retry_after)
        return False
    if current.strike <= 0 or now - current.strike > STRIKE_WINDOW:
        # A lone 429 (a call sent late, a burst of traffic the app does not see): the schedule pauses for the
        # Retry-After, and the slots already reserved stand.
        current.strike = now
        current.tat = max(current.tat, now + retry_after)
        return False
    # A cut starts the schedule again after the Retry-After, at the new rate: the slots reserved at the old rate
    # are void (their generation is older), and are reserved again as their commands show, rather than after them.
    current.tat = now + retry_after
    current.rate = max(ceiling / FLOOR_SHARE, current.rate * CUT)
    current.gen += 1
    current.changed = now + retry_after  # probing counts from when the schedule starts again
    current.strike = 0.0
    return True


def _key(window: float) -> str:
    return f"{window:g}"


# -- the process's view: group commit over the table, and the fallback --------------------------------------------
@dataclass
class Reservation:
    """What a caller waits for: ``wait`` seconds; ``slot`` the shared slot reserved (None: paced locally, or, with
    ``beyond``, no slot reserved because it lies past `HORIZON`)."""

    wait: float
    slot: Slot | None = None
    beyond: bool = False


class _Waiter:
    def __init__(self, api: str) -> None:
        self.api = api
        self.done = threading.Event()
        self.answer: Slot | float | None = None  # None: the table failed
        self.abandoned = False


class TableDown(Exception):
    """The schedule's table did not answer as it should (wraps the cause)."""


class Contended(TableDown):
    """Every conditional write of one request met another instance's write first: this call paces locally, and the
    process stays on the table."""


class SharedPacer:
    """Paces calls by the shared schedule in ``table`` (an ``azure.data.tables.TableClient`` or `MemoryTable`),
    falling back to ``local`` (today's `Pacer`) while the table fails. Thread-safe.

    The methods the client uses are those of `Pacer` (``held``, ``hold``, ``accepted``, ``rate``), plus `reserve`
    and `redeem` returning a `Reservation`, and ``throttled`` taking the slot the refused call used.
    """

    shared = True

    def __init__(
        self,
        table: Any,
        rates: Mapping[str, float],
        tier: tuple[tuple[float, int], ...] = (),
        *,
        local: Pacer | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.table = table
        self._sleep = sleep
        self._rand = rand
        self.limits = Limits(dict(rates), tuple(tier))
        self.local = local or Pacer(rates, clock=clock, monotonic=monotonic)
        self._wall = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()  # guards the fields below
        self._table_lock = threading.Lock()  # one table request in flight per process
        self._pending: list[_Waiter] = []
        self._state: State | None = None
        self._etag: str | None = None
        self._down_until = -math.inf
        self._down_for = 0.0
        self.counts: Counter[str] = Counter()  # table requests by kind, conflicts, fallbacks

    # -- what the client asks ------------------------------------------------------------------------------------
    @property
    def down(self) -> bool:
        """Whether this process paces locally now (the table failed lately)."""
        with self._lock:
            return self._monotonic() < self._down_until

    def reserve(self, api: str, limit: float = math.inf) -> Reservation:
        """A slot for a call to ``api``: shared when the table answers, else from the local pacer (which, as
        `Pacer.reserve`, takes none when it lies past ``limit``). A shared slot is reserved whatever ``limit``: the
        caller sends at it, or gives the command back carrying it."""
        if not self.limits.paced(api) or self.down:
            return Reservation(self.local.reserve(api, limit))
        answer = self._ask(api)
        if answer is None:
            return Reservation(self.local.reserve(api, limit))
        if isinstance(answer, Slot):
            return Reservation(answer.at - self._wall(), answer)
        return Reservation(max(0.0, answer - self._wall() - HORIZON / 2), beyond=True)

    def redeem(self, slot: Slot) -> Reservation | None:
        """The wait for a slot a command carried, or None when it is void: more than `LATE` of an interval past,
        of an older generation than this process knows (the schedule was cut since), or the API held after a 429
        here."""
        wait = slot.at - self._wall()
        ceiling = self.limits.ceilings.get(slot.api)
        late = LATE / (ceiling * SAFETY) if ceiling else LATE
        with self._lock:
            known = self._state.apis.get(slot.api) if self._state is not None else None
        if wait < -late or (known is not None and known.gen > slot.gen) or self.local.held(slot.api) > 0:
            self.counts["void slots"] += 1
            return None
        return Reservation(wait, slot)

    def held(self, api: str) -> float:
        return self.local.held(api)

    def hold(self, api: str, seconds: float) -> None:
        self.local.hold(api, seconds)

    def accepted(self, api: str) -> None:
        self.local.accepted(api)

    def throttled(self, api: str, seconds: float, slot: Slot | None = None) -> None:
        """A 429: hold and cut locally, and move the shared schedule (when the table answers)."""
        self.local.throttled(api, seconds)
        if not self.limits.paced(api) or self.down:
            return
        gen = slot.gen if slot is not None and slot.api == api else None
        if not self._table_lock.acquire(timeout=TABLE_WAIT):
            return
        try:
            self._commit(lambda state, now: throttled(state, self.limits, api, now, seconds, gen))
        except TableDown as error:
            if not isinstance(error, Contended):
                self._fail(error)
        finally:
            self._table_lock.release()

    def rate(self, api: str) -> float:
        """The calls per second the schedule this process follows allows ``api`` now (``inf``: not paced)."""
        if self.down or api not in self.limits.ceilings:
            return self.local.rate(api)
        with self._lock:
            known = self._state.apis.get(api) if self._state is not None else None
        return known.rate if known is not None and known.rate else self.limits.ceilings[api]

    # -- group commit ----------------------------------------------------------------------------------------------
    def _ask(self, api: str) -> Slot | float | None:
        waiter = _Waiter(api)
        with self._lock:
            self._pending.append(waiter)
        end = self._monotonic() + TABLE_WAIT
        while not waiter.done.is_set():
            left = end - self._monotonic()
            if left <= 0 or not self._table_lock.acquire(timeout=left):
                with self._lock:
                    waiter.abandoned = not waiter.done.is_set()
                if waiter.abandoned:
                    self._fail(TableDown(f"no reservation within {TABLE_WAIT:g} s"))
                    return None
                break
            try:
                if not waiter.done.is_set():
                    self._serve()
            finally:
                self._table_lock.release()
        return waiter.answer

    def _serve(self) -> None:
        """Reserve for the pending callers, in one conditional write (under the table lock). After a 412 it waits a
        random moment before reading again (instances that met desynchronise) and takes in who asked meanwhile."""
        batch: list[_Waiter] = []

        def take() -> None:
            with self._lock:
                more = [w for w in self._pending if not w.abandoned][: MAX_BATCH - len(batch)]
                self._pending = [w for w in self._pending if not w.abandoned and w not in more]
            batch.extend(more)

        take()
        try:
            answers = self._commit(
                lambda state, now: reserve(state, self.limits, [w.api for w in batch], now), retry=take
            )
        except TableDown as error:
            if not isinstance(error, Contended):
                self._fail(error)
            answers = [None] * len(batch)
        self.counts["reservations"] += sum(isinstance(a, Slot) for a in answers)
        with self._lock:
            for waiter, answer in zip(batch, answers, strict=True):
                waiter.answer = answer
                waiter.done.set()

    def _commit(self, change: Callable[[State, float], Any], retry: Callable[[], None] | None = None) -> Any:
        """Apply ``change`` to the shared state by a conditional write on its ETag, reading again after a 412
        (``retry`` is called first); the change's result. Raises `TableDown` when the table fails or stays
        contended."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, HttpResponseError
        from azure.data.tables import UpdateMode

        try:
            for _ in range(MAX_TRIES):
                if self._state is None or self._etag is None:
                    self._load()
                assert self._state is not None
                state = self._state.copy()
                result = change(state, self._wall())
                if isinstance(result, list) and not any(isinstance(a, Slot) for a in result):
                    return result  # nothing reserved (all past the horizon): nothing to write
                entity = {"PartitionKey": PARTITION, "RowKey": ROW, "state": state.to_json()}
                self.counts["writes"] += 1
                try:
                    written = self.table.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=self._etag, match_condition=MatchConditions.IfNotModified
                    )
                except HttpResponseError as failure:
                    if failure.status_code not in (404, 412):
                        raise
                    self.counts["conflicts"] += 1
                    with self._lock:
                        self._state = self._etag = None
                    self._sleep(self._rand() * CONFLICT_PAUSE)
                    if retry is not None:
                        retry()
                    continue
                with self._lock:
                    self._state, self._etag = state, written["etag"]
                self._recovered()
                return result
        except AzureError as error:
            with self._lock:
                self._state = self._etag = None
            raise TableDown(f"{type(error).__name__}: {str(error)[:200]}") from error
        raise Contended(f"the schedule changed under {MAX_TRIES} writes in a row")

    def _load(self) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        for _ in range(3):
            self.counts["reads"] += 1
            try:
                entity = self.table.get_entity(PARTITION, ROW)
            except ResourceNotFoundError:
                pass
            else:
                with self._lock:
                    self._state, self._etag = State.from_json(entity.get("state", "")), entity.metadata["etag"]
                return
            self.counts["inserts"] += 1
            state = State()
            try:
                written = self.table.create_entity({"PartitionKey": PARTITION, "RowKey": ROW, "state": state.to_json()})
            except ResourceExistsError:
                continue
            with self._lock:
                self._state, self._etag = state, written["etag"]
            return
        raise TableDown("the schedule's row kept appearing and vanishing")

    # -- fallback --------------------------------------------------------------------------------------------------
    def _fail(self, error: Exception) -> None:
        with self._lock:
            self._down_for = min(DOWN_MOST, self._down_for * 2 or DOWN_FIRST)
            self._down_until = self._monotonic() + self._down_for
            down_for = self._down_for
        self.counts["fallbacks"] += 1
        log.warning("the shared pacing schedule failed (%s): pacing locally for %.0f s", error, down_for)

    def _recovered(self) -> None:
        with self._lock:
            was_down, self._down_for = self._down_for > 0, 0.0
        if was_down:
            log.warning("the shared pacing schedule answers again: pacing by it")

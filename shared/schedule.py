"""One pacing schedule shared by every instance, kept in the app's table, with today's pacer as its fallback.

`shared.pacing` paces each process by itself, and its own analysis shows what that cannot do: an instance learns
that a limit is shared only from 429s of its own, so every instance that joins a busy limit pays them. Here the
instances share one schedule instead: one entity of the ledger's table (PartitionKey `PARTITION`, RowKey `ROW`, one
JSON property). It holds, per API, the GCRA "theoretical arrival time" (``tat``: the next free slot), the rate the
schedule issues slots at, the rate known to go through, and a generation; and the calls counted in each bucket of
each window of the subscription's tier limits (``ITWIN_TIER_LIMITS``), which every API's calls count against.
``ITWIN_SHARED_PACING=on`` turns it on.

**Reserving.** A slot for an API is its ``tat`` (or now, when that has passed); reserving it moves ``tat`` one
interval (``1 / (rate x SAFETY)``) past it, so a one-second window of the platform never holds more than the limit.
The tier's limits count every API together: each window's calls are counted by slot time in buckets of a tenth of
the window, and a bucket holds at most ``calls x SAFETY / 11`` (a sliding window of any alignment overlaps at most
11 buckets, `_cap`); no window, sliding or fixed, exceeds its limit; a slot whose bucket is full moves to the next
bucket with room (about 86% of a tier's limit is usable). The change is written by a conditional update on the
entity's ETag (If-Match): of two instances that read the same state, one writes and the other gets 412. That is the
only thing deciding who gets which slot: no decision compares two machines' clocks.

**Group commit.** An instance has one table request in flight at a time; a request lingers `LINGER` (30 ms) before
it starts, and the reservations its invocations ask for meanwhile (any API) go together in it. It keeps a copy of
the schedule and its ETag from its last read or write, and while that copy is current a request is one conditional
write. A slot is reserved only for a caller that asked, so nothing is reserved ahead for work that may not come (a
block reserved ahead would leave gaps wherever its instance stopped getting work).

**Combining, after a 412.** Group commit amortises the table over one instance's asks, at most its concurrent
invocations; when a fleet meets a backlog, every instance asks at once, and writes that each carry a few asks mostly
meet 412s (2.4 table requests per API call at 256 instances in the model, with the best random backoff we found and
the schedule split over three entities). So an instance whose write met a 412, for `COMBINE_FOR` (2 s) after, and
one that has not read the schedule yet, posts its asks as an *ask row* instead (RowKey ``ask-<random>``: an insert,
which meets no one), pauses a random moment under `ASK_PAUSE` (0.3 s), and reads the partition (one query: the
schedule, the ask rows, the answers row). If its row is gone, another instance's write served it, and its answers
are in the answers row (`Book`). If not, it writes: its own asks and every ask row it read (up to `TRANSACTION`,
less the entity, the answers row and its own row), in order, in one entity-group transaction that updates the
schedule on its ETag, writes each served row's answers into the answers row on that row's ETag, and deletes each
served row on its ETag. The transaction is all or nothing, so a row is served by exactly one write: a 412, 404 or
409 anywhere means another writer got there first, and the instance pauses (`conflict_pause`: 0.1 s doubling to
1 s, with full jitter) and reads again. Any write serves the rows its last read found, so one write serves every
instance that was waiting, and a fleet pays about one write per round of contention instead of one per instance.
An instance whose row stays unserved for `MAX_TRIES` writes or `TABLE_WAIT` takes it back (a delete in a
transaction, which says whether the row was still there: a row already gone was served, and its answers are read).
The answers row keeps the newest answers that fit in `ANSWERS_CHARS` (a string property holds 32K characters: the
rows of some full transactions), and an asker reads within about `ASK_PAUSE` of being served. Why 0.3 s: askers
that read within a request's time of each other all write, and all but one meet a 412; at 16 processes started
together on this machine a 0.1 s pause cost 1.00-1.05 table requests per call (38 of 52 writes of rows met
another's first), 0.3 s 0.75, and 0.5 s 0.64-0.70; a longer pause is a longer wait for every caller whose asks
went into a row, and a slot about to come that its caller hears of too late is reserved again.

**Why one entity.** The schedule used to be split over three entities, each owning every third slot, to spread the
writers; with combining the writers are few, and one entity has none of the split's costs: entities whose next free
slots drift apart by a batch end a backlog that much later (wall time 1.06-1.10 times the floor at 16 instances),
slots about to come had to be taken one per write so that none passed unused, a 429 had to reach every entity, and
the tier's buckets had to be shared out. In the model, combining on one entity costs 0.56-0.65 table requests per
API call from 16 to 256 instances, started together or spread over 4 s, at 1.05-1.07 times the floor
(BENCHMARKS.md). A far slot costs nothing for a longer wait: the backlog's slots lie seconds to minutes ahead.

**A slot beyond the invocation's budget** is not given back: the command goes back to the queue with its visibility
delay set to the slot (rounded down to the queue's whole seconds, so it shows early) and carries the reservation
(``slot`` in the message: API, time, generation). Whoever receives it waits the rest and sends, with no table request
(`redeem`). A backlog is thus reserved once, in order, and each command goes back at most once for pacing. At the API's
ceiling a slot may lie up to `HORIZON` ahead (an hour: any backlog a queue of commands holds); below it (after a cut,
while probing back up), and while a lone 429 may still turn out to be a lower limit (within its strike window, below),
no more than `CUT_HORIZON`, so that a backlog is not scheduled at a rate that is a guess or in doubt (a command past it
goes back unreserved, to ask again when the schedule has come closer). Where the process's copy shows the next free slot
past its horizon, it answers so without a table request or a linger: a process goes through the part of a backlog it
cannot book at the queue's speed, so that the commands carrying the slots it did book, which the queue shows behind that
backlog, are not shown late (in the limit-drop run they were, and no call went for two seconds after the first 429, so
the second came too late to cut).

**Sent late is not sent.** A slot more than `LATE` of an interval past when its caller is ready (a busy host whose
sleep overran, a message shown late) is void: sent, the call would crowd the next slot's and draw a 429. The caller
reserves again (`late`).

**A 429 moves the shared schedule** (traffic the app does not see, a lowered limit): the API's ``tat`` goes past the
``Retry-After`` for every instance (one conditional write). A lone 429 at a rate known to go through changes nothing
else (a call sent late, a burst). A second within `STRIKE_WINDOW` of the schedule starting again after the first (the
schedule pauses for the Retry-After, or for the process's own growing backoff where the platform gave none: one process
at a limit that dropped meets its next 429 about two seconds after the first) cuts the rate to `CUT` (a third) of it,
and starts a generation. The slots reserved before the cut stand for now, and new ones come after them at the new rate:
two late calls on a busy host look like a lower limit, and voiding a backlog's slots would send every command back to
the queue again. A 429 answering one of those older slots confirms the cut: they are void from then on (``void_below``),
the schedule starts again after the ``Retry-After`` at the new rate, and a carried slot that an instance knows to be
void (by its copy of the schedule) is not used; it reserves again. An instance whose copy of the state is older still
sends its carried slots: a 429 each, at worst, which tells it. Every `PROBE_AFTER` seconds without a 429 the rate
becomes known to go through and doubles (a probe), up to the ceiling (``ITWIN_RATE_LIMITS``), the steps counted from
when the rate last changed; a 429 answering a probe goes straight back to the rate it left and voids the probe's slots
(a few seconds' worth: see `horizon`). A limit that came back is reached within two probes (6/s from 2/s: about 2 s); a
limit that stays low costs a 429 or two per probe.

**Falls back, comes back.** A table request that fails (unreachable, 5xx, a timeout: the table client is built with
`TABLE_TIMEOUT` timeouts and no retries) sends this process to its own adaptive `Pacer` (`shared.pacing`) for
`DOWN_FIRST` seconds, doubling to `DOWN_MOST` while it keeps failing; the first reservation after that tries the
table again, and one that succeeds brings the process back. The local pacer is fed every answer all along, so it
starts warm. A table that answers but is busy is not a failure: a caller that waited `TABLE_WAIT` for its turn, or
whose ask row stayed unserved (above), gives its command back for `CONTENDED_BACK` seconds, and the process
stays on the schedule (pacing locally beside instances that pace by the table would send at the full rate on top of
theirs). Nothing is lost or doubled either way: pacing only delays calls, never sends or drops one; a failure here
never raises to the caller; a reservation whose write landed but whose answer was lost is a slot nobody uses.

**Why not leased shares.** Leasing each instance with work a fixed share of the slots (offset ``o`` of ``k``
members on the shared grid, renewed every few seconds) would need no table request per call, but a command would
take a slot of the instance that happened to receive it: the queue hands each instance a random part of a backlog,
so the busiest member's share sets the wall time (16 members with 15 commands each on average: the busiest gets
about 23, 1.5 times the floor), renewals cost requests per member and second whether calls go or not, and a change
of membership may take effect only once every member has seen it, while the slots carried in messages reach as far
ahead as the backlog. Here the next free slot goes to whoever asks, so a backlog is spread over the slots in the
order it was picked up, whichever instances picked it up; the table is paid per fresh command instead.

**Failure modes, and what they cost** (measured in BENCHMARKS.md):

- *Contention.* A write on a copy that is no longer current costs a 412, and the asks then cost a posted row and
  a read, and a write where no other instance's write served them. When many instances take fresh commands at once
  (a backlog meeting a fleet), a call's reservation costs 0.56-0.65 table requests in the model at 16 to 256
  instances, 0.61-0.78 measured on Azurite at 16 processes (up to 1.2 with the machine loaded; BENCHMARKS.md);
  fresh commands that trickle in cost one. The ask rows' answers wait for their askers' reads, up to `ASK_PAUSE`
  longer than one write. One entity takes some hundreds of writes a second (Table Storage: about 1,000 a second per
  partition), and each write serves up to 97 rows of asks, which bounds the fresh commands a second the fleet can
  schedule far above any API's limit.
- *An answer read too late.* An asker that reads after its answer left the answers row (it paused for seconds
  while thousands of rows were served) gives its command back for `CONTENDED_BACK`; its slots are gaps.
- *Ask rows left behind.* A process that dies between posting its row and reading its answer leaves the row for
  the next writer, which serves it: its slots are gaps. A malformed row is served as empty and deleted.
- *A mixed fleet while upgrading.* Instances of the version that split the schedule over ``schedule-0`` to
  ``schedule-2`` pace apart from those on ``schedule`` until every instance runs this version (429s meanwhile);
  the old rows are ignored.
- *Cut by mistake.* Two 429s of calls sent late within `STRIKE_WINDOW` (of the schedule starting again) cut the
  rate: new slots come at a third of it for about two seconds of probing, and commands past `CUT_HORIZON` go back
  unreserved meanwhile.
- *Clock skew.* Wall time places the slots (as the local pacer's grid does): an instance whose clock is ``d`` behind
  sends its slots ``d`` late, one ahead reserves from a later "now". Skew costs pacing accuracy (calls closer than
  the interval, at worst a 429, which is a wait), never correctness.
- *Slow hosts.* A slot missed by more than `LATE` is reserved again (a table request, and a give-back when the new
  slot lies past the budget); the missed slot is lost throughput.
- *Fallback beside the schedule.* An instance whose table requests fail paces locally at the full rate on top of
  the schedule's instances (429s until it returns).
- *Messages shown late.* A host that polls slowly finds a carried slot past (keep host.json's
  ``maxPollingInterval`` at 2 s); it reserves again.
- *Gaps.* A slot reserved for a command that is then not sent (the invocation died, the message expired) is lost.
- *A cut with a backlog reserved.* Carried slots of the old generation are void where the new one is known: their
  commands go back a second time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from shared.pacing import SAFETY, Pacer
from shared.telemetry import Telemetry

log = logging.getLogger(__name__)

PARTITION = "pacing"
ROW = "schedule"  # the schedule's entity
ASKS = "ask-"  # ask rows: RowKey ``ask-<random>``, one per request that met another instance's write
ANSWERS = "answers"  # the row that keeps the answers to the ask rows served lately (`Book`)
CUT = 1 / 3  # a cut takes the shared rate to this share (a probe that fails goes back to the rate it left)
GROW = 2.0  # ... and PROBE_AFTER seconds without one multiply it by this, up to the ceiling
PROBE_AFTER = 1.0
STRIKE_WINDOW = 2.0  # seconds: a cut needs a second 429 of the same generation within this long of the first
FLOOR_SHARE = 64  # the lowest shared rate is the ceiling / 64
TIER_BUCKETS = 10  # a tier window's calls are counted in buckets of a tenth of it
HORIZON = 3600.0  # seconds: no slot is reserved further ahead while the API runs at its ceiling
CUT_HORIZON = 5.0  # ... nor further than this while it runs below (after a cut: the rate is a guess)
LATE = 0.3  # a slot this share of the API's interval past is void: sent, it would crowd the next one
MAX_BATCH = 64  # reservations for this process's callers in one table request
TRANSACTION = 100  # operations in one transaction (Table Storage's limit): the entity, the answers, the ask rows
MAX_TRIES = 16  # conditional writes of one request before giving up on contention (the command goes back)
TABLE_TIMEOUT = 2.0  # seconds: the table client's connect and read timeouts (see `table_client_options`)
TABLE_WAIT = 5.0  # seconds a caller waits for its turn at the table before its command goes back
CONFLICT_PAUSE = 0.1  # seconds: the longest random pause after a first 412, doubling with each further one
CONFLICT_MOST = 1.0  # ... up to this
ASK_PAUSE = 0.3  # seconds: the longest random pause between posting an ask row and reading whether it was served
COMBINE_FOR = 2.0  # seconds a process posts its asks as rows after one of its writes met a 412
ANSWERS_CHARS = 30_000  # the answers row keeps the newest answers that fit (a string property holds 32K characters)
LINGER = 0.03  # seconds a request waits before it starts, for more asks to join it
CONTENDED_BACK = 1.0  # seconds a command waits in the queue when the table was too contended to reserve
DOWN_FIRST = 1.0
DOWN_MOST = 30.0
REQUESTS = ("reads", "writes", "asks posted", "withdrawn")  # `SharedPacer.counts` of table requests, by kind


def conflict_pause(conflicts: int, rand: Callable[[], float]) -> float:
    """The random pause before reading again after the ``conflicts``-th 412 in a row: exponential backoff with full
    jitter, so that instances that met desynchronise instead of meeting again."""
    return rand() * min(CONFLICT_MOST, CONFLICT_PAUSE * 2 ** max(0, conflicts - 1))


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

    @classmethod
    def from_message(cls, data: Mapping[str, Any]) -> Slot:
        """The slot in a message; a ``part`` from before the schedule was one entity is ignored."""
        return cls(data["api"], float(data["at"]), int(data["gen"]))


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
    strike: float = 0.0  # when the schedule started again after a lone 429 of this generation (0: none lately)
    safe: float | None = None  # the highest rate known to go through since the last cut (a probe goes above it)
    void_below: int = 0  # slots of an older generation are void (a cut's older slots stand until a 429 confirms it)


@dataclass
class State:
    """The shared entity's content."""

    apis: dict[str, ApiState] = field(default_factory=dict)
    tier: dict[str, dict[str, int]] = field(default_factory=dict)  # window (s, as text) -> bucket index -> calls

    def to_json(self) -> str:
        apis = {
            name: [a.tat, a.rate, a.gen, a.changed, a.strike, a.safe, a.void_below]
            for name, a in sorted(self.apis.items())
        }
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
        current = state.apis[api] = ApiState(rate=ceiling, changed=now, safe=ceiling)
    if ceiling is None:
        current.rate = current.safe = None
    elif current.rate is None or current.rate > ceiling:
        current.rate = current.safe = ceiling
    elif current.rate < ceiling and now - current.changed >= PROBE_AFTER:
        # PROBE_AFTER seconds at this rate without a 429: it goes through; probe the next step up. The steps are
        # counted from when the rate last changed, not from when the schedule was last written.
        steps = math.floor((now - current.changed) / PROBE_AFTER)
        for _ in range(steps):
            if current.rate >= ceiling:
                break
            current.safe = current.rate
            current.rate = min(ceiling, current.rate * GROW)
        current.changed += steps * PROBE_AFTER
    return current


def horizon(state: State, limits: Limits, api: str, now: float) -> float:
    """How far ahead a slot for ``api`` may be reserved at ``now``: far at the API's ceiling; briefly below it, or
    while a lone 429 is within its strike window (the rate is a guess, or in doubt, and a backlog must not be
    scheduled at it): `CUT_HORIZON`, or two slots where those are further apart."""
    ceiling = limits.ceilings.get(api)
    current = state.apis.get(api)
    if ceiling is None or current is None or current.rate is None:
        return HORIZON
    doubt = current.strike > 0 and now <= current.strike + STRIKE_WINDOW
    if current.rate >= ceiling and not doubt:
        return HORIZON
    return max(CUT_HORIZON, 2 / (current.rate * SAFETY))


def _bucket(window: float) -> float:
    return window / TIER_BUCKETS


def _cap(calls: int) -> int:
    """Calls one bucket of a tier window may hold: a sliding window of any alignment overlaps at most
    ``TIER_BUCKETS + 1`` buckets, so that many full buckets stay within the limit (with `SAFETY`)."""
    return max(1, math.floor(calls * SAFETY / (TIER_BUCKETS + 1)))


def interval(state: State, limits: Limits, api: str) -> float | None:
    """Seconds between two slots of ``api`` on the shared grid (None: the API has no rate, only the tier)."""
    current = state.apis.get(api)
    rate = current.rate if current is not None else limits.ceilings.get(api)
    return 1.0 / (rate * SAFETY) if rate else None


def next_slot(state: State, limits: Limits, api: str, now: float) -> float:
    """When the next slot for ``api`` would be, without reserving it: the API's next free slot, moved to the start
    of the next tier bucket that has room while its own is full."""
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
    """Reserve a slot per ask (an API name), in order, in ``state`` (which changes): each a `Slot`, or, where the
    slot would lie further ahead than the API's `horizon`, when to ask again (nothing reserved)."""
    for window, _ in limits.tier:  # buckets no window that can still be reserved in reaches
        size = _bucket(window)
        oldest = math.floor(now / size) - TIER_BUCKETS - 1
        counts = state.tier.setdefault(_key(window), {})
        for index in [i for i in counts if int(i) < oldest]:
            del counts[index]
    answers: list[Slot | float] = []
    for api in asks:
        at = next_slot(state, limits, api, now)
        ahead = horizon(state, limits, api, now)
        if at - now > ahead:
            answers.append(at - ahead / 2)
            continue
        current = state.apis[api]
        if current.rate:
            current.tat = at + 1 / (current.rate * SAFETY)
        for window, _ in limits.tier:
            counts = state.tier.setdefault(_key(window), {})
            index = str(math.floor(at / _bucket(window)))
            counts[index] = counts.get(index, 0) + 1
        answers.append(Slot(api, at, current.gen))
    return answers


def throttled(state: State, limits: Limits, api: str, now: float, retry_after: float, gen: int | None) -> bool:
    """A 429 for ``api`` answering a slot of generation ``gen``: no slot before ``retry_after`` has passed, and
    the schedule changed as the module's docstring says ("A 429 moves the shared schedule"). Whether the rate or
    the slots that stand changed."""
    current = _api(state, limits, api, now)
    ceiling = limits.ceilings.get(api)
    if ceiling is None or current.rate is None or (gen is not None and gen < current.void_below):
        current.tat = max(current.tat, now + retry_after)  # a void slot sent anyway (its sender did not know)
        return False
    if gen is not None and gen < current.gen:
        # A slot reserved before the last cut met a 429 too: the cut was right, and the slots at the old spacing
        # are void; the schedule starts again after the Retry-After at the new rate.
        current.void_below = current.gen
        current.tat = now + retry_after
        return True
    if current.safe is not None and current.rate > current.safe:
        # A probe failed: back to the rate known to go through; the probe's slots (a few seconds' worth, see
        # `horizon`) are void at once.
        current.rate = current.safe
        current.gen += 1
        current.void_below = current.gen
        current.tat = now + retry_after
    elif current.strike <= 0 or now - current.strike > STRIKE_WINDOW:
        # A lone 429 (a call sent late, a burst of traffic the app does not see): the schedule pauses for the
        # Retry-After, and the slots already reserved stand.
        current.strike = now + retry_after  # the window counts from when the schedule starts again
        current.tat = max(current.tat, now + retry_after)
        return False
    else:
        # A cut. The slots already reserved stand for now (two 429s of calls sent late on a busy host look like a
        # lower limit, and voiding a backlog's slots sends every command back again): new slots come after them,
        # at the new rate, and the next 429 of an older slot confirms the cut and voids them (above).
        current.rate = current.safe = max(ceiling / FLOOR_SHARE, current.rate * CUT)
        current.gen += 1
        current.tat = max(current.tat, now + retry_after)
    current.changed = now + retry_after  # probing counts from when the schedule starts again
    current.strike = 0.0
    return True


def _key(window: float) -> str:
    return f"{window:g}"


@dataclass
class Book:
    """The answers row's content: for each ask row served lately, which write served it (a count of the writes that
    served rows) and its answers, in the order of its asks. An instance whose ask row is gone finds its answers
    here. It keeps the newest answers that fit in `ANSWERS_CHARS`: an instance reads within about `ASK_PAUSE` of
    its row being served, while that many characters hold the rows of some writes of `TRANSACTION` each."""

    written: int = 0
    answers: dict[str, tuple[int, list[Any]]] = field(default_factory=dict)

    def add(self, served: Mapping[str, list[Slot | float]]) -> None:
        self.written += 1
        for key, answers in served.items():
            coded = [[round(a.at, 3), a.gen] if isinstance(a, Slot) else round(a, 3) for a in answers]
            self.answers[key] = (self.written, coded)

    def answer(self, key: str, apis: list[str]) -> list[Slot | float] | None:
        """The answers to ask row ``key`` (its asks ``apis``), or None when they are not (or no longer) here."""
        found = self.answers.get(key)
        if found is None or len(found[1]) != len(apis):
            return None
        return [
            Slot(api, float(a[0]), int(a[1])) if isinstance(a, list) else float(a)
            for api, a in zip(apis, found[1], strict=True)
        ]

    def to_json(self) -> str:
        kept: dict[str, tuple[int, list[Any]]] = {}
        size = 0
        for key, entry in sorted(self.answers.items(), key=lambda item: -item[1][0]):
            size += len(key) + len(json.dumps(entry, separators=(",", ":"))) + 4
            if size > ANSWERS_CHARS:
                break
            kept[key] = entry
        return json.dumps({"written": self.written, "answers": kept}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Book:
        data = json.loads(text or "{}")
        answers = {str(k): (int(v[0]), list(v[1])) for k, v in (data.get("answers") or {}).items()}
        return cls(int(data.get("written", 0)), answers)


@dataclass
class Partition:
    """The schedule's partition as a process last read or wrote it: the schedule and its ETag (None: no row yet),
    the ask rows waiting to be served (key -> their asks and ETag), and the answers row and its ETag."""

    view: State | None = None
    etag: str | None = None
    asks: dict[str, tuple[list[str], str]] = field(default_factory=dict)
    book: Book = field(default_factory=Book)
    book_etag: str | None = None

    @classmethod
    def read(cls, entities: Iterable[Any]) -> Partition:
        """The partition from a query of it (each entity with its ``metadata["etag"]``); rows of other kinds (the
        split schedule's ``schedule-0`` to ``schedule-2``) are ignored."""
        copy = cls()
        for entity in entities:
            key, etag = str(entity.get("RowKey", "")), entity.metadata["etag"]
            if key == ROW:
                copy.view, copy.etag = State.from_json(entity.get("state", "")), etag
            elif key == ANSWERS:
                copy.book, copy.book_etag = Book.from_json(entity.get("answers", "")), etag
            elif key.startswith(ASKS):
                copy.asks[key] = (_asks_of(entity.get("asks")), etag)
        return copy


@dataclass(frozen=True)
class Write:
    """One write of the schedule (`serve`): the operations to `submit`, the answers by ask row (``""``: the
    writer's own asks, when not in a row), and the schedule and answers row it writes (``book`` None: no ask row
    served, one plain write of the schedule)."""

    operations: list[tuple[Any, ...]]
    answers: dict[str, list[Slot | float]]
    state: State
    book: Book | None

    def landed(self, copy: Partition, etags: list[str]) -> Partition:
        """``copy`` once this write landed with ``etags`` (the schedule's, and the answers row's)."""
        served = {k: v for k, v in copy.asks.items() if k not in self.answers}
        if self.book is None:
            return replace(copy, view=self.state, etag=etags[0], asks=served)
        return Partition(self.state, etags[0], served, self.book, etags[1])


def serve(copy: Partition, limits: Limits, mine: str, apis: list[str], now: float) -> Write:
    """The write that reserves ``apis`` (the writer's own asks; ``mine``: their ask row, or ``""``) and the asks of
    every ask row in ``copy``, as many as one transaction holds, in that order: in one conditional update of the
    schedule, or, where rows are served, one transaction that also writes their answers and deletes them."""
    others = sorted(k for k in copy.asks if k != mine)[: TRANSACTION - 3]
    served = [(mine, apis), *((k, copy.asks[k][0]) for k in others)]
    state = (copy.view or State()).copy()
    flat = reserve(state, limits, [api for _, asks in served for api in asks], now)
    answers: dict[str, list[Slot | float]] = {}
    for key, asks in served:
        answers[key], flat = flat[: len(asks)], flat[len(asks) :]
    operations = [_put({"PartitionKey": PARTITION, "RowKey": ROW, "state": state.to_json()}, copy.etag)]
    deletes = [(k, copy.asks[k][1]) for k, _ in served if k in copy.asks]
    if not deletes:
        return Write(operations, answers, state, None)
    book = Book.from_json(copy.book.to_json())
    book.add({k: answers[k] for k, _ in deletes})
    operations.append(_put({"PartitionKey": PARTITION, "RowKey": ANSWERS, "answers": book.to_json()}, copy.book_etag))
    operations += [("delete", {"PartitionKey": PARTITION, "RowKey": k}, _if_match(e)) for k, e in deletes]
    return Write(operations, answers, state, book)


def write_state(state: State, etag: str | None) -> list[tuple[Any, ...]]:
    """The operations that write ``state`` over the schedule read with ``etag`` (a 429's change)."""
    return [_put({"PartitionKey": PARTITION, "RowKey": ROW, "state": state.to_json()}, etag)]


def ask_row(key: str, apis: list[str]) -> dict[str, Any]:
    """The ask row ``key`` holding ``apis`` (the reservations its poster asks for), as `Partition.read` reads it."""
    return {"PartitionKey": PARTITION, "RowKey": key, "asks": json.dumps(apis)}


def submit(table: Any, operations: list[tuple[Any, ...]]) -> list[str]:
    """Submit ``operations`` to ``table``: one alone as a plain insert or update (one request either way), more as
    one transaction; the ETags written, in order (deletes give none)."""
    if len(operations) == 1:
        kind, entity, *options = operations[0]
        written = table.create_entity(entity) if kind == "create" else table.update_entity(entity, **options[0])
        return [written["etag"]]
    return [answer["etag"] for answer in table.submit_transaction(operations) if "etag" in answer]


def _put(entity: dict[str, Any], etag: str | None) -> tuple[Any, ...]:
    """An insert of ``entity`` where it was not there when read (``etag`` None), else a replace on its ETag."""
    from azure.data.tables import UpdateMode

    if etag is None:
        return ("create", entity)
    return ("update", entity, {"mode": UpdateMode.REPLACE, **_if_match(etag)})


def _if_match(etag: str) -> dict[str, Any]:
    from azure.core import MatchConditions

    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


# -- the process's view: group commit over the table, and the fallback --------------------------------------------
@dataclass
class Reservation:
    """What a caller waits for: ``wait`` seconds; ``slot`` the shared slot reserved (None: paced locally, or, with
    ``beyond``, no slot reserved because it lies past `HORIZON`)."""

    wait: float
    slot: Slot | None = None
    beyond: bool = False


_CONTENDED = "contended"  # the answer to an ask the table was too contended to serve


class _Waiter:
    def __init__(self, api: str) -> None:
        self.api = api
        self.done = threading.Event()
        self.answer: Slot | float | str | None = None  # None: the table failed; _CONTENDED: it was too busy
        self.abandoned = False


class TableDown(Exception):
    """The schedule's table did not answer as it should (wraps the cause)."""


class Contended(TableDown):
    """Every conditional write of a 429's change met another instance's write first: the table answers, it is only
    busy, so the process stays on it (the change is left to the next 429)."""


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
        telemetry: Telemetry | None = None,
    ) -> None:
        self.table = table
        self._telemetry = telemetry
        self._sleep = sleep
        self._rand = rand
        self.limits = Limits(dict(rates), tuple(tier))
        self.local = local or Pacer(rates, clock=clock, monotonic=monotonic)
        self._wall = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()  # guards the fields below
        self._table_lock = threading.Lock()  # one table request in flight per process
        self._pending: list[_Waiter] = []
        self._spare: list[Slot] = []  # slots reserved for callers that had stopped waiting (see `_spare_before`)
        self._copy = Partition()  # the schedule's partition as this process last read or wrote it
        self._fresh = False  # whether the copy is worth writing on (False: read the partition first)
        self._combine_until = -math.inf  # monotonic: post asks as rows until then (a write met a 412 lately)
        self._down_until = -math.inf
        self._down_for = 0.0
        self.counts: Counter[str] = Counter()  # table requests by kind (`REQUESTS`), conflicts, fallbacks

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
        again = self._beyond_by_copy(api)
        if again is not None:
            self.counts["beyond by copy"] += 1
            return Reservation(max(0.0, again - self._wall()), beyond=True)
        answer = self._ask(api)
        if answer is None:
            return Reservation(self.local.reserve(api, limit))
        if answer == _CONTENDED:
            self.counts["contended"] += 1
            return Reservation(CONTENDED_BACK, beyond=True)
        if isinstance(answer, Slot):
            answer = self._spare_before(answer)
            return Reservation(answer.at - self._wall(), answer)
        return Reservation(max(0.0, float(answer) - self._wall()), beyond=True)

    def _beyond_by_copy(self, api: str) -> float | None:
        """When to ask again, where this process's copy shows the next free slot for ``api`` past its horizon (None:
        ask the table). A current copy is never behind on what has been reserved, so the table would give the same
        answer; answering without a request lets a process go through a backlog it cannot book yet (after a 429, or
        at a rate that is a guess) at the queue's speed, not the table's, so that the commands that do carry slots,
        shown behind that backlog, are not shown late."""
        with self._lock:
            if not self._fresh or self._copy.view is None:
                return None
            view = self._copy.view.copy()
        now = self._wall()
        at = next_slot(view, self.limits, api, now)
        ahead = horizon(view, self.limits, api, now)
        return at - ahead / 2 if at - now > ahead else None

    def _spare_before(self, slot: Slot) -> Slot:
        """``slot``, or an earlier one of its API that a caller of this process gave up waiting for (it stopped
        waiting, `TABLE_WAIT`, while its request was being written): a slot reserved and not used is lost
        throughput, so the next caller takes it, and ``slot`` becomes the spare."""
        with self._lock:
            now = self._wall()
            self._spare = [s for s in self._spare if not self._past(s, now)]
            spare = [s for s in self._spare if s.api == slot.api and s.at < slot.at]
            if not spare:
                return slot
            earliest = min(spare, key=lambda s: s.at)
            self._spare.remove(earliest)
            self._spare.append(slot)
        self.counts["spare slots used"] += 1
        return earliest

    def redeem(self, slot: Slot) -> Reservation | None:
        """The wait for a slot a command carried, or None when it is void: more than `LATE` of an interval past,
        of a generation this process knows to be void (a cut since, confirmed by a 429 of an older slot; a probe
        that failed), or the API held after a 429 here."""
        wait = slot.at - self._wall()
        with self._lock:
            view = self._copy.view
            known = view.apis.get(slot.api) if view is not None else None
        if self.late(slot) or (known is not None and known.void_below > slot.gen) or self.local.held(slot.api) > 0:
            self.counts["void slots"] += 1
            return None
        return Reservation(wait, slot)

    def late(self, slot: Slot) -> bool:
        """Whether ``slot`` is more than `LATE` of its API's interval past: a call sent now would crowd the next
        slot's (a busy host that woke up late, a message shown late), so it reserves again instead."""
        if self._past(slot, self._wall()):
            self.counts["late slots"] += 1
            return True
        return False

    def _past(self, slot: Slot, now: float) -> bool:
        ceiling = self.limits.ceilings.get(slot.api)
        return now - slot.at > (LATE / (ceiling * SAFETY) if ceiling else LATE)

    def held(self, api: str) -> float:
        return self.local.held(api)

    def hold(self, api: str, seconds: float) -> None:
        self.local.hold(api, seconds)

    def accepted(self, api: str) -> None:
        self.local.accepted(api)

    def throttled(self, api: str, seconds: float, slot: Slot | None = None) -> None:
        """A 429: hold and cut locally, and move the shared schedule (when the table answers) past this process's
        hold: the ``Retry-After``, or the local pacer's growing backoff where the platform gave none (under a
        second), so that the strike window counts from when calls start again."""
        self.local.throttled(api, seconds)
        if not self.limits.paced(api) or self.down:
            return
        seconds = max(seconds, self.local.held(api))
        gen = slot.gen if slot is not None and slot.api == api else None
        if not self._table_lock.acquire(timeout=TABLE_WAIT):
            return
        try:
            self._commit(lambda state, now: throttled(state, self.limits, api, now, seconds, gen))
        except Contended:
            pass
        except TableDown as error:
            self._fail(error)
        finally:
            self._table_lock.release()

    def rate(self, api: str) -> float:
        """The calls per second the schedule this process follows allows ``api`` now (``inf``: not paced)."""
        if self.down or api not in self.limits.ceilings:
            return self.local.rate(api)
        with self._lock:
            view = self._copy.view
            known = view.apis.get(api) if view is not None else None
        return known.rate if known is not None and known.rate else self.limits.ceilings[api]

    # -- group commit ----------------------------------------------------------------------------------------------
    def _ask(self, api: str) -> Slot | float | str | None:
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
                    # Waiting behind this process's other table requests (slow ones end in a timeout, which is
                    # a failure): the table is busy, not down.
                    return _CONTENDED
                break
            try:
                if not waiter.done.is_set():
                    self._serve()
            finally:
                self._table_lock.release()
        return waiter.answer

    def _serve(self) -> None:
        """Reserve for the pending callers, in one request (under the table lock) when the table is quiet."""
        batch: list[_Waiter] = []

        def take() -> None:
            with self._lock:
                more = [w for w in self._pending if not w.abandoned][: MAX_BATCH - len(batch)]
                self._pending = [w for w in self._pending if not w.abandoned and w not in more]
            batch.extend(more)

        if LINGER > 0:
            self._sleep(LINGER)  # the process's invocations that start about together ask in one request
        take()
        try:
            answers: list[Slot | float | str | None] = list(self._request(batch, take))
        except TableDown as error:
            self._fail(error)
            answers = [None] * len(batch)
        self.counts["reservations"] += sum(isinstance(a, Slot) for a in answers)
        with self._lock:
            for waiter, answer in zip(batch, answers, strict=True):
                if waiter.abandoned and isinstance(answer, Slot):
                    self._spare.append(answer)
                waiter.answer = answer
                waiter.done.set()

    def _request(self, batch: list[_Waiter], take: Callable[[], None]) -> list[Slot | float | str]:
        """Slots for ``batch``'s asks (``take`` adds who asked meanwhile, until the asks are posted). One
        conditional write of the schedule when this process's copy is current, serving with its own asks every ask
        row the last read found; after a 412 the asks go into an ask row, and whoever reads next serves them
        (see "Combining" in the module's docstring). An ask the table was too busy to serve is `_CONTENDED`.
        Raises `TableDown`."""
        from azure.core.exceptions import AzureError, HttpResponseError

        key: str | None = None
        apis: list[str] = []
        conflicts = 0
        give_up = self._monotonic() + TABLE_WAIT
        try:
            while True:
                if key is None and (self._copy.view is None or self._monotonic() < self._combine_until):
                    take()
                    apis = [w.api for w in batch]
                    key = self._post(apis)
                    self._sleep(self._rand() * ASK_PAUSE)
                    self._fresh = False
                if not self._fresh:
                    self._load()
                with self._lock:
                    copy = self._copy
                if key is not None and key not in copy.asks:  # served by another instance's write
                    found = copy.book.answer(key, apis)
                    if found is None:
                        self.counts["answers lost"] += 1
                        return [_CONTENDED] * len(apis)
                    return list(found)
                if key is None:
                    take()
                    apis = [w.api for w in batch]
                mine = key or ""
                write = serve(copy, self.limits, mine, apis, self._wall())
                if write.book is None and not any(isinstance(a, Slot) for a in write.answers[mine]):
                    return list(write.answers[mine])  # nothing reserved (all past the horizon): nothing to write
                try:
                    self.counts["writes"] += 1
                    etags = submit(self.table, write.operations)
                except HttpResponseError as failure:
                    if not self._conflict(failure):
                        raise
                    conflicts += 1
                    if key is None:
                        self._combine_until = self._monotonic() + COMBINE_FOR
                        continue
                    pause = conflict_pause(conflicts, self._rand)
                    if conflicts >= MAX_TRIES or self._monotonic() + pause > give_up:
                        return self._withdraw(key, apis)
                    self._sleep(pause)
                    continue
                with self._lock:
                    self._copy, self._fresh = write.landed(copy, etags), True
                self._recovered()
                return list(write.answers[mine])
        except AzureError as error:
            raise self._down(error) from error

    def _post(self, apis: list[str]) -> str:
        """Post ``apis`` as an ask row for whoever writes the schedule next; its key."""
        key = f"{ASKS}{uuid.uuid4().hex}"
        self.counts["asks posted"] += 1
        self.table.create_entity(ask_row(key, apis))
        return key

    def _withdraw(self, key: str, apis: list[str]) -> list[Slot | float | str]:
        """Take back ask row ``key`` that stayed unserved while its callers waited: nothing was reserved for them
        (their commands go back). A row already gone was served meanwhile: its answers. (A transaction, because a
        plain delete of a missing row does not say so.)"""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError

        self.counts["withdrawn"] += 1
        try:
            self.table.submit_transaction(
                [("delete", {"PartitionKey": PARTITION, "RowKey": key}, {"match_condition": MatchConditions.IfPresent})]
            )
        except HttpResponseError as failure:
            if not self._conflict(failure):
                raise
            self._load()
            with self._lock:
                found = self._copy.book.answer(key, apis)
            if found is not None:
                return list(found)
            self.counts["answers lost"] += 1
        return [_CONTENDED] * len(apis)

    def _conflict(self, failure: Exception) -> bool:
        """Whether ``failure`` is another instance's write getting there first (412; a row created or deleted
        meanwhile: 409, 404); it leaves the copy stale."""
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        known = isinstance(failure, (ResourceExistsError, ResourceNotFoundError))
        if not known and getattr(failure, "status_code", None) not in (404, 409, 412):
            return False
        self.counts["conflicts"] += 1
        with self._lock:
            self._fresh = False
        return True

    def _down(self, error: Exception) -> TableDown:
        with self._lock:
            self._fresh = False
        return TableDown(f"{type(error).__name__}: {str(error)[:200]}")

    def _commit(self, change: Callable[[State, float], Any]) -> None:
        """Apply ``change`` to the schedule by a conditional write on its ETag, reading it again after a 412.
        Raises `Contended` when it stays contended, `TableDown` when the table fails."""
        from azure.core.exceptions import AzureError, HttpResponseError

        conflicts = 0
        give_up = self._monotonic() + TABLE_WAIT
        try:
            for _ in range(MAX_TRIES):
                if not self._fresh:
                    self._load()
                with self._lock:
                    copy = self._copy
                view = (copy.view or State()).copy()
                change(view, self._wall())
                try:
                    self.counts["writes"] += 1
                    etags = submit(self.table, write_state(view, copy.etag))
                except HttpResponseError as failure:
                    if not self._conflict(failure):
                        raise
                    conflicts += 1
                    pause = conflict_pause(conflicts, self._rand)
                    if self._monotonic() + pause > give_up:
                        break
                    self._sleep(pause)
                    continue
                with self._lock:
                    self._copy, self._fresh = replace(copy, view=view, etag=etags[0]), True
                self._recovered()
                return
        except AzureError as error:
            raise self._down(error) from error
        raise Contended(f"the schedule changed under {conflicts} writes in a row")

    def _load(self) -> None:
        """Read the schedule's partition in one request (a query): the schedule, the ask rows waiting to be
        served, and the answers row. A row not there yet is created by the first write to it."""
        self.counts["reads"] += 1
        copy = Partition.read(self.table.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION}))
        with self._lock:
            self._copy, self._fresh = copy, True

    # -- fallback --------------------------------------------------------------------------------------------------
    def _fail(self, error: Exception) -> None:
        with self._lock:
            self._down_for = min(DOWN_MOST, self._down_for * 2 or DOWN_FIRST)
            self._down_until = self._monotonic() + self._down_for
            down_for = self._down_for
        self.counts["fallbacks"] += 1
        if self._telemetry is not None:
            cause = error.__cause__ or error
            self._telemetry.pacing_fallbacks.add(1, {"error.type": type(cause).__name__})
        log.warning("the shared pacing schedule failed (%s): pacing locally for %.0f s", error, down_for)

    def _recovered(self) -> None:
        with self._lock:
            was_down, self._down_for = self._down_for > 0, 0.0
        if was_down:
            log.warning("the shared pacing schedule answers again: pacing by it")


def _asks_of(text: Any) -> list[str]:
    """The asks an ask row holds (API names); a row that does not hold a list of names is served as empty (the
    next write deletes it)."""
    try:
        asks = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return []
    return asks if isinstance(asks, list) and all(isinstance(a, str) for a in asks) else []

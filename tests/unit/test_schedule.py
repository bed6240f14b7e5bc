"""The shared pacing schedule on an injected clock and an in-memory table that honours ETags as Table Storage does:
pure, no sleeping, no timed assertions.

The platform in the instance tests is the simulator's own rate limiter (a one-second sliding window), driven by the
same fake clock, as in `test_pacing`.
"""

import itertools
import random
import threading

import pytest
from azure.core.exceptions import ServiceRequestError
from manual_clock import ManualClock
from otel_capture import Captured

from sandbox.memory_table import MemoryTable
from sandbox.simulator.faults import RateLimiter
from shared.pacing import SAFETY
from shared.schedule import (
    ANSWERS_CHARS,
    ASK_PAUSE,
    ASKS,
    CONFLICT_MOST,
    CONFLICT_PAUSE,
    CONTENDED_BACK,
    CUT,
    CUT_HORIZON,
    DOWN_FIRST,
    HORIZON,
    LATE,
    LINGER,
    MAX_TRIES,
    PARTITION,
    PROBE_AFTER,
    ROW,
    STRIKE_WINDOW,
    TRANSACTION,
    Book,
    Limits,
    SharedPacer,
    Slot,
    State,
    carrying,
    conflict_pause,
    reserve,
    taken,
    throttled,
)

API = "clashdetection"
INTERVAL = 1 / (6.0 * SAFETY)
LIMITS = Limits({API: 6.0})


class BreakableTable(MemoryTable):
    """A `MemoryTable` that can be made unreachable, as a stopped Azurite is."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def _step_or_fail(self) -> None:
        if self.broken:
            raise ServiceRequestError("Connection refused")

    def get_entity(self, *args, **kwargs):
        self._step_or_fail()
        return super().get_entity(*args, **kwargs)

    def create_entity(self, *args, **kwargs):
        self._step_or_fail()
        return super().create_entity(*args, **kwargs)

    def update_entity(self, *args, **kwargs):
        self._step_or_fail()
        return super().update_entity(*args, **kwargs)

    def query_entities(self, *args, **kwargs):
        self._step_or_fail()
        return super().query_entities(*args, **kwargs)

    def submit_transaction(self, *args, **kwargs):
        self._step_or_fail()
        return super().submit_transaction(*args, **kwargs)


_SEEDS = itertools.count(1)


def instance(table: MemoryTable, clock: ManualClock, tier=(), sleep=None) -> SharedPacer:
    """An instance's pacer; its pauses pass on ``clock`` unless ``sleep`` says otherwise. Its random choices are
    seeded."""
    rand = random.Random(next(_SEEDS)).random
    return SharedPacer(table, {API: 6.0}, tier, clock=clock, monotonic=clock, sleep=sleep or clock.advance, rand=rand)


def ask_rows(table: MemoryTable) -> list[str]:
    return [key for (partition, key) in table.rows if partition == PARTITION and key.startswith(ASKS)]


# -- the pure schedule ---------------------------------------------------------------------------------------------
def test_slots_of_one_api_are_evenly_spaced_at_the_ceiling_under_the_safety_margin():
    state = State()
    slots = reserve(state, LIMITS, [API] * 7, 100.0)
    assert [s.at for s in slots] == pytest.approx([100.0 + i * INTERVAL for i in range(7)])
    assert slots[6].at - slots[0].at > 1.0  # a one-second window never holds a seventh


def test_an_idle_schedule_starts_at_now_not_at_a_slot_in_the_past():
    state = State()
    reserve(state, LIMITS, [API], 100.0)
    assert reserve(state, LIMITS, [API], 500.0)[0].at == 500.0


def test_the_tier_counts_every_apis_calls_together_and_no_window_holds_more_than_its_limit():
    limits = Limits({API: 6.0}, ((60.0, 120),))  # 120 calls a minute, across APIs
    state = State()
    many = [s.at for s in reserve(state, limits, ["export"] * 300 + [API] * 30, 0.0) if isinstance(s, Slot)]
    assert len(many) > 100
    for start in [*many, *(t - 60 for t in many)]:  # every window that starts or ends at a call
        assert sum(1 for t in many if start <= t < start + 60) <= 120


def test_a_far_slot_of_one_api_does_not_hold_back_another_apis_calls():
    limits = Limits({API: 6.0}, ((60.0, 5000),))
    state = State()
    reserve(state, limits, [API] * 300, 0.0)  # Clash Detection's slots reach 50 s ahead
    assert reserve(state, limits, ["export"], 1.0)[0].at == 1.0


def test_an_api_without_a_configured_rate_is_paced_only_by_the_tier():
    assert not Limits({API: 6.0}).paced("export")
    assert Limits({API: 6.0}, ((60.0, 500),)).paced("export")


def test_no_slot_is_reserved_beyond_the_horizon_and_the_command_comes_back_when_it_is_closer():
    state = State()
    calls = int(HORIZON / INTERVAL) + 5
    answers = reserve(state, LIMITS, [API] * calls, 0.0)
    beyond = [a for a in answers if not isinstance(a, Slot)]
    assert beyond
    assert all(HORIZON / 2 < a <= HORIZON for a in beyond)
    assert state.apis[API].tat <= HORIZON + INTERVAL


def test_a_backlog_is_scheduled_far_ahead_at_the_ceiling_but_only_briefly_after_a_cut():
    state = State()
    assert all(isinstance(a, Slot) for a in reserve(state, LIMITS, [API] * 600, 0.0))  # 100 s of slots
    state = State()
    reserve(state, LIMITS, [API], 0.0)
    throttled(state, LIMITS, API, 0.1, 1.0, 0)
    throttled(state, LIMITS, API, 0.2, 1.0, 0)  # cut: the new rate is a guess
    answers = reserve(state, LIMITS, [API] * 60, 0.3)
    reserved = [a.at for a in answers if isinstance(a, Slot)]
    assert max(reserved) - 0.3 <= CUT_HORIZON
    assert len(reserved) < 60


def test_a_backlog_is_scheduled_only_briefly_while_a_lone_429_may_still_mean_a_lower_limit():
    state = State()
    reserve(state, LIMITS, [API], 0.0)
    throttled(state, LIMITS, API, 0.1, 1.0, 0)  # lone: no cut, but the rate is in doubt until its strike window ends
    assert state.apis[API].rate == 6.0
    reserved = [a.at for a in reserve(state, LIMITS, [API] * 60, 0.2) if isinstance(a, Slot)]
    assert max(reserved) - 0.2 <= CUT_HORIZON
    assert len(reserved) < 60
    after = 1.1 + STRIKE_WINDOW + 0.1  # no second 429 came: the backlog is booked far ahead again
    assert all(isinstance(a, Slot) for a in reserve(state, LIMITS, [API] * 60, after))


def test_a_429_moves_the_schedule_past_retry_after_and_a_second_one_cuts_the_rate_once():
    state = State()
    slots = reserve(state, LIMITS, [API] * 4, 0.0)
    # A lone 429 pauses the schedule for the Retry-After, and cuts nothing.
    assert not throttled(state, LIMITS, API, 0.5, 1.0, slots[0].gen)
    assert state.apis[API].rate == 6.0
    assert reserve(state, LIMITS, [API], 0.55)[0].at == pytest.approx(1.5)
    # A second one soon after cuts, and new slots come after the Retry-After at the new rate.
    assert throttled(state, LIMITS, API, 0.6, 1.0, slots[1].gen)
    assert state.apis[API].rate == pytest.approx(6.0 * CUT)
    assert state.apis[API].gen == 1
    # A 429 for a slot reserved before the cut confirms it (its slots are void) but does not cut again.
    assert throttled(state, LIMITS, API, 0.7, 1.0, slots[2].gen)
    assert not throttled(state, LIMITS, API, 0.8, 1.0, slots[3].gen)
    assert state.apis[API].rate == pytest.approx(6.0 * CUT)
    assert reserve(state, LIMITS, [API], 0.9)[0].at == pytest.approx(1.8)  # past the last Retry-After


def test_a_cut_leaves_the_slots_already_reserved_standing_until_a_429_of_one_of_them_confirms_it():
    table, clock = MemoryTable(), ManualClock(1000.0)
    a, b = instance(table, clock), instance(table, clock)
    backlog = [a.reserve(API).slot for _ in range(20)]  # 3.5 s of slots, carried by commands in the queue
    a.throttled(API, 1.0, backlog[0])
    a.throttled(API, 1.0, backlog[1])  # two late calls on a busy host look like a lower limit: a cut
    assert b.reserve(API).slot.at > backlog[-1].at  # new slots come after the ones that stand
    assert b.rate(API) == pytest.approx(6.0 * CUT)
    assert b.redeem(backlog[15]) is not None  # b is told of the cut, and still sends at the old slot
    b.throttled(API, 1.0, backlog[15])  # ... which meets a 429: the limit did drop
    clock.advance(1.0)
    assert b.redeem(backlog[18]) is None  # the old slots are void now
    assert b.reserve(API).slot.at < backlog[18].at  # and the schedule starts again at the new rate


def test_after_a_cut_the_rate_doubles_back_to_the_ceiling_one_step_per_probe_period():
    state = State()
    reserve(state, LIMITS, [API], 0.0)
    for gen in (0, 0):  # two 429s cut: 6 -> 2, the schedule starting again at 1.0
        throttled(state, LIMITS, API, 0.01, 0.99, gen)
    assert state.apis[API].rate == pytest.approx(2.0)
    rates = []
    for now in (1.0 + PROBE_AFTER / 2, 1.0 + PROBE_AFTER, 1.0 + 1.5 * PROBE_AFTER, 1.0 + 2 * PROBE_AFTER):
        reserve(state, LIMITS, [API], now)
        rates.append(state.apis[API].rate)
    assert rates == pytest.approx([2.0, 4.0, 4.0, 6.0])


def test_a_probe_that_meets_a_429_goes_straight_back_to_the_rate_known_to_go_through():
    state = State()
    reserve(state, LIMITS, [API], 0.0)
    throttled(state, LIMITS, API, 0.01, 0.99, 0)
    throttled(state, LIMITS, API, 0.02, 0.99, 0)  # cut to 2/s, generation 1
    reserve(state, LIMITS, [API], 1.02 + PROBE_AFTER)  # probing 4/s
    assert state.apis[API].rate == pytest.approx(4.0)
    # One 429 at the probe's rate is enough: no second strike needed, and its slots are void.
    assert throttled(state, LIMITS, API, 2.1, 1.0, 1)
    assert state.apis[API].rate == pytest.approx(2.0)
    assert state.apis[API].gen == 2


def test_the_state_survives_its_json_form():
    state = State()
    reserve(state, Limits({API: 6.0}, ((60.0, 500), (3600.0, 5000))), [API, "export"], 10.0)
    assert State.from_json(state.to_json()) == state


# -- instances sharing the table -------------------------------------------------------------------------------------
def test_two_instances_on_one_entity_never_get_the_same_slot_and_share_one_spacing():
    table, clock = MemoryTable(), ManualClock(1000.0)
    a, b = instance(table, clock), instance(table, clock)
    slots = [p.reserve(API).slot for p in (a, b, a, b, b, a)]
    times = [s.at for s in slots]
    assert len(set(times)) == 6
    assert [b - a for a, b in itertools.pairwise(sorted(times))] == pytest.approx([INTERVAL] * 5)


def test_an_uncontended_reservation_is_one_table_request_and_after_a_412_the_asks_go_into_a_row():
    table, clock = MemoryTable(), ManualClock(1000.0)
    a, b = instance(table, clock), instance(table, clock)
    a.reserve(API)  # first ever: its asks posted as a row, the partition read, and the row served by its own write
    assert table.ops == {"insert": 1, "query": 1, "transaction": 1}
    table.ops.clear()
    a.reserve(API)
    assert table.ops == {"update": 1}
    b.reserve(API)
    a.reserve(API)  # a's copy is stale: its write meets a 412, and its asks go into a row that its next read serves
    assert a.counts["conflicts"] == 1
    assert a.counts["asks posted"] == 2
    assert ask_rows(table) == []
    table.ops.clear()
    a.reserve(API)  # for COMBINE_FOR after a 412, asks are posted first
    assert table.ops == {"insert": 1, "query": 1, "transaction": 1}


def test_one_write_serves_the_asks_other_instances_posted_and_they_read_their_answers_from_the_answers_row():
    table, clock = MemoryTable(), ManualClock(1000.0)
    served: list = []
    b = instance(table, clock)

    def pause(seconds: float) -> None:  # a's pauses: once its ask is posted, b reserves meanwhile
        clock.advance(seconds)
        if a.counts["asks posted"] and not served:
            served.append(b.reserve(API))

    a = instance(table, clock, sleep=pause)
    mine = a.reserve(API)  # a posts its ask; while it pauses, b posts one too and serves both
    assert b.counts["writes"] == 1
    assert a.counts["writes"] == 0  # a's row was gone when it read: it found its answer in the answers row
    assert table.ops["transaction"] == 1
    assert abs(mine.slot.at - served[0].slot.at) == pytest.approx(INTERVAL, abs=1e-3)  # to the ms, as messages
    assert ask_rows(table) == []


def test_a_write_serves_as_many_ask_rows_as_one_transaction_holds_and_the_next_the_rest():
    table, clock = MemoryTable(), ManualClock(1000.0)
    for n in range(150):
        table.create_entity({"PartitionKey": PARTITION, "RowKey": f"{ASKS}{n:04d}", "asks": f'["{API}"]'})
    pacer = instance(table, clock)
    first = pacer.reserve(API).slot
    assert len(ask_rows(table)) == 150 - (TRANSACTION - 3)  # its own row was served, and 97 others with it
    second = pacer.reserve(API).slot
    assert ask_rows(table) == []
    # The writer's own asks first, then the rows' in order: the first write's 97 rows between the two.
    assert second.at - first.at == pytest.approx((1 + TRANSACTION - 3) * INTERVAL)


def test_a_malformed_ask_row_is_served_with_nothing_and_deleted():
    table, clock = MemoryTable(), ManualClock(1000.0)
    table.create_entity({"PartitionKey": PARTITION, "RowKey": f"{ASKS}bad", "asks": "{not json"})
    table.create_entity({"PartitionKey": PARTITION, "RowKey": f"{ASKS}odd", "asks": "[1, 2]"})
    assert instance(table, clock).reserve(API).slot.at < 1000.0 + LINGER + ASK_PAUSE
    assert ask_rows(table) == []


def test_the_split_schedules_rows_from_before_are_ignored_and_left_alone():
    table, clock = MemoryTable(), ManualClock(1000.0)
    far = State()
    reserve(far, LIMITS, [API] * 600, 1000.0)  # an entity of the split schedule, 100 s of slots booked
    for part in range(3):
        table.create_entity({"PartitionKey": PARTITION, "RowKey": f"schedule-{part}", "state": far.to_json()})
    assert instance(table, clock).reserve(API).slot.at < 1000.0 + LINGER + ASK_PAUSE
    assert {key for _, key in table.rows} >= {"schedule-0", "schedule-1", "schedule-2", ROW}


def test_the_answers_row_keeps_the_newest_answers_that_fit():
    book = Book()
    for n in range(2000):
        book.add({f"{ASKS}{n:032x}": [Slot(API, 1.8e9 + n, 0), Slot(API, 1.8e9 + n + 0.5, 0), 1.9e9]})
    text = book.to_json()
    assert len(text) <= ANSWERS_CHARS + 100
    again = Book.from_json(text)
    assert again.answer(f"{ASKS}{1999:032x}", [API] * 3) == [
        Slot(API, 1.8e9 + 1999, 0),
        Slot(API, 1.8e9 + 1999.5, 0),
        1.9e9,
    ]
    assert again.answer(f"{ASKS}{0:032x}", [API] * 3) is None  # the oldest went first
    assert again.written == 2000


def test_a_process_whose_copy_shows_the_next_slot_past_its_horizon_answers_at_once_without_a_table_request():
    table, clock = MemoryTable(), ManualClock(1000.0)
    pacer = instance(table, clock)
    pacer.throttled(API, 1.0)  # a lone 429: only CUT_HORIZON seconds of slots may be booked for now
    booked = []
    while (reservation := pacer.reserve(API)).slot is not None:
        booked.append(reservation.slot)
    assert reservation.beyond
    assert reservation.wait > 0
    table.ops.clear()
    asked = clock()
    again = pacer.reserve(API)
    assert again.beyond
    assert again.wait == pytest.approx(reservation.wait)
    assert table.ops == {}  # no request, and no linger for other asks to join
    assert clock() == asked
    assert pacer.counts["beyond by copy"] == 2
    clock.advance(1.0 + STRIKE_WINDOW + 0.1)  # the doubt is over: the table is asked and books far ahead
    assert pacer.reserve(API).slot.at > booked[-1].at
    assert sum(table.ops.values()) == 1


class SlowTable(MemoryTable):
    """Holds each write until the test lets it through, so that other callers' asks pile up meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go = threading.Event()

    def update_entity(self, *args, **kwargs):
        self.entered.set()
        assert self.go.wait(5)
        return super().update_entity(*args, **kwargs)

    def create_entity(self, *args, **kwargs):
        self.entered.set()
        assert self.go.wait(5)
        return super().create_entity(*args, **kwargs)


def test_asks_made_while_a_request_is_in_flight_go_together_in_the_next_one():
    table, clock = SlowTable(), ManualClock(1000.0)
    pacer = instance(table, clock)
    table.go.set()
    pacer.reserve(API)  # the first request reads the schedule
    table.go.clear()
    table.entered.clear()
    table.ops.clear()
    results = []
    first = threading.Thread(target=lambda: results.append(pacer.reserve(API)))
    first.start()
    assert table.entered.wait(5)
    others = [threading.Thread(target=lambda: results.append(pacer.reserve(API))) for _ in range(5)]
    for thread in others:
        thread.start()
    while len(pacer._pending) < 5:
        threading.Event().wait(0.001)
    table.go.set()
    for thread in [first, *others]:
        thread.join(5)
    assert len({r.slot.at for r in results}) == 6
    assert table.ops == {"update": 2}  # one for the first, one for the five that asked meanwhile


class ContendedTable(MemoryTable):
    """Another instance writes the schedule just before each of this one's writes: every write meets a 412."""

    def _other_writes(self) -> None:
        entity = {"PartitionKey": PARTITION, "RowKey": ROW, "state": State().to_json()}
        if (PARTITION, ROW) in self.rows:
            super().update_entity(entity)
        else:
            super().create_entity(entity)

    def update_entity(self, *args, **kwargs):
        self._other_writes()
        return super().update_entity(*args, **kwargs)

    def submit_transaction(self, *args, **kwargs):
        self._other_writes()
        return super().submit_transaction(*args, **kwargs)


def test_pauses_after_412s_in_a_row_double_up_to_a_cap():
    pauses = [conflict_pause(n, lambda: 1.0) for n in (1, 2, 3, 30)]
    assert pauses == pytest.approx([CONFLICT_PAUSE, 2 * CONFLICT_PAUSE, 4 * CONFLICT_PAUSE, CONFLICT_MOST])
    assert conflict_pause(5, lambda: 0.0) == 0.0  # full jitter: anywhere from no pause to the longest


def test_a_table_too_contended_to_reserve_sends_the_command_back_and_the_process_stays_on_the_schedule():
    table, clock = ContendedTable(), ManualClock(1000.0)
    pacer = instance(table, clock)
    reservation = pacer.reserve(API)
    assert reservation.beyond
    assert reservation.slot is None
    assert reservation.wait == CONTENDED_BACK
    assert 1 <= pacer.counts["conflicts"] <= MAX_TRIES  # until the pauses would outlast TABLE_WAIT
    assert ask_rows(table) == []  # its ask row taken back: nobody reserves for callers that gave up
    assert not pacer.down  # busy is not down: pacing locally beside the others would send on top of them
    assert pacer.counts["fallbacks"] == 0


def test_a_slot_woken_up_for_too_late_is_void_and_one_on_time_is_not():
    table, clock = MemoryTable(), ManualClock(1000.0)
    pacer = instance(table, clock)
    slot = pacer.reserve(API).slot
    clock.now = slot.at  # woke up for it
    clock.advance(LATE * INTERVAL * 0.9)
    assert not pacer.late(slot)
    clock.advance(LATE * INTERVAL * 0.2)
    assert pacer.late(slot)
    assert pacer.redeem(slot) is None


def test_a_429_at_one_instance_moves_the_schedule_for_all():
    table, clock = MemoryTable(), ManualClock(1000.0)
    a, b = instance(table, clock), instance(table, clock)
    slot = a.reserve(API).slot
    a.throttled(API, 2.0, slot)
    assert b.reserve(API).slot.at >= 1002.0
    a.throttled(API, 2.0, slot)  # a second: a cut
    assert b.reserve(API).slot.at >= 1002.0
    assert b.rate(API) == pytest.approx(6.0 * CUT)


def test_a_slot_survives_its_message_form_and_one_from_the_split_schedule_still_reads():
    slot = Slot(API, 1.8e9, 2)
    assert Slot.from_message(slot.to_message()) == slot
    assert Slot.from_message({"api": API, "at": 1.8e9, "gen": 2, "part": 1}) == slot


def test_a_carried_slot_is_used_without_a_table_request_unless_late_or_of_an_older_generation():
    table, clock = MemoryTable(), ManualClock(1000.0)
    a, b = instance(table, clock), instance(table, clock)
    slot = a.reserve(API).slot
    later = Slot(API, slot.at + 5, slot.gen)
    table.ops.clear()
    assert b.redeem(later).wait == pytest.approx(5.0)
    assert not table.ops
    clock.advance(5 + INTERVAL)  # more than half an interval past
    assert b.redeem(later) is None
    fresh = Slot(API, clock.now + 1, slot.gen)
    refused = b.reserve(API).slot
    b.throttled(API, 1.0, refused)
    b.throttled(API, 1.0, refused)  # the schedule is cut: generation 1
    assert b.redeem(fresh) is None


def test_the_carried_slot_is_taken_once_by_the_first_call_to_its_api():
    slot = Slot(API, 5.0, 0)
    with carrying(slot):
        assert taken("export") is None
        assert taken(API) == slot
        assert taken(API) is None
    assert taken(API) is None


# -- falling back and coming back ------------------------------------------------------------------------------------
def test_an_unreachable_table_sends_the_process_to_its_local_pacer_and_it_comes_back_by_itself():
    table, clock, captured = BreakableTable(), ManualClock(1000.0), Captured()
    pacer = SharedPacer(
        table, {API: 6.0}, clock=clock, monotonic=clock, sleep=clock.advance, telemetry=captured.telemetry
    )
    assert pacer.reserve(API).slot is not None
    table.broken = True
    reservation = pacer.reserve(API)
    assert reservation.slot is None  # paced locally: no exception, no lost call
    assert pacer.down
    assert pacer.reserve(API).slot is None  # no table request while down
    table.broken = False
    clock.advance(DOWN_FIRST)
    assert not pacer.down
    assert pacer.reserve(API).slot is not None
    assert pacer.counts["fallbacks"] == 1
    assert captured.counts("itwin.pacing.fallbacks") == {(("error.type", "ServiceRequestError"),): 1}


def test_a_table_that_keeps_failing_is_tried_less_and_less_often():
    table, clock = BreakableTable(), ManualClock(1000.0)
    pacer = instance(table, clock)
    table.broken = True
    pacer.reserve(API)
    clock.advance(DOWN_FIRST)
    pacer.reserve(API)
    assert pacer.down
    clock.advance(DOWN_FIRST)
    assert pacer.down  # now down for twice as long
    clock.advance(DOWN_FIRST)
    assert not pacer.down


def test_a_429_while_the_table_is_down_holds_and_cuts_locally():
    table, clock = BreakableTable(), ManualClock(1000.0)
    pacer = instance(table, clock)
    table.broken = True
    pacer.throttled(API, 3.0)  # does not raise
    assert pacer.held(API) == pytest.approx(3.0)


# -- many instances against the platform's window ------------------------------------------------------------------
def test_sixteen_instances_starting_together_get_no_429_from_a_one_second_window():
    table, clock = MemoryTable(), ManualClock(1000.0)
    platform = RateLimiter()
    pacers = [instance(table, clock, sleep=lambda _: None) for _ in range(16)]
    # Every instance reserves for its invocations at once, then each call goes at its slot.
    slots = sorted((p.reserve(API).slot.at, i) for _ in range(15) for i, p in enumerate(pacers))
    refused = 0
    for at, _ in slots:
        clock.now = max(clock.now, at)
        refused += platform.admit(API, 6.0, clock.now) is not None
    assert refused == 0
    assert slots[-1][0] - slots[0][0] == pytest.approx((len(slots) - 1) * INTERVAL)  # every slot of the grid used

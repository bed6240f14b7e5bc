from manual_clock import ManualClock

from shared.replays import RecentDeliveries


def test_a_message_id_is_new_once():
    deliveries = RecentDeliveries()
    assert deliveries.first_time("m-1")
    assert not deliveries.first_time("m-1")
    assert deliveries.first_time("m-2")


def test_a_message_id_is_new_again_after_it_expires_or_is_forgotten():
    clock = ManualClock()
    deliveries = RecentDeliveries(ttl=10, clock=clock)
    assert deliveries.first_time("m-1")
    clock.now = 10.0
    assert deliveries.first_time("m-1")
    deliveries.forget("m-1")
    assert deliveries.first_time("m-1")


def test_the_oldest_ids_make_room_when_full():
    deliveries = RecentDeliveries(max_entries=2)
    for message_id in ("a", "b", "c"):
        assert deliveries.first_time(message_id)
    assert deliveries.first_time("a")
    assert not deliveries.first_time("c")

"""make dev's choice of Azurite's ports: the defaults Storage Explorer knows, a free one for each that is taken."""

from sandbox.azurite import DEFAULT_PORTS
from sandbox.dev import azurite_ports


def test_free_default_ports_are_used_as_they_are_and_nothing_is_said():
    ports, notes = azurite_ports(DEFAULT_PORTS, is_taken=lambda port: False)
    assert ports == {"blob": 10000, "queue": 10001, "table": 10002}
    assert notes == []


def test_a_taken_default_port_becomes_zero_for_a_free_one_and_is_named_with_what_it_means():
    ports, notes = azurite_ports(DEFAULT_PORTS, is_taken=lambda port: port == 10000)
    assert ports == {"blob": 0, "queue": 10001, "table": 10002}
    assert len(notes) == 1
    assert notes[0].startswith("port 10000 (Azurite's blob service) is taken on 127.0.0.1")
    assert "Storage Explorer" in notes[0]


def test_every_taken_port_is_named():
    ports, notes = azurite_ports(DEFAULT_PORTS, is_taken=lambda port: True)
    assert ports == {"blob": 0, "queue": 0, "table": 0}
    assert [note.split(" (")[0] for note in notes] == ["port 10000", "port 10001", "port 10002"]


def test_port_zero_asks_for_a_free_port_without_probing_it():
    probed: list[int] = []
    ports, notes = azurite_ports({"blob": 0, "queue": 0, "table": 0}, is_taken=lambda port: probed.append(port))
    assert ports == {"blob": 0, "queue": 0, "table": 0}
    assert probed == []
    assert notes == []

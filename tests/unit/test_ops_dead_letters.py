import json
from datetime import UTC, datetime, timedelta

import pytest

from ops.dead_letters import Kind, Selection, parse_age, parse_dead_letter, token_in, with_token
from ops.errors import UsageError

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DELETE = {"action": "delete", "resource": "connection", "id": "7dbd531d-6967-47b2-8945-a722a437ad7a"}


def envelope(message, code="InsufficientPermissions", failed_at="2026-11-23T10:00:00Z", **extra):
    error = {"status": 403, "code": code, "message": "no", "target": None, "details": []}
    return json.dumps({"message": message, "error": error, "attempts": 8, "failedAt": failed_at, **extra})


def test_a_worker_envelope_is_parsed_with_its_command_error_attempts_and_time():
    letter = parse_dead_letter("m-1", envelope({**DELETE, "attempt": 8, "correlationId": "evt-1"}))
    assert letter.kind is Kind.ENVELOPE
    assert letter.command_kind == "delete connection"
    assert (letter.code, letter.attempts, letter.problem) == ("InsufficientPermissions", 8, None)
    assert letter.when == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_a_replay_resets_the_attempt_count_and_ends_the_correlation_id_with_its_token():
    letter = parse_dead_letter("m-1", envelope({**DELETE, "attempt": 8, "correlationId": "evt-1"}))
    message = letter.replay_message()
    assert "attempt" not in message
    assert message["correlationId"] == "evt-1/replay-m-1"
    assert token_in(message) == letter.token == "replay-m-1"


def test_a_replay_starts_afresh_without_waits_or_first_enqueued_and_keeps_the_command_id():
    waited = {**DELETE, "attempt": 2, "waits": 40, "firstEnqueued": "2026-11-22T09:00:00Z", "commandId": "20261122-c1"}
    message = parse_dead_letter("m-1", envelope(waited, code="TooManyRequests")).replay_message()
    assert {"attempt", "waits", "firstEnqueued"}.isdisjoint(message)
    assert message["commandId"] == "20261122-c1"


def test_a_second_replay_replaces_the_earlier_token_and_stays_within_128_characters():
    assert with_token("evt-1/replay-old", "replay-new") == "evt-1/replay-new"
    assert with_token(None, "replay-new") == "replay-new"
    long = with_token("x" * 128, "replay-" + "a" * 36)
    assert len(long) == 128
    assert long.endswith("/replay-" + "a" * 36)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ("not json at all", "not JSON"),
        ('{"action": "delete", "resource": "connection", "id": "' + "x" * 60 + "…(truncated)", "was cut"),
        ({"action": "delete", "resource": "job", "id": "nope"}, "id must be a job id"),
    ],
)
def test_an_envelope_whose_message_is_not_a_valid_command_says_why_it_cannot_be_replayed(message, why):
    letter = parse_dead_letter("m-1", envelope(message, code="InvalidCommand"))
    assert letter.command is None
    assert why in letter.problem
    with pytest.raises(ValueError, match="no command to replay"):
        letter.replay_message()


def test_a_command_the_host_moved_itself_is_replayable():
    letter = parse_dead_letter("m-2", json.dumps(DELETE), inserted_on=NOW)
    assert letter.kind is Kind.HOST_MOVED
    assert letter.code == "MovedByHost"
    assert letter.when == NOW
    marked = json.loads(letter.marked(NOW))
    assert marked["message"] == DELETE
    assert marked["replay"] == {"token": "replay-m-2", "startedAt": "2026-11-23T12:00:00Z"}


@pytest.mark.parametrize("text", ["{broken", "[1, 2]", '{"message": "no error field"}', '"just a string"'])
def test_anything_else_is_malformed_and_never_replayed(text):
    letter = parse_dead_letter("m-3", text)
    assert letter.kind is Kind.MALFORMED
    assert letter.problem
    assert letter.code == "Malformed"


def test_a_marked_envelope_reads_as_an_interrupted_replay_only_with_its_own_token():
    letter = parse_dead_letter("m-1", envelope(DELETE))
    again = parse_dead_letter("m-1", letter.marked(NOW))
    assert again.replay_interrupted
    assert again.replay_started == NOW
    assert not parse_dead_letter("m-9", letter.marked(NOW)).replay_interrupted


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("2h", timedelta(hours=2)), ("3d", timedelta(days=3)), ("1w", timedelta(weeks=1))],
)
def test_ages_read_with_their_unit(text, expected):
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["2", "h", "2 hours", "-1h", "1y"])
def test_a_bad_age_is_a_usage_error_showing_the_form(text):
    with pytest.raises(UsageError, match="such as 90s"):
        parse_age(text)


def test_filters_select_by_code_command_and_age():
    letters = [
        parse_dead_letter("a-1", envelope(DELETE, failed_at="2026-11-23T11:30:00Z")),
        parse_dead_letter("b-2", envelope(DELETE, code="RateLimitExceeded", failed_at="2026-11-20T00:00:00Z")),
        parse_dead_letter("c-3", envelope({"action": "delete", "resource": "run", "id": "r-1"})),
    ]
    assert [x.id for x in Selection(code="ratelimitexceeded").choose(letters, NOW)] == ["b-2"]
    assert [x.id for x in Selection(command="run").choose(letters, NOW)] == ["c-3"]
    assert [x.id for x in Selection(command="delete connection").choose(letters, NOW)] == ["a-1", "b-2"]
    assert [x.id for x in Selection(older_than=timedelta(days=1)).choose(letters, NOW)] == ["b-2"]
    assert [x.id for x in Selection(newer_than=timedelta(hours=1)).choose(letters, NOW)] == ["a-1"]
    assert Selection().is_empty
    assert not Selection(everything=True).is_empty


def test_ids_are_matched_by_unique_prefix_and_a_wrong_one_is_named():
    letters = [parse_dead_letter(i, envelope(DELETE)) for i in ("ab12", "ab34", "cd56")]
    assert [x.id for x in Selection(ids=("CD",)).choose(letters, NOW)] == ["cd56"]
    with pytest.raises(UsageError, match="matches 2 dead letters"):
        Selection(ids=("ab",)).choose(letters, NOW)
    with pytest.raises(UsageError, match="no dead letter has the id 'zz'"):
        Selection(ids=("zz",)).choose(letters, NOW)

import json
from datetime import UTC, datetime, timedelta

import pytest
from samples import CHANGESET, CLASH_TEST, IMODEL, ITWIN, JOB, JOB_BODY, REALITY_JOB_BODY

from shared.commands import MAX_BODY_BYTES, Command, InvalidCommand, decode_json, parse_batch, validate

VALID = [
    {
        "action": "create",
        "resource": "connection",
        "body": {"iModelId": IMODEL, "displayName": "nightly", "authenticationType": "Service"},
    },
    {"action": "delete", "resource": "connection", "id": "fc226d0d-1647-48d7-8c11-f1f74f2d9808"},
    {"action": "delete", "resource": "connection", "id": "VRZHoBhrnkGrAev0-_-d_xwvyrzjgaVGka5wU967Q7M"},
    {"action": "delete", "resource": "connection", "iModelId": IMODEL},
    {"action": "create", "resource": "job", "body": JOB_BODY},
    {"action": "submit", "resource": "job", "id": JOB},
    {"action": "cancel", "resource": "job", "id": JOB},
    {"action": "delete", "resource": "job", "id": JOB},
    {"action": "create", "resource": "run", "body": {"testId": "t-1", "iModelId": IMODEL, "namedVersionId": "v-1"}},
    {"action": "delete", "resource": "run", "id": "run-1"},
    {
        "action": "delete",
        "resource": "run",
        "id": "run-1",
        "correlationId": "abc-123",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "attempt": 3,
    },
    {
        "action": "create",
        "resource": "clashRun",
        "iTwinId": ITWIN,
        "body": {
            "testId": CLASH_TEST,
            "iModelId": IMODEL,
            "changesetId": CHANGESET,
            "testSettings": {"resultsLimit": 10000},
        },
    },
    {
        "action": "create",
        "resource": "clashRun",
        "body": {"testId": CLASH_TEST, "iModelId": IMODEL, "changesetId": "c"},
    },
    {"action": "cancel", "resource": "clashRun", "id": JOB, "iTwinId": ITWIN},
    {"action": "delete", "resource": "clashRun", "id": JOB, "iTwinId": ITWIN},
    {"action": "create", "resource": "realityJob", "body": REALITY_JOB_BODY},
    {"action": "cancel", "resource": "realityJob", "id": JOB},
    {"action": "record", "resource": "realityJob", "id": JOB},
]
RUN_V2 = {"testId": CLASH_TEST, "iModelId": IMODEL, "changesetId": CHANGESET}


@pytest.mark.parametrize("message", VALID, ids=lambda m: f"{m['action']} {m['resource']}")
def test_every_documented_command_is_valid_and_round_trips(message):
    command = validate(message)
    assert command.kind == f"{message['action']} {message['resource']}"
    assert command.to_message() == message
    assert validate(command.to_message()) == command


def targets(message):
    with pytest.raises(InvalidCommand) as caught:
        validate(message)
    return [(d.code, d.target) for d in caught.value.details]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"action": "explode", "resource": "connection", "id": "x"}, ("InvalidValue", "action")),
        ({"action": "delete", "resource": "imodel", "id": "x"}, ("InvalidValue", "resource")),
        ({"resource": "connection", "id": "x"}, ("MissingRequiredProperty", "action")),
        ({"action": "submit", "resource": "run", "id": "r"}, ("InvalidValue", "action")),
        ({"action": "delete", "resource": "job", "id": "not-a-guid"}, ("InvalidValue", "id")),
        ({"action": "delete", "resource": "job"}, ("MissingRequiredProperty", "id")),
        ({"action": "delete", "resource": "connection", "id": "has spaces"}, ("InvalidValue", "id")),
        ({"action": "delete", "resource": "connection", "iModelId": "nope"}, ("InvalidValue", "iModelId")),
        ({"action": "delete", "resource": "run", "id": "r", "extra": 1}, ("UnknownProperty", "extra")),
        ({"action": "delete", "resource": "run", "id": "r", "body": {}}, ("UnknownProperty", "body")),
        ({"action": "create", "resource": "connection"}, ("MissingRequiredProperty", "body")),
        (
            {"action": "create", "resource": "connection", "body": {"iModelId": "x", "displayName": "n"}},
            ("InvalidValue", "body.iModelId"),
        ),
        (
            {"action": "create", "resource": "connection", "body": {"iModelId": IMODEL, "displayName": "n", "x": 1}},
            ("UnknownProperty", "body.x"),
        ),
        (
            {"action": "create", "resource": "run", "body": {"iModelId": IMODEL, "namedVersionId": "v"}},
            ("MissingRequiredProperty", "body.testId"),
        ),
        ({"action": "create", "resource": "job", "body": {**JOB_BODY, "type": "Huge"}}, ("InvalidValue", "body.type")),
        ({"action": "delete", "resource": "run", "id": "r", "traceparent": "00-bad"}, ("InvalidValue", "traceparent")),
        ({"action": "delete", "resource": "run", "id": "r", "correlationId": 7}, ("InvalidValue", "correlationId")),
        ({"action": "delete", "resource": "run", "id": "r", "attempt": 0}, ("InvalidValue", "attempt")),
        ({"action": "delete", "resource": "run", "id": "r", "attempt": True}, ("InvalidValue", "attempt")),
    ],
)
def test_an_invalid_command_names_the_field_at_fault(message, expected):
    assert expected in targets(message)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # a v1 body under a v2 resource, and the other way round, is refused naming the field that gives it away
        (
            {"action": "create", "resource": "clashRun", "body": {**RUN_V2, "namedVersionId": "v-1"}},
            ("UnknownProperty", "body.namedVersionId"),
        ),
        (
            {"action": "create", "resource": "run", "body": {**RUN_V2, "namedVersionId": "v-1"}},
            ("UnknownProperty", "body.changesetId"),
        ),
        ({"action": "create", "resource": "realityJob", "body": JOB_BODY}, ("UnknownProperty", "body.workspaceId")),
        ({"action": "create", "resource": "job", "body": REALITY_JOB_BODY}, ("UnknownProperty", "body.specifications")),
        (
            {"action": "create", "resource": "clashRun", "body": {**RUN_V2, "testId": "t-1"}},
            ("InvalidValue", "body.testId"),
        ),
        (
            {"action": "create", "resource": "clashRun", "body": {"testId": CLASH_TEST, "iModelId": IMODEL}},
            ("MissingRequiredProperty", "body.changesetId"),
        ),
        (
            {"action": "create", "resource": "clashRun", "body": {**RUN_V2, "testSettings": {"resultsLimit": 0}}},
            ("InvalidValue", "body.testSettings.resultsLimit"),
        ),
        (
            {"action": "create", "resource": "clashRun", "body": {**RUN_V2, "testSettings": {"limit": 5}}},
            ("InvalidValue", "body.testSettings"),
        ),
        (
            {"action": "create", "resource": "clashRun", "iTwinId": "nope", "body": RUN_V2},
            ("InvalidValue", "iTwinId"),
        ),
        ({"action": "cancel", "resource": "clashRun", "id": JOB}, ("MissingRequiredProperty", "iTwinId")),
        ({"action": "delete", "resource": "clashRun", "id": "r-1", "iTwinId": ITWIN}, ("InvalidValue", "id")),
        ({"action": "delete", "resource": "run", "id": "r-1", "iTwinId": ITWIN}, ("UnknownProperty", "iTwinId")),
        ({"action": "submit", "resource": "realityJob", "id": JOB}, ("InvalidValue", "action")),
        ({"action": "delete", "resource": "realityJob", "id": JOB}, ("InvalidValue", "action")),
        ({"action": "cancel", "resource": "realityJob", "id": "j-1"}, ("InvalidValue", "id")),
        ({"action": "record", "resource": "realityJob", "id": "j-1"}, ("InvalidValue", "id")),
        ({"action": "record", "resource": "job", "id": JOB}, ("InvalidValue", "action")),
        (
            {"action": "create", "resource": "realityJob", "body": {**REALITY_JOB_BODY, "name": "ab"}},
            ("InvalidValue", "body.name"),
        ),
        (
            {"action": "create", "resource": "realityJob", "body": {**REALITY_JOB_BODY, "type": "Full mesh"}},
            ("InvalidValue", "body.type"),
        ),
        (
            {"action": "create", "resource": "realityJob", "body": {**REALITY_JOB_BODY, "iTwinId": None}},
            ("MissingRequiredProperty", "body.iTwinId"),
        ),
        (
            {"action": "create", "resource": "realityJob", "body": {**REALITY_JOB_BODY, "specifications": {}}},
            ("InvalidValue", "body.specifications"),
        ),
    ],
)
def test_a_v2_command_is_validated_as_strictly_as_v1_naming_the_field_at_fault(message, expected):
    assert expected in targets(message)


def test_a_body_over_48_kib_is_refused():
    body = {"iModelId": IMODEL, "displayName": "x" * 200, "authenticationType": "Service"}
    big = {**JOB_BODY, "settings": {"blob": "y" * MAX_BODY_BYTES}}
    assert ("InvalidValue", "body") in targets({"action": "create", "resource": "job", "body": big})
    validate({"action": "create", "resource": "connection", "body": body})


def test_delete_by_id_and_by_imodel_at_once_is_ambiguous():
    message = {"action": "delete", "resource": "connection", "id": "x" * 43, "iModelId": IMODEL}
    assert ("InvalidValue", "iModelId") in targets(message)


def test_a_batch_reports_every_problem_with_its_index():
    with pytest.raises(InvalidCommand) as caught:
        parse_batch([VALID[1], {"action": "delete", "resource": "job", "id": "x"}, VALID[2], "nope"])
    assert [d.target for d in caught.value.details] == ["[1].id", "[3]"]


def test_a_batch_holds_one_to_one_hundred_commands():
    assert len(parse_batch([VALID[1]] * 100)) == 100
    for size in (0, 101):
        with pytest.raises(InvalidCommand):
            parse_batch([VALID[1]] * size)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", "not json"])
def test_a_message_that_is_not_json_is_an_invalid_request_body(raw):
    with pytest.raises(InvalidCommand) as caught:
        validate(decode_json(raw))
    assert caught.value.code == "InvalidRequestBody"


def test_the_next_attempt_keeps_everything_but_the_count():
    command = validate(decode_json(json.dumps(VALID[3])))
    again = command.next_attempt()
    assert again.attempt == 2
    assert again.to_message() == {**VALID[3], "attempt": 2}
    assert isinstance(again, Command)


def test_waits_and_the_first_enqueued_time_travel_with_the_command():
    now = datetime(2026, 11, 23, 8, 0, 0, 123000, tzinfo=UTC)
    waited = validate(VALID[3]).after_wait(now).after_wait(now + timedelta(hours=1))
    assert (waited.attempt, waited.waits, waited.first_enqueued) == (1, 2, now)
    message = waited.to_message()
    assert message["firstEnqueued"] == "2026-11-23T08:00:00.123Z"
    assert validate(message) == waited
    assert waited.age(now + timedelta(hours=3)) == 3 * 3600
    assert waited.next_attempt().deliveries == 4


@pytest.mark.parametrize(
    ("fields", "target"),
    [
        ({"waits": -1}, "waits"),
        ({"waits": 1.5}, "waits"),
        ({"firstEnqueued": "yesterday"}, "firstEnqueued"),
        ({"firstEnqueued": "2026-11-23T08:00:00"}, "firstEnqueued"),
        ({"firstEnqueued": 1700000000}, "firstEnqueued"),
    ],
)
def test_bad_waits_or_first_enqueued_times_are_refused_naming_the_field(fields, target):
    with pytest.raises(InvalidCommand) as caught:
        validate({"action": "delete", "resource": "run", "id": "r", **fields})
    assert [(d.code, d.target) for d in caught.value.details] == [("InvalidValue", target)]


def test_a_field_written_in_the_wrong_case_is_suggested_and_not_also_said_missing():
    with pytest.raises(InvalidCommand) as caught:
        validate({"action": "delete", "resource": "connection", "imodelId": "7dbd531d-6967-47b2-8945-a722a437ad7a"})
    assert [(d.target, d.message) for d in caught.value.details] == [
        ("imodelId", "imodelId is not a known field; did you mean iModelId?")
    ]


def test_a_connection_delete_without_id_or_imodel_id_says_either_will_do():
    with pytest.raises(InvalidCommand) as caught:
        validate({"action": "delete", "resource": "connection"})
    [detail] = caught.value.details
    assert (detail.code, detail.target) == ("MissingRequiredProperty", "id")
    assert detail.message.startswith("id or iModelId is required:")


def test_a_body_field_in_the_wrong_case_is_suggested_too():
    with pytest.raises(InvalidCommand) as caught:
        validate({"action": "create", "resource": "connection", "body": {"imodelId": "x", "displayName": "n"}})
    assert "body.imodelId is not a known field; did you mean body.iModelId?" in [
        d.message for d in caught.value.details
    ]


def test_a_reserved_slot_travels_with_the_command_until_it_is_rescheduled_for_another_reason():
    from shared.schedule import Slot

    message = {
        "action": "delete",
        "resource": "run",
        "id": "run-1",
        "slot": {"api": "clashdetection", "at": 1.8e9, "gen": 2},
    }
    command = validate(message)
    assert command.slot == Slot("clashdetection", 1.8e9, 2)
    assert validate(command.to_message()) == command
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert command.after_wait(now).slot is None
    assert command.next_attempt(now).slot is None


@pytest.mark.parametrize(
    "slot",
    [
        {"api": "clashdetection", "at": 1.8e9},
        {"api": "Clash Detection", "at": 1.8e9, "gen": 0},
        {"api": "clashdetection", "at": "soon", "gen": 0},
        {"api": "clashdetection", "at": 12.0, "gen": 0},
        {"api": "clashdetection", "at": 1.8e9, "gen": -1},
        {"api": "clashdetection", "at": 1.8e9, "gen": 0, "extra": 1},
        "clashdetection@1800000000",
    ],
)
def test_a_malformed_slot_is_refused_naming_the_field(slot):
    with pytest.raises(InvalidCommand) as caught:
        validate({"action": "delete", "resource": "run", "id": "run-1", "slot": slot})
    assert [d.target for d in caught.value.details] == ["slot"]

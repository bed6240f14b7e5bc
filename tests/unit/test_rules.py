import json
from datetime import UTC, datetime

import pytest
from samples import IMODEL

from shared.commands import InvalidCommand
from shared.rules import Event, commands_for, format_enqueued, load_rules, parse_enqueued, parse_event
from shared.settings import SettingsError

RULES = load_rules(None)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ITWIN = "1db84556-49ba-41fd-8500-3657784c7752"


def event(event_type, **content):
    return Event(event_type, content, NOW, itwin_id=ITWIN, message_id="msg-1", webhook_id="wh")


def test_an_imodel_deleted_event_deletes_every_connection_of_that_imodel():
    [command] = commands_for(event("iModels.iModelDeleted.v1", imodelId=IMODEL), RULES, {})
    assert command.to_message() == {
        "action": "delete",
        "resource": "connection",
        "iModelId": IMODEL,
        "correlationId": "msg-1",
    }


def test_an_imodel_created_event_creates_a_connection_only_when_a_name_is_set():
    created = event("iModels.iModelCreated.v1", imodelId=IMODEL)
    assert commands_for(created, RULES, {}) == []
    [command] = commands_for(created, RULES, {"ITWIN_EXPORT_CONNECTION_NAME": "Nightly export"})
    assert command.body == {"iModelId": IMODEL, "displayName": "Nightly export", "authenticationType": "Service"}


def test_a_named_version_creates_one_clash_run_per_configured_test():
    version = event("iModels.namedVersionCreated.v1", imodelId=IMODEL, versionId="nv-7")
    assert commands_for(version, RULES, {}) == []
    commands = commands_for(version, RULES, {"ITWIN_CLASH_TEST_IDS": "t1, t2"})
    assert [c.body for c in commands] == [
        {"testId": "t1", "iModelId": IMODEL, "namedVersionId": "nv-7"},
        {"testId": "t2", "iModelId": IMODEL, "namedVersionId": "nv-7"},
    ]
    assert [c.project_id for c in commands] == [ITWIN, ITWIN]  # so that a lost create can be looked up


def test_a_named_version_event_without_an_itwin_id_makes_runs_without_a_project():
    version = Event("iModels.namedVersionCreated.v1", {"imodelId": IMODEL, "versionId": "nv-7"}, NOW)
    [command] = commands_for(version, RULES, {"ITWIN_CLASH_TEST_IDS": "t1"})
    assert command.project_id is None


V2_TEST = "c6263303-8d04-44c1-a769-675fb763c412"


def test_a_named_version_starts_clash_detection_v2_runs_on_its_changeset_only_for_v2_tests():
    content = {"imodelId": IMODEL, "versionId": "nv-7", "changesetId": "cs-7", "changesetIndex": 7}
    version = event("iModels.namedVersionCreated.v1", **content)
    # GIVEN only v1 tests configured (the default rules' contract) THEN no v2 command
    assert {c.resource for c in commands_for(version, RULES, {"ITWIN_CLASH_TEST_IDS": "t1"})} == {"run"}
    # GIVEN v2 tests THEN one clashRun per test, in the event's iTwin, on the named version's changeset
    [command] = commands_for(version, RULES, {"ITWIN_CLASH_V2_TEST_IDS": V2_TEST})
    assert command.to_message() == {
        "action": "create",
        "resource": "clashRun",
        "iTwinId": ITWIN,
        "body": {"testId": V2_TEST, "iModelId": IMODEL, "changesetId": "cs-7"},
        "correlationId": "msg-1",
    }


def test_changes_ready_start_clash_detection_v2_runs_on_their_changeset_only_when_configured():
    content = {"imodelId": IMODEL, "changesetId": "cs-8", "changesetIndex": "8"}
    changes = event("iModels.changesReady.v1", **content)
    assert commands_for(changes, RULES, {"ITWIN_CLASH_V2_TEST_IDS": V2_TEST}) == []
    [command] = commands_for(changes, RULES, {"ITWIN_CLASH_V2_CHANGES_TEST_IDS": V2_TEST})
    assert (command.resource, command.itwin_id, command.body) == (
        "clashRun",
        ITWIN,
        {"testId": V2_TEST, "iModelId": IMODEL, "changesetId": "cs-8"},
    )


def test_a_named_version_event_without_a_changeset_starts_no_v2_run():
    version = event("iModels.namedVersionCreated.v1", imodelId=IMODEL, versionId="nv-7")
    assert commands_for(version, RULES, {"ITWIN_CLASH_V2_TEST_IDS": V2_TEST}) == []


def test_a_reality_modeling_v2_jobs_end_records_its_state_in_its_creators_row():
    job = "5f0b2c1d-7e3a-4b9c-8d6e-1a2b3c4d5e6f"
    [command] = commands_for(event("realityModeling.jobCompleted.v2", jobId=job), RULES, {})
    assert (command.action, command.resource, command.id) == ("record", "realityJob", job)


def test_an_event_type_without_a_rule_produces_nothing():
    assert commands_for(event("realityModeling.jobCompleted.v1", jobId="j"), RULES, {}) == []


def test_an_event_missing_what_its_rule_needs_is_invalid_naming_the_events_field():
    with pytest.raises(InvalidCommand) as caught:
        commands_for(event("iModels.iModelDeleted.v1"), RULES, {})
    assert caught.value.details[0].target == "content.imodelId"
    assert caught.value.details[0].message == "content.imodelId is required: an iModel id (a GUID)."


def test_an_event_field_that_is_not_what_the_command_needs_is_named_as_the_events():
    with pytest.raises(InvalidCommand) as caught:
        commands_for(event("iModels.iModelDeleted.v1", imodelId="not-a-guid"), RULES, {})
    assert (caught.value.details[0].target, caught.value.details[0].message) == (
        "content.imodelId",
        "content.imodelId must be an iModel id (a GUID).",
    )


def test_rules_are_data_that_a_setting_replaces():
    custom = json.dumps(
        [
            {
                "eventType": "realityModeling.jobCompleted.v1",
                "commands": [{"action": "delete", "resource": "job", "id": "{content.jobId}"}],
            }
        ]
    )
    job = "0e7f2f1a-7a0b-4c38-b0c5-9b5a6d1a2b3c"
    [command] = commands_for(event("realityModeling.jobCompleted.v1", jobId=job), load_rules(custom), {})
    assert (command.kind, command.id) == ("delete job", job)


def test_secret_settings_cannot_be_placed_in_commands():
    leak = json.dumps(
        [
            {
                "eventType": "x",
                "commands": [{"action": "delete", "resource": "run", "id": "{settings.ITWIN_CLIENT_SECRET}"}],
            }
        ]
    )
    with pytest.raises(InvalidCommand):
        commands_for(event("x"), load_rules(leak), {"ITWIN_CLIENT_SECRET": "hunter2hunter2"})


@pytest.mark.parametrize(
    "text", ["{", "{}", "[1]", '[{"eventType": "x"}]', '[{"eventType": "x", "commands": [], "y": 1}]']
)
def test_a_malformed_rules_document_is_a_settings_error_naming_it(text):
    with pytest.raises(SettingsError, match="ITWIN_EVENT_RULES"):
        load_rules(text)


def test_a_webhook_body_is_parsed_once_into_an_event():
    body = json.dumps(
        {
            "content": {"imodelId": IMODEL, "userId": "u"},
            "eventType": "iModels.iModelDeleted.v1",
            "enqueuedDateTime": "11/3/2023 8:07:01 PM",
            "iTwinId": "tw",
            "messageId": "m",
            "webhookId": "w",
        }
    ).encode()
    parsed = parse_event(body)
    assert (parsed.event_type, parsed.content["imodelId"], parsed.message_id) == (
        "iModels.iModelDeleted.v1",
        IMODEL,
        "m",
    )


@pytest.mark.parametrize(
    ("body", "code"), [(b"nope", "InvalidRequestBody"), (b"[]", "InvalidEvent"), (b"{}", "InvalidEvent")]
)
def test_a_webhook_body_that_is_not_an_event_is_rejected_with_a_code(body, code):
    with pytest.raises(InvalidCommand) as caught:
        parse_event(body)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("11/3/2023 8:07:01 PM", datetime(2023, 11, 3, 20, 7, 1, tzinfo=UTC)),
        ("1/1/2024 12:00:00 AM", datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)),
        ("2023-11-03T20:07:01Z", datetime(2023, 11, 3, 20, 7, 1, tzinfo=UTC)),
        ("2023-11-03T21:07:01+01:00", datetime(2023, 11, 3, 20, 7, 1, tzinfo=UTC)),
        ("yesterday", None),
        (None, None),
        (1699042021, None),
    ],
)
def test_enqueued_date_time_is_read_in_the_platforms_format_or_iso_8601(text, expected):
    assert parse_enqueued(text) == expected


def test_the_platforms_date_format_round_trips():
    assert format_enqueued(datetime(2023, 11, 3, 20, 7, 1, tzinfo=UTC)) == "11/3/2023 8:07:01 PM"
    assert parse_enqueued(format_enqueued(NOW)) == NOW

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from otel_capture import Captured
from samples import IMODEL

from shared.http_api import (
    MAX_REQUEST_BYTES,
    accept_commands,
    command_status,
    health,
    human_duration,
    receive_webhook,
)
from shared.intake import IdempotencyKeyReused
from shared.replays import RecentDeliveries
from shared.rules import format_enqueued, load_rules
from shared.settings import SettingsError
from shared.signature import sign

SECRET = "s" * 32
ENV = {"ITWIN_CLIENT_ID": "id", "ITWIN_CLIENT_SECRET": "secret-value", "AzureWebJobsStorage": "x"}


def no_queue():
    raise AssertionError("nothing may be enqueued")


def delivery(event_type, content=None, enqueued=None, **fields):
    body = {
        "eventType": event_type,
        "content": content or {},
        "enqueuedDateTime": format_enqueued(enqueued or datetime.now(UTC)),
        "messageId": str(uuid.uuid4()),
        **fields,
    }
    return json.dumps(body).encode()


def rules():
    return load_rules(None)


def test_commands_that_are_not_json_are_an_invalid_request_body():
    reply = accept_commands(b"{nope", None, no_queue)
    assert reply.status == 400
    assert reply.body["error"]["code"] == "InvalidRequestBody"


def test_one_invalid_command_in_a_batch_rejects_the_batch_naming_the_field():
    batch = [{"action": "delete", "resource": "run", "id": "r"}, {"action": "delete", "resource": "job", "id": "x"}]
    reply = accept_commands(json.dumps(batch).encode(), None, no_queue)
    assert reply.status == 400
    assert reply.body["error"]["details"][0]["target"] == "[1].id"
    assert set(reply.body["error"]["details"][0]) == {"code", "message", "target"}


def test_a_body_over_one_mib_is_413_whatever_it_holds():
    assert accept_commands(b"x" * (MAX_REQUEST_BYTES + 1), None, no_queue).status == 413
    assert accept_commands(b"{}", str(MAX_REQUEST_BYTES + 1), no_queue).status == 413


def test_a_webhook_with_a_bad_or_missing_signature_is_401():
    body = delivery("iModels.iModelDeleted.v1")
    assert receive_webhook(body, sign(body, "x" * 32), SECRET, rules, {}, no_queue).status == 401
    assert receive_webhook(body, None, SECRET, rules, {}, no_queue).status == 401


def test_every_delivery_is_refused_when_no_secret_is_configured():
    body = delivery("iModels.iModelDeleted.v1")
    reply = receive_webhook(body, sign(body, ""), None, rules, {}, no_queue)
    assert reply.status == 401
    assert "no webhook secret" in reply.body["error"]["message"]


def test_a_signed_event_without_a_rule_is_accepted_and_enqueues_nothing():
    body = delivery("accessControl.memberAdded.v1")
    reply = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue)
    assert (reply.status, reply.body["accepted"]) == (202, 0)


def test_a_signed_event_missing_the_imodel_id_is_400_naming_it():
    body = delivery("iModels.iModelDeleted.v1")
    reply = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue)
    assert reply.status == 400
    assert reply.body["error"]["details"][0]["target"] == "content.imodelId"


def test_health_is_ok_with_the_required_settings():
    assert health(ENV, rules).status == 200
    assert health(ENV, rules).body == {"status": "ok"}


def test_health_names_missing_settings_and_never_a_value():
    reply = health({"ITWIN_CLIENT_SECRET": "secret-value"}, rules)
    assert reply.status == 503
    assert reply.body["missing"] == ["ITWIN_CLIENT_ID", "AzureWebJobsStorage"]
    assert "secret-value" not in json.dumps(reply.body)


def test_health_reports_malformed_event_rules():
    def broken():
        raise SettingsError("ITWIN_EVENT_RULES is not valid JSON")

    reply = health(ENV, broken)
    assert (reply.status, reply.body["invalid"]) == (503, ["ITWIN_EVENT_RULES"])


def test_commands_without_queue_storage_configured_are_503_naming_the_setting():
    def unconfigured():
        raise SettingsError("AzureWebJobsStorage is not set")

    reply = accept_commands(b'{"action": "delete", "resource": "run", "id": "r"}', None, unconfigured)
    assert reply.status == 503
    assert reply.body["error"]["code"] == "ServiceMisconfigured"
    assert "AzureWebJobsStorage" in reply.body["error"]["message"]


def test_a_webhook_with_malformed_rules_is_503_naming_the_setting():
    def broken():
        raise SettingsError("ITWIN_EVENT_RULES is not valid JSON")

    body = delivery("iModels.iModelDeleted.v1")
    reply = receive_webhook(body, sign(body, SECRET), SECRET, broken, {}, no_queue)
    assert (reply.status, reply.body["error"]["code"]) == (503, "ServiceMisconfigured")


def test_a_repeated_delivery_is_answered_202_as_a_duplicate_without_touching_the_queue():
    deliveries = RecentDeliveries()
    body = delivery("accessControl.memberAdded.v1", messageId="m-1")
    first = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue, deliveries)
    again = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue, deliveries)
    assert "duplicate" not in first.body
    assert (again.status, again.body["accepted"], again.body["duplicate"]) == (202, 0, True)


def test_a_delivery_enqueued_more_than_a_day_ago_is_refused_as_a_replay():
    body = delivery("iModels.iModelDeleted.v1", {"imodelId": IMODEL}, datetime.now(UTC) - timedelta(hours=25))
    reply = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue)
    assert (reply.status, reply.body["error"]["code"]) == (400, "StaleDelivery")
    assert reply.body["error"]["message"] == (
        "Delivery refused: enqueuedDateTime is 25 hours old; deliveries older than 24 hours are refused as replays."
    )


def test_a_delivery_from_the_future_beyond_clock_skew_is_refused():
    body = delivery("iModels.iModelDeleted.v1", {"imodelId": IMODEL}, datetime.now(UTC) + timedelta(hours=1))
    reply = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue)
    assert (reply.status, reply.body["error"]["code"]) == (400, "StaleDelivery")


def test_a_delivery_without_enqueued_date_time_is_refused_naming_the_field():
    event = {"eventType": "iModels.iModelDeleted.v1", "content": {"imodelId": IMODEL}, "messageId": "m-1"}
    body = json.dumps(event).encode()
    reply = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue)
    assert reply.status == 400
    assert reply.body["error"]["details"][0]["target"] == "enqueuedDateTime"


@pytest.mark.parametrize("message_id", [None, "", 42])
def test_a_signed_delivery_without_a_message_id_is_refused_every_time_naming_it(message_id):
    # GIVEN a signed iModelDeleted delivery with no usable messageId, which no instance could recognise again
    event = {
        "eventType": "iModels.iModelDeleted.v1",
        "content": {"imodelId": IMODEL},
        "enqueuedDateTime": format_enqueued(datetime.now(UTC)),
    }
    if message_id is not None:
        event["messageId"] = message_id
    body = json.dumps(event).encode()
    # WHEN it is posted three times
    replies = [receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue) for _ in range(3)]
    # THEN each is 400 naming messageId, and nothing is enqueued
    assert [reply.status for reply in replies] == [400, 400, 400]
    [detail] = replies[0].body["error"]["details"]
    assert (detail["code"], detail["target"]) == ("MissingRequiredProperty", "messageId")


def delivery_counts(captured: Captured) -> dict[tuple[str, str | None], int]:
    """``itwin.webhook.deliveries`` by (outcome, error.type)."""
    return {
        (dict(key)["outcome"], dict(key).get("error.type")): value
        for key, value in captured.counts("itwin.webhook.deliveries").items()
    }


def test_each_webhook_delivery_is_counted_as_accepted_duplicate_or_refused_with_its_code():
    captured = Captured()
    deliveries = RecentDeliveries()
    event = delivery("accessControl.memberAdded.v1", messageId="m-1")
    incomplete = delivery("iModels.iModelDeleted.v1")
    stale = delivery("accessControl.memberAdded.v1", enqueued=datetime.now(UTC) - timedelta(hours=25))

    def deliver(body: bytes, signature: str | None) -> int:
        return receive_webhook(
            body, signature, SECRET, rules, {}, no_queue, deliveries, telemetry=captured.telemetry
        ).status

    answers = [
        deliver(event, sign(event, SECRET)),
        deliver(event, sign(event, SECRET)),
        deliver(event, sign(event, "x" * 32)),
        deliver(incomplete, sign(incomplete, SECRET)),
        deliver(stale, sign(stale, SECRET)),
        deliver(b"x" * (MAX_REQUEST_BYTES + 1), None),
    ]

    assert answers == [202, 202, 401, 400, 400, 413]
    assert delivery_counts(captured) == {
        ("accepted", None): 1,
        ("duplicate", None): 1,
        ("refused", "InvalidSignature"): 1,
        ("refused", "InvalidCommand"): 1,
        ("refused", "StaleDelivery"): 1,
        ("refused", "RequestTooLarge"): 1,
    }


def test_a_delivery_whose_commands_cannot_be_enqueued_is_counted_as_refused_with_the_failure():
    captured = Captured()
    body = delivery("iModels.iModelDeleted.v1", {"imodelId": IMODEL})

    def unreachable_queue():
        raise ConnectionError("queue service unreachable")

    with pytest.raises(ConnectionError):
        receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, unreachable_queue, telemetry=captured.telemetry)

    assert delivery_counts(captured) == {("refused", "ConnectionError"): 1}


def test_health_refuses_a_retention_shorter_than_a_command_may_wait():
    reply = health({**ENV, "ITWIN_LEDGER_RETENTION": "1d", "ITWIN_MAX_COMMAND_AGE": "2d"}, rules)
    assert reply.status == 503
    assert reply.body["invalid"] == ["ITWIN_MAX_COMMAND_AGE", "ITWIN_LEDGER_RETENTION"]
    assert "plus one day" in reply.body["problems"][0]


def test_a_status_request_for_something_that_is_not_a_command_id_never_reads_storage():
    def unreachable():
        raise AssertionError("storage was read")

    for text in ("20261203-" + "a" * 40_000, "20261203-k\u00e9", "../etc", "2026120-kabc"):
        reply = command_status(text, unreachable)
        assert (reply.status, reply.body["error"]["code"]) == (404, "CommandNotFound")
        assert len(reply.body["error"]["message"]) < 300


def test_a_delivery_without_a_signature_header_is_told_that_it_is_missing():
    body = delivery("iModels.iModelDeleted.v1", {"imodelId": IMODEL})
    for missing in (None, ""):
        reply = receive_webhook(body, missing, SECRET, rules, {}, no_queue)
        assert reply.status == 401
        assert "the Signature header is missing" in reply.body["error"]["message"]
    wrong = receive_webhook(body, sign(body, "x" * 32), SECRET, rules, {}, no_queue)
    assert "the Signature header does not match the body" in wrong.body["error"]["message"]


@pytest.mark.parametrize(
    ("delta", "said"),
    [
        (timedelta(seconds=1), "1 second"),
        (timedelta(seconds=90), "90 seconds"),
        (timedelta(minutes=5), "5 minutes"),
        (timedelta(hours=24), "24 hours"),
        (timedelta(hours=27007), "1125 days"),
    ],
)
def test_durations_in_messages_are_said_as_people_say_them(delta, said):
    assert human_duration(delta) == said


def test_a_years_old_delivery_says_its_age_in_days():
    body = delivery("iModels.iModelDeleted.v1", {"imodelId": IMODEL}, datetime(2023, 11, 3, 20, 7, 1, tzinfo=UTC))
    now = datetime(2026, 12, 3, 11, 0, tzinfo=UTC)
    reply = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue, now=lambda: now)
    message = reply.body["error"]["message"]
    assert "enqueuedDateTime is 1125 days old; deliveries older than 24 hours are refused" in message


def test_a_delivery_from_the_future_says_by_how_much():
    body = delivery("iModels.iModelDeleted.v1", {"imodelId": IMODEL}, datetime.now(UTC) + timedelta(hours=3))
    message = receive_webhook(body, sign(body, SECRET), SECRET, rules, {}, no_queue).body["error"]["message"]
    assert "hours ahead of this server's clock (more than 5 minutes is refused); check the clocks" in message


@pytest.mark.parametrize("command_id", ["bad", "20261123-c0a1b2c3d4e5f60718293a4b5c6d7e8f9"])
def test_a_posted_command_id_of_any_form_is_refused_as_the_services_to_assign(command_id):
    command = {"action": "delete", "resource": "run", "id": "r", "commandId": command_id}
    reply = accept_commands(json.dumps(command).encode(), None, no_queue)
    assert reply.status == 400
    [detail] = reply.body["error"]["details"]
    assert detail["target"] == "commandId"
    assert detail["message"].startswith("commandId is assigned by the service; leave it out")
    batch = [{"action": "delete", "resource": "run", "id": "r"}, command]
    [detail] = accept_commands(json.dumps(batch).encode(), None, no_queue).body["error"]["details"]
    assert detail["target"] == "[1].commandId"


def test_a_posted_command_id_is_said_beside_the_commands_other_problems():
    command = {"action": "delete", "resource": "job", "id": "x", "commandId": "bad"}
    details = accept_commands(json.dumps([command]).encode(), None, no_queue).body["error"]["details"]
    assert [d["target"] for d in details] == ["[0].commandId", "[0].id"]


def test_duplicate_idempotency_keys_in_a_batch_name_the_commands_that_share_one():
    batch = [
        {"action": "delete", "resource": "run", "id": "a", "idempotencyKey": "k"},
        {"action": "delete", "resource": "run", "id": "b", "idempotencyKey": "other"},
        {"action": "delete", "resource": "run", "id": "c", "idempotencyKey": "k"},
    ]
    [detail] = accept_commands(json.dumps(batch).encode(), None, no_queue).body["error"]["details"]
    assert detail["target"] == "[2].idempotencyKey"
    assert detail["message"].startswith("commands 0 and 2 of the batch have the same idempotencyKey")


@pytest.mark.parametrize(
    ("body", "header", "target", "start"),
    [
        ({"action": "delete", "resource": "run", "id": "r"}, "k", "Idempotency-Key", "The Idempotency-Key header was"),
        ({"action": "delete", "resource": "run", "id": "r", "idempotencyKey": "k"}, None, "idempotencyKey", "The "),
        (
            [{"action": "delete", "resource": "run", "id": "r", "idempotencyKey": "k"}],
            None,
            "[0].idempotencyKey",
            "The",
        ),
    ],
)
def test_a_reused_idempotency_key_is_named_where_it_was_given(monkeypatch, body, header, target, start):
    def reused(*_args, **_kwargs):
        raise IdempotencyKeyReused(0, "20261123-kexisting")

    monkeypatch.setattr("shared.http_api._accept", reused)
    reply = accept_commands(json.dumps(body).encode(), None, lambda: None, idempotency_key=header)
    assert reply.status == 409
    assert reply.body["error"]["details"][0]["target"] == target
    assert reply.body["error"]["message"].startswith(start)

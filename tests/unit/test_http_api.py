import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from otel_capture import Captured
from samples import IMODEL

from shared.http_api import MAX_REQUEST_BYTES, accept_commands, command_status, health, receive_webhook
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
    assert reply.body["error"]["details"][0]["target"] == "[0].iModelId"


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
    assert "25.0 h old" in reply.body["error"]["message"]


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

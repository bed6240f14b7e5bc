"""Bad input, property-based: the command validator, ``POST /api/commands`` and the webhook receiver.

GIVEN arbitrary JSON, mutated commands, raw bytes, odd headers and signatures, WHEN each reaches the validator, the
``commands`` function or the webhook receiver, THEN nothing raises, every rejection carries a code and a target that
names a field (None only for a whole-body problem), and nothing is enqueued (no API call can follow) for invalid input.

CI: 2,000 examples for each of the three, derandomized so CI is repeatable. ``SOAK=1``: 20,000 random ones.

The tests at the end pin gaps this suite found and that were fixed: a list or object as ``body.authenticationType``
or ``body.type``, JSON nested deeper than Python's recursion limit, a Content-Length of non-ASCII digits (``²``).
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from otel_capture import Captured
from reliability_kit import SOAK, RecordingQueue

from functions.commands import commands as commands_function
from shared import runtime
from shared.commands import (
    ACTIONS,
    MAX_BATCH,
    RESOURCES,
    Command,
    InvalidCommand,
    decode_json,
    parse_batch,
    validate,
)
from shared.http_api import MAX_REQUEST_BYTES, accept_commands, receive_webhook
from shared.outcomes import Outcome
from shared.rules import load_rules
from shared.signature import sign
from shared.worker import Worker


def examples(ci: int) -> settings:
    """``ci`` examples, derandomized so CI is repeatable; ten times as many random ones under ``SOAK=1``."""
    return settings(
        max_examples=ci * 10 if SOAK else ci,
        deadline=None,
        derandomize=not SOAK,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


DETAIL_CODES = {"InvalidValue", "MissingRequiredProperty", "UnknownProperty"}
TOP_LEVEL = {"action", "resource", "id", "iModelId", "body", "correlationId", "traceparent", "attempt"}
KINDS = {
    "create connection",
    "delete connection",
    "create job",
    "submit job",
    "cancel job",
    "delete job",
    "create run",
    "delete run",
}
SECRET = "webhook-secret-for-property-tests"
GUID = "a0471655-6b18-419e-ab01-ebf4fbff9dff"

# -------------------------------------------------------------------------------------------------- strategies

# Kept cheap to draw: 2,000 examples of each property must take seconds, not minutes.
guids = st.uuids().map(str)
safe_ids = st.text(alphabet=string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=24)
correlation_ids = st.text(alphabet="".join(map(chr, range(0x21, 0x7F))), min_size=1, max_size=24)
keys = st.sampled_from(sorted(TOP_LEVEL)) | st.text(max_size=10)
SPECIAL = [*ACTIONS, *RESOURCES, "User", "Service", "Full", "", " ", "\u0000", "\ud800", "0" * 43, GUID, GUID.upper()]
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.sampled_from(SPECIAL)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10,
)


@st.composite
def valid_commands(draw: st.DrawFn) -> dict[str, Any]:
    """A command message that passes validation, of any kind, with or without the optional fields."""
    kind = draw(st.sampled_from([*sorted(KINDS), "delete connection by iModel"]))
    action, resource = kind.split()[:2]
    message: dict[str, Any] = {"action": action, "resource": resource}
    if kind == "create connection":
        message["body"] = {
            "iModelId": draw(guids),
            "displayName": draw(st.text(min_size=1, max_size=255).filter(str.strip)),
        }
        if draw(st.booleans()):
            message["body"]["authenticationType"] = draw(st.sampled_from(["User", "Service"]))
    elif kind == "create job":
        message["body"] = {
            "type": draw(st.sampled_from(["Full", "Calibration", "Reconstruction"])),
            "name": draw(st.text(min_size=1, max_size=20).filter(str.strip)),
            "workspaceId": draw(guids),
            "inputs": draw(
                st.lists(
                    st.fixed_dictionaries({"id": guids, "description": st.text(max_size=10)}), min_size=1, max_size=3
                )
            ),
            "settings": draw(st.dictionaries(st.text(max_size=5), scalars, max_size=3)),
        }
    elif kind == "create run":
        message["body"] = {"testId": draw(safe_ids), "iModelId": draw(guids), "namedVersionId": draw(safe_ids)}
        if draw(st.booleans()):
            message["body"]["inPlace"] = draw(st.booleans())
    elif kind == "delete connection by iModel":
        message["iModelId"] = draw(guids)
    elif resource == "connection":
        message["id"] = draw(
            guids | st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=43, max_size=43)
        )
    elif resource == "job":
        message["id"] = draw(guids)
    else:
        message["id"] = draw(safe_ids)
    if draw(st.booleans()):
        message["correlationId"] = draw(correlation_ids)
    if draw(st.booleans()):
        message["attempt"] = draw(st.integers(min_value=1, max_value=1000))
    return message


@st.composite
def mutated_commands(draw: st.DrawFn) -> Any:
    """A valid command with a few fields removed, replaced by anything, or added."""
    message = draw(valid_commands())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        target = message.get("body") if isinstance(message.get("body"), dict) and draw(st.booleans()) else message
        choice = draw(st.sampled_from(["drop", "replace", "add"]))
        if choice == "drop" and target:
            target.pop(draw(st.sampled_from(sorted(target))))
        elif choice == "replace" and target:
            target[draw(st.sampled_from(sorted(target)))] = draw(json_values)
        else:
            known = ["iModelId", "displayName", "authenticationType", "type", "name", "inputs", "testId", "inPlace"]
            target[draw(keys | st.sampled_from(known))] = draw(json_values)
    return message


commands_or_anything = mutated_commands() | valid_commands() | json_values


# ---------------------------------------------------------------------------------------------------- checks


def check_rejection(details: list[dict[str, Any]], data: Any) -> None:
    """Every problem has a code, a message and a target naming a field of the command (or of the batch)."""
    assert details, data
    for detail in details:
        code, message, target = detail["code"], detail["message"], detail["target"]
        assert code in DETAIL_CODES | {"InvalidRequestBody"}, detail
        assert isinstance(message, str), detail
        assert message.strip(), detail
        if target is None:
            # Only for a whole-body problem (not JSON, not an object) and, a gap (see the report), an unknown
            # property whose name is the empty string.
            whole_body = code == "InvalidRequestBody" or not isinstance(data, dict)
            empty_name = code == "UnknownProperty" and isinstance(data, dict) and "" in data
            assert whole_body or empty_name, (detail, data)
            continue
        assert isinstance(target, str), detail
        item, field = data, target
        if isinstance(data, list) and target.startswith("["):
            index, _, field = target[1:].partition("]")
            assert 0 <= int(index) < len(data), (detail, data)
            item, field = data[int(index)], field.removeprefix(".")
        if not field:
            # A batch entry that is not an object, or the batch as a whole (target "": see the report).
            assert isinstance(data, list), (detail, data)
            continue
        names = set(item) if isinstance(item, dict) else set()
        assert field in names or field.split(".", 1)[0] in TOP_LEVEL | names, (detail, data)


def parsed(parse: Callable[[Any], Command], data: Any) -> Command | InvalidCommand:
    """What ``parse`` makes of ``data``: a command, or the `InvalidCommand` it raised (anything else propagates)."""
    try:
        return parse(data)
    except InvalidCommand as error:
        return error


def check_command(command: Command) -> None:
    """A command that passed validation is of a known kind and survives the trip through the queue unchanged."""
    assert command.kind in KINDS
    assert validate(decode_json(json.dumps(command.to_message()))) == command


# ---------------------------------------------------------------------------------------------------- validator


def test_the_validator_accepts_or_rejects_anything_with_a_code_and_target_for_each_problem() -> None:
    @examples(2_000)
    @given(data=commands_or_anything)
    def check(data: Any) -> None:
        # GIVEN any JSON value, often a command with fields dropped, replaced or added; WHEN it is validated
        result = parsed(validate, data)
        # THEN it is a command that survives the queue, or a rejection whose every problem names its field
        event(type(result).__name__)
        if isinstance(result, InvalidCommand):
            assert result.code == "InvalidCommand"
            check_rejection([d.to_dict() for d in result.details], data)
        else:
            check_command(result)

    check()


def test_every_valid_command_is_accepted_and_survives_the_queue() -> None:
    @examples(500)
    @given(data=valid_commands())
    def check(data: dict[str, Any]) -> None:
        # GIVEN a valid command of any kind, WHEN it is validated, THEN it is accepted and enqueued as it came
        command = validate(data)
        check_command(command)
        assert command.to_message() == {k: v for k, v in data.items() if not (k == "attempt" and v == 1)}

    check()


def test_a_queue_message_of_any_bytes_is_parsed_or_rejected_never_raises() -> None:
    @examples(500)
    @given(raw=st.binary(max_size=200) | commands_or_anything.map(lambda d: json.dumps(d).encode()))
    def check(raw: bytes) -> None:
        # GIVEN any bytes as a queue message body, WHEN the worker parses them, THEN a command or a rejection
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        result = parsed(lambda r: validate(decode_json(r)), raw)
        if isinstance(result, InvalidCommand):
            check_rejection([d.to_dict() for d in result.details], data)
            if result.code == "InvalidRequestBody":
                assert [d.target for d in result.details] == [None]
        else:
            check_command(result)

    check()


# ---------------------------------------------------------------------------------------------- POST /api/commands


@st.composite
def request_bodies(draw: st.DrawFn) -> tuple[bytes, Any]:
    """A request body, and the JSON it holds (None when it is not JSON)."""
    shape = draw(st.sampled_from(["one", "batch", "too many", "anything", "bytes"]))
    if shape == "bytes":
        raw = draw(st.binary(max_size=300))
        try:
            return raw, json.loads(raw)
        except ValueError:
            return raw, None
    if shape == "one":
        data = draw(commands_or_anything)
    elif shape == "batch":
        data = draw(st.lists(mutated_commands() | valid_commands(), min_size=0, max_size=4))
    elif shape == "too many":
        data = [draw(valid_commands())] * draw(st.integers(min_value=MAX_BATCH + 1, max_value=MAX_BATCH + 20))
    else:
        data = draw(json_values)
    return json.dumps(data).encode(), data


declared_lengths = (
    st.none()
    | st.just("")
    | st.integers(min_value=0, max_value=2 * MAX_REQUEST_BYTES).map(str)
    | st.text(alphabet=string.printable, max_size=12)
)


@pytest.fixture
def recording_queue(monkeypatch: pytest.MonkeyPatch) -> list[RecordingQueue]:
    """The app's ``runtime.command_queue`` replaced by the real `CommandQueue` over recording senders."""
    current: list[RecordingQueue] = [RecordingQueue()]

    def command_queue() -> RecordingQueue:
        return current[0]

    command_queue.reset = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(runtime, "command_queue", command_queue)
    return current


def test_post_commands_answers_202_400_or_413_and_enqueues_all_or_nothing(
    recording_queue: list[RecordingQueue],
) -> None:
    function = commands_function.build().get_user_function()

    @examples(2_000)
    @given(body=request_bodies(), declared=declared_lengths)
    def check(body: tuple[bytes, Any], declared: str | None) -> None:
        # GIVEN any body and Content-Length; WHEN it is POSTed to the commands function
        raw, data = body
        queue = recording_queue[0] = RecordingQueue()
        headers = {} if declared is None else {"Content-Length": declared}
        response = function(func.HttpRequest("POST", "/api/commands", headers=headers, body=raw))
        reply = json.loads(response.get_body())
        event(f"status {response.status_code}")
        assert response.mimetype == "application/json"
        # THEN 413 when declared too large, else 400 naming each problem with nothing enqueued, else 202 with
        # exactly the commands enqueued
        too_large = declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES
        if too_large:
            assert (response.status_code, reply["error"]["code"]) == (413, "RequestTooLarge")
            assert queue.empty
            return
        try:
            expected = parse_batch(data) if data is not None else None
        except InvalidCommand:
            expected = None
        if expected is None:
            assert response.status_code == 400, reply
            assert queue.empty
            error = reply["error"]
            assert error["code"] in ("InvalidCommand", "InvalidRequestBody")
            assert error["message"]
            check_rejection(error["details"], data)
        else:
            assert (response.status_code, reply) == (202, {"accepted": len(expected)})
            sent = [validate(m) for m in queue.messages]
            assert all(c.first_enqueued is not None for c in sent)
            assert [replace(c, first_enqueued=None) for c in sent] == expected
            assert queue.poison.sent == []

    check()


def test_post_commands_never_enqueues_a_batch_with_one_invalid_command() -> None:
    @examples(300)
    @given(good=st.lists(valid_commands(), min_size=0, max_size=5), bad=mutated_commands(), at=st.integers(0, 5))
    def check(good: list[dict[str, Any]], bad: Any, at: int) -> None:
        # GIVEN a batch of valid commands with one invalid one at any place
        try:
            validate(bad)
        except InvalidCommand:
            pass
        else:
            assume(False)
        batch = [*good[:at], bad, *good[at:]]
        queue = RecordingQueue()
        # WHEN it is POSTed, THEN nothing is enqueued and every problem points at the invalid one
        reply = accept_commands(json.dumps(batch).encode(), None, lambda: queue)
        assert reply.status == 400
        assert queue.empty
        index = min(at, len(good))
        assert all(d["target"] and d["target"].startswith(f"[{index}]") for d in reply.body["error"]["details"])

    check()


# -------------------------------------------------------------------------------------------------------- webhooks

RULES = load_rules(None)
WEBHOOK_ENV = {"ITWIN_EXPORT_CONNECTION_NAME": "nightly", "ITWIN_CLASH_TEST_IDS": "clash-1, clash-2"}
EVENT_TYPES = ["iModels.iModelDeleted.v1", "iModels.iModelCreated.v1", "iModels.namedVersionCreated.v1"]


def sometimes(draw: st.DrawFn, usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """Usually (four times in five) a value from ``usual``, else one from ``odd``."""
    return draw(odd if draw(st.integers(min_value=0, max_value=4)) == 0 else usual)


@st.composite
def webhook_bodies(draw: st.DrawFn) -> bytes:
    """Events of the three types the default rules know, with good, missing or wrong fields; JSON; any bytes."""
    shape = draw(st.sampled_from(["event", "event", "event", "anything", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    if shape == "anything":
        return json.dumps(draw(json_values)).encode()
    event: dict[str, Any] = {"eventType": sometimes(draw, st.sampled_from(EVENT_TYPES), scalars)}
    content = {"imodelId": sometimes(draw, guids, scalars), "versionId": sometimes(draw, safe_ids, scalars)}
    for name in list(content):
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            del content[name]
    optional = {"content": st.just(content) | json_values, "messageId": correlation_ids | scalars, "iTwinId": guids}
    for name, strategy in optional.items():
        if draw(st.integers(min_value=0, max_value=4)):
            event[name] = draw(strategy)
    return json.dumps(event).encode()


@st.composite
def signed_deliveries(draw: st.DrawFn) -> tuple[bytes, str | None, str | None]:
    """A body, a Signature header (usually the right one) and the configured secret (usually set)."""
    body = draw(webhook_bodies())
    secret = sometimes(draw, st.just(SECRET), st.sampled_from([None, ""]))
    good = sign(body, SECRET)
    wrong = st.sampled_from(
        [
            good.upper(),
            good + " ",
            " " + good,
            None,
            "",
            "sha256=",
            good[:-1],
            good + "0",
            "sha1=" + good[7:],
            sign(body, "another-secret"),
            sign(body, ""),
            sign(body + b" ", SECRET),
        ]
    )
    signature = sometimes(draw, st.just(good), wrong | st.text(max_size=80))
    return body, signature, secret


def test_the_webhook_receiver_refuses_unsigned_input_and_rejects_bad_events_without_enqueueing() -> None:
    @examples(2_000)
    @given(delivery=signed_deliveries())
    def check(delivery: tuple[bytes, str | None, str | None]) -> None:
        # GIVEN any body, Signature header and configured secret; WHEN the receiver gets them
        body, signature, secret = delivery
        queue = RecordingQueue()
        reply = receive_webhook(body, signature, secret, lambda: RULES, WEBHOOK_ENV, lambda: queue)
        event(f"status {reply.status}, {len(queue.messages)} enqueued")
        # THEN 401 unless signed with the secret; else 400 naming the problems, or 202 with the rules' commands;
        # and never anything enqueued unless it was accepted
        authentic = bool(secret) and bool(signature) and signature.startswith("sha256=")
        authentic = authentic and signature.strip().lower() == sign(body, secret or "")
        assert SECRET not in json.dumps(reply.body)
        if not authentic:
            assert (reply.status, reply.body["error"]["code"]) == (401, "InvalidSignature")
            assert queue.empty
            return
        assert reply.status in (202, 400), reply
        if reply.status == 400:
            assert queue.empty
            error = reply.body["error"]
            assert error["code"] in ("InvalidRequestBody", "InvalidEvent", "InvalidCommand")
            for detail in error["details"]:
                assert detail["code"], detail
                assert detail["message"], detail
                # None only when the body is not JSON or not an object; otherwise it names the field.
                if detail["target"] is None:
                    assert error["code"] == "InvalidRequestBody" or detail["message"] == "not a JSON object."
        else:
            assert reply.body["accepted"] == len(queue.messages)
            assert all(validate(m) for m in queue.messages)
            assert queue.poison.sent == []

    check()


# -------------------------------------------------------------------------------------------------- known gaps


@pytest.mark.parametrize(
    "body",
    [
        {
            "action": "create",
            "resource": "connection",
            "body": {"iModelId": GUID, "displayName": "x", "authenticationType": []},
        },
        {"action": "create", "resource": "job", "body": {"type": {}}},
    ],
    ids=["authenticationType", "type"],
)
def test_a_list_or_object_where_a_name_is_expected_is_a_400_not_a_crash(body: dict[str, Any]) -> None:
    # GIVEN a command whose authenticationType or type is a list or object, WHEN posted, THEN a 400 naming it
    queue = RecordingQueue()
    reply = accept_commands(json.dumps(body).encode(), None, lambda: queue)
    assert reply.status == 400
    assert queue.empty


def test_deeply_nested_json_posted_to_commands_is_a_400_not_a_crash() -> None:
    # GIVEN 10 KB of nested brackets, WHEN posted, THEN a 400 InvalidRequestBody
    queue = RecordingQueue()
    reply = accept_commands(b"[" * 5000 + b"]" * 5000, None, lambda: queue)
    assert reply.status == 400
    assert queue.empty


def test_a_deeply_nested_queue_message_is_dead_lettered_not_raised() -> None:
    # GIVEN the same as a queue message, WHEN the worker handles it, THEN it is dead-lettered as invalid (it must not
    # raise: the host would retry it maxDequeueCount times and poison it without an envelope or an outcome metric)
    captured = Captured()
    queue = RecordingQueue()
    worker = Worker(None, queue, captured.telemetry, max_attempts=8)  # type: ignore[arg-type] - no API call
    assert worker.handle(b"[" * 5000 + b"]" * 5000) is Outcome.DEAD_LETTERED
    assert [e["error"]["code"] for e in queue.envelopes] == ["InvalidRequestBody"]


def test_a_content_length_of_non_ascii_digits_is_ignored_not_a_crash() -> None:
    # GIVEN a Content-Length of "²" (str.isdigit() says yes, int() says no), WHEN posted, THEN it is ignored
    queue = RecordingQueue()
    reply = accept_commands(b'{"action": "delete", "resource": "run", "id": "r1"}', "\u00b2", lambda: queue)
    assert reply.status == 202

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.poison import MAX_ENVELOPE_BYTES, TRUNCATED, encode_envelope, encoded_size

ERROR = {"status": 400, "code": "InvalidCommand", "message": "bad", "target": None, "details": []}


def envelope(message, error=ERROR):
    return encode_envelope(message, error, attempts=1, failed_at="2026-11-23T00:00:00Z")


def test_a_small_envelope_keeps_the_message_whole():
    text = envelope({"action": "delete", "resource": "run", "id": "r"})
    assert json.loads(text) == {
        "message": {"action": "delete", "resource": "run", "id": "r"},
        "error": ERROR,
        "attempts": 1,
        "failedAt": "2026-11-23T00:00:00Z",
    }


def test_a_message_of_quotes_that_doubles_when_escaped_is_cut_to_fit():
    message = ['"' * 100] * 580
    text = envelope(message)
    assert encoded_size(text) <= MAX_ENVELOPE_BYTES
    kept = json.loads(text)["message"]
    assert kept.endswith(TRUNCATED)
    assert json.dumps(message, separators=(",", ":")).startswith(kept.removesuffix(TRUNCATED))


def test_characters_that_xml_escapes_count_at_their_escaped_size():
    text = envelope("<&>" * 30_000)
    assert encoded_size(text) <= MAX_ENVELOPE_BYTES
    assert encoded_size(text) > MAX_ENVELOPE_BYTES - 10


def test_an_error_too_large_to_fit_keeps_its_code_and_loses_its_details():
    error = {**ERROR, "message": "m" * 70_000, "details": [{"code": "D", "message": "x" * 1000}] * 100}
    decoded = json.loads(envelope("short", error))
    assert decoded["error"]["code"] == "InvalidCommand"
    assert decoded["error"]["details"] == []
    assert decoded["message"] == "short" + TRUNCATED


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=0, max_size=90_000), st.text(max_size=3000))
def test_every_envelope_fits_in_a_queue_message(text, error_message):
    encoded = envelope([text, text], {**ERROR, "message": error_message})
    assert encoded_size(encoded) <= MAX_ENVELOPE_BYTES
    json.loads(encoded)

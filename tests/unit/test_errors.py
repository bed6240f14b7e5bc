import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OtherClientError,
    RateLimited,
    ServerError,
    TokenError,
    TransportError,
    Unauthorized,
    Unprocessable,
    api_error,
    is_transient,
)

SEED_422 = {
    "error": {
        "code": "InvalidExportConnectionRequest",
        "message": "Cannot perform operation.",
        "details": [{"code": "MissingRequiredProperty", "message": "imodelId was not provided.", "target": "imodelId"}],
    }
}


def error_for(status, body=b"", headers=None):
    return api_error(status, "Reason", headers or {"Content-Type": "application/json"}, body, operation="op.x")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (422, Unprocessable),
        (429, RateLimited),
        (418, OtherClientError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_each_status_maps_to_the_class_named_for_its_meaning(status, cls):
    assert type(error_for(status)) is cls


def test_an_itwin_error_body_gives_code_message_target_and_details():
    error = error_for(422, json.dumps(SEED_422).encode(), {"Content-Type": "application/json", "X-Request-Id": "r1"})
    assert error.status == 422
    assert error.code == "InvalidExportConnectionRequest"
    assert error.message == "Cannot perform operation."
    assert error.details[0].target == "imodelId"
    assert error.details[0].code == "MissingRequiredProperty"
    assert error.request_id == "r1"
    assert error.to_dict()["details"] == [
        {"code": "MissingRequiredProperty", "message": "imodelId was not provided.", "target": "imodelId"}
    ]


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"", "", "the body was empty"),
        (b"<html><body>502 Bad Gateway</body></html>", "text/html", "text/html"),
        (b'{"error": {"code": "Trunc', "application/json", "begins"),
        (b'{"error": "a string"}', "application/json", "not an iTwin error object"),
        (b"[1, 2]", "application/json", "not an iTwin error object"),
    ],
)
def test_a_body_not_in_the_itwin_shape_still_gives_a_useful_message(body, content_type, expected):
    error = error_for(502, body, {"Content-Type": content_type})
    assert error.code is None
    assert "HTTP 502" in error.message
    assert expected in error.message


def test_a_403_says_what_usually_causes_it():
    body = json.dumps({"error": {"code": "InsufficientPermissions", "message": "No."}}).encode()
    assert "not a member of the iTwin" in str(error_for(403, body))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (RateLimited(429, "slow down"), True),
        (ServerError(503, "down"), True),
        (TransportError("reset"), True),
        (TokenError("unreachable", transient=True), True),
        (TokenError("invalid_client", transient=False), False),
        (Conflict(409, "busy", code="ConnectionAlreadyInUse"), True),
        (Conflict(409, "other", code="SomethingElse"), False),
        (NotFound(404, "gone"), False),
        (Unprocessable(422, "bad"), False),
        (Forbidden(403, "no"), False),
        (Unauthorized(401, "no"), False),
        (ValueError("not ours"), False),
    ],
)
def test_transient_versus_permanent_is_decided_by_one_table(error, transient):
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    "details",
    [5, "text", {"code": "X"}, [5, None, "x"], [{"code": 5, "message": ["m"], "target": {}}], True],
)
def test_an_error_body_with_details_of_any_shape_becomes_an_itwin_error(details):
    body = json.dumps({"error": {"code": "Odd", "message": "odd", "details": details}}).encode()
    error = error_for(422, body)
    assert isinstance(error, Unprocessable)
    assert (error.code, error.message) == ("Odd", "odd")
    assert all(isinstance(d.code, str | None) for d in error.details)


def test_an_error_body_nested_too_deeply_to_parse_still_becomes_an_itwin_error():
    error = error_for(500, b"[" * 100_000 + b"]" * 100_000)
    assert isinstance(error, ServerError)
    assert "not an iTwin error object" in error.message


def test_an_error_body_too_large_to_trust_is_cut_to_a_bounded_size():
    body = {"error": {"code": "C" * 5000, "message": "m" * 100_000, "details": [{"code": "D"}] * 10_000}}
    error = error_for(422, json.dumps(body).encode())
    assert len(json.dumps(error.to_dict())) < 100_000


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
def test_every_shape_of_error_body_becomes_an_itwin_error(error_field):
    body = json.dumps({"error": error_field}).encode()
    error = error_for(400, body)
    assert isinstance(error, BadRequest)
    assert isinstance(error.message, str)
    json.dumps(error.to_dict())

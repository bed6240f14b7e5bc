import pytest

from shared.commands import Command
from shared.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    Throttled,
    TokenError,
    TransportError,
    Unauthorized,
    Unprocessable,
)
from shared.outcomes import Outcome, classify_failure

DELETE = Command("delete", "connection", id="c")
CREATE_CONNECTION = Command("create", "connection", body={})
CREATE_RUN = Command("create", "run", body={})
LAST = Command("delete", "connection", id="c", attempt=8)

RESCHEDULED, DEAD, DONE = Outcome.RESCHEDULED, Outcome.DEAD_LETTERED, Outcome.ALREADY_DONE


@pytest.mark.parametrize(
    ("error", "command", "outcome"),
    [
        (NotFound(404, "gone"), DELETE, DONE),
        (NotFound(404, "no iModel"), CREATE_CONNECTION, DEAD),
        (RateLimited(429, "slow"), DELETE, RESCHEDULED),
        (RateLimited(429, "slow"), CREATE_RUN, RESCHEDULED),
        (Conflict(409, "busy", code="ConnectionAlreadyInUse"), DELETE, RESCHEDULED),
        (Conflict(409, "other"), DELETE, DEAD),
        (ServerError(500, "boom"), DELETE, RESCHEDULED),
        (ServerError(503, "down"), CREATE_RUN, RESCHEDULED),
        (ServerError(500, "boom", operation="runs.create"), CREATE_RUN, DEAD),
        (TransportError("timeout", operation="runs.list"), CREATE_RUN, RESCHEDULED),  # nothing sent yet
        (TransportError("timeout", operation="runs.create"), CREATE_RUN, DEAD),
        (TransportError("timeout"), CREATE_CONNECTION, RESCHEDULED),
        (TokenError("down", transient=True), CREATE_RUN, RESCHEDULED),
        (TokenError("invalid_client", transient=False), DELETE, DEAD),
        (BadRequest(400, "bad"), DELETE, DEAD),
        (Unauthorized(401, "no"), DELETE, DEAD),
        (Forbidden(403, "no"), DELETE, DEAD),
        (Unprocessable(422, "no"), DELETE, DEAD),
        (RateLimited(429, "slow"), LAST, RESCHEDULED),
        (Throttled("held", retry_after=5.0), LAST, RESCHEDULED),
        (Conflict(409, "busy", code="ConnectionAlreadyInUse"), LAST, RESCHEDULED),
        (ServerError(503, "down"), LAST, DEAD),
        (TransportError("reset"), LAST, DEAD),
    ],
)
def test_each_failure_has_one_outcome(error, command, outcome):
    assert classify_failure(error, command, max_attempts=8) is outcome


@pytest.mark.parametrize(
    "error",
    [RateLimited(429, "slow"), Throttled("held"), Conflict(409, "busy", code="ConnectionAlreadyInUse")],
)
def test_a_wait_is_rescheduled_until_the_command_is_too_old_whatever_its_attempts(error):
    assert classify_failure(error, LAST, max_attempts=8, age=86_399, max_age=86_400) is RESCHEDULED
    assert classify_failure(error, LAST, max_attempts=8, age=86_400, max_age=86_400) is DEAD


def test_age_does_not_bound_failures_that_count_as_attempts():
    assert classify_failure(ServerError(500, "boom"), DELETE, max_attempts=8, age=10**9, max_age=60) is RESCHEDULED

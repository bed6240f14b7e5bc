"""What happens to a message: the outcomes, and the one pure function that picks one for a failure."""

from __future__ import annotations

from enum import StrEnum

from shared.commands import Command
from shared.errors import (
    Conflict,
    ITwinError,
    NotFound,
    RateLimited,
    ServerError,
    Throttled,
    TransportError,
    is_transient,
)


class Outcome(StrEnum):
    """The one final outcome of each delivery of a queue message (the ``outcome`` metric attribute)."""

    SUCCEEDED = "succeeded"
    ALREADY_DONE = "already_done"
    RESCHEDULED = "rescheduled"
    DEAD_LETTERED = "dead_lettered"
    FANNED_OUT = "fanned_out"
    IMODEL_UNAVAILABLE = "imodel_unavailable"


# The outcomes after which nothing more happens to a command (a fan-out's children have their own).
FINAL_OUTCOMES = frozenset({Outcome.SUCCEEDED, Outcome.ALREADY_DONE, Outcome.DEAD_LETTERED, Outcome.IMODEL_UNAVAILABLE})


def create_may_have_happened(error: ITwinError, command: Command) -> bool:
    """A create whose request may have been carried out, or may still be: the create call itself (its operation is
    ``<resource>s.create``; a look-up before it sends nothing) got no answer, or a 5xx other than 503."""
    if command.action != "create" or not (error.operation or "").endswith(".create"):
        return False
    refused = isinstance(error, ServerError) and error.status == 503
    return isinstance(error, TransportError) or (isinstance(error, ServerError) and not refused)


def create_outcome_unknown(error: ITwinError, command: Command) -> bool:
    """A job or run create whose request may have been carried out: no answer, or a 5xx other than 503.

    Connection creates are safe to repeat (the worker lists before creating). Jobs and runs are not repeated
    blindly: a run is looked up on its next delivery, a ContextCapture v1 job is dead-lettered.
    """
    return command.resource != "connection" and create_may_have_happened(error, command)


def is_wait(error: ITwinError) -> bool:
    """The call was refused only for now and nothing happened: a 429, a call held back by this process's pacing,
    or a connection busy with an export run. Waiting is not failing: it uses up no attempt."""
    return isinstance(error, RateLimited | Throttled) or (isinstance(error, Conflict) and error.transient)


def classify_failure(
    error: ITwinError, command: Command, max_attempts: int, *, age: float = 0.0, max_age: float = float("inf")
) -> Outcome:
    """The outcome for a command whose API call raised ``error`` on delivery ``command.attempt``.

    A wait is rescheduled until the command is ``max_age`` seconds old (``age``); any other transient failure
    until ``max_attempts`` attempts.
    """
    if isinstance(error, NotFound) and command.action == "delete":
        return Outcome.ALREADY_DONE
    if create_outcome_unknown(error, command):
        return Outcome.DEAD_LETTERED
    if is_wait(error):
        return Outcome.RESCHEDULED if age < max_age else Outcome.DEAD_LETTERED
    if is_transient(error):
        return Outcome.RESCHEDULED if command.attempt < max_attempts else Outcome.DEAD_LETTERED
    return Outcome.DEAD_LETTERED


def describe_unknown_create(command: Command) -> str:
    """Why a create was dead-lettered instead of repeated, and what to do."""
    return (
        f"the {command.resource} create got no clear answer, so it may have been carried out, and ContextCapture v1 "
        f"has no job list to look it up in; it was not repeated, to avoid a second {command.resource}. Check whether "
        "it exists, then resend the command if it does not (python -m ops poison replay checks what it can)."
    )

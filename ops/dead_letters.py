"""Dead letters as the operator sees them: each message on the poison queue parsed once, into a `DeadLetter`.

Three things end up on ``itwin-commands-poison``:

- the worker's envelopes, ``{"message", "error": {status, code, message, target, details}, "attempts",
  "failedAt"}``, where ``message`` is the original command, or its text when it was not JSON or was cut short;
- original messages the Functions host moved there itself after ``maxDequeueCount`` failed invocations;
- anything else someone put there, shown as it is and never replayed.

A replay re-sends the command with its attempt count reset and its ``correlationId`` ending in a replay token,
``replay-<poison message id>``. Before sending, the replay writes the token into the envelope itself, so a run that
dies between the send and the delete leaves an envelope that says so; the next run looks for the token on the
command queue and in the poison queue before deciding (see `ops.replay`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from ops.errors import UsageError
from shared.commands import Command, InvalidCommand, decode_json, validate

CREATE_OUTCOME_UNKNOWN = "CreateOutcomeUnknown"
MOVED_BY_HOST = "MovedByHost"
MAX_CORRELATION_ID = 128
_TOKEN_AT_END = re.compile(r"(?:^|/)(replay-[A-Za-z0-9-]{1,64})$")
_AGE = re.compile(r"^(\d+)([smhdw])$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Kind(StrEnum):
    """Where a poison message came from."""

    ENVELOPE = "envelope"
    HOST_MOVED = "host-moved"
    MALFORMED = "malformed"


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def replay_token(message_id: str) -> str:
    """The token a replay of poison message ``message_id`` carries in its ``correlationId``."""
    return f"replay-{message_id}"


def token_in(message: Any) -> str | None:
    """The replay token a command carries at the end of its ``correlationId``, if any."""
    correlation = message.get("correlationId") if isinstance(message, Mapping) else None
    match = _TOKEN_AT_END.search(correlation) if isinstance(correlation, str) else None
    return match.group(1) if match else None


def with_token(correlation_id: str | None, token: str) -> str:
    """``correlation_id`` (without an earlier replay token) followed by ``/token``, within 128 characters."""
    base = _TOKEN_AT_END.sub("", correlation_id or "")
    suffix = f"/{token}" if base else token
    return base[: MAX_CORRELATION_ID - len(suffix)] + suffix


def _why_not_a_command(message: Any) -> tuple[Command | None, str | None]:
    """The validated command in ``message``, or why there is none."""
    if isinstance(message, str):
        if "(truncated)" in message[-40:]:
            return None, (
                "the original message was too long for the poison queue and was cut when it was dead-lettered; "
                "it cannot be replayed: send it again from where it came from"
            )
        try:
            message = decode_json(message)
        except InvalidCommand:
            return None, f"the original message is not JSON (it begins {message[:40]!r}); it cannot be replayed"
    try:
        return validate(message), None
    except InvalidCommand as invalid:
        problems = "; ".join(f"{d.target or 'message'}: {d.message}" for d in invalid.details[:3])
        more = f" (and {len(invalid.details) - 3} more)" if len(invalid.details) > 3 else ""
        return None, f"the original message is not a valid command ({problems}{more}); it cannot be replayed"


@dataclass(frozen=True)
class DeadLetter:
    """One message on the poison queue, parsed. ``problem`` says why it cannot be replayed (None: it can)."""

    id: str
    text: str = field(repr=False)
    kind: Kind
    message: Any = field(repr=False)
    error: Mapping[str, Any] = field(default_factory=dict, repr=False)
    attempts: int | None = None
    failed_at: datetime | None = None
    inserted_on: datetime | None = None
    expires_on: datetime | None = None
    replay_started: datetime | None = None
    command: Command | None = None
    problem: str | None = None

    @property
    def code(self) -> str:
        """The error code (``MovedByHost`` or ``Malformed`` when there is no envelope)."""
        if self.kind is Kind.HOST_MOVED:
            return MOVED_BY_HOST
        if self.kind is Kind.MALFORMED:
            return "Malformed"
        return str(self.error.get("code") or self.error.get("status") or "-")

    @property
    def command_kind(self) -> str:
        """``"<action> <resource>"`` of the command, or what can be read of it."""
        if self.command:
            return self.command.kind
        message = self.message if isinstance(self.message, Mapping) else {}
        action, resource = message.get("action"), message.get("resource")
        if isinstance(action, str) and isinstance(resource, str):
            return f"{action} {resource}"[:40]
        return "(not a command)"

    @property
    def reason(self) -> str:
        """What went wrong, in one line."""
        if self.kind is Kind.HOST_MOVED:
            return "moved here by the Functions host: its invocations failed maxDequeueCount times"
        if self.kind is Kind.MALFORMED:
            return "not a poison envelope: " + (self.problem or "")
        return " ".join(str(self.error.get("message") or "").split())

    @property
    def when(self) -> datetime | None:
        """When it failed (when it reached the poison queue, if the envelope does not say)."""
        return self.failed_at or self.inserted_on

    @property
    def token(self) -> str:
        return replay_token(self.id)

    @property
    def replay_interrupted(self) -> bool:
        """A replay of it was started and did not finish: its command may or may not have been sent."""
        return self.replay_started is not None

    def marked(self, started: datetime) -> str:
        """The envelope text recording that a replay with this letter's token starts now."""
        envelope: dict[str, Any]
        if self.kind is Kind.ENVELOPE:
            envelope = json.loads(self.text)
        else:
            envelope = {
                "message": self.message,
                "error": {"status": None, "code": MOVED_BY_HOST, "message": self.reason, "target": None, "details": []},
                "attempts": self.attempts,
                "failedAt": _iso(self.when) if self.when else None,
            }
        envelope["replay"] = {"token": self.token, "startedAt": _iso(started)}
        return json.dumps(envelope, separators=(",", ":"))

    def replay_message(self) -> dict[str, Any]:
        """The command to send again, as a new start: attempt and wait counts reset, no ``firstEnqueued`` (its age
        is counted again from its first reschedule), the replay token at the end of its ``correlationId``; its
        ``commandId``, if any, kept."""
        if self.command is None:
            raise ValueError(f"dead letter {self.id} has no command to replay: {self.problem}")
        correlation_id = with_token(self.command.correlation_id, self.token)
        command = replace(self.command, attempt=1, waits=0, first_enqueued=None, correlation_id=correlation_id)
        return command.to_message()

    def as_dict(self) -> dict[str, Any]:
        """The fields ``poison list --json`` prints."""
        return {
            "id": self.id,
            "failedAt": _iso(self.when) if self.when else None,
            "command": self.command_kind,
            "code": self.code,
            "status": self.error.get("status"),
            "message": self.reason,
            "attempts": self.attempts,
            "kind": self.kind.value,
            "replayable": self.problem is None,
            "problem": self.problem,
            "replayInterrupted": self.replay_interrupted,
            "expiresOn": _iso(self.expires_on) if self.expires_on else None,
        }


def parse_dead_letter(
    message_id: str,
    text: str,
    *,
    inserted_on: datetime | None = None,
    expires_on: datetime | None = None,
) -> DeadLetter:
    """Parse one poison message (never raises: whatever it holds becomes a `DeadLetter`)."""
    common = {"id": message_id, "text": text, "inserted_on": inserted_on, "expires_on": expires_on}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return DeadLetter(kind=Kind.MALFORMED, message=text, problem="it is not JSON; it cannot be replayed", **common)
    if isinstance(data, dict) and "message" in data and isinstance(data.get("error"), dict):
        attempts = data.get("attempts")
        replay = data.get("replay") if isinstance(data.get("replay"), dict) else {}
        command, problem = _why_not_a_command(data["message"])
        return DeadLetter(
            kind=Kind.ENVELOPE,
            message=data["message"],
            error=data["error"],
            attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else None,
            failed_at=_time(data.get("failedAt")),
            replay_started=_time(replay.get("startedAt")) if replay.get("token") == replay_token(message_id) else None,
            command=command,
            problem=problem,
            **common,
        )
    command, problem = _why_not_a_command(data)
    if command is not None:
        return DeadLetter(kind=Kind.HOST_MOVED, message=data, command=command, **common)
    return DeadLetter(
        kind=Kind.MALFORMED,
        message=data,
        problem="it is neither a poison envelope {message, error, attempts, failedAt} nor a command; "
        "it cannot be replayed",
        **common,
    )


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``3d`` or ``1w`` as a duration; raises `UsageError` otherwise."""
    match = _AGE.match(text.strip().lower())
    if not match:
        raise UsageError(f"{text!r} is not an age: use a number and a unit, such as 90s, 15m, 2h, 3d or 1w")
    return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command is about: ids (or unique prefixes), everything, and/or filters."""

    ids: tuple[str, ...] = ()
    everything: bool = False
    code: str | None = None
    command: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None

    @property
    def is_empty(self) -> bool:
        """True when nothing was said: commands that change the queue refuse to guess."""
        return not (self.ids or self.everything or self.code or self.command or self.older_than or self.newer_than)

    def passes(self, letter: DeadLetter, now: datetime) -> bool:
        """True when ``letter`` passes the filters (ids aside)."""
        if self.code and letter.code.lower() != self.code.lower():
            return False
        if self.command:
            wanted = self.command.lower().split()
            kind = letter.command_kind.lower().split()
            if wanted != kind and not (len(wanted) == 1 and wanted[0] in kind):
                return False
        when = letter.when
        if self.older_than is not None and (when is None or now - when < self.older_than):
            return False
        return not (self.newer_than is not None and (when is None or now - when > self.newer_than))

    def choose(self, letters: Iterable[DeadLetter], now: datetime) -> list[DeadLetter]:
        """The letters selected, in queue order; raises `UsageError` for an id that matches none or several."""
        letters = list(letters)
        chosen = [letter for letter in letters if self.passes(letter, now)]
        if not self.ids:
            return chosen
        wanted = set()
        for prefix in self.ids:
            matches = [letter.id for letter in letters if letter.id.lower().startswith(prefix.lower())]
            if not matches:
                raise UsageError(
                    f"no dead letter has the id {prefix!r}: it was replayed, purged or has expired, or another run "
                    "holds it now (see them with `python -m ops poison list`)"
                )
            if len(matches) > 1:
                raise UsageError(f"{prefix!r} matches {len(matches)} dead letters: give more of the id")
            wanted.add(matches[0])
        return [letter for letter in chosen if letter.id in wanted]

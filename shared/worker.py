"""The queue worker: turns one message into iTwin Platform calls and gives it exactly one recorded outcome."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.commands import Command, InvalidCommand, decode_json, validate
from shared.errors import ITwinError, NotFound, Unprocessable
from shared.outcomes import Outcome, classify_failure, create_outcome_unknown, describe_unknown_create, is_wait
from shared.poison import encode_envelope
from shared.queues import CommandQueue
from shared.resources import Connection, ITwinApi
from shared.retry import RedeliveryBackoff
from shared.settings import COMMAND_QUEUE
from shared.telemetry import Telemetry, current_traceparent

log = logging.getLogger(__name__)

# A submitted job moves on from "active" by itself; any of these means the submit happened.
SUBMITTED_STATES = {"active", "success", "failed"}


class Worker:
    """Executes commands. Transient failures are rescheduled on the queue; permanent ones are dead-lettered."""

    def __init__(
        self,
        api: ITwinApi,
        queue: CommandQueue,
        telemetry: Telemetry,
        *,
        max_attempts: int,
        max_age: float = 24 * 3600.0,
        backoff: RedeliveryBackoff | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.queue = queue
        self.telemetry = telemetry
        self.max_attempts = max_attempts
        self.max_age = max_age
        self.backoff = backoff or RedeliveryBackoff()
        self._now = now
        self._create_locks = tuple(threading.Lock() for _ in range(64))

    def handle(self, raw: bytes | str) -> Outcome:
        """Process one queue message body. Raises only when the queue itself fails (the host then retries)."""
        command: Command | None = None
        original: Any = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            original = decode_json(raw)
            command = validate(original)
        except InvalidCommand as invalid:
            problem = invalid
        kind = command.kind if command else "invalid"
        traceparent = command.traceparent if command else None
        with self.telemetry.tracer.start_as_current_span(
            f"process {kind}",
            context=extract({"traceparent": traceparent}) if traceparent else None,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "azure_storage_queue",
                "messaging.operation.type": "process",
                "messaging.destination.name": COMMAND_QUEUE,
                "itwin.command": kind,
                "itwin.attempt": command.attempt if command else 1,
                "itwin.waits": command.waits if command else 0,
                "itwin.correlation_id": (command.correlation_id if command else None) or "",
            },
        ) as span:
            if command is None:
                self._dead_letter(original, problem.to_dict(), attempts=1)
                result = Result(Outcome.DEAD_LETTERED, problem.message, problem.code)
            else:
                result = self._run(command)
            span.set_attribute("itwin.outcome", result.outcome.value)
            if result.outcome is Outcome.DEAD_LETTERED:
                span.set_status(Status(StatusCode.ERROR, result.detail))
            return self._record(kind, result, command.correlation_id if command else None)

    def _run(self, command: Command) -> Result:
        try:
            return self._execute(command)
        except ITwinError as error:
            now = datetime.fromtimestamp(self._now(), UTC)
            age = command.age(now)
            outcome = classify_failure(error, command, self.max_attempts, age=age, max_age=self.max_age)
            if outcome is Outcome.RESCHEDULED:
                again = command.after_wait(now) if is_wait(error) else command.next_attempt(now)
                delay = error.retry_after if error.retry_after is not None else self.backoff.delay(command.deliveries)
                self.queue.send(again.to_message(), delay=delay)
                return Result(outcome, f"{error}; back in {delay:.1f} s")
            if outcome is Outcome.DEAD_LETTERED:
                details = error.to_dict()
                if create_outcome_unknown(error, command):
                    details.update(code="CreateOutcomeUnknown", message=describe_unknown_create(command))
                elif is_wait(error):
                    details["message"] = (
                        f"{error.message} (waited {age / 3600:.1f} h on rate limits or a busy resource since it was "
                        f"first enqueued, {command.waits} time(s); ITWIN_MAX_COMMAND_AGE is {self.max_age / 3600:g} h)"
                    )
                elif error.transient:
                    details["message"] = f"{error.message} (gave up after {command.attempt} attempts)"
                self._dead_letter(command.to_message(), details, attempts=command.attempt)
                return Result(outcome, str(error), details.get("code") or str(error.status or type(error).__name__))
            return Result(outcome, str(error))

    def _execute(self, command: Command) -> Result:
        api = self.api
        match command.action, command.resource:
            case "create", "connection":
                return self._create_connection(command.body or {})
            case "delete", "connection" if command.imodel_id:
                return self._fan_out(command)
            case "delete", "connection":
                api.delete_connection(command.id or "")
            case "create", "job":
                job = api.create_job(command.body or {})
                return _created("job", job.id, f"{job.id} (state {job.state}; submit it with a submit job command)")
            case "submit", "job":
                return Result(self._change_job(api.submit_job, command.id or "", SUBMITTED_STATES))
            case "cancel", "job":
                return Result(self._change_job(api.cancel_job, command.id or "", {"cancelled"}))
            case "delete", "job":
                api.delete_job(command.id or "")
            case "create", "run":
                run = api.create_run(command.body or {})
                return _created("run", run.id, run.href or run.id)
            case "delete", "run":
                api.delete_run(command.id or "")
        return Result(Outcome.SUCCEEDED)

    def _change_job(self, change: Callable[[str], object], job_id: str, done: set[str]) -> Outcome:
        """Submit or cancel. When the API refuses the change (422) because an earlier attempt whose answer was lost
        already made it, the job is in the wanted state: that is already done, not a failure."""
        try:
            change(job_id)
        except Unprocessable:
            if self.api.get_job(job_id).state in done:
                return Outcome.ALREADY_DONE
            raise
        return Outcome.SUCCEEDED

    def _create_connection(self, body: Mapping[str, Any]) -> Result:
        """Create unless a connection with this iModel and name exists. The lock keeps two deliveries handled at
        once by this process from both finding none; across instances the list-first check is what remains."""
        key = (body["iModelId"].lower(), body["displayName"])
        with self._create_locks[hash(key) % len(self._create_locks)]:
            existing = [c for c in self._connections(body["iModelId"]) if c.display_name == body["displayName"]]
            if existing:
                return _created("connection", existing[0].id, existing[0].id, Outcome.ALREADY_DONE)
            connection = self.api.create_connection(
                body["iModelId"], body["displayName"], body.get("authenticationType", "Service")
            )
        return _created("connection", connection.id, connection.id)

    def _connections(self, imodel_id: str) -> list[Connection]:
        """The iModel's connections; none when the API does not know the iModel (404): the create then decides."""
        try:
            return self.api.list_connections(imodel_id)
        except NotFound:
            return []

    def _fan_out(self, command: Command) -> Result:
        """Delete by iModel: one delete command per connection of that iModel, so each succeeds or retries alone."""
        imodel_id = command.imodel_id or ""
        try:
            connections = self.api.list_connections(imodel_id)
        except NotFound as error:
            return Result(
                Outcome.IMODEL_UNAVAILABLE,
                f"{error}: the connections of iModel {imodel_id} could not be listed, so none was deleted "
                "(Export does not document whether a deleted iModel's connections go with it)",
            )
        if not connections:
            return Result(Outcome.ALREADY_DONE)
        traceparent = current_traceparent()
        for connection in connections:
            delete = Command(
                "delete", "connection", id=connection.id, correlation_id=command.correlation_id, traceparent=traceparent
            )
            self.queue.send(delete.to_message())
        return Result(Outcome.FANNED_OUT, f"{len(connections)} delete(s) enqueued")

    def _dead_letter(self, message: Any, error: dict[str, Any], *, attempts: int) -> None:
        """``message`` is the original as decoded JSON, or its text when it was not JSON."""
        failed_at = datetime.fromtimestamp(self._now(), UTC).isoformat().replace("+00:00", "Z")
        self.queue.dead_letter(encode_envelope(message, error, attempts=attempts, failed_at=failed_at))

    def _record(self, kind: str, result: Result, correlation_id: str | None) -> Outcome:
        attributes = {"itwin.command": kind, "outcome": result.outcome.value}
        if result.error_code:
            attributes["error.type"] = result.error_code
        self.telemetry.commands.add(1, attributes)
        quiet = result.outcome in (Outcome.SUCCEEDED, Outcome.ALREADY_DONE, Outcome.FANNED_OUT, Outcome.RESCHEDULED)
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "command=%r outcome=%s correlationId=%s%s",
            kind,
            result.outcome.value,
            correlation_id or "-",
            f" detail={result.detail}" if result.detail else "",
        )
        return result.outcome


@dataclass(frozen=True)
class Result:
    """What one delivery came to: the outcome, a line for the log, and for dead letters the error code."""

    outcome: Outcome
    detail: str = ""
    error_code: str | None = None


def _created(resource: str, resource_id: str, shown: str, outcome: Outcome = Outcome.SUCCEEDED) -> Result:
    """A create's result; the resource's id goes on the current span, so it can be found from the trace."""
    span = trace.get_current_span()
    span.set_attribute("itwin.resource.type", resource)
    span.set_attribute("itwin.resource.id", resource_id)
    return Result(outcome, f"{resource} {shown}")

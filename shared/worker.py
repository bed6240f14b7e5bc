"""The queue worker: turns one message into iTwin Platform calls and gives it exactly one recorded outcome."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.commands import Command, InvalidCommand, decode_json, validate
from shared.errors import ITwinError, NotFound, Unprocessable
from shared.outcomes import Outcome, classify_failure, create_outcome_unknown, describe_unknown_create
from shared.queues import CommandQueue
from shared.resources import Connection, ITwinApi
from shared.retry import RetryPolicy
from shared.settings import COMMAND_QUEUE
from shared.telemetry import Telemetry, current_traceparent

log = logging.getLogger(__name__)

MAX_ENVELOPE_MESSAGE = 48 * 1024  # keeps the envelope under the queue's 64 KiB message limit
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
        policy: RetryPolicy | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.queue = queue
        self.telemetry = telemetry
        self.max_attempts = max_attempts
        self.policy = policy or RetryPolicy()
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
                "itwin.correlation_id": (command.correlation_id if command else None) or "",
            },
        ) as span:
            if command is None:
                self._dead_letter(original, problem.to_dict(), attempts=1)
                outcome, detail = Outcome.DEAD_LETTERED, problem.message
            else:
                outcome, detail = self._run(command)
            span.set_attribute("itwin.outcome", outcome.value)
            if outcome is Outcome.DEAD_LETTERED:
                span.set_status(Status(StatusCode.ERROR, detail))
            return self._record(kind, outcome, command.correlation_id if command else None, detail)

    def _run(self, command: Command) -> tuple[Outcome, str]:
        try:
            return self._execute(command), ""
        except ITwinError as error:
            outcome = classify_failure(error, command, self.max_attempts)
            if outcome is Outcome.RESCHEDULED:
                delay = error.retry_after if error.retry_after is not None else self.policy.backoff(command.attempt)
                self.queue.send(command.next_attempt().to_message(), delay=delay)
                return outcome, f"{error}; back in {delay:.1f} s"
            if outcome is Outcome.DEAD_LETTERED:
                details = error.to_dict()
                if create_outcome_unknown(error, command):
                    details.update(code="CreateOutcomeUnknown", message=describe_unknown_create(command))
                elif error.transient:
                    details["message"] = f"{error.message} (gave up after {command.attempt} attempts)"
                self._dead_letter(command.to_message(), details, attempts=command.attempt)
            return outcome, str(error)

    def _execute(self, command: Command) -> Outcome:
        api = self.api
        match command.action, command.resource:
            case "create", "connection":
                return self._create_connection(command.body or {})
            case "delete", "connection" if command.imodel_id:
                return self._fan_out(command)
            case "delete", "connection":
                api.delete_connection(command.id or "")
            case "create", "job":
                api.create_job(command.body or {})
            case "submit", "job":
                return self._change_job(api.submit_job, command.id or "", SUBMITTED_STATES)
            case "cancel", "job":
                return self._change_job(api.cancel_job, command.id or "", {"cancelled"})
            case "delete", "job":
                api.delete_job(command.id or "")
            case "create", "run":
                api.create_run(command.body or {})
            case "delete", "run":
                api.delete_run(command.id or "")
        return Outcome.SUCCEEDED

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

    def _create_connection(self, body: Mapping[str, Any]) -> Outcome:
        """Create unless a connection with this iModel and name exists. The lock keeps two deliveries handled at
        once by this process from both finding none; across instances the list-first check is what remains."""
        key = (body["iModelId"].lower(), body["displayName"])
        with self._create_locks[hash(key) % len(self._create_locks)]:
            if any(c.display_name == body["displayName"] for c in self._connections(body["iModelId"])):
                return Outcome.ALREADY_DONE
            self.api.create_connection(body["iModelId"], body["displayName"], body.get("authenticationType", "Service"))
        return Outcome.SUCCEEDED

    def _connections(self, imodel_id: str) -> list[Connection]:
        """The iModel's connections; none when the API does not know the iModel (404)."""
        try:
            return self.api.list_connections(imodel_id)
        except NotFound:
            return []

    def _fan_out(self, command: Command) -> Outcome:
        """Delete by iModel: one delete command per connection, so each succeeds or retries on its own."""
        connections = self._connections(command.imodel_id or "")
        if not connections:
            return Outcome.ALREADY_DONE
        traceparent = current_traceparent()
        for connection in connections:
            delete = Command(
                "delete", "connection", id=connection.id, correlation_id=command.correlation_id, traceparent=traceparent
            )
            self.queue.send(delete.to_message())
        return Outcome.FANNED_OUT

    def _dead_letter(self, message: Any, error: dict[str, Any], *, attempts: int) -> None:
        """``message`` is the original as decoded JSON, or its text when it was not JSON."""
        text = json.dumps(message)
        if len(text) > MAX_ENVELOPE_MESSAGE:
            message = text[:MAX_ENVELOPE_MESSAGE] + "…(truncated)"
        failed_at = datetime.fromtimestamp(self._now(), UTC).isoformat().replace("+00:00", "Z")
        self.queue.dead_letter({"message": message, "error": error, "attempts": attempts, "failedAt": failed_at})

    def _record(self, kind: str, outcome: Outcome, correlation_id: str | None, detail: str) -> Outcome:
        self.telemetry.commands.add(1, {"itwin.command": kind, "outcome": outcome.value})
        level = logging.WARNING if outcome is Outcome.DEAD_LETTERED else logging.INFO
        log.log(
            level,
            "command=%r outcome=%s correlationId=%s%s",
            kind,
            outcome.value,
            correlation_id or "-",
            f" detail={detail}" if detail else "",
        )
        return outcome

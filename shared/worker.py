"""The queue worker: turns one message into iTwin Platform calls and gives it exactly one recorded outcome."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.commands import Command, InvalidCommand, decode_json, validate
from shared.errors import ITwinError, NotFound, Throttled, Unprocessable
from shared.ledger import DEFAULT_CLAIM_TTL, Ledger, LedgerConflict, Record, Resource, child_ids
from shared.ledger import Status as LedgerStatus
from shared.outcomes import Outcome, classify_failure, create_outcome_unknown, describe_unknown_create, is_wait
from shared.poison import encode_envelope
from shared.queues import CommandQueue
from shared.resources import Connection, ITwinApi
from shared.retry import RedeliveryBackoff
from shared.settings import COMMAND_QUEUE
from shared.telemetry import Telemetry, current_traceparent

log = logging.getLogger(__name__)

# How soon a delivery that found another one's fresh claim on a create looks again.
CLAIM_RECHECK_SECONDS = 10
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
        ledger: Ledger | None = None,
        owner: str | None = None,
        claim_ttl: timedelta = DEFAULT_CLAIM_TTL,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.queue = queue
        self.telemetry = telemetry
        self.max_attempts = max_attempts
        self.max_age = max_age
        self.backoff = backoff or RedeliveryBackoff()
        self.ledger = ledger
        self.claim_ttl = claim_ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._now = now
        self._sleep = sleep
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
            outcome = self._record(kind, result, command.correlation_id if command else None)
        if result.linger:
            self._sleep(result.linger)
        return outcome

    def _run(self, command: Command) -> Result:
        if self.ledger is None or command.command_id is None:
            return self._attempt(command, look_up=command.look_up)
        if command.action == "create":
            return self._create_once(command, command.command_id)
        record = self.ledger.get(command.command_id)
        if record is not None and record.final:
            return _repeat(record)
        return self._finish(command, self._attempt(command), etag=record.etag if record else None)

    def _create_once(self, command: Command, command_id: str) -> Result:
        """A create happens once across instances: the delivery that claims the command makes the API call.

        Another delivery finds the claim: the result when there is one; a wait while the claim is fresh; or, when
        the holder gave up with the outcome unknown or died, a look-up through the API before anything is repeated.
        """
        assert self.ledger is not None
        now = self._clock()
        claim = self.ledger.claim(command_id, self.owner, now)
        if claim.ours:
            return self._finish(command, self._attempt(command, look_up=command.look_up))
        record = claim.record
        if record is not None and record.final:
            return _repeat(record)
        if not claim.stale(now, self.claim_ttl) or not self.ledger.take_over(command_id, claim, self.owner, now):
            self.queue.send(command.after_wait(now).to_message(), delay=CLAIM_RECHECK_SECONDS)
            return Result(Outcome.RESCHEDULED, f"another delivery holds this create; back in {CLAIM_RECHECK_SECONDS} s")
        died = (
            record is None or record.updated is None or claim.claimed_at is None or record.updated <= claim.claimed_at
        )
        if (died or record.uncertain) and not _can_look_up(command):
            error = ITwinError(
                f"an earlier delivery began this {command.resource} create at {claim.claimed_at} and recorded no "
                f"result (its process ended), and the API cannot list {command.resource}s to tell whether it was "
                f"made. {describe_unknown_create(command)}",
                code="CreateOutcomeUnknown",
            )
            return self._finish(command, self._dead_letter_error(command, error))
        look_up = died or record.uncertain or command.look_up
        return self._finish(command, self._attempt(command, look_up=look_up))

    def _look_up(self, command: Command) -> Resource | None:
        """The run an earlier create of ``command`` made, if the API can find it; None when it made none.

        Connection creates need no look-up here: they always list the iModel's connections before creating.
        """
        body = command.body or {}
        if command.resource != "run" or not command.project_id:
            return None
        runs = self.api.find_runs(command.project_id, body["testId"], body["iModelId"], body["namedVersionId"])
        if len(runs) > 1:
            raise ITwinError(
                f"the run create got no clear answer, and the project has {len(runs)} runs of test "
                f"{body['testId']} that could be it ({', '.join(r.id for r in runs)}); it was not repeated. "
                "Check which one this command made, or delete the extra ones and resend it.",
                code="CreateOutcomeUnknown",
            )
        return Resource("run", runs[0].id, runs[0].href) if runs else None

    def _finish(self, command: Command, result: Result, etag: str | None = None) -> Result:
        """Record the delivery's result in the command's row (conditional: see `Ledger.finish`).

        Deliveries of a delete, submit or cancel take no claim, so two may write at once. When the row changed since
        it was read, this one writes again over what is there, once, if that is not final (a copy that only waited),
        or if this one did the work and the other found it done: the row then says what happened.
        """
        assert self.ledger is not None
        assert command.command_id is not None
        for _ in range(2):
            written = self.ledger.finish(
                command.command_id,
                LedgerStatus(result.outcome.value),
                self._clock(),
                attempts=command.attempt,
                waits=command.waits,
                etag=etag,
                resource=result.resource,
                error=result.error,
                children=result.children,
                uncertain=result.uncertain,
            )
            if written or etag is None:
                break
            current = self.ledger.get(command.command_id)
            did_it = result.outcome is Outcome.SUCCEEDED and current is not None
            if current is None or (current.final and not (did_it and current.status is LedgerStatus.ALREADY_DONE)):
                break
            etag = current.etag
        return result

    def _clock(self) -> datetime:
        return datetime.fromtimestamp(self._now(), UTC)

    def _attempt(self, command: Command, *, look_up: bool = False) -> Result:
        """Carry the command out once (after looking up what an earlier create made, with ``look_up``); a failure
        is rescheduled or dead-lettered here."""
        looked = False
        try:
            found = self._look_up(command) if look_up else None
            looked = True
            if found is not None:
                return _created(found.type, found.id, f"{found.id} (found: made earlier)", Outcome.ALREADY_DONE, found)
            return self._execute(command)
        except ITwinError as error:
            now = self._clock()
            age = command.age(now)
            outcome = classify_failure(error, command, self.max_attempts, age=age, max_age=self.max_age)
            lookable = create_outcome_unknown(error, command) and _can_look_up(command)
            uncertain = lookable or (look_up and not looked)
            if lookable:
                outcome = Outcome.RESCHEDULED if command.attempt < self.max_attempts else Outcome.DEAD_LETTERED
            if outcome is Outcome.RESCHEDULED:
                again = command.after_wait(now) if is_wait(error) else command.next_attempt(now)
                again = replace(again, look_up=uncertain)
                delay = error.retry_after if error.retry_after is not None else self.backoff.delay(command.deliveries)
                self.queue.send(again.to_message(), delay=delay)
                linger = error.linger if isinstance(error, Throttled) else 0.0
                return Result(
                    outcome,
                    f"{error}; back in {delay:.1f} s",
                    error=error.to_dict(),
                    uncertain=uncertain,
                    linger=linger,
                )
            if outcome is Outcome.DEAD_LETTERED:
                return self._dead_letter_error(command, error, age)
            return Result(outcome, str(error), error=error.to_dict())

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
                href = f"{api.client.api_url}/contextcapture/jobs/{job.id}"
                shown = f"{job.id} (state {job.state}; submit it with a submit job command)"
                return _created("job", job.id, shown, found=Resource("job", job.id, href))
            case "submit", "job":
                return Result(self._change_job(api.submit_job, command.id or "", SUBMITTED_STATES))
            case "cancel", "job":
                return Result(self._change_job(api.cancel_job, command.id or "", {"cancelled"}))
            case "delete", "job":
                api.delete_job(command.id or "")
            case "create", "run":
                run = api.create_run(command.body or {})
                return _created("run", run.id, run.href or run.id, found=Resource("run", run.id, run.href))
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
        recorded = self.ledger is not None and command.command_id is not None
        ids = child_ids(command.command_id, len(connections)) if recorded else [None] * len(connections)
        deletes = [
            Command(
                "delete",
                "connection",
                id=connection.id,
                correlation_id=command.correlation_id,
                traceparent=traceparent,
                command_id=child_id,
                first_enqueued=self._clock(),
            )
            for connection, child_id in zip(connections, ids, strict=True)
        ]
        if recorded:
            # LedgerConflict: an earlier delivery of this fan-out recorded them; deleting twice is harmless.
            with contextlib.suppress(LedgerConflict):
                self.ledger.record([(d.command_id, d.to_message()) for d in deletes], self._clock())
        for delete in deletes:
            self.queue.send(delete.to_message())
        return Result(Outcome.FANNED_OUT, f"{len(connections)} delete(s) enqueued", children=tuple(i for i in ids if i))

    def _dead_letter_error(self, command: Command, error: ITwinError, age: float = 0.0) -> Result:
        """Dead-letter ``command`` for ``error``, with a message that says why and what to do."""
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
        code = details.get("code") or str(error.status or type(error).__name__)
        return Result(Outcome.DEAD_LETTERED, str(error), code, error=details)

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
    """What one delivery came to: the outcome, a line for the log, for dead letters the error code; and for the
    ledger the resource a create made, the error in the iTwin shape, a fan-out's children, and whether a create
    may have been carried out without an answer."""

    outcome: Outcome
    detail: str = ""
    error_code: str | None = None
    resource: Resource | None = None
    error: Mapping[str, Any] | None = None
    children: tuple[str, ...] = ()
    uncertain: bool = False
    linger: float = 0.0  # seconds the invocation stays busy after giving the command back (see `Throttled`)


def _repeat(record: Record) -> Result:
    """A delivery of a command the ledger shows as finished: nothing is called again."""
    shown = f" {record.resource.type} {record.resource.id}" if record.resource else ""
    return Result(Outcome.ALREADY_DONE, f"already {record.status.value}{shown} (ledger)", resource=record.resource)


def _can_look_up(command: Command) -> bool:
    """Whether the API can find what a create of ``command`` made: connections by iModel and name, Clash
    Detection runs by project, test and named version. ContextCapture v1 has no job list."""
    return command.resource == "connection" or (command.resource == "run" and command.project_id is not None)


def _created(
    resource: str, resource_id: str, shown: str, outcome: Outcome = Outcome.SUCCEEDED, found: Resource | None = None
) -> Result:
    """A create's result; the resource's id goes on the current span, so it can be found from the trace."""
    span = trace.get_current_span()
    span.set_attribute("itwin.resource.type", resource)
    span.set_attribute("itwin.resource.id", resource_id)
    return Result(outcome, f"{resource} {shown}", resource=found or Resource(resource, resource_id))

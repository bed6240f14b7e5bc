"""The queue worker: turns one message into iTwin Platform calls and gives it exactly one recorded outcome."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.commands import Command, InvalidCommand, decode_json, validate
from shared.errors import ITwinError, NotFound, Throttled, Unprocessable
from shared.ledger import (
    INDEXED_RESOURCES,
    LEASE,
    LEASE_MARGIN,
    SETTLE,
    Lease,
    Ledger,
    Record,
    Resource,
    child_id,
    split_id,
)
from shared.ledger import Status as LedgerStatus
from shared.outcomes import (
    Outcome,
    classify_failure,
    create_may_have_happened,
    create_outcome_unknown,
    describe_unknown_create,
    is_wait,
)
from shared.poison import encode_envelope
from shared.queues import CommandQueue
from shared.resources import Connection, ITwinApi
from shared.retry import RedeliveryBackoff
from shared.schedule import carrying
from shared.settings import COMMAND_QUEUE, POISON_QUEUE
from shared.telemetry import Telemetry, current_traceparent

log = logging.getLogger(__name__)

# How soon a delivery that found another delivery's lease on a create first looks again; later looks wait out the
# rest of the lease (see `shared.ledger`).
LEASE_RECHECK_SECONDS = 10
_MAX_ITWINS_REMEMBERED = 4096
# A submitted job moves on from "active" by itself; any of these means the submit happened.
SUBMITTED_STATES = {"active", "success", "failed"}
# A Reality Modeling v2 job in one of these states has been cancelled, or is being.
CANCELLED_V2_STATES = {"TerminatingOnCancel", "Cancelled"}
# Creates whose API can list what they make, so that a create that got no answer is looked up, not repeated: the
# hold stores the matching ones listed before it (``before``), and what appears since is the create's.
LISTED_CREATES = frozenset({"run", "clashRun", "realityJob"})


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
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        settle: float = SETTLE.total_seconds(),
    ) -> None:
        """``monotonic`` must be the API client's clock: a create's lease deadline is handed to it. ``settle``: the
        longest a create the client stopped waiting for may still take effect on the platform; a holder whose create
        got no answer keeps its lease and hands it over by a message that shows after that long."""
        self.api = api
        self.queue = queue
        self.telemetry = telemetry
        self.max_attempts = max_attempts
        self.max_age = max_age
        self.backoff = backoff or RedeliveryBackoff()
        self.ledger = ledger
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._now = now
        self._sleep = sleep
        self._monotonic = monotonic
        self.settle = settle
        self._create_locks = tuple(threading.Lock() for _ in range(64))
        self._book = LeaseBook()
        self._itwins: dict[str, str] = {}

    def handle(self, raw: bytes | str, *, last_try: bool = False) -> Outcome:
        """Process one queue message body. Raises only when storage fails (the host then retries). ``last_try``: the
        message's dequeue count reached the host's ``maxDequeueCount``, so if this delivery raises, the host moves it
        to the poison queue: the command's row then says ``dead_lettered`` first, where the ledger can be written."""
        try:
            return self._handle(raw)
        except Exception as error:
            if last_try:
                self._record_poisoned(raw, error)
            raise

    def _handle(self, raw: bytes | str) -> Outcome:
        if self.ledger is not None:
            self._write_kept_results()
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
                result = Result(Outcome.DEAD_LETTERED, problem.message, problem.code, error=problem.to_dict())
                self._record_dead_letter(original, problem.to_dict())
            else:
                with carrying(command.slot):
                    result = self._run(command)
            span.set_attribute("itwin.outcome", result.outcome.value)
            span.set_attribute("itwin.paced", result.paced)
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
        record = self._row(command, command.command_id)
        if record.final:
            return _repeat(record)
        return self._finish(command, self._attempt(command), etag=record.etag)

    def _row(self, command: Command, command_id: str) -> Record:
        """The command's row; one inserted from the message when it has none (see `Ledger.adopt`)."""
        assert self.ledger is not None
        return self.ledger.get(command_id) or self.ledger.adopt(command_id, command.to_message(), self._clock())

    def _record_poisoned(self, raw: bytes | str, error: Exception) -> None:
        """Record ``dead_lettered`` in the row of a message the host is about to move to the poison queue."""
        reason = {
            "status": None,
            "code": "InvocationFailed",
            "message": f"every delivery of this message failed, the last with {type(error).__name__}: "
            f"{str(error)[:300]}; the Functions host moved it to {POISON_QUEUE}. Fix the cause, then replay it "
            "(python -m ops poison replay).",
            "target": None,
            "details": [],
        }
        try:
            self._record_dead_letter(decode_json(raw), reason)
        except Exception as failure:  # the store may be what failed: the host's poison queue still has the message
            log.warning("could not record a poisoned message in the ledger: %s", type(failure).__name__)

    def _record_dead_letter(self, original: Any, error: Mapping[str, Any]) -> None:
        """A dead-lettered message that names its command: the command's row says so too."""
        command_id = original.get("commandId") if isinstance(original, dict) else None
        try:
            day_and_key = split_id(command_id) if isinstance(command_id, str) else None
        except ValueError:
            day_and_key = None
        record = self.ledger.get(command_id) if self.ledger is not None and day_and_key else None
        if record is None or record.final:
            return
        self.ledger.finish(
            record.id,
            LedgerStatus.DEAD_LETTERED,
            self._clock(),
            attempts=record.attempts + 1,
            waits=record.waits,
            etag=record.etag,
            error=error,
            release=True,
        )

    def _create_once(self, command: Command, command_id: str) -> Result:
        """A create happens once across instances: only the delivery holding the row's lease calls the API.

        The protocol and why it holds are in `shared.ledger`'s docstring. A delivery reads the row; a final row is
        answered from the ledger; a free one is held (a fresh lease on the ETag read) and created; a lease of this
        process that no invocation here works on is written, or taken over at once when its create was never sent;
        any other lease is waited on, and taken over once this message has waited `LEASE` on the same lease token
        or carries the holder's hand-over (see `_failed`).
        """
        assert self.ledger is not None
        for _ in range(3):  # a row changed between read and hold is read again
            record = self._row(command, command_id)
            if record.final:
                return _repeat(record)
            maybe_made = record.uncertain or command.look_up
            if record.lease:
                own = record.holder == self.owner
                kept = self._book.kept(record.lease) if own else None
                if kept is RUNNING:  # alive, in this process: look again soon, without counting towards a take-over
                    return self._look_again(command, "this process is making this create")
                if kept is not None and kept.result is not None:
                    self._write_kept(kept)
                    continue
                # A create may still take effect (another process's, or one of this process's that got no answer):
                # the lease is taken over only by its holder's hand-over message or after `LEASE` of waiting.
                in_doubt = not own or record.uncertain or kept is not None
                vouched = command.lease_seen == record.lease and command.lease_waited >= LEASE.total_seconds()
                if in_doubt and not vouched:
                    return self._wait_on_lease(command, record)
                maybe_made = maybe_made or in_doubt
            result = self._hold_and_create(command, record, maybe_made)
            if result is not None:
                return result
        return self._look_again(command, "the row kept changing under this create")

    def _look_again(self, command: Command, why: str) -> Result:
        self.queue.send(command.after_wait(self._clock()).to_message(), delay=LEASE_RECHECK_SECONDS)
        return Result(Outcome.RESCHEDULED, f"{why}; back in {LEASE_RECHECK_SECONDS} s")

    def _wait_on_lease(self, command: Command, record: Record) -> Result:
        """Give the message back until the lease on ``record`` has been seen held for `LEASE`, by queue delays."""
        waited = command.lease_waited if command.lease_seen == record.lease else 0
        delay = LEASE_RECHECK_SECONDS if waited == 0 else max(LEASE_RECHECK_SECONDS, LEASE.total_seconds() - waited)
        again = replace(command.after_wait(self._clock()), lease_seen=record.lease, lease_waited=int(waited + delay))
        self.queue.send(again.to_message(), delay=delay)
        return Result(Outcome.RESCHEDULED, f"another delivery holds this create; back in {delay:g} s")

    def _hold_and_create(self, command: Command, record: Record, maybe_made: bool) -> Result | None:
        """Hold the row's lease and carry the create out (looking first for what an earlier holder may have made,
        with ``maybe_made``); None when the row changed before the hold.

        A run, clash run (v2) or Reality Modeling v2 job create lists the matching ones first (`LISTED_CREATES`),
        and the hold stores their ids (``before``): those it did not make. Later attempts that follow one which
        surely sent nothing (a 429, this instance's pacing) keep that list rather than spend another call at the
        API's 6 calls a second; after an attempt that may have made one, the list is taken again, as the look-up.
        """
        assert self.ledger is not None
        runs: list[Resource] | None = None
        if command.resource in LISTED_CREATES and (maybe_made or record.before is None):
            try:
                runs = self._matching_runs(command)
            except ITwinError as error:  # the message goes back still vouched for the lease it waited out
                return self._finish(command, self._failed(command, error, uncertain=maybe_made), etag=record.etag)
        command = replace(command, lease_seen=None, lease_waited=0)
        started = self._monotonic()
        # After a create that may have made the run, the runs listed now may include it: the list from before that
        # create stays the one this create is told apart by (the look-up below finds it, or finds none of its own).
        keep = runs is None or (maybe_made and record.before is not None)
        # In the book before the row says so: another delivery in this process that reads the row must find its
        # holder at work, never a lease "this process never worked on" that it may take over at once.
        token = uuid.uuid4().hex
        self._book.start(token, command)
        lease = None
        try:
            lease = self.ledger.hold(
                record, self.owner, self._clock(), before=None if keep else _ids(runs or []), token=token
            )
        finally:
            if lease is None:
                self._book.cancel(token)
        if lease is None:
            return None
        result: Result | None = None
        try:
            if maybe_made and not _can_look_up(command):
                error = ITwinError(
                    f"an earlier delivery of this {command.resource} create held it and recorded no result, and the "
                    f"API cannot list {command.resource}s to tell whether it was made. "
                    f"{describe_unknown_create(command)}",
                    code="CreateOutcomeUnknown",
                )
                result = self._dead_letter_error(command, error)
            else:
                not_after = started + (LEASE - LEASE_MARGIN).total_seconds()
                result = self._attempt(
                    command, look_up=maybe_made, runs=runs, before=record.before, not_after=not_after, lease=lease
                )
        finally:
            self._book.stop(lease.token, result)
        return self._write_held(command, lease, result)

    def _write_held(self, command: Command, lease: Lease, result: Result) -> Result:
        """Write the holder's result on its lease's ETag, and clear the lease.

        When the ETag moved: while the lease is still this one's (someone only marked the row sent), write again on
        the new ETag; when another delivery took the lease over (this one outlived it), write only a resource this
        one made over a row that has none, so the row says what happened. A write the store refused with an error
        stays in this process's book and is written by its next invocation (see `_write_kept_results`).
        """
        assert self.ledger is not None
        assert command.command_id is not None
        if result.resource is not None and result.resource.type in INDEXED_RESOURCES:
            self.ledger.index_resource(result.resource, command.command_id)  # before the row says it is done
        etag = lease.etag
        for _ in range(3):  # a create that may still take effect keeps the lease: see `_failed`
            if self._finish_row(command, result, etag, release=not result.handed_over):
                break
            current = self.ledger.get(command.command_id)
            if current is None:
                break
            made = result.outcome is Outcome.SUCCEEDED and result.resource is not None
            if current.lease != lease.token and not (made and current.resource is None):
                break
            etag = current.etag
        self._book.forget(lease.token)
        return result

    def _write_kept(self, kept: KeptResult) -> None:
        """Write a result this process kept because the store refused it, if the lease is still this process's."""
        assert self.ledger is not None
        assert kept.result is not None
        record = self.ledger.get(kept.command.command_id or "")
        if record is not None and record.lease == kept.token:
            self._write_held(kept.command, Lease(kept.token, record.etag or ""), kept.result)
        else:
            self._book.forget(kept.token)

    def _write_kept_results(self) -> None:
        """Write the results this process kept; a store that still fails leaves them for the next invocation."""
        from azure.core.exceptions import AzureError

        for kept in self._book.results():
            try:
                self._write_kept(kept)
            except AzureError as error:
                log.warning("a kept result of %s is still not written: %s", kept.command.command_id, error)
                return

    def _matching_runs(self, command: Command) -> list[Resource]:
        """What a create of ``command`` could be confused with, listed before its lease is held: the project's
        runs of the test and named version (v1), the iTwin's reports of the test, iModel and changeset (Clash
        Detection v2), the iTwin's Reality Modeling v2 jobs of that name and type."""
        body = command.body or {}
        if command.resource == "realityJob":
            jobs = self.api.find_reality_jobs(body["iTwinId"], body["name"], body["type"])
            return [Resource("realityJob", j.id, j.href) for j in jobs]
        if command.resource == "clashRun":
            itwin = command.itwin_id or self._itwin_of(body["iModelId"])
            reports = self.api.find_clash_reports(itwin, body["testId"], body["iModelId"], body["changesetId"])
            return [Resource("clashRun", r.id, r.href) for r in reports]
        project = command.project_id or self._itwin_of(body["iModelId"])
        runs = self.api.find_runs(project, body["testId"], body["iModelId"], body["namedVersionId"])
        return [Resource("run", r.id, r.href) for r in runs]

    def _itwin_of(self, imodel_id: str) -> str:
        """The iModel's iTwin (the run's project), asked once per process: an iModel never moves."""
        key = imodel_id.lower()
        if key not in self._itwins:
            if len(self._itwins) >= _MAX_ITWINS_REMEMBERED:
                self._itwins.clear()
            self._itwins[key] = self.api.imodel_itwin(imodel_id)
        return self._itwins[key]

    def _finish(self, command: Command, result: Result, etag: str | None = None) -> Result:
        """Record the result of a delivery that holds no lease (conditional: see `Ledger.finish`).

        Deliveries of a delete, submit or cancel take no lease, so two may write at once. When the row changed since
        it was read, this one writes again over what is there, once, if that is not final (a copy that only waited),
        or if this one did the work and the other found it done: the row then says what happened.
        """
        assert self.ledger is not None
        assert command.command_id is not None
        for _ in range(4):  # each retry follows a write by another delivery, or the front end marking the row sent
            if self._finish_row(command, result, etag) or etag is None:
                break
            current = self.ledger.get(command.command_id)
            did_it = result.outcome is Outcome.SUCCEEDED and current is not None
            if current is None or (current.final and not (did_it and current.status is LedgerStatus.ALREADY_DONE)):
                break
            etag = current.etag
        return result

    def _finish_row(self, command: Command, result: Result, etag: str | None, *, release: bool = False) -> bool:
        assert self.ledger is not None
        assert command.command_id is not None
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
            release=release,
        )
        return written is not None

    def _clock(self) -> datetime:
        return datetime.fromtimestamp(self._now(), UTC)

    def _attempt(
        self,
        command: Command,
        *,
        look_up: bool = False,
        runs: list[Resource] | None = None,
        before: tuple[str, ...] | None = None,
        not_after: float | None = None,
        lease: Lease | None = None,
    ) -> Result:
        """Carry the command out once; a failure is rescheduled or dead-lettered here.

        ``look_up``: an earlier create may have been carried out, so a run create first looks for what it made
        among the matching ``runs`` (listed now, unless given) that were not there ``before`` it (see
        `_made_earlier`); connections are always listed before they are created. ``not_after``: the client's
        clock after which a create is not sent (the lease's end). ``lease``: held by this delivery, handed over
        with the message when the create gets no answer.
        """
        looked = False
        try:
            if look_up and command.resource in LISTED_CREATES:
                found = _made_earlier(command, self._matching_runs(command) if runs is None else runs, before)
                if found is not None:
                    shown = f"{found.id} (found: made earlier)"
                    return _created(found.type, found.id, shown, Outcome.ALREADY_DONE, found)
            looked = True  # nothing made earlier: a create refused now leaves nothing to look for
            return self._execute(command, not_after)
        except ITwinError as error:
            return self._failed(command, error, uncertain=look_up and not looked, lease=lease)

    def _failed(
        self, command: Command, error: ITwinError, *, uncertain: bool = False, lease: Lease | None = None
    ) -> Result:
        """Reschedule or dead-letter ``command`` after ``error``. ``uncertain``: an earlier create may have been
        carried out, so the next delivery looks before creating. A create of this delivery's that got no answer may
        still take effect: its ``lease`` stays held, and the message that goes back hands it over once `settle` has
        passed (by its visibility delay), so no other delivery creates meanwhile."""
        now = self._clock()
        age = command.age(now)
        outcome = classify_failure(error, command, self.max_attempts, age=age, max_age=self.max_age)
        lookable = create_outcome_unknown(error, command) and _can_look_up(command)
        pending = lease is not None and create_may_have_happened(error, command)
        uncertain = uncertain or lookable or pending
        if lookable:
            outcome = Outcome.RESCHEDULED if command.attempt < self.max_attempts else Outcome.DEAD_LETTERED
        if outcome is Outcome.RESCHEDULED:
            if isinstance(error, Throttled):
                again = command.held_back(now)
            elif is_wait(error):
                again = command.after_wait(now)
            else:
                again = command.next_attempt(now)
            again = replace(again, look_up=uncertain)
            # Without a Retry-After, a failure backs off by the failures so far, a wait by the deliveries so far.
            tries = command.deliveries if is_wait(error) else command.attempt
            delay = error.retry_after if error.retry_after is not None else self.backoff.delay(tries)
            slot = error.slot if isinstance(error, Throttled) else None
            if slot is not None:
                # A slot of the shared schedule goes with the command; the queue's delays are whole seconds, so the
                # message shows up to a second early and its receiver waits the rest (see `shared.schedule`).
                again = replace(again, slot=slot)
                delay = float(math.floor(delay))
            if pending and lease is not None:
                again = replace(again, lease_seen=lease.token, lease_waited=int(LEASE.total_seconds()))
                delay = max(delay, self.settle)
            self.queue.send(again.to_message(), delay=delay)
            linger = error.linger if isinstance(error, Throttled) else 0.0
            return Result(
                outcome,
                f"{error}; back in {delay:.1f} s",
                error=error.to_dict(),
                uncertain=uncertain,
                linger=linger,
                handed_over=pending,
                paced=isinstance(error, Throttled),
            )
        if outcome is Outcome.DEAD_LETTERED:
            return self._dead_letter_error(command, error, age)
        return Result(outcome, str(error), error=error.to_dict())

    def _execute(self, command: Command, not_after: float | None = None) -> Result:
        api = self.api
        match command.action, command.resource:
            case "create", "connection":
                return self._create_connection(command.body or {}, leased=not_after is not None, not_after=not_after)
            case "delete", "connection" if command.imodel_id:
                return self._fan_out(command)
            case "delete", "connection":
                api.delete_connection(command.id or "")
            case "create", "job":
                job = api.create_job(command.body or {}, not_after=not_after)
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
                run = api.create_run(command.body or {}, not_after=not_after)
                return _created("run", run.id, run.href or run.id, found=Resource("run", run.id, run.href))
            case "delete", "run":
                api.delete_run(command.id or "")
            case "create", "clashRun":
                body = command.body or {}
                itwin = command.itwin_id or self._itwin_of(body["iModelId"])
                report = api.run_clash_test(itwin, body, not_after=not_after)
                found = Resource("clashRun", report.id, report.href)
                return _created("clashRun", report.id, f"{report.id} (its clash report)", found=found)
            case "cancel", "clashRun":
                return Result(self._cancel_clash_run(command.itwin_id or "", command.id or ""))
            case "delete", "clashRun":
                return Result(self._delete_clash_report(command.itwin_id or "", command.id or ""))
            case "create", "realityJob":
                job = api.create_reality_job(command.body or {}, not_after=not_after)
                found = Resource("realityJob", job.id, job.href)
                return _created("realityJob", job.id, f"{job.id} (state {job.state})", found=found)
            case "cancel", "realityJob":
                return Result(self._cancel_reality_job(command.id or ""))
            case "record", "realityJob":
                return self._record_job_end(command.id or "")
        return Result(Outcome.SUCCEEDED)

    def _record_job_end(self, job_id: str) -> Result:
        """Write the state a Reality Modeling v2 job ended in (read from the API: the event says only that it
        ended) into the row of the command that made it. A job no kept command made is left alone."""
        state = self.api.get_reality_job(job_id).state or "unknown"
        command_id = self.ledger.command_of("realityJob", job_id) if self.ledger is not None else None
        if command_id is None or not self.ledger.record_state(command_id, state, self._clock()):
            return Result(Outcome.ALREADY_DONE, f"job {job_id} ended {state}; no command this app keeps made it")
        return Result(Outcome.SUCCEEDED, f"job {job_id} ended {state}: recorded in command {command_id}")

    def _cancel_clash_run(self, itwin_id: str, report_id: str) -> Outcome:
        """Cancel a v2 run. The API refuses (422) a run that is no longer in progress: when its report says it
        ended, or is gone, there is nothing left to cancel (an earlier attempt whose answer was lost may have)."""
        try:
            self.api.cancel_clash_run(itwin_id, report_id)
        except Unprocessable:
            try:
                if not self.api.get_clash_report(itwin_id, report_id).running:
                    return Outcome.ALREADY_DONE
            except NotFound:
                return Outcome.ALREADY_DONE
            raise
        return Outcome.SUCCEEDED

    def _delete_clash_report(self, itwin_id: str, report_id: str) -> Outcome:
        """Delete a v2 report. "Delete clash detection reports" answers 422 (not 404) for a report it cannot
        delete: when the report is gone, an earlier attempt deleted it."""
        try:
            self.api.delete_clash_report(itwin_id, report_id)
        except Unprocessable:
            try:
                self.api.get_clash_report(itwin_id, report_id)
            except NotFound:
                return Outcome.ALREADY_DONE
            raise
        return Outcome.SUCCEEDED

    def _cancel_reality_job(self, job_id: str) -> Outcome:
        """Cancel a v2 job (DELETE). A 422 for a job already cancelled, or being, is already done."""
        try:
            self.api.cancel_reality_job(job_id)
        except Unprocessable:
            if self.api.get_reality_job(job_id).state in CANCELLED_V2_STATES:
                return Outcome.ALREADY_DONE
            raise
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

    def _create_connection(
        self, body: Mapping[str, Any], *, leased: bool = False, not_after: float | None = None
    ) -> Result:
        """Create unless a connection with this iModel and name exists. Under a lease (``leased``) no other
        delivery creates it; without one, the lock keeps two deliveries handled at once by this process from both
        finding none, and across instances the list-first check is what remains."""
        key = (body["iModelId"].lower(), body["displayName"])
        lock = contextlib.nullcontext() if leased else self._create_locks[hash(key) % len(self._create_locks)]
        with lock:
            existing = [c for c in self._connections(body["iModelId"]) if c.display_name == body["displayName"]]
            if existing:
                return _created("connection", existing[0].id, existing[0].id, Outcome.ALREADY_DONE)
            connection = self.api.create_connection(
                body["iModelId"], body["displayName"], body.get("authenticationType", "Service"), not_after=not_after
            )
        return _created("connection", connection.id, connection.id)

    def _connections(self, imodel_id: str) -> list[Connection]:
        """The iModel's connections; none when the API does not know the iModel (404): the create then decides.
        A connection made for an iModel makes it known, so a 404 after a create that may have happened still
        means there is none."""
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
        parent_id = command.command_id if self.ledger is not None else None
        deletes = [
            Command(
                "delete",
                "connection",
                id=connection.id,
                correlation_id=command.correlation_id,
                traceparent=traceparent,
                command_id=child_id(parent_id, connection.id) if parent_id else None,
                first_enqueued=self._clock(),
            )
            for connection in connections
        ]
        if parent_id is None:
            for delete in deletes:
                self.queue.send(delete.to_message())
            return Result(Outcome.FANNED_OUT, f"{len(deletes)} delete(s) enqueued")
        assert self.ledger is not None
        # A redelivered fan-out finds the rows its first delivery recorded: the same ids, since they name the
        # connection, not its place in the list. Those already done are not sent again.
        held = self.ledger.insert_absent([(d.command_id or "", d.to_message()) for d in deletes], self._clock())
        sending = [d for d in deletes if not (d.command_id in held and held[d.command_id].final)]
        for delete in sending:
            self.queue.send(delete.to_message())
        self.ledger.mark_sent(d.command_id or "" for d in sending)
        children = sorted({d.command_id or "" for d in deletes} | set(self.ledger.children_of(parent_id)))
        return Result(Outcome.FANNED_OUT, f"{len(sending)} delete(s) enqueued", children=tuple(children))

    def _dead_letter_error(self, command: Command, error: ITwinError, age: float = 0.0) -> Result:
        """Dead-letter ``command`` for ``error``, with a message that says why and what to do."""
        details = error.to_dict()
        if create_outcome_unknown(error, command) and not _can_look_up(command):
            details.update(code="CreateOutcomeUnknown", message=describe_unknown_create(command))
        elif create_outcome_unknown(error, command):
            details.update(
                code="CreateOutcomeUnknown",
                message=f"{error.message} (gave up after {command.attempt} attempts; the {command.resource} may have "
                "been made: look for it before resending the command)",
            )
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
    paced: bool = False  # given back by this process's own pacing: the copy counts neither an attempt nor a wait
    handed_over: bool = False  # the lease stays held, for the message that went back to take over (see `_failed`)


def _repeat(record: Record) -> Result:
    """A delivery of a command the ledger shows as finished: nothing is called again."""
    shown = f" {record.resource.type} {record.resource.id}" if record.resource else ""
    return Result(Outcome.ALREADY_DONE, f"already {record.status.value}{shown} (ledger)", resource=record.resource)


def _can_look_up(command: Command) -> bool:
    """Whether the API can find what a create of ``command`` made: connections by iModel and name, Clash
    Detection v1 runs by project (the iModel's iTwin), test and named version, Clash Detection v2 reports by
    iTwin, iModel, test and changeset, Reality Modeling v2 jobs by iTwin, name and type. ContextCapture v1 has no
    job list."""
    return command.resource == "connection" or command.resource in LISTED_CREATES


def _ids(runs: list[Resource]) -> list[str]:
    return [run.id for run in runs]


def _made_earlier(command: Command, runs: list[Resource], before: tuple[str, ...] | None) -> Resource | None:
    """What an earlier create of ``command`` made: the one matching run (report, job) that was not there
    ``before`` that create (the ids its holder listed, see `Ledger.hold`); None when there is none. Raises
    `ITwinError` (``CreateOutcomeUnknown``) when it cannot be told: no list from before (a message without a
    ledger row), or more than one new one."""
    body = command.body or {}
    if before is None:
        candidates = runs
        why = "there is no list of the runs that existed before it (the command has no ledger row)"
    else:
        candidates = [run for run in runs if run.id not in before]
        why = "more than one appeared since it was sent"
    if not candidates:
        return None
    if before is not None and len(candidates) == 1:
        return candidates[0]
    what = {
        "run": f"the project's runs of test {body.get('testId')}",
        "clashRun": f"the iTwin's clash reports of test {body.get('testId')} on changeset {body.get('changesetId')}",
        "realityJob": f"the iTwin's Reality Modeling jobs named {body.get('name')!r}",
    }[command.resource]
    raise ITwinError(
        f"the {command.resource} create got no clear answer, and it cannot be told whether one of {what} "
        f"({', '.join(r.id for r in candidates)}) is the one it made: {why}. It was not repeated. "
        "Check which one this command made, or delete the extra ones and resend it.",
        code="CreateOutcomeUnknown",
    )


def _created(
    resource: str, resource_id: str, shown: str, outcome: Outcome = Outcome.SUCCEEDED, found: Resource | None = None
) -> Result:
    """A create's result; the resource's id goes on the current span, so it can be found from the trace."""
    span = trace.get_current_span()
    span.set_attribute("itwin.resource.type", resource)
    span.set_attribute("itwin.resource.id", resource_id)
    return Result(outcome, f"{resource} {shown}", resource=found or Resource(resource, resource_id))


RUNNING = "running"


@dataclass
class KeptResult:
    """A lease of this process whose invocation sent, or may have sent, the create: ``result`` None while it may
    have been sent without an answer yet, else the result the store has not taken yet."""

    token: str
    command: Command
    result: Result | None = None


class LeaseBook:
    """This process's own leases: those an invocation works on right now, and those whose result is not in the
    ledger yet. A delivery that finds its own process's lease asks here whether its holder is still at work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._kept: dict[str, KeptResult] = {}

    def start(self, token: str, command: Command) -> None:
        with self._lock:
            self._running.add(token)
            self._kept[token] = KeptResult(token, command)

    def stop(self, token: str, result: Result | None) -> None:
        """The invocation ended: with its result, or with None when it raised (the create may have been sent)."""
        with self._lock:
            self._running.discard(token)
            if result is not None:
                self._kept[token].result = result

    def forget(self, token: str) -> None:
        with self._lock:
            self._kept.pop(token, None)

    def cancel(self, token: str) -> None:
        """The hold this token was for did not happen."""
        with self._lock:
            self._running.discard(token)
            self._kept.pop(token, None)

    def kept(self, token: str) -> KeptResult | str | None:
        """`RUNNING`, what this process kept for the lease, or None when it never worked on it."""
        with self._lock:
            return RUNNING if token in self._running else self._kept.get(token)

    def results(self) -> list[KeptResult]:
        """Results written nowhere yet, of invocations that ended."""
        with self._lock:
            return [k for t, k in self._kept.items() if t not in self._running and k.result is not None]

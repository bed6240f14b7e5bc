"""The queue worker against the simulator and Azurite: every message ends in exactly one recorded outcome."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from app_settings import settings_for
from manual_clock import ManualClock
from opentelemetry.trace import SpanKind
from samples import IMODEL, JOB_BODY, MISSING, OTHER_IMODEL

from shared.client import ITwinClient
from shared.outcomes import Outcome
from shared.pacing import FLOOR_SLOTS, SAFETY, Pacer
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.retry import RedeliveryBackoff
from shared.runtime import WORKER_POLICY
from shared.settings import COMMAND_QUEUE, POISON_QUEUE, Settings
from shared.worker import Worker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def make_worker(simulator, queues, captured, max_attempts=8, **overrides) -> Worker:
    settings = Settings.from_env({**settings_for(simulator), **overrides})
    client = ITwinClient(settings, telemetry=captured.telemetry, policy=WORKER_POLICY, timeout=(2.0, 2.0))
    queue = CommandQueue(queues[COMMAND_QUEUE], queues[POISON_QUEUE])
    return Worker(
        ITwinApi(client), queue, captured.telemetry, max_attempts=max_attempts, max_age=settings.max_command_age
    )


@pytest.fixture
def worker(simulator, queues, captured):
    return make_worker(simulator, queues, captured)


def message(**fields) -> bytes:
    return json.dumps(fields).encode()


def received(queue_client) -> list[dict]:
    return [json.loads(m.content) for m in queue_client.receive_messages(messages_per_page=32, visibility_timeout=1)]


def outcomes(captured) -> dict[tuple[str, str], int]:
    return {(dict(k)["itwin.command"], dict(k)["outcome"]): v for k, v in captured.counts("itwin.commands").items()}


def test_a_delete_by_id_succeeds(worker, simulator, captured):
    connection = simulator.add_connection(IMODEL, "nightly")
    assert worker.handle(message(action="delete", resource="connection", id=connection["id"])) is Outcome.SUCCEEDED
    assert connection["id"] not in simulator.connections
    assert outcomes(captured) == {("delete connection", "succeeded"): 1}
    assert len(simulator.api_calls()) == 1


def test_a_delete_of_something_already_gone_is_already_done(worker, captured):
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.ALREADY_DONE
    assert worker.handle(message(action="delete", resource="job", id=MISSING)) is Outcome.ALREADY_DONE
    assert outcomes(captured) == {("delete run", "already_done"): 1, ("delete job", "already_done"): 1}


def test_creating_a_connection_is_idempotent_by_imodel_and_name(worker, simulator):
    simulator.add_imodel(IMODEL)
    command = message(action="create", resource="connection", body={"iModelId": IMODEL, "displayName": "nightly"})
    assert worker.handle(command) is Outcome.SUCCEEDED
    assert worker.handle(command) is Outcome.ALREADY_DONE
    assert [c["displayName"] for c in simulator.connections.values()] == ["nightly"]
    assert [r.method for r in simulator.api_calls()] == ["GET", "POST", "GET"]


def test_a_connection_create_for_an_imodel_the_list_does_not_know_lets_the_create_decide(worker, simulator):
    command = message(action="create", resource="connection", body={"iModelId": IMODEL, "displayName": "first"})
    assert worker.handle(command) is Outcome.SUCCEEDED
    assert [(r.method, r.status) for r in simulator.api_calls()] == [("GET", 404), ("POST", 201)]


def test_a_delete_by_imodel_fans_out_one_delete_per_connection(worker, simulator, queues, captured):
    ids = {simulator.add_connection(IMODEL, f"c{i}")["id"] for i in range(3)}
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    command = message(
        action="delete", resource="connection", iModelId=IMODEL, correlationId="evt-1", traceparent=traceparent
    )
    assert worker.handle(command) is Outcome.FANNED_OUT
    fanned = received(queues[COMMAND_QUEUE])
    assert {m["id"] for m in fanned} == ids
    assert all(m["correlationId"] == "evt-1" and TRACE_ID in m["traceparent"] for m in fanned)
    for delete in fanned:
        assert worker.handle(json.dumps(delete)) is Outcome.SUCCEEDED
    assert simulator.connections == {}
    assert outcomes(captured)[("delete connection", "succeeded")] == 3


def test_a_delete_by_an_imodel_without_connections_is_already_done(worker, simulator):
    simulator.add_imodel(IMODEL)
    assert worker.handle(message(action="delete", resource="connection", iModelId=IMODEL)) is Outcome.ALREADY_DONE


def test_an_invalid_message_is_dead_lettered_with_its_envelope_and_no_api_call(worker, simulator, queues, captured):
    raw = b'{"action": "delete", "resource": "job", "id": "not-a-guid"}'
    assert worker.handle(raw) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["message"] == json.loads(raw)
    assert envelope["error"]["code"] == "InvalidCommand"
    assert envelope["error"]["details"][0]["target"] == "id"
    assert envelope["attempts"] == 1
    assert envelope["failedAt"].endswith("Z")
    assert simulator.api_calls() == []
    assert outcomes(captured) == {("invalid", "dead_lettered"): 1}


def test_a_message_that_is_not_json_is_dead_lettered_as_raw_text(worker, queues):
    assert worker.handle(b"\xffnot json") is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["message"].endswith("not json")
    assert envelope["error"]["code"] == "InvalidRequestBody"


def test_a_rate_limited_command_is_rescheduled_no_sooner_than_retry_after(worker, simulator, queues, captured):
    connection = simulator.add_connection(IMODEL, "nightly")
    simulator.fail_next("DELETE", "/export/connections/", 429, headers={"Retry-After": "2"})
    started = time.monotonic()
    assert worker.handle(message(action="delete", resource="connection", id=connection["id"])) is Outcome.RESCHEDULED
    assert received(queues[COMMAND_QUEUE]) == []
    while not (again := received(queues[COMMAND_QUEUE])):
        time.sleep(0.1)
    assert time.monotonic() - started >= 2.0
    assert (again[0]["waits"], again[0].get("attempt", 1)) == (1, 1)  # a wait uses up no attempt
    assert worker.handle(json.dumps(again[0])) is Outcome.SUCCEEDED
    assert outcomes(captured) == {("delete connection", "rescheduled"): 1, ("delete connection", "succeeded"): 1}


def rescheduled_copy(queues) -> dict:
    deadline = time.monotonic() + 12
    while not (found := received(queues[COMMAND_QUEUE])) and time.monotonic() < deadline:
        time.sleep(0.1)
    [copy] = found
    return copy


def test_a_connection_in_use_is_rescheduled_as_a_wait(worker, simulator, queues):
    connection = simulator.add_connection(IMODEL, "busy")
    simulator.set_connection_in_use(connection["id"])
    assert worker.handle(message(action="delete", resource="connection", id=connection["id"])) is Outcome.RESCHEDULED
    copy = rescheduled_copy(queues)
    first_enqueued = copy.pop("firstEnqueued")
    assert copy == {"action": "delete", "resource": "connection", "id": connection["id"], "waits": 1}
    assert first_enqueued.endswith("Z")


def test_waits_never_use_up_attempts(simulator, queues, captured):
    worker = make_worker(simulator, queues, captured, max_attempts=3)
    simulator.fail_next("DELETE", "/clashdetection/runs/", 429, headers={"Retry-After": "1"})
    assert worker.handle(message(action="delete", resource="run", id=MISSING, attempt=3)) is Outcome.RESCHEDULED
    assert received(queues[POISON_QUEUE]) == []


def test_a_command_that_waited_longer_than_its_maximum_age_is_dead_lettered_saying_so(simulator, queues, captured):
    worker = make_worker(simulator, queues, captured, ITWIN_MAX_COMMAND_AGE="1h")
    simulator.fail_next("DELETE", "/clashdetection/runs/", 429, headers={"Retry-After": "1"})
    old = message(action="delete", resource="run", id=MISSING, waits=40, firstEnqueued="2020-01-01T00:00:00Z")
    assert worker.handle(old) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert "on rate limits or a busy resource" in envelope["error"]["message"]
    assert "40 time(s); ITWIN_MAX_COMMAND_AGE is 1 h" in envelope["error"]["message"]


def test_a_token_service_outage_is_rescheduled(worker, simulator, queues):
    simulator.token_service_down = True
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.RESCHEDULED
    assert rescheduled_copy(queues)["attempt"] == 2
    assert simulator.api_calls() == []


def test_a_permission_error_is_dead_lettered_with_the_api_error(simulator, queues, captured):
    worker = make_worker(simulator, queues, captured, ITWIN_SCOPE="not-the-platform")
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["error"]["status"] == 403
    assert envelope["error"]["code"] == "InsufficientPermissions"
    assert envelope["message"] == {"action": "delete", "resource": "run", "id": MISSING}


def test_attempts_are_bounded_and_the_last_failure_is_dead_lettered(simulator, queues, captured):
    worker = make_worker(simulator, queues, captured, max_attempts=3)
    simulator.fail_next("DELETE", "/clashdetection/runs/", 503, times=10)
    raw = message(action="delete", resource="run", id=MISSING, attempt=3)
    assert worker.handle(raw) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["attempts"] == 3
    assert "gave up after 3 attempts" in envelope["error"]["message"]


def test_a_job_create_that_may_have_happened_is_not_repeated(worker, simulator, queues):
    simulator.fail_next("POST", "/contextcapture/jobs", 500)
    body = {
        "type": "Full",
        "name": "Survey",
        "workspaceId": IMODEL,
        "inputs": [{"id": MISSING, "description": "photos"}],
        "settings": {},
    }
    assert worker.handle(message(action="create", resource="job", body=body)) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["error"]["code"] == "CreateOutcomeUnknown"
    assert len(simulator.api_calls()) == 1


def test_the_consumer_span_continues_the_producers_trace(worker, captured):
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    worker.handle(message(action="delete", resource="run", id=MISSING, traceparent=traceparent, correlationId="c-9"))
    [consumer] = [s for s in captured.spans() if s.kind is SpanKind.CONSUMER]
    assert format(consumer.context.trace_id, "032x") == TRACE_ID
    assert consumer.attributes["itwin.outcome"] == "already_done"
    assert consumer.attributes["itwin.correlation_id"] == "c-9"
    [client] = [s for s in captured.spans() if s.kind is SpanKind.CLIENT]
    assert client.parent.span_id == consumer.context.span_id


def test_the_same_create_delivered_twice_at_once_creates_one_connection(worker, simulator):
    simulator.add_imodel(IMODEL)
    command = message(action="create", resource="connection", body={"iModelId": IMODEL, "displayName": "nightly"})
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker.handle, [command] * 8))
    assert sorted(results) == sorted([Outcome.SUCCEEDED] + [Outcome.ALREADY_DONE] * 7)
    assert len(simulator.connections) == 1


def test_an_invalid_message_still_gets_its_consumer_span(worker, captured):
    worker.handle(b"{not json")
    [consumer] = [s for s in captured.spans() if s.kind is SpanKind.CONSUMER]
    assert consumer.attributes["itwin.command"] == "invalid"
    assert consumer.attributes["itwin.outcome"] == "dead_lettered"
    assert consumer.status.status_code.name == "ERROR"


def test_a_submit_refused_because_the_job_is_already_active_is_already_done(worker, simulator):
    job = simulator.add_job(state="active")
    assert worker.handle(message(action="submit", resource="job", id=job["id"])) is Outcome.ALREADY_DONE
    assert [(r.method, r.status) for r in simulator.api_calls()] == [("PATCH", 422), ("GET", 200)]


def test_a_cancel_refused_for_a_finished_job_is_dead_lettered(worker, simulator, queues):
    job = simulator.add_job(state="success")
    assert worker.handle(message(action="cancel", resource="job", id=job["id"])) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["error"]["code"] == "InvalidContextCaptureRequest"


def test_a_403_envelope_tells_the_operator_what_usually_causes_it(simulator, queues, captured):
    worker = make_worker(simulator, queues, captured, ITWIN_SCOPE="not-the-platform")
    worker.handle(message(action="delete", resource="run", id=MISSING))
    [envelope] = received(queues[POISON_QUEUE])
    assert "not a member of the iTwin" in envelope["error"]["message"]


class RecordingSender:
    """The real Azurite queue client, with the visibility delay of each send written down."""

    def __init__(self, client):
        self.client = client
        self.delays: list[int | None] = []

    def send_message(self, content, *, visibility_timeout=None, **kwargs):
        self.delays.append(visibility_timeout)
        return self.client.send_message(content, visibility_timeout=visibility_timeout, **kwargs)


def recording_worker(simulator, queues, captured, **overrides) -> tuple[Worker, RecordingSender]:
    worker = make_worker(simulator, queues, captured, **overrides)
    sender = RecordingSender(queues[COMMAND_QUEUE])
    worker.queue = CommandQueue(sender, queues[POISON_QUEUE])
    return worker, sender


def test_a_delete_by_imodel_never_deletes_another_imodels_connections(make_simulator, queues, captured):
    simulator = make_simulator(default_page_size=2)
    worker = make_worker(simulator, queues, captured)
    mine = {simulator.add_connection(IMODEL, f"mine{i}")["id"] for i in range(3)}
    theirs = {simulator.add_connection(OTHER_IMODEL, f"theirs{i}")["id"] for i in range(3)}

    assert worker.handle(message(action="delete", resource="connection", iModelId=IMODEL)) is Outcome.FANNED_OUT
    fanned = received(queues[COMMAND_QUEUE])
    for delete in fanned:
        worker.handle(json.dumps(delete))

    assert {m["id"] for m in fanned} == mine
    assert set(simulator.connections) == theirs


def test_connections_that_cannot_be_listed_for_a_deleted_imodel_are_reported_not_already_done(worker, captured):
    outcome = worker.handle(message(action="delete", resource="connection", iModelId=IMODEL))
    assert outcome is Outcome.IMODEL_UNAVAILABLE
    assert outcomes(captured) == {("delete connection", "imodel_unavailable"): 1}


def test_the_ids_of_created_jobs_runs_and_connections_are_on_the_span_and_in_the_log(worker, captured, caplog):
    caplog.set_level("INFO", logger="shared.worker")
    worker.handle(message(action="create", resource="job", body=JOB_BODY))
    run = {"testId": "t", "iModelId": IMODEL, "namedVersionId": "v"}
    worker.handle(message(action="create", resource="run", body=run))
    worker.handle(message(action="create", resource="connection", body={"iModelId": IMODEL, "displayName": "n"}))
    consumers = [s for s in captured.spans() if s.kind is SpanKind.CONSUMER]
    created = [(s.attributes["itwin.resource.type"], s.attributes["itwin.resource.id"]) for s in consumers]
    assert [kind for kind, _ in created] == ["job", "run", "connection"]
    for _, resource_id in created:
        assert resource_id in caplog.text


def test_a_poison_envelope_stays_under_the_queue_limit_whatever_the_message_holds(worker, queues):
    # About 60 KB of quotes: every one is escaped again when the envelope quotes the message.
    raw = json.dumps(['"' * 100] * 580, separators=(",", ":"))
    assert worker.handle(raw) is Outcome.DEAD_LETTERED
    [envelope] = received(queues[POISON_QUEUE])
    kept = envelope["message"].removesuffix("…(truncated)")
    assert envelope["message"].endswith("…(truncated)")
    assert raw.startswith(kept)
    assert len(kept) > 20_000
    assert envelope["error"]["code"] == "InvalidCommand"


def test_a_busy_connection_is_redelivered_later_each_time(simulator, queues, captured):
    worker, sender = recording_worker(simulator, queues, captured)
    connection = simulator.add_connection(IMODEL, "busy")
    simulator.set_connection_in_use(connection["id"])
    for attempt in range(1, 8):
        raw = message(action="delete", resource="connection", id=connection["id"], attempt=attempt)
        assert worker.handle(raw) is Outcome.RESCHEDULED
    assert sender.delays == sorted(sender.delays)
    assert sender.delays[-1] >= 160
    assert sum(sender.delays) > 5 * 60


def test_a_503_with_retry_after_is_redelivered_after_that_wait(simulator, queues, captured):
    worker, sender = recording_worker(simulator, queues, captured)
    simulator.fail_next("DELETE", "/clashdetection/runs/", 503, headers={"Retry-After": "120"})
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.RESCHEDULED
    assert sender.delays == [120]


def test_after_a_long_429_the_next_message_goes_back_to_the_queue_at_once_instead_of_sleeping(
    simulator, queues, captured
):
    worker, sender = recording_worker(simulator, queues, captured, ITWIN_MAX_RETRY_AFTER="1h")
    simulator.fail_next("DELETE", "/clashdetection/runs/", 429, headers={"Retry-After": "1800"})
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.RESCHEDULED
    started = time.monotonic()
    assert worker.handle(message(action="delete", resource="run", id="another-run")) is Outcome.RESCHEDULED
    assert time.monotonic() - started < 1.0
    assert sender.delays == [1800, 1800]  # the Retry-After, whatever this process's own pace
    assert len(simulator.api_calls()) == 1


def test_a_command_this_instance_cannot_send_soon_goes_back_visible_at_once_and_the_invocation_stays_busy(
    simulator, queues, captured
):
    worker, sender = recording_worker(simulator, queues, captured)
    lingered: list[float] = []
    worker._sleep = lingered.append
    # The pacer's clock starts on a slot that is also the first of the floor's, where the cut puts this instance.
    clock = ManualClock(1000 * FLOOR_SLOTS / (6.0 * SAFETY))
    pacer = worker.api.client.pacer = Pacer({"clashdetection": 6.0}, clock=clock, monotonic=clock, rand=lambda: 0.0)
    for _ in range(2):
        simulator.fail_next("DELETE", "/clashdetection/runs/", 429, headers={"Retry-After": "1"})
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.RESCHEDULED
    assert pacer.rate("clashdetection") == 6.0  # nothing measured yet: one 429 may be a hiccup
    clock.advance(1.1)
    for _ in range(3):  # other invocations ask meanwhile
        pacer.reserve("clashdetection", limit=0.0)
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.RESCHEDULED
    assert pacer.rate("clashdetection") == 6.0 / FLOOR_SLOTS  # a second, and nothing got through: the floor
    clock.advance(1.1)  # the Retry-After is over; this instance's next slot is three minutes away
    assert worker.handle(message(action="delete", resource="run", id="another-run")) is Outcome.RESCHEDULED
    # Visible at once for an instance that has a slot sooner, and this invocation busy for the time it would
    # have waited, so that its instance does not take the next command it cannot send either.
    assert sender.delays == [1, 1, None]  # None: no visibility delay
    assert len(lingered) == 1
    assert 0.5 < lingered[0] <= WORKER_POLICY.budget
    assert len(simulator.api_calls()) == 2
    # The platform refused nothing: the give-back counts as neither an attempt nor a wait.
    [copy] = [m for m in received(queues[COMMAND_QUEUE]) if m["id"] == "another-run"]
    assert ("attempt" in copy, "waits" in copy) == (False, False)


def test_a_command_that_waited_many_times_backs_off_after_its_first_failure_as_after_a_first_failure(
    simulator, queues, captured
):
    worker, sender = recording_worker(simulator, queues, captured)
    simulator.token_service_down = True
    # Ten waits before (429s): counted in the backoff, its first failure would be its eleventh step, 15 to 30 min.
    assert worker.handle(message(action="delete", resource="run", id=MISSING, waits=10)) is Outcome.RESCHEDULED
    [delay] = sender.delays
    assert delay <= RedeliveryBackoff().base


def test_retry_after_inf_becomes_the_longest_honoured_delay(simulator, queues, captured):
    worker, sender = recording_worker(simulator, queues, captured)
    simulator.fail_next("DELETE", "/clashdetection/runs/", 429, headers={"Retry-After": "inf"})
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.RESCHEDULED
    assert sender.delays == [15 * 60]  # ITWIN_MAX_RETRY_AFTER's default


def test_dead_letters_and_rescheduled_commands_never_expire(worker, simulator, queues):
    simulator.fail_next("DELETE", "/clashdetection/runs/", 429, headers={"Retry-After": "1"})
    assert worker.handle(message(action="delete", resource="run", id=MISSING)) is Outcome.RESCHEDULED
    assert worker.handle(b"{not json") is Outcome.DEAD_LETTERED
    time.sleep(1.2)
    [rescheduled] = queues[COMMAND_QUEUE].receive_messages(visibility_timeout=1)
    [dead] = queues[POISON_QUEUE].receive_messages(visibility_timeout=1)
    # The default time-to-live is 7 days; "never" is reported as the end of the year 9999.
    assert rescheduled.expires_on.year == dead.expires_on.year == 9999


def test_a_run_create_without_a_ledger_row_whose_answer_was_lost_is_not_guessed_at(simulator, queues, captured):
    # GIVEN a run create put on the queue without a commandId, so no ledger row holds what existed before it
    worker = make_worker(simulator, queues, captured)
    worker.api.client._timeout = (2.0, 0.5)
    simulator.stall_next("POST", "/clashdetection/runs", 1.0)  # carried out, answered after the client gave up
    body = {"testId": "t-lost", "iModelId": IMODEL, "namedVersionId": "v-1"}
    command = message(action="create", resource="run", projectId=simulator.itwin_id, body=body)
    assert worker.handle(command) is Outcome.RESCHEDULED
    again = rescheduled_copy(queues)
    assert again["lookUp"] is True
    # WHEN its next delivery finds a matching run THEN it cannot tell that run from an older one: dead letter, no POST
    assert worker.handle(json.dumps(again)) is Outcome.DEAD_LETTERED
    assert len(simulator.runs) == 1
    assert [r.method for r in simulator.api_calls()] == ["POST", "GET"]
    [envelope] = received(queues[POISON_QUEUE])
    assert envelope["error"]["code"] == "CreateOutcomeUnknown"
    assert "no list of the runs that existed before it" in envelope["error"]["message"]

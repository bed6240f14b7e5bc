"""The app as an operator sees it in Azure: its exported telemetry, its memory, its invocation times.

GIVEN the real app under ``python -m sandbox.host`` in a child process that exports its OpenTelemetry through
azure-monitor-opentelemetry, as the Python worker does in Azure, to an Application Insights stand-in on loopback
(`sandbox.ingestion`), with Azurite and the simulator,
WHEN a scripted stretch of operations runs through it: ordinary traffic, the same with 20% of API calls failing,
webhook deliveries (good, repeated, forged, malformed), an IMS outage, and the service application losing its
access (403) and its credentials (401),
THEN the app's process stays within half the smallest Flex Consumption instance, every workbook panel finds its
data in what Application Insights receives, each alert's condition holds over its incident and not over ordinary
traffic, and the figures docs/deployment.md quotes are printed: peak memory, invocation times, and the cost per
million commands at each instance size.

CI: 6 commands of each kind per traffic phase; ``SOAK=1``: 60. With ``TELEMETRY_EXPORT=<dir>`` the telemetry
received and the figures are written there (`make workbook-pictures` draws them).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from fault_plan import FAULTS, Planned, plan_commands
from host_process import HostProcess
from pycep import BicepParser
from reliability_kit import (
    REPO_ROOT,
    app_environment,
    fast_host_json,
    new_id,
    queue_length,
    read_all,
    size,
    wait_until,
)
from test_reliability_webhooks import CREATED, DELETED, SECRET, event

from observability import panels
from observability.costs import INSTANCE_MEMORY_MB, Interval, cost_per_million_commands
from observability.tables import custom_metrics, dependencies
from sandbox.azurite import Azurite, app_queues
from sandbox.ingestion import IngestionSink
from sandbox.itwin_platform import Faults, Simulator
from shared.commands import MAX_BATCH
from shared.outcomes import FINAL_OUTCOMES
from shared.settings import COMMAND_QUEUE, POISON_QUEUE
from shared.signature import sign

pytestmark = pytest.mark.integration

PER_KIND = size(ci=6, soak=60)
WEBHOOKS = size(ci=6, soak=40)
OUTAGE_COMMANDS = size(ci=4, soak=20)
FORBIDDEN_COMMANDS = size(ci=4, soak=10)
UNAUTHORIZED_COMMANDS = size(ci=3, soak=6)
TOKEN_LIFETIME = 4.0  # seconds: tokens are renewed every 2 s, so an IMS outage shows within seconds
OUTAGE_SECONDS = 4.0
# Half the smallest Flex Consumption instance (512 MB): the other half is for the Functions host, which cannot run
# here (Core Tools cannot be installed) and is not measured.
MEMORY_CEILING_MB = 256
EXPORT_INTERVAL_MS = 1000
DEADLINE = 1200.0 if os.environ.get("SOAK") else 300.0
FINAL = tuple(sorted(FINAL_OUTCOMES))
EXECUTED = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO sandbox\.host: Executed '(?P<function>\w+)' "
    r"\((?P<status>Succeeded|Failed), .*?(?P<ms>\d+) ms\)"
)
ALERTS = REPO_ROOT / "infra" / "modules" / "alerts.bicep"


@dataclass
class Phase:
    name: str
    started: datetime
    ended: datetime | None = None
    commands: int = 0  # commands sent (a delete by iModel counts once)


@dataclass(frozen=True)
class Invocation:
    function: str
    started: datetime
    ended: datetime


@dataclass
class OperationsRun:
    """What the run left behind."""

    items: list[dict[str, Any]]
    envelopes: list[Any]
    phases: list[Phase]
    invocations: list[Invocation]
    rss_after_start_mb: float
    peak_rss_mb: float
    outcomes: list[tuple[str, str]] = field(default_factory=list)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def during(self, name: str) -> list[Invocation]:
        phase = self.phase(name)
        return [i for i in self.invocations if phase.started <= i.started and i.ended <= (phase.ended or i.ended)]


def _memory_mb(pid: int, field_name: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, from /proc, in MB."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    kilobytes = int(re.search(rf"^{field_name}:\s+(\d+) kB", status, re.M).group(1))
    return kilobytes / 1024


def _invocations(lines: list[str]) -> list[Invocation]:
    found = []
    for line in lines:
        match = EXECUTED.match(line)
        if match:
            ended = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f")
            found.append(Invocation(match["function"], ended - timedelta(milliseconds=int(match["ms"])), ended))
    return found


class Operator:
    """Sends traffic to the host and waits for it to settle, phase by phase."""

    def __init__(self, host: HostProcess, simulator: Simulator, queues: dict[str, Any]) -> None:
        self.host = host
        self.simulator = simulator
        self.queues = queues
        self.phases: list[Phase] = []
        self._expected: Counter[str] = Counter()  # final outcomes expected per correlationId

    def begin(self, name: str) -> Phase:
        time.sleep(2 * EXPORT_INTERVAL_MS / 1000)  # a quiet gap, so that no exported point spans two phases
        self.phases.append(Phase(name, datetime.now()))
        return self.phases[-1]

    def send(self, phase: Phase, commands: list[dict[str, Any]], finals: list[int]) -> None:
        """Half through ``POST /api/commands`` in batches, half straight onto the queue."""
        for n, (command, expected) in enumerate(zip(commands, finals, strict=True)):
            command["correlationId"] = f"{phase.name}-{n:04d}"
            self._expected[command["correlationId"]] += expected
        phase.commands += len(commands)
        over_http, direct = commands[::2], commands[1::2]
        for start in range(0, len(over_http), MAX_BATCH):
            batch = over_http[start : start + MAX_BATCH]
            reply = requests.post(f"{self.host.url}/api/commands", json=batch, timeout=60)
            assert (reply.status_code, reply.json()["accepted"]) == (202, len(batch))
        for command in direct:
            self.queues[COMMAND_QUEUE].send_message(json.dumps(command))

    def deliver(self, body: bytes, signature: str | None, finals: int, message_id: str | None = None) -> int:
        if message_id is not None:
            self._expected[message_id] += finals
        headers = {"Signature": signature} if signature is not None else {}
        return requests.post(f"{self.host.url}/api/webhooks/itwin", data=body, headers=headers, timeout=30).status_code

    def settle(self, phase: Phase) -> None:
        def settled() -> bool:
            finals = Counter(key for key, outcome in self.host.outcomes() if outcome in FINAL)
            done = all(finals[key] >= n for key, n in self._expected.items())
            return done and queue_length(self.queues[COMMAND_QUEUE]) == 0

        def pending() -> str:
            outcomes: dict[str, list[str]] = {}
            for key, outcome in self.host.outcomes():
                outcomes.setdefault(key, []).append(outcome)
            short = {
                key: outcomes.get(key, [])
                for key, n in self._expected.items()
                if sum(o in FINAL for o in outcomes.get(key, [])) < n
            }
            recent = [line for line in list(self.host.lines)[-4000:] if any(key in line for key in short)][-20:]
            return (
                f"queue length {queue_length(self.queues[COMMAND_QUEUE])}; short of their final outcomes: {short}\n"
                + "\n".join(recent)
            )

        wait_until(settled, DEADLINE, f"the {phase.name} phase to settle", interval=0.25, describe=pending)
        phase.ended = datetime.now()


def _webhook_traffic(operator: Operator, simulator: Simulator, count: int) -> None:
    """Good deliveries (half iModelDeleted with one connection, half iModelCreated), a repeat of every third,
    and as many forged and malformed ones as there are repeats."""
    for n in range(count):
        message_id = f"webhooks-{n:04d}"
        imodel = new_id()
        if n % 2:
            body = event(CREATED, message_id, imodelId=imodel)
        else:
            simulator.add_connection(imodel, "exported")
            body = event(DELETED, message_id, imodelId=imodel)
        assert operator.deliver(body, sign(body, SECRET), 1, message_id) == 202
        if n % 3 == 0:
            assert operator.deliver(body, sign(body, SECRET), 0) == 202
            assert operator.deliver(body, sign(body, "not-the-webhook-secret"), 0) == 401
            malformed = event(DELETED, f"malformed-{n:04d}")
            assert operator.deliver(malformed, sign(malformed, SECRET), 0) == 400


def _planned(simulator: Simulator) -> tuple[list[dict[str, Any]], list[int]]:
    planned: list[Planned] = plan_commands(simulator, PER_KIND)
    return [p.message for p in planned], [len(p.children) or 1 for p in planned]


@pytest.fixture(scope="module")
def run(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> OperationsRun:
    queues = app_queues(azurite.connection_string)
    workdir = tmp_path_factory.mktemp("operations")
    with IngestionSink() as sink, Simulator(token_lifetime=TOKEN_LIFETIME) as simulator:
        environ = {
            **os.environ,
            **app_environment(
                simulator,
                azurite.connection_string,
                ITWIN_WEBHOOK_SECRET=SECRET,
                ITWIN_EXPORT_CONNECTION_NAME="nightly",
            ),
            "REQUESTS_CA_BUNDLE": simulator.ca_path,
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
            "APPLICATIONINSIGHTS_CONNECTION_STRING": sink.connection_string,
            "OTEL_METRIC_EXPORT_INTERVAL": str(EXPORT_INTERVAL_MS),
            "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_INTERVAL_MS),
            # azure-monitor-opentelemetry samples 5 traces per second by default; keep every span here, so that
            # the latency panel has each operation (metrics, which the alerts use, are never sampled).
            "OTEL_TRACES_SAMPLER": "always_on",
        }
        host = HostProcess(environ, fast_host_json(workdir), workdir / "no-local.settings.json")
        try:
            rss_after_start = _memory_mb(host.process.pid, "VmRSS")
            operator = Operator(host, simulator, queues)

            phase = operator.begin("steady")
            operator.send(phase, *_planned(simulator))
            operator.settle(phase)

            phase = operator.begin("faults")
            simulator.faults = FAULTS
            operator.send(phase, *_planned(simulator))
            _webhook_traffic(operator, simulator, WEBHOOKS)
            operator.settle(phase)
            simulator.faults = Faults()

            phase = operator.begin("ims-outage")
            simulator.token_service_down = True
            runs = [
                {"action": "delete", "resource": "run", "id": simulator.add_run()["id"]} for _ in range(OUTAGE_COMMANDS)
            ]
            operator.send(phase, runs, [1] * len(runs))
            time.sleep(OUTAGE_SECONDS)
            simulator.token_service_down = False
            operator.settle(phase)

            phase = operator.begin("access-lost")
            simulator.fail_next("*", "/contextcapture/jobs/", 403, times=FORBIDDEN_COMMANDS)
            simulator.fail_next("*", "/clashdetection/runs/", 401, times=2 * UNAUTHORIZED_COMMANDS)
            jobs = [
                {"action": "delete", "resource": "job", "id": simulator.add_job()["id"]}
                for _ in range(FORBIDDEN_COMMANDS)
            ]
            runs = [
                {"action": "delete", "resource": "run", "id": simulator.add_run()["id"]}
                for _ in range(UNAUTHORIZED_COMMANDS)
            ]
            operator.send(phase, jobs + runs, [1] * (len(jobs) + len(runs)))
            operator.settle(phase)

            peak = _memory_mb(host.process.pid, "VmHWM")
        finally:
            assert host.stop() == 0, "".join(host.lines[-30:])
        # The host flushes its telemetry when it exits; the sink has it all now.
        result = OperationsRun(
            items=sink.items(),
            envelopes=read_all(queues[POISON_QUEUE]),
            phases=operator.phases,
            invocations=_invocations(host.lines),
            rss_after_start_mb=rss_after_start,
            peak_rss_mb=peak,
            outcomes=host.outcomes(),
        )
    for client in queues.values():
        client.clear_messages()
        client.close()
    _export(result)
    return result


def _figures(run: OperationsRun) -> dict[str, Any]:
    steady = run.during("steady")
    commands = run.phase("steady").commands
    by_function: dict[str, list[float]] = {}
    for invocation in steady:
        by_function.setdefault(invocation.function, []).append(
            (invocation.ended - invocation.started).total_seconds() * 1000
        )
    origin = min(i.started for i in steady)
    intervals = [Interval((i.started - origin).total_seconds(), (i.ended - origin).total_seconds()) for i in steady]
    return {
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "rss_after_start_mb": round(run.rss_after_start_mb, 1),
        "steady_commands": commands,
        "steady_invocations": len(steady),
        "durations_ms": {
            name: {
                "count": len(values),
                "p50": panels.percentile(values, 50),
                "p95": panels.percentile(values, 95),
                "max": max(values),
            }
            for name, values in sorted(by_function.items())
        },
        "cost_per_million_commands_usd": [
            asdict(cost_per_million_commands(intervals, commands, size)) for size in INSTANCE_MEMORY_MB
        ],
    }


def _export(run: OperationsRun) -> None:
    target = os.environ.get("TELEMETRY_EXPORT")
    if not target:
        return
    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in run.items), encoding="utf-8")
    summary = {
        "phases": [
            {"name": p.name, "started": p.started.isoformat(), "ended": p.ended.isoformat(), "commands": p.commands}
            for p in run.phases
        ],
        "figures": _figures(run),
        "soak": bool(os.environ.get("SOAK")),
    }
    (folder / "run.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _threshold(variable: str) -> float:
    return BicepParser().parse(file_path=ALERTS)["variables"][variable]["value"]


def _metrics_during(run: OperationsRun, name: str) -> list[Any]:
    phase = run.phase(name)
    start, end = phase.started.astimezone(), (phase.ended or datetime.now()).astimezone()
    return [row for row in custom_metrics(run.items) if start <= row.timestamp < end + timedelta(seconds=1)]


def test_the_apps_process_stays_within_half_the_smallest_flex_instance(run: OperationsRun):
    figures = _figures(run)
    print(f"\noperations: {json.dumps(figures)}")

    assert run.rss_after_start_mb < run.peak_rss_mb <= MEMORY_CEILING_MB


def test_every_workbook_panel_finds_its_data_in_what_application_insights_receives(run: OperationsRun):
    metrics = custom_metrics(run.items)
    grain = timedelta(seconds=5)

    outcomes = panels.commands_by_outcome(metrics, grain)
    errors = {(op, code, status) for op, code, status, _ in panels.client_errors(metrics)}
    latency = panels.api_latency(dependencies(run.items))
    webhooks = panels.webhook_deliveries(metrics, grain)

    assert {"succeeded", "rescheduled", "fanned_out", "dead_lettered"} <= set(outcomes)
    assert ("jobs.delete", "InsufficientPermissions", "403") in errors
    assert any(status == "401" and op == "runs.delete" for op, _, status in errors)
    assert any(status == "404" for _, _, status in errors)
    assert panels.dead_letters(metrics)
    assert len(latency) >= 8, [lat.operation for lat in latency]
    assert panels.token_failures(metrics, grain)
    assert {"accepted", "duplicate", "refused: InvalidSignature", "refused: InvalidCommand"} <= set(webhooks)


def test_request_durations_reach_application_insights_as_a_standard_metric_not_as_custom_metrics(run: OperationsRun):
    # Why the latency panel reads `dependencies`: the exporter maps http.client.request.duration to the standard
    # metric dependencies/duration and drops its attributes.
    names = {row.name for row in custom_metrics(run.items)}
    standard = [
        item["data"]["baseData"]["properties"]
        for item in run.items
        if item.get("name") == "Microsoft.ApplicationInsights.Metric"
        and item["data"]["baseData"]["metrics"][0]["name"] == "http.client.request.duration"
    ]

    assert {"itwin.commands", "itwin.api.client_errors", "itwin.token.failures", "itwin.webhook.deliveries"} <= names
    assert "http.client.request.duration" not in names
    assert standard
    assert all(p.get("_MS.MetricId") == "dependencies/duration" and "itwin.operation" not in p for p in standard)


def test_each_alert_holds_over_its_incident_and_not_over_ordinary_traffic(run: OperationsRun):
    credentials = _threshold("credentialErrorsThreshold")
    tokens = _threshold("tokenFailuresThreshold")
    steady = _metrics_during(run, "steady")

    assert panels.dead_letters_alert(_metrics_during(run, "access-lost")).fires
    assert panels.credential_errors_alert(_metrics_during(run, "access-lost"), credentials).fires
    assert panels.token_failures_alert(_metrics_during(run, "ims-outage"), tokens).fires
    assert not panels.dead_letters_alert(steady).fires
    assert not panels.credential_errors_alert(steady, credentials).fires
    assert not panels.token_failures_alert(steady, tokens).fires


def test_the_dead_letters_the_workbook_shows_are_the_poison_queues_by_error_code(run: OperationsRun):
    shown: Counter[str] = Counter()
    for code, _, count in panels.dead_letters(custom_metrics(run.items)):
        shown[code] += int(count)

    assert shown == Counter(envelope["error"]["code"] for envelope in run.envelopes)
    assert {"InsufficientPermissions", "InvalidToken"} <= set(shown)

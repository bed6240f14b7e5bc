"""What the benchmarks run the worker with: an in-memory queue, the OpenTelemetry SDK set up as in production
(exporting nowhere), and the simulator in a child process.

Nothing here imports the simulator's package, trustme or cryptography: the measuring process stays as small as
the worker's own process would be until the memory figure is taken.
"""

from __future__ import annotations

import heapq
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from shared.client import ITwinClient
from shared.ledger import Ledger
from shared.queues import CommandQueue
from shared.resources import ITwinApi
from shared.runtime import WORKER_POLICY
from shared.settings import Settings
from shared.telemetry import Telemetry
from shared.worker import Worker

REPO = Path(__file__).resolve().parent.parent
METRIC_EXPORT_INTERVAL_MS = 1000  # export often, so exports fall inside the measured time


# -- the queue --------------------------------------------------------------------------------------------------
class MemoryQueue:
    """A queue sender and receiver in memory that honours visibility delays, like a storage queue would.

    ``send_message`` is what `shared.queues.CommandQueue` calls. ``receive`` hands out the next visible message
    and counts it in flight until ``done``; ``drained`` is true when nothing is queued or in flight.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._clock = clock
        self.sent = 0
        self.delayed = 0

    def send_message(self, content: Any, *, visibility_timeout: int | None = None, **_: Any) -> None:
        visible_at = self._clock() + (visibility_timeout or 0)
        with self._cond:
            heapq.heappush(self._heap, (visible_at, next(self._seq), content))
            self.sent += 1
            if visibility_timeout:
                self.delayed += 1
            self._cond.notify()

    def receive(self) -> str | None:
        """The next visible message, waiting for one; None once the queue is drained."""
        with self._cond:
            while True:
                if self._heap:
                    wait = self._heap[0][0] - self._clock()
                    if wait <= 0:
                        self._in_flight += 1
                        return heapq.heappop(self._heap)[2]
                elif self._in_flight == 0:
                    self._cond.notify_all()
                    return None
                else:
                    wait = None
                self._cond.wait(wait)

    def done(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)


def drain(queue: MemoryQueue, worker: Worker, threads: int) -> dict[str, int]:
    """Process ``queue`` with ``threads`` threads, started together, until it is drained; outcomes by value."""
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(threads)  # every thread asks for its first message at once

    def run() -> None:
        start.wait()
        while (raw := queue.receive()) is not None:
            try:
                outcome = worker.handle(raw)
            finally:
                queue.done()
            with lock:
                outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1

    pool = [threading.Thread(target=run, name=f"bench-worker-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return outcomes


# -- OpenTelemetry as in production, exporting nowhere --------------------------------------------------------
class NullSpanExporter(SpanExporter):
    """Counts the spans the BatchSpanProcessor hands over and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class NullMetricExporter(MetricExporter):
    """Counts the exports the PeriodicExportingMetricReader makes and drops the data."""

    def __init__(self) -> None:
        super().__init__(preferred_temporality={}, preferred_aggregation={})
        self.exports = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **_: Any) -> MetricExportResult:
        self.exports += 1
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        pass


@dataclass
class Otel:
    """An SDK MeterProvider (PeriodicExportingMetricReader) and TracerProvider (BatchSpanProcessor)."""

    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    spans: NullSpanExporter
    metrics: NullMetricExporter
    telemetry: Telemetry

    @classmethod
    def production_like(cls) -> Otel:
        metrics = NullMetricExporter()
        reader = PeriodicExportingMetricReader(metrics, export_interval_millis=METRIC_EXPORT_INTERVAL_MS)
        meter_provider = MeterProvider(metric_readers=[reader])
        spans = NullSpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(spans))
        return cls(meter_provider, tracer_provider, spans, metrics, Telemetry(meter_provider, tracer_provider))

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def make_worker(
    env: Mapping[str, str],
    telemetry: Telemetry,
    queue: MemoryQueue,
    poison: MemoryQueue | None = None,
    ledger: Ledger | None = None,
    pacer: Any = None,
) -> Worker:
    """The worker as `shared.runtime.worker` builds it, on the given settings, telemetry and in-memory queue, and
    with the command ledger and the pacer (a `shared.schedule.SharedPacer`) when given."""
    settings = Settings.from_env(dict(env))
    client = ITwinClient(settings, telemetry=telemetry, policy=WORKER_POLICY, pacer=pacer)
    commands = CommandQueue(queue, poison if poison is not None else MemoryQueue())
    return Worker(ITwinApi(client), commands, telemetry, max_attempts=settings.max_attempts, ledger=ledger)


# -- the simulator in its own process -------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildSimulator:
    url: str
    ca_path: str
    client_id: str
    client_secret: str

    def settings(self, **extra: str) -> dict[str, str]:
        return simulator_settings(self, **extra)


def simulator_settings(simulator: Any, **extra: str) -> dict[str, str]:
    """The ITWIN_* settings pointing at a simulator (in this process or a child), plus ``extra``."""
    return {
        "ITWIN_CLIENT_ID": simulator.client_id,
        "ITWIN_CLIENT_SECRET": simulator.client_secret,
        "ITWIN_AUTHORITY": simulator.url,
        "ITWIN_API_URL": simulator.url,
        **extra,
    }


@contextmanager
def child_simulator(*rate_limits: str, start_timeout: float = 60.0) -> Iterator[ChildSimulator]:
    """``python -m sandbox`` on a free loopback port, stopped (SIGTERM) on exit."""
    with tempfile.TemporaryDirectory(prefix="itwin-bench-") as tmp:
        ca_out = Path(tmp) / "ca.pem"
        command = [sys.executable, "-m", "sandbox", "--port", "0", "--ca-out", str(ca_out)]
        for limit in rate_limits:
            command += ["--rate-limit", limit]
        errors = (Path(tmp) / "stderr.txt").open("w+", encoding="utf-8")  # a file: a full pipe would block it
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        try:
            printed: dict[str, str] = {}
            deadline = time.monotonic() + start_timeout
            assert process.stdout is not None
            while "REQUESTS_CA_BUNDLE" not in printed:
                line = process.stdout.readline()
                if not line or time.monotonic() > deadline:
                    errors.seek(0)
                    raise RuntimeError(f"python -m sandbox did not start: {errors.read()}")
                name, sep, value = line.strip().partition("=")
                if sep and name.isupper():
                    printed[name] = value
            yield ChildSimulator(
                url=printed["ITWIN_API_URL"],
                ca_path=printed["REQUESTS_CA_BUNDLE"],
                client_id=printed["ITWIN_CLIENT_ID"],
                client_secret=printed["ITWIN_CLIENT_SECRET"],
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            errors.close()


@contextmanager
def ca_bundle(path: str) -> Iterator[None]:
    """Point REQUESTS_CA_BUNDLE (set globally on these machines; it overrides Session.verify) at ``path``."""
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous

"""In-memory OpenTelemetry SDK readers, so tests assert on the metrics and spans the code records."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry import Telemetry


class Captured:
    """A `Telemetry` wired to in-memory readers, with helpers to read back what was recorded."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.spans_exporter = InMemorySpanExporter()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_exporter))
        self.telemetry = Telemetry(self.meter_provider, self.tracer_provider)

    def points(self, name: str) -> list[Any]:
        """Every data point of the metric ``name`` recorded so far (cumulative)."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def counts(self, name: str) -> dict[tuple[tuple[str, Any], ...], int]:
        """A counter's values keyed by its sorted attribute items."""
        return {tuple(sorted(p.attributes.items())): p.value for p in self.points(name)}

    def spans(self) -> list[Any]:
        return list(self.spans_exporter.get_finished_spans())

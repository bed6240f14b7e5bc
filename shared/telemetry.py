"""OpenTelemetry instruments, created once. Only the API is used here: the SDK and exporters are configured by
the Functions host in Azure (Application Insights) and by the tests (in-memory readers)."""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.propagate import inject
from opentelemetry.trace import TracerProvider

from shared import __version__

INSTRUMENTATION_NAME = "itwin_event_sync"
# Semantic-convention buckets for http.client.request.duration, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class Telemetry:
    """The project's meter, tracer and instruments. Pass providers in tests; production uses the globals."""

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider=meter_provider)
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider)
        self.client_errors = meter.create_counter(
            "itwin.api.client_errors",
            unit="{response}",
            description="iTwin Platform responses with a 4xx status.",
        )
        self.request_duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of each HTTP request attempt to the iTwin Platform.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.commands = meter.create_counter(
            "itwin.commands",
            unit="{command}",
            description="Queue commands by final outcome of this delivery.",
        )
        self.webhook_deliveries = meter.create_counter(
            "itwin.webhook.deliveries",
            unit="{delivery}",
            description="Webhook deliveries by what the receiver did with them: accepted, duplicate or refused.",
        )
        self.token_failures = meter.create_counter(
            "itwin.token.failures",
            unit="{request}",
            description="Service token requests that failed, by the TokenError code.",
        )
        self.pacing_fallbacks = meter.create_counter(
            "itwin.pacing.fallbacks",
            unit="{fallback}",
            description="Times an instance's shared pacing schedule failed and the instance paced its calls by itself.",
        )


_default: Telemetry | None = None


def default_telemetry() -> Telemetry:
    """The process-wide instruments, bound to the global providers (proxies until an SDK is installed)."""
    global _default
    if _default is None:
        _default = Telemetry()
    return _default


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to carry a trace across the queue (None outside a trace)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")

"""OpenTelemetry export for the local host, as the Azure Functions Python worker does it."""

from __future__ import annotations

from collections.abc import MutableMapping


def configure_telemetry(environ: MutableMapping[str, str]) -> bool:
    """Export the app's OpenTelemetry as the Azure Functions Python worker does: through azure-monitor-opentelemetry
    when ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`` is true and ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is
    set (in a test, pointing at `sandbox.ingestion.IngestionSink`). Live metrics, the exporter's own usage statistics,
    its remote configuration and its offline storage stay off: they would reach Microsoft endpoints or write to disk.
    Returns whether it did."""
    enabled = environ.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "").strip().lower() == "true"
    connection_string = environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
    if not (enabled and connection_string):
        return False
    for switch in (
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED",
        "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED",
    ):
        environ.setdefault(switch, "true")
    from azure.monitor.opentelemetry import configure_azure_monitor  # heavy: only when asked for

    configure_azure_monitor(
        connection_string=connection_string, enable_live_metrics=False, disable_offline_storage=True
    )
    return True

"""Telemetry authenticates as the app's identity: Application Insights has local authentication off, so an exporter
without a Microsoft Entra credential would have every span, metric and log refused.

Nothing in the app passes a credential. With PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true the Python worker calls
`configure_azure_monitor(connection_string=..., logger_name=...)` and nothing else (azure-functions-runtime,
otel.py `initialize_azure_monitor`); each exporter then builds a ManagedIdentityCredential from
APPLICATIONINSIGHTS_AUTHENTICATION_STRING by itself, which azure-monitor-opentelemetry-exporter does from 1.0.0b36
on (requirements.txt says how that floor was found). Here the installed packages are configured as in Azure, in a
child process (the distro sets process-wide providers), and the exporters it built are inspected; no token is
asked for and nothing is sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLIENT_ID = "5b1a9a4e-0c4d-4b7e-9a53-2f0d6c1e8b27"
# The form of the connection string Application Insights hands out; nothing is sent to it.
CONNECTION_STRING = (
    "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
    "IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;"
    "LiveEndpoint=https://westeurope.livediagnostics.monitor.azure.com/;"
    "ApplicationId=00000000-0000-0000-0000-000000000001"
)

# Configures Azure Monitor as the worker does, then reports each exporter it built and the identity its credential
# names. Live metrics stay off (the distro turns them on by default, and they would call the live endpoint at once).
PROBE = """
import gc, json, os
from azure.monitor.opentelemetry import configure_azure_monitor
from azure.monitor.opentelemetry.exporter import (
    AzureMonitorLogExporter, AzureMonitorMetricExporter, AzureMonitorTraceExporter,
)

configure_azure_monitor(
    connection_string=os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"],
    logger_name="function_app",
    enable_live_metrics=False,
)
kinds = (AzureMonitorTraceExporter, AzureMonitorMetricExporter, AzureMonitorLogExporter)
found = []
for exporter in [o for o in gc.get_objects() if isinstance(o, kinds)]:
    credential = exporter._credential
    inner = getattr(credential, "_credential", None)
    found.append({
        "exporter": type(exporter).__name__,
        "credential": type(credential).__name__,
        "identity": dict(inner.get_managed_identity()) if inner is not None else None,
    })
print(json.dumps(found))
"""


def _authentication_string(app_settings: dict[str, Any], client_id: str) -> str:
    """The deployed APPLICATIONINSIGHTS_AUTHENTICATION_STRING with the identity's client id filled in."""
    return app_settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].replace("${identity.outputs.clientId}", client_id)


def _configured_exporters(tmp_path: Path, authentication_string: str | None) -> list[dict[str, Any]]:
    """What the probe reports, with APPLICATIONINSIGHTS_AUTHENTICATION_STRING set to ``authentication_string``
    (absent when None)."""
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("APPLICATIONINSIGHTS_")},
        "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION_STRING,
        # What Flex Consumption sets for managed identity; the credential would ask this address for tokens.
        "IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token",
        "IDENTITY_HEADER": "not-a-real-header",
        # The exporter's usage statistics and remote configuration would call Microsoft endpoints.
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
        "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
        # Offline storage goes under the temporary directory.
        "TMPDIR": str(tmp_path),
    }
    if authentication_string is not None:
        environment["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] = authentication_string
    completed = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_deployed_authentication_string_names_the_apps_identity_for_entra_authentication(app_settings):
    assert _authentication_string(app_settings, CLIENT_ID) == f"Authorization=AAD;ClientId={CLIENT_ID}"


def test_every_exporter_the_worker_configures_carries_a_managed_identity_credential_for_the_apps_client_id(
    app_settings, tmp_path: Path
):
    # GIVEN the app settings the template deploys  WHEN Azure Monitor is configured as the worker configures it
    exporters = _configured_exporters(tmp_path, _authentication_string(app_settings, CLIENT_ID))

    # THEN the trace, metric and log exporters each authenticate as the user-assigned identity
    assert {exporter["exporter"] for exporter in exporters} == {
        "AzureMonitorTraceExporter",
        "AzureMonitorMetricExporter",
        "AzureMonitorLogExporter",
    }
    for exporter in exporters:
        assert exporter["credential"] == "ManagedIdentityCredential", exporter
        assert exporter["identity"] == {"ManagedIdentityIdType": "ClientId", "Id": CLIENT_ID}, exporter


def test_the_inspection_finds_no_credential_when_the_setting_is_absent(tmp_path: Path):
    # The check above is not vacuous: without the setting, the same exporters carry no credential at all.
    exporters = _configured_exporters(tmp_path, authentication_string=None)

    assert len(exporters) == 3
    assert {exporter["credential"] for exporter in exporters} == {"NoneType"}

"""How long the tool tries to reach storage and the iTwin Platform, and what it says when it cannot.

The Azure SDKs' defaults suit a service that must not give up: the queue client repeats a refused connection three
times over about 80 s (backoffs of 15 s plus 3^n), the table client ten times. The operator at a terminal wants
to know within seconds, and what to check. So the tool's clients try to connect twice: a connection gets
`CONNECT_TIMEOUT` seconds, a read `READ_TIMEOUT` (a Table Storage query may take 5 s before its first row), with
about a second between; an error answer or a dropped read is tried up to four times.
Storage that refuses connections is reported in about 2 s; one that drops them (a firewall) in under 8 s.
The iTwin Platform calls go through the app's client with `API_POLICY`: three attempts within 6 s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ops.errors import OpsError
from shared.retry import RetryPolicy

CONNECT_TIMEOUT = 3  # seconds, per attempt
READ_TIMEOUT = 10  # seconds without a byte, per attempt
API_POLICY = RetryPolicy(max_attempts=3, budget=6.0)

_TIMEOUTS = {"connection_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}
# A connection that cannot be made is tried twice; a storage error or a dropped answer (a long replay meets some)
# up to four times, as those come and go.
_RETRIES = {"retry_total": 3, "retry_connect": 1}
# azure-storage-queue's ExponentialRetry: a backoff of initial_backoff + increment_base^n, ± random_jitter_range.
QUEUE_OPTIONS: Mapping[str, Any] = {
    **_RETRIES,
    "initial_backoff": 0,
    "increment_base": 1,
    "random_jitter_range": 0.5,
    **_TIMEOUTS,
}
# azure-data-tables' retry (azure-core's): backoff_factor * 2^(n-1), the first repeat at once.
TABLE_OPTIONS: Mapping[str, Any] = {**_RETRIES, "retry_backoff_factor": 1.0, "retry_backoff_max": 2, **_TIMEOUTS}

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SIMULATOR = "a loopback address is the local simulator: start it with `make dev`"


def _local(url: str) -> bool:
    return urlsplit(url).hostname in _LOOPBACK


def api_unreachable(api_url: str, what: str, where: str) -> OpsError:
    """The iTwin Platform API did not answer (``what``: the client's words): check the URL, the network."""
    hint = _SIMULATOR if _local(api_url) else "and that this machine can reach it (proxy, firewall)"
    return OpsError(
        f"cannot reach the iTwin Platform API at {api_url} ({what}): check ITWIN_API_URL in {where}, {hint}"
    )


def token_service_unreachable(authority: str, what: str) -> OpsError:
    """The token service did not answer (``what``: the client's words, which name ITWIN_AUTHORITY)."""
    hint = f"; {_SIMULATOR}" if _local(authority) else ""
    return OpsError(f"{what.rstrip('.')}{hint}")


def check_ca_bundle(path: str | None, source: str, remedy: str) -> None:
    """Raise `OpsError` when ``path`` (the CA file TLS is to trust, named by ``source``) does not exist.

    requests would fail later with "Could not find a suitable TLS CA certificate bundle"; the usual cause here is
    `make dev` stopped: its simulator's CA file goes with it, and its settings file still names it.
    """
    if not path or Path(path).is_file():
        return
    raise OpsError(
        f"the CA file {source} names, {path}, is gone: it is usually the local simulator's, deleted when `make dev` "
        f"stopped. Start it again with `make dev` (it writes new settings to .sandbox/local.settings.json), or {remedy}"
    )


def trusted_ca(settings_value: str | None, settings_path: Path) -> None:
    """Check the CA file TLS will trust: ``REQUESTS_CA_BUNDLE`` from the settings file, else from the environment
    (``CURL_CA_BUNDLE`` after it), as `shared.client.new_session` picks it; `OpsError` when it is gone."""
    if settings_value:
        remedy = f"remove REQUESTS_CA_BUNDLE from {settings_path} to reach the real iTwin Platform"
        check_ca_bundle(settings_value, f"REQUESTS_CA_BUNDLE in {settings_path}", remedy)
        return
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            check_ca_bundle(os.environ[name], f"{name} in the environment", f"unset {name}")
            return

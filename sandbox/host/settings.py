"""The two files the local host reads: ``host.json`` (what it uses of it, as :class:`HostSettings`) and
``local.settings.json`` (its ``Values`` put into the environment, as ``func start`` does)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_POLLING_INTERVAL = 0.1


@dataclass(frozen=True)
class HostSettings:
    """What the host uses from host.json (durations in seconds)."""

    route_prefix: str = "api"
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 2.0
    min_polling_interval: float = MIN_POLLING_INTERVAL
    message_encoding: str = "base64"


_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)$")


def parse_timespan(value: str | float | int) -> float:
    """A .NET TimeSpan as host.json writes it (``"hh:mm:ss"``, ``"d.hh:mm:ss"``, ``"00:00:00.250"``) in seconds.

    Plain numbers are taken as seconds.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    match = _TIMESPAN.match(value.strip())
    if not match:
        raise ValueError(f"not a duration (expected hh:mm:ss): {value!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _get_ci(mapping: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """host.json keys are case-insensitive."""
    for name, value in mapping.items():
        if name.lower() == key.lower():
            return value
    return default


def load_host_settings(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> HostSettings:
    """Read host.json (a path, an already parsed mapping, or None for the defaults)."""
    if source is None:
        doc: Mapping[str, Any] = {}
    elif isinstance(source, Mapping):
        doc = source
    else:
        doc = json.loads(Path(source).read_text(encoding="utf-8-sig"))
    extensions = _get_ci(doc, "extensions", {}) or {}
    http = _get_ci(extensions, "http", {}) or {}
    queues = _get_ci(extensions, "queues", {}) or {}

    route_prefix = str(_get_ci(http, "routePrefix", "api")).strip("/")
    batch_size = int(_get_ci(queues, "batchSize", 16))
    if not 1 <= batch_size <= 32:
        raise ValueError(f"host.json extensions.queues.batchSize must be 1..32, not {batch_size}")
    new_batch_threshold = int(_get_ci(queues, "newBatchThreshold", batch_size // 2))
    max_dequeue_count = int(_get_ci(queues, "maxDequeueCount", 5))
    if max_dequeue_count < 1:
        raise ValueError(f"host.json extensions.queues.maxDequeueCount must be at least 1, not {max_dequeue_count}")
    encoding = str(_get_ci(queues, "messageEncoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise ValueError(f"host.json extensions.queues.messageEncoding must be base64 or none, not {encoding!r}")
    max_polling = parse_timespan(_get_ci(queues, "maxPollingInterval", 2.0))
    return HostSettings(
        route_prefix=route_prefix,
        max_dequeue_count=max_dequeue_count,
        visibility_timeout=parse_timespan(_get_ci(queues, "visibilityTimeout", 0)),
        batch_size=batch_size,
        new_batch_threshold=max(0, new_batch_threshold),
        max_polling_interval=max(max_polling, MIN_POLLING_INTERVAL),
        min_polling_interval=min(MIN_POLLING_INTERVAL, max(max_polling, 0.01)),
        message_encoding=encoding,
    )


def load_local_settings(path: str | os.PathLike[str], environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Put ``local.settings.json`` ``Values`` into ``environ`` (default ``os.environ``) without overriding what is
    already set, like ``func start``. Returns the names it set. A missing file sets nothing."""
    target = os.environ if environ is None else environ
    file = Path(path)
    if not file.exists():
        return []
    doc = json.loads(file.read_text(encoding="utf-8-sig"))
    values = doc.get("Values") or {}
    loaded = []
    for name, value in values.items():
        if name in target:
            continue
        target[name] = "" if value is None else str(value)
        loaded.append(name)
    return loaded

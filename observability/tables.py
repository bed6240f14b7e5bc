"""Application Insights tables from the items the Azure Monitor exporter sends (see `sandbox.ingestion`).

Only what the workbook and the alerts read: `customMetrics` (custom metric items; the exporter's standard metrics,
marked `_MS.MetricId`, and performance counters, named `\\...`, go elsewhere in Application Insights) and
`dependencies` (one row per CLIENT span). Dimensions are strings, as in `customDimensions`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

METRIC = "Microsoft.ApplicationInsights.Metric"
DEPENDENCY = "Microsoft.ApplicationInsights.RemoteDependency"
_DURATION = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class MetricRow:
    """A `customMetrics` row: one exported data point (a counter's delta, or a histogram's sum and count)."""

    timestamp: datetime
    name: str
    value_sum: float
    value_count: int
    dimensions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DependencyRow:
    """A `dependencies` row: one CLIENT span."""

    timestamp: datetime
    name: str
    duration_ms: float
    result_code: str
    success: bool
    dimensions: Mapping[str, str] = field(default_factory=dict)


def parse_time(text: str) -> datetime:
    """The exporter's ISO timestamp (``2026-11-23T08:33:02.241649Z``) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_duration(text: str) -> float:
    """An Application Insights duration (``[d.]hh:mm:ss.ffffff``) in milliseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not an Application Insights duration: {text!r}")
    delta = timedelta(
        days=int(match["days"] or 0), hours=int(match["h"]), minutes=int(match["m"]), seconds=float(match["s"])
    )
    return delta.total_seconds() * 1000


def _dimensions(properties: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(key): str(value) for key, value in (properties or {}).items()}


def custom_metrics(items: Iterable[Mapping[str, Any]]) -> list[MetricRow]:
    rows = []
    for item in items:
        if item.get("name") != METRIC:
            continue
        data = item["data"]["baseData"]
        properties = data.get("properties") or {}
        if "_MS.MetricId" in properties:
            continue
        for point in data["metrics"]:
            if point["name"].startswith("\\"):
                continue
            rows.append(
                MetricRow(
                    parse_time(item["time"]),
                    point["name"],
                    float(point["value"]),
                    int(point.get("count") or 1),
                    _dimensions(properties),
                )
            )
    return rows


def dependencies(items: Iterable[Mapping[str, Any]]) -> list[DependencyRow]:
    rows = []
    for item in items:
        if item.get("name") != DEPENDENCY:
            continue
        data = item["data"]["baseData"]
        rows.append(
            DependencyRow(
                parse_time(item["time"]),
                data.get("name", ""),
                parse_duration(data["duration"]),
                str(data.get("resultCode", "")),
                bool(data.get("success", True)),
                _dimensions(data.get("properties")),
            )
        )
    return rows

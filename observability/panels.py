"""The workbook's panels and the alerts' conditions as Python over `tables` rows: each function does what the KQL
of the workbook item (infra/workbook.json) or alert rule (infra/modules/alerts.bicep) of the same name does, so
that they can be drawn and checked locally. `tostring()` of a missing dimension is "", as in KQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from observability.tables import DependencyRow, MetricRow

Series = dict[str, dict[datetime, float]]  # series name -> time bin -> value


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bin_start(timestamp: datetime, grain: timedelta) -> datetime:
    """KQL's bin(timestamp, grain): rounded down to a whole multiple of ``grain``."""
    return EPOCH + grain * ((timestamp - EPOCH) // grain)


def _timechart(rows: Iterable[MetricRow], series: Callable[[MetricRow], str], grain: timedelta) -> Series:
    chart: Series = defaultdict(lambda: defaultdict(float))
    for row in rows:
        chart[series(row)][bin_start(row.timestamp, grain)] += row.value_sum
    return {name: dict(points) for name, points in chart.items()}


def _named(rows: Iterable[MetricRow], name: str) -> list[MetricRow]:
    return [row for row in rows if row.name == name]


def commands_by_outcome(metrics: Iterable[MetricRow], grain: timedelta) -> Series:
    """`commands-by-outcome`: sum(valueSum) of itwin.commands by outcome, per time bin."""
    return _timechart(_named(metrics, "itwin.commands"), lambda r: r.dimensions.get("outcome", ""), grain)


def client_errors(metrics: Iterable[MetricRow]) -> list[tuple[str, str, str, float]]:
    """`client-errors`: (operation, errorType, status, responses) of itwin.api.client_errors, most first."""
    totals: dict[tuple[str, str, str], float] = defaultdict(float)
    for row in _named(metrics, "itwin.api.client_errors"):
        d = row.dimensions
        totals[(d.get("itwin.operation", ""), d.get("error.type", ""), d.get("http.response.status_code", ""))] += (
            row.value_sum
        )
    return sorted(((*key, value) for key, value in totals.items()), key=lambda t: (-t[3], t[:3]))


def dead_letters(metrics: Iterable[MetricRow]) -> list[tuple[str, str, float]]:
    """`dead-letters`: (errorType, command, deadLetters) of itwin.commands with outcome dead_lettered, most first."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for row in _named(metrics, "itwin.commands"):
        if row.dimensions.get("outcome") == "dead_lettered":
            totals[(row.dimensions.get("error.type", ""), row.dimensions.get("itwin.command", ""))] += row.value_sum
    return sorted(((*key, value) for key, value in totals.items()), key=lambda t: (-t[2], t[:2]))


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (Kusto's percentile() estimates the same quantity)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Latency:
    operation: str
    attempts: int
    p50: float
    p95: float
    p99: float


def api_latency(dependency_rows: Iterable[DependencyRow]) -> list[Latency]:
    """`api-latency`: attempts and p50/p95/p99 duration (ms) per itwin.operation, slowest p95 first."""
    durations: dict[str, list[float]] = defaultdict(list)
    for row in dependency_rows:
        operation = row.dimensions.get("itwin.operation", "")
        if operation:
            durations[operation].append(row.duration_ms)
    found = [
        Latency(op, len(values), percentile(values, 50), percentile(values, 95), percentile(values, 99))
        for op, values in durations.items()
    ]
    return sorted(found, key=lambda latency: (-latency.p95, latency.operation))


def token_failures(metrics: Iterable[MetricRow], grain: timedelta) -> Series:
    """`token-failures`: sum(valueSum) of itwin.token.failures by errorType, per time bin."""
    return _timechart(_named(metrics, "itwin.token.failures"), lambda r: r.dimensions.get("error.type", ""), grain)


def webhook_deliveries(metrics: Iterable[MetricRow], grain: timedelta) -> Series:
    """`webhook-deliveries`: sum(valueSum) of itwin.webhook.deliveries by outcome ("refused: <errorType>")."""

    def series(row: MetricRow) -> str:
        outcome = row.dimensions.get("outcome", "")
        return f"refused: {row.dimensions.get('error.type', '')}" if outcome == "refused" else outcome

    return _timechart(_named(metrics, "itwin.webhook.deliveries"), series, grain)


# Alerts: each returns the value per dimension over the rows given (the rule's window) and whether it fires.


@dataclass(frozen=True)
class AlertResult:
    by_error_type: Mapping[str, float]
    fires: bool


def _alert(rows: Iterable[MetricRow], keep: Callable[[MetricRow], bool], fires: Callable[[float], bool]) -> AlertResult:
    totals: dict[str, float] = defaultdict(float)
    for row in rows:
        if keep(row):
            totals[row.dimensions.get("error.type", "")] += row.value_sum
    return AlertResult(dict(totals), any(fires(value) for value in totals.values()))


def dead_letters_alert(metrics: Iterable[MetricRow]) -> AlertResult:
    """`deadLetters`: total dead_lettered itwin.commands by errorType; fires above 0."""
    return _alert(
        metrics,
        lambda r: r.name == "itwin.commands" and r.dimensions.get("outcome") == "dead_lettered",
        lambda total: total > 0,
    )


def credential_errors_alert(metrics: Iterable[MetricRow], threshold: float) -> AlertResult:
    """`credentialErrors`: 401 and 403 itwin.api.client_errors by errorType; fires at ``threshold`` or more."""
    return _alert(
        metrics,
        lambda r: (
            r.name == "itwin.api.client_errors" and r.dimensions.get("http.response.status_code") in ("401", "403")
        ),
        lambda total: total >= threshold,
    )


def token_failures_alert(metrics: Iterable[MetricRow], threshold: float) -> AlertResult:
    """`tokenFailures`: itwin.token.failures by errorType; fires at ``threshold`` or more."""
    return _alert(metrics, lambda r: r.name == "itwin.token.failures", lambda total: total >= threshold)

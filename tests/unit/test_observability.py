"""Application Insights rows from exporter items, the panels' and alerts' Python equivalents, and Flex costs."""

from datetime import UTC, datetime, timedelta

import pytest

from observability import panels
from observability.costs import Interval, activity_periods, billable, cost_per_million_commands
from observability.tables import DependencyRow, MetricRow, custom_metrics, dependencies, parse_duration

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def metric_item(name: str, value: float, properties: dict, time: str = "2026-11-23T08:00:01.5Z") -> dict:
    return {
        "name": "Microsoft.ApplicationInsights.Metric",
        "time": time,
        "data": {"baseData": {"properties": properties, "metrics": [{"name": name, "value": value, "count": 1}]}},
    }


def test_custom_metrics_keep_custom_points_and_leave_out_standard_metrics_and_performance_counters():
    items = [
        metric_item("itwin.commands", 3, {"outcome": "succeeded", "itwin.command": "delete run"}),
        metric_item("http.client.request.duration", 0.2, {"_MS.MetricId": "dependencies/duration"}),
        metric_item("\\Process(??APP_WIN32_PROC??)\\Private Bytes", 6e7, {}),
        {"name": "Microsoft.ApplicationInsights.Message", "time": "2026-11-23T08:00:00Z", "data": {"baseData": {}}},
    ]

    [row] = custom_metrics(items)

    assert (row.name, row.value_sum, row.value_count) == ("itwin.commands", 3.0, 1)
    assert row.dimensions == {"outcome": "succeeded", "itwin.command": "delete run"}
    assert row.timestamp == datetime(2026, 11, 23, 8, 0, 1, 500000, tzinfo=UTC)


def test_dependencies_read_duration_result_and_string_dimensions():
    item = {
        "name": "Microsoft.ApplicationInsights.RemoteDependency",
        "time": "2026-11-23T08:00:00Z",
        "data": {
            "baseData": {
                "name": "GET /export/connections",
                "duration": "0.00:00:01.250",
                "resultCode": "404",
                "success": False,
                "properties": {"itwin.operation": "connections.list"},
            }
        },
    }

    [row] = dependencies([item])

    assert (row.duration_ms, row.result_code, row.success) == (1250.0, "404", False)
    assert row.dimensions == {"itwin.operation": "connections.list"}


@pytest.mark.parametrize(("text", "ms"), [("00:00:00.012", 12.0), ("0.00:00:02.5", 2500.0), ("1.00:00:00", 8.64e7)])
def test_application_insights_durations_are_read_in_milliseconds(text: str, ms: float):
    assert parse_duration(text) == pytest.approx(ms)


def test_a_malformed_duration_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'12 ms'"):
        parse_duration("12 ms")


def row(name: str, value: float, seconds: float = 0, **dimensions: str) -> MetricRow:
    return MetricRow(T0 + timedelta(seconds=seconds), name, value, 1, dimensions)


def test_the_commands_panel_sums_each_outcome_per_time_bin():
    rows = [
        row("itwin.commands", 2, 0, outcome="succeeded"),
        row("itwin.commands", 1, 4, outcome="succeeded"),
        row("itwin.commands", 5, 6, outcome="succeeded"),
        row("itwin.commands", 1, 6, outcome="dead_lettered"),
        row("itwin.api.client_errors", 9, 0),
    ]

    chart = panels.commands_by_outcome(rows, timedelta(seconds=5))

    assert panels.bin_start(T0 + timedelta(seconds=7), timedelta(seconds=5)) == T0 + timedelta(seconds=5)
    assert chart == {
        "succeeded": {T0: 3.0, T0 + timedelta(seconds=5): 5.0},
        "dead_lettered": {T0 + timedelta(seconds=5): 1.0},
    }


def test_the_webhook_panel_names_each_refusal_by_its_code():
    rows = [
        row("itwin.webhook.deliveries", 3, outcome="accepted"),
        row("itwin.webhook.deliveries", 1, outcome="refused", **{"error.type": "InvalidSignature"}),
    ]

    assert set(panels.webhook_deliveries(rows, timedelta(minutes=1))) == {"accepted", "refused: InvalidSignature"}


def test_dead_letters_group_by_code_and_command_most_first_with_a_missing_code_as_empty():
    rows = [
        row("itwin.commands", 1, outcome="dead_lettered", **{"itwin.command": "create job"}),
        row("itwin.commands", 2, outcome="dead_lettered", **{"itwin.command": "delete job", "error.type": "X"}),
        row("itwin.commands", 7, outcome="succeeded", **{"itwin.command": "delete job"}),
    ]

    assert panels.dead_letters(rows) == [("X", "delete job", 2.0), ("", "create job", 1.0)]


def test_latency_percentiles_are_per_operation_and_ignore_spans_without_one():
    def dependency(operation: str, ms: float) -> DependencyRow:
        return DependencyRow(T0, "GET", ms, "200", True, {"itwin.operation": operation} if operation else {})

    rows = [dependency("runs.delete", ms) for ms in range(1, 101)] + [dependency("", 5000)]

    [latency] = panels.api_latency(rows)

    assert (latency.operation, latency.attempts, latency.p50, latency.p95, latency.p99) == (
        "runs.delete",
        100,
        50,
        95,
        99,
    )


def test_alerts_fire_at_their_thresholds_only():
    forbidden = [row("itwin.api.client_errors", 1, **{"http.response.status_code": "403", "error.type": "F"})] * 4
    not_found = [row("itwin.api.client_errors", 9, **{"http.response.status_code": "404"})]

    assert not panels.credential_errors_alert(forbidden + not_found, 5).fires
    assert panels.credential_errors_alert([*forbidden, forbidden[0]], 5).by_error_type == {"F": 5.0}
    assert panels.credential_errors_alert([*forbidden, forbidden[0]], 5).fires
    assert not panels.dead_letters_alert([row("itwin.commands", 3, outcome="succeeded")]).fires
    assert panels.token_failures_alert([row("itwin.token.failures", 3, **{"error.type": "E"})], 3).fires


def test_an_activity_period_is_billed_at_least_one_second_then_in_steps_of_100_ms():
    assert [billable(s) for s in (0.02, 1.0, 1.01, 2.3)] == pytest.approx([1.0, 1.0, 1.1, 2.3])


def test_overlapping_invocations_share_one_activity_period():
    invocations = [Interval(0.0, 0.5), Interval(0.4, 1.2), Interval(3.0, 3.1)]

    assert activity_periods(invocations) == pytest.approx([1.2, 0.1])


def test_cost_per_million_commands_from_microsofts_rates():
    # Two commands, two overlapping 0.3 s invocations: one 1 s period as measured, two 1 s periods one at a time.
    cost = cost_per_million_commands([Interval(0, 0.3), Interval(0.1, 0.4)], commands=2, instance_memory_mb=2048)

    executions = 2 * 0.40 / 1e6
    assert cost.as_measured == pytest.approx((1 * 2 * 0.000026 + executions) / 2 * 1e6)
    assert cost.one_at_a_time == pytest.approx((2 * 2 * 0.000026 + executions) / 2 * 1e6)

"""Every metric and dimension the workbook and the alerts query is one the code emits.

The queries are read from infra/workbook.json and infra/modules/alerts.bicep (kql_model); what the code emits is
read from its source (telemetry_model): the instruments in shared/telemetry.py and the attributes recorded with
them in the client, worker, HTTP API and token modules. A renamed metric or attribute, or a query typo, fails here
instead of drawing an empty chart in Azure.
"""

from __future__ import annotations

import ast

import pytest
from kql_model import Query, all_queries, workbook_queries
from telemetry_model import (
    UnreadableAttributes,
    _keys,
    _Module,
    client_span_attributes,
    instruments,
    metric_attributes,
)

QUERIES = all_queries()


def _query_id(query: Query) -> str:
    return f"{query.source}:{query.name}"


def test_the_reader_finds_every_instrument_and_its_attributes():
    # A sanity check on the reader itself, with what shared/telemetry.py and shared/client.py plainly contain.
    assert set(instruments().values()) >= {"itwin.commands", "itwin.api.client_errors", "http.client.request.duration"}
    assert metric_attributes()["itwin.api.client_errors"] == {
        "http.request.method",
        "http.response.status_code",
        "error.type",
        "itwin.operation",
    }
    assert {"itwin.operation", "http.response.status_code", "url.full"} <= client_span_attributes()


def test_the_reader_follows_names_parameters_and_unpacking_and_refuses_what_it_cannot_read():
    module = _Module.parse(
        "synthetic",
        "def record(telemetry, extra):\n"
        "    attributes = {'a': 1, **extra}\n"
        "    attributes['b'] = 2\n"
        "    telemetry.commands.add(1, attributes)\n"
        "def caller(t):\n"
        "    record(t, {'c': 3} if t else {'d': 4})\n"
        "def opaque(telemetry, f):\n"
        "    telemetry.commands.add(1, f())\n",
    )
    recorded, opaque = [
        n for n in ast.walk(module.tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add"
    ]

    assert _keys(recorded.args[1], module) == {"a", "b", "c", "d"}
    with pytest.raises(UnreadableAttributes, match=r"synthetic\.py:8: cannot read the attributes f\(\)"):
        _keys(opaque.args[1], module)


@pytest.mark.parametrize("query", QUERIES, ids=_query_id)
def test_every_query_reads_a_table_the_app_fills(query: Query):
    assert query.table in ("customMetrics", "dependencies"), query.text
    assert "customDimensions." not in query.text, 'use customDimensions["..."], which this check reads'


@pytest.mark.parametrize("query", [q for q in QUERIES if q.table == "customMetrics"], ids=_query_id)
def test_every_metric_a_query_filters_on_is_an_instrument_of_the_code(query: Query):
    assert len(query.metrics) == 1, f"{_query_id(query)} should filter on exactly one metric name"
    assert query.metrics[0] in instruments().values(), f"{query.metrics[0]} is not created in shared/telemetry.py"


@pytest.mark.parametrize("query", [q for q in QUERIES if q.table == "customMetrics"], ids=_query_id)
def test_every_dimension_a_metric_query_uses_is_recorded_with_that_metric(query: Query):
    [metric] = query.metrics
    emitted = metric_attributes().get(metric, frozenset())

    assert query.dimensions - emitted == set(), f"{metric} is recorded with {sorted(emitted)} only"


@pytest.mark.parametrize("query", [q for q in QUERIES if q.table == "dependencies"], ids=_query_id)
def test_every_dimension_a_dependency_query_uses_is_a_client_span_attribute(query: Query):
    assert query.dimensions <= client_span_attributes()


def test_http_client_request_duration_is_not_queried_as_a_custom_metric():
    # The Azure Monitor exporter sends this histogram as the standard metric "dependencies/duration" and drops
    # its attributes (azure-monitor-opentelemetry-exporter, _AUTOCOLLECTED_INSTRUMENT_NAMES), so a customMetrics
    # query on it finds nothing; latency comes from the CLIENT spans in `dependencies`.
    assert not [q.name for q in QUERIES if "http.client.request.duration" in q.metrics]


def test_the_workbook_covers_each_topic_of_the_operators_view():
    assert {q.name for q in workbook_queries()} == {
        "commands-by-outcome",
        "client-errors",
        "dead-letters",
        "api-latency",
        "token-failures",
        "webhook-deliveries",
    }

"""The Application Insights stand-in, over real HTTP; and the local host's telemetry switch."""

import gzip
import json

import requests

from sandbox.host import configure_telemetry
from sandbox.ingestion import IngestionSink


def test_the_sink_keeps_items_sent_as_a_gzipped_array_or_one_per_line_and_answers_like_ingestion():
    with IngestionSink() as sink:
        first = requests.post(
            sink.url + "v2.1/track",
            data=gzip.compress(json.dumps([{"name": "a"}, {"name": "b"}]).encode()),
            headers={"Content-Encoding": "gzip"},
            timeout=5,
        )
        second = requests.post(sink.url + "v2.1/track", data=b'{"name": "c"}\n{"name": "d"}\n', timeout=5)
        refused = requests.post(sink.url + "v2.1/track", data=b"not json", timeout=5)
        connection_string, url = sink.connection_string, sink.url

    assert first.json() == {"itemsReceived": 2, "itemsAccepted": 2, "errors": []}
    assert second.status_code == 200
    assert refused.status_code == 400
    assert [item["name"] for item in sink.items()] == ["a", "b", "c", "d"]
    assert connection_string == f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={url}"
    assert url.startswith("http://127.0.0.1:")


def test_the_host_exports_telemetry_only_when_both_settings_ask_for_it():
    assert not configure_telemetry({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"})
    assert not configure_telemetry({"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"})
